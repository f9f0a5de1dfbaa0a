"""One training loop for both notebooks and the command line.

    python train.py --data data/ravdess --whisper tiny.en                 # Config()'s defaults: python train.py --help
    python train.py --data data/synthetic --objective supcon --epochs 6
    torchrun --nproc_per_node=4 train.py --data data/iemocap --four-class  # DistributedDataParallel

``fit(cfg)`` trains, evaluates on the validation split every epoch and on the test split at the end, and
returns ``{"validation": {...}, "test": {...}, ...}`` with UA (unweighted average recall), WA (accuracy),
macro-F1, the confusion matrix and, where the corpus has valence/arousal/dominance, their concordance
correlation coefficients. Contrastive objectives (SimCLR, SupCon) are judged by a linear probe on frozen
embeddings (train -> validation/test). ``best.pt`` is chosen by validation UA only: the test split never
takes part in model selection. The corpus's floor is ``baseline``: the same probe and metrics on log-mel
statistics.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

import checkpoint
import data
import losses
import model as modellib
from data import AUGMENTATIONS, BACKENDS
from labels import NOT_EMOTIONS, VAD

OBJECTIVES = ("supervised", "simclr", "supcon")
BASELINE = "logistic regression on the mean and std over time of the clip's log-mel"


def option(default: object, help: str, choices: Sequence[str] | None = None) -> dataclasses.Field:
    """A ``Config`` field: its default, the help line of its flag and, where there is a fixed set, its choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    """Everything a run depends on; saved as ``config.json`` in the run directory.

    The defaults are the supervised recipe that BENCHMARKS.md reports on real speech (RAVDESS,
    speaker-independent folds, tiny.en); a notebook or command line overrides what its corpus needs.
    """

    data: str | list[str] = option("data/synthetic", "save_to_disk folder(s) or Hub id(s); several combine corpora")
    folds: list[str] | None = option(None, "cross-validation: prepared folds (e.g. IEMOCAP's five test sessions), "
                                           "one run each in run_dir/fold_K and a table of their test metrics; "
                                           "replaces data")
    whisper: str = option("tiny", "openai-whisper model name, checkpoint path, or random:<name> (untrained)")
    n_frames: int = option(300, "mel frames per clip, 100 per second (Whisper's full context is 3000)")
    objective: str = option("supervised", "training objective", OBJECTIVES)
    vad_negatives: bool = option(False, "contrastive: valence/arousal/dominance-aware negatives (losses.VadNegatives)")
    vad_threshold: float = option(0.1, "VAD-aware negatives: VAD distance under which a pair is not a negative")
    vad_beta: float = option(1.0, "VAD-aware negatives: hardness concentration of the negative weights")
    vad_alpha: float = option(1.0, "VAD-aware negatives: power of the VAD distance in the negative weights")
    temperature: float = option(0.1, "contrastive: softmax temperature")
    gather_negatives: bool = option(True, "contrastive under torchrun: every anchor contrasts against the views of "
                                          "all processes (the global batch), as SimCLR and SupCon train")
    freeze: str = option("top:4", "what trains (model.set_trainable): heads | all | top:N (the last N encoder blocks; "
                                   "tiny has 4, base 6, small 12)")
    four_class: bool = option(False, "keep neutral / happy (+excited) / sad / angry only")
    exclude: tuple[str, ...] = option(NOT_EMOTIONS, "labels left out of training and scoring (kept in the label "
                                                    "space); give the flag alone to keep every row")
    layers: str = option("weighted", "encoder output: a learned mix of every layer, or the last", modellib.LAYERS)
    pooling: str = option("mean", "frames -> clip embedding", modellib.POOLINGS)
    proj_dim: int = option(128, "contrastive projection width")
    dropout: float = option(0.1, "dropout before the classification and VAD heads")
    vad_weight: float = option(0.0, "supervised: weight of the VAD regression loss next to cross-entropy (> 0 adds "
                                    "the VAD head)")
    class_weights: str | None = option("balanced", "supervised: cross-entropy class weights; balanced: inverse "
                                                   "training frequency (the Odyssey 2024 baseline's), none: equal",
                                       ("balanced", None))
    augment: bool = option(True, "training augmentations (data.Augment: crop, shift, speed, gain, noise, SpecAugment)")
    augment_off: tuple[str, ...] = option((), "augmentations left out, the others kept (an ablation)",
                                          tuple(AUGMENTATIONS))
    windows: bool = option(True, "evaluate whole utterances: mean over windows covering each (off: its centre crop)")
    epochs: int = option(10, "training epochs (0: evaluate the model as built, e.g. a probe on the frozen encoder)")
    batch_size: int = option(32, "clips per step and process (under torchrun: times the number of processes)")
    lr: float = option(1e-4, "peak learning rate of the heads, layer mix and pooling (warm-up, then cosine)")
    encoder_lr: float | None = option(None, "peak learning rate of the trainable encoder blocks (none: lr)")
    layer_decay: float = option(1.0, "layer-wise learning-rate decay: the encoder block k below the top learns at "
                                     "encoder_lr x layer_decay^k, the convolutions at layer_decay^n_blocks (1: off)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    wise: tuple[float, ...] = option((), "supervised, WiSE-FT (Wortsman et al., 2022): after training, interpolate "
                                         "best.pt's weights towards the start's, (1 - a) * best + a * start, for "
                                         "each a given; validation UA chooses among them and a = 0")
    ema: float = option(0.0, "exponential moving average of the weights, its decay per step (0: off); validation, "
                             "best.pt and the result use the average, which starts at the initial weights")
    label_smoothing: float = option(0.0, "supervised: cross-entropy label smoothing")
    mixup: float = option(0.0, "supervised: mixup (Zhang et al., 2018) of pairs of clips' log-mels and targets, "
                               "weight ~ Beta(mixup, mixup) per batch (0: off)")
    warmup: float = option(0.1, "fraction of all steps spent warming up linearly")
    grad_clip: float = option(1.0, "gradient norm clip (0: off)")
    precision: str = option("auto", "auto: bf16 autocast on GPU, fp32 on CPU", modellib.PRECISIONS)
    compile: bool = option(False, "torch.compile the model: faster GPU steps (bench/throughput.py) after a minute "
                                  "or more of compiling; for long runs")
    backend: str = option("auto", "data loader; auto: DALI where it runs, else torch", BACKENDS)
    num_workers: int = option(2, "DALI threads or DataLoader processes")
    skip_nonfinite: bool = option(False, "skip (and count) steps whose loss is not finite instead of stopping, and "
                                         "leave clips with a non-finite embedding out of linear probes (reported)")
    log_every: int = option(0, "print a line every N steps (0: progress bar only)")
    seed: int = option(0, "initialisation, batch order and augmentation")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (none: the local rank's GPU if there is one, else cpu)")
    run_dir: str = option("runs/default", "where the run writes best.pt, last.pt, metrics and figures")
    resume: bool = option(False, "continue from run_dir/last.pt")
    init: str | None = option(None, "start the representation from a saved model (e.g. a contrastive best.pt)")
    probe_init: bool = option(True, "supervised: start the classifier from the linear probe on the embeddings of "
                                    "the model as built, then train as configured (LP-FT; off: a random classifier)")

    def __post_init__(self) -> None:
        self.exclude, self.augment_off = tuple(self.exclude), tuple(self.augment_off)
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema is a decay per step in [0, 1), got {self.ema}")
        self.wise = tuple(self.wise)
        if not all(0 <= a <= 1 for a in self.wise) or (self.wise and self.contrastive):
            raise ValueError(f"wise takes interpolation weights in [0, 1] for a supervised objective, got {self.wise} "
                             f"for {self.objective}")
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and not set(value if isinstance(value, tuple) else [value]) <= set(choices):
                raise ValueError(f"{f.name} must be one of {tuple(choices)}, got {value!r}")

    @property
    def contrastive(self) -> bool:
        return self.objective != "supervised"

    def corpus(self, split: str) -> datasets.Dataset:
        """The rows of ``split`` this configuration trains or scores on (``data.load_corpus``)."""
        return data.load_corpus(self.data, split, four_class=self.four_class, exclude=self.exclude)

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, object], **fixed: object) -> Config:
        """A Config of the fields that ``namespace`` (a notebook's ``globals()``: its parameters cell and what
        papermill injected) defines, and ``fixed``; every other field keeps its default."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in namespace.items() if k in names}, **fixed})


# ----------------------------------------------------------------------------- metrics


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Concordance correlation coefficient (Lin, 1989) of two 1-D arrays:
    2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)."""
    mx, my = y_true.mean(), y_pred.mean()
    cov = ((y_true - mx) * (y_pred - my)).mean()
    return float(2 * cov / (y_true.var() + y_pred.var() + (mx - my) ** 2 + 1e-12))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """UA (mean recall over the classes present in y_true), WA (accuracy), macro-F1 (same classes)
    and the full ``n_classes`` x ``n_classes`` confusion matrix (rows: true)."""
    present = np.unique(y_true)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    recall = cm[present, present] / cm[present].sum(axis=1)
    return {
        "ua": float(recall.mean()),
        "wa": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "confusion": cm.tolist(),
    }


