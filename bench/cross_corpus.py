"""Cross-corpus: one model per corpus, trained on its own speaker-independent split, scored on every corpus.

    python bench/cross_corpus.py --name default                              # config.Config()'s defaults
    python bench/cross_corpus.py --name probe -- --objective probe           # the frozen encoder's probe
    python bench/cross_corpus.py --name default --reference probe            # ... and the paired differences
    python bench/cross_corpus.py --name default --corpora ravdess emodb savee --raw savee=/data/SAVEE

Corpora (``CORPORA``): RAVDESS actors 01-12 in ``../shared/ravdess`` (trained on bench/folds.py's fold 1: actors
6-12 train, 4-5 validate, 1-3 test), EmoDB in ``../shared/emodb`` (its fold 1), and SAVEE, CREMA-D (fold 1) and TESS
(a test corpus only: every row in test) wherever ``--raw NAME=DIR`` points. Each trained model is scored on its
own corpus's test split (the diagonal: within-corpus, speaker-independent) and on every row of every other
corpus, over the classes both share by name and, beside that, over the four of the literature (neutral, happy,
sad, angry), each with its speaker-bootstrap interval (``evaluate.score_corpus``). Everything after ``--`` goes to
``train.py``. Writes the matrices into ``--runs-dir``/NAME (default ``runs/cross_corpus/NAME``): ``scores.json``, a
``.png`` heatmap per class set, the predictions per pair for ``--reference``; prints them and appends a row per
training corpus to BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import pandas as pd  # noqa: E402

import checkpoint  # noqa: E402
import data  # noqa: E402
import evaluate  # noqa: E402
import prepare  # noqa: E402
import report  # noqa: E402
import stats  # noqa: E402
import train  # noqa: E402
from bench.common import WHISPER, flags, record, shown_whisper  # noqa: E402
from bench.folds import FOLDS  # noqa: E402
from config import parse_args  # noqa: E402
from model import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPORA = {  # name -> how its raw folder is prepared, and the default raw folder
    "ravdess": (lambda raw: prepare.prepare_ravdess(raw, test_speakers=FOLDS[1][0], validation_speakers=FOLDS[1][1]),
                SHARED / "ravdess"),
    "emodb": (prepare.prepare_emodb, SHARED / "emodb"),
    "savee": (prepare.prepare_savee, None),
    "crema_d": (prepare.prepare_crema_d, None),
    "tess": (prepare.prepare_tess, None),
}
CLASS_SETS = {"shared classes": False, "4 classes": True}  # name -> four_class


def prepared(name: str, raw: Path, out: Path) -> Path:
    """``out/name`` prepared from ``raw`` (once: an existing folder is reused)."""
    path = out / name
    if not path.exists():
        data.save(CORPORA[name][0](raw), path)
    return path


def cell(m: dict) -> str:
    return stats.format_interval(m["ua"], m["ua_ci"], 2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_argv = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the recipe's name (runs go to runs/cross_corpus/NAME)")
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=["ravdess", "emodb"])
    parser.add_argument("--raw", nargs="*", default=[], metavar="NAME=DIR", help="a corpus's raw folder")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "cross_corpus")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "cross_corpus")
    parser.add_argument("--whisper", default=str(WHISPER / "tiny.en.pt"))
    parser.add_argument("--reference", metavar="NAME", help="the paired difference in UA to that recipe's runs")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    raw = {name: default for name, (_, default) in CORPORA.items()}
    for item in args.raw:
        name, _, folder = item.partition("=")
        if name not in CORPORA or not folder:
            parser.error(f"--raw takes NAME=DIR with NAME one of {list(CORPORA)}, got {item!r}")
        raw[name] = Path(folder)
    missing = [n for n in args.corpora if raw[n] is None]
    if missing:
        parser.error(f"no raw folder for {missing}: give --raw NAME=DIR")
    corpora = {n: str(prepared(n, raw[n], args.data_dir)) for n in args.corpora}
    out = args.runs_dir / args.name
    base = parse_args(["--whisper", args.whisper, *train_argv])
    runtime = Runtime.resolve(base.device, base.precision)

    scores: dict[str, dict[str, dict[str, dict]]] = {s: {} for s in CLASS_SETS}
    minutes = {}
    for trained_on, path in corpora.items():
        if not len(data.load_corpus(path, "train")):
            continue  # a test corpus only (TESS)
        cfg = dataclasses.replace(base, data=path, run_dir=str(out / trained_on))
        start = time.perf_counter()
        train.fit(cfg)
        minutes[trained_on] = (time.perf_counter() - start) / 60
        net = checkpoint.load_model(Path(cfg.run_dir) / "best.pt", device=runtime.device)
        trained = checkpoint.read_checkpoint(Path(cfg.run_dir) / "best.pt")["extra"]["trained"]
        options = cfg.loader_options(train=False, n_mels=net.config.n_mels)
        for set_name, four_class in CLASS_SETS.items():
            row = scores[set_name].setdefault(trained_on, {})
            for scored_on, other in corpora.items():
                ds = evaluate.corpus_rows(other, "test" if scored_on == trained_on else "all")
                row[scored_on], rows = evaluate.score_corpus(net, ds, options, runtime, trained=trained,
                                                             four_class=four_class, name=scored_on)
                rows.assign(split="test").to_csv(out / trained_on / f"on_{scored_on}_{int(four_class) + 3}.csv",
                                                 index=False)

    (out / "scores.json").write_text(json.dumps(scores, indent=2))
    for set_name, matrix in scores.items():
        ua = pd.DataFrame({t: {s: m["ua"] for s, m in row.items()} for t, row in matrix.items()}).T
        text = pd.DataFrame({t: {s: cell(m) for s, m in row.items()} for t, row in matrix.items()}).T
        print(f"{args.name}, {set_name}: UA [95% CI] (rows: trained on; the diagonal: its own test speakers)\n"
              f"{text.to_string()}")
        report.plot_score_matrix(ua, text, f"{args.name}: UA, {set_name}", out / f"{set_name.replace(' ', '_')}.png")

    options = flags(("--whisper", shown_whisper(args.whisper)), ("--reference", args.reference))
    for trained_on in scores["shared classes"]:
        row = {"recipe": args.name, "trained on": trained_on,
               "command": f"`python bench/cross_corpus.py --name {args.name} --corpora {' '.join(args.corpora)}"
                          f"{options} -- {' '.join(train_argv)}`"}
        for scored_on in corpora:
            shared, four = (scores[s][trained_on][scored_on] for s in CLASS_SETS)
            row[f"on {scored_on}: UA [95% CI], shared classes (how many); 4 classes"] = (
                f"{cell(shared)} ({len(shared['classes'])}); {cell(four)}")
            if args.reference:
                differences = []
                for four_class in CLASS_SETS.values():
                    name = f"on_{scored_on}_{int(four_class) + 3}.csv"
                    mine = pd.read_csv(out / trained_on / name, dtype=str).set_index("id")
                    ref = pd.read_csv(out.parent / args.reference / trained_on / name, dtype=str).set_index("id")
                    d = evaluate.compare_rows(mine.assign(other=ref.loc[mine.index, "prediction"], fold=""))
                    differences.append(f"{stats.format_interval(d['difference'], (d['ci_low'], d['ci_high']), 2)}, "
                                       f"p = {d['p']:.2f}")
                row[f"on {scored_on}: UA − {args.reference} [95% CI], p: shared; 4 classes"] = "; ".join(differences)
        row["train min"] = f"{minutes[trained_on]:.1f}"
        record(f"Cross-corpus: trained on one corpus, scored on another ({', '.join(args.corpora)})", row)


if __name__ == "__main__":
    main()
