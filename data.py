"""Corpora -> batches of Whisper log-mel features, on the GPU with NVIDIA DALI or on the CPU with PyTorch.

    ds = load_corpus("data/synthetic", "train")                 # or several: ["data/iemocap", "data/ravdess"]
    loader = make_loader(ds, LoaderOptions(batch_size=64, train=True, views=2, augment=Augment()), device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # mel [B, 2, 80, 300], frames [B, 2], emotion [B], vad [B, 3], index [B]
            ...

The prepared corpora's schema (``schema``, ``check_schema``), reading them (``load_corpus``) and writing them
(``save``); training augmentations (``Augment``); the two loaders. Features are ``audio.log_mel`` on a crop of
``n_frames * HOP_LENGTH`` samples at 16 kHz: a random crop when training with ``Augment.crop``, the centre
otherwise; a shorter clip is zero-padded at the end.

Both backends compute the same batches from the same random draws: every random parameter of a batch
(crop position, speed, gain, noise, masks) is drawn in numpy from ``rng([seed, epoch, shard_id, batch])``
(``draw_batch``), so batches are reproducible whatever the number of workers, and the backends agree up to
their resamplers. The encoded bytes are decoded at their own rate (DALI's ``decoders.audio``, or
soundfile) and resampled to 16 kHz after an anti-aliasing low-pass (``audio.lowpass_taps``): DALI's resampler
keeps its cutoff at the input's Nyquist, so without it a 48 kHz file aliases into the band.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path

import datasets
import numpy as np
import torch

from audio import (
    HOP_LENGTH,
    N_FFT,
    SAMPLE_RATE,
    AudioError,
    audio_header,
    clip_frames,
    decode_native,
    log_mel,
    lowpass_taps,
    mel_filters,
    resample,
    window_starts,
)
from labels import FOUR_CLASS, NOT_EMOTIONS, VAD, merge_label_names, to_four_class

COLUMNS = ("id", "audio", "emotion", *VAD, "speaker", "corpus", "duration")  # every corpus's, in this order
SPLITS = ("train", "validation", "test")  # every prepared corpus's (MSP-Podcast adds its other test sets)
FOLD_FILE = "fold.json"  # a fold written by prepare.save_folds: its splits as rows of a shared prepared corpus
BACKENDS = ("auto", "dali", "torch")
NOISE_COLORS = ("white", "pink", "brown")
_MARGIN = 2 * HOP_LENGTH  # 16 kHz samples resampled on either side of a crop and then dropped
AUDIO = datasets.Audio(decode=False)
# How the audio column is written: this plain struct (the same arrow storage), then cast to ``AUDIO``;
# ``Audio.encode_example`` needs torchcodec and drops the bytes of a path that exists locally.
AUDIO_STORAGE = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}


# ----------------------------------------------------------------------------- corpora


def load_corpus(name_or_path: str | Path | Sequence[str | Path], split: str, *, four_class: bool = False,
                exclude: Sequence[str] = NOT_EMOTIONS) -> datasets.Dataset:
    """One split of a corpus in the schema of prepare.py, or several corpora combined into one.

    name_or_path: a ``save_to_disk`` folder (a DatasetDict, or a Dataset that is taken as the split), a
    Hugging Face Hub dataset id, or a list of these. Several corpora are concatenated on the common
    columns ``COLUMNS``, with ``emotion`` re-indexed by name into ``labels.merge_label_names`` of theirs.
    exclude: leave out the rows labelled with these names (default ``labels.NOT_EMOTIONS``: no agreement,
    other), keeping the label space; names a corpus does not have are ignored; prints what it leaves out.
    ``exclude=()`` keeps every row.
    four_class: keep only the rows whose label has a 4-class reduction (``labels.to_four_class``),
    labelled 0-3 by ``FOUR_CLASS``; prints how many rows it drops.
    """
    names = [name_or_path] if isinstance(name_or_path, (str, Path)) else list(name_or_path)
    if not names:
        raise ValueError("load_corpus needs at least one corpus")
    parts = [(str(name), _open(name, split)) for name in names]
    for name, part in parts:
        check_schema(part, f"{name} [{split}]")
    if len(parts) == 1:
        ds = parts[0][1]
    else:
        label_names = merge_label_names([part.features["emotion"].names for _, part in parts])
        ds = datasets.concatenate_datasets([_relabel(part.select_columns(list(COLUMNS)), label_names)
                                            for _, part in parts]).select_columns(list(COLUMNS))
    where = f"{'+'.join(name for name, _ in parts)} [{split}]"
    if exclude:
        ds = _exclude(ds, exclude, where)
    if four_class:
        ds = _four_class(ds, where)
    return ds


def split_names(path: str | Path) -> list[str]:
    """The splits of a prepared corpus on disk (a ``save_to_disk`` folder or a fold of ``prepare.save_folds``; a
    single ``Dataset`` is one split, loaded under any name)."""
    if (Path(path) / FOLD_FILE).is_file():
        return list(json.loads((Path(path) / FOLD_FILE).read_text())["splits"])
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no prepared corpus at {path}: no such folder (for a Hub dataset, name its split)")
    ds = datasets.load_from_disk(str(path))
    return list(ds) if isinstance(ds, datasets.DatasetDict) else ["all"]


def _open(name: str | Path, split: str) -> datasets.Dataset:
    if (Path(name) / FOLD_FILE).is_file():  # a fold of prepare.save_folds: row indices into the shared rows
        spec = json.loads((Path(name) / FOLD_FILE).read_text())
        if split not in spec["splits"]:
            raise KeyError(f"{name} has no split {split!r}; it has {sorted(spec['splits'])}")
        return _open(Path(name) / spec["rows"], "all").select(spec["splits"][split])
    if Path(name).exists():
        ds = datasets.load_from_disk(str(name))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{name} has no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
    elif _local(name):
        raise FileNotFoundError(f"no prepared corpus at {name}: no such folder (prepare.py writes one)")
    else:
        try:
            ds = datasets.load_dataset(str(name), split=split)
        except Exception as e:
            raise FileNotFoundError(f"{name!r} is neither a folder nor a loadable Hub dataset: {e}") from e
    if isinstance(ds.features.get("audio"), datasets.Audio) and ds.features["audio"].decode:
        ds = ds.cast_column("audio", AUDIO)
    return ds


def _local(name: str | Path) -> bool:
    """Whether a name that is no folder can only mean one (so that it is not looked for on the Hub, whose ids are
    ``NAME`` or ``OWNER/NAME``): an absolute or ``./`` path, more than two parts, or a first part that is a
    folder here (``data/ravdess`` beside ``data/``)."""
    parts = Path(name).parts
    return Path(name).is_absolute() or str(name).startswith(".") or len(parts) > 2 or (
        len(parts) == 2 and Path(parts[0]).is_dir())


def schema(label_names: Sequence[str], extra: dict[str, datasets.Value] | None = None, *,
           written: bool = False) -> datasets.Features:
    """The features of a prepared corpus: ``COLUMNS`` (``emotion`` named by ``label_names``), then the corpus's
    own ``extra`` columns; ``written``: with the audio column as rows are written (``AUDIO_STORAGE``)."""
    common = {"id": datasets.Value("string"), "audio": AUDIO_STORAGE if written else AUDIO,
              "emotion": datasets.ClassLabel(names=list(label_names)), "speaker": datasets.Value("string"),
              "corpus": datasets.Value("string"), **{c: datasets.Value("float32") for c in (*VAD, "duration")}}
    return datasets.Features({**{c: common[c] for c in COLUMNS}, **(extra or {})})


def save(dsd: datasets.DatasetDict, out_dir: str | Path) -> None:
    """``save_to_disk``, writing one shard for an empty split (datasets otherwise writes none and
    ``load_from_disk`` fails on it: huggingface/datasets PR #8385)."""
    dsd.save_to_disk(str(out_dir), num_shards={split: 1 for split, rows in dsd.items() if len(rows) == 0})


def check_schema(ds: datasets.Dataset, name: str = "dataset", columns: Sequence[str] = COLUMNS) -> None:
    """Raise ValueError naming ``name`` and the column when one of ``columns`` is missing or not of the kind
    ``schema`` gives it (any width of a float or string ``Value``)."""
    expected = schema(["?"])
    for column in columns:
        want, feature = expected[column], ds.features.get(column)
        if feature is None:
            raise ValueError(f"{name}: column {column!r} is missing (columns: {list(ds.features)})")
        ok = type(feature) is type(want)
        if ok and isinstance(want, datasets.Value):
            ok = feature.dtype.rstrip("0123456789") == want.dtype.rstrip("0123456789")
        if not ok:
            want_name = want.dtype.rstrip("0123456789") if isinstance(want, datasets.Value) else type(want).__name__
            raise ValueError(f"{name}: column {column!r} is {feature}, expected {want_name}")


def _replace_emotion(ds: datasets.Dataset, values: np.ndarray, names: list[str]) -> datasets.Dataset:
    """``ds`` with ``emotion`` := ``values`` named by ``names`` (a new column: the audio is not rewritten)."""
    order = list(ds.column_names)
    ds = ds.remove_columns("emotion").add_column(
        "emotion", values.tolist(), feature=datasets.ClassLabel(names=names))
    return ds.select_columns(order)


def _relabel(ds: datasets.Dataset, names: list[str]) -> datasets.Dataset:
    """Re-index ``emotion`` by name into ``names``; the common columns cast to one set of features."""
    index = {name: i for i, name in enumerate(names)}
    remap = np.array([index[n] for n in ds.features["emotion"].names], dtype=np.int64)
    ds = _replace_emotion(ds, remap[np.asarray(ds["emotion"], dtype=np.int64)], names)
    for column, feature in schema(names).items():  # Audio: metadata only; a Value that differs is converted
        if ds.features[column] != feature:
            ds = ds.cast_column(column, feature)
    return ds


def _exclude(ds: datasets.Dataset, exclude: Sequence[str], name: str) -> datasets.Dataset:
    names = ds.features["emotion"].names
    emotion = np.asarray(ds["emotion"], dtype=np.int64)
    out = np.isin(emotion, [names.index(n) for n in exclude if n in names])
    if not out.any():
        return ds
    left_out = {n: int(c) for n, c in zip(names, np.bincount(emotion[out], minlength=len(names)), strict=True) if c}
    print(f"exclude: {name}: left out {int(out.sum())} of {len(ds)} rows {left_out}", file=sys.stderr)
    return ds.select(np.flatnonzero(~out))


def _four_class(ds: datasets.Dataset, name: str) -> datasets.Dataset:
    names = ds.features["emotion"].names
    remap = np.array([-1 if to_four_class(n) is None else to_four_class(n) for n in names], dtype=np.int64)
    old = np.asarray(ds["emotion"], dtype=np.int64)
    new = remap[old]
    keep = np.flatnonzero(new >= 0)
    dropped = {names[i]: int(n) for i, n in enumerate(np.bincount(old[new < 0], minlength=len(names))) if n}
    print(f"four_class: {name}: kept {len(keep)} of {len(ds)} rows, dropped {len(ds) - len(keep)} {dropped}",
          file=sys.stderr)
    return _replace_emotion(ds, new, FOUR_CLASS).select(keep)


def vad_ratings(ds: datasets.Dataset | Mapping[str, np.ndarray]) -> np.ndarray:
    """float32 [N, 3]: the valence, arousal and dominance of every row of a split (or of its columns), NaN where
    the corpus has none."""
    return np.stack([np.asarray(ds[c], dtype=np.float32) for c in VAD], axis=1)


def encoded_audio(cell: dict, name: str) -> bytes:
    """The encoded bytes of an ``Audio(decode=False)`` cell: its bytes, or the file at its ``path`` where it has
    none; AudioError naming ``name`` (the row) when neither is there."""
    if cell.get("bytes") is not None:
        return cell["bytes"]
    try:
        return Path(cell["path"]).read_bytes()
    except (OSError, TypeError) as e:
        raise AudioError(f"{name}: no audio bytes and cannot read {cell.get('path')!r}") from e


# ----------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """Training augmentations, each applied with its probability ``p_*`` per clip and view.

    crop: random crop position (otherwise the centre). shift: move the crop by up to ``max_shift`` seconds
    either way, within the clip (a clip is only ever padded at its end, as in evaluation). speed: resample
    by a factor in ``speed`` (quantised to 0.01; pitch and tempo change together). gain: uniform in
    ``gain_db``. noise: white, pink or brown at a uniform SNR in ``snr_db``, on the clip, not its padding.
    Masks (SpecAugment) on the log-mel, filled with 0: ``n_time_masks`` of up to ``time_mask`` frames,
    ``n_freq_masks`` of up to ``freq_mask`` mel bins.
    """

    crop: bool = True
    p_shift: float = 0.3
    max_shift: float = 0.2
    p_speed: float = 0.5
    speed: tuple[float, float] = (0.9, 1.1)
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (10.0, 30.0)
    p_time_mask: float = 0.5
    n_time_masks: int = 2
    time_mask: int = 20
    p_freq_mask: float = 0.5
    n_freq_masks: int = 2
    freq_mask: int = 10

    @classmethod
    def none(cls) -> Augment:
        """Every augmentation off: the evaluation features."""
        return cls(crop=False, p_shift=0.0, p_speed=0.0, p_gain=0.0, p_noise=0.0, p_time_mask=0.0, p_freq_mask=0.0)

    @property
    def masks(self) -> bool:
        return self.p_time_mask > 0 or self.p_freq_mask > 0



@dataclass
class BatchDraw:
    """Random parameters of one batch, arrays [B, views]: what both backends apply.

    start, length: the crop, in samples at the file's rate (start >= 0; beyond the clip's end reads zeros);
    samples, frames: how much of the crop's output (16 kHz samples, mel frames) holds the clip, the rest
    being padding; margin: samples of context read on either side of the crop, so that the filters see no
    edge (``_MARGIN``); speed: resampling factor (0.01 steps); gain: linear; noise: colour index and offset
    into the noise bank, amplitude relative to the clip's RMS (0 = no noise), added to the clip's samples
    only; time_mask / freq_mask: [B, views, n] 1/0.
    """

    start: np.ndarray
    length: np.ndarray
    samples: np.ndarray
    frames: np.ndarray
    margin: np.ndarray
    speed: np.ndarray
    gain: np.ndarray
    color: np.ndarray
    offset: np.ndarray
    noise: np.ndarray
    time_mask: np.ndarray
    freq_mask: np.ndarray


def draw_batch(rng: np.random.Generator, options: LoaderOptions, clip_samples: np.ndarray, rates: np.ndarray,
               bank: int, windows: np.ndarray | None = None) -> BatchDraw:
    """Every random parameter of a batch of clips of ``clip_samples`` samples at ``rates`` Hz ([B] each), for
    ``options`` (its ``augment``, ``views``, ``n_frames`` and ``n_mels``) and a noise bank of ``bank`` samples.

    windows: [B] start of each clip's crop in 16 kHz samples (evaluation windows) instead of the random
    (``aug.crop``) or centre crop."""
    aug, views, n_frames, n_mels = options.augment or Augment.none(), options.views, options.n_frames, options.n_mels
    shape = (len(clip_samples), views)
    n = n_frames * HOP_LENGTH
    clip_samples, rates = clip_samples[:, None], rates[:, None]

    def maybe(p: float) -> np.ndarray:
        return rng.random(shape) < p

    low, high = round(aug.speed[0] * 100), round(aug.speed[1] * 100)
    speed = np.where(maybe(aug.p_speed), rng.integers(low, high + 1, shape), 100) / 100
    ratio = rates * speed / SAMPLE_RATE  # input samples per output sample
    length = np.ceil(n * ratio).astype(np.int64)
    margin = np.ceil(_MARGIN * ratio).astype(np.int64)
    room = np.maximum(clip_samples - length, 0)
    if windows is not None:
        start = np.broadcast_to(np.round(windows[:, None] * rates / SAMPLE_RATE).astype(np.int64), shape)
    elif aug.crop:
        start = (rng.random(shape) * (room + 1)).astype(np.int64)
    else:
        start = np.broadcast_to(room // 2, shape)
    shift = np.where(maybe(aug.p_shift), rng.uniform(-1, 1, shape) * aug.max_shift * SAMPLE_RATE, 0)
    start = np.clip(start - np.round(shift * ratio).astype(np.int64), 0, room)
    samples = np.minimum(np.ceil(np.clip(clip_samples - start, 0, length) / ratio).astype(np.int64), n)
    valid = np.maximum(clip_frames(samples, n_frames), 1)
    gain = np.where(maybe(aug.p_gain), 10 ** (rng.uniform(*aug.gain_db, shape) / 20), 1.0)
    noise = np.where(maybe(aug.p_noise), 10 ** (-rng.uniform(*aug.snr_db, shape) / 20), 0.0)
    color = rng.integers(0, len(NOISE_COLORS), shape)
    offset = rng.integers(0, bank - n + 1, shape)

    def masks(p: float, count: int, width: int, size: int) -> np.ndarray:
        on = rng.random((*shape, count)) < p
        w = np.where(on, rng.integers(0, width + 1, (*shape, count)), 0)
        first = (rng.random((*shape, count)) * (size - w + 1)).astype(np.int64)
        pos = np.arange(size)
        hit = (pos >= first[..., None]) & (pos < (first + w)[..., None])
        return 1.0 - hit.any(axis=-2)

    time_mask = masks(aug.p_time_mask, aug.n_time_masks, aug.time_mask, n_frames)
    freq_mask = masks(aug.p_freq_mask, aug.n_freq_masks, aug.freq_mask, n_mels)
    return BatchDraw(start, length, np.maximum(samples, 1), valid, margin, speed, gain.astype(np.float32), color,
                     offset, noise.astype(np.float32), time_mask.astype(np.float32), freq_mask.astype(np.float32))


def _clip_noise(bank: np.ndarray, color: int, offset: int, n: int, samples: int) -> np.ndarray:
    """[n] noise of ``color`` from ``offset`` in the bank, zero after the clip's first ``samples`` (its padding)."""
    noise = bank[color, offset: offset + n].copy()
    noise[samples:] = 0.0
    return noise


