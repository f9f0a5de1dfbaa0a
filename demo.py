"""The main job (``make demo``): both notebooks headless on the synthetic corpus, then a summary.

    python demo.py --out runs/demo [--whisper PATH_OR_NAME] [-p name value ...]
    python demo.py --out runs/demo_seeds --seeds 0 1 2     # each seed into OUT/seedN, then mean and std

Writes the executed notebooks, their figures and metrics under ``--out`` and prints (and saves as
``summary.md``) every run's validation UA and test UA/WA/macro-F1, next to the corpus's baseline
(``evaluate.baseline``). On the synthetic corpus the notebooks run with ``SYNTHETIC_SETTINGS``. A parameter
``-p name value`` goes to each notebook that reads it (its own parameters, and the Config fields its objective
reads); one that neither reads is an error naming the closest.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat
import papermill

import config
import data as datalib
import evaluate
import synthetic
from crossval import mean_sd

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ("supervised", "contrastive")
SYNTHETIC = "data/synthetic"
# What the synthetic demo changes in config.Config's defaults (the recipe for real speech), per notebook.
# Its training clips carry emotion in absolute loudness and pitch (synthetic.PROSODY), which gain and speed
# perturbation blur: no augmentation for supervised training. The rest is the configuration measured on it
# (BENCHMARKS.md, "Training on the synthetic corpus"); it has VAD ratings, so the VAD head trains too.
SYNTHETIC_SETTINGS = {
    "supervised": {"freeze": "all", "augment": False, "vad_weight": 0.5, "epochs": 12, "batch_size": 16,
                   "lr": 1e-3, "encoder_lr": 1e-4},
    "contrastive": {"epochs": 6, "batch_size": 16, "lr": 1e-3, "encoder_lr": 1e-4},
}
FIELDS = {f.name: f for f in dataclasses.fields(config.Config)}


class _FieldsAreKnown(logging.Filter):
    """papermill warns about every parameter that a notebook's parameters cell does not list; the notebooks take
    any Config field and refuse what is not one themselves, so those warnings say nothing of a Config field."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Passed unknown parameter: ") and message.split(": ", 1)[1] in FIELDS)


logging.getLogger("papermill").addFilter(_FieldsAreKnown())


def own_parameters(notebook: str) -> dict[str, object]:
    """The assignments of ``notebook``'s parameters cell (its first code cell): name -> value."""
    cell = next(c for c in nbformat.read(ROOT / f"{notebook}.ipynb", as_version=4).cells if c.cell_type == "code")
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}


def notebook_parameters(notebook: str, params: Mapping[str, object]) -> dict[str, object]:
    """The ``params`` that ``notebook`` reads: its own parameters, and the Config fields its objective reads (the
    supervised notebook's is supervised)."""
    own = own_parameters(notebook)
    objective = "supervised" if notebook == "supervised" else params.get("objective", own.get("objective"))
    return {k: v for k, v in params.items() if k in own or (k in FIELDS and config.reads(FIELDS[k], objective))}


def run(out: Path, data: str = SYNTHETIC, whisper: str = "tiny", overrides: dict | None = None,
        seeds: Sequence[int] = (0,), progress: bool = True) -> str:
    """Execute both notebooks (a progress bar over each one's cells) once per training seed: into ``out``
    for a single seed, into ``out/seed{N}`` for several. Returns the summary table (markdown; each metric's
    mean and standard deviation over several seeds), also written to ``out/summary.md``."""
    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for name, result in execute(out if len(seeds) == 1 else out / f"seed{seed}", data, whisper, overrides,
                                    seed, progress):
            runs.setdefault(name, []).append(result)
    # deterministic: computed once, listed once per seed
    splits = {s: datalib.load_corpus(data, s) for s in datalib.SPLITS}
    runs[f"baseline: {evaluate.BASELINE}"] = [evaluate.baseline(splits)] * len(seeds)
    summary = summary_table(runs)
    if len(seeds) > 1:
        summary = f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}): mean ± standard deviation\n\n" + summary
    (out / "summary.md").write_text(summary + "\n")
    return summary


def execute(out: Path, data: str, whisper: str, overrides: dict | None, seed: int,
            progress: bool) -> list[tuple[str, dict]]:
    """Run both notebooks into ``out``; returns (name, results.json) of every run they finished, in order. An
    override that no notebook reads is a ValueError naming the closest parameter, before anything runs."""
    overrides = dict(overrides or {})
    known = {*FIELDS, *(k for name in NOTEBOOKS for k in own_parameters(name))}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise ValueError(config.unknown_names(unknown, known) + ": neither notebook reads it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if data == SYNTHETIC and not (ROOT / data).exists():
        datalib.save(synthetic.make_synthetic(), ROOT / data)
    for name in NOTEBOOKS:
        settings = SYNTHETIC_SETTINGS[name] if data == SYNTHETIC else {}
        params = notebook_parameters(name, {**settings, "data": data, "whisper": whisper, "seed": seed,
                                            "run_dir": str(out / name), **overrides})
        print(f"running {name}.ipynb -> {out / name}.ipynb")
        papermill.execute_notebook(ROOT / f"{name}.ipynb", out / f"{name}.ipynb", parameters=params,
                                   cwd=str(ROOT), kernel_name="python3", progress_bar=progress)
    finished = [p for p in out.glob("**/results.json") if p.stat().st_mtime >= started]
    return [(run_name(json.loads((p.parent / "config.json").read_text())), json.loads(p.read_text()))
            for p in sorted(finished, key=lambda p: p.stat().st_mtime)]


def summary_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: a row per run name, its validation UA and test UA/WA/macro-F1 (``crossval.mean_sd`` over several
    results of the same run, e.g. training seeds)."""
    def cell(results: list[dict], split: str, key: str) -> str:
        return mean_sd([r[split][key] for r in results])

    lines = ["| run | validation UA | test UA | test WA | test macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {cell(rs, 'validation', 'ua')} | "
              + " | ".join(cell(rs, "test", key) for key in ("ua", "wa", "macro_f1")) + " |"
              for name, rs in runs.items()]
    return "\n".join(lines)


def run_name(cfg: dict) -> str:
    """What a run (its config.json) is, in words."""
    if cfg["objective"] == "supervised":
        return "fine-tuning after contrastive pre-training" if cfg["init"] else "supervised fine-tuning"
    if cfg["objective"] == "probe":
        return "linear probe, no contrastive training"
    return f"linear probe after {cfg['objective']}" + (" with VAD-aware negatives" if cfg["vad_negatives"] else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", default=SYNTHETIC)
    parser.add_argument("--whisper", default=os.environ.get("WHISPER_CHECKPOINT") or "tiny",
                        help="Whisper name or checkpoint path (default: $WHISPER_CHECKPOINT, else tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; several run one after the other into OUT/seedN")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter (value parsed as JSON when it can be)")
    args = parser.parse_args(argv)
    overrides = {}
    for name, value in args.p:
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    print(run(args.out, args.data, args.whisper, overrides, args.seeds))


if __name__ == "__main__":
    main()
