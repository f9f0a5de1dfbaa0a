"""Emotion model: Whisper's audio encoder, a layer mix, pooling and three heads.

- ``DIMS`` and ``Encoder``: openai-whisper's ``AudioEncoder`` alone (the text decoder is never built), its
  context ``n_audio_ctx`` set to ``n_frames // 2`` so that it takes short clips (300 mel frames = 3 s)
  instead of Whisper's 30 s window.
- ``EmotionModel`` mixes the encoder's layers (or takes the last), pools the frames into an embedding and
  feeds a contrastive projection head, a classification head and an optional valence/arousal/dominance head.
- ``set_trainable`` freezes parts of the encoder (``n_parameters`` counts what trains); ``buffer_snapshot`` and
  ``restore_buffers`` undo what a forward pass in training mode does to the running statistics;
  ``resolve_device`` and ``Runtime`` say where and in which precision the model runs;
  ``saved_activation_bytes`` measures what a forward pass keeps for backward.

Weights come from ``checkpoint.py``, which builds these modules from a Whisper checkpoint and saves and
loads trained models; this module imports nothing of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import Tensor, nn
from whisper.audio import N_FRAMES
from whisper.model import AudioEncoder, ModelDimensions

log = logging.getLogger(__name__)

POOLINGS = ("mean", "attentive")
LAYERS = ("weighted", "last")
POLICIES = ("heads", "blocks", "all", "top:N")
PRECISIONS = ("auto", "fp32", "bf16")


def _dims(n_mels: int, n_state: int, n_head: int, n_layer: int, n_vocab: int,
          n_text_layer: int | None = None) -> ModelDimensions:
    return ModelDimensions(n_mels=n_mels, n_audio_ctx=1500, n_audio_state=n_state, n_audio_head=n_head,
                           n_audio_layer=n_layer, n_vocab=n_vocab, n_text_ctx=448, n_text_state=n_state,
                           n_text_head=n_head, n_text_layer=n_text_layer or n_layer)


# Published sizes of every openai-whisper model (the dims stored in its checkpoint), for `random:<name>`.
# Vocabulary: 51864 English-only, 51865 multilingual, 51866 from large-v3 on (one more language).
DIMS: dict[str, ModelDimensions] = {
    "tiny.en": _dims(80, 384, 6, 4, 51864),
    "tiny": _dims(80, 384, 6, 4, 51865),
    "base.en": _dims(80, 512, 8, 6, 51864),
    "base": _dims(80, 512, 8, 6, 51865),
    "small.en": _dims(80, 768, 12, 12, 51864),
    "small": _dims(80, 768, 12, 12, 51865),
    "medium.en": _dims(80, 1024, 16, 24, 51864),
    "medium": _dims(80, 1024, 16, 24, 51865),
    "large-v1": _dims(80, 1280, 20, 32, 51865),
    "large-v2": _dims(80, 1280, 20, 32, 51865),
    "large-v3": _dims(128, 1280, 20, 32, 51866),
    "large": _dims(128, 1280, 20, 32, 51866),
    "large-v3-turbo": _dims(128, 1280, 20, 32, 51866, n_text_layer=4),
    "turbo": _dims(128, 1280, 20, 32, 51866, n_text_layer=4),
}


class Encoder(AudioEncoder):
    """Whisper's ``AudioEncoder`` for ``dims`` (``n_audio_ctx`` = n_frames // 2), with its dims attached
    and a ValueError instead of a bare assert on a mel of the wrong shape."""

    def __init__(self, dims: ModelDimensions):
        super().__init__(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head,
                         dims.n_audio_layer)
        self.dims = dims

    @property
    def n_frames(self) -> int:
        """Mel frames per input (the stride-2 convolution halves them into ``n_audio_ctx`` positions)."""
        return 2 * self.dims.n_audio_ctx

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, n_mels, n_frames] log-mel -> [B, n_frames // 2, n_audio_state]."""
        self._check(x)
        return super().forward(x)

    def hidden_states(self, x: Tensor) -> list[Tensor]:
        """x: [B, n_mels, n_frames] -> n_audio_layer + 1 tensors [B, n_frames // 2, n_audio_state]: the input
        embedding (convolutions + positions), then each block's output, the last after ``ln_post`` (so it
        equals ``forward``)."""
        self._check(x)
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).permute(0, 2, 1)
        hidden = [(x + self.positional_embedding).to(x.dtype)]
        for block in self.blocks:
            hidden.append(block(hidden[-1]))
        hidden[-1] = self.ln_post(hidden[-1])
        return hidden

    def _check(self, x: Tensor) -> None:
        expected = (self.dims.n_mels, self.n_frames)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected a mel of shape [batch, {expected[0]}, {expected[1]}] "
                             f"(n_mels, n_frames), received {list(x.shape)}")


