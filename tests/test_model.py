"""model.py: the trimmed Whisper encoder, heads, freeze policies, save/load and their errors."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
import whisper

import model as modellib

LABELS = ["neutral", "happy", "sad", "angry"]


def _net(pooling: str = "attentive", vad_head: bool = True, n_frames: int = 100,
         layers: str = "weighted") -> modellib.EmotionModel:
    torch.manual_seed(0)
    return modellib.EmotionModel.from_whisper("random:tiny", labels=LABELS, n_frames=n_frames, pooling=pooling,
                                              layers=layers, vad_head=vad_head, device="cpu")


def _clip_mel(seconds: float = 3.0, seed: int = 0) -> torch.Tensor:
    """[80, 100 * seconds] log-mel of a voiced-like sound: a 140 Hz harmonic series with vibrato, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    phase = 2 * np.pi * (140 * t + 3 * np.sin(2 * np.pi * 5 * t))
    audio = sum(np.sin(k * phase) / k for k in range(1, 20)) * 0.1 + 0.01 * rng.standard_normal(t.size)
    return whisper.log_mel_spectrogram(torch.from_numpy(audio.astype(np.float32)))


# ----------------------------------------------------------------------------- trimming


def test_dims_table_covers_every_model_and_matches_the_real_checkpoint(whisper_checkpoint):
    assert list(modellib.DIMS) == whisper.available_models()
    assert modellib.DIMS["large-v3"].n_mels == modellib.DIMS["turbo"].n_mels == 128
    stored = torch.load(whisper_checkpoint, map_location="cpu", weights_only=True)["dims"]
    assert dataclasses.asdict(modellib.DIMS["tiny.en"]) == stored


@pytest.mark.parametrize("n_frames", [300, 3000])
def test_trim_keeps_first_rows_of_the_real_checkpoint(whisper_checkpoint, n_frames):
    full = torch.load(whisper_checkpoint, map_location="cpu", weights_only=True)["model_state_dict"]
    encoder = modellib.load_encoder(str(whisper_checkpoint), n_frames=n_frames, device="cpu")
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
    short = modellib.load_encoder("random:tiny", n_frames=300, device="cpu").state_dict()
    torch.manual_seed(3)
    full = modellib.load_encoder("random:tiny", n_frames=3000, device="cpu").state_dict()
    assert short.keys() == full.keys()
    assert short["positional_embedding"].shape == (150, 384)
    assert torch.equal(short["positional_embedding"], full["positional_embedding"][:150])
    for name in short.keys() - {"positional_embedding"}:
        assert torch.equal(short[name], full[name]), name


def test_pretrained_encoder_on_a_3_second_clip(whisper_checkpoint):
    mel = torch.stack([_clip_mel(seed=0), _clip_mel(seed=1)])
    assert mel.shape == (2, 80, 300)
    torch.manual_seed(0)
    pretrained = modellib.EmotionModel.from_whisper(str(whisper_checkpoint), labels=LABELS, device="cpu").eval()
    torch.manual_seed(0)  # same heads; only the encoder differs
    random = modellib.EmotionModel.from_whisper("random:tiny.en", labels=LABELS, device="cpu").eval()
    with torch.no_grad():
        frames = pretrained.encoder(mel)
        a, b = pretrained(mel)["embedding"], random(mel)["embedding"]
    assert frames.shape == (2, 150, 384) and torch.isfinite(frames).all()
    assert torch.isfinite(a).all() and a.shape == (2, 384)
    assert not torch.allclose(a, b, atol=1e-2)


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_forward_outputs(pooling):
    net = _net(pooling=pooling, vad_head=True).eval()
    with torch.no_grad():
        y = net(torch.randn(3, 80, 100))
    assert y["embedding"].shape == (3, 384)
    assert y["projection"].shape == (3, 128)
    assert torch.allclose(y["projection"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert y["logits"].shape == (3, len(LABELS))
    assert y["vad"].shape == (3, 3) and ((y["vad"] > 0) & (y["vad"] < 1)).all()
    if pooling == "mean":
        with torch.no_grad():
            hidden = net.encoder.hidden_states(torch.zeros(1, 80, 100))
            assert len(hidden) == 5 and torch.equal(hidden[-1], net.encoder(torch.zeros(1, 80, 100)))
            net.mix.weight.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0, 0.0]))  # softmax ~ all on block 2
            mixed = torch.nn.functional.layer_norm(hidden[2], (384,)).mean(1)
            assert torch.allclose(net(torch.zeros(1, 80, 100))["embedding"], mixed, atol=1e-5)
            last = _net(pooling="mean", layers="last").eval()
            assert last.mix is None
            assert torch.allclose(last(torch.zeros(1, 80, 100))["embedding"],
                                  last.encoder(torch.zeros(1, 80, 100)).mean(1))
    assert _net(vad_head=False)(torch.randn(1, 80, 100))["vad"] is None


