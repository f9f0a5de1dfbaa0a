"""The training loop: Config and its command line, metrics, the loss of every objective, the baseline,
non-finite steps, resume after SIGKILL, 2-process DDP (gloo)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import ROOT, random_model
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_class_weight

import checkpoint
import data
import losses
import model as modellib
import predict
import prepare
import train
from labels import VAD

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # output line by line; 2 cores shared


def tiny_args(synthetic_dir, run_dir, **over) -> list[str]:
    """Command-line flags of a tiny, fast CPU configuration."""
    args = {"data": str(synthetic_dir), "whisper": "random:tiny", "n-frames": "100", "freeze": "top:1",
            "epochs": "2", "batch-size": "16", "lr": "1e-3", "num-workers": "0", "device": "cpu",
            "run-dir": str(run_dir), **over}
    return [x for k, v in args.items() for x in (f"--{k}", v)]


def tiny_config(synthetic_dir, run_dir, **over) -> train.Config:
    """``tiny_args`` as a Config, for runs in this process, scoring each clip's centre crop (one window: faster)."""
    return dataclasses.replace(train.parse_args(tiny_args(synthetic_dir, run_dir, **over)), windows=False)


def run_train(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, check=False, **kw)


def nan_corpus(synthetic_dir, out, row: int) -> str:
    """The synthetic corpus with training row ``row``'s audio replaced by a float WAV holding NaN samples."""
    splits = datasets.load_from_disk(str(synthetic_dir))
    buffer = io.BytesIO()
    sf.write(buffer, np.full(16000, np.nan, np.float32), 16000, format="WAV", subtype="FLOAT")
    rows = splits["train"].to_list()
    rows[row]["audio"] = {"bytes": buffer.getvalue(), "path": "nan.wav"}
    as_written = datasets.Features({**splits["train"].features,  # Audio would need torchcodec to encode
                                    "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    audio = data.schema([])["audio"]
    splits["train"] = datasets.Dataset.from_list(rows, features=as_written).cast_column("audio", audio)
    splits.save_to_disk(str(out))
    return str(out)


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


def test_help_explains_every_config_field(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(train.Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out and " ".join(f.metadata["help"].split()) in out, flag
    assert "--objective {supervised,simclr,supcon}" in out and "(default: top:4)" in out


def test_command_line_types_come_from_the_annotations():
    cfg = train.parse_args(["--data", "a", "b", "--encoder-lr", "3e-5", "--no-augment", "--epochs", "3",
                            "--device", "none"])
    assert cfg.data == ["a", "b"] and cfg.encoder_lr == 3e-5 and cfg.augment is False and cfg.epochs == 3
    assert cfg.device is None and train.parse_args(["--encoder-lr", "None"]).encoder_lr is None
    assert train.parse_args([]) == train.Config() and train.parse_args(["--data", "x"]).data == "x"
    assert train.parse_args(["--augment-off", "speed", "masks"]).augment_off == ("speed", "masks")


@pytest.mark.parametrize("field, value", [("objective", "triplet"), ("pooling", "max"), ("backend", "jax"),
                                          ("precision", "fp16"), ("layers", "first"),
                                          ("augment_off", ("speed", "reverb"))])
def test_config_refuses_a_value_outside_its_choices(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of .*{value}"):
        train.Config(**{field: value})


def test_config_from_a_notebook_namespace():
    namespace = {"data": "corpus", "epochs": 3, "projection": "pca", "train": train}  # a notebook's globals
    cfg = train.Config.from_namespace(namespace, objective="supcon")
    assert (cfg.data, cfg.epochs, cfg.objective) == ("corpus", 3, "supcon")
    assert dataclasses.replace(cfg, data="data/synthetic", epochs=10, objective="supervised") == train.Config()


def test_balanced_class_weights_are_sklearns_and_weight_the_cross_entropy():
    labels = np.array([0, 0, 0, 1, 3, 3])
    weight = train.balanced_weights(labels, 5)
    present = np.unique(labels)
    assert np.allclose(weight[present], compute_class_weight("balanced", classes=present, y=labels))
    assert weight[2] == weight[4] == 0.0
    net = random_model(vad_head=False, pooling="mean").eval()
    batch = {"mel": torch.randn(6, 80, 100), "emotion": torch.as_tensor(labels) % 4, "vad": torch.rand(6, 3)}
    w = torch.as_tensor(train.balanced_weights(batch["emotion"].numpy(), 4))
    loss = train.compute_loss(train.Config(), net, batch, train.Criterion(class_weight=w))
    logits = net(batch["mel"])["logits"]
    assert torch.allclose(loss, F.cross_entropy(logits, batch["emotion"], weight=w))
    assert not torch.allclose(loss, F.cross_entropy(logits, batch["emotion"]))
    ds = datasets.Dataset.from_dict({"emotion": [0, 0, 0, 1]},
                                    features=datasets.Features({"emotion": datasets.ClassLabel(names=list("abcd"))}))
    assert train.Criterion.of(train.Config(), ds, torch.device("cpu")).class_weight.tolist() == pytest.approx(
        [2 / 3, 2, 0, 0])
    assert train.Criterion.of(train.Config(class_weights=None), ds, torch.device("cpu")).class_weight is None


def test_layer_decay_gives_each_encoder_block_its_learning_rate():
    net = random_model(vad_head=False, pooling="mean")  # tiny: 4 blocks
    cfg = train.Config(lr=1e-2, encoder_lr=1e-3, layer_decay=0.5)
    modellib.set_trainable(net, "all")
    lr = {id(p): g["lr"] for g in train.build_optimizer(cfg, net).param_groups for p in g["params"]}
    e = net.encoder
    assert lr[id(e.ln_post.weight)] == lr[id(e.blocks[3].mlp[0].weight)] == 1e-3
    assert [lr[id(b.attn.query.weight)] for b in e.blocks] == pytest.approx([1e-3 / 8, 1e-3 / 4, 1e-3 / 2, 1e-3])
    assert lr[id(e.conv1.weight)] == lr[id(e.conv2.bias)] == pytest.approx(1e-3 / 16)
    assert lr[id(net.classifier.weight)] == lr[id(net.mix.weight)] == 1e-2
    assert len(lr) == sum(p.requires_grad for p in net.parameters())
    modellib.set_trainable(net, "top:1")  # frozen blocks get no group
    groups = train.build_optimizer(dataclasses.replace(cfg, layer_decay=1.0), net).param_groups
    assert [g["lr"] for g in groups] == [1e-2, 1e-3, 1e-3]


def test_label_smoothing_and_mixup_in_the_cross_entropy():
    net = random_model(vad_head=False, pooling="mean").eval()  # eval: no dropout, the same logits twice
    torch.manual_seed(0)
    batch = {"mel": torch.randn(4, 80, 100), "emotion": torch.tensor([0, 1, 2, 1]), "vad": torch.rand(4, 3),
             "frames": torch.tensor([100, 60, 100, 80])}
    logits = net(batch["mel"], batch["frames"])["logits"]
    smooth = train.compute_loss(train.Config(label_smoothing=0.2), net, batch)
    log_p = logits.log_softmax(-1)
    expected = (0.8 * -log_p.gather(1, batch["emotion"][:, None]).squeeze(1) - 0.2 * log_p.mean(-1)).mean()
    assert torch.allclose(smooth, expected, atol=1e-6)
    mixup = train.Config(mixup=0.4)
    assert not torch.allclose(train.compute_loss(mixup, net, batch), F.cross_entropy(logits, batch["emotion"]))
    same = {"mel": batch["mel"][:1].repeat(4, 1, 1), "emotion": torch.ones(4, dtype=torch.long),
            "vad": batch["vad"][:1].repeat(4, 1), "frames": torch.full((4,), 100)}
    alone = F.cross_entropy(net(same["mel"], same["frames"])["logits"], same["emotion"])
    assert torch.allclose(train.compute_loss(mixup, net, same), alone, atol=1e-5)  # mixing a clip with itself


def test_dropout_reaches_the_model():
    net = train.build_model(train.Config(whisper="random:tiny", dropout=0.3), ["a", "b"], torch.device("cpu"))
    assert net.config.dropout == 0.3 and net.dropout.p == 0.3


def test_one_loss_function_for_every_objective():
    net = random_model(vad_head=True, pooling="mean").train()
    torch.manual_seed(1)
    batch = {"mel": torch.randn(4, 80, 100), "emotion": torch.tensor([0, 1, 0, 1]),
             "vad": torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.8, 0.1], [float("nan")] * 3, [0.9, 0.1, 0.3]])}
    cfg = train.Config(vad_weight=0.5)
    torch.manual_seed(0)
    loss = train.compute_loss(cfg, net, batch, None)
    torch.manual_seed(0)  # the same dropout mask
    y = net(batch["mel"])
    known = torch.isfinite(batch["vad"]).all(1)
    expected = F.cross_entropy(y["logits"], batch["emotion"]) + 0.5 * F.mse_loss(y["vad"][known], batch["vad"][known])
    assert torch.allclose(loss, expected)
    views = {**batch, "mel": torch.randn(4, 2, 80, 100)}
    for objective in ("simclr", "supcon"):
        cfg = train.Config(objective=objective)
        loss = train.compute_loss(cfg, net, views, train.Criterion(losses.VadNegatives()))
        z = net(views["mel"].flatten(0, 1))["projection"].view(4, 2, -1)
        expected = (losses.nt_xent(z[:, 0], z[:, 1], 0.1, vad=batch["vad"], vad_negatives=losses.VadNegatives())
                    if objective == "simclr" else
                    losses.supcon(z, batch["emotion"], 0.1, vad=batch["vad"], vad_negatives=losses.VadNegatives()))
        assert loss.ndim == 0 and torch.allclose(loss, expected, atol=1e-6), objective


@pytest.mark.e2e
def test_kill_and_resume_gives_the_same_result(synthetic_dir, tmp_path):
    """SIGKILL mid-epoch 2 of 3, resume from last.pt: the same final metrics as an uninterrupted run (with a
    moving average of the weights, which last.pt carries too)."""
    full = run_train(tiny_args(synthetic_dir, tmp_path / "full", epochs="3", ema="0.5"))
    assert full.returncode == 0, full.stderr[-3000:]
    expected = json.loads((tmp_path / "full" / "results.json").read_text())

    args = tiny_args(synthetic_dir, tmp_path / "killed", epochs="3", ema="0.5", **{"log-every": "1"})
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
    assert json.loads(state["progress"])["epoch"] == 1  # the kill came mid-epoch 2

    resumed = run_train([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["test"] == expected["test"] and got["validation"] == expected["validation"]
    assert [h["train_loss"] for h in got["history"]] == [h["train_loss"] for h in expected["history"]]


@pytest.mark.e2e
def test_two_process_gloo_evaluation_equals_single_process(synthetic_dir, tmp_path):
    """torchrun with 2 CPU processes: each reads its shard, the gathered metrics count every row once, and
    every rank evaluates the model rank 0 saves."""
    run_dir = tmp_path / "ddp"
    proc = run_two_processes(tiny_args(synthetic_dir, run_dir, epochs="1", **{"vad-weight": "0.5"}), port=29533)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gathered = json.loads((run_dir / "results.json").read_text())

    net = checkpoint.load_model(run_dir / "best.pt", device="cpu")
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
    cfg = tiny_config(synthetic_dir, tmp_path / "nan", epochs="1", lr="1e30", **{"grad-clip": "0"})
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 1"):
        train.fit(cfg)
    assert train.fit(dataclasses.replace(cfg, skip_nonfinite=True))["skipped"] > 0


def test_a_non_finite_embedding_in_a_linear_probe_is_named_or_skipped(capsys):
    rng = np.random.default_rng(0)
    train_ = {"index": np.arange(10, 30), "embedding": rng.normal(size=(20, 4)), "emotion": np.arange(20) % 2,
              "vad": np.full((20, 3), np.nan)}
    train_["embedding"][[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"2 training clip\(s\) have a non-finite embedding \(rows \[13, 17\]"):
        train.linear_probe(train_, {}, 2)
    _, probe = train.linear_probe(train_, {}, 2, skip_nonfinite=True)
    assert "left out 2 training clip(s) with a non-finite embedding (rows [13, 17])" in capsys.readouterr().err
    assert probe.predict(train_["embedding"][:3]).shape == (3,)


def test_a_skipped_step_leaves_the_running_statistics_as_they_were(synthetic_dir, tmp_path):
    """A clip of NaN samples makes its batch's loss NaN; skipping that step must not leave NaN in
    Standardize's running statistics (what evaluation and best.pt use)."""
    corpus = nan_corpus(synthetic_dir, tmp_path / "corpus", row=5)
    cfg = tiny_config(synthetic_dir, tmp_path / "run", data=corpus, epochs="1", backend="torch")
    result = train.fit(dataclasses.replace(cfg, skip_nonfinite=True))
    assert result["skipped"] == 1 and result["history"][0]["step"] == 3
    norm = checkpoint.load_model(tmp_path / "run" / "best.pt", device="cpu").norm
    assert torch.isfinite(norm.running_mean).all() and torch.isfinite(norm.running_var).all()
    assert np.isfinite(result["validation"]["ua"])


def run_two_processes(args: list[str], port: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 train.py ARGS`` on CPU (gloo); a run still going after ``timeout`` seconds
    (a hang: ranks waiting on each other) is killed with its workers and fails the test."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(ROOT / "train.py"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:  # torchrun's workers live in sessions of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the 2-process run did not finish in {timeout:.0f} s: its ranks wait on each other")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


@pytest.mark.e2e
def test_two_processes_skip_a_step_together_when_one_rank_has_a_nonfinite_loss(synthetic_dir, tmp_path):
    """A NaN clip in rank 1's first batch only: without agreeing, rank 1 would skip its backward while rank 0
    waits in the gradient all-reduce for ever."""
    n_train = len(data.load_corpus(str(synthetic_dir), "train"))
    epoch0 = np.random.default_rng([0, 0]).permutation(n_train)  # data.Loader's order: seed 0, epoch 0
    row = int(np.array_split(epoch0, 2)[1][0])  # the first clip of rank 1's shard
    corpus = nan_corpus(synthetic_dir, tmp_path / "corpus", row)
    args = [*tiny_args(synthetic_dir, tmp_path / "ddp", data=corpus, epochs="1", backend="torch"), "--skip-nonfinite"]
    proc = run_two_processes(args, port=29534)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert result["skipped"] == 1 and result["history"][0]["step"] == 2  # 24 clips a rank: 2 steps, 1 skipped
    assert np.isfinite(result["validation"]["ua"])


@pytest.mark.parametrize("n_seen", [2, 3])
def test_fold_probe_makes_the_classifier_predict_as_the_probe(n_seen):
    rng = np.random.default_rng(0)
    net = random_model(labels=["a", "b", "c", "d", "e"]).eval()
    y = np.array([1, 3, 4][:n_seen] * 20)  # classes 0 and 2 (and 4) never seen
    x = rng.normal(2.0, 3.0, size=(len(y), net.config.dims.n_audio_state)).astype(np.float32)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    net.norm.running_mean.normal_(0.0, 1.0)  # statistics as training leaves them, not the probe's
    net.norm.running_var.uniform_(0.5, 4.0)
    train.fold_probe(net, probe)
    with torch.no_grad():
        probs = torch.softmax(net.classifier(net.norm(torch.from_numpy(x))), dim=-1).numpy()
    np.testing.assert_allclose(probs[:, probe[-1].classes_], probe.predict_proba(x), atol=1e-4)
    assert (probs.argmax(1) == probe.predict(x)).all()


def test_contrastive_checkpoint_classifies_as_its_linear_probe(synthetic_dir, tmp_path):
    """epochs=0 (the notebook's 'before' run): best.pt is written, and its classifier is the probe."""
    cfg = tiny_config(synthetic_dir, tmp_path / "probe", objective="simclr", epochs="0")
    result = train.fit(cfg)
    net = checkpoint.load_model(tmp_path / "probe" / "best.pt", device="cpu")
    loader = data.make_loader(data.load_corpus(str(synthetic_dir), "test"), batch_size=16, train=False,
                              n_frames=100, num_workers=0)
    heads, probe = train.evaluate(net, {"test": loader}, ("test",), contrastive=False, device=torch.device("cpu"))
    assert probe is None
    assert heads["test"]["confusion"] == result["test"]["confusion"]
    assert result["history"] == [] and (tmp_path / "probe" / "metrics.jsonl").exists()


def test_window_evaluation_scores_each_clip_as_predict_does(synthetic_dir):
    """Validation/test metrics describe the predictor that predict.py applies: the mean over the same windows."""
    ds = data.load_corpus(str(synthetic_dir), "test")
    net = random_model(labels=ds.features["emotion"].names, vad_head=True).eval()
    loader = data.make_loader(ds, batch_size=16, train=False, n_frames=100, num_workers=0, windows=True)
    pred = train.predict_split(net, loader, torch.device("cpu"))
    assert pred["index"].tolist() == list(range(len(ds))) and (pred["windows"] > 1).all()  # clips of 2-5 s, 1 s windows
    predictor = predict.Predictor(net, device="cpu")
    for row in (0, len(ds) // 2, len(ds) - 1):
        p = predictor.predict(data.decode_audio(ds[row]["audio"]["bytes"]), sample_rate=16000)
        assert pred["windows"][row] == len(p.windows)
        np.testing.assert_allclose(pred["probs"][row], [p.probabilities[n] for n in net.config.labels], atol=1e-4)
        np.testing.assert_allclose(pred["vad_pred"][row], [p.vad[n] for n in VAD], atol=1e-4)
        np.testing.assert_allclose(pred["embedding"][row], p.embedding, atol=1e-4)


def test_linear_probe_is_class_balanced_and_fitted_per_utterance():
    rng = np.random.default_rng(0)

    def arrays(n0: int, n1: int) -> dict[str, np.ndarray]:
        y = np.array([0] * n0 + [1] * n1)
        return {"embedding": rng.normal(size=(len(y), 8)) + 0.8 * y[:, None], "emotion": y,
                "vad": np.full((len(y), 3), np.nan), "window_embedding": np.zeros((1, 8))}  # windows: unused

    fit_on, score_on = arrays(36, 6), arrays(20, 20)
    metrics, probe = train.linear_probe(fit_on, {"test": score_on}, n_classes=2)
    x, y = fit_on["embedding"], fit_on["emotion"]
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                   random_state=0)).fit(x, y)
    expected = train.classification_metrics(score_on["emotion"], reference.predict(score_on["embedding"]), 2)
    assert metrics["test"] == expected
    unbalanced = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    assert (unbalanced.predict(score_on["embedding"]) != probe.predict(score_on["embedding"])).any()


def test_baseline_is_the_probe_on_log_mel_statistics_scored_as_models_are(synthetic_dir):
    splits = {s: data.load_corpus(synthetic_dir, s) for s in ("train", "validation", "test")}
    result = train.baseline(splits)
    assert set(result) == {"validation", "test"}
    for split, metrics in result.items():
        assert {"ua", "wa", "macro_f1", "n", "confusion", "ccc_valence"} <= set(metrics)
        assert metrics["n"] == len(splits[split]) == np.sum(metrics["confusion"])
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("ua", "wa", "macro_f1"))
    row = splits["test"][0]["audio"]["bytes"]
    mel = data.log_mel(torch.from_numpy(data.decode_audio(row))).numpy()
    np.testing.assert_allclose(train.clip_statistics(row), np.concatenate([mel.mean(1), mel.std(1)]), atol=1e-6)


# ----------------------------------------------------------------------------- GPU memory guardrails


@pytest.mark.parametrize("objective", ["supervised", "supcon"])
def test_memory_estimate_counts_what_trains_and_leaves_the_model_as_it_was(synthetic_dir, tmp_path, objective):
    cfg = tiny_config(synthetic_dir, tmp_path, objective=objective)
    net = random_model(n_frames=100)
    amp = contextlib.nullcontext()
    per_clip = {}
    for freeze in ("heads", "top:1", "all"):
        train.modellib.set_trainable(net, freeze)
        net.eval()
        buffers, rng = [b.clone() for b in net.buffers()], torch.get_rng_state()
        estimate = train.estimate_memory(cfg, net, torch.device("cpu"), amp, available=2**30)
        assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))
        assert torch.equal(rng, torch.get_rng_state()) and not net.training
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert estimate.fixed == 4 * sum(p.numel() for p in net.parameters()) + 12 * trainable
        per_clip[freeze] = estimate.per_clip
    assert 0 < per_clip["heads"] < per_clip["top:1"] < per_clip["all"]  # frozen blocks keep nothing for backward
    single = train.estimate_memory(dataclasses.replace(cfg, objective="supervised"), net, torch.device("cpu"), amp,
                                   available=2**30)
    if objective == "supcon":  # two views a clip
        assert estimate.per_clip == pytest.approx(2 * single.per_clip, rel=0.01)


def test_out_of_memory_names_the_batch_size_and_what_fits():
    estimate = train.MemoryEstimate(fixed=2 * 2**30, per_clip=2**28, available=4 * 2**30)
    assert estimate.largest_batch() == 8
    assert "probably not fit: about 8 clips" in estimate.describe(16)
    assert "probably not fit" not in estimate.describe(8)
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"batch_size 16; by the estimate about 8 clips fit"):
        with train.explain_out_of_memory(16, estimate):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="^CUDA out of memory"):  # no estimate: as raised
        with train.explain_out_of_memory(16, None):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")


