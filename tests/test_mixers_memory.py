"""The fast paths never build an N x N matrix: a 128 x 128 forward runs in a small fraction of |A|.

At 128 x 128 there are N = 16,384 tokens, so a float32 affinity holds 1 GiB per head. The forward
passes run in a fresh interpreter (``sys.executable``) that measures the peak resident memory of
each forward (which sees PyTorch's allocations where ``tracemalloc`` would not); the growth must
stay below a quarter of one head's A. A positive control checks that the same measurement does
see a dense affinity when one is built.

How the peak is measured: Linux's ``ru_maxrss`` is a high-water mark that a child inherits from
its parent across fork + exec (a fresh interpreter started from a 600 MiB pytest process reports
``ru_maxrss`` = 790 MiB before doing anything), so it can hide a child's growth entirely. The
script instead resets the high-water mark of its own address space before each forward (writing
``5`` to ``/proc/self/clear_refs``) and reads it after (``VmHWM`` in ``/proc/self/status``);
``VmHWM`` is the same peak-RSS figure, per process and resettable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SIDE = 128
N = SIDE * SIDE
ONE_HEAD_GIB = N * N * 4 / 2**30  # float32 A for a single head: 1 GiB
FAST_MIXERS = ["dwconv", "conv", "pool", "attention", "container", "window"]

SCRIPT = r"""
import json, re, sys
import torch
from unifiedctx.mixers import create

torch.manual_seed(0)
torch.set_num_threads(2)
names, side, control_side = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
options = {"heads": 2, "kernel_size": 3}

def status_mib(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) / 1024

def reset_peak():  # set the peak-RSS mark to the current RSS; return the current RSS in MiB
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mib("VmRSS")

def peak_mib():
    return status_mib("VmHWM")

result = {}
with torch.no_grad():
    # positive control: the dense reference builds A, and the same measurement must see it
    mixer = create("attention", dim=8, heads=2)
    x = torch.randn(1, 8, control_side, control_side)
    before = reset_peak()
    mixer.reference(x)
    result["control"] = {"growth_mib": peak_mib() - before, "heads": 2}
    del mixer, x
    for name in names:
        extra = {"window_size": 8} if name == "window" else {}
        mixer = create(name, dim=8, **options, **extra).eval()
        x = torch.randn(1, 8, side, side)
        mixer(torch.randn(1, 8, 8, 8))  # warm-up: lazy kernels and thread pools, on a tiny grid
        before = reset_peak()
        y = mixer(x)
        after = peak_mib()
        assert y.shape == x.shape and torch.isfinite(y).all()
        result[name] = {"growth_mib": after - before, "heads": mixer.heads}
print(json.dumps(result))
"""
CONTROL_SIDE = 48  # N = 2304: A is 2 heads x 2304^2 x 4 B = 40.5 MiB


@pytest.fixture(scope="module")
def growth() -> dict:
    """Run every fast path once at 128 x 128 in a fresh interpreter; return MiB of peak growth."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak-RSS mark")
    args = [sys.executable, "-c", SCRIPT, ",".join(FAST_MIXERS), str(SIDE), str(CONTROL_SIDE)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", FAST_MIXERS)
def test_fast_path_memory_is_far_below_one_affinity(growth, name):
    """Peak memory grows by < 1/4 of a single head's A (256 MiB) during a 128 x 128 forward."""
    limit_mib = ONE_HEAD_GIB * 1024 / 4
    dense_mib = growth[name]["heads"] * ONE_HEAD_GIB * 1024
    assert growth[name]["growth_mib"] < limit_mib, (
        f"{name}: forward grew the peak by {growth[name]['growth_mib']:.0f} MiB; its A would be "
        f"{dense_mib:.0f} MiB")


def test_the_measurement_sees_a_dense_affinity(growth):
    """Control: building A for 2 heads at 48 x 48 (40.5 MiB) raises the measured peak by at least that."""
    n = CONTROL_SIDE**2
    dense_mib = 2 * n * n * 4 / 2**20
    assert growth["control"]["growth_mib"] >= 0.9 * dense_mib