def test_heads_see_the_standardised_embedding():
    """Training batches are standardised per feature (running statistics follow them); a training batch of
    one clip and evaluation use the running statistics."""
    norm = modellib.Standardize(4).train()
    x = torch.randn(64, 4) * torch.tensor([1.0, 10.0, 0.5, 3.0]) + torch.tensor([5.0, -2.0, 0.0, 100.0])
    z = norm(x)
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(4), atol=1e-3)
    assert torch.allclose(norm.running_mean, 0.1 * x.mean(0))
    stats = norm.running_mean.clone(), norm.running_var.clone()
    one = norm(x[:1])
    expected = (x[:1] - stats[0]) / (stats[1] + norm.eps).sqrt()
    assert torch.allclose(one, expected) and torch.equal(norm.running_mean, stats[0])
    assert torch.allclose(norm.eval()(x[:1]), expected)
    net = _net(vad_head=True).train()
    y = net(torch.randn(1, 80, 100))
    assert y["logits"].shape == (1, len(LABELS)) and torch.isfinite(y["logits"]).all()


def test_autocast_is_off_on_cpu():
    with modellib.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with warnings.catch_warnings():  # without a GPU torch warns that it disables CUDA autocast
        warnings.simplefilter("ignore", UserWarning)
        ctx = modellib.autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(2, 80, 200), (2, 80, 3000), (2, 128, 100), (80, 100)])
def test_wrong_input_shape(shape):
    with pytest.raises(ValueError, match=rf"expected a mel of shape \[batch, 80, 100\].*received \[{shape[0]}, "):
        _net()(torch.zeros(shape))


@pytest.mark.parametrize("name", ["tinyy", "random:huge"])
def test_unknown_model_name(name):
    with pytest.raises(ValueError, match="unknown Whisper model.*tiny.en"):
        modellib.load_encoder(name, device="cpu")


@pytest.mark.parametrize("n_frames", [301, 3002, 0, -2])
def test_bad_n_frames(n_frames):
    with pytest.raises(ValueError, match=f"n_frames must be an even integer in 2..3000.*{n_frames}"):
        modellib.load_encoder("random:tiny", n_frames=n_frames, device="cpu")


def test_missing_checkpoint_path(tmp_path):
    path = tmp_path / "nowhere" / "tiny.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        modellib.load_encoder(str(path), device="cpu")


def test_model_name_that_cannot_be_downloaded(tmp_path):
    root = tmp_path / "whisper-cache"
    with pytest.raises(FileNotFoundError) as info:
        modellib.load_encoder("tiny", download_root=str(root), device="cpu")
    message = str(info.value)
    assert str(root) in message and whisper._MODELS["tiny"] in message and "WHISPER_CHECKPOINT" in message
    assert not any(root.iterdir())  # no half-written file left behind


def test_bad_whisper_checkpoint_file(tmp_path):
    garbage, foreign = tmp_path / "garbage.pt", tmp_path / "foreign.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match=f"{garbage} is not a readable openai-whisper checkpoint"):
        modellib.load_encoder(str(garbage), device="cpu")
    with pytest.raises(ValueError, match=f"{foreign} is not an openai-whisper checkpoint.*'weights'"):
        modellib.load_encoder(str(foreign), device="cpu")


def test_config_rejects_inconsistent_fields():
    cfg = _net().config
    with pytest.raises(ValueError, match="n_frames=200.*n_audio_ctx=50"):
        dataclasses.replace(cfg, n_frames=200)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        dataclasses.replace(cfg, pooling="max")
    with pytest.raises(ValueError, match="unknown layers 'first'"):
        dataclasses.replace(cfg, layers="first")


# ----------------------------------------------------------------------------- freezing


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("policy", ["heads", "top:0", "top:2", "top:4", "all"])
def test_freeze_policies(policy):
    net = _net()
    enc = net.encoder
    heads = [net.mix, net.pool, net.projector, net.classifier, net.vad]
    assert _count(heads) + _count(net.encoder_parts()) == sum(p.numel() for p in net.parameters())
    trainable = {
        "heads": [],
        "top:0": [enc.ln_post],
        "top:2": [enc.blocks[2], enc.blocks[3], enc.ln_post],
        "top:4": [*enc.blocks, enc.ln_post],
        "all": net.encoder_parts(),
    }[policy]
    frozen = [m for m in net.encoder_parts() if all(m is not t for t in trainable)]

    assert modellib.set_trainable(net, policy) == _count(heads) + _count(trainable)
    net.train()
    for m in frozen:
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    for m in heads + trainable:
        assert m.training and all(p.requires_grad for p in m.parameters())

    y = net(torch.randn(2, 80, 100))
    (y["projection"].sum() + y["logits"].sum() + y["vad"].sum()).backward()
    for m in frozen:
        assert all(p.grad is None for p in m.parameters())
    for m in heads + trainable:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_freeze_policy_can_be_changed():
    net = _net()
    modellib.set_trainable(net, "heads")
    modellib.set_trainable(net, "all")
    net.train()
    assert all(p.requires_grad for p in net.parameters()) and all(m.training for m in net.modules())