# ----------------------------------------------------------------------------- cross-validation


def test_cross_validation_runs_every_fold_and_tabulates_them(tmp_path, capsys):
    """``train.py --folds A B``: a run per fold in run_dir/fold_K, then one table of their test metrics."""
    folds = []
    for seed in (1, 2):  # two prepared "folds": synthetic corpora with different speakers
        prepare.make_synthetic(n_speakers=3, per_class=2, seed=seed).save_to_disk(str(tmp_path / f"f{seed}"))
        folds.append(str(tmp_path / f"f{seed}"))
    run_dir = tmp_path / "cv"
    args = tiny_args(tmp_path / "unused", run_dir, epochs="1")
    train.main([*args[: args.index("--data")], *args[args.index("--data") + 2:], "--folds", *folds,
                "--no-windows"])
    out = capsys.readouterr().out
    for k in (1, 2):
        result = json.loads((run_dir / f"fold_{k}" / "results.json").read_text())
        assert json.loads((run_dir / f"fold_{k}" / "config.json").read_text())["data"] == folds[k - 1]
        assert f"{result['test']['ua']:.3f}" in out
    text = (run_dir / "cross_validation.txt").read_text()
    assert text.strip() in out
    assert "over 2 folds" in text and "(test speakers fold_1: spk02; fold_2: spk02)" in text
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["fold_1", "fold_2", "mean", "std"]
    with pytest.raises(ValueError, match="needs cfg.folds"):
        train.cross_validate(train.Config())


