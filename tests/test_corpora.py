"""prepare.py's EmoDB, SAVEE, TESS and CREMA-D: replicas of their published layouts (and their quirks), the
real EmoDB where EMODB_DIR points at it, speaker-independent folds, and the errors a user meets."""

from __future__ import annotations

import collections
import io

import pytest
import soundfile as sf
import torch
from conftest import check_schema, speakers_disjoint, write_wav
from datasets import Value, load_from_disk

import prepare
import splits
from data import LoaderOptions, load_corpus, make_loader
from prepare import BadInputError

EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")


def splits_of(dsd) -> dict[str, list[str]]:
    return {split: sorted(set(rows["speaker"])) for split, rows in dsd.items()}


# --------------------------------------------------------------------------- EmoDB


def make_emodb(root, speakers=EMODB_SPEAKERS, letters="WLEAFTN"):
    for i, speaker in enumerate(speakers):
        for j, letter in enumerate(letters):
            write_wav(root / "wav" / f"{speaker}a0{j % 7 + 1}{letter}a.wav", 0.3, 16000, seed=i)
    return root


def test_emodb_replica_default_is_fold_1(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    dsd = prepare.prepare_emodb(root)
    check_schema(dsd, "emodb", {"text": Value("string"), "gender": Value("string")})
    # fold 1: the first male (03) and female (08) test, the second pair (10, 09) validates, six train
    assert splits_of(dsd) == {"train": ["11", "12", "13", "14", "15", "16"], "validation": ["09", "10"],
                              "test": ["03", "08"]}
    row = dsd["test"][0]
    assert (row["id"], row["text"], row["gender"]) == ("03a01Wa", "a01", "male")
    names = dsd["train"].features["emotion"].names
    assert names[7:] == ["boredom"] and names[dsd["test"]["emotion"][dsd["test"]["id"].index("03a02La")]] == "boredom"
    assert splits_of(prepare.prepare_emodb(root / "wav")) == splits_of(dsd)  # the wav folder itself works too


def test_emodb_folds_each_test_one_male_and_one_female():
    males, females = set(splits.EMODB_MALES), set(splits.EMODB_FEMALES)
    tested = []
    for k in range(1, 6):
        test, validation = splits.fold_speakers("emodb", k)
        assert len(set(test) & males) == len(set(test) & females) == 1
        assert len(set(validation) & males) == len(set(validation) & females) == 1 and not set(test) & set(validation)
        assert validation == splits.fold_speakers("emodb", k % 5 + 1)[0]  # the next fold's test pair
        tested += test
    assert sorted(tested) == sorted(EMODB_SPEAKERS)  # every speaker tested once
    assert splits.fold_speakers("emodb", 5) == (("15", "16"), ("03", "08"))
    with pytest.raises(ValueError, match=r"emodb fold must be one of \[1, 2, 3, 4, 5\], got 6"):
        splits.fold_speakers("emodb", 6)


def test_emodb_bad_names_and_letters_are_reported(tmp_path):
    root = make_emodb(tmp_path / "emodb", speakers=EMODB_SPEAKERS[:4])
    write_wav(root / "wav" / "03a01Xa.wav", 0.3, 16000)
    write_wav(root / "wav" / "notemodb.wav", 0.3, 16000)
    write_wav(root / "wav" / "99a01Wa.wav", 0.3, 16000)
    with pytest.raises(BadInputError) as err:
        prepare.prepare_emodb(root, test_speakers=["03"], validation_speakers=["08"])
    reasons = dict(err.value.problems)
    assert "unknown emotion letter 'X'" in reasons[str(root / "wav" / "03a01Xa.wav")]
    assert "does not parse as SSTTTEv" in reasons[str(root / "wav" / "notemodb.wav")]
    assert "speaker 99 is not one of EmoDB's ten" in reasons[str(root / "wav" / "99a01Wa.wav")]
    dsd = prepare.prepare_emodb(root, test_speakers=[3], validation_speakers=["08"], skip_bad=True)
    assert splits_of(dsd) == {"train": ["09", "10"], "validation": ["08"], "test": ["03"]}  # 3 is speaker 03
    with pytest.raises(FileNotFoundError, match=r"is not a EmoDB directory: expected wav/SSTTTEv.wav files"):
        prepare.prepare_emodb(tmp_path)


def test_real_emodb(emodb_dir, tmp_path, run_cli):
    """The published corpus: 535 rows, its label counts, the five folds as specified, speaker-disjoint."""
    dsd = prepare.prepare_emodb(emodb_dir)
    names = dsd["train"].features["emotion"].names
    counts = collections.Counter(names[e] for rows in dsd.values() for e in rows["emotion"])
    assert counts == {"angry": 127, "boredom": 81, "neutral": 79, "happy": 71, "fearful": 69, "sad": 62,
                      "disgusted": 46}
    assert splits_of(dsd) == {"train": ["11", "12", "13", "14", "15", "16"], "validation": ["09", "10"],
                              "test": ["03", "08"]}
    done = run_cli("emodb", str(emodb_dir), str(tmp_path / "folds"), "--all-folds")
    assert done.returncode == 0, done.stderr
    for k in range(1, 6):
        fold = {s: load_corpus(tmp_path / "folds" / f"fold_{k}", s) for s in ("train", "validation", "test")}
        test, validation = splits.fold_speakers("emodb", k)
        assert splits_of(fold)["test"] == sorted(test) and splits_of(fold)["validation"] == sorted(validation)
        assert speakers_disjoint(fold) and sum(len(r) for r in fold.values()) == 535
        assert len(splits_of(fold)["train"]) == 6


# --------------------------------------------------------------------------- SAVEE

SAVEE_CODES = ("a01", "d01", "f01", "h01", "n01", "n02", "sa01", "su01")


def test_savee_both_layouts_give_the_same_corpus(tmp_path):
    original, flat = tmp_path / "original", tmp_path / "flat"
    for i, speaker in enumerate(("DC", "JE", "JK", "KL")):
        for code in SAVEE_CODES:
            write_wav(original / "AudioData" / speaker / f"{code}.wav", 0.3, 44100, seed=i)
            write_wav(flat / "ALL" / f"{speaker}_{code}.wav", 0.3, 44100, seed=i)
    a, b = prepare.prepare_savee(original), prepare.prepare_savee(flat)
    check_schema(a, "savee", {})
    for split in a:
        assert a[split]["id"] == b[split]["id"] and a[split]["emotion"] == b[split]["emotion"]
    assert splits_of(a) == {"train": ["DC", "JK"], "validation": ["KL"], "test": ["JE"]}  # fold 1
    names = a["test"].features["emotion"].names
    labelled = dict(zip(a["test"]["id"], (names[e] for e in a["test"]["emotion"]), strict=True))
    assert labelled == {"JE_a01": "angry", "JE_d01": "disgusted", "JE_f01": "fearful", "JE_h01": "happy",
                        "JE_n01": "neutral", "JE_n02": "neutral", "JE_sa01": "sad", "JE_su01": "surprised"}
    assert splits_of(prepare.prepare_savee(flat, fold=4)) == {"train": ["DC", "KL"], "validation": ["JE"],
                                                              "test": ["JK"]}
    write_wav(original / "JE_a01.wav", 0.3, 44100)  # the flat layout too, under the original's root
    with pytest.raises(ValueError, match=r"duplicate id 'JE_a01'"):
        prepare.prepare_savee(original)
    with pytest.raises(FileNotFoundError, match=r"expected AudioData/<speaker>/<code><nn>.wav .* or flat"):
        prepare.prepare_savee(tmp_path / "nothing")


# --------------------------------------------------------------------------- TESS


def make_tess(root):
    """TESS's layout with the quirks of real copies: AIFF data under a .wav name, a float WAV, a 96 kHz file, the
    misnamed ``OA_bite_neutral.wav``, folder names in mixed case."""
    write_wav(root / "OAF_angry" / "OAF_back_angry.wav", 0.5, 24414)
    write_wav(root / "OAF_Fear" / "OAF_back_fear.wav", 0.5, 24414, subtype="FLOAT")
    write_wav(root / "OAF_neutral" / "OA_bite_neutral.wav", 0.5, 24414)
    write_wav(root / "YAF_pleasant_surprised" / "YAF_back_ps.wav", 0.5, 24414, fmt="AIFF")
    write_wav(root / "YAF_sad" / "YAF_back_sad.wav", 0.5, 96000)
    write_wav(root / "YAF_disgust" / "YAF_bite_disgust.wav", 0.5, 24414)
    return root


def test_tess_quirks_and_every_clip_loads_through_both_loaders(tmp_path, capsys):
    root = make_tess(tmp_path / "TESS Toronto emotional speech set data")
    dsd = prepare.prepare_tess(tmp_path)  # found below the folder a download unpacks into
    check_schema(dsd, "tess", {"word": Value("string")})
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [0, 0, 6]  # a cross-corpus test set
    test = dsd["test"]
    names = test.features["emotion"].names
    rows = {r["id"]: r for r in test}
    assert {i: (names[r["emotion"]], r["speaker"], r["word"]) for i, r in rows.items()} == {
        "OAF_back_angry": ("angry", "OAF", "back"), "OAF_back_fear": ("fearful", "OAF", "back"),
        "OA_bite_neutral": ("neutral", "OAF", "bite"), "YAF_back_ps": ("surprised", "YAF", "back"),
        "YAF_back_sad": ("sad", "YAF", "back"), "YAF_bite_disgust": ("disgusted", "YAF", "bite")}
    err = capsys.readouterr().err
    assert "tess: 1 file(s) hold audio in a container DALI cannot decode" in err and "YAF_back_ps.wav" in err
    aiff = rows["YAF_back_ps"]["audio"]
    assert aiff["path"].endswith("YAF_back_ps.flac") and sf.info(io.BytesIO(aiff["bytes"])).format == "FLAC"
    float_wav = sf.info(io.BytesIO(rows["OAF_back_fear"]["audio"]["bytes"]))
    assert (float_wav.format, float_wav.subtype) == ("WAV", "FLOAT")  # DALI reads it: kept as it is
    assert sf.info(io.BytesIO(rows["YAF_back_sad"]["audio"]["bytes"])).samplerate == 96000
    mels = {}
    for backend in ("dali", "torch"):
        options = LoaderOptions(batch_size=6, n_frames=100, backend=backend, num_workers=0)
        batches = list(make_loader(test, options))
        mels[backend] = torch.cat([b["mel"] for b in batches])
        assert len(mels[backend]) == 6 and torch.isfinite(mels[backend]).all()
    assert (mels["dali"] - mels["torch"]).abs().max() < 0.05  # the same features from either loader
    with pytest.raises(ValueError, match=r"the train split would be empty"):
        prepare.prepare_tess(root, test_speakers=["OAF"], validation_speakers=["YAF"])
    with pytest.raises(ValueError, match=r"tess has no folds"):
        splits.fold_speakers("tess", 1)


# --------------------------------------------------------------------------- CREMA-D


def make_crema_d(root, actors=range(1001, 1021)):
    """Twenty actors (odd ids male here), two clips each, and their VideoDemographics.csv."""
    lines = ["ActorID,Age,Sex,Race,Ethnicity"]
    for i, actor in enumerate(actors):
        lines.append(f"{actor},{20 + i},{'Male' if actor % 2 else 'Female'},Caucasian,Not Hispanic")
        for emotion, level in (("ANG", "HI"), ("NEU", "XX")):
            write_wav(root / "AudioWAV" / f"{actor}_DFA_{emotion}_{level}.wav", 0.3, 16000, seed=i)
    (root / "VideoDemographics.csv").write_text("\n".join(lines) + "\n")
    return root


def test_crema_d_folds_balance_the_sexes(tmp_path, run_cli):
    root = make_crema_d(tmp_path / "CREMA-D")
    dsd = prepare.prepare_crema_d(root)
    extra = {c: Value("string") for c in ("sentence", "level", "gender", "age")}
    check_schema(dsd, "crema_d", extra)
    row = dsd["test"][0]
    assert row["sentence"] == "DFA" and row["level"] in ("high", "unspecified") and row["age"].isdigit()
    females = [str(a) for a in range(1002, 1021, 2)]
    males = [str(a) for a in range(1001, 1021, 2)]
    # fold 1: every fifth actor of each sex from the first tests, from the second validates
    assert splits_of(dsd)["test"] == sorted(females[0::5] + males[0::5])
    assert splits_of(dsd)["validation"] == sorted(females[1::5] + males[1::5])
    done = run_cli("crema-d", str(root), str(tmp_path / "folds"), "--all-folds")
    assert done.returncode == 0, done.stderr
    tested = []
    for k in range(1, 6):
        fold = {s: load_corpus(tmp_path / "folds" / f"fold_{k}", s) for s in ("train", "validation", "test")}
        assert speakers_disjoint(fold)
        for rows in fold.values():
            assert set(rows["gender"]) == {"male", "female"}  # both sexes in every split
        tested += splits_of(fold)["test"]
    assert sorted(tested) == sorted(females + males)


def test_crema_d_bad_input(tmp_path):
    root = make_crema_d(tmp_path / "CREMA-D", actors=range(1001, 1011))
    write_wav(root / "AudioWAV" / "1099_DFA_ANG_XX.wav", 0.3, 16000)  # not in the demographics
    write_wav(root / "AudioWAV" / "1001_DFA_BOR_XX.wav", 0.3, 16000)
    with pytest.raises(BadInputError) as err:
        prepare.prepare_crema_d(root)
    reasons = dict(err.value.problems)
    assert "actor 1099 is not in VideoDemographics.csv" in reasons[str(root / "AudioWAV" / "1099_DFA_ANG_XX.wav")]
    assert "unknown emotion code 'BOR'" in reasons[str(root / "AudioWAV" / "1001_DFA_BOR_XX.wav")]
    (root / "VideoDemographics.csv").write_text("ActorID,Age\n1001,20\n")
    with pytest.raises(BadInputError, match=r"missing column\(s\) \['Sex'\]"):
        prepare.prepare_crema_d(root)
    (root / "VideoDemographics.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"VideoDemographics.csv: CREMA-D's table of actors"):
        prepare.prepare_crema_d(root)
    with pytest.raises(FileNotFoundError, match=r"is not a CREMA-D directory: expected AudioWAV/ACTOR_SENTENCE"):
        prepare.prepare_crema_d(root / "AudioWAV")


# --------------------------------------------------------------------------- the command line


def test_speaker_lists_for_any_corpus_and_their_errors(tmp_path, run_cli):
    root = make_emodb(tmp_path / "emodb")
    out = tmp_path / "out"
    done = run_cli("emodb", str(root), str(out), "--test-speakers", "03,16", "--validation-speakers", "08")
    assert done.returncode == 0, done.stderr
    assert splits_of(load_from_disk(str(out)))["test"] == ["03", "16"]
    done = run_cli("emodb", str(root), str(out), "--test-speakers", "03,77")
    assert done.returncode == 1 and "unknown speaker(s) ['77'] in the test/validation speakers" in done.stderr
    done = run_cli("emodb", str(root), str(out), "--test-speakers", ",".join(EMODB_SPEAKERS[:9]),
                   "--validation-speakers", EMODB_SPEAKERS[9])
    assert done.returncode == 1 and "the train split would be empty" in done.stderr
    done = run_cli("emodb", str(root), str(out), "--fold", "2", "--test-speakers", "03")
    assert done.returncode == 1 and "either a fold or test/validation speakers" in done.stderr
    done = run_cli("tess", str(root), str(out), "--fold", "1")
    assert done.returncode == 2 and "--fold is for ravdess, emodb, savee, crema-d" in done.stderr
    done = run_cli("savee", str(root), str(out))
    assert done.returncode == 1 and "is not a SAVEE directory: expected AudioData/" in done.stderr
