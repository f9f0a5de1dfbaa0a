"""The training loop: metrics, resume after SIGKILL, 2-process DDP (gloo) evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import model as modellib
import predict
import train

ROOT = train.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # output line by line; 2 cores shared


def tiny_args(synthetic_dir, run_dir, **over) -> list[str]:
    """Command-line flags of a tiny, fast CPU configuration."""
    args = {"data": str(synthetic_dir), "whisper": "random:tiny", "n-frames": "100", "freeze": "top:1",
            "epochs": "2", "batch-size": "16", "lr": "1e-3", "num-workers": "0", "device": "cpu",
            "run-dir": str(run_dir), **over}
    return [x for k, v in args.items() for x in (f"--{k}", v)]


def run_train(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=False, **kw)


def test_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 2, 2])
    p = np.array([0, 0, 1, 1, 2, 0])
    m = train.classification_metrics(y, p, n_classes=7)
    assert m["wa"] == pytest.approx(4 / 6)
    assert m["ua"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)  # absent classes 3-6 are not averaged
    assert np.array(m["confusion"]).shape == (7, 7) and np.array(m["confusion"]).sum() == 6
    x = np.random.default_rng(0).normal(size=100)
    assert train.ccc(x, x) == pytest.approx(1.0)
    assert train.ccc(x, x + 1) < 0.7  # CCC, unlike Pearson, punishes a bias
    vad = np.stack([x, x, x], 1)
    vad[:10] = np.nan
    assert set(train.vad_metrics(vad, vad)) == {"ccc_valence", "ccc_arousal", "ccc_dominance"}


def test_lr_schedule_warms_up_then_decays():
    f = train.lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.01) and f(100) == pytest.approx(0.0)


def test_cli_lists_every_config_field():
    out = run_train(["--help"]).stdout
    for f in train.dataclasses.fields(train.Config):
        assert "--" + f.name.replace("_", "-") in out


def test_bad_objective_is_refused():
    with pytest.raises(ValueError, match="objective"):
        train.Config(objective="triplet")


def test_kill_and_resume_gives_the_same_result(synthetic_dir, tmp_path):
    """SIGKILL mid-epoch 2 of 3, resume from last.pt: the same final metrics as an uninterrupted run."""
    full = run_train(tiny_args(synthetic_dir, tmp_path / "full", epochs="3"))
    assert full.returncode == 0, full.stderr[-3000:]
    expected = json.loads((tmp_path / "full" / "results.json").read_text())

    args = tiny_args(synthetic_dir, tmp_path / "killed", epochs="3", **{"log-every": "1"})
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed_at = None
    for line in proc.stdout:  # blocks on the run's own output: no sleeps
        if line.startswith("step ") and " epoch 2 " in line:
            proc.send_signal(signal.SIGKILL)
            killed_at = line
            break
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "results.json").exists()
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert state["epoch"] == 1  # the kill came mid-epoch 2

    resumed = run_train([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["test"] == expected["test"] and got["validation"] == expected["validation"]
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in expected["history"]]


def test_two_process_gloo_evaluation_equals_single_process(synthetic_dir, tmp_path):
    """torchrun with 2 CPU processes: each reads its shard, the gathered metrics count every row once, and
    every rank evaluates the model rank 0 saves."""
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "train.py"), *tiny_args(synthetic_dir, run_dir, epochs="1", **{"vad-weight": "0.5"})]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gathered = json.loads((run_dir / "results.json").read_text())

    net = modellib.load_model(run_dir / "best.pt", device="cpu")
    loaders = {s: data.make_loader(data.load_corpus(str(synthetic_dir), s), batch_size=16, train=False,
                                   n_frames=100, num_workers=0, windows=True) for s in ("validation", "test")}
    single, _ = train.evaluate(net, loaders, ("validation", "test"), contrastive=False, device=torch.device("cpu"))
    for split in ("validation", "test"):
        assert gathered[split]["n"] == len(data.load_corpus(str(synthetic_dir), split))
        assert gathered[split]["confusion"] == single[split]["confusion"]
        assert gathered[split]["ua"] == pytest.approx(single[split]["ua"])
        for name in ("valence", "arousal", "dominance"):  # continuous: any rank scoring differently shows
            assert gathered[split][f"ccc_{name}"] == pytest.approx(single[split][f"ccc_{name}"], abs=1e-6)
    # the epoch's own validation (before best.pt is reloaded for the final one) too
    epoch = gathered["history"][0]
    for name in ("ua", "ccc_valence", "ccc_arousal", "ccc_dominance"):
        assert epoch[f"val_{name}"] == pytest.approx(single["validation"][name], abs=1e-6)


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped_when_asked(synthetic_dir, tmp_path):
    args = tiny_args(synthetic_dir, tmp_path / "nan", epochs="1", lr="1e30", **{"grad-clip": "0"})
    stopped = run_train(args)
    assert stopped.returncode != 0
    assert "non-finite loss" in stopped.stderr and "at step" in stopped.stderr
    skipped = run_train([*args, "--skip-nonfinite"])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert json.loads((tmp_path / "nan" / "results.json").read_text())["skipped"] > 0


@pytest.mark.parametrize("n_seen", [2, 3])
def test_fold_probe_makes_the_classifier_predict_as_the_probe(n_seen):
    rng = np.random.default_rng(0)
    net = modellib.EmotionModel.from_whisper("random:tiny", labels=["a", "b", "c", "d", "e"], n_frames=100,
                                             device="cpu").eval()
    y = np.array([1, 3, 4][:n_seen] * 20)  # classes 0 and 2 (and 4) never seen
    x = rng.normal(2.0, 3.0, size=(len(y), net.config.dims.n_audio_state)).astype(np.float32)
    probe = train.make_pipeline(train.StandardScaler(), train.LogisticRegression(max_iter=2000)).fit(x, y)
    net.norm.running_mean.normal_(0.0, 1.0)  # statistics as training leaves them, not the probe's
    net.norm.running_var.uniform_(0.5, 4.0)
    train.fold_probe(net, probe)
    with torch.no_grad():
        probs = torch.softmax(net.classifier(net.norm(torch.from_numpy(x))), dim=-1).numpy()
    np.testing.assert_allclose(probs[:, probe[-1].classes_], probe.predict_proba(x), atol=1e-4)
    assert (probs.argmax(1) == probe.predict(x)).all()


def test_contrastive_checkpoint_classifies_as_its_linear_probe(synthetic_dir, tmp_path):
    """epochs=0 (the notebook's 'before' run): best.pt is written, and its classifier is the probe."""
    cfg = train.Config(data=str(synthetic_dir), whisper="random:tiny", n_frames=100, objective="simclr",
                       epochs=0, batch_size=16, num_workers=0, device="cpu", run_dir=str(tmp_path / "probe"))
    result = train.fit(cfg)
    net = modellib.load_model(tmp_path / "probe" / "best.pt", device="cpu")
    loader = data.make_loader(data.load_corpus(str(synthetic_dir), "test"), batch_size=16, train=False,
                              n_frames=100, num_workers=0, windows=True)
    heads, probe = train.evaluate(net, {"test": loader}, ("test",), contrastive=False, device=torch.device("cpu"))
    assert probe is None
    assert heads["test"]["confusion"] == result["test"]["confusion"]
    assert result["history"] == [] and (tmp_path / "probe" / "metrics.jsonl").exists()


def test_window_evaluation_scores_each_clip_as_predict_does(synthetic_dir):
    """Validation/test metrics describe the predictor that predict.py applies: the mean over the same windows."""
    ds = data.load_corpus(str(synthetic_dir), "test")
    torch.manual_seed(0)
    net = modellib.EmotionModel.from_whisper("random:tiny", labels=ds.features["emotion"].names, n_frames=100,
                                             vad_head=True, device="cpu").eval()
    loader = data.make_loader(ds, batch_size=16, train=False, n_frames=100, num_workers=0, windows=True)
    pred = train.predict_split(net, loader, torch.device("cpu"), train.nullcontext())
    assert pred["index"].tolist() == list(range(len(ds))) and (pred["windows"] > 1).all()  # clips of 2-5 s, 1 s windows
    predictor = predict.Predictor(net, device="cpu")
    for row in (0, len(ds) // 2, len(ds) - 1):
        p = predictor.predict(data.decode_audio(ds[row]["audio"]["bytes"]), sample_rate=16000)
        assert pred["windows"][row] == len(p.windows)
        np.testing.assert_allclose(pred["probs"][row], [p.probabilities[n] for n in net.config.labels], atol=1e-4)
        np.testing.assert_allclose(pred["vad_pred"][row], [p.vad[n] for n in train.VAD_NAMES], atol=1e-4)
        np.testing.assert_allclose(pred["embedding"][row], p.embedding, atol=1e-4)
