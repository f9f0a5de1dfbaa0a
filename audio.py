"""Audio in, Whisper's features out: decoding, resampling to 16 kHz, the log-mel, the windows over a clip.

    x = load_audio("clip.flac")                    # float32 mono [T] at 16 kHz, from any rate and channel count
    mel = log_mel(torch.from_numpy(x))             # [80, T // 160]: whisper.log_mel_spectrogram, per-clip maximum
    mel = eval_features(torch.from_numpy(x))       # [80, 300]: the centre 3 s, or the clip zero-padded at its end
    starts = window_starts(len(x), 48000, 24000)   # windows of 3 s every 1.5 s, the last ending at the clip's end

As openai-whisper's ``audio.py``, with two differences: ``log_mel`` takes the maximum of the dynamic-range
clamp per clip (Whisper's takes it over whatever tensor it is given), and resampling low-passes before it
downsamples (``lowpass_taps``), as DALI's resampler keeps its cutoff at the input's Nyquist and would alias a
48 kHz file into the band. Both loaders of ``data.py`` and ``predict.py`` compute their features here.
"""

from __future__ import annotations

import io
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import firwin, kaiserord, resample_poly

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


class AudioError(ValueError):
    """Audio that cannot be decoded; the message names the file or dataset row."""


# ----------------------------------------------------------------------------- decoding and resampling


def decode_native(data: bytes, name: str = "") -> tuple[np.ndarray, int]:
    """Encoded bytes (any format libsndfile reads) -> (float32 mono [T] at the file's own rate, that rate).

    Raises AudioError naming ``name`` when they cannot be decoded."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports every failure as a RuntimeError with its own message
        raise AudioError(f"{name or 'audio'}: cannot decode ({_reason(e)})") from e
    return audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0], int(rate)


def audio_header(data: bytes, name: str) -> tuple[int, int]:
    """(frames, sample rate) from the header of encoded audio; AudioError naming ``name`` when unreadable."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        raise AudioError(f"{name}: cannot decode ({_reason(e)})") from e
    if info.frames <= 0:
        raise AudioError(f"{name}: no audio samples")
    return int(info.frames), int(info.samplerate)


def _reason(error: Exception) -> str:
    """libsndfile's own words, without the repr of the buffer soundfile adds."""
    return getattr(error, "error_string", None) or str(error)


def container(data: bytes) -> str:
    """The container of encoded audio from its first bytes: "wav" (RIFF/WAVE), "flac", "ogg", "aiff" (AIFF or
    AIFF-C), or "other"; the file's name plays no part (some corpora hold AIFF data under a ``.wav`` name)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return "other"


def to_flac16k(data: bytes, name: str = "") -> bytes:
    """Encoded audio (any format libsndfile reads) -> 16 kHz mono 24-bit FLAC (``decode_audio``: anti-aliased;
    the rounding is far below any recording's noise)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(decode_audio(data, name=name), -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[T] or [T, channels] at ``sample_rate`` Hz -> float32 mono [T'] at 16 kHz (anti-aliased)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return resample(audio, Fraction(SAMPLE_RATE, int(sample_rate)))


def decode_audio(data: bytes, *, name: str = "") -> np.ndarray:
    """Encoded audio (any format libsndfile reads) -> float32 mono [T] at 16 kHz.

    Raises AudioError naming ``name`` when it cannot be decoded.
    """
    audio, rate = decode_native(data, name)
    return to_16k(audio, rate)


def load_audio(path: str | Path) -> np.ndarray:
    """An audio file -> float32 mono [T] at 16 kHz; AudioError naming the file when it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror or e})") from e
    return decode_audio(data, name=str(path))


@lru_cache(maxsize=256)
def lowpass_taps(ratio: float) -> np.ndarray:
    """FIR taps [K] (odd K) removing what a resampling by 1/``ratio`` (input/output rate) would alias.

    Cutoff at 0.95 of the output's Nyquist, transition 0.9-1.0 of it, 80 dB stop band: for 48 -> 16 kHz
    the pass band ends at 7.2 kHz and everything above 8 kHz is attenuated by >= 80 dB.
    """
    if ratio <= 1:
        return np.ones(1, np.float32)
    n, beta = kaiserord(80.0, 0.1 / ratio)
    return firwin(n | 1, 0.95 / ratio, window=("kaiser", beta)).astype(np.float32)


def resample(audio: np.ndarray, scale: Fraction) -> np.ndarray:
    """float32 [T] -> [ceil(T * scale)] by polyphase filtering with the ``lowpass_taps`` filter."""
    if scale == 1:
        return audio
    up, down = scale.numerator, scale.denominator
    taps = lowpass_taps(float(max(up, down)))
    return resample_poly(audio, up, down, window=taps).astype(np.float32)


# ----------------------------------------------------------------------------- features and windows


@cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's Slaney mel filter bank [n_mels, N_FFT // 2 + 1] (80 or 128 mels)."""
    import whisper.audio

    return whisper.audio.mel_filters("cpu", n_mels).numpy()


def log_mel(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel: [..., T] 16 kHz -> [..., n_mels, T // 160] (floor: each clip's max - 8)."""
    shape = audio.shape
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio.reshape(-1, shape[-1]), N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters(n_mels)).to(audio.device) @ power
    log = mel.clamp(min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return ((log + 4.0) / 4.0).reshape(*shape[:-1], n_mels, -1)


def eval_features(audio: torch.Tensor, n_frames: int = 300, n_mels: int = 80) -> torch.Tensor:
    """The evaluation features of a clip: [T] 16 kHz -> [n_mels, n_frames] (centre crop, or zero-padded)."""
    n = n_frames * HOP_LENGTH
    start = max(len(audio) - n, 0) // 2
    audio = torch.nn.functional.pad(audio[start: start + n], (0, max(n - len(audio), 0)))
    return log_mel(audio, n_mels)


def clip_frames(samples: np.ndarray | int, n_frames: int) -> np.ndarray | int:
    """Mel frames of a crop of ``n_frames`` that hold a clip's first ``samples`` 16 kHz samples (the rest of the
    crop is padding): ceil(samples / HOP_LENGTH), at most ``n_frames``."""
    return np.minimum(-(-samples // HOP_LENGTH), n_frames)


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start sample of every window of ``window`` samples over a clip of ``n_samples``.

    Starts at 0, then every ``hop`` samples; the last window ends exactly at the clip's end.
    A clip no longer than one window has the single start 0. Needs 0 < hop <= window (no gaps).
    """
    if not 0 < hop <= window:
        raise ValueError(f"hop ({hop} samples) must be positive and at most the window ({window} samples)")
    if n_samples <= window:
        return [0]
    return [*range(0, n_samples - window, hop), n_samples - window]
