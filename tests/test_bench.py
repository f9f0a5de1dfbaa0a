"""What the benchmarks compute, checked on the CPU: the analytic FLOP count behind MFU against PyTorch's
own counter, rows added to BENCHMARKS.md tables, and ``make gpu-check`` refusing a machine without a GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, random_model, write_wav
from test_corpora import make_emodb
from torch.utils.flop_counter import FlopCounterMode
from whisper.model import MultiHeadAttention

import checkpoint
import evaluate
import stats
from bench import cross_corpus, folds
from bench import predict as bench_predict
from bench.common import record
from bench.throughput import encoder_flops, settings
from labels import label_names


@pytest.mark.parametrize("name, n_frames", [("tiny", 300), ("base", 100)])
def test_encoder_flops_are_what_pytorch_counts(name, n_frames):
    encoder = checkpoint.load_encoder(f"random:{name}", n_frames=n_frames, device="cpu")
    mel = torch.randn(2, encoder.dims.n_mels, n_frames)
    with settings("no SDPA"), FlopCounterMode(display=False) as counter:  # explicit matmuls: every one counted
        encoder(mel).float().sum().backward()
    forward = encoder_flops(encoder.dims, n_frames)
    # PyTorch counts fwd + bwd; the mel needs no gradient, so the first convolution's backward is one product
    assert counter.get_total_flops() / 2 == pytest.approx(3 * forward, rel=0.03)
    with settings("no SDPA"), FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(mel)
    assert counter.get_total_flops() / 2 == forward


def test_settings_are_restored():
    sdpa, tf32 = MultiHeadAttention.use_sdpa, torch.backends.cuda.matmul.allow_tf32
    with settings("no SDPA"):
        assert not MultiHeadAttention.use_sdpa
    with settings("+ TF32"):
        assert MultiHeadAttention.use_sdpa and torch.backends.cuda.matmul.allow_tf32
    assert (MultiHeadAttention.use_sdpa, torch.backends.cuda.matmul.allow_tf32) == (sdpa, tf32)


def test_record_appends_under_its_heading_and_starts_a_table_for_new_columns(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Loader\n\nHow it runs.\n\n| date | machine | a |\n|---|---|---|\n"
                    "| 2020-01-01 | old | 1 |\n\n## Other\n\nText.\n")
    record("Loader", {"a": 2}, path)
    record("Loader", {"a": 3, "b": 4}, path)
    record("Loader", {"a": 5, "b": 6}, path)
    record("New", {"c": 7}, path)
    text = path.read_text()
    loader, rest = text.split("## Other")
    lines = [line.split(" | ")[-1] for line in loader.splitlines() if line.startswith("| 20")]
    assert lines == ["1 |", "2 |", "4 |", "6 |"]
    headers = [line for line in loader.splitlines() if line.startswith("| date")]
    assert headers == ["| date | machine | a |", "| date | machine | a | b |"]
    assert "Text." in rest and rest.index("## New") > rest.index("Text.") and "| 7 |" in rest


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check would run")
def test_make_gpu_check_without_a_gpu_says_so_and_fails():
    proc = subprocess.run(["make", "--no-print-directory", "gpu-check", "HAVE_GPU="], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "make gpu-check: needs an NVIDIA GPU" in proc.stderr.splitlines()[0]
    assert "bench/throughput.py" in proc.stdout and "-m cuda" in proc.stdout  # what it would run


def ravdess_replica(root: Path) -> Path:
    """RAVDESS's published layout, actors 01-12, one 0.4 s clip per emotion and actor."""
    for actor in range(1, 13):
        for emotion in range(1, 9):
            write_wav(root / f"Actor_{actor:02d}" / f"03-01-0{emotion}-01-01-01-{actor:02d}.wav", 0.4, 48000,
                      seed=actor * 10 + emotion)
    return root


