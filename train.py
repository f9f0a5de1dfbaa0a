"""One run: the model and its loaders, the loss of its objective, the optimisation step, the loop, the run's state.

    python train.py --data data/ravdess --whisper tiny.en              # Config()'s defaults: python train.py --help
    python train.py --data data/ravdess --whisper tiny.en --objective probe   # the frozen encoder's linear probe
    python train.py --data data/synthetic --objective supcon --epochs 6
    python train.py --folds data/iemocap_folds/test_session_{1,2,3,4,5} --four-class   # one run per fold
    torchrun --nproc_per_node=4 train.py --data data/iemocap --four-class  # DistributedDataParallel

``fit(cfg)`` trains, evaluates on the validation split every epoch and on the test split at the end, and
returns ``{"validation": {...}, "test": {...}, "history": [...], ...}`` (the metrics of ``evaluate.py``).
Contrastive objectives (SimCLR, SupCon) and the probe are judged by a linear probe on frozen embeddings
(train -> validation/test), which ``best.pt``'s heads hold. ``best.pt`` is chosen by validation UA only: the
test split never takes part in model selection. With ``--folds``, ``crossval.run`` runs ``fit`` once per fold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

import card
import checkpoint
import cli
import crossval
import data
import distributed
import evaluate
import losses
import model as modellib
import stats
from config import Config, parse_args
from model import Runtime

# ----------------------------------------------------------------------------- the pieces of a run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, train_split: datasets.Dataset, device: torch.device) -> modellib.EmotionModel:
    """The model of ``cfg`` over ``train_split``'s labels on its Whisper encoder (or ``cfg.init``'s
    representation), frozen by ``cfg.freeze``.

    A supervised run has a VAD head when ``vad_weight`` > 0; any other has one, a linear probe written in by
    ``evaluate.fold_probe`` like its classifier, when the training split has VAD ratings. Heads the objective
    never trains stay frozen (DDP needs every trainable parameter to get a gradient)."""
    labels = train_split.features["emotion"].names
    supervised = cfg.objective == "supervised"
    vad_head = cfg.vad_weight > 0 if supervised else evaluate.has_vad(data.vad_ratings(train_split))
    net = checkpoint.from_whisper(cfg.model_config(labels, vad_head), device=device)
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
    for head in [net.projector] if supervised else [net.classifier, net.vad]:
        if head is not None:
            head.requires_grad_(False)
    return net


def build_loaders(cfg: Config, splits: dict[str, datasets.Dataset], device: torch.device,
                  process: distributed.Process, n_mels: int) -> tuple[data.Loader | None, dict[str, data.Loader]]:
    """The training loader (``cfg.loader_options(train=True)``; None for the probe, which trains nothing) and an
    evaluation loader per split, for an encoder of ``n_mels``; each rank reads its own shard."""
    shard = dict(device=device, shard_id=process.rank, num_shards=process.world)
    train_loader = None
    if cfg.trains:
        train_loader = data.make_loader(splits["train"], cfg.loader_options(train=True, n_mels=n_mels), **shard)
    evals = {s: data.make_loader(ds, cfg.loader_options(train=False, n_mels=n_mels), **shard)
             for s, ds in splits.items()}
    return train_loader, evals


def build_optimizer(cfg: Config, net: modellib.EmotionModel) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: the heads, layer mix and pooling at ``lr``, the encoder's at
    ``encoder_lr`` (default ``lr``); fused into one kernel on a GPU (faster steps: bench/throughput.py)."""
    rest = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoder.")]
    encoder = [p for part in net.encoder_parts() for p in part.parameters() if p.requires_grad]
    groups = [{"params": rest, "lr": cfg.lr}]
    if encoder:
        groups.append({"params": encoder, "lr": cfg.encoder_lr or cfg.lr})
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


