"""predict.py: sliding windows over whole files, the Predictor API and the command line agree,
bad files and bad checkpoints get one clear line each."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import random_model

import audio
import checkpoint as checkpoints
import predict
from labels import VAD, label_names

N_FRAMES = 100  # a 1 s context keeps training fast; windows are then 1 s, hop 0.5 s


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved model (random tiny encoder, mean pooling, VAD head) over the synthetic corpus's labels."""
    path = tmp_path_factory.mktemp("predict_run") / "best.pt"
    checkpoints.save_model(random_model(pooling="mean", n_frames=N_FRAMES, labels=label_names("synthetic")), path)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint) -> predict.Predictor:
    return predict.Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def speech(synthetic_dir) -> np.ndarray:
    """About 7 s of the synthetic corpus's test clips, end to end, at 16 kHz."""
    rows = datasets.load_from_disk(str(synthetic_dir))["test"]
    clips = [sf.read(io.BytesIO(rows[i]["audio"]["bytes"]), dtype="float32")[0] for i in range(3)]
    return np.concatenate(clips)[: 7 * 16000]


@pytest.fixture(scope="module")
def audio_dir(speech, tmp_path_factory) -> Path:
    """Good files: 16 and 48 kHz, mono and stereo, shorter and longer than the 1 s context, in a tree."""
    root = tmp_path_factory.mktemp("audio")
    (root / "sub").mkdir()
    long48 = _resample(speech[: 3 * 16000 + 5000], 3)  # 3.3125 s
    sf.write(root / "short_16k_mono.wav", speech[:9600], 16000)  # 0.6 s
    sf.write(root / "long_16k_stereo.flac", np.stack([speech, 0.5 * speech], 1), 16000)  # 7 s
    sf.write(root / "sub" / "long_48k_stereo.wav", np.stack([long48, long48], 1), 48000)
    sf.write(root / "sub" / "short_48k_mono.ogg", _resample(speech[16000:28000], 3), 48000)  # 0.75 s
    (root / "notes.txt").write_text("not audio, and not picked up from a directory")
    return root


def _resample(x: np.ndarray, factor: int) -> np.ndarray:
    """Upsample by an integer factor (band-limited): a test signal at 48 kHz."""
    import scipy.signal

    return scipy.signal.resample_poly(x, factor, 1).astype(np.float32)


@pytest.fixture
def run_cli(capsys):
    """predict.py's command line, in process: ``run_cli(*args)`` -> (exit status, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        status = predict.main(list(args))
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def test_long_file_windows_cover_it_and_average(predictor, audio_dir):
    pred = predictor.predict(audio_dir / "sub" / "long_48k_stereo.wav")
    assert pred.duration == pytest.approx(3.3125, abs=1e-4)
    starts = [w.start for w in pred.windows]
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.3125])  # the last one aligned to the end
    assert pred.windows[-1].end == pytest.approx(pred.duration)
    assert all(w.end - w.start == pytest.approx(1.0) for w in pred.windows)
    assert all(b.start <= a.end for a, b in itertools.pairwise(pred.windows))  # no gaps
    mean = np.mean([[w.probabilities[k] for k in predictor.labels] for w in pred.windows], 0)
    assert [pred.probabilities[k] for k in predictor.labels] == pytest.approx(mean.tolist(), abs=1e-6)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label == max(pred.probabilities, key=pred.probabilities.get)
    assert set(pred.vad) == set(VAD)
    assert pred.vad["arousal"] == pytest.approx(np.mean([w.vad["arousal"] for w in pred.windows]), abs=1e-6)
    assert pred.embedding.shape == (predictor.net.config.dims.n_audio_state,)


def test_short_clip_is_one_zero_padded_window_as_in_training(predictor, speech):
    """A clip shorter than the context: the model's output on the evaluation features of audio.py, pooled over
    the 60 frames that hold the clip, as the loaders' ``frames`` say."""
    clip = speech[:9600]
    pred = predictor.predict(clip, sample_rate=16000)
    assert len(pred.windows) == 1 and pred.windows[0].end == pytest.approx(0.6)
    mel = audio.eval_features(torch.from_numpy(clip), N_FRAMES, predictor.net.config.n_mels)
    with torch.no_grad():
        probs = predictor.net(mel[None], torch.tensor([60]))["logits"].softmax(-1)[0].numpy()
        padding_pooled = predictor.net(mel[None])["logits"].softmax(-1)[0].numpy()
    assert [pred.probabilities[k] for k in predictor.labels] == pytest.approx(probs.tolist(), abs=1e-6)
    assert np.abs(probs - padding_pooled).max() > 1e-4


