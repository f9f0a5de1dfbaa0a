"""A training recipe on real speech: speaker-independent folds of the RAVDESS actors in ``../shared/ravdess``, or of
EmoDB in ``../shared/emodb``, over training seeds.

    python bench/folds.py --name default                                   # config.Config()'s defaults, seed 0
    python bench/folds.py --name probe -- --objective probe                # the frozen encoder's linear probe
    python bench/folds.py --name default --seeds 0 1 2 --reference probe   # three seeds, paired with the probe
    python bench/folds.py --name base_default --whisper ../shared/whisper/base.encoder.pt   # another encoder
    python bench/folds.py --name supcon -- --objective supcon              # contrastive, then its probe
    python bench/folds.py --name supcon_ft --init-from supcon              # ... then supervised fine-tuning
    python bench/folds.py --corpus emodb --name default                    # EmoDB's five folds
    python bench/folds.py --name simclr_tapt --pool-with emodb -- --objective simclr   # pre-trained on both corpora

Everything after ``--`` is passed to ``train.py`` (``python train.py --help``); ``--folds``, ``--run-dir`` and
``--seed`` are set here. RAVDESS: each fold tests on three actors, validates on two others (one male, one female:
odd actors are male) and trains on the remaining seven (``FOLDS``); EmoDB: ``splits.fold_speakers`` (two test,
two validation, six training speakers). Folds are prepared once under ``--data-dir``; each seed of ``--seeds``
is a cross-validation (``crossval.run``) in ``runs/folds/NAME/seedS/foldK`` (EmoDB: ``runs/emodb_folds/...``).
Recipes are compared on validation UA only: the test columns are reported, never used to choose. Prints a table
per seed, then the row it appends to BENCHMARKS.md (a section per corpus and encoder): validation and test UA
averaged over the folds (mean ± sd over the seeds) and pooled over every fold and seed with its speaker-bootstrap
interval (a speaker's clips under every seed resample together), and with ``--reference NAME`` the paired
difference in test UA to that recipe's runs of the same folds (``evaluate.compare_runs``: seed by seed, or each
seed with the reference's single seed), per fold and pooled; a reference without them stops it before training.
With ``--pool-with CORPUS`` each fold also trains on that corpus's fold of the same number (cycling through its
folds): a contrastive pre-training on every training split at hand, or pooled supervised training; the row scores
the folds' own corpus's rows only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

import card  # noqa: E402
import crossval  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import prepare  # noqa: E402
import splits  # noqa: E402
import stats  # noqa: E402
import train  # noqa: E402
from bench.common import WHISPER, flags, record, shown_whisper  # noqa: E402
from config import Config, parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# fold -> (test actors, validation actors); the other actors of 1-12 train.
FOLDS = {1: ((1, 2, 3), (4, 5)), 2: ((4, 5, 6), (7, 8)), 3: ((7, 8, 9), (10, 11)), 4: ((10, 11, 12), (1, 2))}
CORPORA = {  # --corpus -> its folds, default raw folder, runs, BENCHMARKS section (one per encoder)
    "ravdess": (list(FOLDS), ROOT.parent / "shared" / "ravdess", ROOT / "runs" / "folds",
                "Recipes by seed: {model} on RAVDESS actors 01-12, four speaker-independent folds"),
    "emodb": (list(splits.FOLDS["emodb"]), ROOT.parent / "shared" / "emodb", ROOT / "runs" / "emodb_folds",
              "Recipes by seed: {model} on EmoDB, five speaker-independent folds"),
}


def prepare_fold(corpus: str, raw: Path, data_dir: Path, fold: int) -> Path:
    """``data_dir/<corpus>_folds/fold{fold}`` prepared from ``raw`` (once: an existing folder is reused)."""
    path = data_dir / f"{corpus}_folds" / f"fold{fold}"
    if not path.exists():
        if corpus == "ravdess":
            test, validation = FOLDS[fold]
            dsd = prepare.prepare_ravdess(raw, test_speakers=test, validation_speakers=validation)
        else:
            dsd = prepare.prepare_emodb(raw, fold=fold)
        data.save(dsd, path)
    return path


def seed_runs(runs: Path, name: str, seeds: list[int]) -> dict[int, Path]:
    """Where recipe ``name`` keeps each seed's cross-validation: ``runs/name/seed{K}``."""
    return {seed: runs / name / f"seed{seed}" for seed in seeds}