def test_probe_init_starts_the_classifier_as_the_linear_probe(synthetic_dir, tmp_path):
    """LP-FT: with ``probe_init`` the model as built (epochs=0) classifies validation as the probe fitted on the
    training split's embeddings does."""
    cfg = dataclasses.replace(tiny_config(synthetic_dir, tmp_path / "lpft", epochs="0", freeze="heads"),
                              probe_init=True)
    result = train.fit(cfg)
    net = checkpoint.load_model(tmp_path / "lpft" / "best.pt", device="cpu").eval()
    kw = dict(batch_size=16, train=False, n_frames=100, num_workers=0)
    pred = {s: train.predict_split(net, data.make_loader(data.load_corpus(str(synthetic_dir), s), **kw),
                                   torch.device("cpu")) for s in ("train", "validation")}
    metrics, probe = train.linear_probe(pred["train"], {"validation": pred["validation"]}, len(net.config.labels))
    assert result["validation"]["confusion"] == metrics["validation"]["confusion"]
    np.testing.assert_allclose(pred["validation"]["probs"][:, probe[-1].classes_],
                               probe.predict_proba(pred["validation"]["embedding"]), atol=1e-4)
    assert train.fit(dataclasses.replace(cfg, probe_init=False, run_dir=str(tmp_path / "plain")))["validation"][
        "confusion"] != result["validation"]["confusion"]


