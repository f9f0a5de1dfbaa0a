"""Figures and tables for the notebooks: arrays and results in, figures and tables out. It imports nothing of
the project: what it draws is handed to it.

    report.corpus_table(splits)                  clips per emotion and split, speakers, hours
    report.plot_batch(batch, label_names)        log-mels of a batch as the model sees them
    report.metrics_table(results)                one row per split or run
    report.plot_history(result["history"])       loss and validation metrics per epoch
    report.plot_confusion(result["test"]["confusion"], label_names)
    report.plot_layer_weights(net.layer_weights())   which encoder layers the embedding draws on
    report.plot_embeddings(evaluate.embed(cfg, "test"), label_names)
    report.plot_score_matrix(ua, text)           a train corpus x test corpus matrix (bench/cross_corpus.py)
    report.plot_reliability({"before": calibration.reliability(p, y), ...})   accuracy and count per confidence bin
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` (folders made as needed; nothing when None); returns it for the notebook."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_history(history: list[dict] | dict[str, list[dict]], path: str | Path | None = None) -> Figure:
    """Training loss and validation UA/WA/macro-F1 per epoch, of one run's ``history`` or of several
    runs (name -> history) overlaid: a colour per run, a line style per metric."""
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
    return save_figure(fig, path)


def plot_layer_weights(weights: Sequence[float] | torch.Tensor, title: str = "layer weights",
                       path: str | Path | None = None) -> Figure:
    """A learned layer mix's softmax weights [n_layers + 1] (``EmotionModel.layer_weights``): which encoder
    layers the embedding draws on, against the uniform mix it starts from."""
    weights = np.asarray(weights, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(weights), 3))
    ax.bar(range(len(weights)), weights)
    ax.axhline(1 / len(weights), color="grey", linestyle=":", label="uniform")
    ax.set(xticks=range(len(weights)), xticklabels=["input", *range(1, len(weights))], xlabel="encoder layer",
           ylabel="weight", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(confusion: list[list[int]], label_names: list[str], title: str = "confusion",
                   path: str | Path | None = None) -> Figure:
    """Row-normalised confusion matrix over the classes that occur (rows: true, columns: predicted)."""
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
    return save_figure(fig, path)


def plot_reliability(curves: dict[str, dict[str, np.ndarray]], title: str = "reliability",
                     path: str | Path | None = None) -> Figure:
    """Reliability diagram: per bin of the top probability, the accuracy against the mean confidence (the
    diagonal is a calibrated model) above, the number of rows below; one colour per curve (name ->
    ``calibration.reliability``'s ``confidence``, ``accuracy``, ``count`` [B], ``edges`` [B + 1] and ``ece``), with
    its ECE in the legend."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, height_ratios=(3, 1),
                                      constrained_layout=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for k, (name, r) in enumerate(curves.items()):
        filled = r["count"] > 0
        top.plot(r["confidence"][filled], r["accuracy"][filled], marker="o", label=f"{name} (ECE {r['ece']:.3f})")
        width = np.diff(r["edges"]) / len(curves)
        bottom.bar(r["edges"][:-1] + k * width, r["count"], width=width, align="edge", label=name)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence (top probability)", ylabel="rows")
    return save_figure(fig, path)


def plot_score_matrix(scores: pd.DataFrame, text: pd.DataFrame | None = None, title: str = "UA",
                      path: str | Path | None = None) -> Figure:
    """A heatmap of ``scores`` (rows: the corpus trained on, columns: the corpus scored; values 0-1, NaN blank),
    each cell written as ``text`` says (default: the value)."""
    values = scores.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(2.2 * values.shape[1] + 2, 1.2 * values.shape[0] + 1.5))
    ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            label = text.iat[i, j] if text is not None else f"{v:.3f}"
            ax.text(j, i, label, ha="center", va="center", color="black" if v > 0.6 else "white", fontsize=9)
    ax.set(xticks=range(values.shape[1]), yticks=range(values.shape[0]), xticklabels=list(scores.columns),
           yticklabels=list(scores.index), xlabel="scored on", ylabel="trained on", title=title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_embeddings(pred: dict[str, np.ndarray], label_names: list[str], method: str = "pca",
                    title: str = "test embeddings", path: str | Path | None = None) -> Figure:
    """2-D projection (PCA or t-SNE) of pooled embeddings, coloured by emotion and by arousal."""
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
    return save_figure(fig, path)


def corpus_table(splits: dict) -> pd.DataFrame:
    """Clips per emotion (rows: the classes the splits hold, i.e. those a run trains and scores) and split
    (columns), with the number of those classes, speakers and hours, as a DataFrame."""
    table = {}
    for name, ds in splits.items():
        names = ds.features["emotion"].names
        counts = pd.Series(ds["emotion"]).map(lambda i, names=names: names[i]).value_counts()
        counts["classes"] = len(counts)
        counts["speakers"] = len(set(ds["speaker"]))
        counts["hours"] = round(float(np.sum(ds["duration"])) / 3600, 2)
        table[name] = counts
    return pd.DataFrame(table).fillna(0)


def metrics_table(results: dict[str, dict]) -> pd.DataFrame:
    """A pandas DataFrame of scalar metrics, one row per split (or run), each metric's 95 % interval (``ua_ci``:
    [lo, hi]) beside it as ``[lo, hi]``."""
    def row(m: dict) -> dict:
        out = {}
        for k, v in m.items():
            if not isinstance(v, list):
                out[k] = v
                if isinstance(m.get(f"{k}_ci"), list):
                    lo, hi = m[f"{k}_ci"]
                    out[f"{k} 95% CI"] = "" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
        return out

    return pd.DataFrame({name: row(m) for name, m in results.items()}).T


def plot_batch(batch: dict[str, torch.Tensor], label_names: Sequence[str], n: int = 4) -> Figure:
    """Log-mels of the first ``n`` clips of ``batch`` (views side by side), titled with label and VAD."""
    mel = batch["mel"].detach().float().cpu()
    mel = mel[:, None] if mel.ndim == 3 else mel
    n = min(n, len(mel))
    views = mel.shape[1]
    fig, axes = plt.subplots(n, views, figsize=(4 * views, 2.2 * n), squeeze=False, constrained_layout=True)
    for i in range(n):
        label = label_names[int(batch["emotion"][i])]
        vad = batch["vad"][i].tolist()
        if not any(math.isnan(x) for x in vad):
            label += "  V {:.2f} A {:.2f} D {:.2f}".format(*vad)
        for v in range(views):
            ax = axes[i, v]
            ax.imshow(mel[i, v].numpy(), origin="lower", aspect="auto", interpolation="nearest")
            ax.set_title(label + (f"  (view {v + 1})" if views > 1 else ""), fontsize=9)
            ax.set_xlabel("frame")
            ax.set_ylabel("mel bin")
    return fig