def vad_metrics(vad_true: np.ndarray, vad_pred: np.ndarray) -> dict:
    """CCC per dimension over the rows whose reference VAD is finite ([N, 3] arrays)."""
    keep = np.isfinite(vad_true).all(axis=1)
    if keep.sum() < 2:
        return {}
    return {f"ccc_{name}": ccc(vad_true[keep, i], vad_pred[keep, i]) for i, name in enumerate(VAD)}


# ----------------------------------------------------------------------------- distributed


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        return rank, world, int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])


def setup_device(device: str | None, local_rank: int) -> torch.device:
    """The device of this process (``model.resolve_device``), made CUDA's current device when it is a GPU."""
    device = modellib.resolve_device(device, local_rank)
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


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_split(net: modellib.EmotionModel, loader: data.Loader, device: torch.device,
                  amp=None) -> dict[str, np.ndarray]:
    """Run ``net`` over an evaluation loader, gathered over ranks. Arrays over the N rows of the split,
    sorted by row: ``index``, ``emotion``, ``vad`` [N, 3], ``probs`` [N, n_labels], ``vad_pred`` [N, 3] (NaN
    without a VAD head), ``embedding`` [N, D], ``windows`` [N]; a row scored on several windows
    (``make_loader(windows=True)``) gets the mean over them, as ``predict.py`` scores a file. And over the
    W windows: ``window_embedding`` [W, D] and ``window_row`` [W] (each one's position in the N rows)."""
    was_training = net.training
    net.eval()
    keys = ("index", "emotion", "vad", "probs", "vad_pred", "embedding")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in loader:
        with amp or contextlib.nullcontext():
            y = net(batch["mel"].to(device), batch["frames"].to(device))
        vad_pred = y["vad"] if y["vad"] is not None else torch.full_like(batch["vad"], math.nan)
        values = (batch["index"], batch["emotion"], batch["vad"], y["logits"].float().softmax(-1), vad_pred.float(),
                  y["embedding"].float())
        for k, v in zip(keys, values, strict=True):
            out[k].append(v.numpy(force=True))
    net.train(was_training)
    arrays = gather({k: np.concatenate(v) for k, v in out.items()})
    rows, first, inverse = np.unique(arrays["index"], return_index=True, return_inverse=True)
    return {"index": rows, "emotion": arrays["emotion"][first], "vad": arrays["vad"][first],
            **{k: row_mean(arrays[k], inverse) for k in ("probs", "vad_pred", "embedding")},
            "windows": np.bincount(inverse), "window_embedding": arrays["embedding"], "window_row": inverse}


