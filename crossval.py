"""Cross-validation: one run per prepared fold, and the table of their test metrics.

    results = crossval.run(cfg, train.fit)     # cfg.folds: prepared folds; one run each in run_dir/<fold's folder>
    crossval.fold_table(results)               # a row of test metrics per fold, their mean ± sd, the pooled interval
    crossval.write_summary(cfg, results)       # prints that table and writes run_dir/cross_validation.txt
    crossval.mean_sd([0.6, 0.7, 0.8])          # "0.700 ± 0.100": the spread of any runs (folds, seeds)

``train.py --folds``, the supervised notebook and ``bench/folds.py`` run folds through ``run``. The function
that runs one fold comes in as an argument (``train.fit``), so that this module sits below ``train.py``, whose
command line calls it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

import distributed
import stats
from config import Config
from evaluate import PREDICTIONS

CROSS_VALIDATION = "cross_validation.txt"  # the table in the cross-validation's run_dir


def fold_configs(cfg: Config) -> dict[str, Config]:
    """The run of each fold of ``cfg.folds``, named by its folder: ``cfg`` on that fold's data, in
    ``run_dir/<name>``; where ``cfg.init`` is a folder (a cross-validation's run_dir), each fold starts from
    its own ``<init>/<name>/best.pt``."""
    if not cfg.folds:
        raise ValueError("cross-validation needs folds: the prepared folds, one save_to_disk folder each")
    names = [Path(fold).name for fold in cfg.folds]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"folds {list(cfg.folds)}: the folder name(s) {repeated} repeat, and each fold's run is "
                         "named by its folder: give folds distinct names")
    runs = {}
    for name, fold in zip(names, cfg.folds, strict=True):
        init = cfg.init
        if init is not None and Path(init).is_dir():
            init = str(Path(init) / name / "best.pt")
            if not Path(init).is_file():
                raise FileNotFoundError(f"init {cfg.init} is a folder but holds no {name}/best.pt: is it a finished "
                                        "cross-validation over the same folds?")
        runs[name] = dataclasses.replace(cfg, data=fold, folds=None, run_dir=str(Path(cfg.run_dir) / name),
                                         init=init)
    return runs


def run(cfg: Config, fit: Callable[[Config], dict]) -> dict[str, dict]:
    """``fit`` (``train.fit``) once per fold of ``cfg.folds`` (``fold_configs``); returns fold name -> its result
    with the fold's ``data``, ``test_speakers``, ``minutes`` (wall clock) and ``predictions`` (the run's
    ``evaluate.PREDICTIONS`` table; None on ranks but the first, which writes it) added."""
    results = {}
    for name, fold in fold_configs(cfg).items():
        start = time.perf_counter()
        result = fit(fold)
        results[name] = {**result, "data": fold.data, "test_speakers": sorted(set(fold.corpus("test")["speaker"])),
                         "minutes": (time.perf_counter() - start) / 60,
                         "predictions": pd.read_csv(Path(fold.run_dir) / PREDICTIONS, dtype=str)  # rank 0 wrote it
                         if distributed.is_main() else None}
    return results


def pooled(results: Mapping[str, dict], split: str = "test", seed: int = 0) -> dict:
    """UA, WA and macro-F1 of every fold's ``split`` rows scored together (the folds' test speakers are disjoint),
    each with its 95 % speaker-bootstrap interval (``<metric>_ci``), and ``n``, ``speakers``; from the results'
    ``predictions``. A speaker is a fold's speaker: two folds' ``spk01`` are two speakers, while seeds of one fold
    (``seed0/fold1``, ``seed1/fold1``: the last part of the name is the fold) share theirs, and resample together."""
    rows = pd.concat([r["predictions"][r["predictions"]["split"] == split].assign(fold=Path(name).name)
                      for name, r in results.items()])
    names = sorted(set(rows["emotion"]) | set(rows["prediction"]))
    y_true, y_pred = (rows[c].map(names.index).to_numpy() for c in ("emotion", "prediction"))
    speakers = (rows["fold"] + "/" + rows["speaker"]).to_numpy()
    cm = stats.speaker_confusions(y_true, y_pred, speakers, len(names))
    out = {k: float(v) for k, v in stats.confusion_metrics(cm.sum(0)).items()}
    intervals = stats.speaker_intervals(y_true, y_pred, speakers, len(names), seed)
    return {**out, **{f"{k}_ci": list(v) for k, v in intervals.items()}, "n": len(rows), "speakers": len(cm)}


def mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± sd"`` of ``values`` (the sample standard deviation, ddof 1), or the value alone for one."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def fold_table(results: Mapping[str, dict], split: str = "test") -> pd.DataFrame:
    """``split``'s metrics of a cross-validation (fold name -> a run's result, as ``run`` returns): a row per fold
    (each scalar metric to three decimals, UA's 95 % speaker-bootstrap interval, n), then their ``mean_sd`` over
    the folds (and the total n), then the ``pooled`` figures with their intervals."""
    table = pd.DataFrame({name: {k: v for k, v in r[split].items() if not isinstance(v, list) and k != "speakers"}
                          for name, r in results.items()}).T
    metrics = [c for c in table.columns if c != "n"]
    out = table[metrics].astype(float).map(lambda v: f"{v:.3f}")
    out.insert(1, "ua 95% CI", [_interval(r[split]["ua_ci"]) for r in results.values()])
    out["n"] = table["n"].astype(int)
    out.loc["mean ± sd"] = [mean_sd(table["ua"].astype(float).tolist()), "",
                            *(mean_sd(table[k].astype(float).tolist()) for k in metrics[1:]), int(out["n"].sum())]
    pool = pooled(results, split)
    out.loc["pooled"] = [f"{pool['ua']:.3f}", _interval(pool["ua_ci"]),
                         *(stats.format_interval(pool[k], pool[f"{k}_ci"]) if f"{k}_ci" in pool else ""
                           for k in metrics[1:]), pool["n"]]
    return out


def _interval(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary(cfg: Config, results: dict[str, dict]) -> str:
    """The cross-validation's ``fold_table`` under a line naming the objective and each fold's test speakers."""
    speakers = "; ".join(f"{k}: {', '.join(r['test_speakers'])}" for k, r in results.items())
    return (f"cross-validation of {cfg.objective} over {len(results)} folds: test metrics per fold, then their "
            f"mean ± sd (test speakers {speakers})\n{fold_table(results).to_string()}\n")


def write_summary(cfg: Config, results: dict[str, dict]) -> None:
    """Print ``summary`` and write it to ``run_dir/cross_validation.txt`` (rank 0 only)."""
    if distributed.is_main():
        text = summary(cfg, results)
        print(text)
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run_dir) / CROSS_VALIDATION).write_text(text)
