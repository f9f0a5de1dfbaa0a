"""Every setting of a run: ``Config`` (frozen; saved as the run's ``config.json``), its help, and the command line
made from it.

    cfg = Config(data="data/ravdess", whisper="tiny.en")            # the defaults: BENCHMARKS.md's recipe
    cfg = parse_args(["--data", "data/ravdess", "--objective", "supcon"])   # python train.py's flags
    cfg = Config.from_namespace(globals(), other=("projection",))   # a notebook's parameters
    probe = cfg.as_objective("probe", run_dir="runs/probe")          # the same corpus and encoder, scored by a probe

The defaults are the supervised recipe that BENCHMARKS.md measured on real speech. An option that only some
objectives read (``READERS``: the contrastive losses' options, the supervised loss's, and every training option,
which the probe does not read) is an error when it is set for another objective: it would do nothing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import datasets

import cli
import data as datalib
import model as modellib
from labels import NOT_EMOTIONS

OBJECTIVES = ("supervised", "simclr", "supcon", "probe")
# Who reads an option that not every objective reads: what its metadata "read_by" names.
READERS = {"supervised": ("supervised",), "contrastive": ("simclr", "supcon"),
           "training": ("supervised", "simclr", "supcon")}
PARAMETERS_CELL = "# Parameters"  # how a notebook's parameters cell, and papermill's injected one, begin


def option(default: object, help: str, choices: Sequence[object] | None = None,
           read_by: str | None = None) -> dataclasses.Field:
    """A ``Config`` field: its default, the help line of its flag, where there is a fixed set its choices, and
    the ``READERS`` key of the objectives that read it (None: every objective)."""
    return field(default=default, metadata={"help": help, "choices": choices, "read_by": read_by})


@dataclass(frozen=True)
class Config:
    """Everything a run depends on; saved as ``config.json`` in the run directory.

    The defaults are the supervised recipe that BENCHMARKS.md reports on real speech (RAVDESS,
    speaker-independent folds, tiny.en); a notebook or command line overrides what its corpus needs.
    """

    data: str | tuple[str, ...] = option("data/synthetic", "save_to_disk folder(s) or Hub id(s); several combine "
                                                           "corpora")
    folds: tuple[str, ...] | None = option(None, "cross-validation: prepared folds (e.g. IEMOCAP's five test "
                                                 "sessions), one run each in run_dir/<the fold's folder name> and a "
                                                 "table of their test metrics; replaces data")
    whisper: str = option("tiny", "openai-whisper model name, checkpoint path, or random:<name> (untrained)")
    n_frames: int = option(300, "mel frames per clip, 100 per second (Whisper's full context is 3000)")
    objective: str = option("supervised", "supervised: cross-entropy (and VAD regression); simclr, supcon: "
                                          "contrastive, scored by a linear probe; probe: no training, the model as "
                                          "built (or as --init gives it) scored by a linear probe on its frozen "
                                          "embeddings", OBJECTIVES)
    vad_negatives: bool = option(False, "contrastive: valence/arousal/dominance-aware negatives "
                                        "(losses.VadNegatives)", read_by="contrastive")
    vad_threshold: float = option(0.1, "VAD-aware negatives: VAD distance under which a pair is not a negative",
                                  read_by="contrastive")
    vad_beta: float = option(1.0, "VAD-aware negatives: hardness concentration of the negative weights",
                             read_by="contrastive")
    vad_alpha: float = option(1.0, "VAD-aware negatives: power of the VAD distance in the negative weights",
                              read_by="contrastive")
    temperature: float = option(0.1, "contrastive: softmax temperature", read_by="contrastive")
    gather_negatives: bool = option(True, "contrastive under torchrun: every anchor contrasts against the views of "
                                          "all processes (the global batch), as SimCLR and SupCon train",
                                    read_by="contrastive")
    freeze: str = option("blocks", "what trains (model.set_trainable): heads | blocks (every encoder block, not "
                                   "the stem) | all | top:N (the last N blocks; tiny has 4, base 6, small 12)",
                         read_by="training")
    four_class: bool = option(False, "keep neutral / happy (+excited) / sad / angry only")
    exclude: tuple[str, ...] = option(NOT_EMOTIONS, "labels left out of training and scoring (kept in the label "
                                                    "space); give the flag alone to keep every row")
    layers: str = option("weighted", "encoder output: a learned mix of every layer, or the last", modellib.LAYERS)
    pooling: str = option("mean", "frames -> clip embedding", modellib.POOLINGS)
    proj_dim: int = option(128, "contrastive projection width", read_by="contrastive")
    dropout: float = option(0.1, "supervised: dropout before the classification and VAD heads", read_by="supervised")
    vad_weight: float = option(0.0, "supervised: weight of the VAD regression loss next to cross-entropy (> 0 adds "
                                    "the VAD head)", read_by="supervised")
    class_weights: str | None = option("balanced", "supervised: cross-entropy class weights; balanced: inverse "
                                                   "training frequency (the Odyssey 2024 baseline's), none: equal",
                                       ("balanced", None), read_by="supervised")
    augment: bool = option(True, "training augmentations (data.Augment: crop, shift, speed, gain, noise, "
                                 "SpecAugment)", read_by="training")
    calibrate: bool = option(True, "after training, fit the temperature of the classifier's probabilities on the "
                                   "validation split (calibration.py; best.pt keeps it; off: 1)")
    windows: bool = option(True, "evaluate whole utterances: mean over windows covering each (off: its centre crop)")
    epochs: int = option(10, "training epochs (supervised 0: score the model as built)", read_by="training")
    batch_size: int = option(32, "clips per step and process (under torchrun: times the number of processes)")
    lr: float = option(1e-4, "peak learning rate of the heads, layer mix and pooling (warm-up, then cosine)",
                       read_by="training")
    encoder_lr: float | None = option(None, "peak learning rate of the trainable encoder blocks (none: lr)",
                                      read_by="training")
    weight_decay: float = option(0.01, "AdamW weight decay", read_by="training")
    warmup: float = option(0.1, "fraction of all steps spent warming up linearly", read_by="training")
    grad_clip: float = option(1.0, "gradient norm clip (0: off)", read_by="training")
    precision: str = option("auto", "auto: bf16 autocast on GPU, fp32 on CPU", modellib.PRECISIONS)
    compile: bool = option(False, "torch.compile the model: faster GPU steps (bench/throughput.py) after a minute "
                                  "or more of compiling; for long runs")
    backend: str = option("auto", "data loader; auto: DALI where it runs, else torch", datalib.BACKENDS)
    num_workers: int = option(2, "DALI threads or DataLoader processes")
    skip_nonfinite: bool = option(False, "skip (and count) steps whose loss is not finite instead of stopping, and "
                                         "leave clips with a non-finite embedding out of linear probes (reported)")
    log_every: int = option(0, "print a line every N steps (0: progress bar only)", read_by="training")
    seed: int = option(0, "initialisation, batch order, augmentation and the linear probe")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (none: the local rank's GPU if there is one, else cpu)")
    run_dir: str = option("runs/default", "where the run writes best.pt, last.pt, metrics and figures")
    resume: bool = option(False, "continue from run_dir/last.pt", read_by="training")
    init: str | None = option(None, "start the representation from a saved model (e.g. a contrastive best.pt); "
                                    "with folds, a cross-validation's run_dir: each fold starts from its own "
                                    "<fold>/best.pt")
    probe_init: bool = option(True, "supervised: start the classifier from the linear probe on the embeddings of "
                                    "the model as built, then train as configured (LP-FT; off: a random classifier)",
                              read_by="supervised")

    def __post_init__(self) -> None:
        for name in ("data", "folds", "exclude"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and not set(value if isinstance(value, tuple) else [value]) <= set(choices):
                raise ValueError(f"{f.name} must be one of {tuple(choices)}, got {value!r}")
        for f in dataclasses.fields(self):
            if not reads(f, self.objective) and getattr(self, f.name) != f.default:
                readers = READERS[f.metadata["read_by"]]
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} does nothing for objective {self.objective!r}: "
                                 f"it is read by {'/'.join(readers)} only (leave it at its default {f.default!r})")
        if self.contrastive and self.epochs < 1:
            raise ValueError(f"{self.objective} for {self.epochs} epochs trains nothing: objective 'probe' scores the "
                             "model as built by its linear probe")

    @property
    def contrastive(self) -> bool:
        return self.objective in READERS["contrastive"]

    @property
    def trains(self) -> bool:
        """Whether the run trains (every objective but the probe)."""
        return self.objective in READERS["training"]

    def corpus(self, split: str) -> datasets.Dataset:
        """The rows of ``split`` this configuration trains or scores on (``data.load_corpus``)."""
        return datalib.load_corpus(self.data, split, four_class=self.four_class, exclude=self.exclude)

    def model_config(self, labels: list[str], vad_head: bool) -> modellib.ModelConfig:
        """The model of this run over ``labels``, its encoder's dims left for ``checkpoint.from_whisper`` to read;
        ``vad_head``: with a VAD head (trained for the supervised objective, a linear probe for the others)."""
        return modellib.ModelConfig(whisper=self.whisper, dims=None, labels=labels, n_frames=self.n_frames,
                                    pooling=self.pooling, layers=self.layers, proj_dim=self.proj_dim,
                                    vad_head=vad_head, dropout=self.dropout,
                                    vad_probe=vad_head and self.objective != "supervised")

    def loader_options(self, train: bool, n_mels: int = 80) -> datalib.LoaderOptions:
        """How this run batches a split for the encoder's ``n_mels``: the training loader (``data.Augment()``
        when ``augment``, two views for a contrastive objective), or an evaluation loader (whole utterances on
        windows when ``windows``, else centre crops)."""
        common = dict(batch_size=self.batch_size, n_frames=self.n_frames, n_mels=n_mels, backend=self.backend,
                      num_workers=self.num_workers)
        if train:
            return datalib.LoaderOptions(train=True, views=2 if self.contrastive else 1, seed=self.seed,
                                      augment=datalib.Augment() if self.augment else None, **common)
        return datalib.LoaderOptions(windows=self.windows, **common)

    def as_objective(self, objective: str, **changes: object) -> Config:
        """This configuration for ``objective`` (the contrastive notebook's probe before training, and its
        fine-tuning after it): the options ``objective`` does not read back at their defaults, then ``changes``."""
        reset = {f.name: f.default for f in dataclasses.fields(self) if not reads(f, objective)}
        return dataclasses.replace(self, **{**reset, "objective": objective, **changes})

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, object], *, other: Collection[str] = (),
                       **fixed: object) -> Config:
        """A Config of the fields that ``namespace`` (a notebook's ``globals()``: its parameters cell and what
        papermill injected) sets, and ``fixed``; every other field keeps its default.

        A parameter that is neither a field nor one of ``other`` (the notebook's own parameters) is a ValueError
        naming the closest field: papermill only warns about a parameter the notebook does not know, and a typo
        must not train silently with a default. Which names are parameters: ``notebook_parameters``."""
        names = [f.name for f in dataclasses.fields(cls)]
        given = notebook_parameters(namespace)
        unknown = [k for k in given if k not in names and k not in other] + [k for k in fixed if k not in names]
        if unknown:
            raise ValueError(unknown_names(unknown, names) + ": not a Config field (python train.py --help lists "
                             "them)" + (f" nor one of this notebook's own {sorted(other)}" if other else ""))
        return cls(**{**{k: namespace[k] for k in given if k in names}, **fixed})


def unknown_names(unknown: Sequence[str], known: Collection[str]) -> str:
    """``"unknown parameter(s) 'epoch' (closest: 'epochs'), ..."``: each unknown name with the closest known one."""
    return "unknown parameter(s) " + ", ".join(
        f"{k!r} (closest: {difflib.get_close_matches(k, list(known), 1, 0.0)[0]!r})" for k in unknown)


def reads(f: dataclasses.Field, objective: str) -> bool:
    """Whether ``objective`` reads the Config field ``f``."""
    read_by = f.metadata["read_by"]
    return read_by is None or objective in READERS[read_by]


def notebook_parameters(namespace: Mapping[str, object]) -> list[str]:
    """The names of ``namespace`` that are parameters.

    In a Jupyter kernel's globals (they hold IPython's input history ``In``): the names that the last cell run
    starting with ``PARAMETERS_CELL`` assigns, and the cell just before it when that is the notebook's own
    parameters cell and the last one papermill's injected cell, so that what later cells left in the namespace
    is not taken for a parameter. Elsewhere: every name that is not private, IPython's, a module, a class or a
    function.
    """
    history = namespace.get("In")
    cells = [c for c in history if isinstance(c, str)] if isinstance(history, list) else []
    marked = [i for i, cell in enumerate(cells) if cell.startswith(PARAMETERS_CELL)]
    if not marked:
        return [k for k, v in namespace.items() if not k.startswith("_") and k not in ("In", "Out")
                and not callable(v) and not isinstance(v, types.ModuleType)]
    chosen = [marked[-1]]
    if cells[chosen[0]].split("\n", 1)[0].strip() == PARAMETERS_CELL and chosen[0] - 1 in marked:
        chosen.insert(0, chosen[0] - 1)  # papermill's cell, after the notebook's own
    names = []
    for i in chosen:
        for node in ast.parse(cells[i]).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id in namespace and t.id not in names]
    return names


def contrastive_configs(cfg: Config, vad_negatives: Sequence[bool] = (False, True),
                        pretrain_with: Sequence[str] = ()) -> dict[str, Config]:
    """The contrastive runs of contrastive.ipynb: ``cfg.objective`` once per ``vad_negatives`` value, each in
    its own folder under ``cfg.run_dir`` (``supcon`` with the plain loss, ``supcon_vad`` with VAD-aware
    negatives), on ``cfg.data`` and the corpora of ``pretrain_with`` together (task-adaptive pre-training on every
    training split at hand; their probes then train and validate on them all)."""
    corpora = (cfg.data,) if isinstance(cfg.data, str) else cfg.data
    runs = {}
    for vad in vad_negatives:
        name = f"{cfg.objective}_vad" if vad else cfg.objective
        runs[name] = dataclasses.replace(cfg, data=(*corpora, *pretrain_with) if pretrain_with else cfg.data,
                                         vad_negatives=vad, run_dir=f"{cfg.run_dir}/{name}")
    return runs


# ----------------------------------------------------------------------------- command line


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default after its help."""


