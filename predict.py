"""Emotion and valence/arousal/dominance for audio files of any length.

    python predict.py --checkpoint runs/demo/supervised/best.pt clip.wav recordings/        # a table
    python predict.py --checkpoint runs/demo/supervised/best.pt recordings/ --format csv --per-window > out.csv
    python predict.py --checkpoint runs/demo/supervised/best.pt recordings/ --embeddings emb.npy   # + emb.csv

A directory is searched recursively for audio files by extension (.wav, .flac, .ogg and, where
libsndfile decodes it, .mp3). Every file is downmixed and resampled to 16 kHz (``audio.load_audio``).

Sliding windows: the model sees ``n_frames`` mel frames (its checkpoint's context, 3 s by default).
A longer file is cut into windows of that length every ``--hop`` seconds (half a window by default);
the last window is aligned to the end of the file, so that every window holds only real audio and
every sample lies in at least one window. A file's probabilities, valence/arousal/dominance and
embedding are the means over its windows; the probabilities are then at the checkpoint's temperature
(``calibration.py``). ``--min-confidence P`` labels a file or window ``uncertain`` whose top probability is
below P. A file shorter than the context is one window, zero-padded
at the end as in training. Each window's features are computed as the loaders compute them for an
evaluation crop (the log-mel of the zero-padded window, with its own maximum).

Exit status: 0 when every file was predicted, 1 when any file failed (each failure is one line on
stderr naming the file and the reason; the others are still predicted), 2 for a bad checkpoint or
bad arguments (one line on stderr; ``--debug`` shows the traceback of any error).
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

import calibration
import checkpoint
import cli
import model as modellib
from audio import HOP_LENGTH, SAMPLE_RATE, AudioError, clip_frames, eval_features, load_audio, to_16k, window_starts
from labels import VAD

PROG = "predict.py"
UNCERTAIN = "uncertain"  # the label of a file or window whose top probability is under min_confidence
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg") + ((".mp3",) if "MP3" in sf.available_formats() else ())


@dataclass
class Window:
    """One window of a file: its time span in seconds and the model's outputs on it."""

    start: float
    end: float
    label: str
    probabilities: dict[str, float]
    vad: dict[str, float] | None


@dataclass
class Prediction:
    """A file's (or array's) prediction: window means of the probabilities, VAD (0-1) and embedding [D]."""

    label: str
    probabilities: dict[str, float]
    vad: dict[str, float] | None
    windows: list[Window]
    embedding: np.ndarray
    duration: float  # seconds

    def to_dict(self, windows: bool = True) -> dict:
        """JSON-ready fields (no embedding)."""
        out = {"label": self.label, "probabilities": self.probabilities, "vad": self.vad,
               "duration": self.duration}
        if windows:
            out["windows"] = [vars(w) for w in self.windows]
        return out


def read_audio(audio: str | Path | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
    """A file, or an array ([T] or [T, channels]) at ``sample_rate`` Hz -> float32 mono [T'] at 16 kHz.

    Raises audio.AudioError naming the file when it cannot be decoded, is empty or holds non-finite samples.
    """
    if isinstance(audio, (str, Path)):
        name, out = str(audio), load_audio(audio)
    else:
        if sample_rate is None:
            raise ValueError("sample_rate is required when predicting an array")
        name, out = "array", to_16k(audio, sample_rate)
    if out.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.isfinite(out).all():
        raise AudioError(f"{name}: non-finite samples (NaN or infinity)")
    return out


@dataclass
class _Job:
    """A source being scored: its audio [T] at 16 kHz, window starts and per-window outputs."""

    name: str
    audio: np.ndarray | None = None
    starts: list[int] = field(default_factory=list)
    error: str | None = None
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.outputs) == len(self.starts)


