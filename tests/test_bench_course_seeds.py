"""bench/course_seeds.py: the course run on several seeds, errors allowed, and what its asserts compare
tabulated.

Its measures name variables of the notebooks; a notebook that renames one must fail here, not give an "error"
cell in a table nobody reads."""

from __future__ import annotations

import ast
import builtins
import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location("course_seeds", ROOT / "bench" / "course_seeds.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["course_seeds"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["course_seeds"]


def assigned_names(path: Path) -> set[str]:
    """Every name a notebook's code cells bind (assignments, loops, imports, defs, with-targets)."""
    names = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse("".join(cell["source"]))):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def free_names(expression: str) -> set[str]:
    """The names an expression reads that neither it binds (comprehension targets) nor builtins give."""
    tree = ast.parse(expression, mode="eval")
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return read - bound - set(dir(builtins))


def test_every_measure_reads_names_its_notebook_defines(seeds):
    for prefix, measures in seeds.MEASURES.items():
        (path,) = ROOT.glob(f"notebooks/{prefix}_*.ipynb")
        defined = assigned_names(path)
        for name, expression in measures.items():
            missing = free_names(expression) - defined
            assert not missing, f"{path.name}: measure {name!r} reads {sorted(missing)}, never bound there"


def test_a_failing_assert_is_reported_and_the_rest_still_measured(seeds, tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 3"),
                nbformat.v4.new_code_cell("assert x == 4, 'x is not 4'"),
                nbformat.v4.new_code_cell("y = x + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_probe.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setitem(seeds.MEASURES, "99", {"y": "y", "never_bound": "z * 2"})
    row = seeds.run_notebook(path, seed=3)
    assert row["notebook"] == "99" and row["seed"] == 3 and row["cpu_s"] > 0 and row["wall_s"] > 0
    assert row["values"]["y"] == 4 and row["values"]["never_bound"].startswith("error: NameError")
    (failed,) = row["failed"]
    assert failed["cell"] == 1 and "x is not 4" in failed["error"] and "assert x == 4" in failed["line"]


def test_the_table_gives_each_seeds_latest_row_and_the_spread(seeds):
    rows = [{"notebook": "10", "name": "10_x", "seed": s, "wall_s": 1.0, "cpu_s": 2.0, "failed": [],
             "values": {"gain": g}} for s, g in ((0, 0.1), (1, 0.3), (2, 0.2))]
    failed = [{"cell": 4, "error": "AssertionError", "line": "a"}]
    rows.append({**rows[1], "values": {"gain": 0.5}, "failed": failed})   # seed 1 again: this one wins
    text = seeds.table(rows)
    (gain,) = [line.split() for line in text.splitlines() if line.startswith("gain")]
    # seeds 0, 1, 2, then mean, sd, min, max
    assert gain[1:] == ["0.100", "0.500", "0.200", "0.267", "0.208", "0.100", "0.500"]
    assert "failed: seed 1: cell 4 a" in text
