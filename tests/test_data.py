"""data.py on real files: both loaders (real DALI on its CPU backend, real DataLoader) against openai-whisper's
features, epochs, shards, seeds, augmentation, resampling without aliasing, bad input, corpora."""

from __future__ import annotations

import dataclasses
import io

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
from conftest import encode, sound

import audio
import data
from labels import FOUR_CLASS, label_names, merge_label_names

BACKENDS = ("dali", "torch")
N_FRAMES = 100  # 1 s crops keep the tests fast
RNG = np.random.default_rng(0)


def corpus(files: list[bytes], labels: list[str], names: list[str], *, ids: list[str] | None = None,
           drop: str | None = None, corpus_name: str = "test") -> datasets.Dataset:
    """A dataset in prepare.py's schema holding the encoded ``files``; ``drop`` leaves a column out."""
    n = len(files)
    columns = {
        "id": ids or [f"{corpus_name}_{i:02d}" for i in range(n)],
        "audio": [{"bytes": a, "path": f"{i}.wav"} for i, a in enumerate(files)],
        "emotion": [names.index(label) for label in labels],
        "valence": [0.1 * i for i in range(n)], "arousal": [0.5] * n, "dominance": [np.nan] * n,
        "speaker": [f"s{i % 2}" for i in range(n)], "corpus": [corpus_name] * n,
        "duration": [1.0] * n, "extra": ["x"] * n,
    }
    features = datasets.Features({
        "id": datasets.Value("string"),
        "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        "emotion": datasets.ClassLabel(names=names), "valence": datasets.Value("float32"),
        "arousal": datasets.Value("float32"), "dominance": datasets.Value("float32"),
        "speaker": datasets.Value("string"), "corpus": datasets.Value("string"),
        "duration": datasets.Value("float32"), "extra": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds = ds.cast_column("audio", datasets.Audio(decode=False))  # how prepare.py stores the original bytes
    return ds.remove_columns(drop) if drop else ds


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Seven clips of 0.5-2 s (shorter and longer than the crop), 16 kHz, as 16-bit files hold them."""
    return [sf.read(io.BytesIO(encode(sound(0.5 + 0.25 * i, pitch=120 + 20 * i))), dtype="float32")[0]
            for i in range(7)]


@pytest.fixture(scope="module")
def small(clips) -> datasets.Dataset:
    labels = ["neutral", "happy", "sad", "angry", "sad", "sad", "sad"]
    return corpus([encode(x) for x in clips], labels, FOUR_CLASS)


def loader(ds, backend, shard_id=0, num_shards=1, **kw):
    """``data.make_loader`` of ``ds`` on ``backend`` with ``LoaderOptions(**kw)`` (3 clips a batch, 1 s crops)."""
    kw = {"batch_size": 3, "n_frames": N_FRAMES, "num_workers": int(backend == "dali"), **kw}
    return data.make_loader(ds, data.LoaderOptions(backend=backend, **kw), shard_id=shard_id, num_shards=num_shards)


def rows(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def whisper_eval(x: np.ndarray, n_frames: int, n_mels: int) -> torch.Tensor:
    """Whisper's own log-mel of the evaluation crop (centre, or zero-padded at the end)."""
    n = n_frames * data.HOP_LENGTH
    start = max(len(x) - n, 0) // 2
    return whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(x[start:], n)), n_mels)


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_mels", [80, 128])
def test_loader_features_are_whispers(backend, n_mels, small, clips):
    batches = list(loader(small, backend, n_mels=n_mels))
    mel = torch.cat([b["mel"] for b in batches])
    ref = torch.stack([whisper_eval(x, N_FRAMES, n_mels) for x in clips])
    assert mel.shape == ref.shape == (len(clips), n_mels, N_FRAMES)
    assert (mel - ref).abs().max() <= 1e-4
    features = torch.stack([audio.eval_features(torch.from_numpy(x), N_FRAMES, n_mels) for x in clips])
    assert (features - ref).abs().max() <= 1e-4  # predict.py's features of a clip are the loaders'


