"""evaluate.py: metrics by hand, predictions on windows as predict.py makes them, the class-balanced linear probe
and folding it into the heads (the classifier and the VAD head), the probe as a run of its own, the baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import random_model, tiny_config
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import audio
import checkpoint
import data
import evaluate
import predict
import train
from labels import VAD
from model import Runtime

CPU = Runtime(torch.device("cpu"))


def test_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 2, 2])
    p = np.array([0, 0, 1, 1, 2, 0])
    m = evaluate.classification_metrics(y, p, n_classes=7)
    assert m["wa"] == pytest.approx(4 / 6)
    assert m["ua"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)  # absent classes 3-6 are not averaged
    assert np.array(m["confusion"]).shape == (7, 7) and np.array(m["confusion"]).sum() == 6
    x = np.random.default_rng(0).normal(size=100)
    assert evaluate.ccc(x, x) == pytest.approx(1.0)
    assert evaluate.ccc(x, x + 1) < 0.7  # CCC, unlike Pearson, punishes a bias
    vad = np.stack([x, x, x], 1)
    vad[:10] = np.nan
    assert set(evaluate.vad_metrics(vad, vad)) == {"ccc_valence", "ccc_arousal", "ccc_dominance"}


def test_window_evaluation_scores_each_clip_as_predict_does(synthetic_dir):
    """Validation/test metrics describe the predictor that predict.py applies: the mean over the same windows."""
    ds = data.load_corpus(str(synthetic_dir), "test")
    net = random_model(labels=ds.features["emotion"].names, vad_head=True).eval()
    loader = data.make_loader(ds, data.LoaderOptions(batch_size=16, n_frames=100, num_workers=0, windows=True))
    pred = evaluate.predict_split(net, loader, CPU)
    assert pred["index"].tolist() == list(range(len(ds))) and (pred["windows"] > 1).all()  # clips of 2-5 s, 1 s windows
    predictor = predict.Predictor(net, device="cpu")
    for row in (0, len(ds) // 2, len(ds) - 1):
        p = predictor.predict(audio.decode_audio(ds[row]["audio"]["bytes"]), sample_rate=16000)
        assert pred["windows"][row] == len(p.windows)
        np.testing.assert_allclose(pred["probs"][row], [p.probabilities[n] for n in net.config.labels], atol=1e-4)
        np.testing.assert_allclose(pred["vad_pred"][row], [p.vad[n] for n in VAD], atol=1e-4)
        np.testing.assert_allclose(pred["embedding"][row], p.embedding, atol=1e-4)


def test_linear_probe_is_class_balanced_and_fitted_per_utterance():
    rng = np.random.default_rng(0)

    def arrays(n0: int, n1: int) -> dict[str, np.ndarray]:
        y = np.array([0] * n0 + [1] * n1)
        return {"embedding": rng.normal(size=(len(y), 8)) + 0.8 * y[:, None], "emotion": y,
                "vad": np.full((len(y), 3), np.nan), "window_embedding": np.zeros((1, 8))}  # windows: unused

    fit_on, score_on = arrays(36, 6), arrays(20, 20)
    metrics, probe = evaluate.linear_probe(fit_on, {"test": score_on}, n_classes=2)
    x, y = fit_on["embedding"], fit_on["emotion"]
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                   random_state=0)).fit(x, y)
    expected = evaluate.classification_metrics(score_on["emotion"], reference.predict(score_on["embedding"]), 2)
    assert metrics["test"] == expected and probe.regressor is None  # no VAD ratings: no regressor
    unbalanced = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    assert (unbalanced.predict(score_on["embedding"]) != probe.classifier.predict(score_on["embedding"])).any()


def test_a_non_finite_embedding_in_a_linear_probe_is_named_or_skipped(capsys):
    rng = np.random.default_rng(0)
    train_ = {"index": np.arange(10, 30), "embedding": rng.normal(size=(20, 4)), "emotion": np.arange(20) % 2,
              "vad": np.full((20, 3), np.nan)}
    train_["embedding"][[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"2 training clip\(s\) have a non-finite embedding \(rows \[13, 17\]"):
        evaluate.linear_probe(train_, {}, 2)
    _, probe = evaluate.linear_probe(train_, {}, 2, skip_nonfinite=True)
    assert "left out 2 training clip(s) with a non-finite embedding (rows [13, 17])" in capsys.readouterr().err
    assert probe.classifier.predict(train_["embedding"][:3]).shape == (3,)


@pytest.mark.parametrize("n_seen", [2, 3])
def test_fold_probe_makes_the_heads_predict_as_the_probe(n_seen):
    """The classifier classifies as the logistic regression does (classes it never saw get probability 0), and a
    probe VAD head rates as the ridge regression does, whatever the running statistics."""
    rng = np.random.default_rng(0)
    net = random_model(labels=["a", "b", "c", "d", "e"], vad_probe=True).eval()
    y = np.array([1, 3, 4][:n_seen] * 20)  # classes 0 and 2 (and 4) never seen
    x = rng.normal(2.0, 3.0, size=(len(y), net.config.dims.n_audio_state)).astype(np.float32)
    vad = rng.uniform(size=(len(y), 3))
    probe = evaluate.Probe(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y),
                           make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x, vad))
    net.norm.running_mean.normal_(0.0, 1.0)  # statistics as training leaves them, not the probe's
    net.norm.running_var.uniform_(0.5, 4.0)
    evaluate.fold_probe(net, probe)
    with torch.no_grad():
        z = net.norm(torch.from_numpy(x))
        probs = torch.softmax(net.classifier(z), dim=-1).numpy()
        rated = net.vad(z).numpy()
    clf = probe.classifier
    np.testing.assert_allclose(probs[:, clf[-1].classes_], clf.predict_proba(x), atol=1e-4)
    assert (probs.argmax(1) == clf.predict(x)).all()
    np.testing.assert_allclose(rated, probe.regressor.predict(x), atol=1e-4)
    with pytest.raises(ValueError, match="VAD head is a probe, but the probe has no VAD regressor"):
        evaluate.fold_probe(net, evaluate.Probe(clf, None))


def test_the_probe_objective_scores_the_model_as_built_and_saves_its_probe(synthetic_dir, tmp_path):
    """``objective="probe"`` (the contrastive notebook's 'before' run): nothing trains, best.pt is written, its
    classifier is the probe and its VAD head the ridge probe whose CCC the run reports (the corpus has VAD)."""
    cfg = tiny_config(synthetic_dir, tmp_path / "probe", objective="probe")
    result = train.fit(cfg)
    net = checkpoint.load_model(tmp_path / "probe" / "best.pt", device="cpu")
    assert net.config.vad_head and net.config.vad_probe
    loader = data.make_loader(data.load_corpus(str(synthetic_dir), "test"),
                              data.LoaderOptions(batch_size=16, n_frames=100, num_workers=0))
    scored = evaluate.evaluate(net, {"test": loader}, ("test",), by_probe=False, runtime=CPU)
    heads = scored.metrics
    assert scored.probe is None
    assert heads["test"]["confusion"] == result["test"]["confusion"]
    np.testing.assert_equal(heads["test"]["ua_ci"], result["test"]["ua_ci"])  # deterministic (NaN: 1 speaker)
    rows = pd.read_csv(tmp_path / "probe" / evaluate.PREDICTIONS)  # what the run wrote: one row per utterance
    test_rows = rows[rows["split"] == "test"]
    assert len(test_rows) == result["test"]["n"] and set(test_rows["speaker"]) == set(loader.ds["speaker"])
    assert (test_rows["prediction"].tolist() == scored.rows["prediction"].tolist())
    for name in VAD:  # the checkpoint's VAD head is the probe that was scored, not an untrained head
        assert heads["test"][f"ccc_{name}"] == pytest.approx(result["test"][f"ccc_{name}"], abs=1e-4)
    assert result["history"] == [] and (tmp_path / "probe" / "metrics.jsonl").exists()


def test_baseline_is_the_probe_on_log_mel_statistics_scored_as_models_are(synthetic_dir):
    splits = {s: data.load_corpus(synthetic_dir, s) for s in ("train", "validation", "test")}
    result = evaluate.baseline(splits)
    assert set(result) == {"validation", "test"}
    for split, metrics in result.items():
        assert {"ua", "wa", "macro_f1", "n", "confusion", "ccc_valence"} <= set(metrics)
        assert metrics["n"] == len(splits[split]) == np.sum(metrics["confusion"])
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("ua", "wa", "macro_f1"))
    row = splits["test"][0]["audio"]["bytes"]
    mel = audio.log_mel(torch.from_numpy(audio.decode_audio(row))).numpy()
    np.testing.assert_allclose(evaluate.clip_statistics(row), np.concatenate([mel.mean(1), mel.std(1)]), atol=1e-6)
