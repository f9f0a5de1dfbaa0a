"""evaluate.py across corpora: a checkpoint scored on another corpus over the classes both share (the function
and the command line), and two runs compared on the same rows (``--compare``)."""

from __future__ import annotations

import itertools
import json
import shutil

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_model
from test_corpora import make_emodb

import checkpoint
import data
import evaluate
import prepare
import stats
from config import Config
from labels import FOUR_CLASS, label_names
from model import Runtime

CPU = Runtime(torch.device("cpu"))
OPTIONS = Config(n_frames=100, batch_size=16, num_workers=0).loader_options(train=False)


@pytest.fixture(scope="module")
def emodb(tmp_path_factory):
    """An EmoDB replica, prepared (ten speakers x seven emotions, boredom among them)."""
    out = tmp_path_factory.mktemp("emodb")
    data.save(prepare.prepare_emodb(make_emodb(out / "raw")), out / "emodb")
    return out / "emodb"


def test_a_ravdess_model_on_emodb_scores_the_shared_classes_only(emodb, capsys):
    net = random_model(labels=label_names("ravdess"), vad_head=False).eval()  # ... calm
    ds = evaluate.corpus_rows(str(emodb), "all")
    metrics, rows = evaluate.score_corpus(net, ds, OPTIONS, CPU, name="emodb")
    assert metrics["classes"] == ["neutral", "happy", "sad", "angry", "fearful", "disgusted"]  # no calm, boredom
    assert metrics["left_out"] == {"boredom": 10} and "emodb: left out 10 of 70 rows" in capsys.readouterr().err
    assert metrics["n"] == len(rows) == 60 and metrics["speakers"] == 10
    assert set(rows["prediction"]) <= set(metrics["classes"]) and set(rows["emotion"]) == set(metrics["classes"])
    assert metrics["ua_ci"][0] - 1e-9 <= metrics["ua"] <= metrics["ua_ci"][1] + 1e-9
    # the prediction is the most probable shared class: what the model's calm and surprised scores would win
    probs = evaluate.predict_split(net, data.make_loader(ds.select(np.flatnonzero(
        np.asarray(ds["emotion"]) != 7)), OPTIONS), CPU)["probs"]
    keep = [net.config.labels.index(c) for c in metrics["classes"]]
    assert rows["prediction"].tolist() == [metrics["classes"][i] for i in probs[:, keep].argmax(1)]
    four, _ = evaluate.score_corpus(net, ds, OPTIONS, CPU, four_class=True)
    assert four["classes"] == FOUR_CLASS and four["n"] == 40
    with pytest.raises(ValueError, match=r"shares 1 class\(es\) \['neutral'\] with the checkpoint .*at least two"):
        evaluate.score_corpus(net, ds, OPTIONS, CPU, trained=["neutral", "calm"])


def test_on_real_emodb_the_interval_is_wider_for_fewer_speakers(emodb_dir):
    """A model with the RAVDESS label space whose classifier is a probe fitted on four EmoDB speakers (boredom left
    out), scored on the six others, then on every two of them: the interval holds the estimate and widens."""
    net = random_model(labels=label_names("ravdess"), vad_head=False).eval()
    dsd = prepare.prepare_emodb(emodb_dir)
    fit_on = datasets.concatenate_datasets([dsd["validation"], dsd["test"]])
    fit_on = fit_on.select(np.flatnonzero(np.asarray(fit_on["emotion"]) != 7))  # boredom: RAVDESS's 7 is calm
    _, probe = evaluate.linear_probe(evaluate.predict_split(net, data.make_loader(fit_on, OPTIONS), CPU), {}, 8)
    evaluate.fold_probe(net, probe)
    metrics, rows = evaluate.score_corpus(net, dsd["train"], OPTIONS, CPU)
    assert metrics["ua_ci"][0] - 1e-9 <= metrics["ua"] <= metrics["ua_ci"][1] + 1e-9
    assert metrics["speakers"] == 6 and "boredom" not in metrics["classes"] and metrics["left_out"] == {"boredom": 54}
    names = metrics["classes"]
    y, pred = (rows[c].map(names.index).to_numpy() for c in ("emotion", "prediction"))
    pairs = []  # every two of the six speakers: on average a wider interval
    for pair in itertools.combinations(sorted(set(rows["speaker"])), 2):
        keep = rows["speaker"].isin(pair).to_numpy()
        ci = stats.speaker_intervals(y[keep], pred[keep], rows["speaker"][keep].to_numpy(), len(names))["ua"]
        pairs.append(ci[1] - ci[0])
    assert np.mean(pairs) > metrics["ua_ci"][1] - metrics["ua_ci"][0] > 0


def test_evaluate_py_writes_a_table_and_json_keyed_by_corpus(emodb, tmp_path, capsys):
    net = random_model(labels=label_names("ravdess"), vad_head=False, n_frames=100)
    checkpoint.save_model(net, tmp_path / "best.pt", extra={"trained": label_names("ravdess")})
    out = tmp_path / "scores.json"
    assert evaluate.main([str(tmp_path / "best.pt"), str(emodb), "--split", "test", "--json", str(out),
                          "--device", "cpu", "--batch-size", "16"]) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())["emodb"]
    assert {"ua", "ua_ci", "wa", "macro_f1", "n", "classes", "left_out", "confusion"} <= set(result)
    assert result["n"] == 12 and result["speakers"] == 2  # fold 1's test speakers, 03 and 08, without boredom
    assert f"{result['ua']:.3f} [{result['ua_ci'][0]:.3f}, {result['ua_ci'][1]:.3f}]" in printed.out
    checkpoint.save_model(net, tmp_path / "two.pt", extra={"trained": ["neutral", "boredom", "calm"]})
    assert evaluate.main([str(tmp_path / "two.pt"), str(emodb), "--device", "cpu"]) == 1
    assert "evaluate.py: error: emodb shares 1 class(es)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # a usage error: no corpus
        evaluate.main([str(tmp_path / "best.pt")])
    assert "give CHECKPOINT DATA [DATA ...], or --compare RUN_A RUN_B" in capsys.readouterr().err


