"""prepare.py on small replicas of the corpora's published layouts, bad input, the command line."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import check_schema, speakers_disjoint, write_wav
from datasets import DatasetDict, Value, load_from_disk

import prepare
import splits
import synthetic
from audio import decode_audio
from data import LoaderOptions, load_corpus, make_loader
from labels import label_names
from prepare import BadInputError


def check_audio_is_original(dsd: DatasetDict, root: Path) -> None:
    for data in dsd.values():
        for row in data:
            assert row["audio"]["bytes"] == (root / row["audio"]["path"]).read_bytes()
            assert Path(row["audio"]["path"]).stem == row["id"]


# --------------------------------------------------------------------------- RAVDESS

RAVDESS_FILES = {  # name -> seconds
    "03-01-01-01-01-01-01.wav": 0.50, "03-01-05-02-02-01-01.wav": 0.60, "03-02-02-01-01-02-02.wav": 0.70,
    "03-01-08-02-01-01-19.wav": 0.40, "03-01-03-01-02-02-20.wav": 0.45, "03-01-07-01-01-01-21.wav": 0.55,
    "03-02-04-02-02-02-24.wav": 0.65,
}


def make_ravdess(root: Path) -> Path:
    for i, (name, seconds) in enumerate(RAVDESS_FILES.items()):
        write_wav(root / f"Actor_{name[-6:-4]}" / name, seconds, 48000, seed=i)
    return root


def test_ravdess(tmp_path):
    root = make_ravdess(tmp_path / "RAVDESS")
    extra = {"intensity": Value("string"), "statement": Value("string"), "vocal_channel": Value("string")}
    dsd = prepare.prepare_ravdess(root, vocal_channel="both")
    check_schema(dsd, "ravdess", extra)
    assert list(dsd) == ["train", "validation", "test"]
    assert {s: sorted(d["speaker"]) for s, d in dsd.items()} == {
        "train": ["Actor_01", "Actor_01", "Actor_02"], "validation": ["Actor_19", "Actor_20"],
        "test": ["Actor_21", "Actor_24"]}
    rows = {row["id"]: row for data in dsd.values() for row in data}
    assert set(rows) == {name[:-4] for name in RAVDESS_FILES}
    names = label_names("ravdess")
    expected = {"01": "neutral", "05": "angry", "02": "calm", "08": "surprised", "03": "happy", "07": "disgusted",
                "04": "sad"}
    for uid, row in rows.items():
        assert names[row["emotion"]] == expected[uid[6:8]]
        assert row["duration"] == pytest.approx(RAVDESS_FILES[uid + ".wav"], abs=1e-4)
        assert all(math.isnan(row[k]) for k in ("valence", "arousal", "dominance"))
    assert rows["03-02-02-01-01-02-02"]["emotion"] == 7  # calm, RAVDESS's extra label
    assert rows["03-01-05-02-02-01-01"] | {"audio": None} == {
        "id": "03-01-05-02-02-01-01", "audio": None, "emotion": 3, "valence": pytest.approx(math.nan, nan_ok=True),
        "arousal": pytest.approx(math.nan, nan_ok=True), "dominance": pytest.approx(math.nan, nan_ok=True),
        "speaker": "Actor_01", "corpus": "ravdess", "duration": pytest.approx(0.6), "intensity": "strong",
        "statement": "Dogs are sitting by the door", "vocal_channel": "speech"}
    assert rows["03-02-02-01-01-02-02"]["vocal_channel"] == "song"
    check_audio_is_original(dsd, root)
    assert sf.info(io.BytesIO(rows["03-01-01-01-01-01-01"]["audio"]["bytes"])).samplerate == 48000


def test_ravdess_published_zip_layout(tmp_path):
    root = tmp_path / "RAVDESS"
    write_wav(root / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-01-01-01-01-01.wav", 0.3, 48000)
    write_wav(root / "Audio_Song_Actors_01-24" / "Actor_22" / "03-02-03-01-01-01-22.wav", 0.3, 48000)
    dsd = prepare.prepare_ravdess(root, vocal_channel="both")
    assert dsd["train"]["id"] == ["03-01-01-01-01-01-01"]
    assert dsd["test"]["speaker"] == ["Actor_22"]
    assert len(dsd["validation"]) == 0
    check_audio_is_original(dsd, root)


def test_ravdess_split_by_actor():
    assert [splits.ravdess_split(a) for a in (1, 18, 19, 20, 21, 24)] == [
        "train", "train", "validation", "validation", "test", "test"]


def test_ravdess_any_speaker_independent_split(tmp_path):
    root = make_ravdess(tmp_path / "RAVDESS")  # actors 01, 02, 19, 20, 21, 24
    dsd = prepare.prepare_ravdess(root, test_speakers=[1, 24], validation_speakers=["Actor_19"], vocal_channel="both")
    assert {s: sorted(set(d["speaker"])) for s, d in dsd.items()} == {
        "train": ["Actor_02", "Actor_20", "Actor_21"], "validation": ["Actor_19"], "test": ["Actor_01", "Actor_24"]}
    with pytest.raises(ValueError, match=r"unknown speaker\(s\) \['Actor_13'\].*speakers are \['Actor_01', "):
        prepare.prepare_ravdess(root, test_speakers=[1], validation_speakers=[13], vocal_channel="both")
    with pytest.raises(ValueError, match=r"the train split would be empty.*speakers found \['Actor_01', "
                                         r"'Actor_19', 'Actor_20', 'Actor_21'\]"):  # speech: Actor_02 sings only
        prepare.prepare_ravdess(root, test_speakers=[1], validation_speakers=[19, 20, 21])
    with pytest.raises(ValueError, match=r"speakers \['Actor_02'\] are in both"):
        prepare.prepare_ravdess(root, test_speakers=[1, 2], validation_speakers=[2], vocal_channel="both")


def test_ravdess_is_speech_unless_asked(tmp_path, capsys):
    root = make_ravdess(tmp_path / "RAVDESS")  # 5 speech clips, 2 song clips
    channels = {}
    for channel in prepare.VOCAL_CHANNELS:
        dsd = prepare.prepare_ravdess(root, **({} if channel == "speech" else {"vocal_channel": channel}))
        channels[channel] = sorted(v for d in dsd.values() for v in d["vocal_channel"])
    assert channels == {"speech": ["speech"] * 5, "song": ["song"] * 2, "both": ["song"] * 2 + ["speech"] * 5}
    err = capsys.readouterr().err
    assert "left out 2 song clips (vocal_channel='speech')" in err and "left out 5 speech clips" in err
    with pytest.raises(ValueError, match="vocal_channel must be one of"):
        prepare.prepare_ravdess(root, vocal_channel="singing")


def test_ravdess_unpacked_twice_is_refused_naming_both_files(tmp_path):
    root = make_ravdess(tmp_path / "RAVDESS")
    copy = root / "Audio_Speech_Actors_01-24" / "Actor_01" / "03-01-01-01-01-01-01.wav"
    write_wav(copy, 0.5, 48000)
    with pytest.raises(ValueError, match=r"duplicate id '03-01-01-01-01-01-01' in the train split: .*"
                                         r"Actor_01/03-01-01-01-01-01-01.wav and .*Audio_Speech_Actors_01-24"):
        prepare.prepare_ravdess(root)


def test_ravdess_emobox_folds():
    actors = set(range(1, 25))
    tests = [splits.emobox_fold(k)[0] for k in range(1, 7)]
    assert tests == [(1, 11, 20, 21), (4, 10, 12, 14), (8, 9, 19, 23), (3, 5, 7, 24), (2, 15, 16, 18),
                     (6, 13, 17, 22)]
    assert sorted(a for t in tests for a in t) == sorted(actors)  # every actor tested once
    for k in range(1, 7):
        test, validation = splits.emobox_fold(k)
        train = actors - set(test) - set(validation)
        assert len(validation) == 2 and {a % 2 for a in validation} == {0, 1}  # one male, one female
        assert not set(validation) & set(test) and len(train) == 18
        assert splits.fold_speakers("ravdess", k) == (tuple(f"Actor_{a:02d}" for a in test),
                                                       tuple(f"Actor_{a:02d}" for a in validation))
    assert len({splits.emobox_fold(k)[1] for k in range(1, 7)}) == 6
    with pytest.raises(ValueError, match="fold must be one of"):
        splits.emobox_fold(7)


def test_ravdess_fold_prepares_its_actors(tmp_path, run_cli):
    root = make_ravdess(tmp_path / "RAVDESS")  # actors 01, 02 (song only), 19, 20, 21, 24 (song only)
    out = tmp_path / "fold1"  # test 1, 11, 20, 21; validation 2, 3
    done = run_cli("ravdess", str(root), str(out), "--fold", "1")
    assert done.returncode == 1 and "the validation split would be empty" in done.stderr  # speech: none of 2, 3
    done = run_cli("ravdess", str(root), str(out), "--fold", "1", "--vocal-channel", "both")
    assert done.returncode == 0, done.stderr
    dsd = load_from_disk(str(out))
    assert {s: sorted(set(d["speaker"])) for s, d in dsd.items()} == {
        "train": ["Actor_19", "Actor_24"], "validation": ["Actor_02"], "test": ["Actor_01", "Actor_20", "Actor_21"]}
    done = run_cli("ravdess", str(root), str(out), "--fold", "1", "--test-actors", "5")
    assert done.returncode == 1 and "either a fold or test/validation speakers" in done.stderr


def test_real_ravdess_speech(ravdess_dir, run_cli, tmp_path):
    """The published RAVDESS files as a user brings them: every actor's 60 speech clips, the stereo ones
    downmixed, and the speaker-independent split of bench/folds.py's first fold."""
    out = tmp_path / "ravdess"
    done = run_cli("ravdess", str(ravdess_dir), str(out), "--test-actors", "1,2,3", "--validation-actors", "4,5")
    assert done.returncode == 0, done.stderr
    dsd = load_from_disk(str(out))
    actors = sorted({int(s[-2:]) for d in dsd.values() for s in d["speaker"]})
    assert {s: len(d) for s, d in dsd.items()} == {"train": 60 * (len(actors) - 5), "validation": 120, "test": 180}
    assert {s: sorted({int(a[-2:]) for a in d["speaker"]}) for s, d in dsd.items()} == {
        "train": actors[5:], "validation": [4, 5], "test": [1, 2, 3]}
    assert set(dsd["train"]["vocal_channel"]) == {"speech"} and speakers_disjoint(dsd)
    stereo = [row for d in dsd.values() for row in d if sf.info(io.BytesIO(row["audio"]["bytes"])).channels == 2]
    assert stereo, "the published speech has stereo files (README: three among actors 01-12)"
    for row in stereo:
        audio = decode_audio(row["audio"]["bytes"], name=row["id"])
        assert audio.ndim == 1 and len(audio) == pytest.approx(16000 * row["duration"], abs=2)
    # pooling sees no padding: each window's frames count only what holds the clip (a few clips are under 3 s)
    ds = load_corpus(out, "train")
    batches = list(make_loader(ds, LoaderOptions(batch_size=64, windows=True, backend="torch", num_workers=0)))
    frames, index = torch.cat([b["frames"] for b in batches]), torch.cat([b["index"] for b in batches])
    duration = np.asarray(ds["duration"])[index.numpy()]
    assert (frames.numpy() == np.minimum(300, np.ceil(np.round(duration * 16000) / 160))).all()


