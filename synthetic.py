"""The synthetic corpus: speech-like clips whose emotion lives in prosody, built offline in seconds.

    dsd = make_synthetic()                      # 20 speakers x 4 classes x 6 clips, speaker-disjoint splits
    data.save(dsd, "data/synthetic")            # or: python prepare.py synthetic data/synthetic

A glottal pulse train through formant filters under a syllable-rate envelope, with per-speaker voices and a
random intensity per clip, carrying emotion as acted speech carries it (``PROSODY``: mean pitch, pitch range,
speaking rate, loudness, spectral tilt, jitter, breathiness), in the schema of every prepared corpus
(``data.schema``). It is a smoke test that runs anywhere, not evidence that a recipe works on speech.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from datasets import Dataset, DatasetDict, Value
from scipy.signal import butter, lfilter
from tqdm import tqdm

import data
from audio import SAMPLE_RATE
from labels import label_map, label_names


@dataclass(frozen=True)
class Prosody:
    """How a class is voiced relative to a speaker's neutral voice (the tendencies of acted speech)."""

    pitch: float  # mean F0, factor
    pitch_range: float  # pitch-accent excursion, semitones
    rate: float  # syllables per second
    loudness: float  # dB
    tilt: float  # pole of the two glottal low-passes: higher is a steeper spectral tilt (darker voice)
    jitter: float  # relative F0 perturbation
    breath: float  # aspiration noise relative to the pulses
    vad: tuple[float, float, float]  # valence, arousal, dominance (0-1)


PROSODY = {
    "neutral": Prosody(1.00, 2.0, 4.0, 0.0, 0.93, 0.006, 0.03, (0.50, 0.35, 0.45)),
    "happy": Prosody(1.22, 5.0, 4.5, 3.0, 0.91, 0.010, 0.03, (0.85, 0.70, 0.60)),
    "sad": Prosody(0.92, 1.2, 3.1, -5.0, 0.955, 0.015, 0.08, (0.20, 0.20, 0.25)),
    "angry": Prosody(1.18, 3.5, 4.7, 6.0, 0.86, 0.020, 0.04, (0.15, 0.85, 0.80)),
}
# Formants (Hz, adult male; Peterson & Barney 1952) of /a/, /i/, /u/, /e/, /o/, and their bandwidths.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
_BANDWIDTHS = np.array([80.0, 100.0, 140.0])
_FRICATIVE = butter(2, 3000, btype="highpass", fs=SAMPLE_RATE)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker's voice: base F0 (Hz), vocal-tract scale of the formants, habits."""

    name: str
    gender: str
    f0: float
    formant_scale: float
    rate: float  # factor
    loudness: float  # dB
    tilt: float  # added to the class's tilt pole
    expressiveness: float  # factor on the class's pitch range


def make_speaker(index: int, seed: int) -> Speaker:
    """Speaker ``index``: even ones male-like (F0 ~115 Hz), odd ones female-like (~205 Hz, shorter tract)."""
    rng = np.random.default_rng([seed, index])
    male = index % 2 == 0
    return Speaker(name=f"spk{index:02d}", gender="male" if male else "female",
                   f0=float(rng.normal(115, 10) if male else rng.normal(205, 15)),
                   formant_scale=float((1.0 if male else 1.16) * rng.normal(1, 0.04)),
                   rate=float(rng.normal(1, 0.07)), loudness=float(rng.normal(0, 1.5)),
                   tilt=float(rng.normal(0, 0.008)), expressiveness=float(rng.lognormal(0, 0.15)))


def _resonators(formants: np.ndarray) -> np.ndarray:
    """Denominator of a cascade of 2-pole resonators (unit gain at DC) at ``formants`` Hz."""
    a = np.ones(1)
    for freq, bw in zip(formants, _BANDWIDTHS, strict=True):
        r = math.exp(-math.pi * bw / SAMPLE_RATE)
        a = np.convolve(a, [1.0, -2 * r * math.cos(2 * math.pi * freq / SAMPLE_RATE), r * r])
    return a


