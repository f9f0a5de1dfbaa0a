"""Raw corpora -> Hugging Face ``DatasetDict`` in one schema (``data.schema``), with speaker-independent splits.

    python prepare.py ravdess     RAW_DIR OUT_DIR [--fold K | --all-folds | --test-speakers 1,2 --validation-speakers 3]
                                  [--vocal-channel speech|song|both] [--skip-bad] [...]
    python prepare.py emodb|savee|crema-d RAW_DIR OUT_DIR [--fold K | --all-folds | --test-speakers A,B ...]
    python prepare.py tess        RAW_DIR OUT_DIR      (every row in test: a cross-corpus test set)
    python prepare.py iemocap     RAW_DIR OUT_DIR [--test-session N] [--skip-bad] [--push-to-hub REPO_ID]
    python prepare.py msp-podcast RAW_DIR OUT_DIR [--skip-bad] [--push-to-hub REPO_ID]
    python prepare.py synthetic   OUT_DIR [--seed N] [--speakers N] [--per-class N] [--push-to-hub REPO_ID]
    (any corpus: --flac16k stores 16 kHz mono FLAC instead of the original files, for faster loading)

Every corpus gets the columns ``id``, ``audio`` (``Audio(decode=False)``: the original encoded bytes
and the path relative to the corpus root; re-encoded only by ``--flac16k``), ``emotion`` (``ClassLabel``
named by ``labels.label_names(corpus)``), ``valence``/``arousal``/``dominance`` (float32 in 0-1, NaN where the
corpus has none), ``speaker``, ``corpus``, ``duration`` (float32 seconds), plus its own columns.
Splits are speaker-disjoint; each ``prepare_*`` documents its own.

Every audio file is decoded once (soundfile) to measure its duration. Bad input is collected over the
whole corpus and raised as one ``BadInputError`` listing every item; with ``skip_bad`` the good rows
are kept and the bad ones are reported (``OUT_DIR.skipped.tsv`` from the command line).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import re
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets
from tqdm import tqdm

import cli
import data
import evaluate
import splits
import synthetic
from audio import container, to_flac16k
from data import AUDIO, AUDIO_STORAGE, SPLITS, save
from labels import CORPORA, label_map, label_names, normalize_vad


class BadInputError(ValueError):
    """Bad items of a corpus: ``problems`` lists (where, reason), where = a path or ``label_file:line``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {where}: {reason}" for where, reason in problems)
        super().__init__(f"{len(problems)} bad input item(s) (skip_bad / --skip-bad leaves them out and reports "
                         f"them):\n{lines}")


DALI_CONTAINERS = ("wav", "flac", "ogg")  # audio.container values that DALI's decoder reads


@dataclass
class _Item:
    """One utterance to be: its audio file, split and every column but ``audio`` and ``duration``."""

    path: Path
    name: str  # the audio cell's path: relative to the corpus root
    split: str
    row: dict
    duration: float = math.nan
    digest: str = ""
    convert: bool = False  # stored as 16 kHz FLAC: a container DALI cannot decode (``DALI_CONTAINERS``)


def _features(corpus: str, extra: dict[str, Value]) -> Features:
    """``data.schema`` of ``corpus`` as its rows are written (audio as ``data.AUDIO_STORAGE``)."""
    return data.schema(label_names(corpus), extra, written=True)


