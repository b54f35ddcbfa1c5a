"""The `train` command under torch.distributed.run: 2 CPU processes on gloo end with identical weights,
equal (within float tolerance) to one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unifiedctx import cli
from unifiedctx.train import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# deit_tiny_nano has LayerNorm only (BatchNorm would see per-rank batch statistics); no drop-path.
COMMON = ["--model", "deit_tiny_nano", "--data", "texture", "--img-size", "16", "--data-option", "n_train=64",
          "--data-option", "n_test=32", "--epochs", "2", "--model-option", "drop_path=0.0", "--lr", "3e-3",
          "--mixup", "0.4", "--device", "cpu", "--no-progress", "--seed", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_match_each_other_and_one_process(tmp_path):
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "unifiedctx", "train", *COMMON, "--batch-size", "8", "--out", str(ddp_out),
           "--save-rank-weights"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    single_out = tmp_path / "single"
    assert cli.main(["train", *COMMON, "--batch-size", "16", "--out", str(single_out)]) == 0

    r0, r1 = read_checkpoint(ddp_out / "rank0.pt")["model"], read_checkpoint(ddp_out / "rank1.pt")["model"]
    single = read_checkpoint(single_out / "last.pt")
    ddp_last = read_checkpoint(ddp_out / "last.pt")
    assert ddp_last["recipe"]["world_size"] == 2 and ddp_last["step"] == single["step"] == 8
    for name, w in single["model"].items():
        assert torch.equal(r0[name], r1[name]), f"ranks differ in {name}"
        assert torch.equal(ddp_last["model"][name], r0[name])
        torch.testing.assert_close(r0[name], w, atol=2e-5, rtol=1e-4, msg=f"DDP vs single process: {name}")
    # the history is written once (rank 0), with the throughput of both ranks together
    assert len(ddp_last["history"]) == 2 and ddp_last["history"][-1]["test_acc"] == pytest.approx(
        single["history"][-1]["test_acc"], abs=1 / 32 + 1e-9)
