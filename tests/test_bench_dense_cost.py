"""bench/dense_cost.py --quick runs and prints a row for every backbone and size, and a growth line each."""

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dense_cost.py"


@pytest.fixture(scope="module")
def dense_cost():
    spec = importlib.util.spec_from_file_location("dense_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_every_row(dense_cost, capsys):
    assert dense_cost.main(["--quick", "--sizes", "32", "64"]) == 0
    out = capsys.readouterr().out
    for family in dense_cost.FAMILIES:
        for size in (32, 64):
            assert re.search(rf"^\| {family} \| {size} \| [0-9.e-]+ \| [0-9.]+ \|", out, re.M), (family, size)
        assert re.search(rf"^\| {family} \| (-?[0-9.]+|nan) \|", out, re.M), family
    assert "| container_light | 32 | " in out and " 1.00 |" in out  # ratios to Container-Light


def test_growth_slopes_recover_known_powers(dense_cost):
    rows = [{"pixels": p, "t": 3.0 * p + 1e-3 * p * p, "estimated": False} for p in (64**2, 128**2, 256**2)]
    g = dense_cost.growth(rows, "t")
    assert 1.0 < g["slope"] < 2.0
    assert abs(g["quadratic_share"] - 1e-3 * 256**4 / rows[-1]["t"]) < 1e-9
    linear = dense_cost.growth([{"pixels": p, "t": 5.0 * p} for p in (10, 40, 160)], "t")
    assert abs(linear["slope"] - 1) < 1e-12 and abs(linear["slope_last"] - 1) < 1e-12


def test_backbones_use_the_paper_strides(dense_cost):
    model = dense_cost.build_backbone("container_light", 64, "nano")
    assert model.feature_strides == [4, 8, 16, 32]
    assert dense_cost.build_backbone("deit_tiny", 64, "nano").feature_strides == [16]