# --------------------------------------------------------------------------- IEMOCAP

IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# session -> {utterance: (code, [V, A, D])}
IEMOCAP_LABELS = {
    1: {"Ses01F_impro01_F000": ("neu", "2.5000, 2.5000, 2.5000"),
        "Ses01F_impro01_M003": ("exc", "4.0000, 3.5000, 3.0000")},
    2: {"Ses02M_script01_1_F002": ("fru", "2.0000, 3.0000, 4.0000"),
        "Ses02M_script01_1_M010": ("ang", "1.0000, 5.0000, 4.5000")},
    3: {"Ses03F_impro02_F001": ("sad", "1.5000, 1.0000, 2.0000"),
        "Ses03F_impro02_M000": ("xxx", "3.0000, 3.0000, 3.0000")},
}


def iemocap_label_file(root: Path, session: int) -> Path:
    dialog = next(iter(IEMOCAP_LABELS[session])).rsplit("_", 1)[0]
    return root / f"Session{session}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"


def make_iemocap(root: Path) -> Path:
    for session, utts in IEMOCAP_LABELS.items():
        lines = [IEMOCAP_HEADER]
        for i, (utt, (code, vad)) in enumerate(utts.items()):
            dialog = utt.rsplit("_", 1)[0]
            write_wav(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav", 0.3 + 0.1 * i, 16000)
            lines.append(f"[{i + 1.5:.4f} - {i + 2.25:.4f}]\t{utt}\t{code}\t[{vad}]\n")
            lines.append("C-E2:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n")
        label_file = iemocap_label_file(root, session)
        label_file.parent.mkdir(parents=True)
        label_file.write_text("".join(lines))
    return root


def test_iemocap(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP")
    dsd = prepare.prepare_iemocap(root, test_session=3)
    check_schema(dsd, "iemocap", {"session": Value("int32")})
    assert {s: sorted(d["session"]) for s, d in dsd.items()} == {"train": [1, 1, 2], "validation": [2],
                                                                 "test": [3, 3]}
    assert {s: sorted(d["speaker"]) for s, d in dsd.items()} == {
        "train": ["Ses01F", "Ses01M", "Ses02M"], "validation": ["Ses02F"], "test": ["Ses03F", "Ses03M"]}
    rows = {row["id"]: row for data in dsd.values() for row in data}
    assert set(rows) == {utt for utts in IEMOCAP_LABELS.values() for utt in utts}
    names = label_names("iemocap")
    assert [names[rows[u]["emotion"]] for u in ("Ses01F_impro01_M003", "Ses02M_script01_1_F002",
                                                "Ses03F_impro02_M000")] == ["excited", "frustrated", "no_agreement"]
    assert rows["Ses01F_impro01_M003"]["emotion"] == 7
    # V, A, D on 1-5 -> (s - 1) / 4, in the line's order valence, activation, dominance.
    row = rows["Ses02M_script01_1_M010"]
    assert (row["valence"], row["arousal"], row["dominance"]) == (0.0, 1.0, 0.875)
    assert rows["Ses01F_impro01_M003"]["valence"] == 0.75
    assert rows["Ses01F_impro01_M003"]["duration"] == pytest.approx(0.4)
    check_audio_is_original(dsd, root)
    assert speakers_disjoint(dsd)


def test_iemocap_leave_one_session_out(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP")
    for test_session, validation in ((1, "Ses03F"), (2, "Ses01M")):  # test 1: the session below is the last, 3
        dsd = prepare.prepare_iemocap(root, test_session=test_session)
        assert set(dsd["test"]["session"]) == {test_session}
        assert set(dsd["validation"]["speaker"]) == {validation}
        others = {1, 2, 3} - {test_session}
        assert set(dsd["train"]["session"]) | set(dsd["validation"]["session"]) == others  # the other sessions
        assert speakers_disjoint(dsd)
    assert [splits.iemocap_validation_speaker(s, [1, 2, 3, 4, 5]) for s in range(1, 6)] == [
        "Ses05F", "Ses01M", "Ses02F", "Ses03M", "Ses04F"]
    with pytest.raises(ValueError, match="test session 4 is not among the sessions found"):
        prepare.prepare_iemocap(root, test_session=4)


# --------------------------------------------------------------------------- MSP-Podcast

MSP_HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
MSP_ROWS = [
    "MSP-PODCAST_0001_0001.wav,N,4.0,4.0,4.0,10,Female,Train",
    "MSP-PODCAST_0001_0002.wav,C,5.5,2.5,6.0,10,Female,Train",
    "MSP-PODCAST_0002_0001.wav,A,7.0,1.0,6.4,11,Male,Train",
    "MSP-PODCAST_0003_0001.wav,H,5.0,6.2,4.0,12,Male,Development",
    "MSP-PODCAST_0004_0001.wav,X,3.0,4.0,3.6,13,Female,Test1",
    "MSP-PODCAST_0005_0001.wav,O,2.0,3.0,1.0,Unknown,Unknown,Test2",
]


def make_msp(root: Path, rows: list[str] = MSP_ROWS) -> Path:
    for i, row in enumerate(rows):
        write_wav(root / "Audios" / row.split(",")[0], 0.25 + 0.05 * i, 16000, seed=i)
    (root / "Labels").mkdir()
    (root / "Labels" / "labels_consensus.csv").write_text(MSP_HEADER + "\n".join(rows) + "\n")
    return root


def test_msp_podcast(tmp_path):
    root = make_msp(tmp_path / "MSP")
    dsd = prepare.prepare_msp_podcast(root)
    check_schema(dsd, "msp_podcast", {"gender": Value("string")})
    assert {s: d["id"] for s, d in dsd.items()} == {
        "train": ["MSP-PODCAST_0001_0001", "MSP-PODCAST_0001_0002", "MSP-PODCAST_0002_0001"],
        "validation": ["MSP-PODCAST_0003_0001"], "test": ["MSP-PODCAST_0004_0001"], "test2": ["MSP-PODCAST_0005_0001"]}
    rows = {row["id"]: row for data in dsd.values() for row in data}
    row = rows["MSP-PODCAST_0001_0002"]
    assert label_names("msp_podcast")[row["emotion"]] == "contempt" and row["emotion"] == 7
    # EmoVal -> valence, EmoAct -> arousal, EmoDom -> dominance, each (s - 1) / 6.
    assert (row["valence"], row["arousal"], row["dominance"]) == pytest.approx((0.25, 0.75, 5 / 6))
    assert isinstance(row["valence"], float)
    assert dsd["train"].with_format("numpy")[:]["valence"].dtype == np.float32
    assert [rows[f"MSP-PODCAST_000{i}_0001"]["emotion"] for i in (1, 2, 3, 4, 5)] == [0, 3, 1, 8, 9]
    assert (row["speaker"], row["gender"]) == ("10", "Female")
    assert rows["MSP-PODCAST_0005_0001"]["speaker"] == "Unknown"
    assert rows["MSP-PODCAST_0002_0001"]["duration"] == pytest.approx(0.35)
    check_audio_is_original(dsd, root)


def test_msp_podcast_missing_column(tmp_path):
    root = make_msp(tmp_path / "MSP")
    csv = root / "Labels" / "labels_consensus.csv"
    csv.write_text(csv.read_text().replace(",EmoDom", ""))
    with pytest.raises(BadInputError, match=r"missing column\(s\) \['EmoDom'\]"):
        prepare.prepare_msp_podcast(root)


# --------------------------------------------------------------------------- bad input


def corrupt(path: Path) -> None:
    path.write_bytes(b"this is not audio" * 20)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-2000])


def non_finite(path: Path) -> None:
    samples = np.full(800, 0.1, dtype=np.float32)
    samples[100] = np.inf
    sf.write(path, samples, 16000, subtype="FLOAT")


def iemocap_edit(session: int, old: str, new: str):
    def edit(root: Path) -> None:
        path = iemocap_label_file(root, session)
        path.write_text(path.read_text().replace(old, new))
    return edit


def msp_edit(old: str, new: str):
    def edit(root: Path) -> None:
        path = root / "Labels" / "labels_consensus.csv"
        path.write_text(path.read_text().replace(old, new))
    return edit


RAV = "Actor_01/03-01-05-02-02-01-01.wav"
IEM = "Session2/sentences/wav/Ses02M_script01_1/Ses02M_script01_1_F002.wav"
MSP = "Audios/MSP-PODCAST_0003_0001.wav"
BAD = {  # name -> (corpus, mutation of the replica, where (relative), reason)
    "not audio": ("ravdess", lambda r: corrupt(r / RAV), RAV, "not readable as audio"),
    "empty": ("ravdess", lambda r: (r / RAV).write_bytes(b""), RAV, "empty file"),
    "truncated": ("iemocap", lambda r: truncate(r / IEM), IEM, "truncated: data chunk declares"),
    "non-finite": ("msp_podcast", lambda r: non_finite(r / MSP), MSP, "non-finite samples"),
    "bad file name": ("ravdess", lambda r: write_wav(r / "Actor_03" / "03-01-05.wav", 0.2, 48000),
                      "Actor_03/03-01-05.wav", "does not parse"),
    "ravdess unknown code": ("ravdess", lambda r: write_wav(r / "Actor_02" / "03-01-09-01-01-01-02.wav", 0.2, 48000),
                             "Actor_02/03-01-09-01-01-01-02.wav", "unknown emotion code '09'"),
    "iemocap unknown code": ("iemocap", iemocap_edit(2, "\tfru\t", "\tboo\t"), "Session2/dialog/EmoEvaluation/"
                             "Ses02M_script01_1.txt:3", "unknown emotion code 'boo'"),
    "msp unknown code": ("msp_podcast", msp_edit(",H,", ",Z,"), "Labels/labels_consensus.csv:5",
                         "unknown emotion code 'Z'"),
    "iemocap vad": ("iemocap", iemocap_edit(1, "4.0000, 3.5000, 3.0000", "4.0000, 5.5000, 3.0000"),
                    "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt:7",
                    "VAD score 5.5 is outside the scale [1.0, 5.0]"),
    "msp vad": ("msp_podcast", msp_edit("7.0,1.0,6.4", "7.0,0.5,6.4"), "Labels/labels_consensus.csv:4",
                "VAD score 0.5 is outside the scale [1.0, 7.0]"),
    "msp vad not a number": ("msp_podcast", msp_edit("5.0,6.2,4.0", "5.0,high,4.0"), "Labels/labels_consensus.csv:5",
                             "VAD score 'high' is not a number"),
    "unparsable line": ("iemocap", iemocap_edit(3, "\tsad\t[1.5000, 1.0000, 2.0000]", "\tsad"),
                        "Session3/dialog/EmoEvaluation/Ses03F_impro02.txt:3", "label line does not parse"),
    "msp short row": ("msp_podcast", msp_edit("4.0,3.6,13,Female,Test1", "4.0"), "Labels/labels_consensus.csv:6",
                      "too few fields"),
    "iemocap audio without label": ("iemocap", lambda r: write_wav(r / IEM.replace("F002", "F099"), 0.2, 16000),
                                    IEM.replace("F002", "F099"), "no label for Ses02M_script01_1_F099"),
    "msp audio without label": ("msp_podcast", lambda r: write_wav(r / "Audios/MSP-PODCAST_0009_0001.wav", 0.2, 16000),
                                "Audios/MSP-PODCAST_0009_0001.wav", "no label in"),
    "iemocap label without audio": ("iemocap", lambda r: (r / IEM).unlink(),
                                    "Session2/dialog/EmoEvaluation/Ses02M_script01_1.txt:3",
                                    "no audio file Ses02M_script01_1_F002.wav"),
    "msp label without audio": ("msp_podcast", lambda r: (r / MSP).unlink(), "Labels/labels_consensus.csv:5",
                                "no audio file"),
}
MAKE = {"ravdess": make_ravdess, "iemocap": make_iemocap, "msp_podcast": make_msp}
PREPARE = {"ravdess": lambda root, **kw: prepare.prepare_ravdess(root, vocal_channel="both", **kw),
           "msp_podcast": prepare.prepare_msp_podcast,
           "iemocap": lambda root, **kw: prepare.prepare_iemocap(root, test_session=3, **kw)}
N_GOOD = {"ravdess": len(RAVDESS_FILES), "iemocap": 6, "msp_podcast": len(MSP_ROWS)}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_input_is_one_error_naming_it_and_skip_bad_keeps_the_rest(kind, tmp_path):
    corpus, mutate, where, reason = BAD[kind]
    root = MAKE[corpus](tmp_path / "raw")
    mutate(root)
    with pytest.raises(BadInputError) as err:
        PREPARE[corpus](root)
    assert len(err.value.problems) == 1
    assert err.value.problems[0][0] == str(root / where)
    assert reason in err.value.problems[0][1]
    assert f"{root / where}: " in str(err.value) and reason in str(err.value)

    report = tmp_path / "skipped.tsv"
    dsd = PREPARE[corpus](root, skip_bad=True, report=report)
    added = kind in ("bad file name", "ravdess unknown code", "iemocap audio without label", "msp audio without label")
    assert sum(len(d) for d in dsd.values()) == N_GOOD[corpus] - (not added)
    lines = report.read_text().splitlines()
    assert lines[0] == "where\treason" and len(lines) == 2
    assert lines[1].startswith(f"{root / where}\t") and reason in lines[1]


def test_all_bad_items_in_one_error(tmp_path):
    root = make_iemocap(tmp_path / "raw")
    corrupt(root / IEM)
    iemocap_edit(1, "\texc\t", "\tyay\t")(root)
    truncate(root / IEM.replace("Session2", "Session3").replace("Ses02M_script01_1", "Ses03F_impro02")
             .replace("F002", "M000"))
    with pytest.raises(BadInputError) as err:
        prepare.prepare_iemocap(root, test_session=3)
    assert len(err.value.problems) == 3
    message = str(err.value)
    assert message.startswith("3 bad input item(s)")
    for text in ("Ses02M_script01_1_F002.wav: not readable as audio",
                 "Ses01F_impro01.txt:7: unknown emotion code 'yay'", "Ses03F_impro02_M000.wav: truncated"):
        assert text in message
    dsd = prepare.prepare_iemocap(root, test_session=3, skip_bad=True)
    assert sorted(uid for data in dsd.values() for uid in data["id"]) == [
        "Ses01F_impro01_F000", "Ses02M_script01_1_M010", "Ses03F_impro02_F001"]


def test_measure():
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1600, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    assert prepare.measure(data) == 0.1
    with pytest.raises(ValueError, match="truncated: data chunk declares 3200 bytes, the file holds 3199"):
        prepare.measure(data[:-1])
    with pytest.raises(ValueError, match="truncated: no data chunk"):
        prepare.measure(data[:40])
    with pytest.raises(ValueError, match="no samples"):
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros(0, dtype=np.float32), 16000, format="WAV")
        prepare.measure(buffer.getvalue())


