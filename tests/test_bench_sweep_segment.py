"""bench/sweep_segment.py: a row per point of the sweep; side-by-side runs are the runs the caller loads."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from unifiedctx.train import Recipe

BENCH = Path(__file__).resolve().parents[1] / "bench"
CANVAS = dict(size=64, n_train=16, n_test=4, digits=(2, 3), digit_size=(30, 40))


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(BENCH))   # the spawned workers import the module by name, as notebook 09 does
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
    return sweep.job_data({"canvas": CANVAS})


def test_side_by_side_runs_are_what_the_caller_then_loads(sweep, tmp_path):
    recipe = Recipe(epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0.3, seed=0, task="segment")
    jobs = [dict(name=name, family=family, preset=preset, canvas=CANVAS, n_train=n_train, recipe=recipe,
                 width=16, unet=sweep.UNET_OPTIONS, out=str(tmp_path / name), device="cpu")
            for name, family, preset, n_train in [("light", "container_light", "container_light_nano", None),
                                                  ("unet", "unet", None, 8)]]
    done = sweep.train_side_by_side(jobs, workers=2, log=None)
    assert sorted(r["name"] for r in done) == ["light", "unet"]
    for job in jobs:
        checkpoints = sorted(Path(job["out"]).glob("*.pt"))
        written = {p.name: p.stat().st_mtime_ns for p in checkpoints}
        assert "last.pt" in written
        model, history = sweep.train_job(job)
        worker = next(r for r in done if r["name"] == job["name"])
        assert history[-1]["test_miou"] == worker["test_miou"]        # the worker's run, loaded
        assert {p.name: p.stat().st_mtime_ns for p in checkpoints} == written   # loaded, not retrained
        # and the same weights as training it here from scratch
        again, fresh = sweep.train_job({**job, "out": str(tmp_path / f"{job['name']}-here")})
        assert fresh[-1]["test_miou"] == worker["test_miou"]
        for a, b in zip(model.state_dict().values(), again.state_dict().values()):
            assert torch.equal(a, b)
