"""The main job (``make demo``): both notebooks headless on the synthetic corpus, then a summary.

    python demo.py --out runs/demo [--whisper PATH_OR_NAME] [-p name value ...]
    python demo.py --out runs/demo_seeds --seeds 0 1 2     # each seed into OUT/seedN, then mean and std

Writes the executed notebooks, their figures and metrics under ``--out`` and prints (and saves as
``summary.md``) every run's validation UA and test UA/WA/macro-F1, next to the corpus's baseline
(``train.baseline``). On the synthetic corpus the notebooks run with ``SYNTHETIC``'s settings.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import papermill

import data as datalib
import prepare
import report
import train

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ("supervised", "contrastive")
SYNTHETIC = "data/synthetic"
# What the synthetic demo changes in train.Config's defaults (the recipe for real speech), per notebook.
# Its 288 training clips carry emotion in absolute loudness and pitch (prepare.PROSODY), which gain and speed
# perturbation blur: no augmentation for supervised training. The rest is the configuration measured on it
# (BENCHMARKS.md, "Training on the synthetic corpus"); it has VAD ratings, so the VAD head trains too.
SYNTHETIC_SETTINGS = {
    "supervised": {"freeze": "all", "augment": False, "vad_weight": 0.5, "epochs": 12, "batch_size": 16,
                   "lr": 1e-3, "encoder_lr": 1e-4},
    "contrastive": {"epochs": 6, "batch_size": 16, "lr": 1e-3, "encoder_lr": 1e-4},
}


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
    splits = {s: datalib.load_corpus(data, s) for s in prepare.SPLITS}
    runs[f"baseline: {train.BASELINE}"] = [train.baseline(splits)] * len(seeds)
    summary = report.summary_table(runs)
    if len(seeds) > 1:
        summary = f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}): mean ± standard deviation\n\n" + summary
    (out / "summary.md").write_text(summary + "\n")
    return summary


def execute(out: Path, data: str, whisper: str, overrides: dict | None, seed: int,
            progress: bool) -> list[tuple[str, dict]]:
    """Run both notebooks into ``out``; returns (name, results.json) of every run they finished, in order."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if data == SYNTHETIC and not (ROOT / data).exists():
        prepare.save(prepare.make_synthetic(), ROOT / data)
    for name in NOTEBOOKS:
        settings = SYNTHETIC_SETTINGS[name] if data == SYNTHETIC else {}
        params = {**settings, "data": data, "whisper": whisper, "seed": seed, "run_dir": str(out / name),
                  **(overrides or {})}
        print(f"running {name}.ipynb -> {out / name}.ipynb")
        papermill.execute_notebook(ROOT / f"{name}.ipynb", out / f"{name}.ipynb", parameters=params,
                                   cwd=str(ROOT), kernel_name="python3", progress_bar=progress)
    finished = [p for p in out.glob("**/results.json") if p.stat().st_mtime >= started]
    return [(run_name(json.loads((p.parent / "config.json").read_text())), json.loads(p.read_text()))
            for p in sorted(finished, key=lambda p: p.stat().st_mtime)]


def run_name(cfg: dict) -> str:
    """What a run (its config.json) is, in words."""
    if cfg["objective"] == "supervised":
        return "fine-tuning after contrastive pre-training" if cfg["init"] else "supervised fine-tuning"
    if cfg["epochs"] == 0:
        return "linear probe, no contrastive training"
    return f"linear probe after {cfg['objective']}" + (" with VAD-aware negatives" if cfg["vad_negatives"] else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", default=SYNTHETIC)
    parser.add_argument("--whisper", default=os.environ.get("WHISPER_CHECKPOINT") or "tiny",
                        help="Whisper name or checkpoint path (default: $WHISPER_CHECKPOINT, else tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; several run one after the other into OUT/seedN")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter (value parsed as JSON when it can be)")
    args = parser.parse_args()
    overrides = {}
    for name, value in args.p:
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    print(run(args.out, args.data, args.whisper, overrides, args.seeds))


if __name__ == "__main__":
    main()
