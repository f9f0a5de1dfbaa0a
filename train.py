"""One training loop for both notebooks and the command line.

    python train.py --data data/synthetic --whisper tiny --objective supervised --epochs 10
    torchrun --nproc_per_node=4 train.py --data data/iemocap --four-class ...   # DistributedDataParallel

``fit(cfg)`` trains, evaluates on the validation split every epoch and on the test split at the
end, and returns ``{"validation": {...}, "test": {...}}`` with UA (unweighted average recall),
WA (accuracy), macro-F1, the confusion matrix and, where the corpus has valence/arousal/dominance,
their concordance correlation coefficients. Contrastive objectives (SimCLR, SupCon) are judged by
a linear probe on frozen embeddings (train -> validation/test). ``best.pt`` is chosen by
validation UA only: the test split never takes part in model selection.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

import data
import losses
import model as modellib

OBJECTIVES = ("supervised", "simclr", "supcon")
VAD_NAMES = ("valence", "arousal", "dominance")


@dataclass
class Config:
    """Everything a run depends on; saved as ``config.json`` in the run directory."""

    data: str | list[str] = "data/synthetic"  # save_to_disk path(s) or Hub id(s); a list combines corpora
    whisper: str = "tiny"  # openai-whisper name, checkpoint path, or random:<name>
    n_frames: int = 300  # mel frames per clip (100 per second)
    objective: str = "supervised"  # supervised | simclr | supcon
    vad_negatives: bool = False  # contrastive: VAD-aware negatives (losses.VadNegatives)
    vad_threshold: float = 0.1  # VAD distance under which a pair is not a negative
    vad_beta: float = 1.0  # hardness concentration of the negative reweighting
    vad_alpha: float = 1.0  # power of the VAD distance in the negative weights
    temperature: float = 0.1
    freeze: str = "top:2"  # model.set_trainable policy: heads | all | top:N
    four_class: bool = False  # neutral/happy(+excited)/sad/angry only
    layers: str = "weighted"  # weighted: a learned mix of every encoder layer (model.LayerMix) | last
    pooling: str = "mean"  # mean | attentive
    proj_dim: int = 128
    ce_weight: float = 1.0  # supervised: cross-entropy weight
    vad_weight: float = 0.0  # supervised: VAD regression weight (> 0 adds the VAD head)
    augment: bool = True
    windows: bool = True  # evaluate whole utterances: mean over windows covering each (False: its centre crop)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4  # heads; peak of the warm-up + cosine schedule
    encoder_lr: float | None = None  # trainable encoder blocks (None: same as lr)
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps spent warming up linearly
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    backend: str = "auto"  # data loader: auto (DALI) | dali | torch
    num_workers: int = 2
    skip_nonfinite: bool = False  # skip (and count) batches whose loss is not finite instead of stopping
    log_every: int = 0  # print a line every N steps (0: progress bar only)
    seed: int = 0
    device: str | None = None  # None: cuda if available (the local rank's GPU under torchrun), else cpu
    run_dir: str = "runs/default"
    resume: bool = False  # continue from run_dir/last.pt
    init: str | None = None  # start the encoder from a saved EmotionModel (e.g. a contrastive best.pt)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")

    @property
    def contrastive(self) -> bool:
        return self.objective != "supervised"


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
    return {f"ccc_{name}": ccc(vad_true[keep, i], vad_pred[keep, i]) for i, name in enumerate(VAD_NAMES)}


# ----------------------------------------------------------------------------- distributed


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        return rank, world, int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"])


def gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array over all ranks (in rank order); a no-op in a single process."""
    if not dist.is_initialized():
        return arrays
    parts: list[dict[str, np.ndarray]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_split(net: modellib.EmotionModel, loader, device: torch.device, amp) -> dict[str, np.ndarray]:
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
        with amp:
            y = net(batch["mel"].to(device))
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


def evaluate(net: modellib.EmotionModel, loaders: dict, names: tuple[str, ...], *, contrastive: bool,
             device: torch.device, amp=None, seed: int = 0) -> tuple[dict[str, dict], Pipeline | None]:
    """Metrics on each split in ``names``, and the linear probe they come from (None for the heads).

    A supervised model is scored by its own heads; a contrastive one by a linear probe fitted on
    ``loaders["train"]`` (an evaluation loader: no augmentation)."""
    amp = amp or nullcontext()
    n_classes = len(net.config.labels)
    preds = {s: predict_split(net, loaders[s], device, amp) for s in names}
    if contrastive:
        train_pred = predict_split(net, loaders["train"], device, amp)
        return linear_probe(train_pred, preds, n_classes, seed)
    return {s: head_metrics(p, n_classes) for s, p in preds.items()}, None


def linear_probe(train: dict[str, np.ndarray], evals: dict[str, dict[str, np.ndarray]], n_classes: int,
                 seed: int = 0) -> tuple[dict[str, dict], Pipeline]:
    """Logistic regression (and ridge regression for VAD) on frozen window embeddings of ``train``, scored
    on each split of ``evals`` (name -> arrays of ``predict_split``) by the mean of its windows'
    probabilities (and VAD), as ``fold_probe`` + ``predict.py`` score a row; returns (metrics, classifier)."""
    x, label, vad = train["window_embedding"], train["emotion"][train["window_row"]], train["vad"][train["window_row"]]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, label)
    has_vad = np.isfinite(vad).all(axis=1)
    reg = None
    if has_vad.sum() >= 2:
        reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[has_vad], vad[has_vad])
    classes = clf[-1].classes_
    results = {}
    for name, split in evals.items():
        probs = row_mean(clf.predict_proba(split["window_embedding"]), split["window_row"])
        metrics = classification_metrics(split["emotion"], classes[probs.argmax(1)], n_classes)
        if reg is not None:
            metrics.update(vad_metrics(split["vad"], row_mean(reg.predict(split["window_embedding"]),
                                                              split["window_row"])))
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


