"""config.py: Config (frozen, its options checked against the objective), its command line and help, and a
notebook's parameters read from its namespace (a typo is an error naming the closest field)."""

from __future__ import annotations

import dataclasses

import pytest

import config
from config import Config


def test_help_explains_every_config_field(capsys):
    with pytest.raises(SystemExit):
        config.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out and " ".join(f.metadata["help"].split()) in out, flag
    assert "--objective {supervised,simclr,supcon,probe}" in out and "(default: blocks)" in out and "--debug" in out
    assert "softmax temperature [simclr/supcon only]" in out
    assert "AdamW weight decay [supervised/simclr/supcon only]" in out


def test_command_line_types_come_from_the_annotations():
    cfg = config.parse_args(["--data", "a", "b", "--encoder-lr", "3e-5", "--no-augment", "--epochs", "3",
                             "--device", "none"])
    assert cfg.data == ("a", "b") and cfg.encoder_lr == 3e-5 and cfg.augment is False and cfg.epochs == 3
    assert cfg.device is None and config.parse_args(["--encoder-lr", "None"]).encoder_lr is None
    assert config.parse_args([]) == Config() and config.parse_args(["--data", "x"]).data == "x"
    assert config.parse_args(["--exclude"]).exclude == ()
    assert config.parse_args(["--folds", "a", "b"]).folds == ("a", "b")


def test_config_is_frozen_and_its_sequences_are_tuples():
    cfg = Config(data=["a", "b"], exclude=["other"])
    assert cfg.data == ("a", "b") and cfg.exclude == ("other",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3


@pytest.mark.parametrize("field, value", [("objective", "triplet"), ("pooling", "max"), ("backend", "jax"),
                                          ("precision", "fp16"), ("layers", "first")])
def test_config_refuses_a_value_outside_its_choices(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of .*{value}"):
        Config(**{field: value})


@pytest.mark.parametrize("objective, field, value", [
    ("supervised", "temperature", 0.2), ("supervised", "vad_negatives", True), ("supervised", "proj_dim", 64),
    ("supcon", "vad_weight", 0.5), ("simclr", "class_weights", None), ("supcon", "probe_init", False),
    ("simclr", "dropout", 0.3), ("probe", "epochs", 3), ("probe", "lr", 1e-3), ("probe", "freeze", "all"),
    ("probe", "temperature", 0.2)])
def test_an_option_its_objective_does_not_read_is_an_error(objective, field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r} does nothing for objective '{objective}'"):
        Config(objective=objective, **{field: value})


def test_every_objective_takes_its_own_options():
    Config(objective="supcon", temperature=0.2, vad_negatives=True, epochs=3, freeze="all")
    Config(vad_weight=0.5, dropout=0.3, class_weights=None, probe_init=False)
    Config(objective="probe", batch_size=8, seed=1, windows=False, init="x.pt")
    with pytest.raises(ValueError, match="supcon for 0 epochs trains nothing: objective 'probe'"):
        Config(objective="supcon", epochs=0)


def test_as_objective_leaves_behind_what_the_new_objective_does_not_read():
    supcon = Config(objective="supcon", temperature=0.2, epochs=6, lr=1e-3, batch_size=16)
    fine_tune = supcon.as_objective("supervised", init="best.pt", epochs=10)
    assert (fine_tune.objective, fine_tune.temperature, fine_tune.lr, fine_tune.batch_size) == ("supervised", 0.1,
                                                                                                1e-3, 16)
    probe = supcon.as_objective("probe", run_dir="before")
    assert probe.epochs == Config().epochs and probe.lr == Config().lr and probe.batch_size == 16


def test_config_from_a_plain_namespace():
    namespace = {"data": "corpus", "epochs": 3, "projection": "pca", "config": config, "Config": Config}
    cfg = Config.from_namespace(namespace, other=("projection",), objective="supcon")
    assert (cfg.data, cfg.epochs, cfg.objective) == ("corpus", 3, "supcon")
    assert dataclasses.replace(cfg, data="data/synthetic", epochs=10, objective="supervised") == Config()
    with pytest.raises(ValueError, match="unknown parameter.*'projection' \\(closest: "):
        Config.from_namespace(namespace)
    with pytest.raises(ValueError, match="unknown parameter.*'epoch' \\(closest: 'epochs'\\)"):
        Config.from_namespace({"epoch": 3})
    with pytest.raises(ValueError, match="'vad_wieght' \\(closest: 'vad_weight'\\)"):
        Config.from_namespace({}, vad_wieght=0.5)


def test_a_notebooks_parameters_are_what_its_parameters_cells_assign():
    """In a kernel, names that later cells left behind (a re-run from the top) are not parameters; papermill's
    injected cell after the notebook's own parameters cell is."""
    own = "# Parameters (papermill: ...)\ndata = 'a'\nprojection = 'pca'\n"
    history = ["", own, "splits = {}\nresult = 1\n", own, "# Parameters\nepochs = 2\nlr = 0.01\n",
               "cfg = Config.from_namespace(globals())"]
    namespace = {"In": history, "Out": {}, "data": "a", "projection": "pca", "epochs": 2, "lr": 0.01, "splits": {},
                 "result": 1}
    assert config.notebook_parameters(namespace) == ["data", "projection", "epochs", "lr"]
    cfg = Config.from_namespace(namespace, other=("projection",))
    assert (cfg.data, cfg.epochs, cfg.lr) == ("a", 2, 0.01)
    typo = {**namespace, "In": [*history[:4], "# Parameters\nepoch = 2\n", history[-1]], "epoch": 2}
    with pytest.raises(ValueError, match="'epoch' \\(closest: 'epochs'\\)"):
        Config.from_namespace(typo, other=("projection",))
    rerun = {**namespace, "In": history[:2] + [history[-1]]}  # run by hand: its own parameters cell alone
    assert config.notebook_parameters(rerun) == ["data", "projection"]


def test_a_bad_flag_value_is_one_usage_line(capsys):
    for argv, message in ((["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
                          (["--objective", "probe", "--lr", "0.1"], "lr=0.1 does nothing for objective 'probe'")):
        with pytest.raises(SystemExit) as exit_:
            config.parse_args(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith(f"train.py: error: {message}") and err.count("\n") == 1


def test_contrastive_configs_pre_train_on_the_corpora_given_too():
    cfg = Config(data="data/a", objective="simclr", run_dir="runs/c")
    runs = config.contrastive_configs(cfg, (False, True), pretrain_with=["data/b"])
    assert {name: (r.data, r.vad_negatives, r.run_dir) for name, r in runs.items()} == {
        "simclr": (("data/a", "data/b"), False, "runs/c/simclr"), "simclr_vad": (("data/a", "data/b"), True,
                                                                                "runs/c/simclr_vad")}
    assert config.contrastive_configs(cfg, (False,))["simclr"].data == "data/a"
    assert config.contrastive_configs(Config(data=("a", "b"), objective="supcon"), (False,), ["c"])[
        "supcon"].data == ("a", "b", "c")
