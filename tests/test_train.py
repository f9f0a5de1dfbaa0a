"""train.py: the model and optimiser a run builds, the loss of every objective, LP-FT's start, non-finite steps,
GPU memory estimates, resume after SIGKILL, 2-process DDP (gloo)."""

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
from conftest import ROOT, random_model, tiny_args, tiny_config
from sklearn.utils.class_weight import compute_class_weight

import checkpoint
import data
import evaluate
import losses
import model as modellib
import train
from config import Config
from model import Runtime

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # output line by line; 2 cores shared


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
    as_written = datasets.Features({**splits["train"].features, "audio": data.AUDIO_STORAGE})
    splits["train"] = datasets.Dataset.from_list(rows, features=as_written).cast_column("audio", data.AUDIO)
    splits.save_to_disk(str(out))
    return str(out)


def test_lr_schedule_warms_up_then_decays():
    f = train.lr_lambda(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5, abs=0.01) and f(100) == pytest.approx(0.0)


def test_balanced_class_weights_are_sklearns_and_weight_the_cross_entropy():
    labels = np.array([0, 0, 0, 1, 3, 3])
    weight = train.balanced_weights(labels, 5)
    present = np.unique(labels)
    assert np.allclose(weight[present], compute_class_weight("balanced", classes=present, y=labels))
    assert weight[2] == weight[4] == 0.0
    net = random_model(vad_head=False, pooling="mean").eval()
    batch = {"mel": torch.randn(6, 80, 100), "emotion": torch.as_tensor(labels) % 4, "vad": torch.rand(6, 3)}
    w = torch.as_tensor(train.balanced_weights(batch["emotion"].numpy(), 4))
    loss = train.compute_loss(Config(), net, batch, train.Criterion(class_weight=w))
    logits = net(batch["mel"])["logits"]
    assert torch.allclose(loss, F.cross_entropy(logits, batch["emotion"], weight=w))
    assert not torch.allclose(loss, F.cross_entropy(logits, batch["emotion"]))
    ds = datasets.Dataset.from_dict({"emotion": [0, 0, 0, 1]},
                                    features=datasets.Features({"emotion": datasets.ClassLabel(names=list("abcd"))}))
    assert train.Criterion.of(Config(), ds, torch.device("cpu")).class_weight.tolist() == pytest.approx(
        [2 / 3, 2, 0, 0])
    assert train.Criterion.of(Config(class_weights=None), ds, torch.device("cpu")).class_weight is None


def test_the_model_a_run_builds(synthetic_dir):
    """dropout reaches the model; a supervised run has a VAD head when it trains one, a contrastive run or a
    probe one that is a probe exactly when the training split has VAD ratings; heads that do not train are
    frozen."""
    split = data.load_corpus(str(synthetic_dir), "train")  # with VAD ratings
    no_vad = split.map(lambda row: {"valence": float("nan"), "arousal": float("nan"), "dominance": float("nan")})
    cpu = torch.device("cpu")
    net = train.build_model(Config(whisper="random:tiny", dropout=0.3), split, cpu)
    assert net.config.dropout == 0.3 and net.dropout.p == 0.3 and net.vad is None
    assert not any(p.requires_grad for p in net.projector.parameters())
    net = train.build_model(Config(whisper="random:tiny", vad_weight=0.5), split, cpu)
    assert net.config.vad_head and not net.config.vad_probe and net.vad.weight.requires_grad
    for objective in ("supcon", "probe"):
        net = train.build_model(Config(whisper="random:tiny", objective=objective), split, cpu)
        assert net.config.vad_head and net.config.vad_probe and not net.vad.weight.requires_grad
        assert not net.classifier.weight.requires_grad
        assert train.build_model(Config(whisper="random:tiny", objective=objective), no_vad, cpu).vad is None


def test_the_optimizer_gives_the_encoder_its_learning_rate():
    net = random_model(vad_head=False, pooling="mean")  # tiny: 4 blocks
    modellib.set_trainable(net, "top:1")
    groups = train.build_optimizer(Config(lr=1e-2, encoder_lr=1e-3), net).param_groups
    assert [g["lr"] for g in groups] == [1e-2, 1e-3]
    encoder = {id(p) for p in groups[1]["params"]}
    assert encoder == {id(p) for p in [*net.encoder.blocks[3].parameters(), *net.encoder.ln_post.parameters()]}
    assert len(groups[0]["params"]) + len(encoder) == sum(p.requires_grad for p in net.parameters())
    modellib.set_trainable(net, "heads")
    assert [g["lr"] for g in train.build_optimizer(Config(lr=1e-2), net).param_groups] == [1e-2]