def row_mean(x: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Mean of the windows ``x`` [W, ...] of each row; ``row`` [W] numbers the rows 0..N-1 -> [N, ...]."""
    total = np.zeros((row.max() + 1, *x.shape[1:]), dtype=np.float64)
    np.add.at(total, row, x)
    return (total / np.bincount(row).reshape(-1, *[1] * (x.ndim - 1))).astype(x.dtype)


def head_metrics(pred: dict[str, np.ndarray], n_classes: int) -> dict:
    """Metrics of the model's own classification (and VAD) heads."""
    metrics = classification_metrics(pred["emotion"], pred["probs"].argmax(1), n_classes)
    if np.isfinite(pred["vad_pred"]).all():
        metrics.update(vad_metrics(pred["vad"], pred["vad_pred"]))
    return metrics


def evaluate(net: modellib.EmotionModel, loaders: dict[str, data.Loader], names: tuple[str, ...], *,
             contrastive: bool, device: torch.device, amp=None, seed: int = 0, skip_nonfinite: bool = False
             ) -> tuple[dict[str, dict], Pipeline | None]:
    """Metrics on each split in ``names``, and the linear probe they come from (None for the heads).

    A supervised model is scored by its own heads; a contrastive one by a linear probe fitted on
    ``loaders["train"]`` (an evaluation loader: no augmentation; ``skip_nonfinite``: see ``linear_probe``)."""
    n_classes = len(net.config.labels)
    preds = {s: predict_split(net, loaders[s], device, amp) for s in names}
    if contrastive:
        return linear_probe(predict_split(net, loaders["train"], device, amp), preds, n_classes, seed,
                            skip_nonfinite)
    return {s: head_metrics(p, n_classes) for s, p in preds.items()}, None


def linear_probe(train: dict[str, np.ndarray], evals: dict[str, dict[str, np.ndarray]], n_classes: int,
                 seed: int = 0, skip_nonfinite: bool = False) -> tuple[dict[str, dict], Pipeline]:
    """Class-balanced logistic regression (and ridge regression for VAD) on the frozen embeddings of ``train``,
    one per utterance (``predict_split``'s ``embedding``: the mean over its windows), scored the same way on
    each split of ``evals`` (name -> arrays of ``predict_split``); returns (metrics, classifier).

    A training clip whose embedding is not finite (corrupt audio) is an error naming its rows, or with
    ``skip_nonfinite`` left out of the fit, its rows reported on stderr."""
    bad = ~np.isfinite(train["embedding"]).all(axis=1)
    if bad.any():
        rows = train["index"][bad].tolist()
        if not skip_nonfinite:
            raise ValueError(f"linear probe: {bad.sum()} training clip(s) have a non-finite embedding (rows {rows}: "
                             "corrupt audio?); fix them, or set skip_nonfinite=True to leave them out")
        print(f"linear probe: left out {bad.sum()} training clip(s) with a non-finite embedding (rows {rows})",
              file=sys.stderr)
    x, label, vad = train["embedding"][~bad], train["emotion"][~bad], train["vad"][~bad]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                             random_state=seed)).fit(x, label)
    has_vad = np.isfinite(vad).all(axis=1)
    reg = None
    if has_vad.sum() >= 2:
        reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[has_vad], vad[has_vad])
    results = {}
    for name, split in evals.items():
        metrics = classification_metrics(split["emotion"], clf.predict(split["embedding"]), n_classes)
        if reg is not None:
            metrics.update(vad_metrics(split["vad"], reg.predict(split["embedding"])))
        results[name] = metrics
    return results, clf


def fold_probe(net: modellib.EmotionModel, probe: Pipeline) -> None:
    """Write a fitted probe (StandardScaler + LogisticRegression on embeddings) into ``net.classifier``,
    so that a contrastive checkpoint classifies as its probe does wherever the model is loaded.

    The classifier sees the embedding e standardised by ``net.norm``'s running statistics, z = (e - m) / s;
    the probe's W (e - mu) / sigma + b equals W' z + b' with W' = W s / sigma, b' = b + W (m - mu) / sigma.
    Classes the probe never saw get a logit of -1e4 (probability 0); a binary probe's single row becomes
    [0, w]."""
    scaler, clf = probe[0], probe[-1]
    m = net.norm.running_mean.double().cpu().numpy()
    s = (net.norm.running_var.double() + net.norm.eps).sqrt().cpu().numpy()
    coef = clf.coef_ / scaler.scale_
    bias = clf.intercept_ + coef @ (m - scaler.mean_)
    coef = coef * s
    if len(clf.classes_) == 2:
        coef, bias = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    layer = net.classifier
    weight = torch.zeros_like(layer.weight)
    b = torch.full_like(layer.bias, -1e4)
    weight[clf.classes_] = torch.as_tensor(coef, dtype=weight.dtype, device=weight.device)
    b[clf.classes_] = torch.as_tensor(bias, dtype=b.dtype, device=b.device)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(b)


