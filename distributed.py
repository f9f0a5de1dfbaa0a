"""Several processes as one run (``torchrun``): the process group, each rank's device, collectives over arrays.

    process = setup()                            # rank 0 of 1 without torchrun
    device = device_of(cfg.device, process.local_rank)
    arrays = gather(arrays)                      # every rank's rows, in rank order
    if is_main(): ...                            # what only rank 0 does: write the run folder, print

Every function is a no-op, or the single process's answer, when no process group is initialised, so the same
code runs alone and under ``torchrun``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import model as modellib


@dataclass(frozen=True)
class Process:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Process:
    """This process's ``Process``; initialises the process group under torchrun (NCCL with CUDA, else gloo)."""
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not dist.is_initialized():
        return Process()
    return Process(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def teardown() -> None:
    """Destroy the process group, if there is one (at the end of a command-line run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this is rank 0 (or the only process): the one that writes files and prints."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def device_of(requested: str | None, local_rank: int) -> torch.device:
    """The device of this process (``model.resolve_device``: "cuda" is the local rank's GPU), made CUDA's
    current device when it is a GPU."""
    device = modellib.resolve_device(requested, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array over all ranks (in rank order); a no-op in a single process."""
    if not dist.is_initialized():
        return arrays
    parts: list[dict[str, np.ndarray]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def all_ranks(value: float, op: dist.ReduceOp.RedOpType, device: torch.device) -> float:
    """``value`` reduced by ``op`` over every rank (MIN, MAX ...); itself in a single process."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (each rank's last step left its own running statistics)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier() -> None:
    """Wait for every rank (rank 0 has written what the others read next)."""
    if dist.is_initialized():
        dist.barrier()
