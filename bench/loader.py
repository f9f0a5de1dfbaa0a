"""Data-loader throughput: DALI against the PyTorch fallback, side by side in one run.

    python bench/loader.py [--workers N] [--epochs N] [--speakers N] [--per-class N]

Both backends load the same synthetic corpus (prepare.make_synthetic, every split, saved to disk and
memory-mapped as in training) with the training settings: 3 s crops, 2 views, every augmentation of
``data.Augment()``, batch 64, the same number of CPU workers (DALI threads / DataLoader processes).
The first epoch (graph build, worker start) is not timed. Prints and appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import datasets  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import model as modellib  # noqa: E402
import prepare  # noqa: E402
from bench.common import record  # noqa: E402

BATCH, VIEWS, N_FRAMES = 64, 2, 300


def throughput(ds: datasets.Dataset, backend: str, workers: int, epochs: int, device: torch.device) -> float:
    """Clips per second over ``epochs`` epochs, after one untimed epoch."""
    loader = data.make_loader(ds, batch_size=BATCH, train=True, views=VIEWS, n_frames=N_FRAMES,
                              augment=data.Augment(), backend=backend, device=device, num_workers=workers)
    for _ in loader:
        pass
    if device.type == "cuda":
        torch.cuda.synchronize()
    clips, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            clips += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clips / (time.perf_counter() - start)


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=min(4, cores), help="CPU workers of each backend")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per backend")
    parser.add_argument("--speakers", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=12)
    args = parser.parse_args()
    device = modellib.resolve_device()

    corpus = prepare.make_synthetic(n_speakers=args.speakers, per_class=args.per_class, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus.save_to_disk(tmp)
        ds = datasets.concatenate_datasets([data.load_corpus(tmp, split) for split in corpus])
        speed = {backend: throughput(ds, backend, args.workers, args.epochs, device)
                 for backend in ("dali", "torch")}
    ratio = speed["dali"] / speed["torch"]
    settings = (f"{len(ds)} clips x {args.epochs} epochs, batch {BATCH}, {VIEWS} views, "
                f"{N_FRAMES // 100} s crops, all augmentations, {args.workers} workers, device {device}")
    print(f"DALI {speed['dali']:.0f} clips/s, PyTorch {speed['torch']:.0f} clips/s: "
          f"DALI/PyTorch = {ratio:.2f}x ({settings})")
    if device.type == "cuda":
        print(f"DALI keeps a training step fed if the step consumes at most {speed['dali']:.0f} clips/s: "
              "compare with the clips/s of a whisper-small training step on this GPU (bench/encoder.py).")
    record("Data loader", {
        "command": "`python bench/loader.py`",
        "DALI clips/s": f"{speed['dali']:.0f}",
        "PyTorch clips/s": f"{speed['torch']:.0f}",
        "DALI / PyTorch": f"{ratio:.2f}x",
        "settings": settings,
    })


if __name__ == "__main__":
    main()