@pytest.mark.e2e
def test_folds_runs_seeds_and_pairs_them_with_a_single_reference(tmp_path, monkeypatch, capsys):
    """bench/folds.py on a RAVDESS replica, a tiny random model: the probe once, then a recipe over two seeds that
    starts from it; every seed's runs where the docstring says, the row pooled over the seeds, and the paired
    difference pairing both seeds with the probe's one run."""
    rows = []
    monkeypatch.setattr(folds, "record", lambda section, row: rows.append((section, row)))
    make_emodb(tmp_path / "emodb")
    common = ["--raw", f"ravdess={ravdess_replica(tmp_path / 'ravdess')}", f"emodb={tmp_path / 'emodb'}",
              "--data-dir", str(tmp_path / "prepared"),
              "--runs-dir", str(tmp_path / "runs"), "--whisper", "random:tiny", "--folds", "1", "2"]
    small = ["--n-frames", "100", "--batch-size", "16", "--num-workers", "0", "--device", "cpu"]
    folds.main(["--name", "probe", *common, "--", "--objective", "probe", *small])
    folds.main(["--name", "ft", "--seeds", "0", "1", "--init-from", "probe", "--reference", "probe", *common, "--",
                "--epochs", "1", "--freeze", "top:1", *small])
    runs = tmp_path / "runs"
    assert {p.relative_to(runs).as_posix() for p in runs.glob("*/*/*/best.pt")} == {
        f"{name}/seed{s}/fold{k}" + "/best.pt" for name, seeds in (("probe", [0]), ("ft", [0, 1])) for s in seeds
        for k in (1, 2)}
    assert json.loads((runs / "ft" / "seed1" / "fold2" / "config.json").read_text())["seed"] == 1
    (_, probe), (section, ft) = rows
    assert section == "Recipes by seed: random:tiny on RAVDESS actors 01-12, four speaker-independent folds"
    assert ft["seeds"] == "0,1"
    assert ft["model"] == "random:tiny" and probe["seeds"] == "0"
    assert len(ft["test UA pooled, by seed"].split(", ")) == 2
    before, after = ft["test ECE at temperature 1 → fitted (mean ± sd over runs)"].split(" → ")
    assert " ± " in before and " ± " in after  # four runs: two seeds of two folds
    assert ft["paired test UA difference to the reference (pooled) [95% CI], p"].startswith("− probe: ")
    table = evaluate.compare_runs(runs / "ft", runs / "probe")
    assert list(table.index) == ["fold1", "fold2", "pooled"] and list(table["seeds"]) == [2, 2, 2]
    assert table.loc["pooled", "speakers"] == 6 and table.loc["pooled", "n"] == 2 * 6 * 8  # two seeds' 6 actors
    one_seed = evaluate.compare_runs(runs / "ft" / "seed1", runs / "probe")
    assert one_seed.loc["pooled", "n"] == 6 * 8 and one_seed.loc["pooled", "seeds"] == 1
    assert "per fold (seeds pooled) and pooled" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        folds.main(["--name", "x", *common, "--", "--seed", "3"])
    assert "give training seeds as --seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"--reference ft: .*ft holds no finished run of \['fold3'\] \(run it"):
        folds.main(["--name", "x", "--reference", "ft", *common, "--folds", "3"])  # before any training
    assert not (runs / "x").exists()

    folds.main(["--name", "ft", "--seeds", "1", "--init-from", "probe", "--reference", "probe", *common, "--folds", "2",
                "--", "--epochs", "1", "--freeze", "top:1", "--resume", *small])  # scored again: fold 2 alone
    fold2 = evaluate.compare_runs(runs / "ft", runs / "probe", seeds=[1], folds=["fold2"])
    assert rows[-1][1]["paired test UA difference to the reference (pooled) [95% CI], p"] == (
        f"− probe: {stats.format_interval(fold2.iloc[-1]['difference'], tuple(fold2.iloc[-1][['ci_low', 'ci_high']]))}"
        f", p = {fold2.iloc[-1]['p']:.3f}")
    assert "fold1" not in capsys.readouterr().out.split("per fold (seeds pooled) and pooled:")[1]

    folds.main(["--name", "pooled", "--pool-with", "emodb", "--reference", "probe", *common, "--", "--epochs", "1",
                "--freeze", "top:1", *small])
    config = json.loads((runs / "pooled" / "seed0" / "fold2" / "config.json").read_text())
    assert [Path(d).relative_to(tmp_path / "prepared").as_posix() for d in config["data"]] == [
        "ravdess_folds/fold2", "emodb_folds/fold2"]
    scored = pd.read_csv(runs / "pooled" / "seed0" / "fold2" / evaluate.PREDICTIONS, dtype=str)
    assert scored["id"].str.startswith("03-01-").sum() == 5 * 8 < len(scored)  # RAVDESS's 5 actors and EmoDB's
    with pytest.raises(ValueError, match="were not scored on the same test rows"):
        evaluate.compare_runs(runs / "pooled", runs / "probe")
    assert evaluate.compare_runs(runs / "pooled", runs / "probe", on_b=True).loc["pooled", "n"] == 6 * 8
    assert rows[-1][1]["command"].startswith("`python bench/folds.py --name pooled --folds 1 2 --whisper random:tiny "
                                             "--pool-with emodb --reference probe -- ")


@pytest.mark.e2e
def test_cross_corpus_trains_per_corpus_and_scores_every_pair(tmp_path, monkeypatch, capsys):
    """bench/cross_corpus.py on replicas of RAVDESS (actors 01-12) and EmoDB, a tiny random model: a model per
    corpus, its matrices (the diagonal on its own test speakers), the heatmaps, a BENCHMARKS row per model, and
    the paired difference to a reference (itself: zero)."""
    ravdess_replica(tmp_path / "ravdess")
    make_emodb(tmp_path / "emodb")
    rows = []
    monkeypatch.setattr(cross_corpus, "record", lambda section, row: rows.append((section, row)))
    cross_corpus.main(["--name", "smoke", "--raw", f"ravdess={tmp_path / 'ravdess'}", f"emodb={tmp_path / 'emodb'}",
                       "--data-dir", str(tmp_path / "prepared"), "--runs-dir", str(tmp_path / "runs"),
                       "--whisper", "random:tiny", "--reference", "smoke", "--", "--epochs", "1", "--n-frames", "100",
                       "--batch-size", "16", "--num-workers", "0", "--device", "cpu", "--freeze", "top:1"])
    scores = json.loads((tmp_path / "runs" / "smoke" / "scores.json").read_text())
    shared, four = scores["shared classes"], scores["4 classes"]
    assert shared["ravdess"]["ravdess"]["n"] == 24  # the diagonal: actors 1-3, RAVDESS's fold 1 test
    assert shared["ravdess"]["emodb"]["classes"] == ["neutral", "happy", "sad", "angry", "fearful", "disgusted"]
    assert shared["ravdess"]["emodb"]["left_out"] == {"boredom": 10} and shared["ravdess"]["emodb"]["n"] == 60
    assert not {"calm", "surprised"} & set(shared["emodb"]["ravdess"]["classes"])  # EmoDB has neither
    assert all(m["classes"] == ["neutral", "happy", "sad", "angry"] for row in four.values() for m in row.values())
    assert {p.name for p in (tmp_path / "runs" / "smoke").glob("*.png")} == {"shared_classes.png", "4_classes.png"}
    assert [row["trained on"] for _, row in rows] == ["ravdess", "emodb"]
    assert rows[0][1]["command"].startswith("`python bench/cross_corpus.py --name smoke --corpora ravdess emodb "
                                            "--whisper random:tiny --reference smoke -- --epochs 1 ")
    assert rows[0][1]["on emodb: UA − smoke [95% CI], p: shared; 4 classes"].startswith("0.00 [0.00, 0.00], p = 1.00")
    assert "4 classes: UA [95% CI]" in capsys.readouterr().out


def test_bench_predict_times_pytorch_and_onnx_on_the_same_files(tmp_path, monkeypatch):
    """bench/predict.py on a RAVDESS replica with a random checkpoint: both rates, their ratio, and the two
    agreeing on every probability."""
    net = random_model(pooling="mean", n_frames=100, labels=label_names("ravdess"))
    checkpoint.save_model(net, tmp_path / "best.pt")
    rows = []
    monkeypatch.setattr(bench_predict, "record", lambda section, row: rows.append((section, row)))
    bench_predict.main(["--checkpoint", str(tmp_path / "best.pt"), "--ravdess", str(ravdess_replica(tmp_path / "r")),
                        "--files", "6", "--every", "7", "--repeats", "1"])
    ((section, row),) = rows
    assert section == "Prediction on the CPU: PyTorch and ONNX" and row["files"] == "6 RAVDESS clips"
    onnx, torch_rate = float(row["onnxruntime files/s"]), float(row["PyTorch files/s"])  # rounded to 0.1
    ratio = float(row["onnxruntime / PyTorch"].removesuffix("x"))  # of the unrounded rates, rounded to 0.01
    assert (onnx - 0.05) / (torch_rate + 0.05) - 0.005 <= ratio <= (onnx + 0.05) / (torch_rate - 0.05) + 0.005
    assert float(row["largest probability difference"]) < 1e-4