# ----------------------------------------------------------------------------- schedule and state


def lr_lambda(total_steps: int, warmup: float):
    """Linear warm-up over ``warmup * total_steps`` steps, then cosine decay to 0."""
    warm = max(1, int(warmup * total_steps))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_from(net: modellib.EmotionModel, start: modellib.EmotionModel, name: str) -> None:
    """Copy the representation (encoder, layer mix, pooling) of ``start`` into ``net``; the heads start afresh."""
    for part in ("encoder", "mix", "pool"):
        src, dst = getattr(start, part), getattr(net, part)
        if (src is None) != (dst is None):
            raise ValueError(f"init {name}: its {part} is {type(src).__name__}, this run's is {type(dst).__name__} "
                             f"(match its layers/pooling: {start.config.layers}/{start.config.pooling})")
        if dst is not None:
            dst.load_state_dict(src.state_dict())


# ----------------------------------------------------------------------------- the loop


def fit(cfg: Config) -> dict:
    """Train as ``cfg`` says; returns ``{"validation": metrics, "test": metrics, "history": [...]}``."""
    rank, world, local_rank = setup_distributed()
    main = rank == 0
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    run_dir = Path(cfg.run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    seed_everything(cfg.seed)

    # data: every rank reads its own shard
    splits = {s: data.load_corpus(cfg.data, s, four_class=cfg.four_class) for s in ("train", "validation", "test")}
    label_names = splits["train"].features["emotion"].names
    views = 2 if cfg.contrastive else 1
    loader_kw = dict(n_frames=cfg.n_frames, backend=cfg.backend, device=device,
                     shard_id=rank, num_shards=world, num_workers=cfg.num_workers)
    train_loader = data.make_loader(splits["train"], batch_size=cfg.batch_size, train=True, views=views,
                                    augment=data.Augment() if cfg.augment else None, seed=cfg.seed, **loader_kw)
    eval_loaders = {s: data.make_loader(ds, batch_size=cfg.batch_size, train=False, windows=cfg.windows, **loader_kw)
                    for s, ds in splits.items()}

    # model
    net = modellib.EmotionModel.from_whisper(
        cfg.whisper, n_frames=cfg.n_frames, labels=label_names, layers=cfg.layers, pooling=cfg.pooling,
        proj_dim=cfg.proj_dim, vad_head=cfg.vad_weight > 0, device=device)
    if cfg.init:
        init_from(net, modellib.load_model(cfg.init, device=device), cfg.init)
    modellib.set_trainable(net, cfg.freeze)
    # Heads this objective never uses stay frozen (DDP requires every trainable parameter to get a gradient);
    # a contrastive run's classifier is its linear probe, written in by fold_probe.
    unused = [net.classifier, net.vad] if cfg.contrastive else [net.projector]
    for head in unused:
        if head is not None:
            head.requires_grad_(False)
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    encoder_params = [p for p in net.encoder.parameters() if p.requires_grad]
    head_params = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [{"params": head_params, "lr": cfg.lr},
         {"params": encoder_params, "lr": cfg.encoder_lr or cfg.lr}],
        weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    if world > 1:  # DDP needs the same number of steps on every rank
        n = torch.tensor(steps_per_epoch, device=device)
        dist.all_reduce(n, op=dist.ReduceOp.MIN)
        steps_per_epoch = int(n)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.epochs * steps_per_epoch, cfg.warmup))
    ddp = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else net
    eval_kw = dict(contrastive=cfg.contrastive, device=device, amp=amp, seed=cfg.seed)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"

    def save_best(val: dict, probe: Pipeline | None, epoch: int) -> None:
        if probe is not None:
            fold_probe(net, probe)
        modellib.save_model(net, best_path, extra={"epoch": epoch, "seed": cfg.seed, "objective": cfg.objective,
                                                   "val": val})

    vad_neg = losses.VadNegatives(cfg.vad_threshold, cfg.vad_beta, cfg.vad_alpha) if cfg.vad_negatives else None

    start_epoch, step, best_ua, history, skipped = 0, 0, -1.0, [], 0
    if cfg.resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, step, best_ua, skipped = state["epoch"], state["step"], state["best_ua"], state["skipped"]
        history = json.loads(state["history"])
        if main:
            print(f"resumed from {last_path} at epoch {start_epoch} (step {step})")
    elif cfg.resume and main:
        print(f"nothing to resume in {run_dir}: starting afresh")

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))
        print(f"{cfg.objective} on {cfg.data}: {len(splits['train'])} train clips, {len(label_names)} labels, "
              f"{n_trainable:,} trainable parameters, {world} process(es) on {device}")
    log_file = open(run_dir / "metrics.jsonl", "a" if start_epoch else "w") if main else None

    for epoch in range(start_epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        ddp.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not main, leave=False)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for i, batch in enumerate(train_loader):
            if i == steps_per_epoch:
                break
            mel, labels, vad = batch["mel"].to(device), batch["emotion"].to(device), batch["vad"].to(device)
            with amp:
                if cfg.contrastive:
                    b = mel.shape[0]
                    z = ddp(mel.flatten(0, 1))["projection"].float().view(b, views, -1)
                    if cfg.objective == "simclr":
                        loss = losses.nt_xent(z[:, 0], z[:, 1], cfg.temperature, vad=vad, vad_negatives=vad_neg)
                    else:
                        loss = losses.supcon(z, labels, cfg.temperature, vad=vad, vad_negatives=vad_neg)
                else:
                    y = ddp(mel)
                    loss = cfg.ce_weight * F.cross_entropy(y["logits"].float(), labels)
                    has_vad = torch.isfinite(vad).all(dim=1)
                    if y["vad"] is not None and has_vad.any():
                        loss = loss + cfg.vad_weight * F.mse_loss(y["vad"].float()[has_vad], vad[has_vad])
            if not torch.isfinite(loss):
                if not cfg.skip_nonfinite:
                    raise FloatingPointError(
                        f"non-finite loss ({loss.item()}) at step {step} (epoch {epoch + 1}, batch {i}); "
                        "lower the learning rate, or set skip_nonfinite=True to skip such batches")
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                               cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += mel.shape[0] * world
            loss_sum += loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}", clips_s=f"{seen / (time.perf_counter() - t0):.1f}")
            bar.update()
            if main:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                if cfg.log_every and step % cfg.log_every == 0:
                    tqdm.write(f"step {step} epoch {epoch + 1} loss {loss.item():.4f}")
        bar.close()
        if world > 1:  # DDP syncs buffers before a forward, so each rank's last step left its own statistics
            for buffer in net.buffers():  # (model.Standardize's); evaluate and save rank 0's everywhere
                dist.broadcast(buffer, 0)

        val, probe = evaluate(net, eval_loaders, ("validation",), **eval_kw)
        val = val["validation"]
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(1, steps_per_epoch),
                  "skipped": skipped, "seconds": time.perf_counter() - t0,
                  **{f"val_{k}": v for k, v in val.items() if k != "confusion"}}
        history.append(record)
        if main:
            for k, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if val["ua"] > best_ua:
                best_ua = val["ua"]
                save_best(val, probe, epoch + 1)
            modellib.atomic_save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                  "epoch": epoch + 1, "step": step, "best_ua": best_ua, "skipped": skipped,
                                  "history": json.dumps(history)}, last_path)
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val UA {val['ua']:.3f} "
                       f"WA {val['wa']:.3f} F1 {val['macro_f1']:.3f}" + (f"  ({skipped} skipped)" if skipped else ""))
        if world > 1:
            best_ua = _broadcast(best_ua)

    if cfg.epochs == 0:  # nothing to train (e.g. the linear probe before contrastive training): as loaded
        val, probe = evaluate(net, eval_loaders, ("validation",), **eval_kw)
        if main:
            save_best(val["validation"], probe, 0)

    # final evaluation of the best checkpoint (by validation UA) on validation and test
    if world > 1:
        dist.barrier()
    net.load_state_dict(modellib.load_model(best_path, device=device).state_dict())
    final, _ = evaluate(net, eval_loaders, ("validation", "test"), **eval_kw)
    result = {"validation": final["validation"], "test": final["test"], "history": history,
              "skipped": skipped, "seed": cfg.seed}
    if main:
        log_file.write(json.dumps({"final": {k: final[k] for k in ("validation", "test")}}) + "\n")
        log_file.close()
        writer.close()
        (run_dir / "results.json").write_text(json.dumps(result, indent=2))
        t = final["test"]
        print(f"test: UA {t['ua']:.3f}  WA {t['wa']:.3f}  macro-F1 {t['macro_f1']:.3f}"
              + "".join(f"  CCC {n[4:]} {t[n]:.3f}" for n in t if n.startswith("ccc_")))
    return result


