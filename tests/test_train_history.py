"""The history keeps mixing weights nested; only CSV flattens them; old flat histories still read."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_train_engine import FAST, brightness_data
from torch import nn

from unifiedctx.mixers import create
from unifiedctx.train import History, fit
from unifiedctx.train.history import flat_row, mixing_columns, mixing_of


class TinyMixed(nn.Module):
    """A 1x1 stem, one Container mixer, mean pool, linear: a model with one mixing knob."""

    def __init__(self, dim=4):
        super().__init__()
        self.config = {"preset": "tiny-mixed", "dim": dim}
        self.stem = nn.Conv2d(3, dim, 1)
        self.mix = create("container", dim=dim, heads=2, kernel_size=3)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.mix(self.stem(x)).mean((2, 3)))


ROWS = [{"epoch": 1, "test_acc": 0.5,
         "mixing": {"s.0": {"alpha": 0.6, "beta": 0.4}, "g.1": {"gate": [0.7, 0.2]}}},
        {"epoch": 2, "test_acc": 0.6, "mixing": {"s.0": {"alpha": 0.65, "beta": 0.35}}}]


def test_csv_is_the_only_place_the_mixing_weights_are_flat(tmp_path):
    history = History(ROWS)
    history.to_json(tmp_path / "h.json")
    history.to_csv(tmp_path / "h.csv")
    assert json.loads((tmp_path / "h.json").read_text()) == ROWS  # nested, as it is in memory
    assert History.from_json(tmp_path / "h.json") == ROWS
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "test_acc", "mixing/s.0/alpha", "mixing/s.0/beta",
                             "mixing/g.1/gate/0", "mixing/g.1/gate/1"]
    assert rows[0]["mixing/g.1/gate/1"] == "0.2" and rows[1]["mixing/g.1/gate/0"] == ""
    assert rows[1]["mixing/s.0/beta"] == "0.35"
    assert flat_row({"epoch": 3}) == {"epoch": 3}


def test_old_flat_histories_still_read():
    old = History([{"epoch": 1, "alpha/s.0": 0.55, "beta/s.0": 0.45}, {"epoch": 2, "alpha/s.0": 0.6}])
    assert old.mixing() == [{"s.0": {"alpha": 0.55, "beta": 0.45}},
                            {"s.0": {"alpha": 0.6, "beta": pytest.approx(0.4)}}]
    assert mixing_of(ROWS[0]) is ROWS[0]["mixing"] and mixing_of({"epoch": 1}) == {}
    assert old.column("alpha/s.0") == [0.55, 0.6]  # the old columns are kept as they were


def test_the_engine_logs_each_mixers_own_weights():
    torch.manual_seed(0)
    model = nn.ModuleDict({"c": create("container", dim=4, heads=2), "g": create("gpsa", dim=4, heads=2),
                           "d": create("dwconv", dim=4)})
    row = mixing_columns(model)
    assert list(row) == ["mixing"] and list(row["mixing"]) == ["c", "g"]
    assert row["mixing"]["c"] == {"alpha": 0.5, "beta": 0.5}
    gate = torch.sigmoid(torch.ones(2)).tolist()  # GPSA's gate starts at sigmoid(1) per head
    assert row["mixing"]["g"] == {"gate": pytest.approx(gate)}
    json.dumps(row)  # plain numbers, no tensors
    assert mixing_columns(nn.Sequential(create("dwconv", dim=4))) == {}


def test_fit_writes_nested_mixing_and_flat_csv(tmp_path):
    torch.manual_seed(0)
    model = TinyMixed()
    history = fit(model, brightness_data(n_train=32, n_test=16), epochs=1, out=tmp_path, **FAST)
    last = history[-1]
    assert set(last["mixing"]) == {"mix"} and set(last["mixing"]["mix"]) == {"alpha", "beta"}
    assert not any(k.startswith(("alpha/", "beta/")) for k in last)
    alpha = model.mix.mixing_weights()["alpha"].item()
    assert last["mixing"]["mix"]["alpha"] == pytest.approx(alpha, abs=1e-12)
    assert json.loads((tmp_path / "history.json").read_text())[-1]["mixing"] == last["mixing"]
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert "mixing/mix/alpha" in header and "mixing" not in header
