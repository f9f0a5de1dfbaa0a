"""Both notebooks, executed end to end by demo.run (papermill) on a tiny configuration."""

from __future__ import annotations

import ast
import dataclasses
import json

import nbformat
import papermill
import pytest

import checkpoint
import config
import demo
import evaluate

# demo.run hands each notebook what it reads: vad_weight goes to the supervised one, finetune_epochs to the other
TINY = {"epochs": 1, "n_frames": 100, "batch_size": 16, "num_workers": 0, "freeze": "top:1", "finetune_epochs": 1,
        "vad_weight": 0.5}


@pytest.mark.parametrize("name", demo.NOTEBOOKS)
def test_notebooks_are_committed_thin_and_without_outputs(name):
    nb = nbformat.read(demo.ROOT / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be the parameters cell"
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs (make strip)"
    defined = [node.name for c in code for node in ast.walk(ast.parse(c.source))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert not defined, f"logic belongs in the modules, not the notebook: {defined}"


@pytest.mark.parametrize("name", demo.NOTEBOOKS)
def test_parameters_differ_from_config_only_with_a_reason(name):
    """A parameter that sets a Config field to another value than its default says why on its line."""
    cell = nbformat.read(demo.ROOT / f"{name}.ipynb", as_version=4).cells[1]
    defaults = {f.name: f.default for f in dataclasses.fields(config.Config)}
    lines = cell.source.splitlines()
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"the parameters cell holds assignments only: {ast.unparse(node)}"
        target = node.targets[0].id
        if target in defaults and ast.literal_eval(node.value) != defaults[target]:
            assert "#" in lines[node.lineno - 1], f"{name}: {target} differs from config.Config without a comment"


def test_demo_settings_are_config_fields():
    fields = {f.name for f in dataclasses.fields(config.Config)}
    for name, settings in demo.SYNTHETIC_SETTINGS.items():
        assert set(settings) <= fields, name
        config.Config(**settings, objective=demo.own_parameters(name).get("objective", "supervised"))  # valid values


def test_each_notebook_gets_the_parameters_it_reads():
    params = {"data": "x", "epochs": 2, "vad_weight": 0.5, "temperature": 0.2, "finetune_epochs": 3,
              "projection": "tsne"}
    assert demo.notebook_parameters("supervised", params) == {"data": "x", "epochs": 2, "vad_weight": 0.5,
                                                                "projection": "tsne"}
    assert demo.notebook_parameters("contrastive", params) == {"data": "x", "epochs": 2, "temperature": 0.2,
                                                                 "finetune_epochs": 3, "projection": "tsne"}
    with pytest.raises(ValueError, match="unknown parameter.*'epoch' \\(closest: 'epochs'\\)"):
        demo.execute(demo.ROOT / "runs" / "never", "x", "random:tiny", {"epoch": 2}, 0, False)


def test_summary_table_gives_mean_and_std_over_seeds():
    runs = {"supervised fine-tuning": [{"validation": {"ua": u}, "test": {"ua": u, "wa": 0.5, "macro_f1": 0.25}}
                                       for u in (0.6, 0.7, 0.8)],
            "one run": [{"validation": {"ua": 0.5}, "test": {"ua": 0.5, "wa": 0.5, "macro_f1": 0.5}}]}
    lines = demo.summary_table(runs).splitlines()
    assert lines[2] == "| supervised fine-tuning | 0.700 ± 0.100 | 0.700 ± 0.100 | 0.500 ± 0.000 | 0.250 ± 0.000 |"
    assert lines[3] == "| one run | 0.500 | 0.500 | 0.500 | 0.500 |"


@pytest.mark.e2e
def test_a_typo_in_a_notebook_parameter_is_an_error(synthetic_dir, tmp_path):
    """papermill only warns about a parameter its notebook does not list; the notebook refuses it, naming the
    closest field, before anything trains."""
    params = {"data": str(synthetic_dir), "epoch": 1, "run_dir": str(tmp_path / "run")}
    with pytest.raises(papermill.PapermillExecutionError, match="'epoch' \\(closest: 'epochs'\\)"):
        papermill.execute_notebook(demo.ROOT / "supervised.ipynb", tmp_path / "typo.ipynb", kernel_name="python3",
                                   parameters=params, cwd=str(demo.ROOT), progress_bar=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_demo_executes_both_notebooks(synthetic_dir, tmp_path):
    out = tmp_path / "demo"
    summary = demo.run(out, data=str(synthetic_dir), whisper="random:tiny", overrides=TINY)

    for name in demo.NOTEBOOKS:
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
    runs = {"supervised": out / "supervised", "before": out / "contrastive" / "before",
            "supcon": out / "contrastive" / "supcon", "supcon_vad": out / "contrastive" / "supcon_vad"}
    for run_dir in runs.values():
        result = json.loads((run_dir / "results.json").read_text())
        for split in ("validation", "test"):
            assert 0.0 <= result[split]["ua"] <= 1.0 and 0.0 <= result[split]["macro_f1"] <= 1.0
            assert result[split]["n"] > 0
        assert (run_dir / "best.pt").exists()
    assert json.loads((runs["supcon_vad"] / "config.json").read_text())["vad_negatives"] is True
    assert json.loads((runs["supcon"] / "config.json").read_text())["vad_negatives"] is False
    for name in ("before", "supcon", "supcon_vad"):  # the corpus has VAD ratings: the VAD head is the probe's
        assert checkpoint.load_model(runs[name] / "best.pt").config.vad_probe
    supervised = json.loads((runs["supervised"] / "results.json").read_text())
    assert {"ccc_valence", "ccc_arousal", "ccc_dominance"} <= set(supervised["test"])  # the VAD head ran
    assert len(supervised["history"]) == TINY["epochs"]
    for figure in ("history.png", "confusion.png", "embeddings.png"):
        assert (runs["supervised"] / figure).stat().st_size > 0
    for figure in ("history.png", "confusion.png", "embeddings_before.png", "embeddings_supcon.png",
                   "embeddings_supcon_vad.png"):
        assert (out / "contrastive" / figure).stat().st_size > 0
    rows = [line.split("|")[1].strip() for line in summary.splitlines()[2:]]
    assert rows == ["supervised fine-tuning", "linear probe, no contrastive training", "linear probe after supcon",
                    "linear probe after supcon with VAD-aware negatives", "fine-tuning after contrastive pre-training",
                    f"baseline: {evaluate.BASELINE}"]
    finetune = json.loads((out / "contrastive" / "finetune" / "config.json").read_text())
    assert finetune["objective"] == "supervised" and finetune["init"].endswith("/best.pt")
    assert (out / "summary.md").read_text().strip() == summary
