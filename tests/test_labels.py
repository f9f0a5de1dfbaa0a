"""labels.py: the shared label space, the corpora's maps, VAD scaling and the 4-class reduction."""

from __future__ import annotations

import math

import pytest

import labels
from labels import CORPORA, EMOTIONS, FOUR_CLASS


def test_emotions_are_the_shared_first_seven():
    assert EMOTIONS == ["neutral", "happy", "sad", "angry", "fearful", "surprised", "disgusted"]
    assert FOUR_CLASS == EMOTIONS[:4]


def test_msp_podcast_map():
    assert labels.label_map("msp_podcast") == {
        "neutral": 0, "happy": 1, "sad": 2, "angry": 3, "fearful": 4, "surprised": 5, "disgusted": 6,
        "contempt": 7, "no_agreement": 8, "other": 9,
    }


def test_iemocap_map():
    assert labels.label_map("iemocap") == {
        "neutral": 0, "happy": 1, "sad": 2, "angry": 3, "fearful": 4, "surprised": 5, "disgusted": 6,
        "excited": 7, "frustrated": 8, "no_agreement": 9, "other": 10,
    }


def test_ravdess_map():
    assert labels.label_map("ravdess") == {
        "neutral": 0, "happy": 1, "sad": 2, "angry": 3, "fearful": 4, "surprised": 5, "disgusted": 6,
        "calm": 7,
    }


def test_synthetic_map_is_the_seven():
    assert labels.label_names("synthetic") == EMOTIONS


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_label_names_follow_map_order_and_every_code_maps(corpus):
    names = labels.label_names(corpus)
    assert names == sorted(labels.label_map(corpus), key=labels.label_map(corpus).get)
    assert names[:7] == EMOTIONS
    assert names[7:] == sorted(names[7:])
    assert set(CORPORA[corpus].codes.values()) <= set(names)


def test_raw_codes():
    assert CORPORA["ravdess"].codes["02"] == "calm"
    assert CORPORA["ravdess"].codes["08"] == "surprised"
    assert CORPORA["iemocap"].codes["exc"] == "excited"
    assert CORPORA["msp_podcast"].codes["X"] == "no_agreement"
    assert CORPORA["msp_podcast"].vad_scale == (1.0, 7.0)
    assert CORPORA["iemocap"].vad_scale == (1.0, 5.0)
    assert CORPORA["ravdess"].vad_scale is None


def test_unknown_corpus():
    with pytest.raises(KeyError, match="unknown corpus 'crema'"):
        labels.label_map("crema")


def test_extra_clashing_with_emotions():
    with pytest.raises(ValueError, match="happy"):
        labels.emotion_index(["happy", "calm"])


@pytest.mark.parametrize(("score", "expected"), [(1.0, 0.0), (4.0, 0.5), (7.0, 1.0), (2.5, 0.25)])
def test_normalize_vad_msp_scale(score, expected):
    assert labels.normalize_vad(score, 1.0, 7.0) == pytest.approx((score - 1) / 6) == pytest.approx(expected)


@pytest.mark.parametrize(("score", "expected"), [(1.0, 0.0), (2.5, 0.375), (5.0, 1.0)])
def test_normalize_vad_iemocap_scale(score, expected):
    assert labels.normalize_vad(score, 1.0, 5.0) == pytest.approx(expected)


def test_normalize_vad_nan_stays_nan():
    assert math.isnan(labels.normalize_vad(math.nan, 1.0, 5.0))


@pytest.mark.parametrize(("score", "scale"), [(0.5, (1.0, 7.0)), (7.25, (1.0, 7.0)), (5.5, (1.0, 5.0))])
def test_normalize_vad_outside_scale_names_value_and_scale(score, scale):
    with pytest.raises(ValueError) as err:
        labels.normalize_vad(score, *scale)
    assert str(score) in str(err.value)
    assert f"[{scale[0]}, {scale[1]}]" in str(err.value)


@pytest.mark.parametrize(("name", "index"), [("neutral", 0), ("happy", 1), ("excited", 1), ("sad", 2), ("angry", 3)])
def test_to_four_class(name, index):
    assert labels.to_four_class(name) == index


@pytest.mark.parametrize("name", ["frustrated", "calm", "fearful", "surprised", "disgusted", "contempt", "other",
                                  "no_agreement"])
def test_to_four_class_others_are_none(name):
    assert labels.to_four_class(name) is None


def test_merge_label_names():
    merged = labels.merge_label_names([labels.label_names("iemocap"), labels.label_names("ravdess"),
                                       labels.label_names("msp_podcast")])
    assert merged == EMOTIONS + ["calm", "contempt", "excited", "frustrated", "no_agreement", "other"]
    # Every corpus's shared emotions keep their index in the merged space.
    assert merged.index("angry") == labels.label_map("ravdess")["angry"] == 3


def test_merge_label_names_of_one_corpus_is_itself():
    assert labels.merge_label_names([labels.label_names("msp_podcast")]) == labels.label_names("msp_podcast")


def test_merge_label_names_rejects_lists_off_convention():
    with pytest.raises(ValueError, match="do not start with the shared EMOTIONS"):
        labels.merge_label_names([["happy", "neutral"]])
