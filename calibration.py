"""How far a model's probabilities can be trusted: temperature scaling, and the figures that say how calibrated they
are.

    t = fit_temperature(probs, y)        # one scalar on validation: min NLL of calibrated(probs, t)
    calibrated(probs, t)                 # [N, K] probabilities with the same argmax, sharper (t < 1) or softer
    calibration_metrics(probs, y)        # {"ece", "nll", "brier"}
    reliability(probs, y)                # per confidence bin: mean confidence, accuracy, count

Temperature scaling (Guo et al., 2017, "On calibration of modern neural networks") divides the logits z by one
scalar T > 0 fitted on held-out data: p_T = softmax(z / T). A row scored on several windows has the mean of their
probabilities p, so the temperature is applied to that row's log-probabilities, p_T = softmax(log p / T), which is
softmax(z / T) for one window. Both are monotone in every class, so no prediction changes.

ECE (expected calibration error, Naeini et al., 2015) over B equal-width bins of the top probability:
ECE = sum_b (n_b / N) |acc(b) - conf(b)|, 15 bins as Guo et al. NLL is the mean negative log-probability of the
true class; the Brier score the mean over rows of sum_k (p_k - [k = y])^2.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

BINS = 15
TINY = 1e-12  # floor of a probability before its log: classes a head never predicts have probability 0
LOG_T_BOUNDS = (-4.0, 4.0)  # log T searched in; beyond it the probabilities are all one-hot or all uniform


def calibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rows' probabilities [N, K] at ``temperature``: softmax(log p / T), in float64 (T = 1: ``probs``)."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return probs
    z = np.log(np.maximum(probs, TINY)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes ``y`` [N] under ``probs`` [N, K]."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.maximum(p, TINY)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising ``nll(calibrated(probs, T), y)``: the rows' probabilities [N, K] on held-out
    data (validation) and their true classes [N]; a bounded search over log T (``LOG_T_BOUNDS``)."""
    if len(y) == 0:
        raise ValueError("fit_temperature needs rows: the validation split is empty")
    result = optimize.minimize_scalar(lambda log_t: nll(calibrated(probs, float(np.exp(log_t))), y),
                                      bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """The reliability diagram's figures over ``bins`` equal-width bins of the top probability (bin b holds
    confidences in (b/B, (b+1)/B], the first also 0): ``confidence`` (mean top probability; NaN where empty),
    ``accuracy`` (NaN where empty) and ``count`` [B] each, the bins' ``edges`` [B + 1], and their ``ece``."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    filled = count > 0
    ece = float((count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])).sum() / len(confidence))
    return {"confidence": mean_confidence, "accuracy": accuracy, "count": count, "edges": edges, "ece": ece}


def calibration_metrics(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict[str, float]:
    """``ece`` (``bins`` equal-width bins of the top probability), ``nll`` and ``brier`` of ``probs`` [N, K]
    against the true classes ``y`` [N] (module docstring)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    onehot = np.eye(probs.shape[1])[y]
    return {"ece": reliability(probs, y, bins)["ece"], "nll": nll(probs, y),
            "brier": float(((probs - onehot) ** 2).sum(axis=1).mean())}
