"""The GPU path, on an NVIDIA GPU only (marker ``cuda``; ``make gpu-check`` runs these): DALI's GPU pipeline
against its CPU pipeline and the PyTorch loader, a bf16 training step of every objective, an epoch of each
kind of run, predict.py on the GPU against the CPU, and torchrun with NCCL where there are several GPUs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, random_model

import checkpoint
import data
import distributed
import predict
import train
from config import Config
from labels import label_names
from model import Runtime

pytestmark = pytest.mark.cuda
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(scope="module")
def validation(synthetic_dir):
    return data.load_corpus(synthetic_dir, "validation")


def config(synthetic_dir, tmp_path, **over) -> Config:
    """A small run on the GPU: untrained tiny encoder, full 3 s context, one epoch."""
    return Config(**{"data": str(synthetic_dir), "whisper": "random:tiny", "freeze": "all", "epochs": 1,
                           "batch_size": 16, "lr": 1e-3, "device": "cuda", "run_dir": str(tmp_path / "run"),
                           **over})


def mels(ds, backend: str, device: torch.device, train_: bool) -> torch.Tensor:
    """Every batch's ``mel`` of one epoch (augmentation off), on the CPU, in the loader's order."""
    loader = data.make_loader(ds, data.LoaderOptions(batch_size=8, train=train_, backend=backend, num_workers=2),
                              device=device)
    out = []
    for batch in loader:
        assert batch["mel"].device.type == device.type
        out.append(batch["mel"].cpu())
    return torch.cat(out)


@pytest.mark.parametrize("train_", [False, True], ids=["evaluation", "training crops"])
def test_dali_gpu_features_equal_dali_cpu_and_torch(validation, train_):
    problem = data.dali_problem(CUDA)
    if problem:
        pytest.skip(f"DALI does not run on this GPU: {problem}")
    gpu = mels(validation, "dali", CUDA, train_)
    assert (gpu - mels(validation, "dali", CPU, train_)).abs().max() <= 1e-4
    assert (gpu - mels(validation, "torch", CPU, train_)).abs().max() <= 1e-4


@pytest.mark.parametrize("objective", ["supervised", "simclr", "supcon"])
def test_bf16_training_step_of_every_objective(objective, synthetic_dir, tmp_path):
    cfg = config(synthetic_dir, tmp_path, objective=objective, vad_weight=0.5 if objective == "supervised" else 0.0)
    splits = {s: data.load_corpus(cfg.data, s) for s in ("train", "validation")}
    net = train.build_model(cfg, splits["train"], CUDA)
    loader, _ = train.build_loaders(cfg, splits, CUDA, distributed.Process(), net.config.n_mels)
    optimizer = train.build_optimizer(cfg, net)
    runtime = Runtime(CUDA, cfg.precision)
    batch = {k: v.to(CUDA) for k, v in next(iter(loader)).items()}
    with runtime.autocast():
        hidden = net.encoder(batch["mel"].flatten(0, -3)[:2])
    assert hidden.dtype == torch.bfloat16  # "auto" is bf16 autocast on the GPU
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    loss = train.train_step(cfg, net, batch, optimizer, None, runtime, step=0)
    assert loss is not None and torch.isfinite(torch.tensor(loss))
    for name, p in net.named_parameters():
        if name in before:
            assert p.dtype == torch.float32 and p.device.type == "cuda", name
    assert sum(not torch.equal(before[n], p) for n, p in net.named_parameters() if n in before) > 0.9 * len(before)


def test_memory_estimate_is_near_the_measured_peak(synthetic_dir, tmp_path):
    cfg = config(synthetic_dir, tmp_path, batch_size=32)
    net = train.build_model(cfg, data.load_corpus(cfg.data, "train"), CUDA)
    optimizer = train.build_optimizer(cfg, net)
    runtime = Runtime(CUDA, cfg.precision)
    estimate = train.estimate_memory(cfg, net, runtime)
    batch = {"mel": torch.randn(32, 80, 300, device=CUDA), "emotion": torch.randint(0, 4, (32,), device=CUDA),
             "vad": torch.rand(32, 3, device=CUDA)}
    torch.cuda.reset_peak_memory_stats(CUDA)
    for step in range(2):  # the first allocates AdamW's moments
        train.train_step(cfg, net, batch, optimizer, None, runtime, step)
    ratio = estimate.need(32) / torch.cuda.max_memory_allocated(CUDA)
    print(f"estimate / measured peak = {ratio:.2f}")
    assert 0.6 <= ratio <= 1.6


@pytest.mark.parametrize("objective, compile_", [("supervised", True), ("supcon", False)])
def test_an_epoch_on_the_gpu(objective, compile_, synthetic_dir, tmp_path, capsys):
    cfg = config(synthetic_dir, tmp_path, objective=objective, compile=compile_, device="cuda")  # cuda: GPU 0
    result = train.fit(cfg)
    out = capsys.readouterr().out
    assert "1 process(es) on cuda" in out and "GPU memory: about" in out
    for split in ("validation", "test"):
        assert 0.0 <= result[split]["ua"] <= 1.0
    saved = checkpoint.load_model(tmp_path / "run" / "best.pt", device="cpu")
    assert saved.config.labels == label_names("synthetic")


def test_predict_on_the_gpu_equals_the_cpu_within_bf16(validation, tmp_path, capsys):
    path = tmp_path / "best.pt"
    checkpoint.save_model(random_model(pooling="mean", n_frames=300, labels=label_names("synthetic")), path)
    files = []
    for i, row in enumerate(validation.select(range(6))):
        files.append(tmp_path / f"{i}.wav")
        files[-1].write_bytes(data.encoded_audio(row["audio"], row["id"]))

    def run(device: str) -> list[dict]:
        assert predict.main([*map(str, files), "--checkpoint", str(path), "--format", "json",
                             "--device", device]) == 0
        return json.loads(capsys.readouterr().out)

    cpu, gpu = run("cpu"), run("cuda")
    assert [r["file"] for r in cpu] == [r["file"] for r in gpu] == list(map(str, files))
    for a, b in zip(cpu, gpu, strict=True):
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) <= 2e-2
        assert max(abs(a["vad"][k] - b["vad"][k]) for k in a["vad"]) <= 2e-2


def test_torchrun_with_nccl_on_every_gpu(synthetic_dir, tmp_path):
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip(f"one GPU here: torchrun with NCCL needs at least 2 (found {n})")
    cfg = dataclasses.asdict(config(synthetic_dir, tmp_path, device=None))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items() if k in {"data", "whisper", "freeze", "epochs",
                                                                            "batch_size", "lr", "run_dir"}]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
                           str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{n} process(es) on cuda:0" in proc.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"]["ua"] >= 0.0
