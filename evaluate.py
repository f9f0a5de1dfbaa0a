"""Scoring a model: metrics with their intervals, predictions on a split, the linear probe and folding it into the
heads, the corpus's baseline, a checkpoint on other corpora, two runs compared. Nothing here trains a network.

    python evaluate.py CHECKPOINT DATA [DATA ...] [--split NAME|all] [--four-class] [--json OUT]  # cross-corpus
    python evaluate.py --compare RUN_A RUN_B [--on-b] [--json OUT]   # paired difference in test UA, per fold and pooled

    pred = predict_split(net, loader, Runtime.resolve("cpu"))     # per row: probabilities, VAD, embedding
    head_metrics(pred, n_classes)                  # UA, WA, macro-F1, confusion matrix (and CCC) of the heads
    metrics, probe = linear_probe(train_pred, {"test": pred}, n_classes)   # a probe on the frozen embeddings
    fold_probe(net, probe)                         # ... written into the model's heads
    calibrate(net, scored, fit=True, save_to=best)  # the temperature fitted on validation, ECE / NLL / Brier
    baseline(splits)                               # the corpus's floor: the same probe on log-mel statistics
    score_corpus(net, ds, options, runtime)        # a checkpoint on another corpus, over the classes both share
    compare_runs(run_a, run_b)                     # UA of a minus b on the same rows, interval and permutation p

UA is the unweighted average recall over the classes present, WA the accuracy, CCC Lin's concordance
correlation coefficient (rows without VAD left out). Every figure's 95 % interval comes from a bootstrap over
speakers (``stats.py``): a speaker's utterances are not independent. A row scored on several windows (an
evaluation loader with ``windows``) gets the mean of their probabilities, VAD and embeddings, as ``predict.py``
scores a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
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

import calibration
import checkpoint
import cli
import data
import distributed
import stats
from audio import decode_audio, log_mel
from config import Config
from labels import FOUR_CLASS, NOT_EMOTIONS, VAD, to_four_class
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
    sorted by row: ``index``, ``id``, ``speaker``, ``emotion``, ``vad`` [N, 3], ``probs`` [N, n_labels] (at the
    model's temperature; ``uncalibrated``: at 1),
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
    probs = row_mean(arrays["probs"], inverse)
    return {"index": rows, "id": np.asarray(loader.ids)[rows], "speaker": loader.speakers[rows],
            "emotion": arrays["emotion"][first], "vad": arrays["vad"][first],
            "probs": calibration.calibrated(probs, net.config.temperature), "uncalibrated": probs,
            **{k: row_mean(arrays[k], inverse) for k in ("vad_pred", "embedding")},
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
    ``id``, ``speaker``, ``emotion`` and ``prediction`` as label names), which a run writes to ``PREDICTIONS``;
    ``predictions``: split -> the ``predict_split`` arrays they come from."""

    metrics: dict[str, dict]
    probe: Probe | None
    rows: pd.DataFrame
    predictions: dict[str, dict[str, np.ndarray]]


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
    return Evaluation(metrics, probe, rows, preds)


def calibrate(net: EmotionModel, scored: Evaluation, fit: bool, save_to: Path | None) -> dict:
    """With ``fit``, set ``net``'s temperature to the one that minimises the validation split's NLL
    (``calibration.fit_temperature``) and write it into the checkpoint ``save_to`` (None: write nothing, as on
    every rank but the first);
    returns ``scored``'s metrics with each split's ECE, NLL and Brier score at that temperature (``ece``, ``nll``,
    ``brier``) and at 1 (``*_before``), and the ``temperature``. No prediction changes."""
    if fit:
        val = scored.predictions["validation"]
        net.config = dataclasses.replace(net.config, temperature=calibration.fit_temperature(val["uncalibrated"],
                                                                                             val["emotion"]))
        if save_to is not None:
            checkpoint.save_model(net, save_to, extra=checkpoint.read_checkpoint(save_to)["extra"])
    out = {}
    for split, pred in scored.predictions.items():
        before = calibration.calibration_metrics(pred["uncalibrated"], pred["emotion"])
        after = calibration.calibration_metrics(calibration.calibrated(pred["uncalibrated"], net.config.temperature),
                                                pred["emotion"])
        out[split] = {**scored.metrics[split], **after, **{f"{k}_before": v for k, v in before.items()},
                      "temperature": net.config.temperature}
    return out


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


