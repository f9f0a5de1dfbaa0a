"""Files per second on the CPU: the PyTorch ``Predictor`` against its ONNX export run by onnxruntime, side by side
on the same files.

    python bench/predict.py [--checkpoint best.pt] [--files 120] [--repeats 3]

The files are RAVDESS speech (``../shared/ravdess``, every ``--every``-th clip in sorted order: 3-5 s, two windows
of 3 s each); the model is ``--checkpoint`` or, without one, OpenAI's ``tiny.en`` (``../shared/whisper``) with an
untrained classifier head (the cost does not depend on the head's values). One untimed warm-up pass each, then
``--repeats`` timed passes over all files, the two alternating; the median of each. Both read the files and compute
the log-mel the same way (``predict.Predictor``): only the network differs. Prints and appends a row to
BENCHMARKS.md with the largest difference in any probability between the two.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
import predict  # noqa: E402
from bench.common import record  # noqa: E402
from labels import label_names  # noqa: E402
from model import ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def timed_pass(predictor: predict.Predictor, files: list[Path]) -> tuple[float, list[np.ndarray]]:
    """Seconds to predict every file, and each file's probabilities."""
    start = time.perf_counter()
    probs = [np.array(list(p.probabilities.values())) for _, p in predictor.predict_many(files)]
    return time.perf_counter() - start, probs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a run's best.pt (default: tiny.en, an untrained head)")
    parser.add_argument("--ravdess", type=Path, default=SHARED / "ravdess")
    parser.add_argument("--whisper", type=Path, default=SHARED / "whisper" / "tiny.en.pt")
    parser.add_argument("--files", type=int, default=120)
    parser.add_argument("--every", type=int, default=5, help="take every N-th clip, spreading over actors")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    files = sorted(args.ravdess.glob("Actor_*/*.wav"))[:: args.every][: args.files]
    if not files:
        parser.error(f"no RAVDESS clips (Actor_*/*.wav) under {args.ravdess}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None:
            torch.manual_seed(0)
            net = checkpoint.from_whisper(ModelConfig(whisper=str(args.whisper), dims=None,
                                                      labels=label_names("ravdess")), device="cpu")
            model = f"{args.whisper.name}, untrained head"
        else:
            net, model = checkpoint.load_model(args.checkpoint, device="cpu"), str(args.checkpoint)
        onnx_path = checkpoint.export_onnx(net, Path(tmp) / "model.onnx")
        predictors = {"PyTorch": predict.Predictor(net, "cpu"), "onnxruntime": predict.Predictor.from_onnx(onnx_path)}
        seconds = {name: [] for name in predictors}
        probs = {}
        for p in predictors.values():
            timed_pass(p, files[:4])  # warm-up
        for _ in range(args.repeats):
            for name, p in predictors.items():
                elapsed, probs[name] = timed_pass(p, files)
                seconds[name].append(elapsed)
    rate = {name: len(files) / statistics.median(s) for name, s in seconds.items()}
    gap = max(float(np.abs(a - b).max()) for a, b in zip(probs["PyTorch"], probs["onnxruntime"], strict=True))
    row = {"command": "`python bench/predict.py" + "".join(
               f" {flag} {value}" for flag, value in (("--checkpoint", args.checkpoint), ("--files", args.files),
                                                     ("--repeats", args.repeats)) if value is not None) + "`",
           "model": model, "files": f"{len(files)} RAVDESS clips", "PyTorch files/s": f"{rate['PyTorch']:.1f}",
           "onnxruntime files/s": f"{rate['onnxruntime']:.1f}",
           "onnxruntime / PyTorch": f"{rate['onnxruntime'] / rate['PyTorch']:.2f}x",
           "largest probability difference": f"{gap:.1e}", "torch threads": str(torch.get_num_threads())}
    for k, v in row.items():
        print(f"{k}: {v}")
    record("Prediction on the CPU: PyTorch and ONNX", row)


if __name__ == "__main__":
    main()
