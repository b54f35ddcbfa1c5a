"""bench/sweep_segment.py: a row per point of the sweep (side-by-side runs: tests/test_train_parallel.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
CANVAS = dict(size=64, n_train=16, n_test=4, digits=(2, 3), digit_size=(30, 40))


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("sweep_segment", BENCH / "sweep_segment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep_segment"] = module
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(before)
    sys.path.remove(str(BENCH))
    del sys.modules["sweep_segment"]


def test_the_sweep_prints_one_row_per_point(sweep, capsys):
    rows = sweep.main(["--families", "container_light", "unet", "--n-train", "16", "--epochs", "1",
                       "--batch", "8", "--lr", "1e-2", "3e-2"])
    out = capsys.readouterr().out.splitlines()
    assert len(rows) == 4 and out[0].split()[-4:] == ["seconds", "cpu_s", "mIoU", "pix_acc"]
    for row, line in zip(rows, out[1:]):
        assert line.split()[0] == row["family"] and row["steps"] == 2 and len(row["miou_curve"]) == 1
        assert re.search(rf"{row['miou']:.3f}\s+{row['pixel_acc']:.3f}$", line)
        assert 0 <= row["miou"] <= 1 and row["cpu_s"] > 0
    assert rows[2]["params"] == sum(p.numel() for p in sweep.build("unet", _data(sweep), 32).parameters())


def _data(sweep):
    from unifiedctx.data import load

    return load("mnist_canvas", seed=0, **CANVAS)