def test_48khz_and_16khz_files_of_one_sound_give_the_same_features():
    """The 48 kHz file also holds a loud 12 kHz tone: it must be filtered out, not folded to 4 kHz."""
    # float files: 16-bit quantisation noise alone (spread over 24 kHz in one, 8 kHz in the other) moves
    # the quietest bins by ~1e-3
    files = [encode(sound(1.6), subtype="FLOAT"), encode(sound(1.6, 48000, tone_hz=12000), 48000, subtype="FLOAT")]
    ds = corpus(files, ["happy", "happy"], FOUR_CLASS)
    for backend in BACKENDS:
        mel = next(iter(loader(ds, backend, batch_size=2)))["mel"]
        # without the anti-aliasing low-pass, the 12 kHz tone folds to 4 kHz, far above this bound
        assert (mel[0] - mel[1]).abs().max() <= 1e-3, backend


# ----------------------------------------------------------------------------- batches and epochs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("views", [1, 2])
def test_batch_contract(backend, views, small):
    ld = loader(small, backend, views=views, train=True, augment=data.Augment())
    batches = list(ld)
    assert len(ld) == len(batches) == 3 and [len(b["index"]) for b in batches] == [3, 3, 1]
    b = batches[0]
    assert set(b) == {"mel", "frames", "emotion", "vad", "index"}
    shape = (3, 80, N_FRAMES) if views == 1 else (3, views, 80, N_FRAMES)
    assert b["frames"].shape == shape[:-2] and b["frames"].dtype == torch.int64
    assert ((b["frames"] >= 1) & (b["frames"] <= N_FRAMES)).all()
    assert b["mel"].shape == shape and b["mel"].dtype == torch.float32 and b["mel"].device.type == "cpu"
    assert b["emotion"].dtype == b["index"].dtype == torch.int64 and b["vad"].dtype == torch.float32
    assert b["vad"].shape == (3, 3) and b["vad"][:, 2].isnan().all()
    i = b["index"].numpy()
    assert b["emotion"].tolist() == [small[int(j)]["emotion"] for j in i]
    assert b["vad"][:, 0].numpy() == pytest.approx(0.1 * i, abs=1e-6)
    assert torch.isfinite(b["mel"]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_count_the_clip_and_the_padding_stays_silent_under_noise(backend, small, clips):
    """Clips of 0.5-2 s in 1 s crops: ``frames`` counts the mel frames of the clip, padding comes after them
    (evaluation and training alike), and training noise goes on the clip only."""
    expected = [min(N_FRAMES, -(-len(x) // audio.HOP_LENGTH)) for x in clips]
    noisy = data.Augment(crop=False, p_shift=1.0, p_speed=0.0, p_gain=0.0, p_noise=1.0, p_time_mask=0.0,
                         p_freq_mask=0.0)
    for train, augment in ((False, None), (True, noisy)):
        batches = list(loader(small, backend, train=train, augment=augment))
        index = torch.cat([b["index"] for b in batches]).tolist()
        frames = torch.cat([b["frames"] for b in batches])
        assert frames.tolist() == [expected[i] for i in index], train
        for mel, n in zip(torch.cat([b["mel"] for b in batches]), frames.tolist(), strict=True):
            if n < N_FRAMES - 2:  # after the clip (and the 2 frames whose 400-sample windows reach into it): silence
                assert (mel[:, n + 2:] == mel.min()).all() and (mel[:, : n - 1] > mel.min()).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_row_once_per_epoch_last_batch_kept(backend, small):
    ev = loader(small, backend)
    assert rows(ev) == [[0, 1, 2], [3, 4, 5], [6]] == rows(ev)
    tr = loader(small, backend, train=True)
    first, second = rows(tr), rows(tr)  # a finished epoch advances the epoch counter
    for epoch in (first, second):
        assert sorted(sum(epoch, [])) == list(range(7)) and [len(b) for b in epoch] == [3, 3, 1]
    assert first != second and tr.epoch == 2
    tr.set_epoch(0)
    assert rows(tr) == first


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluation_windows_cover_each_clip(backend):
    """windows=True: 1 s windows every 0.5 s, the last ending at the clip's end; each is Whisper's log-mel of
    that stretch of the clip; a row's windows come together, under its index; shards split the windows."""
    seconds = [0.6, 1.0, 2.35]
    clips = [sf.read(io.BytesIO(encode(sound(t, pitch=130 + 40 * i))), dtype="float32")[0]
             for i, t in enumerate(seconds)]
    ds = corpus([encode(x) for x in clips], ["sad"] * 3, FOUR_CLASS)
    ds = ds.map(lambda row, i: {"duration": seconds[i]}, with_indices=True)
    ld = loader(ds, backend, batch_size=4, windows=True)
    batches = list(ld)
    assert len(ld) == len(batches) == 2 and rows(batches) == [[0, 1, 2, 2], [2, 2]]
    n = N_FRAMES * audio.HOP_LENGTH
    assert audio.window_starts(len(clips[2]), n, n // 2) == [0, 8000, 16000, 21600]
    ref = [whisper_eval(x, N_FRAMES, 80) for x in clips[:2]]
    ref += [whisper_eval(clips[2][start: start + n], N_FRAMES, 80) for start in (0, 8000, 16000, 21600)]
    mel = torch.cat([b["mel"] for b in batches])
    assert (mel - torch.stack(ref)).abs().max() <= 1e-4
    shards = [rows(loader(ds, backend, batch_size=4, windows=True, shard_id=k, num_shards=2)) for k in range(2)]
    assert sorted(sum(sum(shards, []), [])) == [0, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="windows are for evaluation"):
        loader(ds, backend, windows=True, train=True)


def test_shards_are_disjoint_and_complete():
    ds = corpus([encode(sound(0.3))] * 11, ["sad"] * 11, FOUR_CLASS)
    for train in (False, True):
        shards = [loader(ds, "dali", batch_size=2, train=train, shard_id=k, num_shards=3) for k in range(3)]
        seen = [sum(rows(s), []) for s in shards]
        assert [len(s) for s in shards] == [len(range(0, len(x), 2)) for x in seen]
        assert sorted(sum(seen, [])) == list(range(11))
    with pytest.raises(ValueError, match="shard_id 3"):
        loader(ds, "dali", shard_id=3, num_shards=3)


def test_abandoned_epoch_does_not_leak_into_the_next(small):
    ld = loader(small, "dali", batch_size=2)
    it = iter(ld)
    next(it)
    assert rows(ld) == [[0, 1], [2, 3], [4, 5], [6]]


# ----------------------------------------------------------------------------- augmentation and seeds


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_and_seeds(backend, small):
    def mels(seed, augment):
        return torch.cat([b["mel"] for b in loader(small, backend, train=True, views=2, seed=seed,
                                                   augment=augment)])

    aug = mels(1, data.Augment())
    assert (aug[:, 0] - aug[:, 1]).abs().amax(dim=(1, 2)).min() > 0.01  # every clip's two views differ
    assert torch.equal(aug, mels(1, data.Augment()))  # same seed, same batches
    assert not torch.equal(aug, mels(2, data.Augment()))
    plain = mels(1, None)
    assert torch.equal(plain[:, 0], plain[:, 1])
    # evaluation ignores augmentation
    ev = [torch.cat([b["mel"] for b in loader(small, backend, augment=a)]) for a in (None, data.Augment())]
    assert torch.equal(*ev)


def test_worker_processes_give_the_same_batches(small):
    kw = {"train": True, "views": 2, "seed": 3, "augment": data.Augment()}
    one, two = (torch.cat([b["mel"] for b in loader(small, "torch", num_workers=w, **kw)]) for w in (0, 2))
    assert torch.equal(one, two)


def test_each_augmentation_changes_the_features_and_none_matches_evaluation(small):
    first = next(iter(loader(small, "torch", train=True, augment=data.Augment.none())))
    base = first["mel"]
    evaluation = torch.cat([b["mel"] for b in loader(small, "torch")])
    assert torch.equal(base, evaluation[first["index"]])
    off = data.Augment.none()
    for change in ({"crop": True}, {"p_shift": 1.0}, {"p_speed": 1.0}, {"p_gain": 1.0}, {"p_noise": 1.0},
                   {"p_time_mask": 1.0}, {"p_freq_mask": 1.0}):
        for backend in BACKENDS:
            mel = next(iter(loader(small, backend, train=True, augment=dataclasses.replace(off, **change))))
            assert (mel["mel"] - base).abs().max() > 1e-2, (change, backend)


def test_backends_draw_the_same_augmentations(small):
    """Same random parameters on both backends; only their resamplers differ."""
    kw = {"train": True, "views": 2, "seed": 5, "augment": data.Augment()}
    dali, torch_ = (torch.cat([b["mel"] for b in loader(small, backend, **kw)]) for backend in BACKENDS)
    assert (dali - torch_).abs().mean() < 0.01
    masked = torch_ == 0
    assert masked.any() and torch.equal(masked, dali == 0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_rows_are_named(backend, clips):
    flac = bytearray(encode(clips[3], fmt="FLAC"))
    flac[200:] = RNG.integers(0, 256, len(flac) - 200, dtype=np.uint8).tobytes()  # valid header, bad frames
    for bad, name in ((b"RIFF" + bytes(64), "garbage_wav"), (bytes(flac), "broken_flac")):
        files = [encode(x) for x in clips[:4]]
        files[2] = bad
        ds = corpus(files, ["sad"] * 4, FOUR_CLASS, ids=["a", "b", name, "d"])
        with pytest.raises(audio.AudioError, match=f"row 2 \\(id '{name}'\\)"):
            list(loader(ds, backend))


def test_missing_or_mistyped_columns_are_named(small, tmp_path):
    for column in ("audio", "valence", "id"):
        with pytest.raises(ValueError, match=f"'{column}' is missing"):
            data.make_loader(small.remove_columns(column), data.LoaderOptions(batch_size=2))
    mistyped = small.cast_column("emotion", datasets.Value("int64"))
    with pytest.raises(ValueError, match="'emotion' is"):
        data.make_loader(mistyped, data.LoaderOptions(batch_size=2))
    datasets.DatasetDict({"train": small.remove_columns("speaker")}).save_to_disk(str(tmp_path / "c"))
    with pytest.raises(ValueError, match=f"{tmp_path / 'c'} \\[train\\]: column 'speaker' is missing"):
        data.load_corpus(tmp_path / "c", "train")
    with pytest.raises(KeyError, match="no split 'test'"):
        data.load_corpus(tmp_path / "c", "test")


# ----------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory, clips) -> list[str]:
    out = tmp_path_factory.mktemp("corpora")
    files = [encode(x) for x in clips[:4]]
    rav = corpus(files, ["calm", "happy", "disgusted", "neutral"], label_names("ravdess"),
                 corpus_name="ravdess")
    iem = corpus(files, ["excited", "frustrated", "angry", "sad"], label_names("iemocap"),
                 corpus_name="iemocap")
    paths = []
    for name, ds in (("ravdess", rav), ("iemocap", iem)):
        datasets.DatasetDict({"train": ds}).save_to_disk(str(out / name))
        paths.append(str(out / name))
    return paths


def test_combined_corpora_are_reindexed_by_name(two_corpora):
    ds = data.load_corpus(two_corpora, "train")
    names = ds.features["emotion"].names
    assert names == merge_label_names([label_names("ravdess"), label_names("iemocap")])
    assert [names[e] for e in ds["emotion"]] == ["calm", "happy", "disgusted", "neutral",
                                                 "excited", "frustrated", "angry", "sad"]
    assert ds.column_names == list(data.COLUMNS) and ds["corpus"] == ["ravdess"] * 4 + ["iemocap"] * 4
    batch = next(iter(loader(ds, "dali", batch_size=8)))
    assert batch["emotion"].tolist() == ds["emotion"]


def test_four_class_keeps_mapped_rows_and_reports_the_rest(two_corpora, capsys):
    ds = data.load_corpus(two_corpora, "train", four_class=True)
    assert ds.features["emotion"].names == FOUR_CLASS
    assert [FOUR_CLASS[e] for e in ds["emotion"]] == ["happy", "neutral", "happy", "angry", "sad"]
    assert ds["id"] == ["ravdess_01", "ravdess_03", "iemocap_00", "iemocap_02", "iemocap_03"]
    report = capsys.readouterr().err
    assert "kept 5 of 8 rows, dropped 3" in report and "'calm': 1" in report and "'frustrated': 1" in report


@pytest.fixture(scope="module")
def msp_and_iemocap(tmp_path_factory, clips) -> list[str]:
    """MSP-Podcast- and IEMOCAP-like corpora, each with an "other" and a "no agreement" row."""
    out = tmp_path_factory.mktemp("not_emotions")
    paths = []
    for name, labels in (("msp_podcast", ["angry", "other", "no_agreement", "contempt"]),
                         ("iemocap", ["no_agreement", "frustrated", "other", "sad"])):
        ds = corpus([encode(x) for x in clips[:4]], labels, label_names(name), corpus_name=name)
        datasets.DatasetDict({"train": ds}).save_to_disk(str(out / name))
        paths.append(str(out / name))
    return paths


def test_labels_that_are_not_emotions_are_left_out_unless_asked(msp_and_iemocap, capsys):
    for path in msp_and_iemocap:
        ds = data.load_corpus(path, "train")
        names = ds.features["emotion"].names
        assert {"other", "no_agreement"} <= set(names)  # the label space keeps them
        assert len(ds) == 2 and not {names[e] for e in ds["emotion"]} & {"other", "no_agreement"}
        assert "left out 2 of 4 rows {'no_agreement': 1, 'other': 1}" in capsys.readouterr().err
        assert len(data.load_corpus(path, "train", exclude=())) == 4
    both = data.load_corpus(msp_and_iemocap, "train")  # combined: neither corpus's "other" becomes a class
    assert sorted(both.features["emotion"].names[e] for e in both["emotion"]) == ["angry", "contempt",
                                                                                  "frustrated", "sad"]
    assert len(data.load_corpus(msp_and_iemocap, "train", exclude=())) == 8


def test_synthetic_corpus_from_disk(synthetic_dir):
    ds = data.load_corpus(synthetic_dir, "validation")
    ld = data.make_loader(ds, data.LoaderOptions(batch_size=16, n_frames=N_FRAMES, num_workers=1))
    assert sorted(sum(rows(ld), [])) == list(range(len(ds)))


def test_auto_backend_is_dali_where_it_runs_and_says_so(small, capsys):
    data.choose_backend.cache_clear()
    assert data.dali_problem(torch.device("cpu")) is None  # nvidia-dali is a requirement: it runs here
    assert isinstance(data.make_loader(small, data.LoaderOptions(batch_size=4, n_frames=N_FRAMES)), data.DaliLoader)
    assert "data loader: DALI on cpu" in capsys.readouterr().err
    problem = data.dali_problem(torch.device("cuda", 7))  # no such GPU here (nor, in CI, any)
    assert problem is not None and problem.split(":")[0].endswith(("Error", "Exception"))
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        data.LoaderOptions(batch_size=4, backend="jax")