def test_ema_scores_the_moving_average_and_leaves_training_alone(synthetic_dir, tmp_path):
    """``ema``: training is unchanged (the same losses) while validation, best.pt and the result use the
    average; a decay of almost 1 keeps it at the initial weights, which score as the model as built."""
    cfg = tiny_config(synthetic_dir, tmp_path / "plain", epochs="1")
    plain = train.fit(cfg)
    still = train.fit(dataclasses.replace(cfg, ema=1 - 1e-9, run_dir=str(tmp_path / "still")))
    built = train.fit(dataclasses.replace(cfg, epochs=0, run_dir=str(tmp_path / "built")))
    assert [h["train_loss"] for h in still["history"]] == [h["train_loss"] for h in plain["history"]]
    for split in ("validation", "test"):
        assert still[split]["confusion"] == built[split]["confusion"] != plain[split]["confusion"], split
    with pytest.raises(ValueError, match="ema is a decay per step"):
        train.Config(ema=1.0)


def test_wise_ft_chooses_on_validation_among_interpolations_towards_the_start(synthetic_dir, tmp_path):
    """WiSE-FT: alpha 0 scores as best.pt without it, alpha 1 as the model as built; validation chooses, and
    best.pt then holds the chosen weights."""
    cfg = tiny_config(synthetic_dir, tmp_path / "plain", epochs="1")
    plain = train.fit(cfg)
    built = train.fit(dataclasses.replace(cfg, epochs=0, run_dir=str(tmp_path / "built")))
    wise = train.fit(dataclasses.replace(cfg, wise=(1.0, 0.5), run_dir=str(tmp_path / "wise")))
    scores = wise["wise"]["validation_ua"]
    assert list(scores) == [0.0, 0.5, 1.0]
    assert scores[0.0] == plain["validation"]["ua"] and scores[1.0] == built["validation"]["ua"] != scores[0.0]
    assert wise["validation"]["ua"] == scores[wise["wise"]["alpha"]] == max(scores.values())
    assert checkpoint.read_checkpoint(tmp_path / "wise" / "best.pt")["extra"]["wise_alpha"] == wise["wise"]["alpha"]
    kept = checkpoint.load_model(tmp_path / "wise" / "best.pt", device="cpu").state_dict()
    start = checkpoint.load_model(tmp_path / "wise" / "start.pt", device="cpu").state_dict()
    end = checkpoint.load_model(tmp_path / "plain" / "best.pt", device="cpu").state_dict()
    assert not torch.equal(start["classifier.weight"], end["classifier.weight"])
    torch.testing.assert_close(kept["classifier.weight"],
                               torch.lerp(end["classifier.weight"], start["classifier.weight"], wise["wise"]["alpha"]))
    for bad in ({"wise": (1.5,)}, {"wise": (0.5,), "objective": "supcon"}):
        with pytest.raises(ValueError, match="wise takes interpolation weights"):
            train.Config(**bad)