def start_from_probe(net: modellib.EmotionModel, train_loader: data.Loader, device: torch.device, amp,
                     seed: int = 0, skip_nonfinite: bool = False) -> None:
    """LP-FT (Kumar et al., 2022): the classifier starts as the class-balanced linear probe (``linear_probe``) on
    the embeddings of the model as built, so that fine-tuning begins from a head that already classifies
    instead of a random one. ``net.norm``'s statistics are set to the embeddings' own, which training batches
    then approximately reproduce, and the probe is written into the classifier by ``fold_probe``.
    ``train_loader``: an evaluation loader of the training split."""
    pred = predict_split(net, train_loader, device, amp)
    _, probe = linear_probe(pred, {}, len(net.config.labels), seed, skip_nonfinite)
    embedding = torch.as_tensor(pred["embedding"][np.isfinite(pred["embedding"]).all(axis=1)], dtype=torch.float64)
    with torch.no_grad():
        net.norm.running_mean.copy_(embedding.mean(0))
        net.norm.running_var.copy_(embedding.var(0))
    fold_probe(net, probe)


def clip_statistics(encoded: bytes, name: str = "") -> np.ndarray:
    """Mean and standard deviation over time of the log-mel (``data.log_mel``) of a whole clip -> [160]."""
    mel = data.log_mel(torch.from_numpy(data.decode_audio(encoded, name=name))).numpy()  # [80, T]
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)])


def baseline(splits: Mapping[str, datasets.Dataset], seed: int = 0) -> dict[str, dict]:
    """The corpus's floor: ``linear_probe`` on ``clip_statistics`` (``BASELINE``), fitted on ``splits["train"]``
    and scored by the same metrics as trained models on every other non-empty split."""
    def arrays(ds: datasets.Dataset) -> dict[str, np.ndarray]:
        cells = ds.select_columns(["audio"])["audio"]
        x = np.stack([clip_statistics(data.encoded_audio(c, f"row {i}"), f"row {i}") for i, c in enumerate(cells)])
        return {"index": np.arange(len(ds)), "embedding": x, "emotion": np.array(ds["emotion"]),
                "vad": np.stack([np.asarray(ds[c], dtype=np.float32) for c in VAD], axis=1)}

    evals = {name: arrays(ds) for name, ds in splits.items() if name != "train" and len(ds)}
    n_classes = len(splits["train"].features["emotion"].names)
    return linear_probe(arrays(splits["train"]), evals, n_classes, seed)[0]


# ----------------------------------------------------------------------------- the pieces of a run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_loaders(cfg: Config, splits: dict[str, datasets.Dataset], device: torch.device, rank: int,
                  world: int) -> tuple[data.Loader, dict[str, data.Loader]]:
    """The training loader (augmented, two views for a contrastive objective) and an evaluation loader per
    split; each rank reads its own shard."""
    kw = dict(n_frames=cfg.n_frames, backend=cfg.backend, device=device, shard_id=rank, num_shards=world,
              num_workers=cfg.num_workers)
    augment = data.Augment().without(cfg.augment_off) if cfg.augment else None
    train_loader = data.make_loader(splits["train"], batch_size=cfg.batch_size, train=True,
                                    views=2 if cfg.contrastive else 1, augment=augment, seed=cfg.seed, **kw)
    evals = {s: data.make_loader(ds, batch_size=cfg.batch_size, train=False, windows=cfg.windows, **kw)
             for s, ds in splits.items()}
    return train_loader, evals


def build_model(cfg: Config, labels: list[str], device: torch.device) -> modellib.EmotionModel:
    """The model of ``cfg`` on its Whisper encoder (or ``cfg.init``'s representation), frozen by ``cfg.freeze``.

    Heads the objective never uses stay frozen (DDP needs every trainable parameter to get a gradient); a
    contrastive run's classifier is its linear probe, written in by ``fold_probe``."""
    net = checkpoint.from_whisper(cfg.whisper, n_frames=cfg.n_frames, labels=labels, layers=cfg.layers,
                                  pooling=cfg.pooling, proj_dim=cfg.proj_dim, vad_head=cfg.vad_weight > 0,
                                  dropout=cfg.dropout, device=device)
    if cfg.init:
        start = checkpoint.load_model(cfg.init, device=device)
        for part in ("encoder", "mix", "pool"):  # the representation; the heads start afresh
            src, dst = getattr(start, part), getattr(net, part)
            if (src is None) != (dst is None):
                raise ValueError(f"init {cfg.init}: its {part} is {type(src).__name__}, this run's is "
                                 f"{type(dst).__name__} (match its layers/pooling: "
                                 f"{start.config.layers}/{start.config.pooling})")
            if dst is not None:
                dst.load_state_dict(src.state_dict())
    modellib.set_trainable(net, cfg.freeze)
    if cfg.compile:
        net.compile()  # in place: the state dict's keys stay those of the plain model
    for head in [net.classifier, net.vad] if cfg.contrastive else [net.projector]:
        if head is not None:
            head.requires_grad_(False)
    return net


def encoder_depths(net: modellib.EmotionModel) -> list[tuple[int, torch.nn.Module]]:
    """(depth below the top, part) for each of ``net.encoder_parts()`` (conv1, conv2, blocks..., ln_post):
    ``ln_post`` and the last block 0, the block below 1, ..., both convolutions ``n_blocks``: the exponent of
    ``Config.layer_decay``."""
    n = len(net.encoder.blocks)
    return [(min(n, max(0, n + 1 - j)), part) for j, part in enumerate(net.encoder_parts())]


