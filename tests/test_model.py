"""model.py: the network (trimmed encoder, layer mix, pooling, heads), freeze policies, device and precision."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import whisper
from conftest import LABELS, random_model

import model as modellib

_net = random_model


def test_dims_table_covers_every_model_and_matches_the_real_checkpoint(whisper_checkpoint):
    assert list(modellib.DIMS) == whisper.available_models()
    assert modellib.DIMS["large-v3"].n_mels == modellib.DIMS["turbo"].n_mels == 128
    stored = torch.load(whisper_checkpoint, map_location="cpu", weights_only=True)["dims"]
    assert dataclasses.asdict(modellib.DIMS["tiny.en"]) == stored


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


def test_runtime_autocast_is_bf16_on_gpu_and_off_on_cpu_unless_asked():
    with modellib.Runtime("cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    with modellib.Runtime("cpu", "bf16").autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with warnings.catch_warnings():  # without a GPU torch warns that it disables CUDA autocast
        warnings.simplefilter("ignore", UserWarning)
        ctx = modellib.Runtime(torch.device("cuda")).autocast()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(modellib.Runtime("cuda", "fp32").autocast(), torch.autocast)
    assert modellib.Runtime.resolve("cpu") == modellib.Runtime(torch.device("cpu"), "auto")
    with pytest.raises(ValueError, match="precision must be one of"):
        modellib.Runtime("cpu", "fp16")


def test_resolve_device():
    assert modellib.resolve_device("cpu") == torch.device("cpu")
    assert modellib.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert modellib.resolve_device("cuda", rank=1) == torch.device("cuda", 1)  # set_device needs the index
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert modellib.resolve_device(None, rank=1) == expected


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("shape", [(2, 80, 200), (2, 80, 3000), (2, 128, 100), (80, 100)])
def test_wrong_input_shape(shape):
    with pytest.raises(ValueError, match=rf"expected a mel of shape \[batch, 80, 100\].*received \[{shape[0]}, "):
        _net()(torch.zeros(shape))


def test_config_rejects_inconsistent_fields():
    cfg = _net().config
    with pytest.raises(ValueError, match="n_frames=200.*n_audio_ctx=50"):
        dataclasses.replace(cfg, n_frames=200)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        dataclasses.replace(cfg, pooling="max")
    with pytest.raises(ValueError, match="unknown layers 'first'"):
        dataclasses.replace(cfg, layers="first")
    with pytest.raises(ValueError, match="vad_probe describes the VAD head"):
        dataclasses.replace(cfg, vad_head=False, vad_probe=True)
    with pytest.raises(ValueError, match="no encoder dims: build it with checkpoint.from_whisper"):
        modellib.EmotionModel(dataclasses.replace(cfg, dims=None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pooling = "mean"


def test_a_probe_vad_head_is_linear_and_a_trained_one_a_sigmoid():
    torch.manual_seed(0)
    mel = torch.randn(3, 80, 100)
    trained, probe = _net(vad_head=True).eval(), _net(vad_head=True).eval()
    probe = modellib.EmotionModel(dataclasses.replace(probe.config, vad_probe=True), probe.encoder).eval()
    probe.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert torch.allclose(trained(mel)["vad"], torch.sigmoid(probe(mel)["vad"]), atol=1e-6)
    # a probe head starts at zero and draws nothing: a run's random stream is the one without it
    without = dataclasses.replace(trained.config, vad_head=False)
    streams = []
    for config in (without, dataclasses.replace(without, vad_head=True, vad_probe=True)):
        torch.manual_seed(0)
        net = modellib.EmotionModel(config)
        streams.append(torch.rand(3))
    assert torch.equal(*streams) and not net.vad.weight.any()


def test_parameter_count_and_buffer_snapshot():
    net = _net()
    assert modellib.n_parameters(net) == sum(p.numel() for p in net.parameters())
    trainable = modellib.set_trainable(net, "heads")
    assert trainable == modellib.n_parameters(net, trainable=True) < modellib.n_parameters(net)
    snapshot = modellib.buffer_snapshot(net)
    net.train()(torch.randn(4, 80, 100))  # a training forward pass moves the running statistics
    assert not torch.equal(snapshot[0], net.norm.running_mean)
    modellib.restore_buffers(net, snapshot)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, net.buffers(), strict=True))
    assert len(net.layer_weights()) == 5 and float(net.layer_weights().sum()) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- freezing


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("policy", ["heads", "top:0", "top:2", "top:4", "blocks", "all"])
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
        "blocks": [*enc.blocks, enc.ln_post],
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
    ("encoder", r"unknown freeze policy 'encoder'; use one of \('heads', 'blocks', 'all', 'top:N'\)"),
])
def test_bad_freeze_policy(policy, message):
    with pytest.raises(ValueError, match=message):
        modellib.set_trainable(_net(), policy)




@pytest.mark.parametrize("pooling", ["mean", "attentive"])
def test_pooling_covers_only_the_frames_that_hold_the_clip(pooling):
    net = random_model(pooling=pooling, n_frames=100).eval()
    torch.manual_seed(0)
    mel, frames = torch.randn(3, 80, 100), torch.tensor([100, 37, 1])
    with torch.no_grad():
        out = net(mel, frames)["embedding"]
        h = net.mix(net.encoder.hidden_states(mel))  # [3, 50 positions, D]
        for b, n in enumerate(frames.tolist()):
            kept = h[b: b + 1, : (n + 1) // 2]  # position t comes from frames 2t-1..2t+1
            expected = kept.mean(1) if pooling == "mean" else net.pool(kept)
            assert torch.allclose(out[b], expected[0], atol=1e-5), n
        assert torch.equal(net(mel, torch.full((3,), 100))["embedding"], net(mel)["embedding"])
        assert not torch.allclose(out[1], net(mel)["embedding"][1], atol=1e-3)
