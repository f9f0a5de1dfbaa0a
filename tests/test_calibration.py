"""calibration.py: temperature scaling never changes a prediction and finds a known temperature; ECE, NLL and
Brier on hand-made cases; a run fits the temperature on validation, keeps it in best.pt, and every way of scoring
the checkpoint applies it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

import calibration
import checkpoint
import data
import evaluate
import predict
import train
from model import Runtime


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_temperature_never_changes_a_prediction_and_is_softmax_of_logits_over_t():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (500, 7))
    probs = softmax(z)
    for t in (0.2, 0.7, 1.0, 2.5, 40.0):
        scaled = calibration.calibrated(probs, t)
        assert (scaled.argmax(1) == probs.argmax(1)).all()
        np.testing.assert_allclose(scaled, softmax(z / t), atol=1e-9)
        np.testing.assert_allclose(scaled.sum(1), 1.0)
    mean = probs.reshape(100, 5, 7).mean(1)  # rows of five windows: their mean probabilities
    assert (calibration.calibrated(mean, 3.0).argmax(1) == mean.argmax(1)).all()
    zero = np.array([[0.0, 0.25, 0.75]])  # a class the head never predicts stays at 0
    assert calibration.calibrated(zero, 2.0)[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_fit_temperature_finds_the_temperature_the_labels_were_drawn_at():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (20000, 5))
    for true_t in (0.5, 2.0):
        p = softmax(z / true_t)
        y = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)  # y ~ softmax(z / T)
        assert calibration.fit_temperature(softmax(z), y) == pytest.approx(true_t, rel=0.05)
    with pytest.raises(ValueError, match="validation split is empty"):
        calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))


def test_ece_nll_and_brier_of_hand_made_rows():
    probs = np.array([[0.8, 0.2]] * 4)  # confidence 0.8, right half the time
    y = np.array([0, 0, 1, 1])
    m = calibration.calibration_metrics(probs, y)
    assert m["ece"] == pytest.approx(0.3)
    assert m["nll"] == pytest.approx(-(2 * np.log(0.8) + 2 * np.log(0.2)) / 4)
    assert m["brier"] == pytest.approx((2 * (0.2**2 + 0.2**2) + 2 * (0.8**2 + 0.8**2)) / 4)
    perfect = calibration.calibration_metrics(np.eye(3), np.arange(3))
    assert perfect == pytest.approx({"ece": 0.0, "nll": 0.0, "brier": 0.0}, abs=1e-9)
    r = calibration.reliability(np.array([[0.5, 0.5], [0.95, 0.05], [1.0, 0.0], [0.3, 0.7]]), np.array([0, 0, 1, 1]))
    assert r["count"].sum() == 4 and len(r["edges"]) == calibration.BINS + 1
    assert r["count"][-1] == 2 and r["accuracy"][-1] == pytest.approx(0.5)  # 0.95 and 1.0: the top bin, (14/15, 1]
    assert np.isnan(r["accuracy"][0]) and r["count"][0] == 0


def test_a_run_fits_the_temperature_on_validation_and_everything_applies_it(synthetic_dir, tmp_path):
    cfg = tiny_config(synthetic_dir, tmp_path / "run", epochs="1")
    result = train.fit(cfg)
    val, test = result["validation"], result["test"]
    net = checkpoint.load_model(tmp_path / "run" / "best.pt", device="cpu")
    assert net.config.temperature == val["temperature"] == test["temperature"] != 1.0
    assert val["nll"] <= val["nll_before"] + 1e-9  # fitted there
    assert json.loads((tmp_path / "run" / "results.json").read_text())["test"]["ece"] == test["ece"]

    loader = data.make_loader(data.load_corpus(str(synthetic_dir), "test"),
                              cfg.loader_options(train=False, n_mels=net.config.n_mels))
    pred = evaluate.predict_split(net, loader, Runtime(torch.device("cpu")))
    assert (pred["probs"].argmax(1) == pred["uncalibrated"].argmax(1)).all()
    np.testing.assert_allclose(pred["probs"], calibration.calibrated(pred["uncalibrated"], net.config.temperature))
    assert calibration.calibration_metrics(pred["probs"], pred["emotion"])["ece"] == pytest.approx(test["ece"])

    clip = np.random.default_rng(0).normal(0, 0.1, 40000).astype(np.float32)  # 2.5 s: several 1 s windows
    calibrated = predict.Predictor(net, "cpu").predict(clip, 16000)
    net.config = dataclasses.replace(net.config, temperature=1.0)
    plain = predict.Predictor(net, "cpu").predict(clip, 16000)
    assert calibrated.label == plain.label and len(plain.windows) > 1
    scaled = calibration.calibrated(np.array([list(plain.probabilities.values())]), val["temperature"])[0]
    np.testing.assert_allclose(list(calibrated.probabilities.values()), scaled, atol=1e-6)
    assert [w.label for w in calibrated.windows] == [w.label for w in plain.windows]

    off = train.fit(dataclasses.replace(cfg, calibrate=False, run_dir=str(tmp_path / "off")))
    assert off["test"]["temperature"] == 1.0 and off["test"]["ece"] == off["test"]["ece_before"]
    assert checkpoint.load_model(tmp_path / "off" / "best.pt", device="cpu").config.temperature == 1.0


def test_a_probe_gets_its_temperature_too(synthetic_dir, tmp_path):
    """The frozen encoder's linear probe (folded into the classifier head, as a contrastive run's is) is calibrated
    the same way: its best.pt keeps the temperature fitted on validation."""
    result = train.fit(tiny_config(synthetic_dir, tmp_path / "probe", objective="probe"))
    net = checkpoint.load_model(tmp_path / "probe" / "best.pt", device="cpu")
    assert net.config.temperature == result["validation"]["temperature"] != 1.0
    assert result["validation"]["nll"] <= result["validation"]["nll_before"] + 1e-9