def test_sample_rate_and_channels(predictor, audio_dir, speech):
    """An array at 48 kHz is resampled like a file at 48 kHz; a stereo file is downmixed."""
    wav, sr = sf.read(audio_dir / "sub" / "long_48k_stereo.wav", dtype="float32")
    from_file = predictor.predict(audio_dir / "sub" / "long_48k_stereo.wav")
    from_array = predictor.predict(wav, sample_rate=sr)
    assert from_array.probabilities == pytest.approx(from_file.probabilities, abs=1e-5)
    # the same speech at 16 kHz: resampling 48 -> 16 kHz keeps the prediction close
    at_16k = predictor.predict(speech[: 3 * 16000 + 5000], sample_rate=16000)
    assert at_16k.probabilities == pytest.approx(from_file.probabilities, abs=0.05)
    with pytest.raises(ValueError, match="sample_rate"):
        predictor.predict(speech)


def test_cli_json_agrees_with_the_api(predictor, checkpoint, audio_dir, run_cli):
    status, stdout, stderr = run_cli("--checkpoint", str(checkpoint), "--format", "json", "--per-window",
                                     "--batch-size", "3", "--device", "cpu", str(audio_dir))
    assert status == 0, stderr
    out = json.loads(stdout)
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    assert [r["file"] for r in out] == [str(p) for p in files]  # notes.txt is not audio
    for row, path in zip(out, files, strict=True):
        api = predictor.predict(path)
        assert row["label"] == api.label
        assert row["probabilities"] == pytest.approx(api.probabilities, abs=1e-5)
        assert row["vad"] == pytest.approx(api.vad, abs=1e-5)
        assert [(w["start"], w["end"]) for w in row["windows"]] == [(w.start, w.end) for w in api.windows]


def test_bad_files_are_reported_and_the_good_ones_predicted(predictor, checkpoint, audio_dir, tmp_path, run_cli):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)
    (tmp_path / "empty.flac").write_bytes(b"")
    sf.write(tmp_path / "silent_zero_length.wav", np.zeros(0, np.float32), 16000)
    good = [audio_dir / "short_16k_mono.wav", audio_dir / "sub" / "long_48k_stereo.wav"]
    bad = [tmp_path / "corrupt.wav", tmp_path / "empty.flac", tmp_path / "silent_zero_length.wav",
           audio_dir / "notes.txt", tmp_path / "missing.wav"]
    inputs = [good[0], *bad[:3], good[1], *bad[3:]]
    emb = tmp_path / "out" / "emb.npy"
    status, stdout, stderr = run_cli("--checkpoint", str(checkpoint), "--format", "csv", "--embeddings", str(emb),
                                     *map(str, inputs))
    assert status == 1
    for path in bad:
        lines = [line for line in stderr.splitlines() if str(path) in line]
        assert len(lines) == 1 and lines[0].startswith("predict.py: error:"), stderr
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["file"] for r in rows] == [str(p) for p in good]
    assert set(predictor.labels) | set(VAD) <= set(rows[0])

    matrix = np.load(emb)
    index = list(csv.DictReader(open(emb.with_suffix(".csv"))))
    assert matrix.dtype == np.float32 and matrix.shape == (2, predictor.net.config.dims.n_audio_state)
    assert [r["file"] for r in index] == [str(p) for p in good]
    for row, path in zip(matrix, good, strict=True):
        np.testing.assert_allclose(row, predictor.predict(path).embedding, atol=1e-5)


