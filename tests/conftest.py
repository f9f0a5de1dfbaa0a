"""Shared fixtures: a small synthetic corpus on disk and the real Whisper checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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
