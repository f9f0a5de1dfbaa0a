"""The ONNX export: the same probabilities, embeddings and VAD as PyTorch (random and real weights, files of
several lengths, real RAVDESS speech), the metadata it carries, and clear errors for files that are not ours."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from conftest import random_model

import checkpoint
import predict
from labels import label_names
from model import ModelConfig

N_FRAMES = 100


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random tiny model with a VAD head and a temperature, saved as best.pt and exported by predict.py."""
    root = tmp_path_factory.mktemp("onnx")
    net = random_model(pooling="mean", n_frames=N_FRAMES, labels=label_names("synthetic"))
    net.config = dataclasses.replace(net.config, temperature=1.7)
    checkpoint.save_model(net, root / "best.pt")
    assert predict.main(["--checkpoint", str(root / "best.pt"), "--export-onnx", str(root / "model.onnx")]) == 0
    return root


def test_the_file_says_what_it_holds(exported):
    model = onnx.load(str(exported / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == checkpoint.FORMAT and json.loads(meta["labels"]) == label_names("synthetic")
    assert float(meta["temperature"]) == 1.7 and int(meta["n_frames"]) == N_FRAMES and int(meta["n_mels"]) == 80
    assert [i.name for i in model.graph.input] == list(checkpoint.ONNX_INPUTS)
    assert [o.name for o in model.graph.output] == list(checkpoint.ONNX_OUTPUTS)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a dynamic batch axis
    assert ModelConfig(**json.loads(meta["config"])).temperature == 1.7


def test_from_onnx_equals_from_checkpoint_on_files_of_several_lengths(exported, tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for seconds in (0.4, 1.0, 2.3, 6.1):  # shorter than a window, one, a few, many
        files.append(tmp_path / f"{seconds}.wav")
        sf.write(files[-1], rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32), 16000)
    torch_side = predict.Predictor.from_checkpoint(exported / "best.pt", device="cpu", batch_size=3)
    onnx_side = predict.Predictor.from_onnx(exported / "model.onnx", batch_size=3)
    for (_, a), (_, b) in zip(torch_side.predict_many(files), onnx_side.predict_many(files), strict=True):
        assert a.label == b.label and len(a.windows) == len(b.windows)
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
        np.testing.assert_allclose(list(a.vad.values()), list(b.vad.values()), atol=1e-4)
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-4)
        assert [w.label for w in a.windows] == [w.label for w in b.windows]


def test_predict_py_runs_the_onnx_file_and_refuses_what_is_not_ours(exported, tmp_path, capsys):
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.random.default_rng(1).normal(0, 0.1, 24000).astype(np.float32), 16000)
    assert predict.main(["--checkpoint", str(exported / "model.onnx"), "--format", "json", str(clip)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    expected = predict.Predictor.from_checkpoint(exported / "best.pt", device="cpu").predict(clip)
    assert row["label"] == expected.label
    assert row["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)

    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model, not one of ours
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(ValueError, match="without this project's metadata"):
        predict.Predictor.from_onnx(foreign)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        predict.Predictor.from_onnx(tmp_path / "junk.onnx")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert predict.main(["--checkpoint", str(tmp_path / "notes.pt"), "--export-onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot load checkpoint" in err and "notes.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(exported / "best.pt"), "--export-onnx", str(tmp_path / "y.onnx"), str(clip)])
    assert "give no audio files with it" in capsys.readouterr().err


def test_onnx_equals_pytorch_on_real_speech(whisper_checkpoint, ravdess_dir, tmp_path):
    """OpenAI's tiny.en (3 s context) with a classifier head, on real RAVDESS clips: the probabilities to 1e-4."""
    torch.manual_seed(0)
    net = checkpoint.from_whisper(ModelConfig(whisper=str(whisper_checkpoint), dims=None,
                                              labels=label_names("ravdess"), temperature=1.3), device="cpu")
    checkpoint.save_model(net, tmp_path / "best.pt")
    checkpoint.export_onnx(net, tmp_path / "model.onnx")
    clips = sorted(ravdess_dir.glob("Actor_0[12]/*.wav"))[::15]
    torch_side = predict.Predictor.from_checkpoint(tmp_path / "best.pt", device="cpu")
    onnx_side = predict.Predictor.from_onnx(tmp_path / "model.onnx")
    for (_, a), (_, b) in zip(torch_side.predict_many(clips), onnx_side.predict_many(clips), strict=True):
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
        for wa, wb in zip(a.windows, b.windows, strict=True):
            np.testing.assert_allclose(list(wa.probabilities.values()), list(wb.probabilities.values()), atol=1e-4)
    assert len(clips) >= 6