def start_from_probe(net: modellib.EmotionModel, train_loader: data.Loader, runtime: Runtime, seed: int = 0,
                     skip_nonfinite: bool = False) -> None:
    """LP-FT (Kumar et al., 2022): the classifier starts as the class-balanced linear probe
    (``evaluate.linear_probe``) on the embeddings of the model as built, so that fine-tuning begins from a head
    that already classifies instead of a random one. ``net.norm``'s statistics are set to the embeddings' own,
    which training batches then approximately reproduce, and the probe is written into the classifier by
    ``evaluate.fold_probe``. ``train_loader``: an evaluation loader of the training split."""
    pred = evaluate.predict_split(net, train_loader, runtime)
    _, probe = evaluate.linear_probe(pred, {}, len(net.config.labels), seed, skip_nonfinite)
    embedding = torch.as_tensor(pred["embedding"][np.isfinite(pred["embedding"]).all(axis=1)], dtype=torch.float64)
    with torch.no_grad():
        net.norm.running_mean.copy_(embedding.mean(0))
        net.norm.running_var.copy_(embedding.var(0))
    evaluate.fold_probe(net, probe)


# ----------------------------------------------------------------------------- the loss and the step


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
        if cfg.class_weights == "balanced" and cfg.objective == "supervised":
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

    supervised: cross-entropy on the logits (weighted by ``criterion.class_weight``), plus ``vad_weight`` x MSE
    of the VAD head on the clips with VAD. simclr / supcon: the contrastive loss of the projections of the
    batch's two views ``mel`` [B, 2, M, T]."""
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
    y = net(mel, frames)
    loss = F.cross_entropy(y["logits"].float(), labels, weight=criterion.class_weight)
    has_vad = torch.isfinite(vad).all(dim=1)
    if y["vad"] is not None and has_vad.any():
        loss = loss + cfg.vad_weight * F.mse_loss(y["vad"].float()[has_vad], vad[has_vad])
    return loss


def train_step(cfg: Config, net: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               criterion: Criterion | None, runtime: Runtime, step: int) -> float | None:
    """One optimisation step (the schedule's step is the caller's); the loss, or None when
    ``cfg.skip_nonfinite`` skipped it.

    Every rank takes the step or skips it together (a rank that skipped its backward alone would leave the
    others waiting in the gradient all-reduce). A skipped step leaves the weights and the model's buffers
    (``Standardize``'s running statistics) as they were before its forward pass."""
    saved = modellib.buffer_snapshot(net) if cfg.skip_nonfinite else []
    with runtime.autocast():
        loss = compute_loss(cfg, net, batch, criterion)
    optimizer.zero_grad(set_to_none=True)
    if not distributed.all_ranks(float(torch.isfinite(loss)), dist.ReduceOp.MIN, loss.device):
        if not cfg.skip_nonfinite:
            raise FloatingPointError(f"non-finite loss ({loss.item()} here) at step {step}; lower the learning rate, "
                                     "or set skip_nonfinite=True to skip such steps")
        modellib.restore_buffers(net, saved)
        return None
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    optimizer.step()
    return loss.item()


# ----------------------------------------------------------------------------- GPU memory


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


def estimate_memory(cfg: Config, net: modellib.EmotionModel, runtime: Runtime,
                    available: int | None = None) -> MemoryEstimate:
    """Measure ``MemoryEstimate`` for ``net`` on ``runtime``: its parameters, and one training-mode forward pass of
    two clips (their views) under its autocast (``model.saved_activation_bytes``); the model's buffers and the
    random state are left as they were. ``available`` defaults to the GPU's free memory plus this process's."""
    device = runtime.device
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    fixed = sum(p.numel() * p.element_size() for p in net.parameters()) + 3 * trainable
    views = 2 if cfg.contrastive else 1
    mel = torch.zeros(2 * views, net.config.n_mels, cfg.n_frames, device=device)
    buffers, was_training = modellib.buffer_snapshot(net), net.training

    def forward() -> None:
        with runtime.autocast():
            net(mel)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        per_clip = modellib.saved_activation_bytes(net.train(), forward) // 2
    net.train(was_training)
    modellib.restore_buffers(net, buffers)
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