def _wav_truncation(encoded: bytes) -> str | None:
    """Why a RIFF/WAVE file is truncated (its data chunk holds fewer bytes than declared), else None.

    libsndfile silently shortens such files, so they are checked here.
    """
    if encoded[:4] != b"RIFF" or encoded[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(encoded):
        chunk, size = encoded[pos:pos + 4], int.from_bytes(encoded[pos + 4:pos + 8], "little")
        if chunk == b"data":
            held = len(encoded) - pos - 8
            return f"truncated: data chunk declares {size} bytes, the file holds {held}" if held < size else None
        pos += 8 + size + (size & 1)
    return "truncated: no data chunk"


def measure(encoded: bytes) -> float:
    """Duration in seconds of an encoded audio file, decoding all of it.

    Raises ValueError saying why when the file is empty, truncated, not audio, silent of samples,
    or holds non-finite samples.
    """
    if not encoded:
        raise ValueError("empty file")
    truncated = _wav_truncation(encoded)
    if truncated:
        raise ValueError(truncated)
    try:
        samples, rate = sf.read(io.BytesIO(encoded), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"not readable as audio ({err})") from None
    if len(samples) == 0:
        raise ValueError("no samples")
    if not np.isfinite(samples).all():
        raise ValueError("non-finite samples")
    return len(samples) / rate


def _rows(items: list[_Item]) -> Iterator[dict]:
    for item in items:
        encoded, name = item.path.read_bytes(), item.name
        if item.convert:
            encoded, name = to_flac16k(encoded, str(item.path)), str(Path(name).with_suffix(".flac"))
        yield {**item.row, "audio": {"bytes": encoded, "path": name}, "duration": item.duration}


def _build(items: list[_Item], problems: list[tuple[str, str]], features: Features, *, desc: str,
           skip_bad: bool, report: str | Path | None) -> DatasetDict:
    """Decode every item once, then raise every problem at once or skip them; rows are streamed to arrow.

    The dataset's fingerprint (its cache key) hashes every row and every file's bytes.
    """
    seen: dict[tuple[str, str], Path] = {}
    for item in items:
        first = seen.setdefault((item.split, item.row["id"]), item.path)
        if first != item.path:
            raise ValueError(f"duplicate id {item.row['id']!r} in the {item.split} split: {first} and {item.path} "
                             "(is the corpus unpacked twice under its root?)")
    good = []
    for item in tqdm(items, desc=desc, unit="file"):
        encoded = item.path.read_bytes()
        try:
            item.duration = measure(encoded)
        except ValueError as err:
            problems.append((str(item.path), str(err)))
            continue
        item.digest = hashlib.blake2b(encoded, digest_size=16).hexdigest()
        item.convert = container(encoded) not in DALI_CONTAINERS
        good.append(item)
    if problems and not skip_bad:
        raise BadInputError(problems)
    if problems:
        _report_skipped(problems, report)
    converted = [item.name for item in good if item.convert]
    if converted:
        print(f"{desc}: {len(converted)} file(s) hold audio in a container DALI cannot decode (not WAV, FLAC or OGG "
              f"data, whatever the name: {', '.join(converted[:5])}{', ...' if len(converted) > 5 else ''}): "
              "stored as 16 kHz mono FLAC", file=sys.stderr)
    by_split: dict[str, list[_Item]] = {}
    for item in sorted(good, key=lambda it: it.row["id"]):
        by_split.setdefault(item.split, []).append(item)
    order = list(SPLITS) + sorted(set(by_split) - set(SPLITS))
    out = DatasetDict()
    for split in order:
        chosen = by_split.get(split, [])
        if not chosen:
            empty = Dataset.from_dict({name: [] for name in features}, features=features)
            out[split] = empty.cast_column("audio", AUDIO)
            continue
        hasher = hashlib.blake2b(repr((features, split)).encode(), digest_size=16)
        for item in chosen:
            hasher.update(repr((item.name, item.row, item.duration, item.digest)).encode())
        out[split] = Dataset.from_generator(_rows, features=features, gen_kwargs={"items": chosen},
                                            fingerprint=hasher.hexdigest(), split=split).cast_column("audio", AUDIO)
    return out


def to_16k_flac(dsd: DatasetDict) -> DatasetDict:
    """``dsd`` with every clip stored decoded, downmixed to mono and resampled to 16 kHz (``audio.decode_audio``,
    anti-aliased) as 24-bit FLAC (its rounding is far below any recording's noise), so that the loaders decode
    a third of the samples of a 48 kHz file and resample nothing (bench/loader.py, BENCHMARKS.md). The audio
    ``path`` gets ``.flac``."""
    def convert(row: dict) -> dict:
        flac = to_flac16k(data.encoded_audio(row["audio"], row["id"]), name=row["id"])
        return {"audio": {"bytes": flac, "path": str(Path(row["audio"]["path"]).with_suffix(".flac"))}}

    def as_flac(ds: Dataset, split: str) -> Dataset:
        written = Features({**ds.features, "audio": AUDIO_STORAGE})  # as _build writes: keeps the path whole
        return ds.map(convert, features=written, desc=f"16 kHz FLAC ({split})").cast_column("audio", AUDIO)

    return DatasetDict({split: as_flac(ds, split) for split, ds in dsd.items()})


def save_folds(dsd: DatasetDict, corpus: str, out_dir: str | Path) -> dict[str, dict[str, list[int]]]:
    """Every fold of ``splits.fold_splits`` under ``out_dir``, the audio stored once: all rows in ``out_dir/rows``,
    and per fold a folder ``out_dir/NAME`` holding only ``data.FOLD_FILE`` (its splits' row indices), which
    ``data.load_corpus`` opens as it opens a prepared corpus. Returns the folds."""
    out_dir = Path(out_dir)
    rows = concatenate_datasets([dsd[split] for split in dsd])
    folds = splits.fold_splits(rows, corpus)
    save(DatasetDict({"all": rows}), out_dir / "rows")
    for name, fold in folds.items():
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        (out_dir / name / data.FOLD_FILE).write_text(json.dumps({"rows": "../rows", "splits": fold}))
    return folds


def _report_skipped(problems: list[tuple[str, str]], report: str | Path | None) -> None:
    if report is not None:
        Path(report).write_text("where\treason\n" + "".join(f"{w}\t{r}\n" for w, r in problems))
        print(f"skipped {len(problems)} bad item(s), listed in {report}", file=sys.stderr)
    else:
        print(f"skipped {len(problems)} bad item(s):", file=sys.stderr)
        for where, reason in problems:
            print(f"  {where}: {reason}", file=sys.stderr)


def _vad(values: list[str], corpus: str) -> list[float]:
    """Raw VAD strings on the corpus's scale -> 0-1 floats; ValueError naming a bad value."""
    low, high = CORPORA[corpus].vad_scale
    scores = []
    for value in values:
        try:
            scores.append(float(value))
        except ValueError:
            raise ValueError(f"VAD score {value!r} is not a number") from None
    return [normalize_vad(score, low, high) for score in scores]


def _assign_splits(items: list[_Item], corpus: str, test_speakers: Collection[str | int],
                   validation_speakers: Collection[str | int], fold: int | None,
                   default_fold: int | None = None) -> None:
    """Each item's split (``splits.assign``); without speakers or a fold, ``default_fold``'s, or with None the
    split each item has."""
    if fold is None and not test_speakers and not validation_speakers:
        fold = default_fold
    speakers = [item.row["speaker"] for item in items]
    genders = {item.row["speaker"]: item.row.get("gender", "") for item in items}
    chosen = splits.assign(corpus, speakers, [item.split for item in items], test_speakers, validation_speakers, fold,
                           genders)
    for item, split in zip(items, chosen, strict=True):
        item.split = split


def _no_layout(root: Path, corpus: str, expected: str) -> FileNotFoundError:
    return FileNotFoundError(f"{root} is not a {corpus} directory: expected {expected}")


# --------------------------------------------------------------------------- RAVDESS

_RAVDESS_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")
_RAVDESS_CHANNEL = {"01": "speech", "02": "song"}
VOCAL_CHANNELS = ("speech", "song", "both")
_RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}
_RAVDESS_STATEMENT = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}