def test_table_per_window(checkpoint, audio_dir, tmp_path, capsys):
    index = tmp_path / "names.csv"
    status = predict.main(["--checkpoint", str(checkpoint), "--per-window", "--hop", "0.25", "--embeddings",
                           str(tmp_path / "e.npy"), "--embeddings-index", str(index),
                           str(audio_dir / "short_16k_mono.wav"), str(audio_dir / "long_16k_stereo.flac")])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["file", "window", "start_s", "end_s", "label"]
    assert len(lines) == 1 + (1 + 1) + (1 + 25)  # header; short: file + 1 window; 7 s, hop 0.25: 25 windows
    assert lines[-1].split()[1:4] == ["24", "6.00", "7.00"]
    assert len(list(csv.reader(open(index)))) == 3


@pytest.mark.parametrize("kind", ["garbage", "foreign", "missing"])
def test_bad_checkpoint_is_a_clear_error(kind, audio_dir, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, path)
    assert predict.main(["--checkpoint", str(path), str(audio_dir / "short_16k_mono.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"predict.py: error: cannot load checkpoint {path}: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_model_without_a_vad_head_says_so(tmp_path, audio_dir, run_cli):
    path = tmp_path / "no_vad.pt"
    checkpoints.save_model(random_model(pooling="mean", n_frames=N_FRAMES, vad_head=False,
                                        labels=label_names("synthetic")), path)
    status, stdout, stderr = run_cli("--checkpoint", str(path), str(audio_dir / "short_16k_mono.wav"))
    assert status == 0 and f"no valence/arousal/dominance: {path} has no VAD head" in stderr
    assert "valence" not in stdout.splitlines()[0]


@pytest.mark.parametrize("args, message", [(["--batch-size", "0"], "batch_size must be at least 1, got 0"),
                                           (["--hop", "2"], "hop (32000 samples) must be positive and at most"),
                                           (["--hop", "x"], "argument --hop: invalid float value: 'x'"),
                                           (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
                                           (["--min-confidence", "1"], "min_confidence must be between 0 and 1"),
                                           (["--min-confidence", "0"], "min_confidence must be between 0 and 1")])
def test_bad_arguments_are_one_line(args, message, checkpoint, audio_dir, capsys):
    try:
        status = predict.main(["--checkpoint", str(checkpoint), *args, str(audio_dir / "short_16k_mono.wav")])
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_min_confidence_labels_uncertain_below_it_and_keeps_the_probabilities(checkpoint, audio_dir, run_cli):
    """A random model is unsure of everything: above its top probability every file and window is uncertain,
    below it none is, and the probabilities are the same either way."""
    path = str(audio_dir / "long_16k_stereo.flac")
    plain = predict.Predictor.from_checkpoint(checkpoint, device="cpu").predict(path)
    top = max(plain.probabilities.values())
    unsure = predict.Predictor.from_checkpoint(checkpoint, device="cpu", min_confidence=top + 1e-3).predict(path)
    sure = predict.Predictor.from_checkpoint(checkpoint, device="cpu", min_confidence=top - 1e-3).predict(path)
    assert unsure.label == predict.UNCERTAIN and sure.label == plain.label != predict.UNCERTAIN
    assert unsure.probabilities == plain.probabilities
    for w, p in zip(unsure.windows, plain.windows, strict=True):
        assert w.label == (predict.UNCERTAIN if max(p.probabilities.values()) < top + 1e-3 else p.label)
    status, out, _ = run_cli("--checkpoint", str(checkpoint), "--min-confidence", f"{top + 1e-3}", "--format", "json",
                             path)
    (row,) = json.loads(out)
    assert status == 0 and row["label"] == predict.UNCERTAIN and row["probabilities"] == pytest.approx(
        plain.probabilities)
