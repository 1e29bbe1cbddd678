"""The package's shape: no import circle between files or between parts, and every import goes
down the written order (docs/ARCHITECTURE.md, "Layers"). Read from the source with `ast`, so
imports inside functions count; `if TYPE_CHECKING:` blocks do not; `from pkg import name`
counts as an import of `pkg.name` where that is a module, else of `pkg`. A part is a sub-package
or a top-level module of atss_cli; the package root (its lazy re-exports) and the compiled `_C`
are not parts.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "atss_cli"

# Low to high: a part may import only parts of a lower rank. Parts on one line know nothing of
# each other. New code goes where its imports put it: `bench train` in benchmarks (it imports
# training), an analysis of the errors in evaluation (it imports data and inference).
LAYERS = [
    ["errors"],
    ["atomic", "build_flags"],
    ["config", "device", "precision", "drawing"],
    ["ops"],
    ["environment"],
    ["model"],
    ["data"],
    ["distributed"],
    ["inference"],
    ["evaluation"],
    ["export"],
    ["training"],
    ["benchmarks"],
    ["terminal"],
    ["launch"],
    ["demo"],
    ["api"],
    ["cli"],
    ["__main__"],
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
NOT_PARTS = {"atss_cli", "atss_cli._C"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool):
    """(line, imported module) for every import in `tree` outside TYPE_CHECKING blocks."""
    found = []

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            found.extend((node.lineno, base, alias.name) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """{module: {imported atss_cli module: first line}} over every .py file under `root`."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), str(path))
        for line, base, alias in _imports(tree, name, path.name == "__init__.py"):
            if not base.startswith(root.name):
                continue
            target = base
            if alias is not None and alias != "*" and f"{base}.{alias}" in files:
                target = f"{base}.{alias}"
            elif alias is not None and f"{base}.{alias}" == f"{root.name}._C":
                target = f"{root.name}._C"
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    if module in NOT_PARTS or len(pieces) < 2:
        return None
    return pieces[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def structure_problems(root: Path = PACKAGE) -> list[str]:
    graph = import_graph(root)
    problems = []
    files = {m: {t for t in edges if t in graph and t not in NOT_PARTS}
             for m, edges in graph.items() if m not in NOT_PARTS}
    cycle = find_cycle(files)
    if cycle:
        problems.append("import circle between files: " + " -> ".join(cycle))
    parts: dict[str, set[str]] = {}
    for module, edges in graph.items():
        src = part_of(module)
        if src is None:
            continue
        for target, line in edges.items():
            dst = part_of(target)
            if dst is None or dst == src:
                continue
            parts.setdefault(src, set()).add(dst)
            if src not in RANK or dst not in RANK:
                problems.append(f"{module} imports {target} (line {line}): part "
                                f"{src if src not in RANK else dst} is not in the written order")
            elif RANK[dst] >= RANK[src]:
                problems.append(f"{module} imports {target} (line {line}): {src} may not import {dst}")
    cycle = find_cycle(parts)
    if cycle:
        problems.append("import circle between parts: " + " -> ".join(cycle))
    return problems


def test_no_import_circle_and_every_import_goes_down_the_order():
    problems = structure_problems()
    assert not problems, "\n".join(problems)


def test_every_part_is_in_the_written_order():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts - set(RANK) == set(), "add the new part to LAYERS and to docs/ARCHITECTURE.md"
    assert set(RANK) - parts == set(), "a part in LAYERS that no longer exists"


def test_the_written_order_is_the_one_in_architecture_md():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("<!-- layers -->", 2)[1]
    lines = [line.strip().strip("`") for line in block.strip().splitlines() if line.strip().startswith("`")]
    assert [sorted(x.strip() for x in line.split("`, `")) for line in lines] == [sorted(layer) for layer in LAYERS]


def test_the_check_catches_a_circle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "atss_cli"
    for part in ("errors", "model", "data"):
        (pkg / part).mkdir(parents=True) if part != "errors" else pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from atss_cli.data import loader\n")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "head.py").write_text("def f():\n    from atss_cli.data.loader import x\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "loader.py").write_text("from atss_cli.model import head\nx = 1\n")
    problems = structure_problems(pkg)
    assert any("circle between files" in p and "atss_cli.model.head" in p for p in problems), problems
    assert any("circle between parts" in p for p in problems), problems
    # data (rank 6) imports model (rank 5): allowed; model importing data inside a function: not.
    assert any("model may not import data" in p for p in problems), problems
    assert not any("errors" in p for p in problems), problems  # TYPE_CHECKING imports do not count


def test_import_atss_cli_and_help_stay_free_of_torch():
    code = ("import sys, atss_cli; import atss_cli.cli.main as m; "
            "assert 'torch' not in sys.modules, 'atss_cli imported torch'; "
            "assert 'numpy' not in sys.modules, 'atss_cli imported numpy'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=60)
    help_run = subprocess.run([sys.executable, "-X", "importtime", "-m", "atss_cli", "--help"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0, help_run.stderr
    imported = {line.split("|")[-1].strip() for line in help_run.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "numpy" not in imported, sorted(m for m in imported if "torch" in m)


@pytest.mark.parametrize("path", ["atss_cli.model.build_atss_preset", "atss_cli.data.transforms.test_input",
                                  "atss_cli.export.runtime.OnnxDetector", "atss_cli.Detector",
                                  "atss_cli.api.Detector", "atss_cli.Detections"])
def test_the_documented_import_paths_still_work(path):
    import importlib

    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is not None
