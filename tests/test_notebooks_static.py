"""What the committed course promises before it runs: no stored outputs, a kernel any Jupyter has,
claims as assert cells, and no training cell that runs silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TRAINS = re.compile(r"\b(fit|train_or_load)\(")


def code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_small(path):
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert path.stat().st_size < 100_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_names_a_kernel_every_jupyter_has_or_the_timm_one(path):
    kernel = json.loads(path.read_text())["metadata"]["kernelspec"]["name"]
    assert kernel in ("python3", "unifiedctx-timm")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_states_its_claims_as_asserts(path):
    assert sum(bool(re.search(r"^\s*assert\b", cell, re.M)) for cell in code_cells(path)) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_training_cell_runs_silently(path):
    for cell in code_cells(path):
        if TRAINS.search(cell):
            assert "progress=False" not in cell and "progress=not" not in cell, cell[:200]