def check_n_frames(n_frames: int, most: int = N_FRAMES) -> None:
    if not isinstance(n_frames, int) or n_frames < 2 or n_frames % 2 or n_frames > most:
        raise ValueError(f"n_frames must be an even integer in 2..{most} (Whisper's encoder halves it "
                         f"and has {most // 2} positions), got {n_frames!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an ``EmotionModel`` without its Whisper checkpoint.

    dims: the encoder's ``ModelDimensions`` (``n_audio_ctx = n_frames // 2``); None until
    ``checkpoint.from_whisper`` reads them from the Whisper checkpoint; a dict is accepted (what ``asdict``
    writes) and turned back into ``ModelDimensions``. vad_head: a valence/arousal/dominance head; vad_probe: that
    head is a linear probe written in by ``evaluate.fold_probe`` (a contrastive model's or a probe's), read
    without the sigmoid a trained head ends with. temperature: of the classifier's probabilities, fitted on
    validation after training (``calibration.calibrated``, applied where a row's or a file's probabilities are
    formed: ``evaluate.predict_split``, ``predict.Predictor``); 1 is none.
    """

    whisper: str  # where the encoder came from: a model name, a checkpoint path or random:<name>
    dims: ModelDimensions | None
    labels: list[str]
    n_frames: int = 300
    n_mels: int = 80
    pooling: str = "mean"  # "mean" | "attentive"
    layers: str = "weighted"  # "weighted": LayerMix of every encoder layer | "last": the final layer only
    proj_dim: int = 128
    vad_head: bool = False
    dropout: float = 0.1  # before the classification and VAD heads
    vad_probe: bool = False
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.dims, dict):
            object.__setattr__(self, "dims", ModelDimensions(**self.dims))
        object.__setattr__(self, "labels", list(self.labels))
        check_n_frames(self.n_frames)
        if self.dims is not None and (self.n_mels, self.n_frames // 2) != (self.dims.n_mels, self.dims.n_audio_ctx):
            raise ValueError(f"n_mels={self.n_mels}, n_frames={self.n_frames} disagree with the encoder's dims "
                             f"n_mels={self.dims.n_mels}, n_audio_ctx={self.dims.n_audio_ctx} (= n_frames // 2)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use one of {POOLINGS}")
        if self.layers not in LAYERS:
            raise ValueError(f"unknown layers {self.layers!r}; use one of {LAYERS}")
        if not self.labels:
            raise ValueError("labels must name at least one class")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.vad_probe and not self.vad_head:
            raise ValueError("vad_probe describes the VAD head: it needs vad_head=True")


class LayerMix(nn.Module):
    """A learned weighted sum of the encoder's layers, as SUPERB's featurizer (Yang et al., 2021).

    h = sum_l softmax(w)_l LN(h_l) over l = 0 (input embedding) .. n_layer, each h_l [B, T, D] normalised
    (layer norm without affine weights) so that the weights compare layers of different scales.
    Whisper's last layers are shaped for transcription; prosody, a main carrier of emotion, is better
    kept in lower ones, which the mix can draw on (``report.plot_layer_weights`` shows what it learned).
    """

    def __init__(self, n_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers))  # uniform to start

    def forward(self, hidden: list[Tensor]) -> Tensor:
        w = torch.softmax(self.weight, dim=0)
        return sum(w[i] * F.layer_norm(h, h.shape[-1:]) for i, h in enumerate(hidden))


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` of zeros, built without a random initialisation (``skip_init``), so that building a model
    with it leaves the random stream of a run as it would be without it."""
    layer = torch.nn.utils.skip_init(nn.Linear, n_in, n_out)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return layer


def valid_positions(frames: Tensor, n_positions: int) -> Tensor:
    """[B] mel frames that hold each clip -> [B, n_positions] bool: the encoder positions they reach (the
    stride-2 convolution turns frames 2t-1..2t+1 into position t, so ceil(frames / 2) of them)."""
    return torch.arange(n_positions, device=frames.device) < (frames[:, None] + 1) // 2


def mean_pool(h: Tensor, valid: Tensor | None = None) -> Tensor:
    """h [B, T, D] -> [B, D]: the mean over the positions ``valid`` [B, T] (None: all)."""
    if valid is None:
        return h.mean(1)
    w = valid.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1)


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018), projected back to the frames' width.

    a_t = softmax_t(v^T tanh(W h_t + b)),  mu = sum_t a_t h_t,  sigma = sqrt(sum_t a_t (h_t - mu)^2),
    output = Linear([mu; sigma]):  h [B, T, D] -> [B, D], over the positions ``valid`` [B, T] (None: all).
    """

    def __init__(self, n_state: int, n_hidden: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(n_state, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 1))
        self.out = nn.Linear(2 * n_state, n_state)

    def forward(self, h: Tensor, valid: Tensor | None = None) -> Tensor:
        h = h.float()  # statistics in float32 also under bf16 autocast
        score = self.attention(h).float()  # [B, T, 1]
        if valid is not None:
            score = score.masked_fill(~valid[..., None], -torch.inf)
        a = torch.softmax(score, dim=1)
        mu = (a * h).sum(1)
        sigma = (a * (h - mu.unsqueeze(1)).square()).sum(1).clamp(min=1e-6).sqrt()
        return self.out(torch.cat([mu, sigma], dim=-1))


class Standardize(nn.BatchNorm1d):
    """Per-feature standardisation of the pooled embedding before the heads, [B, D] -> [B, D]: batch norm
    without affine weights, as in MAE's linear probing (He et al., 2022), the trained counterpart of a
    probe's StandardScaler: the heads see each feature centred and scaled by its spread over clips (pooled
    Whisper features sit far from zero, with spreads that differ widely between features: BENCHMARKS.md).
    A training batch of one clip (the last of an epoch can be) is standardised by the running statistics,
    as batch statistics need two. Under ``torch.distributed`` a training batch is standardised by the
    statistics of every process's batch together (all-reduced sums and counts, with gradients, as
    ``SyncBatchNorm`` does, on any backend), so N processes train as one with their global batch.
    """

    def __init__(self, n_state: int):
        super().__init__(n_state, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, D] -> [B, D]."""
        if self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return self._synchronised(x)
        if self.training and x.shape[0] < 2:
            return self._by_running_statistics(x)
        return super().forward(x)

    def _by_running_statistics(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)

    def _synchronised(self, x: Tensor) -> Tensor:
        """Batch statistics over all processes: two all-reduces (sum, then squared deviations from the global
        mean: no E[x^2] - E[x]^2 cancellation for features far from zero), differentiable."""
        n = torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)
        dist.all_reduce(n)
        n = int(n.item())
        if n < 2:
            return self._by_running_statistics(x)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = dist_nn.all_reduce(x32.sum(0)) / n
        var = dist_nn.all_reduce((x32 - mean).pow(2).sum(0)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), self.momentum)
        return ((x32 - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


class EmotionModel(nn.Module):
    """Whisper encoder -> layer mix (or the last layer) -> pooling -> projection head, and standardisation
    -> classification and (optional) VAD heads.

    The embedding is the pooled encoder output, ``n_audio_state`` wide for both poolings (attentive
    pooling's [mean; std] is projected back to that width).
    """

    def __init__(self, config: ModelConfig, encoder: Encoder | None = None):
        super().__init__()
        self.config = config
        if config.dims is None:
            raise ValueError("the model config has no encoder dims: build it with checkpoint.from_whisper")
        if encoder is not None and encoder.dims != config.dims:
            raise ValueError(f"encoder dims {encoder.dims} differ from the config's {config.dims}")
        self.encoder = encoder if encoder is not None else Encoder(config.dims)
        d = config.dims.n_audio_state
        self.mix = LayerMix(config.dims.n_audio_layer + 1) if config.layers == "weighted" else None
        self.pool = AttentiveStatsPool(d) if config.pooling == "attentive" else None
        self.norm = Standardize(d)
        self.dropout = nn.Dropout(config.dropout)
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, config.proj_dim))
        self.classifier = nn.Linear(d, len(config.labels))
        self.vad = None
        if config.vad_head:  # a probe head is written in, never trained: zeros, drawing nothing from the RNG
            self.vad = nn.Linear(d, 3) if not config.vad_probe else _zero_linear(d, 3)

    def forward(self, mel: Tensor, frames: Tensor | None = None) -> dict[str, Tensor | None]:
        """mel: [B, n_mels, n_frames] -> embedding [B, D], projection [B, proj_dim] (unit L2 norm),
        logits [B, n_labels], vad [B, 3] in 0-1 (valence, arousal, dominance) or None. frames: [B] int64, the
        mel frames that hold each clip (the loaders' ``frames``; the rest is padding), which alone are pooled;
        None: every frame."""
        h = self.mix(self.encoder.hidden_states(mel)) if self.mix is not None else self.encoder(mel)  # [B, T, D]
        valid = None if frames is None else valid_positions(frames, h.shape[1])
        embedding = self.pool(h, valid) if self.pool is not None else mean_pool(h, valid)
        projection = F.normalize(self.projector(embedding).float(), dim=-1)
        x = self.dropout(self.norm(embedding.float()))
        vad = None
        if self.vad is not None:  # a folded linear probe is read as it is, a trained head through its sigmoid
            vad = self.vad(x) if self.config.vad_probe else torch.sigmoid(self.vad(x))
        return {"embedding": embedding, "projection": projection, "logits": self.classifier(x), "vad": vad}

    def layer_weights(self) -> Tensor:
        """[n_audio_layer + 1] the softmax weights of the ``LayerMix`` (input embedding, then each block), on the
        CPU: which encoder layers the embedding draws on; ValueError for a model with ``layers="last"``."""
        if self.mix is None:
            raise ValueError("this model uses the last encoder layer only (layers='last'): there are no layer weights")
        return torch.softmax(self.mix.weight.detach().float().cpu(), dim=0)

    def encoder_parts(self) -> list[nn.Module]:
        """The encoder's modules in input-to-output order: conv1, conv2, blocks..., ln_post."""
        e = self.encoder
        return [e.conv1, e.conv2, *e.blocks, e.ln_post]

    def train(self, mode: bool = True) -> EmotionModel:
        """Like ``nn.Module.train``, but frozen encoder parts (no trainable parameter) stay in eval mode."""
        super().train(mode)
        for part in self.encoder_parts():
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self


