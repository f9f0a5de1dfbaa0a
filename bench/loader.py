"""Data-loader throughput: DALI against the PyTorch fallback, side by side in one run, and (on a GPU)
against what a whisper-small training step consumes.

    python bench/loader.py [--workers N] [--epochs N] [--speakers N] [--per-class N] [--rate HZ]

Both backends load the same synthetic corpus (synthetic.make_synthetic, every split, its audio stored at
``--rate`` Hz as 16-bit WAV, as RAVDESS and MSP-Podcast ship it, saved to disk and memory-mapped as in
training) with the training settings: 3 s crops, 2 views, every augmentation of ``data.Augment()``, batch
64, the same number of CPU workers (DALI threads / DataLoader processes). The first epoch (graph build,
worker start) is not timed. A backend that cannot run here (DALI not installed) is reported as such.
On CUDA the clips/s of a whisper-small training step (bench/throughput.py's, bf16, batch 64) is measured
on the same GPU: a loader keeps the step fed when it delivers at least that. Prints and appends a row to
BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import datasets  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from scipy.signal import resample_poly  # noqa: E402

import data  # noqa: E402
import model as modellib  # noqa: E402
import prepare  # noqa: E402
import synthetic  # noqa: E402
from audio import SAMPLE_RATE  # noqa: E402
from bench.common import record  # noqa: E402
from bench.throughput import step_rate  # noqa: E402

BATCH, VIEWS, N_FRAMES = 64, 2, 300


def throughput(ds: datasets.Dataset, backend: str, workers: int, epochs: int, device: torch.device) -> float:
    """Clips per second over ``epochs`` epochs, after one untimed epoch."""
    options = data.LoaderOptions(batch_size=BATCH, train=True, views=VIEWS, n_frames=N_FRAMES, augment=data.Augment(),
                                 backend=backend, num_workers=workers)
    loader = data.make_loader(ds, options, device=device)
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


def at_rate(ds: datasets.Dataset, rate: int) -> datasets.Dataset:
    """``ds`` with every clip's audio resampled from 16 kHz to ``rate`` Hz and stored as 16-bit WAV."""
    def resample(row: dict) -> dict:
        x, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        buffer = io.BytesIO()
        sf.write(buffer, resample_poly(x, rate, sr), rate, format="WAV", subtype="PCM_16")
        return {"audio": {"bytes": buffer.getvalue(), "path": row["audio"]["path"]}}

    return ds if rate == SAMPLE_RATE else ds.map(resample, features=ds.features)


def show(x: float | str | None) -> str:
    return "-" if x is None else x if isinstance(x, str) else f"{x:.0f}"


def ratio(a: float | str | None, b: float | str | None) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=min(4, cores), help="CPU workers of each backend")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per backend")
    parser.add_argument("--speakers", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--rate", type=int, default=48000, help="sample rate of the stored audio (Hz)")
    parser.add_argument("--flac16k", action="store_true",
                        help="also measure the corpus as prepare.py --flac16k stores it (16 kHz FLAC)")
    args = parser.parse_args()
    device = modellib.resolve_device()
    command = "`python bench/loader.py" + (" --flac16k`" if args.flac16k else "`")

    corpus = synthetic.make_synthetic(n_speakers=args.speakers, per_class=args.per_class, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        corpus.save_to_disk(tmp)
        ds = at_rate(datasets.concatenate_datasets([data.load_corpus(tmp, split) for split in corpus]), args.rate)
        forms = {f"{args.rate // 1000} kHz WAV": ds}
        if args.flac16k:
            forms["16 kHz FLAC (--flac16k)"] = prepare.to_16k_flac(datasets.DatasetDict({"all": ds}))["all"]
        problem = data.dali_problem(device)
        speeds: dict[str, dict[str, float | str]] = {}
        for form, stored in forms.items():
            speeds[form] = {"dali": f"not run: {problem}" if problem else
                            throughput(stored, "dali", args.workers, args.epochs, device),
                            "torch": throughput(stored, "torch", args.workers, args.epochs, device)}
    step = step_rate("small", BATCH, device) if device.type == "cuda" else None
    for form, speed in speeds.items():
        settings = (f"{len(ds)} clips stored as {form} x {args.epochs} epochs, batch {BATCH}, {VIEWS} views, "
                    f"{N_FRAMES // 100} s crops, all augmentations, {args.workers} workers, device {device}")
        print(f"DALI {show(speed['dali'])} clips/s, PyTorch {show(speed['torch'])} clips/s: "
              f"DALI/PyTorch = {ratio(speed['dali'], speed['torch'])} ({settings})")
        if step is not None:
            print(f"a whisper-small training step consumes {step:.0f} clips/s: DALI delivers "
                  f"{ratio(speed['dali'], step)} that, PyTorch {ratio(speed['torch'], step)}")
        record("Data loader", {
            "command": command,
            "DALI clips/s": show(speed["dali"]),
            "PyTorch clips/s": show(speed["torch"]),
            "DALI / PyTorch": ratio(speed["dali"], speed["torch"]),
            "whisper-small step clips/s": show(step),
            "loader / step (DALI, PyTorch)": f"{ratio(speed['dali'], step)}, {ratio(speed['torch'], step)}",
            "settings": settings,
        })


if __name__ == "__main__":
    main()
