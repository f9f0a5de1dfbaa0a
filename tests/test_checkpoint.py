"""checkpoint.py: Whisper encoders from names, files or random:<name>, trimmed; saving and loading models."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import whisper
from conftest import LABELS, random_model

import checkpoint
import model as modellib

_net = random_model


def _clip_mel(seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """[80, 100 * seconds] log-mel of a voiced-like sound: a 140 Hz harmonic series with vibrato, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    phase = 2 * np.pi * (140 * t + 3 * np.sin(2 * np.pi * 5 * t))
    audio = sum(np.sin(k * phase) / k for k in range(1, 20)) * 0.1 + 0.01 * rng.standard_normal(t.size)
    return whisper.log_mel_spectrogram(torch.from_numpy(audio.astype(np.float32)))


# ----------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("n_frames", [300, 3000])
def test_trim_keeps_first_rows_of_the_real_checkpoint(whisper_checkpoint, n_frames):
    full = torch.load(whisper_checkpoint, map_location="cpu", weights_only=True)["model_state_dict"]
    encoder = checkpoint.load_encoder(str(whisper_checkpoint), n_frames=n_frames, device="cpu")
    state = encoder.state_dict()
    assert encoder.dims.n_audio_ctx == n_frames // 2 and encoder.n_frames == n_frames
    assert set(state) == {k.removeprefix("encoder.") for k in full if k.startswith("encoder.")}
    for name, value in state.items():
        assert value.dtype == torch.float32, name
        expected = full[f"encoder.{name}"].float()
        if name == "positional_embedding":
            expected = expected[: n_frames // 2]
        assert torch.equal(value, expected), name


def test_trim_of_a_random_encoder_matches_the_untrimmed_one():
    torch.manual_seed(3)
    short = checkpoint.load_encoder("random:tiny", n_frames=300, device="cpu").state_dict()
    torch.manual_seed(3)
    full = checkpoint.load_encoder("random:tiny", n_frames=3000, device="cpu").state_dict()
    assert short.keys() == full.keys()
    assert short["positional_embedding"].shape == (150, 384)
    assert torch.equal(short["positional_embedding"], full["positional_embedding"][:150])
    for name in short.keys() - {"positional_embedding"}:
        assert torch.equal(short[name], full[name]), name


def test_pretrained_encoder_on_a_3_second_clip(whisper_checkpoint):
    mel = torch.stack([_clip_mel(seed=0), _clip_mel(seed=1)])
    assert mel.shape == (2, 80, 300)
    torch.manual_seed(0)
    config = modellib.ModelConfig(whisper=str(whisper_checkpoint), dims=None, labels=LABELS)
    pretrained = checkpoint.from_whisper(config, device="cpu").eval()
    torch.manual_seed(0)  # same heads; only the encoder differs
    random = checkpoint.from_whisper(dataclasses.replace(config, whisper="random:tiny.en"), device="cpu").eval()
    with torch.no_grad():
        frames = pretrained.encoder(mel)
        a, b = pretrained(mel)["embedding"], random(mel)["embedding"]
    assert frames.shape == (2, 150, 384) and torch.isfinite(frames).all()
    assert torch.isfinite(a).all() and a.shape == (2, 384)
    assert not torch.allclose(a, b, atol=1e-2)


@pytest.mark.parametrize("name", ["tinyy", "random:huge"])
def test_unknown_model_name(name):
    with pytest.raises(ValueError, match="unknown Whisper model.*tiny.en"):
        checkpoint.load_encoder(name, device="cpu")


@pytest.mark.parametrize("n_frames", [301, 3002, 0, -2])
def test_bad_n_frames(n_frames):
    with pytest.raises(ValueError, match=f"n_frames must be an even integer in 2..3000.*{n_frames}"):
        checkpoint.load_encoder("random:tiny", n_frames=n_frames, device="cpu")


def test_missing_checkpoint_path(tmp_path):
    path = tmp_path / "nowhere" / "tiny.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        checkpoint.load_encoder(str(path), device="cpu")


def test_model_name_that_cannot_be_downloaded(tmp_path):
    root = tmp_path / "whisper-cache"
    with pytest.raises(FileNotFoundError) as info:
        checkpoint.load_encoder("tiny", download_root=str(root), device="cpu")
    message = str(info.value)
    assert str(root) in message and whisper._MODELS["tiny"] in message and "WHISPER_CHECKPOINT" in message
    assert not any(root.iterdir())  # no half-written file left behind


def test_bad_whisper_checkpoint_file(tmp_path):
    garbage, foreign = tmp_path / "garbage.pt", tmp_path / "foreign.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match=f"{garbage} is not a readable openai-whisper checkpoint"):
        checkpoint.load_encoder(str(garbage), device="cpu")
    with pytest.raises(ValueError, match=f"{foreign} is not an openai-whisper checkpoint.*'weights'"):
        checkpoint.load_encoder(str(foreign), device="cpu")


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    net = _net(pooling="attentive", vad_head=True)
    # the stored config alone rebuilds the model: its Whisper source need not exist any more
    net.config = dataclasses.replace(net.config, whisper=str(tmp_path / "gone" / "tiny.pt"))
    path = tmp_path / "runs" / "best.pt"
    checkpoint.save_model(net, path, extra={"epoch": 3, "val": {"ua": 0.5, "confusion": [[1, 0], [0, 1]]}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temp file left

    loaded = checkpoint.load_model(path, device="cpu")
    assert loaded.config == net.config and not loaded.training
    assert checkpoint.read_checkpoint(path)["extra"] == {"epoch": 3, "val": {"ua": 0.5, "confusion": [[1, 0], [0, 1]]}}
    mel = torch.randn(2, 80, 100)
    with torch.no_grad():
        a, b = net.eval()(mel), loaded(mel)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_from_whisper_config_survives_its_dict_form():
    config = modellib.ModelConfig(whisper="random:tiny", dims=None, labels=LABELS, n_frames=100)
    cfg = checkpoint.from_whisper(config, device="cpu").config
    assert cfg.dims == dataclasses.replace(modellib.DIMS["tiny"], n_audio_ctx=50) and cfg.whisper == "random:tiny"
    rebuilt = modellib.ModelConfig(**dataclasses.asdict(cfg))
    assert rebuilt == cfg and isinstance(rebuilt.dims, whisper.model.ModelDimensions)


def test_save_rejects_extra_that_cannot_be_loaded_back(tmp_path):
    with pytest.raises(TypeError, match="extra=.*weights_only"):
        checkpoint.save_model(_net(), tmp_path / "m.pt", extra={"score": np.float64(math.pi)})
    assert not any(tmp_path.iterdir())


def test_load_model_bad_files(tmp_path):
    missing, garbage, foreign, truncated = (tmp_path / n for n in ("missing.pt", "garbage.pt", "foreign.pt",
                                                                   "truncated.pt"))
    garbage.write_bytes(b"\x00garbage" * 100)
    torch.save({"state_dict": {}}, foreign)
    good = tmp_path / "good.pt"
    checkpoint.save_model(_net(), good)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    with pytest.raises(FileNotFoundError, match=str(missing)):
        checkpoint.load_model(missing, device="cpu")
    with pytest.raises(ValueError, match=f"{garbage} is not a readable whisper-ser/1 model file"):
        checkpoint.load_model(garbage, device="cpu")
    with pytest.raises(ValueError, match=f"{truncated} is not a readable whisper-ser/1 model file"):
        checkpoint.load_model(truncated, device="cpu")
    empty_pickle = tmp_path / "empty_pickle.pt"
    empty_pickle.write_bytes(b"\x80\x02.")  # the unpickler pops an empty stack: IndexError, not a pickle error
    with pytest.raises(ValueError, match=f"{empty_pickle} is not a readable whisper-ser/1 model file"):
        checkpoint.load_model(empty_pickle, device="cpu")
    with pytest.raises(ValueError, match=f"{foreign} is not a whisper-ser/1 model file"):
        checkpoint.load_model(foreign, device="cpu")


def test_load_model_names_an_openai_whisper_checkpoint(whisper_checkpoint):
    with pytest.raises(ValueError, match="openai-whisper checkpoint: give it as the Whisper encoder"):
        checkpoint.load_model(whisper_checkpoint, device="cpu")


def test_load_model_with_mismatched_weights(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save_model(_net(), path)
    obj = torch.load(path, weights_only=True)
    obj["config"]["labels"] = LABELS + ["calm"]  # classifier weights no longer fit
    torch.save(obj, path)
    with pytest.raises(ValueError, match=f"(?s){path}: config or weights do not form a model.*classifier"):
        checkpoint.load_model(path, device="cpu")