# --------------------------------------------------------------------------- command line



def test_cli_synthetic(tmp_path, run_cli):
    out = tmp_path / "synthetic"
    done = run_cli("synthetic", str(out), "--speakers", "3", "--per-class", "2", "--seed", "1")
    assert done.returncode == 0, done.stderr
    dsd = load_from_disk(str(out))
    assert {s: len(d) for s, d in dsd.items()} == {"train": 8, "validation": 8, "test": 8}
    assert dsd["test"]["audio"] == synthetic.make_synthetic(n_speakers=3, per_class=2, seed=1)["test"]["audio"]
    assert "train: 8 rows\nvalidation: 8 rows\ntest: 8 rows\n" in done.stdout
    assert "baseline" in done.stdout and "test: UA " in done.stdout


def test_cli_bad_input_and_skip_bad(tmp_path, run_cli):
    root = make_msp(tmp_path / "MSP")
    corrupt(root / MSP)
    out = tmp_path / "msp"
    done = run_cli("msp-podcast", str(root), str(out))
    assert done.returncode == 1
    assert f"{root / MSP}: not readable as audio" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()

    done = run_cli("msp-podcast", str(root), str(out), "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert {s: len(d) for s, d in load_from_disk(str(out)).items()} == {"train": 3, "validation": 0, "test": 1,
                                                                        "test2": 1}
    report = Path(f"{out}.skipped.tsv").read_text().splitlines()
    assert report[1].startswith(f"{root / MSP}\tnot readable as audio")
    assert "skipped 1 bad item(s)" in done.stderr