def build_optimizer(cfg: Config, net: modellib.EmotionModel) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the heads, layer mix and pooling at ``lr``, an encoder part at
    ``encoder_lr`` (default ``lr``) x ``layer_decay`` ^ its depth (``encoder_depths``); fused into one kernel on
    a GPU (faster steps: bench/throughput.py)."""
    rest = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    groups = [{"params": rest, "lr": cfg.lr}]
    for depth, part in encoder_depths(net):
        params = [p for p in part.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": (cfg.encoder_lr or cfg.lr) * cfg.layer_decay ** depth})
    fused = next(net.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused or None)


def lr_lambda(total_steps: int, warmup: float):
    """Linear warm-up over ``warmup * total_steps`` steps, then cosine decay to 0."""
    warm = max(1, int(warmup * total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return f


@dataclass
class Criterion:
    """What the loss needs beside the batch: VAD-aware negatives (contrastive), class weights [n_labels]
    (cross-entropy). ``Criterion()``: neither."""

    vad_negatives: losses.VadNegatives | None = None
    class_weight: torch.Tensor | None = None

    @classmethod
    def of(cls, cfg: Config, train_split: datasets.Dataset, device: torch.device) -> Criterion:
        """``cfg``'s criterion; "balanced" class weights from the labels of ``train_split``."""
        weight = None
        if cfg.class_weights == "balanced" and not cfg.contrastive:
            n_labels = len(train_split.features["emotion"].names)
            weight = torch.as_tensor(balanced_weights(np.asarray(train_split["emotion"]), n_labels), device=device)
        negatives = losses.VadNegatives(cfg.vad_threshold, cfg.vad_beta, cfg.vad_alpha) if cfg.vad_negatives else None
        return cls(negatives, weight)