def synthesize(speaker: Speaker, emotion: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One 2-5 s utterance -> (samples float32 (n,) at 16 kHz in [-1, 1], VAD float (3,) in 0-1).

    A glottal pulse train (F0 contour with declination, per-syllable pitch accents and jitter; two
    one-pole low-passes set the spectral tilt, a difference the lip radiation) with aspiration noise,
    shaped by a syllable-rate envelope, through the formant filters of a random vowel per syllable,
    with fricative bursts before some syllables and a background noise floor. The class's deviation
    from neutral is scaled by a random intensity (0.25-1.25), which also scales its VAD.
    """
    neutral, target = PROSODY["neutral"], PROSODY[emotion]
    k = rng.uniform(0.25, 1.25)

    def blend(name: str) -> float:
        a, b = getattr(neutral, name), getattr(target, name)
        return a + k * (b - a)

    n = int(rng.uniform(2.0, 5.0) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    # Syllables: durations around 1/rate, each opened by a consonant gap; sometimes a pause after one.
    rate = blend("rate") * speaker.rate * rng.lognormal(0, 0.12)
    count = int(5.0 * rate / 0.7) + 2  # enough for 5 s
    voiced = rng.uniform(0.7, 1.3, count) / rate
    durations = voiced + (rng.random(count) < 0.12) * rng.uniform(0.1, 0.35, count)
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    syllable = np.searchsorted(starts, t, side="right") - 1
    u = (t - starts[syllable]) / voiced[syllable]  # 0-1 over the syllable, > 1 in its pause
    gap = 0.22
    envelope = np.sqrt(np.sin(np.pi * np.clip((u - gap) / (1 - gap), 0, 1)))
    envelope *= u < 1  # silence during pauses
    # F0 contour (semitones around the mean): declination plus accents, smoothed over ~40 ms.
    pitch_range = blend("pitch_range") * speaker.expressiveness
    accents = rng.uniform(-0.5, 0.5, count) * pitch_range
    semitones = accents[syllable] + pitch_range * 0.3 * (0.5 - t / t[-1])
    smooth = math.exp(-1 / (0.04 * SAMPLE_RATE))
    semitones = lfilter([1 - smooth], [1, -smooth], semitones, zi=[smooth * semitones[0]])[0]
    f0_mean = speaker.f0 * math.exp(k * math.log(target.pitch)) * rng.lognormal(0, 0.07)
    noise = rng.standard_normal((4, n), dtype=np.float32)  # jitter, aspiration, fricatives, floor
    wobble = lfilter([0.2], [1, -0.8], noise[0])
    f0 = f0_mean * np.exp2(semitones / 12) * (1 + blend("jitter") * wobble / 0.33)
    phase = np.cumsum(f0) / SAMPLE_RATE
    pulses = np.diff(np.floor(phase), prepend=0.0)
    tilt = min(blend("tilt") + speaker.tilt, 0.985)
    source = lfilter([1 - tilt], [1, -tilt], lfilter([1 - tilt], [1, -tilt], pulses))
    source = np.diff(source, prepend=0.0)
    source = source / (np.std(source) + 1e-12) + blend("breath") * 3 * noise[1]
    source *= envelope
    # Vocal tract: each vowel's filter on the whole source, the syllable's vowel picked per sample.
    vowels = rng.integers(0, len(_VOWELS), count)
    vowel = vowels[syllable]
    voice = np.zeros(n)
    for v in np.unique(vowels[: syllable[-1] + 1]):
        a = _resonators(_VOWELS[v] * speaker.formant_scale)
        mask = vowel == v
        voice[mask] = lfilter([a.sum()], a, source)[mask]
    speech_rms = np.sqrt(np.mean(voice[envelope > 0.1] ** 2)) + 1e-12
    level_db = -26 + k * target.loudness + speaker.loudness + rng.normal(0, 4)
    voice *= 10 ** (level_db / 20) / speech_rms
    burst = (u < gap) * (rng.random(count) < 0.5)[syllable] * np.sin(np.pi * np.clip(u / gap, 0, 1))
    fricative = lfilter(*_FRICATIVE, noise[2]) * burst * 0.3 * 10 ** (level_db / 20)
    floor = noise[3] * 10 ** (rng.uniform(-62, -48) / 20)
    samples = np.clip(voice + fricative + floor, -1, 1).astype(np.float32)
    vad = np.array(neutral.vad) + k * (np.array(target.vad) - np.array(neutral.vad))
    return samples, np.clip(vad + rng.normal(0, 0.05, 3), 0, 1)


def synthetic_splits(n_speakers: int) -> list[str]:
    """Split of each speaker: the last ~20% test, the ~20% before them validation (each >= 1), the rest train."""
    if n_speakers < 3:
        raise ValueError(f"speaker-disjoint train/validation/test needs at least 3 speakers, got {n_speakers}")
    held = max(1, round(0.2 * n_speakers))
    n_train = n_speakers - 2 * held
    if n_train < 1:
        held, n_train = 1, n_speakers - 2
    return ["train"] * n_train + ["validation"] * held + ["test"] * held


def make_synthetic(*, n_speakers: int = 20, per_class: int = 6, seed: int = 0) -> DatasetDict:
    """The synthetic emotional-speech corpus: ``n_speakers`` x 4 classes x ``per_class`` 16 kHz wav clips.

    Deterministic in ``seed`` (clip ``i`` of speaker ``s`` and class ``c`` draws from ``rng([seed, s, c, i])``).
    Emotion is carried by prosody (``PROSODY``: mean pitch, pitch range, speaking rate, loudness, spectral
    tilt, jitter, breathiness) on top of per-speaker voices (``make_speaker``), with a random intensity per
    clip, so the classes overlap. Same schema as the real corpora (corpus ``synthetic``, ``emotion`` named by
    ``label_names("synthetic")``, only neutral/happy/sad/angry used), plus ``gender``. Speaker-disjoint
    splits: ``synthetic_splits`` (20 speakers: 12 train, 4 validation, 4 test; 288, 96 and 96 clips).

    Its baseline, printed by ``python prepare.py synthetic OUT_DIR``, is ``evaluate.baseline`` (BENCHMARKS.md).
    """
    splits = synthetic_splits(n_speakers)
    index = label_map("synthetic")
    features = data.schema(label_names("synthetic"), {"gender": Value("string")}, written=True)
    rows: dict[str, list[dict]] = {split: [] for split in data.SPLITS}
    jobs = [(s, c, i) for s in range(n_speakers) for c in range(len(PROSODY)) for i in range(per_class)]
    speakers = [make_speaker(s, seed) for s in range(n_speakers)]
    for s, c, i in tqdm(jobs, desc="synthetic", unit="clip"):
        speaker, emotion = speakers[s], list(PROSODY)[c]
        samples, vad = synthesize(speaker, emotion, np.random.default_rng([seed, s, c, i]))
        buffer = io.BytesIO()
        sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
        uid = f"{speaker.name}_{emotion}_{i:03d}"
        rows[splits[s]].append({
            "id": uid, "audio": {"bytes": buffer.getvalue(), "path": f"{uid}.wav"}, "emotion": index[emotion],
            "valence": vad[0], "arousal": vad[1], "dominance": vad[2], "speaker": speaker.name,
            "corpus": "synthetic", "duration": len(samples) / SAMPLE_RATE, "gender": speaker.gender,
        })
    return DatasetDict({split: Dataset.from_list(rows[split], features=features).cast_column("audio", data.AUDIO)
                        for split in data.SPLITS})