def test_cli_arguments(tmp_path, run_cli):
    done = run_cli("ravdess", str(tmp_path / "out"))
    assert done.returncode == 2 and "ravdess needs RAW_DIR OUT_DIR" in done.stderr
    done = run_cli("ravdess", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert done.returncode == 1 and "not a RAVDESS directory" in done.stderr


def test_cli_ravdess_actor_split(tmp_path, run_cli):
    root = make_ravdess(tmp_path / "RAVDESS")
    out = tmp_path / "fold"
    done = run_cli("ravdess", str(root), str(out), "--test-actors", "1,24", "--validation-actors", "19")
    assert done.returncode == 1 and "unknown speaker(s) ['Actor_24']" in done.stderr  # 24 only sings
    done = run_cli("ravdess", str(root), str(out), "--test-speakers", "Actor_01,21", "--validation-actors", "19")
    assert done.returncode == 0, done.stderr
    assert "train: 1 rows\nvalidation: 1 rows\ntest: 3 rows\n" in done.stdout  # the song clips of 02, 24 left out
    assert "ravdess: left out 2 song clips" in done.stderr
    done = run_cli("ravdess", str(root), str(out), "--test-actors", "1,x")
    assert done.returncode == 1 and "unknown speaker(s) ['x']" in done.stderr


def test_flac16k_stores_what_the_loader_would_decode(tmp_path, run_cli):
    """48 kHz stereo (a 12 kHz tone that must not alias) and 48 kHz mono files -> 16 kHz mono FLAC holding
    ``audio.decode_audio`` of the original to 24-bit precision; the loader's features agree."""
    root = make_ravdess(tmp_path / "RAVDESS")
    t = np.arange(48000) / 48000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 12000 * t)], axis=1)
    sf.write(next(root.glob("Actor_01/*.wav")), stereo, 48000, subtype="PCM_16")
    original = prepare.prepare_ravdess(root, test_speakers=(1, 21), validation_speakers=(19,))
    out = tmp_path / "flac"
    done = run_cli("ravdess", str(root), str(out), "--test-actors", "1,21", "--validation-actors", "19",
                   "--flac16k")
    assert done.returncode == 0, done.stderr
    converted = load_from_disk(str(out))
    for split in original:
        assert converted[split]["id"] == original[split]["id"]
        for a, b in zip(original[split], converted[split], strict=True):
            info = sf.info(io.BytesIO(b["audio"]["bytes"]))
            assert (info.format, info.samplerate, info.channels, info.subtype) == ("FLAC", 16000, 1, "PCM_24")
            assert Path(b["audio"]["path"]).name == f"{a['id']}.flac"
            reference = decode_audio(a["audio"]["bytes"])
            stored = sf.read(io.BytesIO(b["audio"]["bytes"]), dtype="float32")[0]
            assert len(stored) == len(reference) and np.abs(stored - reference).max() <= 1 / 2**23
        options = LoaderOptions(batch_size=4, n_frames=100, backend="torch", num_workers=0)
        mel = [torch.cat([x["mel"] for x in make_loader(ds[split], options)]) for ds in (original, converted)]
        # equal but at the end of each clip (the 3 frames over its last sample: resampling the file at once or
        # the loader's crop of it ends the filter's response differently)
        end = [round(100 * d) for d in original[split]["duration"]]
        for m0, m1, e in zip(*mel, end, strict=True):
            away = torch.cat([torch.arange(e - 2), torch.arange(min(e + 2, m0.shape[1]), m0.shape[1])])
            assert (m0[:, away] - m1[:, away]).abs().max() <= 1e-3


