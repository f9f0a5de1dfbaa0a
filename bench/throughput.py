"""Training throughput and model FLOPs utilisation (MFU) of a Whisper encoder fine-tune at 300 mel frames.

    python bench/throughput.py [--model small] [--batch 64] [--steps 20] [--peak-tflops P]

One training step is what ``train.py --freeze all`` does: an ``EmotionModel`` (every encoder block trainable,
learned layer mix, mean pooling) forward under the run's autocast (bf16 on CUDA, fp32 on CPU),
cross-entropy, backward, AdamW. PyTorch's speed settings are added one at a time, each run measured side by
side on the same machine, so each row says what one setting adds to the ones before it:

1. ``eager``: openai-whisper's attention with ``scaled_dot_product_attention`` (its default), AdamW ``foreach``;
2. ``no SDPA``: the same with whisper's explicit softmax attention (what SDPA buys, by contrast);
3. ``+ fused AdamW``; 4. ``+ TF32`` matmuls for what runs in float32; 5. ``+ torch.compile`` of the model.

FLOPs are counted analytically (``encoder_flops``): the convolutions, and per block the q/k/v/output
projections, the attention scores and their product with the values, and the MLP, at 2 FLOPs per
multiply-add; backward is twice the forward. The heads, layer mix, norms and softmax are left out (under
0.5 % for every size). MFU is achieved TFLOP/s over ``--peak-tflops``: by default the dense BF16 peak of the
GPU's datasheet where the name is known (H100 / H200 SXM: 989), else not reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from whisper.model import ModelDimensions, MultiHeadAttention  # noqa: E402

import checkpoint  # noqa: E402
import model as modellib  # noqa: E402
from bench.common import record  # noqa: E402

N_FRAMES = 300
N_CLASSES = 8
# Dense BF16 tensor-core peak in TFLOP/s from NVIDIA's datasheets (SXM parts), by a word of the device name.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
VARIANTS = ("eager", "no SDPA", "+ fused AdamW", "+ TF32", "+ torch.compile")


def encoder_flops(dims: ModelDimensions, n_frames: int) -> float:
    """FLOPs of one clip's encoder forward pass ([n_mels, n_frames] -> [n_frames // 2, d])."""
    d, t = dims.n_audio_state, n_frames // 2
    convs = 2 * (3 * dims.n_mels * d * n_frames) + 2 * (3 * d * d * t)
    per_block = 2 * (4 * t * d * d) + 2 * (2 * t * t * d) + 2 * (2 * t * d * 4 * d)
    return convs + dims.n_audio_layer * per_block


def peak_tflops(device: torch.device) -> float | None:
    """The datasheet's dense BF16 peak of ``device``'s GPU, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


@contextlib.contextmanager
def settings(variant: str):
    """The PyTorch settings of ``variant`` (and of every variant before it, except "no SDPA"), restored after."""
    k = VARIANTS.index(variant)
    sdpa, tf32 = MultiHeadAttention.use_sdpa, torch.backends.cuda.matmul.allow_tf32
    MultiHeadAttention.use_sdpa = variant != "no SDPA"
    torch.backends.cuda.matmul.allow_tf32 = k >= VARIANTS.index("+ TF32")
    try:
        yield
    finally:
        MultiHeadAttention.use_sdpa, torch.backends.cuda.matmul.allow_tf32 = sdpa, tf32


def training_step(name: str, batch: int, device: torch.device, variant: str = "eager") -> Callable[[], None]:
    """A closure running one training step of ``random:<name>`` on a fixed random batch (synchronised)."""
    k = VARIANTS.index(variant)
    torch.manual_seed(0)
    config = modellib.ModelConfig(whisper=f"random:{name}", dims=None, labels=[str(i) for i in range(N_CLASSES)],
                                  n_frames=N_FRAMES)
    net = checkpoint.from_whisper(config, device=device)
    modellib.set_trainable(net, "all")
    net.projector.requires_grad_(False)  # a supervised run's projection head gets no gradient
    params = [p for p in net.parameters() if p.requires_grad]
    fused = k >= VARIANTS.index("+ fused AdamW") and device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=fused or None)
    if k >= VARIANTS.index("+ torch.compile"):
        net.compile()
    mel = torch.randn(batch, net.config.n_mels, N_FRAMES, device=device)
    labels = torch.randint(0, N_CLASSES, (batch,), device=device)
    runtime = modellib.Runtime(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with runtime.autocast():
            loss = F.cross_entropy(net(mel)["logits"].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()

    return step


def clips_per_second(step: Callable[[], None], batch: int, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def step_rate(name: str, batch: int, device: torch.device, steps: int = 10) -> float:
    """Clips per second that a training step of ``random:<name>`` consumes on ``device`` (eager settings)."""
    with settings("eager"):
        return clips_per_second(training_step(name, batch, device), batch, steps)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small" if cuda else "tiny", help="openai-whisper size (random weights)")
    parser.add_argument("--batch", type=int, default=64 if cuda else 4, help="clips per step")
    parser.add_argument("--steps", type=int, default=20 if cuda else 3, help="timed steps after 3 warm-ups")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the peak MFU is measured against")
    args = parser.parse_args()
    device = modellib.resolve_device()
    peak = args.peak_tflops or peak_tflops(device)
    dims = modellib.DIMS[args.model]
    flops = 3 * encoder_flops(dims, N_FRAMES)  # forward + backward, per clip
    precision = "bf16 autocast" if cuda else "fp32"
    print(f"random:{args.model}, {N_FRAMES} frames, batch {args.batch}, {precision}, {args.steps} timed steps; "
          f"{flops / 1e9:.1f} GFLOP per clip (fwd+bwd); peak {peak or 'unknown'} TFLOP/s")
    for variant in args.variants.split(","):
        with settings(variant):
            rate = clips_per_second(training_step(args.model, args.batch, device, variant), args.batch, args.steps)
        achieved = rate * flops / 1e12
        mfu = f"{100 * achieved / peak:.1f} %" if peak else "-"
        print(f"{variant:>16}: {rate:8.1f} clips/s  {achieved:7.1f} TFLOP/s  MFU {mfu}")
        record("Training throughput and MFU", {
            "command": "`python bench/throughput.py`",
            "model": f"random:{args.model}, {N_FRAMES} frames, every block trainable",
            "precision": precision,
            "batch": args.batch,
            "variant": variant,
            "clips/s": f"{rate:.1f}",
            "TFLOP/s": f"{achieved:.1f}",
            "MFU": f"{mfu} of {peak:.0f}" if peak else "-",
        })


if __name__ == "__main__":
    main()