def _flag(annotation: object) -> dict:
    """argparse keywords for a field of type ``annotation``: ``X | None`` takes "none", a tuple takes several."""
    args = typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is tuple:
        return {"nargs": "*", "type": args[0]}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        many = [a for a in kinds if typing.get_origin(a) is tuple]
        if many:
            return {"nargs": "+", "type": typing.get_args(many[0])[0]}
        kind = kinds[0]
        if type(None) in args:
            return {"type": lambda text: None if text.lower() == "none" else kind(text)}
        return {"type": kind}
    return {"type": annotation}


def parser(description: str | None = None) -> cli.ArgumentParser:
    """The command line of ``Config``: a flag per field (``--four-class``, ``--no-augment``, ``--data a b`` ...),
    its help (and the objectives that read it), choices and default taken from the field; and ``--debug``."""
    out = cli.ArgumentParser(prog="train.py", description=description, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        read_by = f.metadata["read_by"]
        only = f" [{'/'.join(READERS[read_by])} only]" if read_by else ""
        out.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata["help"] + only,
                         choices=f.metadata["choices"], **_flag(hints[f.name]))
    return out


def parse_args(argv: list[str] | None = None, description: str | None = None) -> Config:
    """The Config of command-line flags (``parser``); a value a field refuses is a usage error naming it."""
    p = parser(description)
    args = vars(p.parse_args(argv))
    del args["debug"]
    if isinstance(args["data"], list) and len(args["data"]) == 1:
        args["data"] = args["data"][0]
    try:
        return Config(**args)
    except ValueError as e:
        p.error(str(e))