def _noise_level(d: BatchDraw, n: int) -> np.ndarray:
    """[B, views] noise amplitude per unit of the RMS of a whole window of ``n`` samples: the drawn level relative
    to the clip's own RMS, which is the window's over the ``samples`` that hold the clip (the rest is padding)."""
    return (d.noise * np.sqrt(n / d.samples)).astype(np.float32)


@lru_cache(maxsize=4)
def noise_bank(seed: int, n: int = 2**18) -> np.ndarray:
    """[len(NOISE_COLORS), n] white, pink (1/f power) and brown (1/f^2) noise, unit RMS, from ``seed``."""
    rng = np.random.default_rng([seed, 1])
    spectrum = np.fft.rfft(rng.standard_normal((len(NOISE_COLORS), n)), axis=-1)
    f = np.arange(spectrum.shape[-1], dtype=np.float64)
    f[0] = 1.0
    spectrum[1] /= np.sqrt(f)
    spectrum[2] /= f
    spectrum[1:, 0] = 0.0
    noise = np.fft.irfft(spectrum, n=n, axis=-1)
    return (noise / noise.std(axis=-1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- loaders


@dataclass(frozen=True)
class LoaderOptions:
    """How a loader batches a split (``make_loader``).

    batch_size: clips per batch; train: a new permutation every epoch and ``augment`` (None: none), else the
    rows in order, unaugmented; views: crops per clip (2 for a contrastive objective); n_frames: mel frames per
    crop (100 per second); n_mels: 80 or 128, the encoder's; windows (evaluation only): every row on windows
    covering its whole length instead of its centre crop; seed: of every random draw; backend: "auto",
    "dali" or "torch"; num_workers: DALI threads or DataLoader processes (None: min(4, CPUs)).
    """

    batch_size: int
    train: bool = False
    views: int = 1
    n_frames: int = 300
    n_mels: int = 80
    augment: Augment | None = None
    windows: bool = False
    seed: int = 0
    backend: str = "auto"
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.views < 1 or self.n_frames < 1:
            raise ValueError(f"batch_size, views, n_frames must be >= 1: {self.batch_size}, {self.views}, "
                             f"{self.n_frames}")
        if self.n_mels not in (80, 128):
            raise ValueError(f"n_mels must be 80 or 128 (Whisper's), got {self.n_mels}")
        if self.windows and self.train:
            raise ValueError("windows are for evaluation (train=False); training takes one crop per row")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: expected one of {BACKENDS}")


class Loader:
    """Batches of one shard of a dataset, one epoch per iteration; ``len()`` batches per epoch.

    Each batch: ``mel`` float32 [B, n_mels, n_frames] ([B, views, n_mels, n_frames] when views > 1),
    ``frames`` int64 [B] ([B, views]): how many of the mel frames hold the clip (a clip shorter than the crop
    is zero-padded at its end, in training as in evaluation), ``emotion`` int64 [B], ``vad`` float32 [B, 3]
    (NaN where unknown), ``index`` int64 [B] (rows of ``ds``).
    Training visits this shard's part of a permutation drawn from (seed, epoch); evaluation visits the rows
    in order. Every row of the shard comes exactly once per epoch, the last batch may be smaller.
    With ``windows`` (evaluation only) a row comes once per window instead of as one centre crop: windows
    of ``n_frames`` every ``n_frames // 2`` frames over its ``duration``, the last ending at the clip's end
    (``window_starts``, as ``predict.py`` scores files), consecutively and with the row in ``index``.
    An epoch that runs to its end advances ``epoch``; ``set_epoch`` sets it.
    """

    def __init__(self, ds: datasets.Dataset, options: LoaderOptions, *, device: str | torch.device | None = None,
                 shard_id: int = 0, num_shards: int = 1):
        columns = ["id", "audio", "emotion", "speaker", *VAD, *(["duration"] if options.windows else [])]
        check_schema(ds, "dataset", columns)
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} is not in [0, num_shards={num_shards})")
        augment = options.augment if options.train and options.augment is not None else Augment.none()
        workers = min(4, len(os.sched_getaffinity(0))) if options.num_workers is None else options.num_workers
        self.options = options = replace(options, augment=augment, num_workers=workers)
        self.ds = ds
        self.device = torch.device(device if device is not None else "cpu")
        self.shard_id, self.num_shards = shard_id, num_shards
        self.epoch = 0
        meta = ds.select_columns([c for c in columns if c != "audio"]).with_format("numpy")[:]
        self.ids = [str(i) for i in meta["id"]]
        self.speakers = np.asarray(meta["speaker"]).astype(str)
        self.emotion = np.asarray(meta["emotion"], dtype=np.int64)
        self.vad = vad_ratings(meta)
        # The items an epoch visits: the row of each, and with windows its window's start (16 kHz samples).
        self.rows, self.windows = np.arange(len(ds)), None
        if options.windows:
            n = options.n_frames * HOP_LENGTH
            lengths = np.round(np.asarray(meta["duration"], dtype=np.float64) * SAMPLE_RATE).astype(np.int64)
            starts = [window_starts(int(m), n, n // 2) for m in lengths]
            self.rows = np.repeat(self.rows, [len(w) for w in starts])
            self.windows = np.concatenate(starts).astype(np.int64)
        self.bank_size = max(2**18, 2 * options.n_frames * HOP_LENGTH)
        mel_filters(options.n_mels)  # loaded once here rather than in every worker

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """This shard's items (rows, or windows of rows) in this epoch's order."""
        order = np.arange(len(self.rows))
        if self.options.train:
            order = np.random.default_rng([self.options.seed, self.epoch]).permutation(len(self.rows))
        return np.array_split(order, self.num_shards)[self.shard_id]

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of item indices (``self.rows[items]`` are their rows)."""
        order = self.indices()
        return [order[i: i + self.options.batch_size] for i in range(0, len(order), self.options.batch_size)]

    def __len__(self) -> int:
        return math.ceil(len(np.array_split(np.arange(len(self.rows)), self.num_shards)[self.shard_id])
                         / self.options.batch_size)

    def _window_start(self, items: np.ndarray) -> np.ndarray | None:
        """The evaluation windows' 16 kHz starts of ``items``, or None (one crop per row)."""
        return None if self.windows is None else self.windows[items]

    def _rng(self, batch: int) -> np.random.Generator:
        return np.random.default_rng([self.options.seed, self.epoch, self.shard_id, batch])

    def _encoded(self, rows: np.ndarray) -> list[bytes]:
        """Encoded audio of ``rows``."""
        audio = self.ds.select_columns(["audio"])[rows.tolist()]["audio"]
        return [encoded_audio(a, self._row_name(row)) for row, a in zip(rows, audio, strict=True)]

    def _row_name(self, row: int) -> str:
        return f"row {int(row)} (id {self.ids[row]!r})"

    def _targets(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        rows = self.rows[items]
        out = {"emotion": torch.from_numpy(self.emotion[rows]), "vad": torch.from_numpy(self.vad[rows]),
               "index": torch.from_numpy(rows.astype(np.int64))}
        return {k: v.to(self.device, non_blocking=True) for k, v in out.items()}


class TorchLoader(Loader):
    """The PyTorch backend: one batch per ``DataLoader`` item, computed in ``num_workers`` processes."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = _TorchBatches(self, self.batches())
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False,
                                             num_workers=self.options.num_workers)
        for items, mel, frames in loader:
            yield {"mel": mel.to(self.device, non_blocking=True), "frames": frames.to(self.device),
                   **self._targets(items.numpy())}
        self.epoch += 1


class _TorchBatches(torch.utils.data.Dataset):
    def __init__(self, loader: TorchLoader, batches: list[np.ndarray]):
        self.loader, self.batches = loader, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items [B], mel, frames) of batch ``i``."""
        lo, items = self.loader, self.batches[i]
        rows = lo.rows[items]
        decoded = [decode_native(data, lo._row_name(row)) for row, data in zip(rows, lo._encoded(rows), strict=True)]
        clip_samples = np.array([len(a) for a, _ in decoded])
        rates = np.array([r for _, r in decoded])
        d = draw_batch(lo._rng(i), lo.options, clip_samples, rates, lo.bank_size, lo._window_start(items))
        n = lo.options.n_frames * HOP_LENGTH
        bank = noise_bank(lo.options.seed, lo.bank_size) if lo.options.augment.p_noise > 0 else None
        wave = np.zeros((len(rows), lo.options.views, n), np.float32)
        for b, (audio, rate) in enumerate(decoded):
            for v in range(lo.options.views):
                margin = d.margin[b, v]
                start, length = d.start[b, v] - margin, d.length[b, v] + 2 * margin
                crop = np.zeros(length, np.float32)
                first, last = max(start, 0), min(start + length, len(audio))
                if last > first:
                    crop[first - start: last - start] = audio[first:last]
                scale = Fraction(SAMPLE_RATE * 100, int(rate * round(d.speed[b, v] * 100)))
                x = resample(crop, scale)[round(margin * scale):][:n]
                wave[b, v, : len(x)] = x
        wave *= d.gain[..., None]
        if bank is not None:
            noise = np.stack([[_clip_noise(bank, c, o, n, s) for c, o, s in zip(cs, os, ss, strict=True)]
                              for cs, os, ss in zip(d.color, d.offset, d.samples, strict=True)])
            rms = np.sqrt((wave.astype(np.float64) ** 2).mean(axis=-1, keepdims=True)).astype(np.float32)
            wave += noise * rms * _noise_level(d, n)[..., None]
        mel = log_mel(torch.from_numpy(wave), lo.options.n_mels)
        if lo.options.augment.masks:
            mel = mel * torch.from_numpy(d.freq_mask[..., :, None] * d.time_mask[..., None, :])
        one = lo.options.views == 1
        return torch.from_numpy(items), mel[:, 0] if one else mel, torch.from_numpy(d.frames[:, 0] if one else d.frames)


class DaliLoader(Loader):
    """The DALI backend: encoded bytes go in through ``external_source``; decoding, resampling, augmentation
    and features run in one DALI graph, on the GPU after decoding when ``device`` is CUDA (else on DALI's
    CPU backend) with ``num_workers`` threads."""

    def __init__(self, ds: datasets.Dataset, options: LoaderOptions, **kw):
        super().__init__(ds, options, **kw)
        self._pipe = None
        # The epoch in progress and the graph's source hold this loader weakly: no reference cycle leaves a
        # DALI pipeline to the garbage collector, which could run it down in a forked worker (a hang).
        self._active: weakref.ref | None = None
        self._todo: deque[tuple[int, np.ndarray]] = deque()  # batches not yet handed to DALI
        self._fed: deque[tuple[np.ndarray, np.ndarray]] = deque()  # (items, frames) handed to DALI, not yet out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        previous = self._active() if self._active is not None else None
        if previous is not None:  # a previous epoch left unfinished: drain it before this one starts
            previous.close()
        epoch = self._epoch()
        self._active = weakref.ref(epoch)
        return epoch

    def _epoch(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._pipe is None:
            self._pipe = self._build()
        pipe = self._pipe
        self._todo = deque(enumerate(self.batches()))
        self._fed.clear()
        try:
            while True:
                try:
                    out = pipe.run()
                except StopIteration:
                    break
                except RuntimeError as e:
                    raise self._explain(e) from e
                items, frames = self._fed.popleft()
                yield {"mel": self._to_torch(out), "frames": torch.from_numpy(frames).to(self.device),
                       **self._targets(items)}
        except GeneratorExit:  # abandoned mid-epoch: let DALI run out of what it has prefetched
            self._todo.clear()
            with contextlib.suppress(StopIteration):
                while True:
                    pipe.run()
            raise
        except BaseException:
            self._pipe = None  # DALI's state after an error is unknown: the next epoch builds a fresh graph
            raise
        finally:
            self._active = None
            if self._pipe is pipe:
                pipe.reset()
        self.epoch += 1

    def _source(self) -> list[list[np.ndarray]]:
        """One batch of inputs for the graph (called by DALI, in order): the encoded bytes, then per view
        its crop (start, length), low-pass taps, and the active augmentations' parameters."""
        if not self._todo:
            raise StopIteration
        i, items = self._todo.popleft()
        rows = self.rows[items]
        encoded = self._encoded(rows)
        head = np.array([audio_header(data, self._row_name(row)) for row, data in zip(rows, encoded, strict=True)])
        aug, n = self.options.augment, self.options.n_frames * HOP_LENGTH
        d = draw_batch(self._rng(i), self.options, head[:, 0], head[:, 1], self.bank_size, self._window_start(items))
        self._fed.append((items, d.frames[:, 0] if self.options.views == 1 else d.frames))
        bank = noise_bank(self.options.seed, self.bank_size) if aug.p_noise > 0 else None
        level = _noise_level(d, n)
        out = [[np.frombuffer(data, np.uint8) for data in encoded]]
        for v in range(self.options.views):
            out.append([np.array([s], np.int32) for s in d.start[:, v] - d.margin[:, v]])
            out.append([np.array([s], np.int32) for s in d.length[:, v] + 2 * d.margin[:, v]])
            ratio = head[:, 1] * d.speed[:, v] / SAMPLE_RATE
            out.append([lowpass_taps(float(r))[None] for r in ratio])
            out.append([np.array(r != 1) for r in ratio])  # resample?
            out.append([np.array(r > 1) for r in ratio])  # low-pass first?
            if aug.p_gain > 0:
                out.append(list(d.gain[:, v]))
            if bank is not None:
                out.append([_clip_noise(bank, c, o, n, s)
                            for c, o, s in zip(d.color[:, v], d.offset[:, v], d.samples[:, v], strict=True)])
                out.append(list(level[:, v]))
            if aug.masks:
                out.append(list(d.freq_mask[:, v, :, None]))
                out.append(list(d.time_mask[:, v, None, :]))
        return out

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath
        from nvidia.dali.pipeline import do_not_convert

        aug, gpu = self.options.augment, self.device.type == "cuda"
        loader = weakref.ref(self)
        source = do_not_convert(lambda: loader()._source())  # plain Python, outside DALI's AutoGraph
        per_view = 5 + (aug.p_gain > 0) + 2 * (aug.p_noise > 0) + 2 * aug.masks
        window = torch.hann_window(N_FFT).tolist()  # periodic, as Whisper's; DALI's default differs
        n = self.options.n_frames * HOP_LENGTH

        @pipeline_def(batch_size=self.options.batch_size, num_threads=max(self.options.num_workers, 1),
                      device_id=(self.device.index or 0) if gpu else None, seed=self.options.seed,
                      prefetch_queue_depth=2, enable_conditionals=True)
        def graph():
            inputs = fn.external_source(source=source, num_outputs=1 + self.options.views * per_view, batch=True)
            audio, _ = fn.decoders.audio(inputs[0], downmix=True, dtype=types.FLOAT)
            if gpu:
                audio = audio.gpu()
            mels = []
            for v in range(self.options.views):
                view = inputs[1 + v * per_view: 1 + (v + 1) * per_view]
                start, length, taps, resample, lowpass, *rest = view
                x = fn.slice(audio, start, length, axes=[0], out_of_bounds_policy="pad")
                if resample:  # per sample: only the clips that need it pay for the filters
                    if lowpass:
                        x = fn.filter(fn.reshape(x, shape=[1, -1], layout="HW"), taps, border="constant")
                        x = fn.reshape(x, shape=[-1])
                    x = fn.audio_resample(x, out_length=n + 2 * _MARGIN)
                x = x[_MARGIN: _MARGIN + n]
                if aug.p_gain > 0:
                    x = x * (rest.pop(0).gpu() if gpu else rest.pop(0))
                if aug.p_noise > 0:
                    noise, amp = (t.gpu() if gpu else t for t in (rest.pop(0), rest.pop(0)))
                    x = x + noise * (dmath.sqrt(fn.reductions.mean_square(x)) * amp)
                spec = fn.spectrogram(x, nfft=N_FFT, window_length=N_FFT, window_step=HOP_LENGTH,
                                      window_fn=window, center_windows=True, reflect_padding=True, power=2)
                mel = fn.mel_filter_bank(spec, sample_rate=SAMPLE_RATE, nfilter=self.options.n_mels,
                                         freq_high=SAMPLE_RATE / 2, mel_formula="slaney", normalize=True)
                # log10(max(mel, 1e-10)), the last frame dropped as Whisper does
                log = fn.to_decibels(mel, multiplier=1.0, reference=1.0, cutoff_db=-10.0)[:, :-1]
                log = (dmath.max(log, fn.reductions.max(log) - 8.0) + 4.0) / 4.0
                if aug.masks:
                    freq, time = (t.gpu() if gpu else t for t in (rest.pop(0), rest.pop(0)))
                    log = log * freq * time
                mels.append(log)
            return tuple(mels)

        pipe = graph()
        pipe.build()
        return pipe

    def _to_torch(self, out) -> torch.Tensor:
        """DALI outputs (one per view) -> [B, n_mels, n_frames] or [B, views, n_mels, n_frames], on device."""
        mels = []
        for tl in out:
            if self.device.type == "cuda":
                from nvidia.dali.plugin.pytorch import feed_ndarray

                t = tl.as_tensor()
                mel = torch.empty(t.shape(), dtype=torch.float32, device=self.device)
                feed_ndarray(t, mel, cuda_stream=torch.cuda.current_stream(self.device))
            else:
                mel = torch.from_numpy(np.array(tl.as_tensor()))
            mels.append(mel)
        return mels[0] if self.options.views == 1 else torch.stack(mels, dim=1)

    def _explain(self, error: RuntimeError) -> Exception:
        """DALI's error -> AudioError naming the rows in flight that soundfile cannot decode either."""
        rows = list(dict.fromkeys(int(row) for items, _ in self._fed for row in self.rows[items]))
        bad = []
        for row, data in zip(rows, self._encoded(np.array(rows, dtype=np.int64)), strict=True):
            try:
                decode_native(data, self._row_name(row))
            except AudioError as e:
                bad.append(str(e))
        if bad:
            return AudioError("; ".join(bad))
        where = ", ".join(self._row_name(row) for row in rows)
        return RuntimeError(f"DALI failed on a batch holding {where}: {error}")


def make_loader(ds: datasets.Dataset, options: LoaderOptions, *, device: str | torch.device | None = None,
                shard_id: int = 0, num_shards: int = 1) -> Loader:
    """Batches of ``ds`` as ``options`` say (see ``Loader``), on ``device`` (default: the CPU), of shard
    ``shard_id`` of ``num_shards`` (a process's part of every split under torchrun). The backend is
    ``options.backend``: "dali", "torch", or "auto": DALI when it runs on this machine and ``device``
    (``dali_problem``), else torch."""
    backend = options.backend
    if backend == "auto":
        backend = choose_backend(torch.device(device if device is not None else "cpu"))
    kind = DaliLoader if backend == "dali" else TorchLoader
    return kind(ds, options, device=device, shard_id=shard_id, num_shards=num_shards)


@cache
def dali_problem(device: torch.device) -> str | None:
    """Why DALI cannot load batches on ``device`` here (not installed, or a pipeline fails to run), or None."""
    try:
        from nvidia.dali import fn, pipeline_def

        gpu = device.type == "cuda"

        @pipeline_def(batch_size=1, num_threads=1, device_id=(device.index or 0) if gpu else None)
        def probe():
            x = fn.constant(fdata=[1.0])
            return x.gpu() if gpu else x

        pipe = probe()
        pipe.build()
        pipe.run()
    except Exception as e:  # ImportError, or whatever DALI raises on a machine it does not support
        return f"{type(e).__name__}: {e}"
    return None


@cache
def choose_backend(device: torch.device) -> str:
    """``backend="auto"``: "dali" when ``dali_problem`` finds none, else "torch"; says which on stderr, once."""
    problem = dali_problem(device)
    print(f"data loader: {'torch (DALI does not run here: ' + problem + ')' if problem else 'DALI'} on {device}",
          file=sys.stderr)
    return "torch" if problem else "dali"