def balanced_weights(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """float32 [n_labels]: n / (k n_c) for each of the k classes present (n_c rows of N = n), as sklearn's
    ``class_weight="balanced"``; 0 for a class without rows (it is never a target)."""
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    present = counts > 0
    weight = np.zeros(n_labels)
    weight[present] = len(labels) / (present.sum() * counts[present])
    return weight.astype(np.float32)


def compute_loss(cfg: Config, net: torch.nn.Module, batch: dict[str, torch.Tensor],
                 criterion: Criterion | None = None) -> torch.Tensor:
    """The objective of ``cfg`` on one training batch: the one place where supervised, SimCLR and SupCon differ.

    supervised: cross-entropy on the logits (weighted by ``criterion.class_weight``, smoothed by
    ``label_smoothing``), plus ``vad_weight`` x MSE of the VAD head on the clips with VAD; with ``mixup``, each
    clip's log-mel is mixed with another's of the batch, and so are the two terms' targets.
    simclr / supcon: the contrastive loss of the projections of the batch's two views ``mel`` [B, 2, M, T]."""
    criterion = criterion or Criterion()
    mel, labels, vad, frames = batch["mel"], batch["emotion"], batch["vad"], batch.get("frames")
    if cfg.contrastive:
        b, views = mel.shape[:2]
        z = net(mel.flatten(0, 1), None if frames is None else frames.flatten())["projection"]
        z = z.float().view(b, views, -1)
        kw = dict(vad=vad, vad_negatives=criterion.vad_negatives, gather=cfg.gather_negatives)
        if cfg.objective == "simclr":
            return losses.nt_xent(z[:, 0], z[:, 1], cfg.temperature, **kw)
        return losses.supcon(z, labels, cfg.temperature, **kw)
    mix, other = 1.0, torch.arange(len(mel), device=mel.device)
    if cfg.mixup > 0:
        mix = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
        other = torch.randperm(len(mel)).to(mel.device)
        mel = mix * mel + (1 - mix) * mel[other]
        frames = None if frames is None else torch.maximum(frames, frames[other])
        vad = mix * vad + (1 - mix) * vad[other]  # NaN (no VAD) in either: left out below
    y = net(mel, frames)
    logits = y["logits"].float()
    loss = sum(w * F.cross_entropy(logits, target, weight=criterion.class_weight, label_smoothing=cfg.label_smoothing)
               for w, target in ((mix, labels), (1 - mix, labels[other])) if w > 0)
    has_vad = torch.isfinite(vad).all(dim=1)
    if y["vad"] is not None and has_vad.any():
        loss = loss + cfg.vad_weight * F.mse_loss(y["vad"].float()[has_vad], vad[has_vad])
    return loss


def train_step(cfg: Config, net: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler, criterion: Criterion | None, amp, step: int) -> float | None:
    """One optimisation step; the loss, or None when ``cfg.skip_nonfinite`` skipped it.

    Every rank takes the step or skips it together (a rank that skipped its backward alone would leave the
    others waiting in the gradient all-reduce). A skipped step leaves the weights and the model's buffers
    (``Standardize``'s running statistics) as they were before its forward pass."""
    saved = [b.clone() for b in net.buffers()] if cfg.skip_nonfinite else []
    with amp:
        loss = compute_loss(cfg, net, batch, criterion)
    optimizer.zero_grad(set_to_none=True)
    if not all_ranks(float(torch.isfinite(loss)), dist.ReduceOp.MIN, loss.device):
        if not cfg.skip_nonfinite:
            raise FloatingPointError(f"non-finite loss ({loss.item()} here) at step {step}; lower the learning rate, "
                                     "or set skip_nonfinite=True to skip such steps")
        with torch.no_grad():
            for b, before in zip(net.buffers(), saved, strict=True):
                b.copy_(before)
        scheduler.step()
        return None
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


@dataclass
class MemoryEstimate:
    """What a training step holds on its GPU, in bytes: ``fixed`` (weights, gradients and AdamW's two moments)
    plus ``per_clip`` (activations kept for backward, per training clip with all its views) times the batch;
    ``available``: what the GPU has for them (free, and what this process already holds)."""

    fixed: int
    per_clip: int
    available: int

    def need(self, batch_size: int) -> int:
        return self.fixed + batch_size * self.per_clip

    def largest_batch(self) -> int:
        return max(0, (self.available - self.fixed) // max(1, self.per_clip))

    def describe(self, batch_size: int) -> str:
        gib = 2**30
        line = (f"GPU memory: about {self.need(batch_size) / gib:.1f} GiB for batch_size {batch_size} (weights, "
                f"gradients and AdamW {self.fixed / gib:.2f} GiB + {self.per_clip / 2**20:.0f} MiB a clip) of "
                f"{self.available / gib:.1f} GiB available")
        if self.need(batch_size) > self.available:
            line += f"; it will probably not fit: about {self.largest_batch()} clips do"
        return line


def estimate_memory(cfg: Config, net: modellib.EmotionModel, device: torch.device, amp,
                    available: int | None = None) -> MemoryEstimate:
    """Measure ``MemoryEstimate`` for ``net`` on ``device``: its parameters, and one training-mode forward pass
    of two clips (their views) under ``amp`` (``model.saved_activation_bytes``); the model's buffers and the
    random state are left as they were. ``available`` defaults to the GPU's free memory plus this process's."""
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    fixed = sum(p.numel() * p.element_size() for p in net.parameters()) + 3 * trainable
    views = 2 if cfg.contrastive else 1
    mel = torch.zeros(2 * views, net.config.n_mels, cfg.n_frames, device=device)
    buffers, was_training = [b.clone() for b in net.buffers()], net.training

    def forward() -> None:
        with amp:
            net(mel)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        per_clip = modellib.saved_activation_bytes(net.train(), forward) // 2
    net.train(was_training)
    with torch.no_grad():
        for b, before in zip(net.buffers(), buffers, strict=True):
            b.copy_(before)
    if available is None:
        available = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    return MemoryEstimate(fixed, per_clip, available)


@contextlib.contextmanager
def explain_out_of_memory(batch_size: int, estimate: MemoryEstimate | None) -> Iterator[None]:
    """Re-raise a CUDA out-of-memory error naming the batch size and the largest that the estimate fits."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        if estimate is None:
            raise
        raise torch.cuda.OutOfMemoryError(
            f"out of GPU memory at batch_size {batch_size}; by the estimate about {estimate.largest_batch()} "
            f"clips fit ({estimate.describe(batch_size)}): set batch_size (--batch-size) to that or less") from e


@dataclass
class Progress:
    """Where a run stands; saved in ``last.pt`` after every epoch."""

    epoch: int = 0  # epochs done
    step: int = 0
    best_ua: float = -1.0  # validation UA of best.pt
    skipped: int = 0  # steps skipped for a non-finite loss
    history: list[dict] = field(default_factory=list)  # one record per epoch

    def end_epoch(self, losses: list[float], val: dict, seconds: float) -> dict:
        """Count an epoch done and record its mean training loss and validation metrics."""
        self.epoch += 1
        self.history.append({"epoch": self.epoch, "step": self.step, "train_loss": sum(losses) / max(1, len(losses)),
                             "skipped": self.skipped, "seconds": seconds,
                             **{f"val_{k}": v for k, v in val.items() if k != "confusion"}})
        return self.history[-1]


def moving_average(net: modellib.EmotionModel, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``net``'s weights and buffers (None for decay 0), starting at its
    weights now; ``update_parameters(net)`` after each step moves it ``1 - decay`` of the way to them."""
    if not decay:
        return None
    average = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    average.update_parameters(net)
    return average


def save_last(path: Path, net: torch.nn.Module, optimizer, scheduler, progress: Progress,
              device: torch.device, average: AveragedModel | None = None) -> None:
    """Everything ``restore_last`` needs to continue the run exactly: weights (and their moving average),
    optimiser, schedule, RNG."""
    checkpoint.atomic_save({"model": net.state_dict(), "average": average and average.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                            "progress": json.dumps(dataclasses.asdict(progress))}, path)


def restore_last(path: Path, net: torch.nn.Module, optimizer, scheduler, device: torch.device,
                 average: AveragedModel | None = None) -> Progress:
    """Load what ``save_last`` wrote into the run's objects; returns where the run stood."""
    state = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    if average is not None:
        if state.get("average") is None:
            raise ValueError(f"{path} holds no moving average of the weights: resume it with ema 0, as it ran")
        average.load_state_dict(state["average"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return Progress(**json.loads(state["progress"]))


def start_run(cfg: Config, last: Path, net: modellib.EmotionModel, optimizer, scheduler, train_loader: data.Loader,
              device: torch.device, amp) -> tuple[Progress, AveragedModel | None, modellib.EmotionModel]:
    """Where the run starts (``last`` when resuming; else the model as built, its classifier from the linear
    probe for LP-FT, saved as ``start.pt`` for WiSE-FT), the moving average of its weights (``cfg.ema``) and
    the model that validation scores and ``best.pt`` holds (the average where there is one, else ``net``)."""
    resume = cfg.resume and last.exists()
    if cfg.probe_init and not cfg.contrastive and not resume:
        start_from_probe(net, train_loader, device, amp, cfg.seed, cfg.skip_nonfinite)
    if cfg.wise and not resume and (not dist.is_initialized() or dist.get_rank() == 0):
        checkpoint.save_model(net, last.with_name("start.pt"))  # WiSE-FT interpolates towards it
    average = moving_average(net, cfg.ema)
    progress = restore_last(last, net, optimizer, scheduler, device, average) if resume else Progress()
    return progress, average, net if average is None else average.module


class RunLog:
    """What rank 0 writes into the run directory: ``config.json``, TensorBoard scalars, ``metrics.jsonl`` (a line
    per epoch, then the final metrics), ``results.json``, and lines on stdout; on other ranks it does nothing."""

    def __init__(self, cfg: Config, main: bool, progress: Progress):
        self.main = main
        if main:
            from torch.utils.tensorboard import SummaryWriter

            run_dir = Path(cfg.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            self.jsonl = open(run_dir / "metrics.jsonl", "a" if progress.epoch else "w")
            self.results = run_dir / "results.json"
            if cfg.resume:
                print(f"resumed from {run_dir / 'last.pt'} at epoch {progress.epoch} (step {progress.step})"
                      if progress.epoch else f"nothing to resume in {run_dir}: starting afresh")

    def step(self, step: int, loss: float, lr: float, every: int, epoch: int) -> None:
        if self.main:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            if every and step % every == 0:
                tqdm.write(f"step {step} epoch {epoch} loss {loss:.4f}")

    def epoch(self, record: dict) -> None:
        if self.main:
            for k, v in record.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"epoch/{k}", v, record["epoch"])
            self._line(record)
            tqdm.write(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  val UA {record['val_ua']:.3f} "
                       f"WA {record['val_wa']:.3f} F1 {record['val_macro_f1']:.3f}"
                       + (f"  ({record['skipped']} skipped)" if record["skipped"] else ""))

    def final(self, result: dict) -> None:
        if self.main:
            self._line({"final": {k: result[k] for k in ("validation", "test")}})
            self.jsonl.close()
            self.writer.close()
            self.results.write_text(json.dumps(result, indent=2))
            t = result["test"]
            print(f"test: UA {t['ua']:.3f}  WA {t['wa']:.3f}  macro-F1 {t['macro_f1']:.3f}"
                  + "".join(f"  CCC {n[4:]} {t[n]:.3f}" for n in t if n.startswith("ccc_")))

    def _line(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()


def interpolate(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT's weights, ``(1 - alpha) * end + alpha * start`` entry by entry (integer buffers: ``end``'s)."""
    return {k: torch.lerp(v, start[k], alpha) if v.is_floating_point() else v for k, v in end.items()}


def wise_ft(cfg: Config, net: modellib.EmotionModel, best: Path, eval_loaders: dict[str, data.Loader],
            device: torch.device, amp, save: bool) -> dict:
    """Load into ``net`` (holding ``best``'s weights) its interpolation towards ``start.pt`` beside ``best``
    that scores the highest validation UA, of ``alpha`` 0 and each of ``cfg.wise`` (ties: the smaller
    alpha); ``save``: write it to ``best``. Returns {"alpha": the chosen one, "validation_ua": alpha -> UA}."""
    end = {k: v.clone() for k, v in net.state_dict().items()}
    start = checkpoint.load_model(best.with_name("start.pt"), device=device).state_dict()
    scores = {}
    for alpha in sorted({0.0, *cfg.wise}):
        net.load_state_dict(interpolate(start, end, alpha))
        val, _ = evaluate(net, eval_loaders, ("validation",), contrastive=False, device=device, amp=amp,
                          seed=cfg.seed, skip_nonfinite=cfg.skip_nonfinite)
        scores[alpha] = val["validation"]["ua"]
    alpha = max(scores, key=scores.get)
    net.load_state_dict(interpolate(start, end, alpha))
    print("WiSE-FT validation UA by alpha: " + ", ".join(f"{a:g}: {ua:.3f}" for a, ua in scores.items())
          + f"; alpha {alpha:g} kept")
    if save:
        checkpoint.save_model(net, best, extra={**checkpoint.read_checkpoint(best)["extra"], "wise_alpha": alpha})
    return {"alpha": alpha, "validation_ua": scores}


# ----------------------------------------------------------------------------- the loop


def fit(cfg: Config) -> dict:
    """Train as ``cfg`` says; returns ``{"validation": metrics, "test": metrics, "history": [...], ...}``."""
    rank, world, local_rank = setup_distributed()
    main = rank == 0
    device = setup_device(cfg.device, local_rank)
    amp = modellib.autocast(device, cfg.precision)
    seed_everything(cfg.seed)

    splits = {s: cfg.corpus(s) for s in ("train", "validation", "test")}
    train_loader, eval_loaders = build_loaders(cfg, splits, device, rank, world)
    net = build_model(cfg, splits["train"].features["emotion"].names, device)
    optimizer = build_optimizer(cfg, net)
    steps_per_epoch = int(all_ranks(len(train_loader), dist.ReduceOp.MIN, device))  # DDP: the same on every rank
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup))
    ddp = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    criterion = Criterion.of(cfg, splits["train"], device)
    last, best = Path(cfg.run_dir) / "last.pt", Path(cfg.run_dir) / "best.pt"
    progress, average, scored = start_run(cfg, last, net, optimizer, scheduler, eval_loaders["train"], device, amp)
    log = RunLog(cfg, main, progress)
    memory = estimate_memory(cfg, net, device, amp) if device.type == "cuda" else None
    if main:
        print(f"{cfg.objective} on {cfg.data}: {len(splits['train'])} train clips, {len(net.config.labels)} labels, "
              f"{sum(p.numel() for p in net.parameters() if p.requires_grad):,} trainable parameters, "
              f"{world} process(es) on {device}" + (f"\n{memory.describe(cfg.batch_size)}" if memory else ""))

    def evaluate_and_save(epoch: int) -> dict:
        """Validation metrics; ``best.pt`` when they are the best yet (rank 0 writes, every rank agrees)."""
        if world > 1:  # each rank's last step left its own buffers (Standardize's statistics): use rank 0's
            for buffer in scored.buffers():
                dist.broadcast(buffer, 0)
        val, probe = evaluate(scored, eval_loaders, ("validation",), contrastive=cfg.contrastive, device=device,
                              amp=amp, seed=cfg.seed, skip_nonfinite=cfg.skip_nonfinite)
        if val["validation"]["ua"] > progress.best_ua or cfg.epochs == 0:
            progress.best_ua = val["validation"]["ua"]
            if probe is not None:
                fold_probe(scored, probe)
            if main:
                checkpoint.save_model(scored, best, extra={"epoch": epoch, "seed": cfg.seed, "objective": cfg.objective,
                                                        "val": val["validation"]})
        return val["validation"]

    for epoch in range(progress.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        ddp.train()
        t0, seen, losses_seen = time.perf_counter(), 0, []
        bar = tqdm(itertools.islice(train_loader, steps_per_epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main, leave=False)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            with explain_out_of_memory(cfg.batch_size, memory):
                loss = train_step(cfg, ddp, batch, optimizer, scheduler, criterion, amp, progress.step)
            progress.step += 1
            if average is not None:
                average.update_parameters(net)
            if loss is None:
                progress.skipped += 1
                continue
            losses_seen.append(loss)
            seen += len(batch["mel"]) * world
            bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{seen / (time.perf_counter() - t0):.1f}")
            log.step(progress.step, loss, scheduler.get_last_lr()[0], cfg.log_every, epoch + 1)
        val = evaluate_and_save(epoch + 1)
        log.epoch(progress.end_epoch(losses_seen, val, time.perf_counter() - t0))
        if main:
            save_last(last, net, optimizer, scheduler, progress, device, average)
    if cfg.epochs == 0:  # nothing to train (e.g. the linear probe before contrastive training): as built
        evaluate_and_save(0)

    if world > 1:
        dist.barrier()  # best.pt is written
    net.load_state_dict(checkpoint.load_model(best, device=device).state_dict())
    wise = wise_ft(cfg, net, best, eval_loaders, device, amp, save=main) if cfg.wise else None
    final, _ = evaluate(net, eval_loaders, ("validation", "test"), contrastive=cfg.contrastive, device=device,
                        amp=amp, seed=cfg.seed, skip_nonfinite=cfg.skip_nonfinite)
    result = {**final, "history": progress.history, "skipped": progress.skipped, "seed": cfg.seed, "wise": wise}
    log.final(result)
    return result


def cross_validate(cfg: Config) -> dict[str, dict]:
    """One run of ``cfg`` per prepared fold in ``cfg.folds``, in ``run_dir/fold_K`` (K from 1); returns
    "fold_K" -> ``fit``'s result with the fold's ``data`` and ``test_speakers`` added. ``report.runs_table``
    of the run folders is the cross-validation's table."""
    if not cfg.folds:
        raise ValueError("cross_validate needs cfg.folds: the prepared folds, one save_to_disk folder each")
    results = {}
    for k, fold in enumerate(cfg.folds, 1):
        run = dataclasses.replace(cfg, data=fold, folds=None, run_dir=str(Path(cfg.run_dir) / f"fold_{k}"))
        speakers = sorted(set(run.corpus("test")["speaker"]))
        results[f"fold_{k}"] = {**fit(run), "data": fold, "test_speakers": speakers}
    return results


def main(argv: list[str] | None = None) -> None:
    """``python train.py``: one run, or with ``--folds`` one per fold and their table (run_dir/cross_validation.txt)."""
    cfg = parse_args(argv)
    if not cfg.folds:
        fit(cfg)
        return
    import report  # figures and tables: only the command line's cross-validation needs it here

    results = cross_validate(cfg)
    speakers = "; ".join(f"{k}: {', '.join(r['test_speakers'])}" for k, r in results.items())
    table = report.runs_table([Path(cfg.run_dir) / k for k in results]).to_string(float_format="%.3f")
    text = (f"cross-validation of {cfg.objective} over {len(results)} folds: test metrics per fold, then their mean "
            f"and standard deviation (test speakers {speakers})\n{table}\n")
    if int(os.environ.get("RANK", 0)) == 0:
        print(text)
        (Path(cfg.run_dir) / "cross_validation.txt").write_text(text)


def contrastive_configs(cfg: Config, vad_negatives: Sequence[bool] = (False, True)) -> dict[str, Config]:
    """The contrastive runs of contrastive.ipynb: ``cfg.objective`` once per ``vad_negatives`` value, each in
    its own folder under ``cfg.run_dir`` (``supcon`` with the plain loss, ``supcon_vad`` with VAD-aware
    negatives)."""
    runs = {}
    for vad in vad_negatives:
        name = f"{cfg.objective}_vad" if vad else cfg.objective
        runs[name] = dataclasses.replace(cfg, vad_negatives=vad, run_dir=f"{cfg.run_dir}/{name}")
    return runs


# ----------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default after its help."""


def _flag(annotation: object) -> dict:
    """argparse keywords for a field of type ``annotation``: ``X | None`` takes "none", a list takes several."""
    args = typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        return {"nargs": "*", "type": args[0]}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        many = [a for a in kinds if typing.get_origin(a) is list]
        if many:
            return {"nargs": "+", "type": typing.get_args(many[0])[0]}
        kind = kinds[0]
        if type(None) in args:
            return {"type": lambda text: None if text.lower() == "none" else kind(text)}
        return {"type": kind}
    return {"type": annotation}


def parse_args(argv: list[str] | None = None) -> Config:
    """A flag per ``Config`` field (``--four-class``, ``--no-augment``, ``--data a b`` ...), its help, choices and
    default taken from the field."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata["help"],
                            choices=f.metadata["choices"], **_flag(hints[f.name]))
    args = vars(parser.parse_args(argv))
    if isinstance(args["data"], list) and len(args["data"]) == 1:
        args["data"] = args["data"][0]
    return Config(**args)


if __name__ == "__main__":
    main()
    if dist.is_initialized():
        dist.destroy_process_group()
