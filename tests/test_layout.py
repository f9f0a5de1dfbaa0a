"""The shape of the code: modules on floors computed from their imports (no circle, nothing imported from its
own floor or above), short functions, modules of a readable size, and the responsibilities kept apart."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

MODULES = {p.stem: p for p in sorted(ROOT.glob("*.py"))}
MODULES |= {f"bench.{p.stem}": p for p in sorted(ROOT.glob("bench/*.py")) if p.stem != "__init__"}


def runtime_imports(path) -> set[str]:
    """The project modules that ``path`` imports at run time, wherever in the file (a lazy import in a function
    counts; one under ``if TYPE_CHECKING:`` does not)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES}
    return found - {next(k for k, p in MODULES.items() if p == path)}


GRAPH = {name: runtime_imports(path) for name, path in MODULES.items()}


def floors() -> dict[str, int]:
    """Each module's floor: 0 for one that imports no project module, else one above the highest it imports.
    An import circle has no floors: an AssertionError naming it."""
    floor: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise AssertionError(f"import circle: {' -> '.join([*path[path.index(name):], name])}")
        if name not in floor:
            floor[name] = 1 + max((visit(m, (*path, name)) for m in GRAPH[name]), default=-1)
        return floor[name]

    for name in GRAPH:
        visit(name, ())
    return floor


def test_every_import_goes_to_a_lower_floor():
    floor = floors()
    upward = [f"{a} (floor {floor[a]}) imports {b} (floor {floor[b]})" for a in GRAPH for b in GRAPH[a]
              if floor[b] >= floor[a]]
    assert not upward, upward
    print("\n".join(f"floor {floor[m]}: {m}" for m in sorted(floor, key=floor.get)))


def test_an_import_circle_is_found(monkeypatch):
    monkeypatch.setitem(GRAPH, "model", GRAPH["model"] | {"train"})  # as if the network imported the loop
    try:
        floors()
    except AssertionError as e:
        assert str(e).startswith("import circle: ") and "model -> train" in str(e)
    else:
        raise AssertionError("the circle model -> train -> ... -> model was not found")


def test_what_the_layers_may_not_know():
    assert not GRAPH["report"], "report.py draws what it is handed: it imports no project module"
    for low in ("labels", "losses", "model", "audio", "cli", "stats"):
        assert not GRAPH[low], low
    assert not {"checkpoint", "config", "data", "train"} & GRAPH["model"]
    trainers = {m for m in GRAPH if "train" in GRAPH[m]}
    assert trainers <= {"bench.folds", "bench.cross_corpus"}, (
        f"only what runs training imports the loop, not for a metric: {trainers}")
    loaded = subprocess.run([sys.executable, "-c", "import sys, data, train; print(sorted(sys.modules))"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "'matplotlib'" not in loaded and "'report'" not in loaded  # training draws nothing


def test_no_function_over_80_lines_and_no_module_over_800():
    long = []
    for path in MODULES.values():
        text = path.read_text()
        if len(text.splitlines()) > 800:
            long.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
    assert len((ROOT / "train.py").read_text().splitlines()) < 500, "train.py is one run: build, loss, step, loop"
