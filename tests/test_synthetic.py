"""synthetic.py: the synthetic corpus's schema and splits, its determinism, its VAD following the class; and the
command line that prepares it with its baseline."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import check_schema, speakers_disjoint
from datasets import DatasetDict, Value

import synthetic


@pytest.fixture(scope="module")
def small_synthetic() -> DatasetDict:
    return synthetic.make_synthetic(n_speakers=5, per_class=2, seed=3)


def test_synthetic_schema_and_splits(small_synthetic):
    dsd = small_synthetic
    check_schema(dsd, "synthetic", {"gender": Value("string")})
    assert list(dsd) == ["train", "validation", "test"]
    assert {s: sorted(set(d["speaker"])) for s, d in dsd.items()} == {
        "train": ["spk00", "spk01", "spk02"], "validation": ["spk03"], "test": ["spk04"]}
    assert speakers_disjoint(dsd)
    for data in dsd.values():
        assert sorted(data["emotion"]) == sorted([0, 1, 2, 3] * 2 * len(set(data["speaker"])))
        for row in data:
            samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            assert rate == 16000 and samples.ndim == 1
            assert row["duration"] == pytest.approx(len(samples) / 16000)
            assert 2.0 <= row["duration"] <= 5.0
            assert np.abs(samples).max() > 0.01
            assert all(0.0 <= row[k] <= 1.0 for k in ("valence", "arousal", "dominance"))
            assert row["audio"]["path"] == row["id"] + ".wav"
    assert set(dsd["train"]["gender"]) == {"male", "female"}


def test_synthetic_is_deterministic_in_its_seed(small_synthetic):
    again = synthetic.make_synthetic(n_speakers=5, per_class=2, seed=3)
    other = synthetic.make_synthetic(n_speakers=5, per_class=2, seed=4)
    for split in ("train", "test"):
        assert again[split]["audio"] == small_synthetic[split]["audio"]
        assert again[split]["valence"] == small_synthetic[split]["valence"]
        assert all(a["bytes"] != b["bytes"] for a, b in zip(other[split]["audio"], small_synthetic[split]["audio"],
                                                            strict=True))


def test_synthetic_vad_follows_the_class():
    dsd = synthetic.make_synthetic(n_speakers=3, per_class=6, seed=0)
    data = dsd["train"].with_format("numpy")[:]
    arousal = {c: data["arousal"][data["emotion"] == c].mean() for c in range(4)}
    valence = {c: data["valence"][data["emotion"] == c].mean() for c in range(4)}
    assert arousal[3] > arousal[0] > arousal[2]  # angry > neutral > sad
    assert valence[1] > valence[0] > valence[3]  # happy > neutral > angry


def test_synthetic_splits_scale():
    assert synthetic.synthetic_splits(10) == ["train"] * 6 + ["validation"] * 2 + ["test"] * 2
    assert synthetic.synthetic_splits(3) == ["train", "validation", "test"]
    with pytest.raises(ValueError, match="at least 3 speakers"):
        synthetic.synthetic_splits(2)
