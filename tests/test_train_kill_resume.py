"""A training process killed (SIGKILL) in the middle of epoch 2, resumed by the command line in a new
process, ends with the same weights, bit for bit, as an uninterrupted run (CPU, one thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unifiedctx import cli
from unifiedctx.train import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--model", "container_light_nano", "--data", "texture", "--img-size", "16",
        "--data-option", "n_train=64", "--data-option", "n_test=32", "--batch-size", "16", "--epochs", "3",
        "--model-option", "drop_path=0.1", "--ema", "0.9", "--label-smoothing", "0.1", "--device", "cpu",
        "--no-progress", "--seed", "7"]

# Runs the CLI with fit() wrapped so that the process SIGKILLs itself after step 2 of epoch 2.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import unifiedctx.train as T
    from unifiedctx import cli

    def kill(event):
        if isinstance(event, T.StepDone) and event.epoch == 2 and event.step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    fit = T.fit
    T.fit = lambda *a, **k: fit(*a, callback=kill, **k)
    cli.main(sys.argv[1:])
""")
RESUME = ("import sys, torch; torch.set_num_threads(1); from unifiedctx import cli; "
          "sys.exit(cli.main(sys.argv[1:]))")


def _run(code, args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=240)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*ARGS, "--out", str(tmp_path / "full")]) == 0
    finally:
        torch.set_num_threads(threads)

    cut = tmp_path / "cut"
    killed = _run(KILLER, [*ARGS, "--out", str(cut)])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert read_checkpoint(cut / "last.pt")["epoch"] == 1
    assert not list(cut.glob(".*.tmp"))  # killed between writes: no half-written file left behind

    resumed = _run(RESUME, [*ARGS, "--out", str(cut), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(cut / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}: {name}"
    assert [r["test_loss"] for r in a["history"]] == [r["test_loss"] for r in b["history"]]
    assert "mixing" in b["history"][-1] and b["history"][-1]["mixing"]  # Container layers are logged