def test_one_loss_function_for_every_objective():
    net = random_model(vad_head=True, pooling="mean").train()
    torch.manual_seed(1)
    batch = {"mel": torch.randn(4, 80, 100), "emotion": torch.tensor([0, 1, 0, 1]),
             "vad": torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.8, 0.1], [float("nan")] * 3, [0.9, 0.1, 0.3]])}
    cfg = Config(vad_weight=0.5)
    torch.manual_seed(0)
    loss = train.compute_loss(cfg, net, batch, None)
    torch.manual_seed(0)  # the same dropout mask
    y = net(batch["mel"])
    known = torch.isfinite(batch["vad"]).all(1)
    expected = F.cross_entropy(y["logits"], batch["emotion"]) + 0.5 * F.mse_loss(y["vad"][known], batch["vad"][known])
    assert torch.allclose(loss, expected)
    views = {**batch, "mel": torch.randn(4, 2, 80, 100)}
    for objective in ("simclr", "supcon"):
        cfg = Config(objective=objective)
        loss = train.compute_loss(cfg, net, views, train.Criterion(losses.VadNegatives()))
        z = net(views["mel"].flatten(0, 1))["projection"].view(4, 2, -1)
        expected = (losses.nt_xent(z[:, 0], z[:, 1], 0.1, vad=batch["vad"], vad_negatives=losses.VadNegatives())
                    if objective == "simclr" else
                    losses.supcon(z, batch["emotion"], 0.1, vad=batch["vad"], vad_negatives=losses.VadNegatives()))
        assert loss.ndim == 0 and torch.allclose(loss, expected, atol=1e-6), objective


@pytest.mark.e2e
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
    options = data.LoaderOptions(batch_size=16, n_frames=100, num_workers=0, windows=True)
    loaders = {s: data.make_loader(data.load_corpus(str(synthetic_dir), s), options) for s in ("validation", "test")}
    single = evaluate.evaluate(net, loaders, ("validation", "test"), by_probe=False,
                               runtime=Runtime(torch.device("cpu"))).metrics
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


# ----------------------------------------------------------------------------- GPU memory guardrails


@pytest.mark.parametrize("objective", ["supervised", "supcon"])
def test_memory_estimate_counts_what_trains_and_leaves_the_model_as_it_was(synthetic_dir, tmp_path, objective):
    cfg = tiny_config(synthetic_dir, tmp_path, objective=objective)
    net = random_model(n_frames=100)
    cpu = Runtime(torch.device("cpu"))
    per_clip = {}
    for freeze in ("heads", "top:1", "all"):
        modellib.set_trainable(net, freeze)
        net.eval()
        buffers, rng = [b.clone() for b in net.buffers()], torch.get_rng_state()
        estimate = train.estimate_memory(cfg, net, cpu, available=2**30)
        assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))
        assert torch.equal(rng, torch.get_rng_state()) and not net.training
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        assert estimate.fixed == 4 * sum(p.numel() for p in net.parameters()) + 12 * trainable
        per_clip[freeze] = estimate.per_clip
    assert 0 < per_clip["heads"] < per_clip["top:1"] < per_clip["all"]  # frozen blocks keep nothing for backward
    single = train.estimate_memory(cfg.as_objective("supervised"), net, cpu, available=2**30)
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


def test_probe_init_starts_the_classifier_as_the_linear_probe(synthetic_dir, tmp_path):
    """LP-FT: with ``probe_init`` the model as built (epochs=0) classifies validation as the probe fitted on the
    training split's embeddings does."""
    cfg = dataclasses.replace(tiny_config(synthetic_dir, tmp_path / "lpft", epochs="0", freeze="heads"),
                              probe_init=True)
    result = train.fit(cfg)
    net = checkpoint.load_model(tmp_path / "lpft" / "best.pt", device="cpu").eval()
    options = data.LoaderOptions(batch_size=16, n_frames=100, num_workers=0)
    pred = {s: evaluate.predict_split(net, data.make_loader(data.load_corpus(str(synthetic_dir), s), options),
                                      Runtime(torch.device("cpu"))) for s in ("train", "validation")}
    metrics, probe = evaluate.linear_probe(pred["train"], {"validation": pred["validation"]}, len(net.config.labels))
    assert result["validation"]["confusion"] == metrics["validation"]["confusion"]
    np.testing.assert_allclose(pred["validation"]["uncalibrated"][:, probe.classifier[-1].classes_],
                               probe.classifier.predict_proba(pred["validation"]["embedding"]), atol=1e-4)
    assert train.fit(dataclasses.replace(cfg, probe_init=False, run_dir=str(tmp_path / "plain")))["validation"][
        "confusion"] != result["validation"]["confusion"]