# ----------------------------------------------------------------------------- the run's state


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


def save_last(path: Path, net: torch.nn.Module, optimizer, scheduler, progress: Progress, device: torch.device) -> None:
    """Everything ``restore_last`` needs to continue the run exactly: weights, optimiser, schedule, RNG."""
    checkpoint.atomic_save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                            "progress": json.dumps(dataclasses.asdict(progress))}, path)


def restore_last(path: Path, net: torch.nn.Module, optimizer, scheduler, device: torch.device) -> Progress:
    """Load what ``save_last`` wrote into the run's objects; returns where the run stood."""
    state = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return Progress(**json.loads(state["progress"]))


class RunLog:
    """What rank 0 writes into the run directory: ``config.json``, TensorBoard scalars, ``metrics.jsonl`` (a line
    per epoch, then the final metrics), ``results.json``, ``predictions.csv`` (``evaluate.PREDICTIONS``), the model
    card ``README.md`` (``card.py``) and lines on stdout; on other ranks it does nothing."""

    def __init__(self, cfg: Config, main: bool, progress: Progress):
        self.main, self.cfg = main, cfg
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

    def start(self, cfg: Config, train_clips: int, net: modellib.EmotionModel, process: distributed.Process,
              device: torch.device) -> None:
        if self.main:
            what = (f"{modellib.n_parameters(net, trainable=True):,} trainable parameters" if cfg.trains
                    else "the frozen model's linear probe")
            print(f"{cfg.objective} on {cfg.data}: {train_clips} train clips, {len(net.config.labels)} labels, "
                  f"{what}, {process.world} process(es) on {device}")

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

    def final(self, result: dict, rows: pd.DataFrame, splits: dict[str, datasets.Dataset]) -> None:
        if self.main:
            self._line({"final": {k: result[k] for k in ("validation", "test")}})
            self.jsonl.close()
            self.writer.close()
            self.results.write_text(json.dumps(result, indent=2))
            rows.to_csv(self.results.with_name(evaluate.PREDICTIONS), index=False)
            t = result["test"]
            print(f"test: UA {stats.format_interval(t['ua'], t['ua_ci'])} (95 % interval over {t['speakers']} "
                  f"speakers)  WA {t['wa']:.3f}  macro-F1 {t['macro_f1']:.3f}"
                  + "".join(f"  CCC {n[4:]} {t[n]:.3f}" for n in t if n.startswith("ccc_"))
                  + f"\ncalibration, temperature {t['temperature']:.3f}: test ECE {t['ece_before']:.3f} -> "
                  f"{t['ece']:.3f}  NLL {t['nll_before']:.3f} -> {t['nll']:.3f}  Brier {t['brier_before']:.3f} -> "
                  f"{t['brier']:.3f}")
            card.write_card(self.cfg, result, splits)

    def _line(self, record: dict) -> None:
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()


# ----------------------------------------------------------------------------- the loop


