"""Emotion model: Whisper's audio encoder, a pooling layer and three heads.

- ``load_encoder`` builds openai-whisper's ``AudioEncoder`` alone (the text decoder is never built)
  from a model name, a checkpoint file or ``random:<name>``, with its positional embedding trimmed
  to the first ``n_frames // 2`` rows so that it takes short clips (300 mel frames = 3 s) instead of
  Whisper's 30 s window.
- ``EmotionModel`` mixes the encoder's layers (or takes the last), pools the frames into an embedding
  and feeds a contrastive projection head, a classification head and an optional
  valence/arousal/dominance head.
- ``set_trainable`` freezes parts of the encoder; ``save_model``/``load_model`` write and read one
  self-describing file that rebuilds the model without the original Whisper checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import whisper
from torch import Tensor, nn
from whisper.audio import N_FRAMES
from whisper.model import AudioEncoder, ModelDimensions

log = logging.getLogger(__name__)

FORMAT = "whisper-ser/1"
POOLINGS = ("mean", "attentive")
LAYERS = ("weighted", "last")
POLICIES = ("heads", "all", "top:N")
DOWNLOAD_TIMEOUT_S = 30.0


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


def _check_n_frames(n_frames: int, most: int = N_FRAMES) -> None:
    if not isinstance(n_frames, int) or n_frames < 2 or n_frames % 2 or n_frames > most:
        raise ValueError(f"n_frames must be an even integer in 2..{most} (Whisper's encoder halves it "
                         f"and has {most // 2} positions), got {n_frames!r}")


def _download_root(download_root: str | None) -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return download_root or os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # whisper._download calls urlopen without a timeout: an unreachable host would block forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _resolve_checkpoint(name_or_path: str, download_root: str | None) -> Path:
    """Local file of an openai-whisper model name (downloading it when absent) or checkpoint path."""
    if name_or_path in whisper._MODELS:
        url = whisper._MODELS[name_or_path]
        root = _download_root(download_root)
        target = os.path.join(root, os.path.basename(url))
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                return Path(whisper._download(url, root, in_memory=False))
        except (OSError, RuntimeError) as e:  # URLError, timeouts and checksum errors
            raise FileNotFoundError(
                f"Whisper checkpoint {name_or_path!r} is not in {root} (looked for {target}) and could not "
                f"be downloaded from {url}: {e}. Pass the path of an openai-whisper checkpoint file "
                f"instead (e.g. WHISPER_CHECKPOINT=/path/to/{name_or_path}.pt for the demo and tests), or "
                f"put the file at {target}.") from None
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists() or os.sep in name_or_path or path.suffix in (".pt", ".pth", ".bin"):
        raise FileNotFoundError(f"Whisper checkpoint file {name_or_path} does not exist or is not a file")
    raise ValueError(f"unknown Whisper model {name_or_path!r}: use one of {whisper.available_models()}, "
                     f"random:<one of them> for an untrained encoder, or a checkpoint file path")


def _read_encoder_checkpoint(path: Path) -> tuple[ModelDimensions, dict[str, Tensor]]:
    """``dims`` and the ``encoder.*`` weights (prefix removed, float32) of an openai-whisper checkpoint."""
    try:
        # mmap: only the encoder's tensors are ever read from disk, never the decoder's.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # a damaged file makes the unpickler raise nearly anything (IndexError too)
        raise ValueError(f"{path} is not a readable openai-whisper checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not an openai-whisper checkpoint: expected the keys 'dims' and "
                         f"'model_state_dict', found {keys}")
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as e:
        raise ValueError(f"{path}: bad 'dims' {checkpoint['dims']}: {e}") from None
    state = {k.removeprefix("encoder."): v.float() for k, v in checkpoint["model_state_dict"].items()
             if k.startswith("encoder.")}
    return dims, state


def load_encoder(name_or_path: str, n_frames: int = 300, device: str | torch.device | None = None,
                 download_root: str | None = None) -> Encoder:
    """Whisper's audio encoder alone, float32, taking ``[B, n_mels, n_frames]`` mel inputs.

    name_or_path: an openai-whisper model name (``whisper.available_models()``; downloaded into
    ``download_root``, default ``~/.cache/whisper``), a checkpoint file in openai-whisper's format
    (``{"dims", "model_state_dict"}``), or ``random:<name>`` for an untrained encoder of that size.
    The positional embedding keeps its first ``n_frames // 2`` rows; every other weight is unchanged.
    ``encoder.dims`` holds the checkpoint's dims with ``n_audio_ctx = n_frames // 2``.
    """
    _check_n_frames(n_frames)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name_or_path.startswith("random:"):
        name = name_or_path.removeprefix("random:")
        if name not in DIMS:
            raise ValueError(f"unknown Whisper model {name!r} in {name_or_path!r}: use random:<name> with one "
                             f"of {list(DIMS)}")
        dims, state = DIMS[name], None
    else:
        path = _resolve_checkpoint(name_or_path, download_root)
        dims, state = _read_encoder_checkpoint(path)
        _check_n_frames(n_frames, 2 * dims.n_audio_ctx)
    encoder = Encoder(replace(dims, n_audio_ctx=n_frames // 2))
    if state is not None:
        state["positional_embedding"] = state["positional_embedding"][: n_frames // 2]
        try:
            encoder.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{name_or_path}: the encoder weights do not match its dims {dims}: {e}") from None
    return encoder.to(device)


@dataclass
class ModelConfig:
    """Everything needed to rebuild an ``EmotionModel`` without its Whisper checkpoint.

    dims: the encoder's ``ModelDimensions`` (``n_audio_ctx = n_frames // 2``); a dict is accepted
    (what ``asdict`` writes) and turned back into ``ModelDimensions``.
    """

    whisper: str  # where the encoder came from: a model name, a checkpoint path or random:<name>
    dims: ModelDimensions
    labels: list[str]
    n_frames: int = 300
    n_mels: int = 80
    pooling: str = "mean"  # "mean" | "attentive"
    layers: str = "weighted"  # "weighted": LayerMix of every encoder layer | "last": the final layer only
    proj_dim: int = 128
    vad_head: bool = False
    dropout: float = 0.1  # before the classification and VAD heads

    def __post_init__(self) -> None:
        if isinstance(self.dims, dict):
            self.dims = ModelDimensions(**self.dims)
        self.labels = list(self.labels)
        _check_n_frames(self.n_frames)
        if (self.n_mels, self.n_frames // 2) != (self.dims.n_mels, self.dims.n_audio_ctx):
            raise ValueError(f"n_mels={self.n_mels}, n_frames={self.n_frames} disagree with the encoder's dims "
                             f"n_mels={self.dims.n_mels}, n_audio_ctx={self.dims.n_audio_ctx} (= n_frames // 2)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; use one of {POOLINGS}")
        if self.layers not in LAYERS:
            raise ValueError(f"unknown layers {self.layers!r}; use one of {LAYERS}")
        if not self.labels:
            raise ValueError("labels must name at least one class")


class LayerMix(nn.Module):
    """A learned weighted sum of the encoder's layers, as SUPERB's featurizer (Yang et al., 2021).

    h = sum_l softmax(w)_l LN(h_l) over l = 0 (input embedding) .. n_layer, each h_l [B, T, D] normalised
    (layer norm without affine weights) so that the weights compare layers of different scales.
    Whisper's last layers are shaped for transcription; prosody, a main carrier of emotion, is better
    kept in lower ones, which the mix can draw on (``train.plot_layer_weights`` shows what it learned).
    """

    def __init__(self, n_layers: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_layers))  # uniform to start

    def forward(self, hidden: list[Tensor]) -> Tensor:
        w = torch.softmax(self.weight, dim=0)
        return sum(w[i] * F.layer_norm(h, h.shape[-1:]) for i, h in enumerate(hidden))


class AttentiveStatsPool(nn.Module):
    """Attentive statistics pooling (Okabe et al., 2018), projected back to the frames' width.

    a_t = softmax_t(v^T tanh(W h_t + b)),  mu = sum_t a_t h_t,  sigma = sqrt(sum_t a_t (h_t - mu)^2),
    output = Linear([mu; sigma]):  h [B, T, D] -> [B, D].
    """

    def __init__(self, n_state: int, n_hidden: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(n_state, n_hidden), nn.Tanh(), nn.Linear(n_hidden, 1))
        self.out = nn.Linear(2 * n_state, n_state)

    def forward(self, h: Tensor) -> Tensor:
        h = h.float()  # statistics in float32 also under bf16 autocast
        a = torch.softmax(self.attention(h).float(), dim=1)  # [B, T, 1]
        mu = (a * h).sum(1)
        sigma = (a * (h - mu.unsqueeze(1)).square()).sum(1).clamp(min=1e-6).sqrt()
        return self.out(torch.cat([mu, sigma], dim=-1))


class Standardize(nn.BatchNorm1d):
    """Per-feature standardisation of the pooled embedding before the heads, [B, D] -> [B, D]: batch norm
    without affine weights, as in MAE's linear probing (He et al., 2022), the trained counterpart of a
    probe's StandardScaler: the heads see each feature centred and scaled by its spread over clips
    (in tiny.en's pooled embeddings of the synthetic corpus, a feature's offset is a median 2.6 times that
    spread, and spreads range over 20x). A training batch of one clip (the last of an epoch can be) is
    standardised by the running statistics, as batch statistics need two.
    """

    def __init__(self, n_state: int):
        super().__init__(n_state, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=self.eps)
        return super().forward(x)


class EmotionModel(nn.Module):
    """Whisper encoder -> layer mix (or the last layer) -> pooling -> projection head, and standardisation
    -> classification and (optional) VAD heads.

    The embedding is the pooled encoder output, ``n_audio_state`` wide for both poolings (attentive
    pooling's [mean; std] is projected back to that width).
    """

    def __init__(self, config: ModelConfig, encoder: Encoder | None = None):
        super().__init__()
        self.config = config
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
        self.vad = nn.Linear(d, 3) if config.vad_head else None

    @classmethod
    def from_whisper(cls, whisper: str, *, labels: list[str], n_frames: int = 300, pooling: str = "mean",
                     layers: str = "weighted", proj_dim: int = 128, vad_head: bool = False, dropout: float = 0.1,
                     device: str | torch.device | None = None, download_root: str | None = None
                     ) -> EmotionModel:
        """A new model on a Whisper encoder (``load_encoder``'s ``whisper``: name, path or random:<name>)."""
        encoder = load_encoder(whisper, n_frames, device="cpu", download_root=download_root)
        config = ModelConfig(whisper=whisper, dims=encoder.dims, labels=labels, n_frames=n_frames,
                             n_mels=encoder.dims.n_mels, pooling=pooling, layers=layers, proj_dim=proj_dim,
                             vad_head=vad_head, dropout=dropout)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(config, encoder).to(device)

    def forward(self, mel: Tensor) -> dict[str, Tensor | None]:
        """mel: [B, n_mels, n_frames] -> embedding [B, D], projection [B, proj_dim] (unit L2 norm),
        logits [B, n_labels], vad [B, 3] in 0-1 (valence, arousal, dominance) or None."""
        h = self.mix(self.encoder.hidden_states(mel)) if self.mix is not None else self.encoder(mel)  # [B, T, D]
        embedding = self.pool(h) if self.pool is not None else h.mean(1)
        projection = F.normalize(self.projector(embedding).float(), dim=-1)
        x = self.dropout(self.norm(embedding.float()))
        vad = torch.sigmoid(self.vad(x)) if self.vad is not None else None
        return {"embedding": embedding, "projection": projection, "logits": self.classifier(x), "vad": vad}

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


def build_model(config: ModelConfig, device: str | torch.device | None = None,
                download_root: str | None = None) -> EmotionModel:
    """A new model for ``config`` with the pretrained encoder of ``config.whisper`` (heads untrained)."""
    model = EmotionModel.from_whisper(config.whisper, labels=config.labels, n_frames=config.n_frames,
                                      pooling=config.pooling, layers=config.layers, proj_dim=config.proj_dim,
                                      vad_head=config.vad_head, dropout=config.dropout, device=device,
                                      download_root=download_root)
    if model.config != config:
        raise ValueError(f"{config.whisper} gives dims {model.config.dims}, the config says {config.dims}")
    return model


def set_trainable(model: EmotionModel, policy: str) -> int:
    """Freeze by ``policy`` and return the number of trainable parameters.

    heads: the encoder is frozen, layer mix, pooling and heads train; all: everything trains; top:N: the last
    N encoder blocks, ``ln_post`` and the heads train (N in 0..n_audio_layer).
    Frozen parts get ``requires_grad=False`` and stay in eval mode (see ``EmotionModel.train``).
    """
    n_layer = len(model.encoder.blocks)
    if policy == "heads":
        trainable: list[nn.Module] = []
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
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("freeze policy %s: %d of %d parameters trainable", policy, count, total)
    return count


def autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, nothing (float32) elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_model(model: EmotionModel, path: str | Path, extra: dict | None = None) -> None:
    """Write ``{"format", "config", "state_dict", "extra"}`` to ``path`` atomically (temp file + rename).

    ``extra`` (e.g. epoch, metrics) must hold only what ``torch.load(weights_only=True)`` reads back:
    tensors, numbers, strings, None and lists/tuples/dicts of them.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(extra, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as e:
        raise TypeError(f"save_model extra={extra!r} holds objects weights_only loading refuses: {e}") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "config": asdict(model.config), "state_dict": state, "extra": extra}, path)


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader (or a run killed midway)
    never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_checkpoint(path: str | Path) -> dict:
    """The dict ``save_model`` wrote to ``path`` (tensors on CPU); ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file makes the unpickler raise nearly anything (IndexError too)
        raise ValueError(f"{path} is not a readable {FORMAT} model file: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and {"dims", "model_state_dict"} <= obj.keys():
            hint = " (it is an openai-whisper checkpoint: use it as EmotionModel.from_whisper's whisper=)"
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not a {FORMAT} model file (format: {found!r}){hint}")
    missing = {"config", "state_dict", "extra"} - obj.keys()
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    return obj


def load_model(path: str | Path, device: str | torch.device | None = None) -> EmotionModel:
    """The model ``save_model`` wrote, rebuilt from its stored config (no Whisper checkpoint needed), in
    eval mode (its ``extra``: ``read_checkpoint(path)["extra"]``)."""
    obj = read_checkpoint(path)
    try:
        model = EmotionModel(ModelConfig(**obj["config"]))
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: config or weights do not form a model: {e}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()
