"""Scoring a model: metrics, predictions on a split, the linear probe and folding it into the heads, the corpus's
baseline. Nothing here trains a network.

    pred = predict_split(net, loader, Runtime.resolve("cpu"))     # per row: probabilities, VAD, embedding
    head_metrics(pred, n_classes)                  # UA, WA, macro-F1, confusion matrix (and CCC) of the heads
    metrics, probe = linear_probe(train_pred, {"test": pred}, n_classes)   # a probe on the frozen embeddings
    fold_probe(net, probe)                         # ... written into the model's heads
    baseline(splits)                               # the corpus's floor: the same probe on log-mel statistics

UA is the unweighted average recall over the classes present, WA the accuracy, CCC Lin's concordance
correlation coefficient (rows without VAD left out). A row scored on several windows (an evaluation loader with
``windows``) gets the mean of their probabilities, VAD and embeddings, as ``predict.py`` scores a file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

import checkpoint
import data
import distributed
import stats
from audio import decode_audio, log_mel
from config import Config
from labels import VAD
from model import EmotionModel, Runtime

PREDICTIONS = "predictions.csv"  # a run's predictions on validation and test (``Evaluation.rows``)
BASELINE = "logistic regression on the mean and std over time of the clip's log-mel"


# ----------------------------------------------------------------------------- metrics


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Concordance correlation coefficient (Lin, 1989) of two 1-D arrays:
    2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)."""
    mx, my = y_true.mean(), y_pred.mean()
    cov = ((y_true - mx) * (y_pred - my)).mean()
    return float(2 * cov / (y_true.var() + y_pred.var() + (mx - my) ** 2 + 1e-12))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
                           speakers: np.ndarray | None = None, seed: int = 0) -> dict:
    """UA (mean recall over the classes present in y_true), WA (accuracy), macro-F1 (same classes)
    and the full ``n_classes`` x ``n_classes`` confusion matrix (rows: true). With ``speakers`` [N] also each
    figure's 95 % interval from a bootstrap over speakers (``ua_ci``, ``wa_ci``, ``macro_f1_ci``: [lo, hi],
    ``stats.speaker_intervals``) and the number of ``speakers``."""
    present = np.unique(y_true)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))
    recall = cm[present, present] / cm[present].sum(axis=1)
    out = {
        "ua": float(recall.mean()),
        "wa": float((y_true == y_pred).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "confusion": cm.tolist(),
    }
    if speakers is not None:
        intervals = stats.speaker_intervals(y_true, y_pred, speakers, n_classes, seed)
        out.update({f"{k}_ci": list(v) for k, v in intervals.items()}, speakers=len(set(speakers)))
    return out


def vad_metrics(vad_true: np.ndarray, vad_pred: np.ndarray) -> dict:
    """CCC per dimension over the rows whose reference VAD is finite ([N, 3] arrays)."""
    keep = np.isfinite(vad_true).all(axis=1)
    if keep.sum() < 2:
        return {}
    return {f"ccc_{name}": ccc(vad_true[keep, i], vad_pred[keep, i]) for i, name in enumerate(VAD)}


def has_vad(vad: np.ndarray) -> bool:
    """Whether rows of VAD ratings [N, 3] (NaN: none) can fit a VAD regression: at least two rated rows."""
    return int(np.isfinite(vad).all(axis=1).sum()) >= 2


# ----------------------------------------------------------------------------- predictions


@torch.no_grad()
def predict_split(net: EmotionModel, loader: data.Loader, runtime: Runtime) -> dict[str, np.ndarray]:
    """Run ``net`` over an evaluation loader, gathered over ranks. Arrays over the N rows of the split,
    sorted by row: ``index``, ``id``, ``speaker``, ``emotion``, ``vad`` [N, 3], ``probs`` [N, n_labels],
    ``vad_pred`` [N, 3] (NaN without a VAD head), ``embedding`` [N, D], ``windows`` [N]; a row scored on several
    windows gets the mean over them, as ``predict.py`` scores a file. And over the W windows:
    ``window_embedding`` [W, D] and ``window_row`` [W] (each one's position in the N rows)."""
    was_training = net.training
    net.eval()
    keys = ("index", "emotion", "vad", "probs", "vad_pred", "embedding")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in loader:
        with runtime.autocast():
            y = net(batch["mel"].to(runtime.device), batch["frames"].to(runtime.device))
        vad_pred = y["vad"] if y["vad"] is not None else torch.full_like(batch["vad"], np.nan)
        values = (batch["index"], batch["emotion"], batch["vad"], y["logits"].float().softmax(-1), vad_pred.float(),
                  y["embedding"].float())
        for k, v in zip(keys, values, strict=True):
            out[k].append(v.numpy(force=True))
    net.train(was_training)
    arrays = distributed.gather({k: np.concatenate(v) for k, v in out.items()})
    rows, first, inverse = np.unique(arrays["index"], return_index=True, return_inverse=True)
    speaker = np.asarray(loader.ds["speaker"])
    return {"index": rows, "id": np.asarray(loader.ids)[rows], "speaker": speaker[rows],
            "emotion": arrays["emotion"][first], "vad": arrays["vad"][first],
            **{k: row_mean(arrays[k], inverse) for k in ("probs", "vad_pred", "embedding")},
            "windows": np.bincount(inverse), "window_embedding": arrays["embedding"], "window_row": inverse}


def row_mean(x: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Mean of the windows ``x`` [W, ...] of each row; ``row`` [W] numbers the rows 0..N-1 -> [N, ...]."""
    total = np.zeros((row.max() + 1, *x.shape[1:]), dtype=np.float64)
    np.add.at(total, row, x)
    return (total / np.bincount(row).reshape(-1, *[1] * (x.ndim - 1))).astype(x.dtype)


def head_metrics(pred: dict[str, np.ndarray], n_classes: int, seed: int = 0) -> dict:
    """Metrics of the model's own classification (and VAD) heads, with speaker-bootstrap intervals where ``pred``
    has ``speaker``."""
    metrics = classification_metrics(pred["emotion"], pred["probs"].argmax(1), n_classes, pred.get("speaker"), seed)
    if np.isfinite(pred["vad_pred"]).all():
        metrics.update(vad_metrics(pred["vad"], pred["vad_pred"]))
    return metrics


def embed(cfg: Config, split: str, checkpoint_name: str = "best.pt") -> dict[str, np.ndarray]:
    """``predict_split`` arrays (embeddings, probabilities, labels, VAD) of ``split`` for the finished run of
    ``cfg`` (its ``run_dir/checkpoint_name``), e.g. for ``report.plot_embeddings``."""
    runtime = Runtime.resolve(cfg.device, cfg.precision)
    net = checkpoint.load_model(Path(cfg.run_dir) / checkpoint_name, device=runtime.device)
    loader = data.make_loader(cfg.corpus(split), cfg.loader_options(train=False, n_mels=net.config.n_mels),
                              device=runtime.device)
    return predict_split(net, loader, runtime)


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` scored: ``metrics`` (split -> ``classification_metrics``), the linear ``probe`` they come
    from (None: the model's heads), and ``rows``: one table for the splits, a row per utterance (``split``,
    ``id``, ``speaker``, ``emotion`` and ``prediction`` as label names), which a run writes to ``PREDICTIONS``."""

    metrics: dict[str, dict]
    probe: Probe | None
    rows: pd.DataFrame


def evaluate(net: EmotionModel, loaders: Mapping[str, data.Loader], names: tuple[str, ...], *, by_probe: bool,
             runtime: Runtime, seed: int = 0, skip_nonfinite: bool = False) -> Evaluation:
    """Metrics on each split in ``names`` (with speaker-bootstrap intervals), the linear probe they come from and
    the predictions.

    ``by_probe``: scored by a linear probe fitted on ``loaders["train"]`` (an evaluation loader: no
    augmentation; ``skip_nonfinite``: see ``linear_probe``), as contrastive models and probes are; else by the
    model's own heads."""
    n_classes, names_of = len(net.config.labels), np.asarray(net.config.labels)
    preds = {s: predict_split(net, loaders[s], runtime) for s in names}
    if by_probe:
        metrics, probe = linear_probe(predict_split(net, loaders["train"], runtime), preds, n_classes, seed,
                                      skip_nonfinite)
        predicted = {s: probe.classifier.predict(p["embedding"]) for s, p in preds.items()}
    else:
        metrics, probe = {s: head_metrics(p, n_classes, seed) for s, p in preds.items()}, None
        predicted = {s: p["probs"].argmax(1) for s, p in preds.items()}
    rows = pd.concat([pd.DataFrame({"split": s, "id": p["id"], "speaker": p["speaker"],
                                    "emotion": names_of[p["emotion"]], "prediction": names_of[predicted[s]]})
                      for s, p in preds.items()], ignore_index=True)
    return Evaluation(metrics, probe, rows)


# ----------------------------------------------------------------------------- the linear probe


@dataclass(frozen=True)
class Probe:
    """A linear probe on embeddings: ``classifier`` (StandardScaler + class-balanced LogisticRegression) and,
    where the training rows have VAD ratings, ``regressor`` (StandardScaler + Ridge, [N, D] -> [N, 3])."""

    classifier: Pipeline
    regressor: Pipeline | None


def linear_probe(train: dict[str, np.ndarray], evals: dict[str, dict[str, np.ndarray]], n_classes: int,
                 seed: int = 0, skip_nonfinite: bool = False) -> tuple[dict[str, dict], Probe]:
    """Class-balanced logistic regression (and ridge regression for VAD) on the frozen embeddings of ``train``,
    one per utterance (``predict_split``'s ``embedding``: the mean over its windows), scored the same way on
    each split of ``evals`` (name -> arrays of ``predict_split``); returns (metrics, probe).

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
    rated = np.isfinite(vad).all(axis=1)
    reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x[rated], vad[rated]) if has_vad(vad) else None
    results = {}
    for name, split in evals.items():
        metrics = classification_metrics(split["emotion"], clf.predict(split["embedding"]), n_classes,
                                         split.get("speaker"), seed)
        if reg is not None:
            metrics.update(vad_metrics(split["vad"], reg.predict(split["embedding"])))
        results[name] = metrics
    return results, Probe(clf, reg)


def fold_probe(net: EmotionModel, probe: Probe) -> None:
    """Write a fitted probe into ``net``'s heads, so that the model classifies (and rates VAD) as its probe does
    wherever it is loaded: the classifier into ``net.classifier``, and where the model's VAD head is a probe
    (``vad_probe``: a contrastive model's or a probe's) the regressor into ``net.vad``; a trained VAD head is
    left as it is.

    A head sees the embedding e standardised by ``net.norm``'s running statistics, z = (e - m) / s; a probe's
    W (e - mu) / sigma + b equals W' z + b' with W' = W s / sigma, b' = b + W (m - mu) / sigma. Classes the
    probe never saw get a logit of -1e4 (probability 0); a binary probe's single row becomes [0, w]."""
    if net.config.vad_probe and probe.regressor is None:
        raise ValueError("the model's VAD head is a probe, but the probe has no VAD regressor (fewer than two "
                         "training rows with VAD ratings): build the model without a VAD head")
    clf = probe.classifier[-1]
    coef, bias = _folded(net.norm, probe.classifier[0], clf.coef_, clf.intercept_)
    if len(clf.classes_) == 2:
        coef, bias = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = torch.zeros_like(net.classifier.weight)
    b = torch.full_like(net.classifier.bias, -1e4)
    weight[clf.classes_] = torch.as_tensor(coef, dtype=weight.dtype, device=weight.device)
    b[clf.classes_] = torch.as_tensor(bias, dtype=b.dtype, device=b.device)
    with torch.no_grad():
        net.classifier.weight.copy_(weight)
        net.classifier.bias.copy_(b)
        if net.config.vad_probe:
            ridge = probe.regressor[-1]
            coef, bias = _folded(net.norm, probe.regressor[0], ridge.coef_, ridge.intercept_)
            net.vad.weight.copy_(torch.as_tensor(coef, dtype=net.vad.weight.dtype))
            net.vad.bias.copy_(torch.as_tensor(bias, dtype=net.vad.bias.dtype))


def _folded(norm: torch.nn.BatchNorm1d, scaler: StandardScaler, coef: np.ndarray,
            intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W', b') of ``fold_probe`` for a linear map W [K, D], b [K] on the embedding standardised by ``scaler``."""
    m = norm.running_mean.double().cpu().numpy()
    s = (norm.running_var.double() + norm.eps).sqrt().cpu().numpy()
    coef = coef / scaler.scale_
    bias = intercept + coef @ (m - scaler.mean_)
    return coef * s, bias


# ----------------------------------------------------------------------------- the corpus's baseline


def clip_statistics(encoded: bytes, name: str = "") -> np.ndarray:
    """Mean and standard deviation over time of the log-mel (``audio.log_mel``) of a whole clip -> [160]."""
    mel = log_mel(torch.from_numpy(decode_audio(encoded, name=name))).numpy()  # [80, T]
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)])


def baseline(splits: Mapping[str, datasets.Dataset], seed: int = 0) -> dict[str, dict]:
    """The corpus's floor: ``linear_probe`` on ``clip_statistics`` (``BASELINE``), fitted on ``splits["train"]``
    and scored by the same metrics as trained models on every other non-empty split."""
    def arrays(ds: datasets.Dataset) -> dict[str, np.ndarray]:
        cells = ds.select_columns(["audio"])["audio"]
        x = np.stack([clip_statistics(data.encoded_audio(c, f"row {i}"), f"row {i}") for i, c in enumerate(cells)])
        return {"index": np.arange(len(ds)), "embedding": x, "emotion": np.array(ds["emotion"]),
                "vad": data.vad_ratings(ds)}

    evals = {name: arrays(ds) for name, ds in splits.items() if name != "train" and len(ds)}
    n_classes = len(splits["train"].features["emotion"].names)
    return linear_probe(arrays(splits["train"]), evals, n_classes, seed)[0]