@pytest.mark.parametrize("policy, message", [
    ("top:5", r"N must be an integer in 0..4"),
    ("top:-1", r"N must be an integer in 0..4"),
    ("top:", r"N must be an integer in 0..4"),
    ("encoder", r"unknown freeze policy 'encoder'; use one of \('heads', 'all', 'top:N'\)"),
])
def test_bad_freeze_policy(policy, message):
    with pytest.raises(ValueError, match=message):
        modellib.set_trainable(_net(), policy)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    net = _net(pooling="attentive", vad_head=True)
    # the stored config alone rebuilds the model: its Whisper source need not exist any more
    net.config = dataclasses.replace(net.config, whisper=str(tmp_path / "gone" / "tiny.pt"))
    path = tmp_path / "runs" / "best.pt"
    modellib.save_model(net, path, extra={"epoch": 3, "val": {"ua": 0.5, "confusion": [[1, 0], [0, 1]]}})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temp file left

    loaded = modellib.load_model(path, device="cpu")
    assert loaded.config == net.config and not loaded.training
    assert modellib.read_checkpoint(path)["extra"] == {"epoch": 3, "val": {"ua": 0.5, "confusion": [[1, 0], [0, 1]]}}
    mel = torch.randn(2, 80, 100)
    with torch.no_grad():
        a, b = net.eval()(mel), loaded(mel)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_build_model_from_a_config():
    cfg = _net(pooling="mean", vad_head=False).config
    rebuilt = modellib.ModelConfig(**dataclasses.asdict(cfg))
    assert rebuilt == cfg and isinstance(rebuilt.dims, whisper.model.ModelDimensions)
    assert modellib.build_model(rebuilt, device="cpu").config == cfg


def test_save_rejects_extra_that_cannot_be_loaded_back(tmp_path):
    with pytest.raises(TypeError, match="extra=.*weights_only"):
        modellib.save_model(_net(), tmp_path / "m.pt", extra={"score": np.float64(math.pi)})
    assert not any(tmp_path.iterdir())


def test_load_model_bad_files(tmp_path):
    missing, garbage, foreign, truncated = (tmp_path / n for n in ("missing.pt", "garbage.pt", "foreign.pt",
                                                                   "truncated.pt"))
    garbage.write_bytes(b"\x00garbage" * 100)
    torch.save({"state_dict": {}}, foreign)
    good = tmp_path / "good.pt"
    modellib.save_model(_net(), good)
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    with pytest.raises(FileNotFoundError, match=str(missing)):
        modellib.load_model(missing, device="cpu")
    with pytest.raises(ValueError, match=f"{garbage} is not a readable whisper-ser/1 model file"):
        modellib.load_model(garbage, device="cpu")
    with pytest.raises(ValueError, match=f"{truncated} is not a readable whisper-ser/1 model file"):
        modellib.load_model(truncated, device="cpu")
    empty_pickle = tmp_path / "empty_pickle.pt"
    empty_pickle.write_bytes(b"\x80\x02.")  # the unpickler pops an empty stack: IndexError, not a pickle error
    with pytest.raises(ValueError, match=f"{empty_pickle} is not a readable whisper-ser/1 model file"):
        modellib.load_model(empty_pickle, device="cpu")
    with pytest.raises(ValueError, match=f"{foreign} is not a whisper-ser/1 model file"):
        modellib.load_model(foreign, device="cpu")


def test_load_model_names_an_openai_whisper_checkpoint(whisper_checkpoint):
    with pytest.raises(ValueError, match="openai-whisper checkpoint: use it as EmotionModel.from_whisper"):
        modellib.load_model(whisper_checkpoint, device="cpu")


def test_load_model_with_mismatched_weights(tmp_path):
    path = tmp_path / "m.pt"
    modellib.save_model(_net(), path)
    obj = torch.load(path, weights_only=True)
    obj["config"]["labels"] = LABELS + ["calm"]  # classifier weights no longer fit
    torch.save(obj, path)
    with pytest.raises(ValueError, match=f"(?s){path}: config or weights do not form a model.*classifier"):
        modellib.load_model(path, device="cpu")
