"""audio.py: Whisper's log-mel against openai-whisper, decoding and resampling real files, the windows over a
clip."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
from conftest import encode, sound

import audio


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_is_whispers_with_a_per_clip_maximum(n_mels):
    x = sf.read(io.BytesIO(encode(sound(3.0))), dtype="float32")[0]
    assert np.abs(x).max() > 0.1
    ref = whisper.log_mel_spectrogram(torch.from_numpy(x), n_mels)
    ours = audio.log_mel(torch.from_numpy(x), n_mels)
    assert ours.shape == (n_mels, 300) == ref.shape
    assert (ours - ref).abs().max() <= 1e-4
    # batched: each clip keeps its own maximum (whisper's on a batch would take the batch's)
    quiet = x * 1e-3
    batch = audio.log_mel(torch.from_numpy(np.stack([x, quiet])), n_mels)
    assert (batch[1] - whisper.log_mel_spectrogram(torch.from_numpy(quiet), n_mels)).abs().max() <= 1e-4
    assert (batch[0] - ref).abs().max() <= 1e-4


def test_eval_features_are_the_centre_crop_or_the_clip_padded_at_its_end():
    long, short = sound(2.5), sound(0.4)
    for x in (long, short):
        start = max(len(x) - 16000, 0) // 2
        ref = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(x[start:], 16000)), 80)
        assert (audio.eval_features(torch.from_numpy(x), 100) - ref).abs().max() <= 1e-4
    assert audio.clip_frames(len(short), 100) == 40 and audio.clip_frames(len(long), 100) == 100


def test_decode_and_load_audio_downmix_and_resample(tmp_path):
    x = sound(1.0, rate=48000)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([x, x], axis=1), 48000)
    loaded = audio.load_audio(path)
    assert loaded.dtype == np.float32 and loaded.shape == (16000,)
    assert np.abs(loaded - sound(1.0)).max() < 0.01
    assert np.array_equal(loaded, audio.decode_audio(path.read_bytes()))
    native, rate = audio.decode_native(path.read_bytes())
    assert rate == 48000 and native.shape == (48000,) and audio.audio_header(path.read_bytes(), "x") == (48000, 48000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(audio.AudioError, match="bad.wav"):
        audio.load_audio(bad)
    with pytest.raises(audio.AudioError, match="clip_7"):
        audio.decode_audio(b"not audio", name="clip_7")


def test_resampling_48khz_leaves_nothing_above_8khz():
    """A loud 12 kHz tone in a 48 kHz file must be filtered out, not folded to 4 kHz."""
    t = np.arange(48000) / 48000
    x = audio.to_16k(0.5 * np.sin(2 * np.pi * 12000 * t) + 0.5 * np.sin(2 * np.pi * 1000 * t), 48000)
    spectrum = np.abs(np.fft.rfft(x[1000:-1000]))
    freqs = np.fft.rfftfreq(len(x) - 2000, 1 / 16000)
    assert spectrum[np.abs(freqs - 4000) < 50].max() < 1e-3 * spectrum[np.abs(freqs - 1000) < 50].max()


def test_window_starts_cover_every_sample():
    for n in (1, 1599, 1600, 1601, 2400, 2401, 16000, 16001):
        for hop in (1, 400, 800, 1600):
            starts = audio.window_starts(n, 1600, hop)
            covered = np.zeros(n, bool)
            for s in starts:
                covered[s: s + 1600] = True
            assert covered.all() and starts[0] == 0
            assert starts[-1] + 1600 == n if n > 1600 else starts == [0]
            assert all(0 < b - a <= hop for a, b in itertools.pairwise(starts))
    with pytest.raises(ValueError, match="hop"):
        audio.window_starts(5000, 1600, 1601)