def init_runs(runs: Path, name: str, seeds: list[int]) -> dict[int, Path]:
    """The run each seed starts from (``--init-from name``): the same seed's, else the single seed ``name`` ran."""
    ran = sorted(runs.glob(f"{name}/seed*"))
    if not ran:
        raise SystemExit(f"--init-from {name}: {runs / name} holds no seed folder (run it first)")
    own = seed_runs(runs, name, seeds)
    if all(path.is_dir() for path in own.values()):
        return own
    if len(ran) == 1:
        return {seed: ran[0] for seed in seeds}
    raise SystemExit(f"--init-from {name}: it ran {[p.name for p in ran]}, not every one of seeds {seeds}")


def check_reference(runs: Path, name: str, folds: list[int]) -> None:
    """Stop before any training when ``--reference name`` holds no finished run of one of ``folds``."""
    try:
        held = {Path(key).name for key in evaluate.run_predictions(runs / name)}
    except FileNotFoundError as error:
        raise SystemExit(f"--reference {name}: {error}") from None
    missing = [f"fold{k}" for k in folds if f"fold{k}" not in held]
    if missing:
        raise SystemExit(f"--reference {name}: {runs / name} holds no finished run of {missing} (run it first)")


def pooled_fold(corpus: str, fold: int) -> int:
    """The fold of ``corpus`` that pools with another corpus's fold ``fold`` (``--pool-with``): the same number,
    cycling through ``corpus``'s folds."""
    folds = CORPORA[corpus][0]
    return folds[(fold - 1) % len(folds)]


def pooled_fit(data_of: dict[str, tuple[str, ...]]) -> Callable[[Config], dict]:
    """``train.fit`` on each fold's corpora together (``--pool-with``): ``data_of`` maps a fold's prepared folder
    to it and the other corpora's folds it pools with."""
    def fit(cfg: Config) -> dict:
        return train.fit(dataclasses.replace(cfg, data=data_of[cfg.data]))
    return fit


def scored_ids(prepared: tuple[str, ...]) -> list[set[str]]:
    """The validation and test ids of each prepared fold."""
    return [{i for split in ("validation", "test") for i in data.load_corpus(path, split)["id"]} for path in prepared]


def on_corpus(results: dict[str, dict], own: list[set[str]]) -> dict[str, dict]:
    """The results of pooled-corpus runs scored on the rows of the folds' own corpus (``own``: each fold's
    ``scored_ids``, in the order of ``results``): predictions kept to its rows, each split's UA recomputed."""
    out = {}
    for (name, result), ids in zip(results.items(), own, strict=True):
        kept = {**result, "predictions": result["predictions"][result["predictions"]["id"].isin(ids)]}
        out[name] = {**kept, **{split: {**result[split], "ua": crossval.pooled({name: kept}, split)["ua"]}
                                for split in ("validation", "test")}}
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the recipe's name (runs go to runs/folds/NAME/seedS/foldK)")
    parser.add_argument("--corpus", choices=list(CORPORA), default="ravdess")
    parser.add_argument("--raw", nargs="+", default=[], metavar="NAME=DIR",
                        help="a corpus's raw folder (default ../shared/ravdess, ../shared/emodb)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data",
                        help="where the folds are prepared, in <corpus>_folds/foldK")
    parser.add_argument("--runs-dir", type=Path, help="where the recipes' runs go (default runs/folds or "
                                                      "runs/emodb_folds)")
    parser.add_argument("--folds", type=int, nargs="+", help="which folds (default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, a cross-validation each")
    parser.add_argument("--whisper", default=str(WHISPER / "tiny.en.pt"))
    parser.add_argument("--pool-with", nargs="+", default=[], choices=list(CORPORA), metavar="CORPUS",
                        help="train on these corpora's folds too (fold K with their fold K, cycling through theirs); "
                             "the row scores this corpus's rows only")
    parser.add_argument("--init-from", metavar="NAME",
                        help="start each fold's representation from recipe NAME's best.pt of the same seed and fold "
                             "(train.py --init)")
    parser.add_argument("--reference", metavar="NAME",
                        help="report the paired difference in test UA to the finished runs of recipe NAME")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    all_folds, _, runs, section = CORPORA[args.corpus]
    raw = {name: corpus[1] for name, corpus in CORPORA.items()}
    for item in args.raw:
        name, sep, path = item.partition("=")
        if not sep or name not in CORPORA:
            parser.error(f"--raw {item}: give NAME=DIR with NAME one of {list(CORPORA)}")
        raw[name] = Path(path)
    runs = args.runs_dir or runs
    folds = args.folds or all_folds
    if not set(folds) <= set(all_folds):
        parser.error(f"{args.corpus} has folds {all_folds}")
    if "--seed" in train_argv:
        parser.error("give training seeds as --seeds (before --), not train.py's --seed")
    if args.corpus in args.pool_with:
        parser.error(f"--pool-with {args.corpus}: it is the corpus the folds test on")
    if args.reference:
        check_reference(runs, args.reference, folds)
    base = parse_args(["--whisper", args.whisper, *train_argv])
    prepared = tuple(str(prepare_fold(args.corpus, raw[args.corpus], args.data_dir, k)) for k in folds)
    data_of = {path: (path, *(str(prepare_fold(other, raw[other], args.data_dir, pooled_fold(other, k)))
                              for other in args.pool_with)) for path, k in zip(prepared, folds, strict=True)}
    inits = init_runs(runs, args.init_from, args.seeds) if args.init_from else {}
    own = scored_ids(prepared) if args.pool_with else []
    by_seed = {}
    for seed, run_dir in seed_runs(runs, args.name, args.seeds).items():
        cfg = dataclasses.replace(base, folds=prepared, run_dir=str(run_dir), seed=seed,
                                  init=str(inits[seed]) if args.init_from else base.init)
        by_seed[seed] = crossval.run(cfg, pooled_fit(data_of) if args.pool_with else train.fit)
        print(crossval.summary(cfg, by_seed[seed]))
        if args.pool_with:
            by_seed[seed] = on_corpus(by_seed[seed], own)
    row = recipe_row(args, train_argv, folds, by_seed, runs)
    print("\n".join(f"{k}: {v}" for k, v in row.items()))
    record(section.format(model=row["model"]), row)


