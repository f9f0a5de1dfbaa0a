"""Where the weights come from and go: Whisper checkpoints in, trained models out.

- ``load_encoder`` reads openai-whisper's audio encoder from a model name (downloaded once into
  ``~/.cache/whisper``), a checkpoint file in openai-whisper's format, or ``random:<name>`` (untrained),
  its positional embedding trimmed to the model's context; ``from_whisper`` puts an ``EmotionModel`` on it
  (a ``ModelConfig`` whose dims are the checkpoint's).
- ``save_model``/``load_model`` write and read one self-describing file (``FORMAT``) that rebuilds the
  model without the original Whisper checkpoint; ``atomic_save`` never leaves a half-written file.
- ``export_onnx``/``OnnxModel`` write the whole model as ONNX (log-mel in; probabilities at its temperature,
  logits, embedding and VAD out; its ``ModelConfig`` in the file's metadata) and run it with onnxruntime.

- ``push`` (``python checkpoint.py push RUN_DIR REPO_ID``) uploads a run's model, card, config and ONNX export to
  the Hugging Face Hub.

As openai-whisper keeps loading in its ``__init__.py``, the network (``model.py``) knows nothing of this.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import socket
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch
import whisper
from torch import Tensor
from whisper.model import ModelDimensions

import cli
from model import DIMS, EmotionModel, Encoder, ModelConfig, check_n_frames, resolve_device

FORMAT = "whisper-ser/1"
ONNX_INPUTS = ("mel", "frames")  # [batch, n_mels, n_frames] float32 log-mel, [batch] int64 frames holding the clip
ONNX_OUTPUTS = ("probs", "logits", "embedding", "vad")  # vad only where the model has a VAD head
DOWNLOAD_TIMEOUT_S = 30.0


def _download_root(download_root: str | None) -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache")
    return download_root or os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # whisper._download calls urlopen without a timeout: an unreachable host would block forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _resolve_checkpoint(name_or_path: str, download_root: str | None) -> Path:
    """Local file of an openai-whisper model name (downloading it when absent) or checkpoint path."""
    if name_or_path in whisper._MODELS:
        url = whisper._MODELS[name_or_path]
        root = _download_root(download_root)
        target = os.path.join(root, os.path.basename(url))
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                return Path(whisper._download(url, root, in_memory=False))
        except (OSError, RuntimeError) as e:  # URLError, timeouts and checksum errors
            raise FileNotFoundError(
                f"Whisper checkpoint {name_or_path!r} is not in {root} (looked for {target}) and could not "
                f"be downloaded from {url}: {e}. Pass the path of an openai-whisper checkpoint file "
                f"instead (e.g. WHISPER_CHECKPOINT=/path/to/{name_or_path}.pt for the demo and tests), or "
                f"put the file at {target}.") from None
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists() or os.sep in name_or_path or path.suffix in (".pt", ".pth", ".bin"):
        raise FileNotFoundError(f"Whisper checkpoint file {name_or_path} does not exist or is not a file")
    raise ValueError(f"unknown Whisper model {name_or_path!r}: use one of {whisper.available_models()}, "
                     f"random:<one of them> for an untrained encoder, or a checkpoint file path")


def _read_encoder_checkpoint(path: Path) -> tuple[ModelDimensions, dict[str, Tensor]]:
    """``dims`` and the ``encoder.*`` weights (prefix removed, float32) of an openai-whisper checkpoint."""
    try:
        # mmap: only the encoder's tensors are ever read from disk, never the decoder's.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # a damaged file makes the unpickler raise nearly anything (IndexError too)
        raise ValueError(f"{path} is not a readable openai-whisper checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not an openai-whisper checkpoint: expected the keys 'dims' and "
                         f"'model_state_dict', found {keys}")
    try:
        dims = ModelDimensions(**checkpoint["dims"])
    except TypeError as e:
        raise ValueError(f"{path}: bad 'dims' {checkpoint['dims']}: {e}") from None
    state = {k.removeprefix("encoder."): v.float() for k, v in checkpoint["model_state_dict"].items()
             if k.startswith("encoder.")}
    return dims, state


def load_encoder(name_or_path: str, n_frames: int = 300, device: str | torch.device | None = None,
                 download_root: str | None = None) -> Encoder:
    """Whisper's audio encoder alone, float32, taking ``[B, n_mels, n_frames]`` mel inputs.

    name_or_path: an openai-whisper model name (``whisper.available_models()``; downloaded into
    ``download_root``, default ``~/.cache/whisper``), a checkpoint file in openai-whisper's format
    (``{"dims", "model_state_dict"}``), or ``random:<name>`` for an untrained encoder of that size.
    The positional embedding keeps its first ``n_frames // 2`` rows; every other weight is unchanged.
    ``encoder.dims`` holds the checkpoint's dims with ``n_audio_ctx = n_frames // 2``.
    """
    check_n_frames(n_frames)
    if name_or_path.startswith("random:"):
        name = name_or_path.removeprefix("random:")
        if name not in DIMS:
            raise ValueError(f"unknown Whisper model {name!r} in {name_or_path!r}: use random:<name> with one "
                             f"of {list(DIMS)}")
        dims, state = DIMS[name], None
    else:
        path = _resolve_checkpoint(name_or_path, download_root)
        dims, state = _read_encoder_checkpoint(path)
        check_n_frames(n_frames, 2 * dims.n_audio_ctx)
    encoder = Encoder(replace(dims, n_audio_ctx=n_frames // 2))
    if state is not None:
        state["positional_embedding"] = state["positional_embedding"][: n_frames // 2]
        try:
            encoder.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{name_or_path}: the encoder weights do not match its dims {dims}: {e}") from None
    return encoder.to(resolve_device(device))


def from_whisper(config: ModelConfig, device: str | torch.device | None = None,
                 download_root: str | None = None) -> EmotionModel:
    """A new ``EmotionModel`` (heads untrained) as ``config`` describes it, on the encoder of ``config.whisper``
    (``load_encoder``'s name, path or random:<name>), whose dims (and number of mels) it takes."""
    encoder = load_encoder(config.whisper, config.n_frames, device="cpu", download_root=download_root)
    config = replace(config, dims=encoder.dims, n_mels=encoder.dims.n_mels)
    return EmotionModel(config, encoder).to(resolve_device(device))


def save_model(model: EmotionModel, path: str | Path, extra: dict | None = None) -> None:
    """Write ``{"format", "config", "state_dict", "extra"}`` to ``path`` atomically (temp file + rename).

    ``extra`` (e.g. epoch, metrics) must hold only what ``torch.load(weights_only=True)`` reads back:
    tensors, numbers, strings, None and lists/tuples/dicts of them.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(extra, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as e:
        raise TypeError(f"save_model extra={extra!r} holds objects weights_only loading refuses: {e}") from None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "config": asdict(model.config), "state_dict": state, "extra": extra}, path)


def atomic_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: a reader (or a run killed midway)
    never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_checkpoint(path: str | Path) -> dict:
    """The dict ``save_model`` wrote to ``path`` (tensors on CPU); ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file makes the unpickler raise nearly anything (IndexError too)
        raise ValueError(f"{path} is not a readable {FORMAT} model file: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = ""
        if isinstance(obj, dict) and {"dims", "model_state_dict"} <= obj.keys():
            hint = " (it is an openai-whisper checkpoint: give it as the Whisper encoder, --whisper)"
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} is not a {FORMAT} model file (format: {found!r}){hint}")
    missing = {"config", "state_dict", "extra"} - obj.keys()
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    return obj


def load_model(path: str | Path, device: str | torch.device | None = None) -> EmotionModel:
    """The model ``save_model`` wrote, rebuilt from its stored config (no Whisper checkpoint needed), in
    eval mode (its ``extra``: ``read_checkpoint(path)["extra"]``)."""
    obj = read_checkpoint(path)
    try:
        model = EmotionModel(ModelConfig(**obj["config"]))
        model.load_state_dict(obj["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: config or weights do not form a model: {e}") from None
    return model.to(resolve_device(device)).eval()


# ----------------------------------------------------------------------------- ONNX


class _Exported(torch.nn.Module):
    """The network as exported: (mel, frames) -> probabilities at the temperature, logits, embedding[, vad]."""

    def __init__(self, net: EmotionModel):
        super().__init__()
        self.net = net

    def forward(self, mel: Tensor, frames: Tensor) -> tuple[Tensor, ...]:
        y = self.net(mel, frames)
        logits = y["logits"].float()
        out = ((logits / self.net.config.temperature).softmax(-1), logits, y["embedding"].float())
        return out if y["vad"] is None else (*out, y["vad"].float())


def export_onnx(net: EmotionModel, path: str | Path) -> Path:
    """Write ``net`` (on the CPU, in eval mode) to ``path`` as ONNX with a dynamic batch axis.

    Inputs ``ONNX_INPUTS``: ``mel`` [batch, n_mels, n_frames] float32 (``audio.eval_features``) and ``frames``
    [batch] int64 (the frames that hold each clip; ``audio.clip_frames``). Outputs ``ONNX_OUTPUTS``: ``probs``
    [batch, n_labels] (softmax of the logits over the temperature), ``logits``, ``embedding`` [batch, D] and,
    where the model has one, ``vad`` [batch, 3]. Metadata: ``format`` (``FORMAT``), ``labels`` (JSON),
    ``temperature``, ``n_frames``, ``n_mels`` and ``config`` (the ``ModelConfig`` as JSON, which ``OnnxModel``
    reads)."""
    import json

    import onnx

    path = Path(path)
    net = net.to("cpu").eval()
    exported = _Exported(net).eval()
    cfg = net.config
    mel = torch.zeros(2, cfg.n_mels, cfg.n_frames)
    frames = torch.tensor([cfg.n_frames, cfg.n_frames // 2])
    outputs = ONNX_OUTPUTS if cfg.vad_head else ONNX_OUTPUTS[:-1]
    batch = torch.export.Dim("batch")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        torch.onnx.export(exported, (mel, frames), str(path), input_names=list(ONNX_INPUTS), output_names=list(outputs),
                          dynamo=True, dynamic_shapes={"mel": {0: batch}, "frames": {0: batch}}, external_data=False)
    model = onnx.load(str(path))
    metadata = {"format": FORMAT, "labels": json.dumps(cfg.labels), "temperature": repr(cfg.temperature),
                "n_frames": str(cfg.n_frames), "n_mels": str(cfg.n_mels), "config": json.dumps(asdict(cfg))}
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


class OnnxModel:
    """An ``export_onnx`` file run by onnxruntime on the CPU, called as ``EmotionModel`` is: ``model(mel, frames)``
    -> {"logits", "embedding", "vad"} tensors (``vad`` None without a VAD head); ``config`` is its ``ModelConfig``."""

    def __init__(self, path: str | Path):
        import json

        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a file that is not ONNX
            raise ValueError(f"{path} is not a readable ONNX model: {type(e).__name__}: {e}") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise ValueError(f"{path} is an ONNX model without this project's metadata (format {FORMAT!r} and its "
                             f"config; found keys {sorted(metadata)}): export one with predict.py --export-onnx")
        self.config = ModelConfig(**json.loads(metadata["config"]))
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, mel: Tensor, frames: Tensor | None = None) -> dict[str, Tensor | None]:
        if frames is None:
            frames = torch.full((len(mel),), mel.shape[-1], dtype=torch.int64)
        values = self.session.run(None, {"mel": mel.float().cpu().numpy(), "frames": frames.cpu().numpy()})
        out = {name: torch.from_numpy(v) for name, v in zip(self.outputs, values, strict=True)}
        return {"logits": out["logits"], "embedding": out["embedding"], "vad": out.get("vad")}



# ----------------------------------------------------------------------------- the Hugging Face Hub

PUSHED = ("best.pt", "README.md", "config.json", "model.onnx")  # what push uploads from a run directory


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload a finished run's ``PUSHED`` files to the Hub model repository ``repo_id`` (created when absent): its
    ``best.pt``, model card ``README.md`` (``card.py``), ``config.json`` and ``model.onnx`` (exported here from
    ``best.pt`` when the run has none). Returns the commit's URL. A run without the first three is a
    FileNotFoundError naming what is missing; a failed upload a ConnectionError naming the Hub's address."""
    import huggingface_hub

    run_dir = Path(run_dir)
    missing = [name for name in PUSHED[:3] if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run: it has no {', '.join(missing)}")
    if not (run_dir / "model.onnx").is_file():
        export_onnx(load_model(run_dir / "best.pt", device="cpu"), run_dir / "model.onnx")
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=run_dir, repo_id=repo_id, allow_patterns=list(PUSHED),
                                   commit_message=f"Upload {run_dir.name}")
    except Exception as e:  # the HTTP client's errors: no route, DNS, refused, timeouts, 401/403
        raise ConnectionError(f"could not upload {run_dir} to {api.endpoint} as {repo_id}: {cli.one_line(e)}") from e
    return commit.commit_url


def _main(argv: list[str]) -> None:
    parser = cli.ArgumentParser(prog="checkpoint.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser("push", help="upload a run's best.pt, model card, config.json and model.onnx")
    upload.add_argument("run_dir", type=Path)
    upload.add_argument("repo_id", help="the Hub model repository, e.g. user/whisper-ser-ravdess")
    upload.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    print(f"uploaded {args.run_dir} to {push(args.run_dir, args.repo_id, private=args.private)}")


def main(argv: list[str] | None = None) -> int:
    """``python checkpoint.py push RUN_DIR REPO_ID``; an error is one line on stderr (``--debug``: the traceback)."""
    return cli.run(_main, argv, "checkpoint.py")


if __name__ == "__main__":
    sys.exit(main())