# ----------------------------------------------------------------------------- a checkpoint on other corpora


def scored_classes(names: Sequence[str], four_class: bool) -> dict[str, str]:
    """Label name -> the class it is scored as: itself (``labels.NOT_EMOTIONS`` have none), or with ``four_class``
    its ``labels.FOUR_CLASS`` reduction (names without one have none)."""
    if four_class:
        return {n: FOUR_CLASS[i] for n in names if (i := to_four_class(n)) is not None}
    return {n: n for n in names if n not in NOT_EMOTIONS}


def score_corpus(net: EmotionModel, ds: datasets.Dataset, options: data.LoaderOptions, runtime: Runtime, *,
                 trained: Sequence[str] | None = None, four_class: bool = False, name: str = "corpus",
                 seed: int = 0, min_confidence: Sequence[float] = ()) -> tuple[dict, pd.DataFrame]:
    """Score ``net`` on the rows of ``ds`` (a corpus it was not trained on) over the classes both share by name:
    the classes of ``ds``'s rows and the model's ``trained`` classes (a checkpoint's ``extra["trained"]``: the
    labels its training split had rows of; None: all its labels).

    Rows of other classes are left out (counted in ``left_out`` and on stderr); the model's scores for
    classes the corpus lacks take no part: the prediction is the most probable shared class (with ``four_class``
    the probabilities of the model's classes that reduce to one class are added). Returns the metrics
    (``classification_metrics`` with speaker-bootstrap intervals, ``classes``: the shared classes in order,
    ``left_out``: name -> rows, ``abstaining``: ``kept_rows`` at each of ``min_confidence``, the probabilities
    renormalised over the shared classes) and the rows (``id``, ``speaker``, ``emotion``, ``prediction``). Fewer
    than two shared classes is a ValueError naming both label sets."""
    row_names = np.asarray(ds.features["emotion"].names)[np.asarray(ds["emotion"], dtype=np.int64)]
    learnt = [n for n in net.config.labels if trained is None or n in trained]
    model, corpus = scored_classes(learnt, four_class), scored_classes(sorted(set(row_names)), four_class)
    shared = [c for c in dict.fromkeys(model.values()) if c in set(corpus.values())]
    if len(shared) < 2:
        raise ValueError(f"{name} shares {len(shared)} class(es) {shared} with the checkpoint (the checkpoint's: "
                         f"{learnt}; the corpus's rows: {sorted(set(row_names))}"
                         f"{'; in 4 classes' if four_class else ''}): scoring needs at least two")
    keep = np.array([corpus.get(n) in shared for n in row_names], dtype=bool)
    left_out = {str(n): int(c) for n, c in zip(*np.unique(row_names[~keep], return_counts=True), strict=True)}
    if left_out:
        why = "outside the four or not learnt by the checkpoint" if four_class else "the checkpoint did not learn"
        print(f"{name}: left out {int((~keep).sum())} of {len(ds)} rows, of classes {why}: {left_out}",
              file=sys.stderr)
    pred = predict_split(net, data.make_loader(ds.select(np.flatnonzero(keep)), options, device=runtime.device),
                         runtime)
    to_shared = np.zeros((len(net.config.labels), len(shared)))  # model class -> shared class
    for i, label in enumerate(net.config.labels):
        if model.get(label) in shared:
            to_shared[i, shared.index(model[label])] = 1.0
    probs = pred["probs"] @ to_shared
    probs /= probs.sum(1, keepdims=True)  # over the shared classes
    y_pred = probs.argmax(1)
    y_true = np.array([shared.index(corpus[n]) for n in row_names[keep][pred["index"]]])
    metrics = classification_metrics(y_true, y_pred, len(shared), pred["speaker"], seed)
    rows = pd.DataFrame({"id": pred["id"], "speaker": pred["speaker"], "emotion": np.asarray(shared)[y_true],
                         "prediction": np.asarray(shared)[y_pred]})
    abstaining = [kept_rows(probs, y_true, p) for p in min_confidence]
    return {**metrics, "classes": shared, "left_out": left_out, "abstaining": abstaining}, rows