def set_trainable(model: EmotionModel, policy: str) -> int:
    """Freeze by ``policy`` and return the number of trainable parameters.

    heads: the encoder is frozen, layer mix, pooling and heads train; blocks: every encoder block, ``ln_post``
    and the heads train (the convolutional stem stays frozen); all: everything trains; top:N: the last N encoder
    blocks, ``ln_post`` and the heads train (N in 0..n_audio_layer).
    Frozen parts get ``requires_grad=False`` and stay in eval mode (see ``EmotionModel.train``).
    """
    n_layer = len(model.encoder.blocks)
    if policy == "heads":
        trainable: list[nn.Module] = []
    elif policy == "blocks":
        trainable = [*model.encoder.blocks, model.encoder.ln_post]
    elif policy == "all":
        trainable = model.encoder_parts()
    elif policy.startswith("top:"):
        n = policy.removeprefix("top:")
        if not n.isdigit() or int(n) > n_layer:
            raise ValueError(f"freeze policy {policy!r}: N must be an integer in 0..{n_layer} "
                             f"(the encoder's blocks)")
        trainable = [*model.encoder.blocks[n_layer - int(n):], model.encoder.ln_post]
    else:
        raise ValueError(f"unknown freeze policy {policy!r}; use one of {POLICIES}")
    model.requires_grad_(True)
    model.encoder.requires_grad_(False)
    for part in trainable:
        part.requires_grad_(True)
    model.train(model.training)
    count = n_parameters(model, trainable=True)
    log.info("freeze policy %s: %d of %d parameters trainable", policy, count, n_parameters(model))
    return count


