"""The command lines fail like command lines: a bad argument or input to train.py, prepare.py or predict.py is
one line on stderr naming it and a non-zero exit status; ``--debug`` shows the Python traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

import cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if ": error: " in line]


@pytest.mark.e2e
@pytest.mark.parametrize("script, args, status, message", [
    ("train.py", ["--data", "/nonexistent", "--whisper", "random:tiny"], 1,
     "train.py: error: no prepared corpus at /nonexistent: no such folder"),
    ("train.py", ["--epochs", "many"], 2, "train.py: error: argument --epochs: invalid int value: 'many'"),
    ("train.py", ["--objective", "supcon", "--vad-weight", "0.5"], 2,
     "train.py: error: vad_weight=0.5 does nothing for objective 'supcon'"),
    ("prepare.py", ["ravdess", "/nonexistent", "/tmp/out"], 1,
     "prepare.py: error: /nonexistent is not a RAVDESS directory: expected Actor_XX/"),
    ("prepare.py", ["shemo", "raw", "out"], 2, "prepare.py: error: argument corpus: invalid choice: 'shemo'"),
    ("predict.py", ["--checkpoint", "/nonexistent.pt", "clip.wav"], 2,
     "predict.py: error: cannot load checkpoint /nonexistent.pt: model file /nonexistent.pt does not exist"),
])
def test_a_bad_argument_or_input_is_one_line(script, args, status, message):
    proc = run(script, *args)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors(proc)) == 1 and errors(proc)[0].startswith(message), proc.stderr


@pytest.mark.e2e
def test_debug_shows_the_traceback():
    proc = run("train.py", "--data", "/nonexistent", "--whisper", "random:tiny", "--debug")
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "FileNotFoundError: no prepared corpus at /nonexistent" in proc.stderr


def test_run_turns_an_exception_into_one_line(capsys):
    def main(argv: list[str]) -> int:
        raise KeyError(f"no split {argv[0]!r}\nin the corpus")

    assert cli.run(main, ["test"], "tool.py") == 1
    assert capsys.readouterr().err == "tool.py: error: KeyError: no split 'test' in the corpus (--debug shows the " \
                                      "traceback)\n"
    with pytest.raises(KeyError):
        cli.run(main, ["test", "--debug"], "tool.py")
    assert cli.run(lambda argv: None, [], "tool.py") == 0