def recipe_row(args: argparse.Namespace, train_argv: list[str], folds: list[int], by_seed: dict[int, dict],
               runs: Path) -> dict[str, str]:
    """The BENCHMARKS row of a recipe's seeds: validation and test UA (each fold's, averaged over the folds, then
    mean ± sd over the seeds; and every fold and seed pooled, with its speaker-bootstrap interval), test UA by
    seed, the paired difference to ``--reference``, the test ECE before and after calibration, minutes per run."""
    seeds = " ".join(map(str, args.seeds)) if args.seeds != [0] else ""
    command = (f"`python bench/folds.py{flags(('--corpus', args.corpus if args.corpus != 'ravdess' else ''))} "
               f"--name {args.name}{flags(('--folds', ' '.join(map(str, args.folds or []))))}"
               f"{flags(('--whisper', shown_whisper(args.whisper)), ('--seeds', seeds))}"
               f"{flags(('--pool-with', ' '.join(args.pool_with)), ('--init-from', args.init_from))}"
               f"{flags(('--reference', args.reference))}"
               f"{' -- ' + ' '.join(train_argv) if train_argv else ''}`")
    everything = {f"seed{s}/{fold}": r for s, results in by_seed.items() for fold, r in results.items()}
    row = {"recipe": args.name, "model": card.whisper_name(args.whisper), "command": command,
           "folds": ",".join(map(str, folds)), "seeds": ",".join(map(str, args.seeds))}
    for split in ("validation", "test"):
        row[f"{split} UA, folds' mean (sd over seeds)"] = crossval.mean_sd(
            [float(np.mean([r[split]["ua"] for r in results.values()])) for results in by_seed.values()])
        pool = crossval.pooled(everything, split)
        row[f"{split} UA pooled [95% CI]"] = stats.format_interval(pool["ua"], pool["ua_ci"])
    row["test UA pooled, by seed"] = ", ".join(f"{crossval.pooled(results)['ua']:.3f}"
                                               for results in by_seed.values())
    row["paired test UA difference to the reference (pooled) [95% CI], p"] = "—"
    if args.reference:
        table = evaluate.compare_runs(runs / args.name, runs / args.reference, on_b=bool(args.pool_with),
                                      seeds=args.seeds, folds=[f"fold{k}" for k in folds])  # this call's alone
        print(f"test UA of {args.name} minus {args.reference}, per fold (seeds pooled) and pooled:\n"
              f"{table.to_string(float_format=lambda v: f'{v:.3f}')}")
        d = table.iloc[-1]
        row["paired test UA difference to the reference (pooled) [95% CI], p"] = (
            f"− {args.reference}: {stats.format_interval(d['difference'], (d['ci_low'], d['ci_high']))}, "
            f"p = {d['p']:.3f}")
    if all("ece" in r["test"] for r in everything.values()):
        row["test ECE at temperature 1 → fitted (mean ± sd over runs)"] = " → ".join(
            crossval.mean_sd([r["test"][k] for r in everything.values()]) for k in ("ece_before", "ece"))
    row["min per run"] = f"{np.mean([r['minutes'] for r in everything.values()]):.1f}"
    return row


if __name__ == "__main__":
    main()
