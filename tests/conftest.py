"""Shared fixtures and helpers: a small synthetic corpus on disk, the real Whisper checkpoint and speech, a
speech-like test sound, a random model."""

from __future__ import annotations

import dataclasses
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, ClassLabel, DatasetDict, Value

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labels import label_names  # noqa: E402
from model import DIMS, EmotionModel, ModelConfig  # noqa: E402


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` skip, saying why, where PyTorch sees no GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (PyTorch sees none); make gpu-check runs these on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic corpus (6 speakers x 4 classes x 3 utterances) saved with save_to_disk."""
    import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.make_synthetic(n_speakers=6, per_class=3, seed=0).save_to_disk(str(out))
    return out


@pytest.fixture(scope="session")
def whisper_checkpoint() -> Path:
    """Path to OpenAI's pretrained tiny.en (env WHISPER_CHECKPOINT); skips when it is absent."""
    path = os.environ.get("WHISPER_CHECKPOINT", "")
    if not path or not Path(path).is_file():
        pytest.skip("real Whisper weights not available: set WHISPER_CHECKPOINT to tiny.en.pt")
    return Path(path)


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    """Real RAVDESS speech in its published layout (env RAVDESS_DIR, e.g. ../shared/ravdess: actors 01-12);
    skips when it is absent."""
    path = os.environ.get("RAVDESS_DIR", "")
    if not path or not Path(path).is_dir():
        pytest.skip("real RAVDESS speech not available: set RAVDESS_DIR to a RAVDESS folder (Actor_XX/*.wav)")
    return Path(path)


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """The real EmoDB in its published layout (env EMODB_DIR, e.g. ../shared/emodb: wav/SSTTTEv.wav); skips when it
    is absent."""
    path = os.environ.get("EMODB_DIR", "")
    if not path or not Path(path).is_dir():
        pytest.skip("real EmoDB not available: set EMODB_DIR to an EmoDB folder (wav/03a01Fa.wav, ...)")
    return Path(path)


@dataclasses.dataclass
class Done:
    """What a command-line run returned and printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """prepare.py's command line, in process: ``run_cli(*args)`` -> Done."""
    import prepare

    def run(*args: str) -> Done:
        try:
            code = prepare.main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out = capsys.readouterr()
        return Done(code, out.out, out.err)

    return run


def write_wav(path: Path, seconds: float, rate: int, seed: int = 0, subtype: str = "PCM_16", fmt: str = "WAV") -> Path:
    """A tone with a little noise, written to ``path`` (folders made) as ``fmt`` data whatever its name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * noise, rate, subtype=subtype, format=fmt)
    return path


# A speech-like sound defined in continuous time (so it can be sampled at any rate): two gliding harmonic
# tones under a floor of 300 weak random partials, everything below 7 kHz.
_RNG = np.random.default_rng(0)
PARTIALS = _RNG.uniform(50, 7000, 300), _RNG.uniform(0, 2 * np.pi, 300), _RNG.uniform(0.2, 1, 300) * 0.003


def sound(seconds: float, rate: int = 16000, pitch: float = 150.0, tone_hz: float = 0.0) -> np.ndarray:
    """float32 [seconds * rate]; ``tone_hz`` adds a loud pure tone (above 8 kHz: what must not alias)."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (pitch * t + 200 * t**2)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x += 0.1 * np.sin(2 * np.pi * (4 * pitch * t + 500 * t**2))
    f, phase, amp = PARTIALS
    x += (amp[:, None] * np.sin(2 * np.pi * f[:, None] * t + phase[:, None])).sum(0)
    if tone_hz:
        x += 0.3 * np.sin(2 * np.pi * tone_hz * t)
    return x.astype(np.float32)


def encode(x: np.ndarray, rate: int = 16000, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


# The columns every prepared corpus has, but its label names and its own columns.
COMMON = {
    "id": Value("string"), "audio": Audio(decode=False), "valence": Value("float32"),
    "arousal": Value("float32"), "dominance": Value("float32"), "speaker": Value("string"),
    "corpus": Value("string"), "duration": Value("float32"),
}


def check_schema(dsd: DatasetDict, corpus: str, extra: dict) -> None:
    """Every split of a prepared ``corpus`` has ``COMMON``, its label names and its ``extra`` columns."""
    for split, rows in dsd.items():
        assert dict(rows.features) == {**COMMON, "emotion": ClassLabel(names=label_names(corpus)), **extra}, split
        assert set(rows["corpus"]) <= {corpus}


def speakers_disjoint(dsd: DatasetDict) -> bool:
    sets = [set(rows["speaker"]) for rows in dsd.values()]
    return all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])


def tiny_args(synthetic_dir, run_dir, **over) -> list[str]:
    """train.py's flags of a tiny, fast CPU configuration (its training options left out for the probe)."""
    args = {"data": str(synthetic_dir), "whisper": "random:tiny", "n-frames": "100", "batch-size": "16",
            "num-workers": "0", "device": "cpu", "run-dir": str(run_dir)}
    if over.get("objective") != "probe":
        args |= {"freeze": "top:1", "epochs": "2", "lr": "1e-3"}
    return [x for k, v in {**args, **over}.items() for x in (f"--{k}", v)]


def tiny_config(synthetic_dir, run_dir, **over):
    """``tiny_args`` as a Config, for runs in this process, scoring each clip's centre crop (one window: faster)."""
    import config

    return dataclasses.replace(config.parse_args(tiny_args(synthetic_dir, run_dir, **over)), windows=False)


LABELS = ["neutral", "happy", "sad", "angry"]


def random_model(pooling: str = "attentive", vad_head: bool = True, n_frames: int = 100, layers: str = "weighted",
                 labels: list[str] = LABELS, vad_probe: bool = False) -> EmotionModel:
    """An ``EmotionModel`` on an untrained tiny encoder (seed 0), on the CPU."""
    torch.manual_seed(0)
    dims = dataclasses.replace(DIMS["tiny"], n_audio_ctx=n_frames // 2)
    return EmotionModel(ModelConfig(whisper="random:tiny", dims=dims, labels=labels, n_frames=n_frames,
                                    pooling=pooling, layers=layers, vad_head=vad_head, vad_probe=vad_probe))