def kept_rows(probs: np.ndarray, y_true: np.ndarray, min_confidence: float) -> dict:
    """What abstaining below ``min_confidence`` costs (``predict.py --min-confidence``): the ``coverage`` (the
    fraction of rows whose top probability reaches it), and the UA and WA of those rows (NaN when none is kept)."""
    kept = probs.max(1) >= min_confidence
    out = {"min_confidence": min_confidence, "coverage": float(kept.mean()), "n": int(kept.sum()),
           "ua": float("nan"), "wa": float("nan")}
    if kept.any():
        m = classification_metrics(y_true[kept], probs[kept].argmax(1), probs.shape[1])
        out.update(ua=m["ua"], wa=m["wa"])
    return out


def corpus_rows(path: str, split: str) -> datasets.Dataset:
    """``split`` of a prepared corpus, or with ``"all"`` every split of it together (``data.split_names``)."""
    if split != "all":
        return data.load_corpus(path, split)
    return datasets.concatenate_datasets([data.load_corpus(path, s) for s in data.split_names(path)])


# ----------------------------------------------------------------------------- two runs on the same rows


def run_predictions(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The ``PREDICTIONS`` of a run (name ""), of a cross-validation (each fold's folder name: ``fold1``) or of
    several seeds of one (``seed0/fold1``, as ``bench/folds.py --seeds`` writes them) -> tables."""
    run_dir = Path(run_dir)
    if (run_dir / PREDICTIONS).is_file():
        return {"": pd.read_csv(run_dir / PREDICTIONS, dtype=str)}
    found = sorted(run_dir.glob(f"*/{PREDICTIONS}")) or sorted(run_dir.glob(f"seed*/*/{PREDICTIONS}"))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no {PREDICTIONS} (a finished train.py run) and no fold folders holding "
                                "one (a cross-validation, or seed folders of fold folders)")
    return {p.parent.relative_to(run_dir).as_posix(): pd.read_csv(p, dtype=str) for p in found}


def _partner(key: str, other: Mapping[str, pd.DataFrame], where: str) -> str:
    """The key of ``other`` that the run ``key`` (``fold1`` or ``seed0/fold1``) is paired with: the same key, else
    the only run of ``other`` on the same fold (a probe run once, compared with a recipe's seeds)."""
    if key in other:
        return key
    same_fold = [k for k in other if Path(k).name == Path(key).name]
    if len(same_fold) != 1:
        raise ValueError(f"{where} holds {sorted(other)}: nothing to pair {key!r} with (the same seed and fold, or "
                         "a single run of the fold)")
    return same_fold[0]


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test", seed: int = 0, *,
                 on_b: bool = False, seeds: Sequence[int] | None = None,
                 folds: Sequence[str] | None = None) -> pd.DataFrame:
    """UA of run a minus UA of run b on the same rows of ``split`` (``stats.paired_difference``): a row per fold of
    a cross-validation (matched by folder name) and, with several, the folds pooled (a speaker is a fold's
    speaker). Seeds of a cross-validation (``run_predictions``) are paired seed by seed, or each with the single
    run of ``run_b``, and pooled into their fold's row: a speaker's utterances under every seed resample together.
    Columns ``ua_a``, ``ua_b``, ``difference``, ``ci_low``, ``ci_high``, ``p``, ``speakers``, ``n``, ``seeds``.
    ``on_b``: score on run b's rows only, which run a holds among others (a model trained on several corpora, scored
    on the corpus of b). ``seeds``: only these seeds of run a (``seedS/...``; None: all). ``folds``: only these
    folds (folder names: ``fold2``) of both runs, each of which must hold them (None: all, the same in both). Runs
    whose folds or rows differ are a ValueError saying how."""
    a, b = run_predictions(run_a), run_predictions(run_b)
    if seeds is not None:
        a = {k: t for k, t in a.items() if k.split("/")[0] in {f"seed{s}" for s in seeds}}
        if not a:
            raise ValueError(f"{run_a} holds none of seeds {list(seeds)}")
    if folds is not None:
        for run, held in ((run_a, a), (run_b, b)):
            missing = sorted(set(folds) - {Path(k).name for k in held})
            if missing:
                raise ValueError(f"{run} holds no run of {missing}")
        a, b = ({k: t for k, t in runs.items() if Path(k).name in folds} for runs in (a, b))
    folds_a, folds_b = ({Path(k).name for k in runs} for runs in (a, b))
    if folds_a != folds_b:
        raise ValueError(f"{run_a} and {run_b} hold different folds: {sorted(folds_a)} and {sorted(folds_b)}")
    joined: dict[str, list[pd.DataFrame]] = {}
    for key in a:
        x, y = (t[t["split"] == split].set_index("id") for t in (a[key], b[_partner(key, b, str(run_b))]))
        if on_b:
            x = x[x.index.isin(y.index)]
        if set(x.index) != set(y.index) or not (x["emotion"] == y.loc[x.index, "emotion"]).all():
            among = not on_b and set(y.index) < set(x.index)
            hint = ": b's rows are among a's, --on-b scores them alone" if among else ""
            raise ValueError(f"{key or 'the runs'}: {run_a} and {run_b} were not scored on the same {split} rows "
                             f"({len(set(x.index) ^ set(y.index))} ids in one only): compare runs on the same "
                             f"data{hint}")
        fold = Path(key).name
        joined.setdefault(fold, []).append(x.assign(other=y.loc[x.index, "prediction"], fold=fold))
    seeds = {fold: len(parts) for fold, parts in joined.items()}
    tables = {fold: pd.concat(parts) for fold, parts in joined.items()}
    if len(tables) > 1:
        tables["pooled"] = pd.concat(tables.values())
        seeds["pooled"] = max(seeds.values())
    out = {fold or "run": {**compare_rows(rows, seed), "seeds": seeds[fold]} for fold, rows in tables.items()}
    table = pd.DataFrame(out).T
    return table.astype({"speakers": int, "n": int, "seeds": int})


def compare_rows(rows: pd.DataFrame, seed: int = 0) -> dict:
    """``stats.paired_difference`` of two systems' predictions of the same rows: ``emotion``, ``prediction`` (a),
    ``other`` (b) as label names, ``speaker`` and ``fold`` (a speaker is a fold's speaker)."""
    names = sorted(set(rows["emotion"]) | set(rows["prediction"]) | set(rows["other"]))
    y_true, pred_a, pred_b = (rows[c].map(names.index).to_numpy() for c in ("emotion", "prediction", "other"))
    d = stats.paired_difference(y_true, pred_a, pred_b, (rows["fold"] + "/" + rows["speaker"]).to_numpy(),
                                len(names), seed)
    return {"ua_a": d["ua_a"], "ua_b": d["ua_b"], "difference": d["difference"], "ci_low": d["ci"][0],
            "ci_high": d["ci"][1], "p": d["p"], "speakers": d["speakers"], "n": d["n"]}


# ----------------------------------------------------------------------------- command line


def score_table(results: Mapping[str, dict]) -> pd.DataFrame:
    """Corpus -> ``score_corpus`` metrics as a printable table: UA, WA, macro-F1 with their intervals, n, classes."""
    return pd.DataFrame({name: {**{k: stats.format_interval(m[k], m[f"{k}_ci"]) for k in stats.METRICS},
                                "speakers": m["speakers"], "n": m["n"], "classes": ",".join(m["classes"])}
                         for name, m in results.items()}).T


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="a trained checkpoint (a run's best.pt)")
    parser.add_argument("corpora", nargs="*", metavar="DATA", help="prepared corpora to score it on")
    parser.add_argument("--split", default="all", help="the split of each corpus to score, or all (default: every "
                                                       "row: no speaker of another corpus was seen in training)")
    parser.add_argument("--four-class", action="store_true", help="score neutral, happy, sad, angry only")
    parser.add_argument("--min-confidence", type=float, nargs="+", default=[], metavar="P",
                        help="also the coverage, UA and WA of the rows whose top probability reaches each P "
                             "(predict.py --min-confidence)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results, keyed by corpus")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="the paired difference in test UA of two runs (or cross-validations, or seeds of them) "
                             "on the same rows")
    parser.add_argument("--on-b", action="store_true",
                        help="--compare on run b's rows only, which run a holds among others (run a trained on "
                             "several corpora, run b on one of them)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: the GPU if there is one)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.on_b and not args.compare:
        parser.error("--on-b goes with --compare RUN_A RUN_B")
    if args.compare and (args.checkpoint or args.four_class):
        parser.error("--compare RUN_A RUN_B takes no checkpoint or corpora")
    if not args.compare and not (args.checkpoint and args.corpora):
        parser.error("give CHECKPOINT DATA [DATA ...], or --compare RUN_A RUN_B")
    outside = [p for p in args.min_confidence if not 0 < p < 1]
    if outside:
        parser.error(f"--min-confidence {' '.join(map(str, outside))}: each P must be between 0 and 1 (exclusive)")
    return args


def _main(argv: list[str] | None) -> None:
    args = parse_args(argv)
    if args.compare:
        table = compare_runs(*args.compare, on_b=args.on_b)
        rows = " on the rows of b" if args.on_b else ""
        print(f"test UA of {args.compare[0]} (a) minus {args.compare[1]} (b){rows}: difference, its 95 % speaker-"
              f"bootstrap interval, the paired permutation p\n{table.to_string(float_format=lambda v: f'{v:.3f}')}")
        if args.json:
            args.json.write_text(table.to_json(orient="index", indent=2))
        return
    runtime = Runtime.resolve(args.device, "auto")
    net = checkpoint.load_model(args.checkpoint, device=runtime.device)
    trained = checkpoint.read_checkpoint(args.checkpoint)["extra"].get("trained")
    options = Config(n_frames=net.config.n_frames, batch_size=args.batch_size).loader_options(
        train=False, n_mels=net.config.n_mels)
    results = {}
    for path in args.corpora:
        name = Path(path).name
        if name in results:
            raise ValueError(f"two corpora named {name}: give them folders of different names")
        results[name] = score_corpus(net, corpus_rows(path, args.split), options, runtime, trained=trained,
                                     four_class=args.four_class, name=name, min_confidence=args.min_confidence)[0]
    print(f"{args.checkpoint} ({', '.join(net.config.labels)}) on {args.split} rows, 95 % intervals over speakers:\n"
          f"{score_table(results).to_string()}")
    if args.min_confidence:
        table = pd.DataFrame([{"corpus": name, **k} for name, m in results.items() for k in m["abstaining"]])
        print(f"abstaining below a top probability (min_confidence): the rows kept and their scores\n"
              f"{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    """``python evaluate.py``: a bad argument or input is one line on stderr (--debug: the traceback)."""
    return cli.run(_main, argv, "evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
