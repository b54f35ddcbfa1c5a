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


def test_ci_builds_the_quick_site_after_the_notebooks_and_browses_it():
    test = dry_run("test").splitlines()
    notebooks = next(i for i, c in enumerate(test) if "--nbval-lax notebooks/" in c)
    site = next(i for i, c in enumerate(test) if "site-quick" in c)
    assert notebooks < site  # 05 loads the runs that 04 cached under nbval
    quick = dry_run("site-quick")
    assert "-m unifiedctx.site --profile quick --out build/site-quick 01 05" in quick
    assert "UNIFIEDCTX_SITE=build/site-quick" in quick and "tests/browser/test_site_browser.py" in quick
