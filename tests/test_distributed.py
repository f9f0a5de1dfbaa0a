"""Two gloo processes on the CPU train as one process with their global batch: contrastive losses with
gathered negatives (loss and gradients) and ``Standardize``'s synchronised batch statistics, against a single
process on the concatenated batch. The processes' batches differ in size (5 and 3 samples), as the last
batch of an epoch can."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import losses
from model import Standardize

WORLD = 2
SHARDS = [slice(0, 5), slice(5, 8)]
NEGATIVES = losses.VadNegatives(threshold=0.2, beta=1.0, alpha=1.0)
LOSSES = {
    "nt_xent": lambda z, y, vad, gather: losses.nt_xent(z[:, 0], z[:, 1], 0.5, gather=gather),
    "nt_xent_vad": lambda z, y, vad, gather: losses.nt_xent(z[:, 0], z[:, 1], 0.5, vad=vad,
                                                            vad_negatives=NEGATIVES, gather=gather),
    "supcon": lambda z, y, vad, gather: losses.supcon(z, y, 0.5, gather=gather),
    "supcon_vad": lambda z, y, vad, gather: losses.supcon(z, y, 0.5, vad=vad, vad_negatives=NEGATIVES,
                                                          gather=gather),
}


def batch() -> dict[str, torch.Tensor]:
    """8 samples: projections [8, 2 views, 16], labels, VAD (one unknown), pooled embeddings far from zero."""
    g = torch.Generator().manual_seed(0)
    vad = torch.rand(8, 3, generator=g, dtype=torch.float64)
    vad[2] = math.nan
    return {"z": torch.randn(8, 2, 16, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, 3, (8,), generator=g), "vad": vad,
            "x": 10 + 3 * torch.randn(8, 16, generator=g, dtype=torch.float64),
            "w": torch.randn(8, 16, generator=g, dtype=torch.float64)}


def run(b: dict[str, torch.Tensor], rows: slice, gather: bool) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each loss and its gradient on z[rows]; Standardize's output, input gradient and running statistics."""
    out = {}
    for name, loss_fn in LOSSES.items():
        z = b["z"][rows].clone().requires_grad_(True)
        loss = loss_fn(z, b["labels"][rows], b["vad"][rows], gather)
        loss.backward()
        out[name] = (loss.detach(), z.grad)
    norm = Standardize(16).double().train()
    x = b["x"][rows].clone().requires_grad_(True)
    y = norm(x)
    (y * b["w"][rows]).sum().backward()
    out["standardize"] = (y.detach(), x.grad, norm.running_mean, norm.running_var)
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(run(batch(), SHARDS[rank], gather=True), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("name", list(LOSSES))
def test_gathered_negatives_give_the_loss_and_gradients_of_the_global_batch(ranks, name):
    single = run(batch(), slice(None), gather=False)[name]
    assert sum(r[name][0] for r in ranks) / WORLD == pytest.approx(single[0].item(), abs=1e-6)
    for r, rows in zip(ranks, SHARDS, strict=True):  # DDP averages the processes' gradients
        assert torch.allclose(r[name][1] / WORLD, single[1][rows], atol=1e-6, rtol=0)
    local = run(batch(), SHARDS[0], gather=False)[name][0]  # without gathering: only the local negatives
    assert abs(local - ranks[0][name][0]) > 1e-3


def test_standardize_uses_the_statistics_of_every_process(ranks):
    y, grad, mean, var = run(batch(), slice(None), gather=False)["standardize"]
    reference = torch.nn.BatchNorm1d(16, affine=False).double().train()
    assert torch.allclose(reference(batch()["x"]), y, atol=1e-9)
    for r, rows in zip(ranks, SHARDS, strict=True):
        assert torch.allclose(r["standardize"][0], y[rows], atol=1e-9)
        assert torch.allclose(r["standardize"][1], grad[rows], atol=1e-9)
        assert torch.allclose(r["standardize"][2], mean, atol=1e-9)
        assert torch.allclose(r["standardize"][3], var, atol=1e-9)


def test_gather_in_one_process_changes_nothing():
    b = batch()
    for name, loss_fn in LOSSES.items():
        args = b["z"], b["labels"], b["vad"]
        assert torch.equal(loss_fn(*args, True), loss_fn(*args, False)), name