def fit(cfg: Config) -> dict:
    """Train as ``cfg`` says (the probe: score the model as built); returns ``{"validation": metrics, "test":
    metrics, "history": [...], ...}``."""
    process = distributed.setup()
    runtime = Runtime(distributed.device_of(cfg.device, process.local_rank), cfg.precision)
    device, by_probe = runtime.device, cfg.objective != "supervised"
    seed_everything(cfg.seed)

    splits = {s: cfg.corpus(s) for s in data.SPLITS}
    net = build_model(cfg, splits["train"], device)
    trained = [net.config.labels[i] for i in sorted(set(splits["train"]["emotion"]))]  # the classes it learns
    train_loader, evals = build_loaders(cfg, splits, device, process, net.config.n_mels)
    epochs = cfg.epochs if cfg.trains else 0
    optimizer = build_optimizer(cfg, net)
    steps_per_epoch = 0 if train_loader is None else int(  # DDP: the same on every rank
        distributed.all_ranks(len(train_loader), dist.ReduceOp.MIN, device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(epochs * steps_per_epoch, cfg.warmup))
    ddp = torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None) if process.world > 1 and epochs else net
    criterion = Criterion.of(cfg, splits["train"], device)
    last, best = Path(cfg.run_dir) / "last.pt", Path(cfg.run_dir) / "best.pt"
    resume = cfg.resume and last.exists()
    if cfg.probe_init and cfg.objective == "supervised" and not resume:
        start_from_probe(net, evals["train"], runtime, cfg.seed, cfg.skip_nonfinite)
    progress = restore_last(last, net, optimizer, scheduler, device) if resume else Progress()
    log = RunLog(cfg, process.main, progress)
    memory = estimate_memory(cfg, net, runtime) if device.type == "cuda" and epochs else None
    log.start(cfg, len(splits["train"]), net, process, device)
    if memory is not None and process.main:
        print(memory.describe(cfg.batch_size))

    def evaluate_and_save(epoch: int) -> dict:
        """Validation metrics; ``best.pt`` when they are the best yet (rank 0 writes, every rank agrees)."""
        distributed.broadcast_buffers(net)  # each rank's last step left its own buffers: use rank 0's
        scored = evaluate.evaluate(net, evals, ("validation",), by_probe=by_probe, runtime=runtime, seed=cfg.seed,
                                   skip_nonfinite=cfg.skip_nonfinite)
        val = scored.metrics["validation"]
        if val["ua"] > progress.best_ua or epochs == 0:
            progress.best_ua = val["ua"]
            if scored.probe is not None:
                evaluate.fold_probe(net, scored.probe)
            if process.main:
                checkpoint.save_model(net, best, extra={"epoch": epoch, "seed": cfg.seed, "objective": cfg.objective,
                                                        "val": val, "trained": trained})
        return val

    for epoch in range(progress.epoch, epochs):
        train_loader.set_epoch(epoch)
        ddp.train()
        t0, seen, losses_seen = time.perf_counter(), 0, []
        bar = tqdm(itertools.islice(train_loader, steps_per_epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{epochs}", disable=not process.main, leave=False)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            with explain_out_of_memory(cfg.batch_size, memory):
                loss = train_step(cfg, ddp, batch, optimizer, criterion, runtime, progress.step)
            scheduler.step()
            progress.step += 1
            if loss is None:
                progress.skipped += 1
                continue
            losses_seen.append(loss)
            seen += len(batch["mel"]) * process.world
            bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{seen / (time.perf_counter() - t0):.1f}")
            log.step(progress.step, loss, scheduler.get_last_lr()[0], cfg.log_every, epoch + 1)
        log.epoch(progress.end_epoch(losses_seen, evaluate_and_save(epoch + 1), time.perf_counter() - t0))
        if process.main:
            save_last(last, net, optimizer, scheduler, progress, device)
    if epochs == 0:  # nothing to train (the probe, or a supervised run of 0 epochs): the model as built
        evaluate_and_save(0)

    distributed.barrier()  # best.pt is written
    net.load_state_dict(checkpoint.load_model(best, device=device).state_dict())
    final = evaluate.evaluate(net, evals, ("validation", "test"), by_probe=by_probe, runtime=runtime, seed=cfg.seed,
                              skip_nonfinite=cfg.skip_nonfinite)
    metrics = evaluate.calibrate(net, final, cfg.calibrate, best if process.main else None)
    result = {**metrics, "history": progress.history, "skipped": progress.skipped, "seed": cfg.seed}
    log.final(result, final.rows, splits)
    return result


def _main(argv: list[str]) -> None:
    cfg = parse_args(argv, description=__doc__)
    crossval.write_summary(cfg, crossval.run(cfg, fit)) if cfg.folds else fit(cfg)
    distributed.teardown()


def main(argv: list[str] | None = None) -> int:
    """``python train.py``: one run, or with ``--folds`` one per fold and their table; a bad argument or input is
    one line on stderr (``--debug``: the traceback)."""
    return cli.run(_main, argv, "train.py")


if __name__ == "__main__":
    sys.exit(main())
