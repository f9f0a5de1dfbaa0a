"""Every run's model card: huggingface_hub parses it and it carries the metrics, intervals, protocol, labels,
recipe and calibration; checkpoint.py push stages the run (the ONNX export included) up to the network call."""

from __future__ import annotations

import dataclasses
import math

import datasets
import huggingface_hub
import pytest
from conftest import tiny_config

import card
import checkpoint
import train
from config import Config


@pytest.fixture(scope="module")
def run(synthetic_dir, tmp_path_factory):
    cfg = dataclasses.replace(tiny_config(synthetic_dir, tmp_path_factory.mktemp("card") / "run", epochs="1"),
                              seed=3)
    return cfg, train.fit(cfg)


def test_the_run_writes_a_card_that_the_hub_library_parses_with_its_metrics(run):
    cfg, result = run
    parsed = huggingface_hub.ModelCard.load(f"{cfg.run_dir}/README.md")
    meta = parsed.data.to_dict()
    assert meta["pipeline_tag"] == "audio-classification" and meta["datasets"] == ["synthetic"]
    assert meta["license"] == "other" and meta.get("base_model") is None  # random:tiny: no Hub model
    scores = {r.metric_type: r.metric_value for r in parsed.data.eval_results}
    test = result["test"]
    assert scores == {"recall": round(test["ua"], 4), "accuracy": round(test["wa"], 4),
                      "f1": round(test["macro_f1"], 4)}
    assert all(r.dataset_split == "test" for r in parsed.data.eval_results)
    low, high = test["ua_ci"]
    assert meta["test_intervals_95"]["ua"] == (None if math.isnan(low) else [round(low, 4), round(high, 4)])
    assert meta["seed"] == 3
    text = parsed.text
    for expected in ("| test | synthetic |", "`freeze`: `'top:1'`", "`seed`: `3`",
                     f"Temperature {test['temperature']:.3f}", f"{test['ece_before']:.3f} → {test['ece']:.3f}",
                     "Predictor.from_checkpoint", "angry"):
        assert expected in text, expected
    assert "`data`" not in text and "`run_dir`" not in text  # where the data and the run live is not the recipe


def test_licences_and_base_models_follow_the_corpora_and_the_encoder():
    assert card.base_model("../shared/whisper/tiny.en.pt") == "openai/whisper-tiny.en"
    assert card.base_model("/x/base.encoder.pt") == "openai/whisper-base" and card.base_model("small") == \
        "openai/whisper-small"
    assert card.base_model("random:tiny") is None and card.base_model("/x/mine.pt") is None
    features = datasets.Features({"emotion": datasets.ClassLabel(names=["neutral", "happy"]),
                                  "speaker": datasets.Value("string"), "corpus": datasets.Value("string")})

    def split(corpus: str) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"emotion": [0, 1], "speaker": ["a", "b"], "corpus": [corpus] * 2},
                                          features=features)
    metrics = {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5, "ua_ci": [0.1, 0.9], "speakers": 2}
    result = {"validation": metrics, "test": metrics}
    cfg = Config(data="data/x", whisper="../shared/whisper/tiny.en.pt", run_dir="runs/x")
    one = card.model_card(cfg, result, {s: split("ravdess") for s in ("train", "validation", "test")})
    assert one.data.license == "cc-by-nc-sa-4.0" and one.data.base_model == "openai/whisper-tiny.en"
    both = card.model_card(cfg, result, {"train": datasets.concatenate_datasets([split("ravdess"), split("emodb")]),
                                         "validation": split("ravdess"), "test": split("emodb")})
    assert both.data.license == "other" and "RAVDESS: CC BY-NC-SA 4.0" in both.text and "EmoDB" in both.text


def test_push_stages_the_run_and_fails_at_the_network_with_one_line(run, monkeypatch, capsys, tmp_path):
    cfg, _ = run
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert checkpoint.main(["push", cfg.run_dir, "someone/whisper-ser-test"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("checkpoint.py: error: could not upload") and "127.0.0.1:9" in err
    assert len(err.splitlines()) == 1
    exported = checkpoint.OnnxModel(f"{cfg.run_dir}/model.onnx")  # exported for the upload, with our metadata
    assert exported.config == checkpoint.load_model(f"{cfg.run_dir}/best.pt").config
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "best.pt").write_bytes(b"")
    assert checkpoint.main(["push", str(tmp_path / "half"), "someone/x"]) == 1
    assert "is not a finished run: it has no README.md, config.json" in capsys.readouterr().err
