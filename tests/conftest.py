"""Shared fixtures and helpers: a small synthetic corpus on disk, the real Whisper checkpoint, a random model."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
    import prepare

    out = tmp_path_factory.mktemp("synthetic")
    prepare.make_synthetic(n_speakers=6, per_class=3, seed=0).save_to_disk(str(out))
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


LABELS = ["neutral", "happy", "sad", "angry"]


def random_model(pooling: str = "attentive", vad_head: bool = True, n_frames: int = 100, layers: str = "weighted",
                 labels: list[str] = LABELS) -> EmotionModel:
    """An ``EmotionModel`` on an untrained tiny encoder (seed 0), on the CPU."""
    torch.manual_seed(0)
    dims = dataclasses.replace(DIMS["tiny"], n_audio_ctx=n_frames // 2)
    return EmotionModel(ModelConfig(whisper="random:tiny", dims=dims, labels=labels, n_frames=n_frames,
                                    pooling=pooling, layers=layers, vad_head=vad_head))
