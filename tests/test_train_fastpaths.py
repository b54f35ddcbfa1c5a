"""The GPU-only code paths run on the CPU in CI: torch.compile, bf16 autocast and channels_last for
a few steps of fit, and the benchmark's --smoke mode on a CIFAR-shaped synthetic set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from misuse_helpers import FAST, Tiny, bright, make

from unifiedctx.train import fit

ROOT = Path(__file__).resolve().parents[1]
SHORT = {**FAST, "epochs": 1, "max_steps_per_epoch": 2, "warmup_epochs": 0.0}


def close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> float:
    """Largest relative difference of the parameters of two models."""
    worst = 0.0
    for p, q in zip(a.parameters(), b.parameters()):
        worst = max(worst, float((p - q).detach().norm() / q.detach().norm().clamp_min(1e-12)))
    assert worst < tol, worst
    return worst


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="torch.compile's CPU backend (inductor) needs a C compiler; none on PATH")
def test_compile_trains_on_the_cpu_like_eager():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, compiled = make(), make()
    fit(eager, bright(), **SHORT)
    hist = fit(compiled, bright(), compile=True, **SHORT)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really compiled
    assert torch.isfinite(torch.tensor(hist[-1]["train_loss"]))
    close(compiled, eager, 1e-4)
    torch._dynamo.reset()


class RecordsDtypes(Tiny):
    """Tiny that notes the dtype and memory format of what its layers see in the training steps."""

    seen: list

    def forward(self, x):
        conv = self.body[0](x)
        if self.training:
            self.seen.append((conv.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.head(self.body[1:](conv).mean((2, 3)))


def test_bf16_autocast_on_the_cpu():
    plain, mixed = make(cls=RecordsDtypes), make(cls=RecordsDtypes)
    plain.seen, mixed.seen = [], []
    fit(plain, bright(), amp="off", **SHORT)
    hist = fit(mixed, bright(), amp="bf16", **SHORT)
    assert {d for d, _ in mixed.seen} == {torch.bfloat16} and {d for d, _ in plain.seen} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in mixed.parameters())  # autocast, not a cast of the model
    assert torch.isfinite(torch.tensor(hist[-1]["test_loss"]))
    close(mixed, plain, 5e-2)  # bf16 has 8 bits of mantissa: close, not equal


def test_channels_last_on_the_cpu():
    plain, last = make(cls=RecordsDtypes), make(cls=RecordsDtypes)
    plain.seen, last.seen = [], []
    fit(plain, bright(), **SHORT)
    fit(last, bright(), channels_last=True, **SHORT)
    assert {fmt for _, fmt in last.seen} == {True}
    assert last.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    close(last, plain, 1e-5)


@pytest.mark.slow
def test_the_benchmark_has_a_smoke_mode_on_cifar_shaped_data(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cifar_time_to_accuracy.py"), "--smoke",
                           "--no-compile", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CIFAR-shaped texture (64, 3, 32, 32)" in done.stdout
    assert "bf16 autocast, channels_last" in done.stdout
    row = done.stdout.strip().splitlines()[-1].split()
    assert row[0] == "1" and 0.0 <= float(row[-1]) <= 1.0
    import json

    recipe = json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]
    assert recipe["amp"] == "bf16" and recipe["channels_last"] is True and recipe["max_steps_per_epoch"] == 2
