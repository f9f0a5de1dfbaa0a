"""A training recipe on real speech: speaker-independent folds of the RAVDESS actors in ``../shared/ravdess``.

    python bench/folds.py --name default                                   # config.Config()'s defaults
    python bench/folds.py --name probe -- --objective probe                # the frozen encoder's linear probe
    python bench/folds.py --name supcon -- --objective supcon              # contrastive, then its probe
    python bench/folds.py --name supcon_ft --init-from supcon              # ... then supervised fine-tuning

Everything after ``--`` is passed to ``train.py`` (``python train.py --help``); ``--folds`` and ``--run-dir`` are
set here. Each fold tests on three actors, validates on two others (one male, one female: odd actors are male)
and trains on the remaining seven (``FOLDS``); folds are prepared once under ``--folds-dir`` and run by
``crossval.run``, into ``runs/folds/NAME/foldK``. Recipes are compared on validation UA only: the test columns
are reported, never used to choose. Prints a table per fold and the mean ± standard deviation over the folds,
and appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402

import crossval  # noqa: E402
import data  # noqa: E402
import prepare  # noqa: E402
import train  # noqa: E402
from bench.common import record  # noqa: E402
from config import parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# fold -> (test actors, validation actors); the other actors of 1-12 train.
FOLDS = {1: ((1, 2, 3), (4, 5)), 2: ((4, 5, 6), (7, 8)), 3: ((7, 8, 9), (10, 11)), 4: ((10, 11, 12), (1, 2))}
METRICS = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1"}


def prepare_fold(raw: Path, out: Path, fold: int) -> Path:
    """``out/fold{fold}`` prepared from ``raw`` (once: an existing folder is reused)."""
    path = out / f"fold{fold}"
    if not path.exists():
        test, validation = FOLDS[fold]
        data.save(prepare.prepare_ravdess(raw, test_actors=test, validation_actors=validation), path)
    return path


def main() -> None:
    argv = sys.argv[1:]
    train_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the recipe's name (runs go to runs/folds/NAME/foldK)")
    parser.add_argument("--ravdess", type=Path, default=ROOT.parent / "shared" / "ravdess")
    parser.add_argument("--folds-dir", type=Path, default=ROOT / "data" / "ravdess_folds")
    parser.add_argument("--folds", type=int, nargs="+", default=list(FOLDS), choices=list(FOLDS))
    parser.add_argument("--whisper", default=str(ROOT.parent / "shared" / "whisper" / "tiny.en.pt"))
    parser.add_argument("--init-from", metavar="NAME",
                        help="start each fold's representation from runs/folds/NAME/foldK/best.pt (train.py --init)")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    base = parse_args(["--whisper", args.whisper, *train_argv])
    init = str(ROOT / "runs" / "folds" / args.init_from) if args.init_from else base.init
    cfg = dataclasses.replace(base, folds=tuple(str(prepare_fold(args.ravdess, args.folds_dir, k)) for k in args.folds),
                              run_dir=str(ROOT / "runs" / "folds" / args.name), init=init)
    results = crossval.run(cfg, train.fit)
    for name, r in results.items():
        print(f"{name}: validation UA {r['validation']['ua']:.3f}, test UA {r['test']['ua']:.3f} "
              f"({r['minutes']:.1f} min)")

    init_from = f" --init-from {args.init_from}" if args.init_from else ""
    row = {"recipe": args.name,
           "command": f"`python bench/folds.py --name {args.name}{init_from} -- {' '.join(train_argv)}`",
           "folds": ",".join(map(str, args.folds))}
    for split in ("validation", "test"):
        for key, name in METRICS.items():
            row[f"{split} {name}"] = crossval.mean_sd([r[split][key] for r in results.values()])
    row["per fold validation / test UA"] = ", ".join(
        f"{r['validation']['ua']:.3f} / {r['test']['ua']:.3f}" for r in results.values())
    row["min per run"] = f"{sum(r['minutes'] for r in results.values()) / len(results):.1f}"
    for k, v in row.items():
        print(f"{k}: {v}")
    record("Recipes on real speech: RAVDESS actors 01-12, four speaker-independent folds, tiny.en", row)


if __name__ == "__main__":
    main()