def test_evaluate_py_says_what_abstaining_costs(emodb, tmp_path, capsys):
    """--min-confidence: at each threshold the rows whose top probability reaches it, and their UA; 0+ keeps every
    row (the UA of all), above every row's top probability none."""
    net = random_model(labels=label_names("ravdess"), vad_head=False, n_frames=100)
    checkpoint.save_model(net, tmp_path / "best.pt", extra={"trained": label_names("ravdess")})
    out = tmp_path / "scores.json"
    assert evaluate.main([str(tmp_path / "best.pt"), str(emodb), "--json", str(out), "--device", "cpu",
                          "--min-confidence", "0.001", "0.3", "0.999"]) == 0
    result = json.loads(out.read_text())["emodb"]
    every, middle, none = result["abstaining"]
    assert every == {"min_confidence": 0.001, "coverage": 1.0, "n": result["n"], "ua": pytest.approx(result["ua"]),
                     "wa": pytest.approx(result["wa"])}
    assert none["coverage"] == 0.0 and none["n"] == 0 and np.isnan(none["ua"])
    assert 0 <= middle["coverage"] <= 1 and "abstaining below a top probability" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):
        evaluate.main([str(tmp_path / "best.pt"), str(emodb), "--min-confidence", "1.5"])
    assert "--min-confidence 1.5: each P must be between 0 and 1" in capsys.readouterr().err


def predictions(rows: dict[str, list]) -> pd.DataFrame:
    return pd.DataFrame({"split": "test", **rows})


def test_compare_runs_per_fold_and_pooled(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for fold in ("fold1", "fold2"):
        y = rng.choice(["angry", "happy", "sad"], 90)
        speakers = [f"spk{i % 3}" for i in range(90)]
        a = np.where(rng.random(90) < 0.8, y, "sad")
        b = np.where(rng.random(90) < 0.5, y, "sad")
        for run, pred in (("a", a), ("b", b)):
            (tmp_path / run / fold).mkdir(parents=True)
            rows = predictions({"id": [f"{fold}_{i}" for i in range(90)], "speaker": speakers, "emotion": y,
                                "prediction": pred})
            rows.sample(frac=1, random_state=1).to_csv(tmp_path / run / fold / evaluate.PREDICTIONS, index=False)
    table = evaluate.compare_runs(tmp_path / "a", tmp_path / "b")
    assert list(table.index) == ["fold1", "fold2", "pooled"] and table.loc["pooled", "speakers"] == 6
    for fold in ("fold1", "fold2", "pooled"):
        r = table.loc[fold]
        assert r["difference"] == pytest.approx(r["ua_a"] - r["ua_b"])
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]
    ua = []
    for run in ("a", "b"):
        rows = pd.read_csv(tmp_path / run / "fold1" / evaluate.PREDICTIONS)
        names = ["angry", "happy", "sad"]
        cm = stats.speaker_confusions(rows["emotion"].map(names.index), rows["prediction"].map(names.index),
                                      rows["speaker"], 3)
        ua.append(stats.confusion_metrics(cm.sum(0))["ua"])
    assert table.loc["fold1", "difference"] == pytest.approx(ua[0] - ua[1])
    (tmp_path / "c" / "fold2").mkdir(parents=True)  # one fold of a's, as bench/folds.py --folds 2 leaves it
    shutil.copy(tmp_path / "a" / "fold2" / evaluate.PREDICTIONS, tmp_path / "c" / "fold2")
    with pytest.raises(ValueError, match=r"hold different folds: \['fold2'\] and \['fold1', 'fold2'\]"):
        evaluate.compare_runs(tmp_path / "c", tmp_path / "b")
    for run in ("a", "c"):
        one = evaluate.compare_runs(tmp_path / run, tmp_path / "b", folds=["fold2"])
        assert list(one.index) == ["fold2"] and one.loc["fold2", "difference"] == table.loc["fold2", "difference"]
    with pytest.raises(ValueError, match=r"c holds no run of \['fold1'\]"):
        evaluate.compare_runs(tmp_path / "c", tmp_path / "b", folds=["fold1", "fold2"])
    assert evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "pooled" in capsys.readouterr().out
    other = pd.read_csv(tmp_path / "b" / "fold2" / evaluate.PREDICTIONS).iloc[1:]
    other.to_csv(tmp_path / "b" / "fold2" / evaluate.PREDICTIONS, index=False)
    with pytest.raises(ValueError, match=r"fold2: .* were not scored on the same test rows \(1 ids in one only\): "
                                         r"compare runs on the same data: b's rows are among a's, --on-b"):
        evaluate.compare_runs(tmp_path / "a", tmp_path / "b")
    on_b = evaluate.compare_runs(tmp_path / "a", tmp_path / "b", on_b=True)
    assert on_b.loc["fold2", "n"] == 89 and on_b.loc["pooled", "n"] == 179  # a's rows that b holds
    assert evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--on-b"]) == 0
    assert "(b) on the rows of b" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2"):
        evaluate.main([str(tmp_path / "best.pt"), str(tmp_path), "--on-b"])
    assert "--on-b goes with --compare RUN_A RUN_B" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\(1 ids in one only\): compare runs on the same data$"):
        evaluate.compare_runs(tmp_path / "b", tmp_path / "a")  # a holds more rows than b: no hint
    with pytest.raises(FileNotFoundError, match=r"no predictions.csv"):
        evaluate.compare_runs(tmp_path, tmp_path / "b")