def _broadcast(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


# ----------------------------------------------------------------------------- figures


def embed(cfg: Config, split: str, checkpoint: str = "best.pt") -> dict[str, np.ndarray]:
    """``predict_split`` arrays (embeddings, probabilities, labels, VAD) of ``split`` for a finished run."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = modellib.load_model(Path(cfg.run_dir) / checkpoint, device=device)
    ds = data.load_corpus(cfg.data, split, four_class=cfg.four_class)
    loader = data.make_loader(ds, batch_size=cfg.batch_size, train=False, windows=cfg.windows, n_frames=cfg.n_frames,
                              backend=cfg.backend, device=device, num_workers=cfg.num_workers)
    return predict_split(net, loader, device, nullcontext())


def _save(fig, path: str | Path | None):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_history(history: list[dict] | dict[str, list[dict]], path: str | Path | None = None):
    """Training loss and validation UA/WA/macro-F1 per epoch, of one run's ``history`` or of several
    runs (name -> history) overlaid: a colour per run, a line style per metric."""
    import matplotlib.pyplot as plt

    runs = history if isinstance(history, dict) else {"": history}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for (name, hist), color in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        epochs = [h["epoch"] for h in hist]
        ax1.plot(epochs, [h["train_loss"] for h in hist], marker="o", color=color, label=name or None)
        for key, style in (("val_ua", "-"), ("val_wa", "--"), ("val_macro_f1", ":")):
            metric = key[4:].upper().replace("MACRO_", "macro-")
            ax2.plot(epochs, [h[key] for h in hist], style, marker="o", color=color,
                     label=f"{name} {metric}".strip())
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="validation", title="validation metrics", ylim=(0, 1))
    if len(runs) > 1:
        ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_weights(net: modellib.EmotionModel, title: str = "layer weights", path: str | Path | None = None):
    """The softmax weights of the model's ``LayerMix``: which encoder layers its embedding draws on."""
    import matplotlib.pyplot as plt

    if net.mix is None:
        raise ValueError("this model uses the last encoder layer only (layers='last'): there are no layer weights")
    weights = torch.softmax(net.mix.weight.detach().float().cpu(), dim=0).numpy()
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(weights), 3))
    ax.bar(range(len(weights)), weights)
    ax.axhline(1 / len(weights), color="grey", linestyle=":", label="uniform")
    ax.set(xticks=range(len(weights)), xticklabels=["input", *range(1, len(weights))], xlabel="encoder layer",
           ylabel="weight", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(confusion: list[list[int]], label_names: list[str], title: str = "confusion",
                   path: str | Path | None = None):
    """Row-normalised confusion matrix over the classes that occur (rows: true, columns: predicted)."""
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    used = np.flatnonzero(cm.sum(0) + cm.sum(1))
    cm = cm[np.ix_(used, used)]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = [label_names[i] for i in used]
    fig, ax = plt.subplots(figsize=(1.1 * len(used) + 2, 1.1 * len(used) + 1))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(norm):
        ax.text(j, i, f"{v:.2f}\n({int(cm[i, j])})", ha="center", va="center",
                color="white" if v > 0.5 else "black", fontsize=8)
    ax.set(xticks=range(len(used)), yticks=range(len(used)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return _save(fig, path)


def plot_embeddings(pred: dict[str, np.ndarray], label_names: list[str], method: str = "pca",
                    title: str = "test embeddings", path: str | Path | None = None):
    """2-D projection (PCA or t-SNE) of pooled embeddings, coloured by emotion and by arousal."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = StandardScaler().fit_transform(pred["embedding"])
    if method == "tsne":
        xy = TSNE(n_components=2, perplexity=min(30, len(x) - 1), random_state=0).fit_transform(x)
    else:
        xy = PCA(n_components=2, random_state=0).fit_transform(x)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for c in np.unique(pred["emotion"]):
        m = pred["emotion"] == c
        ax1.scatter(xy[m, 0], xy[m, 1], s=12, label=label_names[c])
    ax1.legend(fontsize=8)
    ax1.set(title=f"{title}: emotion ({method.upper()})")
    arousal = pred["vad"][:, 1]
    if np.isfinite(arousal).any():
        sc = ax2.scatter(xy[:, 0], xy[:, 1], s=12, c=arousal, cmap="viridis")
        fig.colorbar(sc, ax=ax2, label="arousal (0-1)")
    else:
        ax2.text(0.5, 0.5, "no arousal ratings in this corpus", ha="center", transform=ax2.transAxes)
    ax2.set(title=f"{title}: arousal ({method.upper()})")
    fig.tight_layout()
    return _save(fig, path)


def corpus_table(splits: dict):
    """Clips per emotion (rows) and split (columns), with speaker counts and hours, as a DataFrame."""
    import pandas as pd

    table = {}
    for name, ds in splits.items():
        names = ds.features["emotion"].names
        counts = pd.Series(ds["emotion"]).map(lambda i, names=names: names[i]).value_counts()
        counts["speakers"] = len(set(ds["speaker"]))
        counts["hours"] = round(float(np.sum(ds["duration"])) / 3600, 2)
        table[name] = counts
    return pd.DataFrame(table).fillna(0)


def metrics_table(results: dict[str, dict]):
    """A pandas DataFrame of scalar metrics, one row per split (or run)."""
    import pandas as pd

    return pd.DataFrame({name: {k: v for k, v in m.items() if not isinstance(v, list)}
                         for name, m in results.items()}).T


def runs_table(run_dirs: Sequence[str | Path], split: str = "test"):
    """``split`` metrics of finished runs (their ``results.json``), one row per run, then the mean and
    standard deviation over the runs: the table of a cross-validation such as IEMOCAP's
    leave-one-session-out (one run per test session)."""
    import pandas as pd

    results = {}
    for run_dir in map(Path, run_dirs):
        path = run_dir / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished run?")
        results[run_dir.name] = json.loads(path.read_text())[split]
    table = metrics_table(results)
    stats = table.drop(columns="n").agg(["mean", "std"])
    return pd.concat([table, stats])


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


def parse_args(argv: list[str] | None = None) -> Config:
    """A flag per ``Config`` field (``--four-class``, ``--no-augment``, ``--data a b`` ...)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    types = {"int": int, "float": float, "float | None": float, "str": str, "str | None": str}
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.type == "str | list[str]":
            parser.add_argument(flag, nargs="+", default=[f.default], help="one or more corpora")
        else:
            parser.add_argument(flag, type=types[f.type], default=f.default)
    args = vars(parser.parse_args(argv))
    if len(args["data"]) == 1:
        args["data"] = args["data"][0]
    return Config(**args)


if __name__ == "__main__":
    fit(parse_args())
    if dist.is_initialized():
        dist.destroy_process_group()
