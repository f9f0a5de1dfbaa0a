"""report.py: the notebooks' figures and tables, drawn from real batches and run results."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import random_model

import calibration
import data
import report
from labels import FOUR_CLASS

matplotlib.use("Agg")


def test_plot_batch(synthetic_dir):
    ds = data.load_corpus(synthetic_dir, "train")
    options = data.LoaderOptions(batch_size=4, train=True, views=2, augment=data.Augment(), n_frames=100,
                                 backend="torch", num_workers=0)
    batch = next(iter(data.make_loader(ds, options)))
    fig = report.plot_batch(batch, FOUR_CLASS, n=2)
    assert len(fig.axes) == 4 and FOUR_CLASS[int(batch["emotion"][0])] in fig.axes[0].get_title()


def _history(n: int, ua: float) -> list[dict]:
    return [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_ua": ua, "val_wa": ua, "val_macro_f1": ua}
            for e in range(n)]


def test_figures_are_drawn_and_saved(tmp_path):
    fig = report.plot_history({"a": _history(3, 0.5), "b": _history(2, 0.6)}, path=tmp_path / "f" / "h.png")
    assert (tmp_path / "f" / "h.png").stat().st_size > 0 and len(fig.axes[1].lines) == 6
    fig = report.plot_confusion([[3, 1, 0], [0, 2, 0], [0, 0, 0]], ["a", "b", "c"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b"]  # class c never occurs
    assert len(report.plot_layer_weights(random_model().layer_weights()).axes[0].patches) == 5  # input + 4 blocks
    with pytest.raises(ValueError, match="no layer weights"):
        random_model(layers="last").layer_weights()
    rng = np.random.default_rng(0)
    pred = {"embedding": rng.normal(size=(20, 8)), "emotion": np.arange(20) % 4, "vad": rng.uniform(size=(20, 3))}
    assert len(report.plot_embeddings(pred, FOUR_CLASS).axes) == 3  # two panels and the arousal colour bar


def test_corpus_table(synthetic_dir):
    splits = {s: data.load_corpus(synthetic_dir, s) for s in ("train", "test")}
    table = report.corpus_table(splits)
    assert table.loc["speakers"].tolist() == [4, 1] and table["train"][:4].sum() == len(splits["train"])
    assert table.loc["classes"].tolist() == [4, 4]


def test_metrics_table_writes_each_interval_beside_its_metric():
    results = {"test": {"ua": 0.7, "ua_ci": [0.6, 0.8], "wa": 0.75, "wa_ci": [float("nan")] * 2, "n": 10,
                        "confusion": [[1]]},
               "validation": {"ua": 0.5, "n": 4, "confusion": [[1]]}}
    table = report.metrics_table(results)
    assert table.loc["test", "ua 95% CI"] == "[0.600, 0.800]" and table.loc["test", "wa 95% CI"] == ""
    assert table.loc["test", "ua"] == 0.7 and "confusion" not in table.columns


def test_plot_score_matrix():
    ua = pd.DataFrame({"ravdess": {"ravdess": 0.8, "emodb": 0.4}, "emodb": {"ravdess": 0.5, "emodb": float("nan")}})
    fig = report.plot_score_matrix(ua, title="UA")
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.400", "0.500", "0.800"]  # the NaN cell is blank


def test_plot_reliability_draws_each_curve_with_its_ece(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.5, 200)
    y = probs.argmax(1)
    y[:60] = (y[:60] + 1) % 4  # wrong on 60 rows: over-confident
    curves = {"before": calibration.reliability(probs, y),
              "after": calibration.reliability(calibration.calibrated(probs, 2.0), y)}
    fig = report.plot_reliability(curves, path=tmp_path / "reliability.png")
    top, bottom = fig.axes
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    for name, scored in (("before", probs), ("after", calibration.calibrated(probs, 2.0))):
        assert f"{name} (ECE {calibration.calibration_metrics(scored, y)['ece']:.3f})" in legend
    assert sum(p.get_height() for p in bottom.patches) == 2 * len(y)  # every row counted once per curve
    assert (tmp_path / "reliability.png").stat().st_size > 0