class Predictor:
    """A trained model applied to whole files on sliding windows: an ``EmotionModel``, or its ONNX export run by
    onnxruntime (``checkpoint.OnnxModel``); the reading of files, the windows and their log-mel are the same.

    >>> p = Predictor.from_checkpoint("runs/demo/supervised/best.pt")     # or Predictor.from_onnx("model.onnx")
    >>> p.predict("clip.wav").label
    """

    def __init__(self, net: modellib.EmotionModel | checkpoint.OnnxModel, device: str | torch.device | None = None, *,
                 hop: float | None = None, batch_size: int = 32, precision: str = "auto",
                 min_confidence: float | None = None):
        """``min_confidence``: a file or window whose top probability is below it is labelled ``UNCERTAIN``
        (its probabilities are kept); None: always the most probable class."""
        if min_confidence is not None and not 0 < min_confidence < 1:
            raise ValueError(f"min_confidence must be between 0 and 1 (exclusive), got {min_confidence}")
        self.min_confidence = min_confidence
        self.runtime = modellib.Runtime.resolve(device, precision)  # as training evaluates: bf16 on a GPU
        self.net = net.to(self.device).eval() if isinstance(net, modellib.EmotionModel) else net
        self.labels: list[str] = list(net.config.labels)
        self.n_frames: int = net.config.n_frames
        self.window = self.n_frames * HOP_LENGTH  # samples
        hop_samples = self.window // 2 if hop is None else round(hop * SAMPLE_RATE)
        window_starts(self.window, self.window, hop_samples)  # validates hop
        self.hop = hop_samples
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, **kw) -> Predictor:
        """Load a checkpoint written by ``checkpoint.save_model`` (e.g. a run's ``best.pt``)."""
        device = modellib.resolve_device(device)
        return cls(checkpoint.load_model(path, device=device), device, **kw)

    @classmethod
    def from_onnx(cls, path: str | Path, **kw) -> Predictor:
        """Load a model ``checkpoint.export_onnx`` wrote (``predict.py --export-onnx``), run on the CPU."""
        return cls(checkpoint.OnnxModel(path), "cpu", **kw)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def has_vad(self) -> bool:
        return bool(self.net.config.vad_head)

    def predict(self, audio: str | Path | np.ndarray, sample_rate: int | None = None) -> Prediction:
        """Predict one file, or one array ([T] mono or [T, channels]) recorded at ``sample_rate`` Hz."""
        job = self._prepare(_Job(str(audio) if isinstance(audio, (str, Path)) else "array",
                                 audio=read_audio(audio, sample_rate)))
        for chunk in _chunks([(job, i) for i in range(len(job.starts))], self.batch_size):
            self._score(chunk)
        return self._finish(job)

    def predict_many(self, paths: Iterable[str | Path], progress: bool = False
                     ) -> Iterator[tuple[str, Prediction | str]]:
        """Predict files in order, batching windows across files; yields (path, Prediction) or, for a
        file that could not be read, (path, reason)."""
        paths = [str(p) for p in paths]
        queue: list[_Job] = []  # in input order, not yet yielded
        pending: list[tuple[_Job, int]] = []  # windows waiting for a forward pass
        for path in tqdm(paths, desc="files", unit="file", disable=not progress):
            job = _Job(path)
            try:
                job.audio = read_audio(path)
            except AudioError as e:
                job.error = cli.one_line(e)
            queue.append(self._prepare(job))
            pending += [(job, i) for i in range(len(job.starts))]
            while len(pending) >= self.batch_size:
                self._score(pending[: self.batch_size])
                pending = pending[self.batch_size:]
            while queue and queue[0].done:
                yield self._result(queue.pop(0))
        for chunk in _chunks(pending, self.batch_size):
            self._score(chunk)
        for job in queue:
            yield self._result(job)

    # ------------------------------------------------------------------ internals

    def _prepare(self, job: _Job) -> _Job:
        if job.error is None:
            job.starts = window_starts(len(job.audio), self.window, self.hop)
        return job

    @torch.no_grad()
    def _score(self, windows: list[tuple[_Job, int]]) -> None:
        """One forward pass over ``windows`` (job, window index); appends each window's outputs to its job."""
        clips = [job.audio[job.starts[i]: job.starts[i] + self.window] for job, i in windows]
        mel = torch.stack([eval_features(torch.from_numpy(a), self.n_frames, self.net.config.n_mels) for a in clips])
        frames = torch.tensor([int(clip_frames(len(a), self.n_frames)) for a in clips])
        with self.runtime.autocast():
            y = self.net(mel.to(self.device), frames.to(self.device))
        probs = y["logits"].float().softmax(-1).cpu().numpy()
        emb = y["embedding"].float().cpu().numpy()
        vad = y["vad"].float().cpu().numpy() if y["vad"] is not None else None
        for k, (job, _) in enumerate(windows):
            job.outputs.append({"probs": probs[k], "embedding": emb[k], "vad": None if vad is None else vad[k]})

    def _finish(self, job: _Job) -> Prediction:
        n, sr = len(job.audio), SAMPLE_RATE
        raw = np.stack([o["probs"] for o in job.outputs])  # [W, C], at temperature 1
        temperature = self.net.config.temperature
        probs = calibration.calibrated(raw, temperature)  # each window's: softmax(logits / T)
        vad = np.stack([o["vad"] for o in job.outputs]) if self.has_vad else None  # [W, 3]
        windows = [Window(start / sr, min(start + self.window, n) / sr, self._label(p),
                          self._named(p), None if vad is None else _vad_dict(vad[k]))
                   for k, (start, p) in enumerate(zip(job.starts, probs, strict=True))]
        mean = calibration.calibrated(raw.mean(0, keepdims=True), temperature)[0]  # as evaluate.predict_split
        return Prediction(label=self._label(mean), probabilities=self._named(mean),
                          vad=None if vad is None else _vad_dict(vad.mean(0)), windows=windows,
                          embedding=np.mean([o["embedding"] for o in job.outputs], axis=0), duration=n / sr)

    def _result(self, job: _Job) -> tuple[str, Prediction | str]:
        return job.name, (job.error if job.error is not None else self._finish(job))

    def _label(self, probs: np.ndarray) -> str:
        if self.min_confidence is not None and probs.max() < self.min_confidence:
            return UNCERTAIN
        return self.labels[int(probs.argmax())]

    def _named(self, probs: np.ndarray) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.labels, probs, strict=True)}


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _vad_dict(vad: np.ndarray) -> dict[str, float]:
    return {name: float(v) for name, v in zip(VAD, vad, strict=True)}


