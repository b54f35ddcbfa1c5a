"""The README's two commands: `make lab` keeps the user's LAB_ARGS and still runs as root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*args: str) -> str:
    """The commands `make -n` would run (the install stamp is treated as up to date)."""
    stamp = ".venv/.installed"
    result = subprocess.run(["make", "-n", f"--assume-old={stamp}", *args], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return result.stdout


def test_lab_passes_the_users_args_and_allow_root_only_as_root():
    line = next(c for c in dry_run("lab", "LAB_ARGS=--port 8890").splitlines() if "jupyter lab" in c)
    assert "--port 8890" in line
    assert ("--allow-root" in line) == (os.geteuid() == 0)


def test_site_target_builds_the_static_site():
    assert "unifiedctx.site" in dry_run("site")