def test_all_folds_share_one_copy_of_the_audio(tmp_path, run_cli):
    """``--all-folds``: EmoBox's six RAVDESS folds (one clip per actor here) as row indices into one prepared
    copy of the corpus; each fold loads like a prepared corpus, with its actors in its splits."""
    root = tmp_path / "RAVDESS"
    for actor in range(1, 25):
        write_wav(root / f"Actor_{actor:02d}" / f"03-01-0{1 + actor % 8}-01-01-01-{actor:02d}.wav", 0.2, 48000)
    out = tmp_path / "folds"
    done = run_cli("ravdess", str(root), str(out), "--all-folds")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fold_1", "fold_2", "fold_3", "fold_4", "fold_5", "fold_6", "rows"]
    assert f"{out / 'fold_1'}: train 18 rows, validation 2 rows, test 4 rows" in done.stdout
    for k in range(1, 7):
        assert [p.name for p in (out / f"fold_{k}").iterdir()] == ["fold.json"]  # no audio of its own
        test, validation = splits.emobox_fold(k)
        for split, actors in (("test", test), ("validation", validation)):
            ds = load_corpus(out / f"fold_{k}", split)
            assert sorted(int(s[-2:]) for s in ds["speaker"]) == sorted(actors)
            assert all(row["audio"]["bytes"] for row in ds)
        train_ = load_corpus(out / f"fold_{k}", "train")
        assert len(train_) == 18 and not {int(s[-2:]) for s in train_["speaker"]} & {*test, *validation}
    iemocap = make_iemocap(tmp_path / "IEMOCAP")
    done = run_cli("iemocap", str(iemocap), str(tmp_path / "iem"), "--all-folds", "--test-session", "1")  # 3 here
    assert done.returncode == 0, done.stderr
    for n in (1, 2, 3):
        assert set(load_corpus(tmp_path / "iem" / f"test_session_{n}", "test")["session"]) == {n}
    done = run_cli("ravdess", str(root), str(out), "--all-folds", "--fold", "2")
    assert done.returncode == 2 and "--all-folds is for ravdess, emodb, savee, crema-d and iemocap" in done.stderr
