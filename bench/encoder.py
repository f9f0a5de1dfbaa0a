"""Whisper encoder cost per clip: 300 mel frames (3 s, the trimmed encoder) against Whisper's full 3000.

    python bench/encoder.py [--models tiny,base] [--batch 2] [--repeats 3]

Each model (``random:<name>`` weights: the cost does not depend on their values) runs forward +
backward of ``loss = output.mean()`` with every encoder weight trainable, on a batch of random mels;
one untimed warm-up step, then the median of ``--repeats`` timed steps. Float32 on CPU; bf16 autocast
on CUDA (the training setting), where small and medium are added to the default models.

Activation memory is what autograd keeps for the backward pass: every tensor saved during the
forward (``torch.autograd.graph.saved_tensors_hooks``), counted once per storage, parameters
excluded. It is measured the same way on every device; on CUDA the peak of
``torch.cuda.max_memory_allocated`` above the memory held before the step (weights, gradients,
input) is reported as well. Prints and appends one row per model to BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import checkpoint  # noqa: E402
import model as modellib  # noqa: E402
from bench.common import record  # noqa: E402

SHORT, FULL = 300, 3000
MIB = 2**20


def saved_bytes(encoder: modellib.Encoder, mel: torch.Tensor, device: torch.device) -> int:
    """Bytes of the tensors one forward saves for backward (each storage once, parameters excluded)."""
    def forward() -> None:
        with modellib.Runtime(device).autocast():
            encoder(mel)

    return modellib.saved_activation_bytes(encoder, forward)


def measure(name: str, n_frames: int, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Seconds per fwd+bwd step, saved activation bytes and (CUDA) peak bytes above the baseline."""
    torch.manual_seed(0)
    encoder = checkpoint.load_encoder(f"random:{name}", n_frames=n_frames, device=device).train()
    mel = torch.randn(batch, encoder.dims.n_mels, n_frames, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        encoder.zero_grad(set_to_none=False)
        with modellib.Runtime(device).autocast():
            loss = encoder(mel).float().mean()
        loss.backward()
        sync()

    step()  # warm-up; also allocates the gradients, which then count in the baseline
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out = {"seconds": statistics.median(times), "saved": saved_bytes(encoder, mel, device), "peak": float("nan")}
    if device.type == "cuda":
        encoder.zero_grad(set_to_none=False)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        out["peak"] = torch.cuda.max_memory_allocated(device) - base
    return out


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,base,small,medium" if cuda else "tiny,base",
                        help="comma-separated openai-whisper sizes (random weights)")
    parser.add_argument("--batch", type=int, default=8 if cuda else 2, help="clips per step, both lengths")
    parser.add_argument("--repeats", type=int, default=5 if cuda else 3, help="timed steps (median)")
    args = parser.parse_args()
    device = modellib.resolve_device()
    precision = "bf16 autocast" if cuda else "fp32"
    print(f"device {device} ({precision}), batch {args.batch}, {args.repeats} timed steps after 1 warm-up, "
          f"{torch.get_num_threads()} threads")

    for name in args.models.split(","):
        short = measure(name, SHORT, args.batch, args.repeats, device)
        full = measure(name, FULL, args.batch, args.repeats, device)
        per_clip = {k: (short[k] / args.batch, full[k] / args.batch) for k in short}
        time_ratio = full["seconds"] / short["seconds"]
        mem_ratio = full["saved"] / short["saved"]
        ms, mib = per_clip["seconds"], per_clip["saved"]
        print(f"{name:>7}: fwd+bwd {1e3 * ms[0]:8.1f} vs {1e3 * ms[1]:8.1f} ms/clip ({time_ratio:5.1f}x), "
              f"activations {mib[0] / MIB:7.1f} vs {mib[1] / MIB:7.1f} MiB/clip ({mem_ratio:5.1f}x)")
        cuda_peak = "-"
        if cuda:
            peak = per_clip["peak"]
            cuda_peak = f"{peak[0] / MIB:.1f} / {peak[1] / MIB:.1f} ({full['peak'] / short['peak']:.1f}x)"
            print(f"         CUDA peak above baseline {cuda_peak} MiB/clip")
        record("Encoder: 300 vs 3000 frames", {
            "command": "`python bench/encoder.py`",
            "model": f"random:{name}",
            "precision": precision,
            "batch": args.batch,
            "fwd+bwd ms/clip 300 / 3000": f"{1e3 * ms[0]:.1f} / {1e3 * ms[1]:.1f}",
            "time 3000/300": f"{time_ratio:.1f}x",
            "activations MiB/clip 300 / 3000": f"{mib[0] / MIB:.1f} / {mib[1] / MIB:.1f}",
            "activations 3000/300": f"{mem_ratio:.1f}x",
            "CUDA peak MiB/clip 300 / 3000": cuda_peak,
        })


if __name__ == "__main__":
    main()
