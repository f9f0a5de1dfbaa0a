"""The shape of the code: short functions, each module its own responsibility, no import the wrong way round."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

MODULES = sorted(p for p in ROOT.glob("*.py")) + sorted(ROOT.glob("bench/*.py"))


def test_no_function_over_80_lines():
    long = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def imports(module: str) -> set[str]:
    """The top-level names a module imports (``import a.b`` and ``from a.b import c`` give ``a``)."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_network_knows_nothing_of_loading_and_fitting_draws_nothing():
    assert not imports("model") & {"checkpoint", "train", "data", "report"}
    assert "model" in imports("checkpoint")
    loaded = subprocess.run([sys.executable, "-c", "import sys, data, train; print(sorted(sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "'matplotlib'" not in loaded and "'report'" not in loaded
