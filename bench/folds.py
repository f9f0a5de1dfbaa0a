"""A training recipe on real speech: speaker-independent folds of the RAVDESS actors in ``../shared/ravdess``, or of
EmoDB in ``../shared/emodb``.

    python bench/folds.py --name default                                   # config.Config()'s defaults
    python bench/folds.py --name probe -- --objective probe                # the frozen encoder's linear probe
    python bench/folds.py --name default --reference probe                 # ... and the paired difference to it
    python bench/folds.py --name supcon -- --objective supcon              # contrastive, then its probe
    python bench/folds.py --name supcon_ft --init-from supcon              # ... then supervised fine-tuning
    python bench/folds.py --corpus emodb --name default                    # EmoDB's five folds

Everything after ``--`` is passed to ``train.py`` (``python train.py --help``); ``--folds`` and ``--run-dir`` are
set here. RAVDESS: each fold tests on three actors, validates on two others (one male, one female: odd actors are
male) and trains on the remaining seven (``FOLDS``); EmoDB: ``splits.fold_speakers`` (two test, two validation,
six training speakers). Folds are prepared once under ``--folds-dir`` and run by ``crossval.run``, into
``runs/folds/NAME/foldK`` (EmoDB: ``runs/emodb_folds/NAME/foldK``). Recipes are compared on validation UA only:
the test columns are reported, never used to choose. Prints a table per fold, the mean ± standard deviation over
the folds and the pooled test UA with its speaker-bootstrap interval; with ``--reference NAME`` the paired
difference in test UA to that recipe's runs (``evaluate.compare_runs``), per fold and pooled; appends a row to
BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402

import crossval  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import prepare  # noqa: E402
import splits  # noqa: E402
import stats  # noqa: E402
import train  # noqa: E402
from bench.common import record  # noqa: E402
from config import parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# fold -> (test actors, validation actors); the other actors of 1-12 train.
FOLDS = {1: ((1, 2, 3), (4, 5)), 2: ((4, 5, 6), (7, 8)), 3: ((7, 8, 9), (10, 11)), 4: ((10, 11, 12), (1, 2))}
CORPORA = {  # --corpus -> its folds, raw folder, prepared folds, runs, BENCHMARKS section
    "ravdess": (list(FOLDS), ROOT.parent / "shared" / "ravdess", ROOT / "data" / "ravdess_folds",
                ROOT / "runs" / "folds",
                "Recipes on real speech: RAVDESS actors 01-12, four speaker-independent folds, tiny.en"),
    "emodb": (list(splits.FOLDS["emodb"]), ROOT.parent / "shared" / "emodb", ROOT / "data" / "emodb_folds",
              ROOT / "runs" / "emodb_folds", "Recipes on real speech: EmoDB, five speaker-independent folds"),
}
METRICS = {"ua": "UA", "wa": "WA", "macro_f1": "macro-F1"}


def prepare_fold(corpus: str, raw: Path, out: Path, fold: int) -> Path:
    """``out/fold{fold}`` prepared from ``raw`` (once: an existing folder is reused)."""
    path = out / f"fold{fold}"
    if not path.exists():
        if corpus == "ravdess":
            test, validation = FOLDS[fold]
            dsd = prepare.prepare_ravdess(raw, test_speakers=test, validation_speakers=validation)
        else:
            dsd = prepare.prepare_emodb(raw, fold=fold)
        data.save(dsd, path)
    return path


def main() -> None:
    argv = sys.argv[1:]
    train_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the recipe's name (runs go to runs/folds/NAME/foldK)")
    parser.add_argument("--corpus", choices=list(CORPORA), default="ravdess")
    parser.add_argument("--raw", type=Path, help="the raw corpus (default ../shared/ravdess or ../shared/emodb)")
    parser.add_argument("--folds-dir", type=Path, help="where the folds are prepared (default data/<corpus>_folds)")
    parser.add_argument("--folds", type=int, nargs="+", help="which folds (default all)")
    parser.add_argument("--whisper", default=str(ROOT.parent / "shared" / "whisper" / "tiny.en.pt"))
    parser.add_argument("--init-from", metavar="NAME",
                        help="start each fold's representation from runs/folds/NAME/foldK/best.pt (train.py --init)")
    parser.add_argument("--reference", metavar="NAME",
                        help="report the paired difference in test UA to the finished runs of recipe NAME")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    all_folds, raw, folds_dir, runs, section = CORPORA[args.corpus]
    folds = args.folds or all_folds
    if not set(folds) <= set(all_folds):
        parser.error(f"{args.corpus} has folds {all_folds}")
    base = parse_args(["--whisper", args.whisper, *train_argv])
    init = str(runs / args.init_from) if args.init_from else base.init
    cfg = dataclasses.replace(
        base, folds=tuple(str(prepare_fold(args.corpus, args.raw or raw, args.folds_dir or folds_dir, k))
                          for k in folds), run_dir=str(runs / args.name), init=init)
    results = crossval.run(cfg, train.fit)
    print(crossval.summary(cfg, results))

    init_from = f" --init-from {args.init_from}" if args.init_from else ""
    corpus = f" --corpus {args.corpus}" if args.corpus != "ravdess" else ""
    row = {"recipe": args.name,
           "command": f"`python bench/folds.py{corpus} --name {args.name}{init_from} -- {' '.join(train_argv)}`",
           "folds": ",".join(map(str, folds))}
    for split in ("validation", "test"):
        for key, name in METRICS.items():
            row[f"{split} {name}"] = crossval.mean_sd([r[split][key] for r in results.values()])
    pooled = crossval.pooled(results)
    row["pooled test UA [95% CI]"] = stats.format_interval(pooled["ua"], pooled["ua_ci"])
    row["per fold validation / test UA"] = ", ".join(
        f"{r['validation']['ua']:.3f} / {r['test']['ua']:.3f}" for r in results.values())
    row["paired test UA difference to the reference (pooled) [95% CI], p"] = "—"
    if args.reference:
        table = evaluate.compare_runs(cfg.run_dir, runs / args.reference)
        print(f"test UA of {args.name} minus {args.reference}, per fold and pooled:\n"
              f"{table.to_string(float_format=lambda v: f'{v:.3f}')}")
        d = table.iloc[-1]
        row["paired test UA difference to the reference (pooled) [95% CI], p"] = (
            f"− {args.reference}: {stats.format_interval(d['difference'], (d['ci_low'], d['ci_high']))}, "
            f"p = {d['p']:.3f}")
    row["min per run"] = f"{sum(r['minutes'] for r in results.values()) / len(results):.1f}"
    for k, v in row.items():
        print(f"{k}: {v}")
    record(section, row)


if __name__ == "__main__":
    main()