def prepare_ravdess(root: str | Path, *, test_speakers: Collection[str | int] = (),
                    validation_speakers: Collection[str | int] = (), fold: int | None = None,
                    vocal_channel: str = "speech", skip_bad: bool = False,
                    report: str | Path | None = None) -> DatasetDict:
    """RAVDESS (``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav``, 48 kHz) -> DatasetDict.

    File name fields: modality, vocal channel (01 speech, 02 song), emotion (01-08, ``CORPORA``), intensity
    (01 normal, 02 strong), statement (01, 02), repetition, actor (01-24, odd male). Both the flat layout and
    the published zips' ``Audio_*_Actors_01-24/Actor_XX`` are found. Speaker = ``Actor_XX``. Splits by actor:
    ``splits.ravdess_split`` by default; ``test_speakers``/``validation_speakers`` (actor numbers or ``Actor_XX``, any
    speaker-independent split, e.g. folds of a subset of the actors: the rest train); ``fold`` K: EmoBox's
    (``splits.emobox_fold``). No VAD ratings: valence, arousal, dominance are NaN. Extra columns: ``intensity``,
    ``statement``, ``vocal_channel`` (strings). ``vocal_channel``: "speech" (the 1,440 clips of the benchmark;
    song clips found under ``root`` are left out and counted on stderr), "song" or "both".

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report`` (TSV)
    or on stderr.
    """
    root = Path(root)
    if vocal_channel not in VOCAL_CHANNELS:
        raise ValueError(f"vocal_channel must be one of {VOCAL_CHANNELS}, got {vocal_channel!r}")
    codes, index = CORPORA["ravdess"].codes, label_map("ravdess")
    paths = sorted(p for p in root.glob("**/Actor_*/*.wav") if not p.name.startswith("."))
    if not paths:
        raise _no_layout(root, "RAVDESS", "Actor_XX/MM-VV-EE-II-SS-RR-AA.wav files (e.g. "
                                          "Actor_01/03-01-05-01-02-01-01.wav)")
    items, problems, other_channel = [], [], 0
    for path in paths:
        match = _RAVDESS_NAME.fullmatch(path.stem)
        if not match:
            problems.append((str(path), "file name does not parse as MM-VV-EE-II-SS-RR-AA"))
            continue
        _, channel, emotion, intensity, statement, _, actor = match.groups()
        fields = {"emotion": (emotion, codes), "vocal channel": (channel, _RAVDESS_CHANNEL),
                  "intensity": (intensity, _RAVDESS_INTENSITY), "statement": (statement, _RAVDESS_STATEMENT)}
        unknown = [f"unknown {name} code {code!r}" for name, (code, known) in fields.items() if code not in known]
        if not 1 <= int(actor) <= 24:
            unknown.append(f"actor {actor} outside 01-24")
        elif path.parent.name != f"Actor_{actor}":
            unknown.append(f"actor {actor} of the file name is not its folder {path.parent.name}")
        if unknown:
            problems.append((str(path), "; ".join(unknown)))
            continue
        if vocal_channel != "both" and _RAVDESS_CHANNEL[channel] != vocal_channel:
            other_channel += 1
            continue
        row = {"id": path.stem, "emotion": index[codes[emotion]], "valence": math.nan, "arousal": math.nan,
               "dominance": math.nan, "speaker": f"Actor_{actor}", "corpus": "ravdess",
               "intensity": _RAVDESS_INTENSITY[intensity], "statement": _RAVDESS_STATEMENT[statement],
               "vocal_channel": _RAVDESS_CHANNEL[channel]}
        items.append(_Item(path, path.relative_to(root).as_posix(), splits.ravdess_split(int(actor)), row))
    if other_channel:
        print(f"ravdess: left out {other_channel} {'song' if vocal_channel == 'speech' else 'speech'} clips "
              f"(vocal_channel={vocal_channel!r})", file=sys.stderr)
    _assign_splits(items, "ravdess", test_speakers, validation_speakers, fold)
    extra = {"intensity": Value("string"), "statement": Value("string"), "vocal_channel": Value("string")}
    return _build(items, problems, _features("ravdess", extra), desc="ravdess", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- EmoDB

_EMODB_NAME = re.compile(r"(\d\d)([a-z]\d\d)([A-Z])([a-z])")


def prepare_emodb(root: str | Path, *, test_speakers: Collection[str | int] = (),
                  validation_speakers: Collection[str | int] = (), fold: int | None = None, skip_bad: bool = False,
                  report: str | Path | None = None) -> DatasetDict:
    """EmoDB (``wav/SSTTTEv.wav``, 16 kHz; ``root`` may also be the ``wav`` folder) -> DatasetDict.

    File name: speaker ``SS`` (ten: ``splits.EMODB_MALES``, ``splits.EMODB_FEMALES``), text ``TTT`` (a01-b10),
    emotion letter ``E`` (``CORPORA["emodb"]``: W angry, L boredom, E disgusted, A fearful, F happy, T sad,
    N neutral), version ``v``. Speaker = ``SS``. Splits: ``fold`` K of ``splits.fold_speakers`` (default fold 1) or
    ``test_speakers`` / ``validation_speakers``. No VAD ratings. Extra columns: ``text``, ``gender``.

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report``.
    """
    root = Path(root)
    folder = root / "wav" if (root / "wav").is_dir() else root
    paths = sorted(p for p in folder.glob("*.wav") if not p.name.startswith("."))
    if not paths:
        raise _no_layout(root, "EmoDB", "wav/SSTTTEv.wav files (e.g. wav/03a01Fa.wav)")
    codes, index = CORPORA["emodb"].codes, label_map("emodb")
    items, problems = [], []
    for path in paths:
        match = _EMODB_NAME.fullmatch(path.stem)
        if not match:
            problems.append((str(path), "file name does not parse as SSTTTEv (speaker, text, emotion, version)"))
            continue
        speaker, text, code, _ = match.groups()
        reasons = [] if code in codes else [f"unknown emotion letter {code!r}"]
        if speaker not in splits.EMODB_MALES + splits.EMODB_FEMALES:
            reasons.append(f"speaker {speaker} is not one of EmoDB's ten "
                           f"({', '.join(sorted(splits.EMODB_MALES + splits.EMODB_FEMALES))})")
        if reasons:
            problems.append((str(path), "; ".join(reasons)))
            continue
        row = {"id": path.stem, "emotion": index[codes[code]], "valence": math.nan, "arousal": math.nan,
               "dominance": math.nan, "speaker": speaker, "corpus": "emodb", "text": text,
               "gender": "male" if speaker in splits.EMODB_MALES else "female"}
        items.append(_Item(path, path.relative_to(root).as_posix(), "", row))
    _assign_splits(items, "emodb", test_speakers, validation_speakers, fold, default_fold=1)
    features = _features("emodb", {"text": Value("string"), "gender": Value("string")})
    return _build(items, problems, features, desc="emodb", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- SAVEE

_SAVEE_CODE = r"(a|d|f|h|n|sa|su)(\d\d)"


def prepare_savee(root: str | Path, *, test_speakers: Collection[str] = (), validation_speakers: Collection[str] = (),
                  fold: int | None = None, skip_bad: bool = False, report: str | Path | None = None) -> DatasetDict:
    """SAVEE (4 male speakers DC, JE, JK, KL; 44.1 kHz) -> DatasetDict, from either published layout: the original
    ``AudioData/DC/a01.wav`` or the flat ``DC_a01.wav`` (in ``root`` or ``root/ALL``).

    Code before the sentence number (``CORPORA["savee"]``): a angry, d disgusted, f fearful, h happy, n neutral,
    sa sad, su surprised. id = ``DC_a01`` in both layouts (a corpus found in both is an error naming both files).
    Splits: ``fold`` K of ``splits.fold_speakers`` (EmoBox's leave-one-speaker-out; default fold 1) or
    ``test_speakers``/``validation_speakers``. No VAD ratings.

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report``.
    """
    root = Path(root)
    original = sorted(p for p in root.glob("AudioData/*/*.wav") if not p.name.startswith("."))
    flat = sorted(p for p in [*root.glob("*.wav"), *root.glob("ALL/*.wav")] if not p.name.startswith("."))
    if not original and not flat:
        raise _no_layout(root, "SAVEE", "AudioData/<speaker>/<code><nn>.wav (e.g. AudioData/DC/a01.wav) or flat "
                                        "<speaker>_<code><nn>.wav files (e.g. DC_a01.wav, in the folder or in ALL/)")
    codes, index = CORPORA["savee"].codes, label_map("savee")
    items, problems = [], []
    for path in original + flat:
        match = (re.fullmatch(_SAVEE_CODE, path.stem) if path in original
                 else re.fullmatch(rf"([A-Z]{{2}})_{_SAVEE_CODE}", path.stem))
        if not match:
            expected = "<code><nn>, e.g. a01" if path in original else "<speaker>_<code><nn>, e.g. DC_a01"
            problems.append((str(path), f"file name does not parse as {expected} (codes {', '.join(codes)})"))
            continue
        speaker = path.parent.name if path in original else match.group(1)
        code = match.groups()[-2]
        row = {"id": f"{speaker}_{code}{match.groups()[-1]}", "emotion": index[codes[code]], "valence": math.nan,
               "arousal": math.nan, "dominance": math.nan, "speaker": speaker, "corpus": "savee"}
        items.append(_Item(path, path.relative_to(root).as_posix(), "", row))
    _assign_splits(items, "savee", test_speakers, validation_speakers, fold, default_fold=1)
    return _build(items, problems, _features("savee", {}), desc="savee", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- TESS

_TESS_FOLDER = re.compile(r"(OAF|YAF)_.+", re.IGNORECASE)


def prepare_tess(root: str | Path, *, test_speakers: Collection[str] = (), validation_speakers: Collection[str] = (),
                 skip_bad: bool = False, report: str | Path | None = None) -> DatasetDict:
    """TESS (``OAF_angry/OAF_back_angry.wav``, ``YAF_pleasant_surprise/YAF_back_ps.wav``, ...; found at any depth
    under ``root``) -> DatasetDict.

    Emotion: the last part of the file name, any case (``CORPORA["tess"]``: angry, disgust, fear, happy, neutral,
    ps = pleasant surprise -> surprised, sad); speaker: the folder's prefix, OAF or YAF (a published file is
    named ``OA_bite_neutral.wav``); extra column ``word``. Two speakers who say the same 200 words cannot give a
    speaker-independent training split: by default every row is in ``test`` (a cross-corpus test set);
    ``test_speakers``/``validation_speakers`` split it otherwise. No VAD ratings. Files whose data DALI cannot
    decode (AIFF under a ``.wav`` name) are stored as 16 kHz FLAC (``_build`` says so on stderr).

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report``.
    """
    root = Path(root)
    paths = sorted(p for p in root.rglob("*.wav") if _TESS_FOLDER.fullmatch(p.parent.name)
                   and not p.name.startswith("."))
    if not paths:
        raise _no_layout(root, "TESS", "OAF_<emotion>/ and YAF_<emotion>/ folders of .wav files (e.g. "
                                       "OAF_angry/OAF_back_angry.wav)")
    codes, index = CORPORA["tess"].codes, label_map("tess")
    items, problems = [], []
    for path in paths:
        parts = path.stem.split("_")
        code = parts[-1].lower()
        if len(parts) != 3 or code not in codes:
            problems.append((str(path), f"file name does not parse as SPEAKER_WORD_EMOTION with an emotion among "
                                        f"{', '.join(codes)}"))
            continue
        row = {"id": path.stem, "emotion": index[codes[code]], "valence": math.nan, "arousal": math.nan,
               "dominance": math.nan, "speaker": path.parent.name[:3].upper(), "corpus": "tess", "word": parts[1]}
        items.append(_Item(path, path.relative_to(root).as_posix(), "test", row))
    _assign_splits(items, "tess", test_speakers, validation_speakers, None)
    return _build(items, problems, _features("tess", {"word": Value("string")}), desc="tess", skip_bad=skip_bad,
                  report=report)


# --------------------------------------------------------------------------- CREMA-D

_CREMA_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")
_CREMA_LEVEL = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
_CREMA_COLUMNS = ("ActorID", "Age", "Sex")


def prepare_crema_d(root: str | Path, *, test_speakers: Collection[str] = (), validation_speakers: Collection[str] = (),
                    fold: int | None = None, skip_bad: bool = False, report: str | Path | None = None) -> DatasetDict:
    """CREMA-D (``AudioWAV/1001_DFA_ANG_XX.wav``, 16 kHz, and ``VideoDemographics.csv``) -> DatasetDict.

    File name: actor (1001-1091), sentence (DFA, IEO, ...), emotion (``CORPORA["crema_d"]``: ANG, DIS, FEA, HAP,
    NEU, SAD), level (LO, MD, HI, XX: unspecified). ``VideoDemographics.csv`` (ActorID, Age, Sex, ...) gives each
    actor's sex, which the folds balance. Speaker = the actor id. Splits: ``fold`` K of ``splits.fold_speakers``
    (default fold 1) or ``test_speakers``/``validation_speakers``. No VAD ratings (the perceptual ratings are
    categorical). Extra columns: ``sentence``, ``level``, ``gender``, ``age``.

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report``.
    """
    root = Path(root)
    paths = sorted(p for p in (root / "AudioWAV").glob("*.wav") if not p.name.startswith("."))
    demographics = root / "VideoDemographics.csv"
    if not paths:
        raise _no_layout(root, "CREMA-D", "AudioWAV/ACTOR_SENTENCE_EMOTION_LEVEL.wav files (e.g. "
                                          "AudioWAV/1001_DFA_ANG_XX.wav) and VideoDemographics.csv")
    if not demographics.is_file():
        raise FileNotFoundError(f"no {demographics}: CREMA-D's table of actors (ActorID, Age, Sex, ...) gives the "
                                "speakers' sex for the folds")
    actors, problems = {}, []
    with demographics.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _CREMA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInputError([(str(demographics), f"missing column(s) {missing}")])
        for record in reader:
            sex = (record["Sex"] or "").strip().lower()
            if sex not in ("male", "female"):
                problems.append((f"{demographics}:{reader.line_num}",
                                 f"Sex {record['Sex']!r} is neither Male nor Female"))
                continue
            actors[record["ActorID"].strip()] = (sex, record["Age"].strip())
    codes, index = CORPORA["crema_d"].codes, label_map("crema_d")
    items = []
    for path in paths:
        match = _CREMA_NAME.fullmatch(path.stem)
        if not match:
            problems.append((str(path), "file name does not parse as ACTOR_SENTENCE_EMOTION_LEVEL (1001_DFA_ANG_XX)"))
            continue
        actor, sentence, code, level = match.groups()
        reasons = [] if code in codes else [f"unknown emotion code {code!r}"]
        if level not in _CREMA_LEVEL:
            reasons.append(f"unknown level {level!r}")
        if actor not in actors:
            reasons.append(f"actor {actor} is not in {demographics.name}")
        if reasons:
            problems.append((str(path), "; ".join(reasons)))
            continue
        sex, age = actors[actor]
        row = {"id": path.stem, "emotion": index[codes[code]], "valence": math.nan, "arousal": math.nan,
               "dominance": math.nan, "speaker": actor, "corpus": "crema_d", "sentence": sentence,
               "level": _CREMA_LEVEL[level], "gender": sex, "age": age}
        items.append(_Item(path, path.relative_to(root).as_posix(), "", row))
    _assign_splits(items, "crema_d", test_speakers, validation_speakers, fold, default_fold=1)
    extra = {name: Value("string") for name in ("sentence", "level", "gender", "age")}
    return _build(items, problems, _features("crema_d", extra), desc="crema-d", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- IEMOCAP

_IEMOCAP_LINE = re.compile(r"\[(\d+(?:\.\d+)?) - (\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t"
                           r"\[([^,\]]+), ([^,\]]+), ([^,\]]+)\]")


def prepare_iemocap(root: str | Path, *, test_session: int = 5, test_speakers: Collection[str] = (),
                    validation_speakers: Collection[str] = (), skip_bad: bool = False,
                    report: str | Path | None = None) -> DatasetDict:
    """IEMOCAP (``SessionN/sentences/wav/<dialog>/<utt>.wav``, 16 kHz) -> DatasetDict.

    Labels come from ``SessionN/dialog/EmoEvaluation/<dialog>.txt``: every line starting with ``[`` is an
    utterance label ``[start - end]<TAB>utt<TAB>code<TAB>[V, A, D]`` (codes in ``CORPORA``; V, A, D =
    valence, activation/arousal, dominance on 1-5, mapped to 0-1); header and annotator lines (``%``,
    ``C-``, ``A-``) are ignored. Speaker = session + the gender letter of the utterance's own part
    (``Ses01F_impro01_M003`` -> ``Ses01M``). Splits (speaker-disjoint): test = ``test_session``, validation =
    one speaker of another session (``splits.iemocap_validation_speaker``: Ses04F for the default test session 5),
    train = the other seven speakers of the four other sessions; ``test_speakers``/``validation_speakers``
    (``Ses01F``, ...) any other speaker-independent split. Extra column: ``session`` (int).

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report`` (TSV)
    or on stderr.
    """
    root = Path(root)
    codes, index = CORPORA["iemocap"].codes, label_map("iemocap")
    session_dirs = {int(d.name[len("Session"):]): d for d in root.glob("Session*")
                    if d.is_dir() and d.name[len("Session"):].isdigit()}
    if not session_dirs:
        raise FileNotFoundError(f"no SessionN directories under {root}: not an IEMOCAP directory")
    validation_speaker = splits.iemocap_validation_speaker(test_session, list(session_dirs))
    items, problems = [], []
    for session, directory in sorted(session_dirs.items()):
        wavs = {p.stem: p for p in sorted((directory / "sentences" / "wav").glob("*/*.wav"))
                if not p.name.startswith(".")}
        labelled: set[str] = set()
        for label_file in sorted((directory / "dialog" / "EmoEvaluation").glob("*.txt")):
            if label_file.name.startswith("."):
                continue
            for number, line in enumerate(label_file.read_text(errors="replace").splitlines(), 1):
                if not line.startswith("["):
                    continue
                where = f"{label_file}:{number}"
                match = _IEMOCAP_LINE.fullmatch(line.rstrip())
                if not match:
                    problems.append((where, f"label line does not parse: {line!r}"))
                    labelled.update(line.split("\t")[1:2])  # its audio is not reported a second time
                    continue
                _, _, utt, code, *vad = match.groups()
                if utt in labelled:
                    problems.append((where, f"second label for {utt}"))
                    continue
                labelled.add(utt)
                reasons = [] if code in codes else [f"unknown emotion code {code!r}"]
                try:
                    valence, arousal, dominance = _vad(vad, "iemocap")
                except ValueError as err:
                    reasons.append(str(err))
                if utt not in wavs:
                    reasons.append(f"no audio file {utt}.wav under {directory / 'sentences' / 'wav'}")
                if reasons:
                    problems.append((where, "; ".join(reasons)))
                    continue
                speaker = f"{utt[:5]}{utt.rsplit('_', 1)[-1][0]}"
                row = {"id": utt, "emotion": index[codes[code]], "valence": valence, "arousal": arousal,
                       "dominance": dominance, "speaker": speaker, "corpus": "iemocap", "session": session}
                split = ("test" if session == test_session else
                         "validation" if speaker == validation_speaker else "train")
                items.append(_Item(wavs[utt], wavs[utt].relative_to(root).as_posix(), split, row))
        problems += [(str(path), f"no label for {utt} in {directory / 'dialog' / 'EmoEvaluation'}")
                     for utt, path in wavs.items() if utt not in labelled]
    _assign_splits(items, "iemocap", test_speakers, validation_speakers, None)
    features = _features("iemocap", {"session": Value("int32")})
    return _build(items, problems, features, desc="iemocap", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- MSP-Podcast

_MSP_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")


def msp_split(split_set: str) -> str | None:
    """MSP-Podcast's own ``Split_Set``: Train -> train, Development -> validation, Test1 -> test, TestN -> testN."""
    if split_set == "Train":
        return "train"
    if split_set == "Development":
        return "validation"
    if split_set == "Test1":
        return "test"
    return split_set.lower() if re.fullmatch(r"Test\d+", split_set) else None


def prepare_msp_podcast(root: str | Path, *, test_speakers: Collection[str] = (),
                        validation_speakers: Collection[str] = (), skip_bad: bool = False,
                        report: str | Path | None = None) -> DatasetDict:
    """MSP-Podcast (``Audios/*.wav`` and ``Labels/labels_consensus.csv``, 16 kHz) -> DatasetDict.

    The csv's columns: FileName, EmoClass (codes in ``CORPORA``), EmoAct, EmoVal, EmoDom (1-7, mapped to
    0-1), SpkrID, Gender, Split_Set. Splits are the corpus's own (speaker-independent by design), see
    ``msp_split``; the extra test sets keep their names (``test2``, ...); ``test_speakers``/``validation_speakers``
    (``SpkrID`` values) split by speaker instead. Extra column: ``gender``.

    Bad input raises one ``BadInputError``; with ``skip_bad`` it is left out and listed in ``report`` (TSV)
    or on stderr.
    """
    root = Path(root)
    label_file = root / "Labels" / "labels_consensus.csv"
    if not label_file.is_file():
        raise FileNotFoundError(f"no {label_file}: not an MSP-Podcast directory")
    codes, index = CORPORA["msp_podcast"].codes, label_map("msp_podcast")
    wavs = {p.name: p for p in sorted((root / "Audios").glob("*.wav")) if not p.name.startswith(".")}
    items, problems, labelled = [], [], set()
    with label_file.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _MSP_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BadInputError([(str(label_file), f"missing column(s) {missing}")])
        for record in reader:
            where, name = f"{label_file}:{reader.line_num}", record["FileName"]
            if name in labelled:
                problems.append((where, f"second label for {name}"))
                continue
            labelled.add(name)
            if any(record[c] is None for c in _MSP_COLUMNS):
                problems.append((where, "too few fields"))
                continue
            reasons = [] if record["EmoClass"] in codes else [f"unknown emotion code {record['EmoClass']!r}"]
            try:
                valence, arousal, dominance = _vad([record["EmoVal"], record["EmoAct"], record["EmoDom"]],
                                                   "msp_podcast")
            except ValueError as err:
                reasons.append(str(err))
            split = msp_split(record["Split_Set"])
            if split is None:
                reasons.append(f"unknown Split_Set {record['Split_Set']!r}")
            if name not in wavs:
                reasons.append(f"no audio file {root / 'Audios' / name}")
            if reasons:
                problems.append((where, "; ".join(reasons)))
                continue
            row = {"id": Path(name).stem, "emotion": index[codes[record["EmoClass"]]], "valence": valence,
                   "arousal": arousal, "dominance": dominance, "speaker": record["SpkrID"],
                   "corpus": "msp_podcast", "gender": record["Gender"]}
            items.append(_Item(wavs[name], f"Audios/{name}", split, row))
    problems += [(str(path), f"no label in {label_file}") for name, path in wavs.items() if name not in labelled]
    _assign_splits(items, "msp_podcast", test_speakers, validation_speakers, None)
    features = _features("msp_podcast", {"gender": Value("string")})
    return _build(items, problems, features, desc="msp-podcast", skip_bad=skip_bad, report=report)


# --------------------------------------------------------------------------- command line


def _speakers(text: str) -> tuple[str, ...]:
    """``"03,08"`` -> ("03", "08"): speakers as the corpus names them (``splits.speaker_id``: RAVDESS actor numbers
    too)."""
    speakers = tuple(s.strip() for s in text.split(",") if s.strip())
    if not speakers:
        raise argparse.ArgumentTypeError(f"expected speakers separated by commas, got {text!r}")
    return speakers


CORPUS_NAMES = {"ravdess": "ravdess", "emodb": "emodb", "savee": "savee", "tess": "tess", "crema-d": "crema_d",
                "iemocap": "iemocap", "msp-podcast": "msp_podcast", "synthetic": "synthetic"}  # command -> corpus


def _prepare(args: argparse.Namespace, report: Path | None) -> DatasetDict:
    """The corpus the command line asks for."""
    if args.corpus == "synthetic":
        return synthetic.make_synthetic(n_speakers=args.speakers, per_class=args.per_class, seed=args.seed)
    speakers = {"test_speakers": args.test_speakers, "validation_speakers": args.validation_speakers}
    bad = {"skip_bad": args.skip_bad, "report": report}
    if args.corpus == "ravdess":
        return prepare_ravdess(args.raw_dir, **speakers, fold=args.fold, vocal_channel=args.vocal_channel, **bad)
    if args.corpus == "iemocap":
        return prepare_iemocap(args.raw_dir, test_session=args.test_session, **speakers, **bad)
    if args.corpus == "msp-podcast":
        return prepare_msp_podcast(args.raw_dir, **speakers, **bad)
    if args.corpus == "tess":
        return prepare_tess(args.raw_dir, **speakers, **bad)
    prepare_fn = {"emodb": prepare_emodb, "savee": prepare_savee, "crema-d": prepare_crema_d}[args.corpus]
    return prepare_fn(args.raw_dir, **speakers, fold=args.fold, **bad)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="prepare.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=list(CORPUS_NAMES))
    parser.add_argument("raw_dir", nargs="?", type=Path, help="the raw corpus (not for synthetic)")
    parser.add_argument("out_dir", type=Path, help="where save_to_disk writes the DatasetDict")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the result to the Hub")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave bad items out and list them in OUT_DIR.skipped.tsv")
    parser.add_argument("--test-speakers", "--test-actors", dest="test_speakers", type=_speakers, default=(),
                        metavar="A,B", help="the test speakers of a speaker-independent split, as the corpus names "
                                            "them (RAVDESS: actor numbers; --test-actors is the same); the rest train")
    parser.add_argument("--validation-speakers", "--validation-actors", dest="validation_speakers", type=_speakers,
                        default=(), metavar="C", help="its validation speakers")
    parser.add_argument("--fold", type=int, default=None,
                        help="ravdess, emodb, savee, crema-d: the speaker-independent fold K (splits.fold_speakers)")
    parser.add_argument("--vocal-channel", choices=VOCAL_CHANNELS, default="speech",
                        help="ravdess: which clips (default speech, the benchmark's 1,440)")
    parser.add_argument("--test-session", type=int, default=5, help="IEMOCAP's test session (default 5)")
    parser.add_argument("--all-folds", action="store_true",
                        help="ravdess, emodb, savee, crema-d, iemocap: every fold of the protocol under "
                             "OUT_DIR/<fold>, the audio stored once (prepare.save_folds)")
    parser.add_argument("--flac16k", action="store_true",
                        help="store the audio decoded to 16 kHz mono FLAC instead of the original files: faster "
                             "loading of 44.1/48 kHz corpora (see to_16k_flac)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: the generator's seed")
    parser.add_argument("--speakers", type=int, default=20, help="synthetic: number of speakers")
    parser.add_argument("--per-class", type=int, default=6, help="synthetic: clips per class per speaker")
    args = parser.parse_args(argv)
    corpus = CORPUS_NAMES[args.corpus]
    if (args.corpus == "synthetic") != (args.raw_dir is None):
        parser.error("synthetic takes only OUT_DIR" if args.raw_dir else f"{args.corpus} needs RAW_DIR OUT_DIR")
    if args.fold is not None and corpus not in splits.FOLDS:
        parser.error(f"--fold is for {', '.join(n for n, c in CORPUS_NAMES.items() if c in splits.FOLDS)}")
    if args.all_folds and (corpus not in (*splits.FOLDS, "iemocap") or args.fold or args.test_speakers
                           or args.validation_speakers):
        parser.error("--all-folds is for ravdess, emodb, savee, crema-d and iemocap, without --fold or speaker lists")
    return args


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    report = Path(f"{args.out_dir}.skipped.tsv") if args.skip_bad else None
    try:
        dsd = _prepare(args, report)
    except BadInputError as err:  # every bad item, one line each
        print(f"prepare.py: error: {err}", file=sys.stderr)
        return 1
    if report is not None and not report.exists():
        report.write_text("where\treason\n")
    if args.flac16k:
        dsd = to_16k_flac(dsd)
    if args.all_folds:
        for name, splits in save_folds(dsd, CORPUS_NAMES[args.corpus], args.out_dir).items():
            print(f"{args.out_dir / name}: " + ", ".join(f"{s} {len(rows)} rows" for s, rows in splits.items()))
        return 0
    save(dsd, args.out_dir)
    if args.push_to_hub:
        dsd.push_to_hub(args.push_to_hub)
    for split, rows in dsd.items():
        print(f"{split}: {len(rows)} rows")
    if args.corpus == "synthetic":
        print(f"baseline ({evaluate.BASELINE}):")
        for split, m in evaluate.baseline(dsd).items():
            print(f"  {split}: UA {m['ua']:.3f}  WA {m['wa']:.3f}  macro-F1 {m['macro_f1']:.3f}  (n={m['n']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python prepare.py``: a bad argument or input is one line on stderr (--debug: the traceback)."""
    return cli.run(_main, argv, "prepare.py")


if __name__ == "__main__":
    sys.exit(main())
