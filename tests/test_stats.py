"""stats.py: metrics from confusion matrices, the speaker bootstrap's intervals, the paired difference and its
permutation test."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

import stats


def system(n_speakers: int, per_speaker: int = 40, seed: int = 0, n_classes: int = 4):
    """Labels, predictions and speakers of a system whose accuracy varies from speaker to speaker."""
    rng = np.random.default_rng(seed)
    speakers = np.repeat([f"spk{i:02d}" for i in range(n_speakers)], per_speaker)
    y = rng.integers(0, n_classes, len(speakers))
    accuracy = np.repeat(rng.uniform(0.3, 0.9, n_speakers), per_speaker)
    pred = np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, n_classes, len(y)))
    return y, pred, speakers


def test_confusion_metrics_agree_with_sklearn():
    y, pred, speakers = system(6)
    cm = stats.speaker_confusions(y, pred, speakers, 5)  # a fifth class nobody has: not averaged
    assert cm.shape == (6, 5, 5) and cm.sum() == len(y)
    m = stats.confusion_metrics(cm.sum(0))
    assert m["ua"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["wa"] == pytest.approx((y == pred).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=np.unique(y), average="macro"))


def test_interval_holds_the_estimate_and_is_wider_for_fewer_speakers():
    widths = {}
    for n in (3, 12):
        y, pred, speakers = system(n, per_speaker=480 // n, seed=1)
        ci = stats.speaker_intervals(y, pred, speakers, 4)
        ua = stats.confusion_metrics(stats.speaker_confusions(y, pred, speakers, 4).sum(0))["ua"]
        assert ci["ua"][0] - 1e-9 <= ua <= ci["ua"][1] + 1e-9
        widths[n] = ci["ua"][1] - ci["ua"][0]
        assert stats.speaker_intervals(y, pred, speakers, 4) == ci  # deterministic in its seed
    assert widths[3] > widths[12]
    # the same rows as if they were independent utterances: far narrower than the speakers allow
    y, pred, _ = system(3, per_speaker=160, seed=1)
    rows = stats.speaker_intervals(y, pred, np.arange(len(y)), 4)["ua"]
    assert rows[1] - rows[0] < widths[3] / 2
    one = stats.speaker_intervals(y, pred, np.zeros(len(y)), 4)
    assert all(np.isnan(v).all() for v in one.values())  # one speaker: nothing to resample


def test_paired_difference():
    y, a, speakers = system(12, seed=2)
    better = np.where(np.random.default_rng(3).random(len(y)) < 0.5, y, a)  # a's errors, half of them fixed
    d = stats.paired_difference(y, better, a, speakers, 4)
    ua = [stats.confusion_metrics(stats.speaker_confusions(y, p, speakers, 4).sum(0))["ua"] for p in (better, a)]
    assert d["difference"] == pytest.approx(ua[0] - ua[1]) and d["difference"] > 0
    assert 0 < d["ci"][0] <= d["difference"] <= d["ci"][1] and d["p"] < 0.01
    assert (d["speakers"], d["n"]) == (12, len(y))
    same = stats.paired_difference(y, a, a, speakers, 4)
    assert same["difference"] == 0 and same["ci"] == (0.0, 0.0) and same["p"] == 1.0
    # three speakers: 2^3 swaps, so the smallest two-sided p is 2/8, however large the difference
    y3, a3, s3 = system(3, seed=2)
    assert stats.paired_difference(y3, y3, a3, s3, 4)["p"] == pytest.approx(0.25)
    assert stats.format_interval(0.7123, (0.65, 0.771)) == "0.712 [0.650, 0.771]"
    assert stats.format_interval(0.7, (np.nan, np.nan)) == "0.700"
