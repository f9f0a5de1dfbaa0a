"""How sure a figure is: intervals from a bootstrap over speakers, and paired comparisons of two systems.

    speaker_intervals(y_true, y_pred, speakers, n_classes)         # {"ua": (lo, hi), "wa": ..., "macro_f1": ...}
    paired_difference(y_true, pred_a, pred_b, speakers, n_classes) # UA_a - UA_b, its interval, a permutation p

A speaker's utterances are not independent (one voice, one session, one actor's way of acting), so an interval
from resampling utterances is far too narrow on test sets of a few speakers. Every resample here draws whole
speakers with replacement (a cluster bootstrap, ``scipy.stats.bootstrap`` over speaker indices), and the
permutation test swaps two systems' predictions speaker by speaker.

The interval is the estimate ± t(0.975, S-1) sqrt(S / (S-1)) times the bootstrap's standard error over the S
speakers (clipped to the metric's range), not the bootstrap's percentiles: with two or three speakers a percentile
interval cannot reach beyond the speakers' own figures (with two it is no wider than their difference, narrower
on average than with six), while this one is the t interval of a mean over S speakers, the plug-in variance
corrected, and widens as speakers become few, as it must. With fewer than two speakers there is nothing to
resample: the interval is NaN. Both are deterministic in ``seed``.

Metrics are computed from confusion matrices (rows: true class), as ``evaluate.classification_metrics`` defines
them: UA the mean recall over the classes present, WA the accuracy, macro-F1 over the classes present.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999
METRICS = ("ua", "wa", "macro_f1")


def speaker_confusions(y_true: np.ndarray, y_pred: np.ndarray, speakers: np.ndarray, n_classes: int) -> np.ndarray:
    """One confusion matrix per speaker: [S, K, K] counts (speakers in sorted order, rows: true class)."""
    _, speaker = np.unique(np.asarray(speakers), return_inverse=True)
    cm = np.zeros((speaker.max(initial=-1) + 1, n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (speaker, np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """UA, WA and macro-F1 of confusion matrices [..., K, K] -> arrays [...]."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(-1), cm.sum(-2)
    present = support > 0
    n_present = present.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / support, 0.0)
        f1 = np.where(present, 2 * tp / (support + predicted), 0.0)
        return {"ua": recall.sum(-1) / n_present, "wa": tp.sum(-1) / cm.sum((-2, -1)),
                "macro_f1": f1.sum(-1) / n_present}


def _resampled(cm: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """The pooled confusion matrices of resamples of speaker indices ``idx`` [..., S] of ``cm`` [S, K, K]."""
    idx = np.moveaxis(np.asarray(idx), axis, -1)
    flat = idx.reshape(-1, idx.shape[-1])
    counts = np.zeros((len(flat), len(cm)))  # how often each resample drew each speaker
    np.add.at(counts, (np.arange(len(flat))[:, None], flat), 1)
    return np.einsum("bs,skl->bkl", counts, cm).reshape(*idx.shape[:-1], *cm.shape[1:])


def _interval(statistic, estimate: np.ndarray, n_speakers: int, seed: int, low: float, high: float) -> np.ndarray:
    """Intervals [n_outputs, 2] of a vectorised ``statistic(speaker indices, axis)`` around ``estimate``
    [n_outputs]: estimate ± t sqrt(S / (S-1)) se (module docstring), clipped to [low, high]."""
    result = stats.bootstrap((np.arange(n_speakers),), statistic, n_resamples=N_RESAMPLES, vectorized=True,
                             confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    half = (stats.t.ppf(0.5 + CONFIDENCE / 2, n_speakers - 1) * np.sqrt(n_speakers / (n_speakers - 1))
            * np.atleast_1d(result.standard_error))
    return np.clip(np.stack([estimate - half, estimate + half], axis=-1), low, high)


def speaker_intervals(y_true: np.ndarray, y_pred: np.ndarray, speakers: np.ndarray, n_classes: int,
                      seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % intervals of UA, WA and macro-F1 from a bootstrap over speakers (module docstring; NaN for fewer than
    two).

    y_true, y_pred: [N] class indices < ``n_classes``; speakers: [N] any ids."""
    cm = speaker_confusions(y_true, y_pred, speakers, n_classes)
    if len(cm) < 2:
        return {m: (float("nan"), float("nan")) for m in METRICS}

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        m = confusion_metrics(_resampled(cm, idx, axis))
        return np.stack([m[k] for k in METRICS])

    estimate = confusion_metrics(cm.sum(0))
    ci = _interval(statistic, np.array([estimate[k] for k in METRICS]), len(cm), seed, 0.0, 1.0)
    return {m: (float(lo), float(hi)) for m, (lo, hi) in zip(METRICS, ci, strict=True)}


def paired_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, speakers: np.ndarray,
                      n_classes: int, seed: int = 0) -> dict:
    """UA of system a minus UA of system b on the same rows, with a 95 % speaker-bootstrap interval (as
    ``speaker_intervals``') and a two-sided paired permutation p-value.

    The permutation test's statistic is the difference itself: UA = sum_i w_i [pred_i = y_i] with w_i = 1 / (K n_c(i))
    (K classes present, n_c rows of class c), so UA_a - UA_b = sum_s (A_s - B_s) over speakers s with
    A_s = sum_{i in s} w_i [pred_a,i = y_i]; under the null that the systems are exchangeable, each speaker's A_s and
    B_s may be swapped (``scipy.stats.permutation_test``, ``permutation_type="samples"``: exact for up to 13
    speakers). Returns ``ua_a``, ``ua_b``, ``difference``, ``ci`` (lo, hi), ``p``, ``speakers`` and ``n``."""
    y_true, pred_a, pred_b = (np.asarray(a) for a in (y_true, pred_a, pred_b))
    a = speaker_confusions(y_true, pred_a, speakers, n_classes)
    b = speaker_confusions(y_true, pred_b, speakers, n_classes)
    ua_a, ua_b = (float(confusion_metrics(cm.sum(0))["ua"]) for cm in (a, b))
    difference = ua_a - ua_b
    out = {"ua_a": ua_a, "ua_b": ua_b, "difference": difference, "ci": (float("nan"), float("nan")), "p": float("nan"),
           "speakers": len(a), "n": int(len(y_true))}
    if len(a) < 2:
        return out

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return (confusion_metrics(_resampled(a, idx, axis))["ua"]
                - confusion_metrics(_resampled(b, idx, axis))["ua"])[None]

    out["ci"] = tuple(float(v) for v in _interval(statistic, np.array([difference]), len(a), seed, -1.0, 1.0)[0])
    support = a.sum(0).sum(-1)
    weight = 1.0 / ((support > 0).sum() * support[y_true])  # w_i
    _, speaker = np.unique(np.asarray(speakers), return_inverse=True)
    per_speaker = [np.bincount(speaker, weights=weight * (pred == y_true), minlength=len(a))
                   for pred in (pred_a, pred_b)]
    test = stats.permutation_test(per_speaker, lambda x, y, axis: np.sum(x - y, axis=axis), vectorized=True,
                                  permutation_type="samples", n_resamples=N_RESAMPLES, alternative="two-sided",
                                  rng=np.random.default_rng(seed))
    out["p"] = float(test.pvalue)
    return out


def format_interval(value: float, ci: tuple[float, float] | list[float], digits: int = 3) -> str:
    """``"0.712 [0.650, 0.771]"``: a figure and its interval (the figure alone where the interval is NaN)."""
    lo, hi = ci
    if np.isnan(lo):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
