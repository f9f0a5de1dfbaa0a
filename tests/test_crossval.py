"""crossval.py: one run per prepared fold (``train.py --folds``), their table, a fold's start from a
cross-validation's run folder, and mean ± sd."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_args

import crossval
import data
import evaluate
import synthetic
import train
from config import Config


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> list[str]:
    """Two prepared "folds": small synthetic corpora with different speakers."""
    out = tmp_path_factory.mktemp("folds")
    for seed in (1, 2):
        data.save(synthetic.make_synthetic(n_speakers=3, per_class=2, seed=seed), out / f"fold{seed}")
    return [str(out / "fold1"), str(out / "fold2")]


def test_train_py_folds_runs_every_fold_and_tabulates_them(folds, tmp_path, capsys):
    run_dir = tmp_path / "cv"
    args = tiny_args(tmp_path / "unused", run_dir, epochs="1")
    assert train.main([*args[: args.index("--data")], *args[args.index("--data") + 2:], "--folds", *folds,
                       "--no-windows"]) == 0
    out = capsys.readouterr().out
    for name, fold in zip(("fold1", "fold2"), folds, strict=True):
        result = json.loads((run_dir / name / "results.json").read_text())
        assert json.loads((run_dir / name / "config.json").read_text())["data"] == fold
        assert f"{result['test']['ua']:.3f}" in out
    text = (run_dir / crossval.CROSS_VALIDATION).read_text()
    assert text.strip() in out
    assert "over 2 folds" in text and "(test speakers fold1: spk02; fold2: spk02)" in text
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["fold1", "fold2", "mean", "pooled"]
    assert "±" in lines[-2] and lines[-1].count("[") == 3  # the pooled UA, WA and macro-F1 with their intervals


def test_each_fold_starts_from_its_own_run_of_an_earlier_cross_validation(folds, tmp_path):
    (tmp_path / "contrastive").mkdir()
    before = Config(folds=tuple(folds), run_dir=str(tmp_path / "ft"), init=str(tmp_path / "contrastive"))
    with pytest.raises(FileNotFoundError, match="holds no fold1/best.pt"):
        crossval.fold_configs(before)
    for name in ("fold1", "fold2"):
        (tmp_path / "contrastive" / name).mkdir(parents=True)
        (tmp_path / "contrastive" / name / "best.pt").touch()
    runs = crossval.fold_configs(Config(folds=tuple(folds), run_dir=str(tmp_path / "ft"),
                                        init=str(tmp_path / "contrastive")))
    assert {k: (r.data, r.run_dir, r.init, r.folds) for k, r in runs.items()} == {
        k: (fold, str(tmp_path / "ft" / k), str(tmp_path / "contrastive" / k / "best.pt"), None)
        for k, fold in zip(("fold1", "fold2"), folds, strict=True)}
    with pytest.raises(ValueError, match="needs folds"):
        crossval.fold_configs(Config())
    with pytest.raises(ValueError, match=r"the folder name\(s\) \['fold1'\] repeat"):
        crossval.fold_configs(Config(folds=(folds[0], f"{tmp_path}/other/fold1")))


def test_fold_table_mean_sd_and_pooled_interval():
    """Per fold its UA and interval, the mean ± sd over folds, and every fold's rows scored together (pooled)."""
    rng = np.random.default_rng(0)
    results = {}
    for k in (1, 2):
        y = rng.choice(["angry", "happy", "sad"], 60)
        rows = pd.DataFrame({"split": "test", "id": [f"{k}_{i}" for i in range(60)], "emotion": y,
                             "speaker": [f"spk{i % 3}" for i in range(60)],  # the same names in both folds
                             "prediction": np.where(rng.random(60) < 0.5 + 0.2 * k, y, "sad")})
        labels = ["angry", "happy", "sad"]
        metrics = evaluate.classification_metrics(rows["emotion"].map(labels.index).to_numpy(),
                                                  rows["prediction"].map(labels.index).to_numpy(), 3,
                                                  rows["speaker"].to_numpy())
        results[f"fold{k}"] = {"test": metrics, "predictions": rows}
    table = crossval.fold_table(results)
    uas = [results[f"fold{k}"]["test"]["ua"] for k in (1, 2)]
    assert table.loc["fold1", "ua"] == f"{uas[0]:.3f}"
    assert table.loc["mean ± sd", "ua"] == crossval.mean_sd(uas) and table.loc["mean ± sd", "n"] == 120
    assert "confusion" not in table.columns
    pool = crossval.pooled(results)
    both = pd.concat([r["predictions"] for r in results.values()])
    assert pool["n"] == 120 and pool["speakers"] == 6  # fold1/spk0 and fold2/spk0 are different speakers
    assert pool["ua"] == pytest.approx(evaluate.classification_metrics(
        both["emotion"].map(["angry", "happy", "sad"].index).to_numpy(),
        both["prediction"].map(["angry", "happy", "sad"].index).to_numpy(), 3)["ua"])
    assert pool["ua_ci"][0] - 1e-9 <= pool["ua"] <= pool["ua_ci"][1] + 1e-9
    assert table.loc["pooled", "ua"] == f"{pool['ua']:.3f}" and table.loc["pooled", "n"] == 120
    assert crossval.mean_sd([0.6, 0.7, 0.8]) == "0.700 ± 0.100" and crossval.mean_sd([0.5]) == "0.500"