def n_parameters(module: nn.Module, trainable: bool = False) -> int:
    """How many parameters ``module`` has; ``trainable``: only those that train (``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def buffer_snapshot(module: nn.Module) -> list[Tensor]:
    """Copies of ``module``'s buffers (``Standardize``'s running statistics ...), for ``restore_buffers``."""
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module: nn.Module, snapshot: list[Tensor]) -> None:
    """Put back the buffers that ``buffer_snapshot`` copied (a forward pass in training mode moves them)."""
    with torch.no_grad():
        for b, before in zip(module.buffers(), snapshot, strict=True):
            b.copy_(before)


def saved_activation_bytes(module: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the tensors that autograd keeps for the backward pass while ``forward()`` runs ``module``:
    every saved tensor, counted once per storage, ``module``'s parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


def resolve_device(device: str | torch.device | None = None, rank: int = 0) -> torch.device:
    """``device`` as a ``torch.device``; None: GPU ``rank`` (the local rank under torchrun) when CUDA is
    available, else the CPU. A GPU named without an index ("cuda") is GPU ``rank``."""
    if device is None:
        return torch.device(f"cuda:{rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    return torch.device("cuda", rank) if device.type == "cuda" and device.index is None else device


@dataclass(frozen=True)
class Runtime:
    """Where a model runs and in which precision: ``device``, and ``precision`` for its forward passes (auto:
    bf16 autocast on CUDA, float32 elsewhere; fp32; bf16)."""

    device: torch.device
    precision: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def resolve(cls, device: str | torch.device | None = None, precision: str = "auto") -> Runtime:
        """``device`` as ``resolve_device`` reads it (None: the GPU if there is one, else the CPU)."""
        return cls(resolve_device(device), precision)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: bf16 autocast for "bf16", and for "auto" on CUDA; float32 (no autocast)
        for "fp32", and for "auto" elsewhere."""
        if self.precision == "bf16" or (self.precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()