# ----------------------------------------------------------------------------- command line


def find_audio(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to predict (directories searched recursively by extension, in sorted order) and
    (input, reason) for inputs that give none."""
    files, missing = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                missing.append((name, f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this directory"))
            files += found
        elif path.exists():
            files.append(path)
        else:
            missing.append((name, "no such file or directory"))
    return files, missing


def format_rows(name: str, pred: Prediction, labels: list[str], per_window: bool) -> list[dict]:
    """Flat rows (the file, then its windows when ``per_window``) for the table and CSV outputs."""
    def row(window: str, start: float, end: float, label: str, probs: dict, vad: dict | None) -> dict:
        return {"file": name, "window": window, "start_s": f"{start:.2f}", "end_s": f"{end:.2f}", "label": label,
                **{k: f"{probs[k]:.4f}" for k in labels},
                **({k: f"{v:.4f}" for k, v in vad.items()} if vad is not None else {})}

    rows = [row("all", 0.0, pred.duration, pred.label, pred.probabilities, pred.vad)]
    if per_window:
        rows += [row(str(i), w.start, w.end, w.label, w.probabilities, w.vad) for i, w in enumerate(pred.windows)]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="FILE_OR_DIR", help="audio files or directories")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.save_model file (a run's best.pt), or its "
                                                            "ONNX export (a .onnx file, run by onnxruntime)")
    parser.add_argument("--export-onnx", type=Path, default=None, metavar="OUT.onnx",
                        help="write the checkpoint as ONNX (checkpoint.export_onnx) and exit")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--per-window", action="store_true", help="also print every window with its times")
    parser.add_argument("--hop", type=float, default=None, help="window hop in seconds (default: half a window)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--min-confidence", type=float, default=None, metavar="P",
                        help=f"label a file or window {UNCERTAIN!r} when its top probability is below P (0 < P < 1; "
                             "the probabilities are still printed)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--precision", choices=modellib.PRECISIONS, default="auto",
                        help="auto: bf16 autocast on GPU (as training evaluates), fp32 on CPU")
    parser.add_argument("--embeddings", type=Path, default=None, metavar="OUT.npy",
                        help="write the files' embeddings [N, D] float32 here")
    parser.add_argument("--embeddings-index", type=Path, default=None, metavar="PATH",
                        help="CSV of the file names in the embeddings' row order (default: OUT.csv)")
    args = parser.parse_args(argv)
    if not args.inputs and args.export_onnx is None:
        parser.error("give audio files or directories to predict (or --export-onnx OUT.onnx)")
    if args.export_onnx is not None and args.inputs:
        parser.error("--export-onnx writes the model and exits: give no audio files with it")
    return args


def load_predictor(args: argparse.Namespace) -> Predictor | None:
    """The command line's ``Predictor``, or None after one line on stderr naming what is wrong with the
    checkpoint or the arguments; says on stderr when the model has no VAD head."""
    onnx = Path(args.checkpoint).suffix == ".onnx"
    device = modellib.resolve_device("cpu" if onnx else args.device)
    try:
        net = checkpoint.OnnxModel(args.checkpoint) if onnx else checkpoint.load_model(args.checkpoint, device=device)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as e:
        print(f"{PROG}: error: cannot load checkpoint {args.checkpoint}: {cli.one_line(e)}", file=sys.stderr)
        return None
    try:
        predictor = Predictor(net, device, hop=args.hop, batch_size=args.batch_size, precision=args.precision,
                              min_confidence=args.min_confidence)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return None
    if not predictor.has_vad:
        print(f"{PROG}: no valence/arousal/dominance: {args.checkpoint} has no VAD head (trained without "
              "--vad-weight, or a contrastive model or probe of a corpus without VAD ratings)", file=sys.stderr)
    return predictor


def _main(argv: list[str]) -> int:
    args = parse_args(argv)

    def fail(name: str, reason: str) -> None:
        where = "" if name in reason else f"{name}: "  # audio.load_audio's messages already name the file
        tqdm.write(f"{PROG}: error: {where}{reason}", file=sys.stderr)

    predictor = load_predictor(args)
    if predictor is None:
        return 2
    if args.export_onnx is not None:
        if not isinstance(predictor.net, modellib.EmotionModel):
            print(f"{PROG}: error: --export-onnx needs a checkpoint (best.pt); {args.checkpoint} is ONNX already",
                  file=sys.stderr)
            return 2
        checkpoint.export_onnx(predictor.net, args.export_onnx)
        print(f"wrote {args.export_onnx}: log-mel [batch, {predictor.net.config.n_mels}, {predictor.n_frames}] and "
              f"frames [batch] -> probabilities over {predictor.labels} at temperature "
              f"{predictor.net.config.temperature:.3f}, logits, embedding{', VAD' if predictor.has_vad else ''}")
        return 0
    files, missing = find_audio(args.inputs)
    for name, reason in missing:
        fail(name, reason)
    labels = predictor.labels
    columns = ["file", "window", "start_s", "end_s", "label", *labels, *(VAD if predictor.has_vad else ())]
    widths = {c: max(len(c), 7) for c in columns}
    widths["file"] = max([4, *(len(str(f)) for f in files)])
    writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n") if args.format == "csv" else None
    if args.format == "csv":
        writer.writeheader()
    elif args.format == "table":
        tqdm.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip(), file=sys.stdout)

    results, names, embeddings, n_failed = [], [], [], len(missing)
    for name, pred in predictor.predict_many(files, progress=len(files) > 1 and sys.stderr.isatty()):
        if isinstance(pred, str):
            fail(name, pred)
            n_failed += 1
            continue
        names.append(name)
        embeddings.append(pred.embedding)
        if args.format == "json":
            results.append({"file": name, **pred.to_dict(windows=args.per_window)})
            continue
        for row in format_rows(name, pred, labels, args.per_window):
            if writer is not None:
                writer.writerow(row)
            else:
                tqdm.write("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip(), file=sys.stdout)
    if args.format == "json":
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")

    if args.embeddings is not None:
        dim = predictor.net.config.dims.n_audio_state
        matrix = np.stack(embeddings).astype(np.float32) if embeddings else np.zeros((0, dim), np.float32)
        args.embeddings.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.embeddings, matrix)
        index = args.embeddings_index or args.embeddings.with_suffix(".csv")
        with open(index, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["file"])
            out.writerows([n] for n in names)
    if n_failed:
        print(f"{PROG}: {n_failed} of {len(files) + len(missing)} files failed", file=sys.stderr)
    return 1 if n_failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python predict.py``; any other error is one line on stderr too (exit status 1; ``--debug``: the
    traceback)."""
    return cli.run(_main, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
