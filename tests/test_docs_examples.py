"""The runnable examples of docs/training.md run as written, so the guide cannot go stale silently.

A ```python block directly preceded by a ``<!-- runnable -->`` line is extracted and executed in a
fresh namespace inside a temporary folder (the examples write ``runs/...`` relative paths).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
_BLOCK = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)\n```", re.S)


def runnable_blocks(text: str) -> list[str]:
    """The code of every ```python block marked ``<!-- runnable -->`` in ``text``."""
    return _BLOCK.findall(text)


def test_the_guide_has_runnable_examples():
    blocks = runnable_blocks(DOC.read_text())
    assert len(blocks) >= 1, "docs/training.md lost its <!-- runnable --> examples"
    assert all("train." in b for b in blocks)


@pytest.mark.parametrize("index", range(len(runnable_blocks(DOC.read_text()))))
def test_runnable_example_runs(index, tmp_path, monkeypatch):
    code = runnable_blocks(DOC.read_text())[index]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{DOC.name}[runnable {index}]", "exec"), {"__name__": "__docs__"})
