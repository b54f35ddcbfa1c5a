"""AdamW groups, the warmup + cosine schedule, EMA and the History helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unifiedctx.train import History, ModelEma, WarmupCosine, param_groups


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4),
                          nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[4].weight)}
    assert len(no_decay["params"]) == 6  # conv bias, 2 BN, 2 LN, linear bias


def test_warmup_then_cosine_to_zero():
    s = WarmupCosine(1.0, total_steps=10, warmup_steps=4)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0
    assert s(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert s(10) == pytest.approx(0.0) and s(9) > 0
    assert WarmupCosine(2.0, 5)(0) == 2.0  # no warmup starts at the peak
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(1.0, 0)


def test_ema_is_the_exponential_average_and_copies_buffers():
    model = nn.BatchNorm1d(3)
    ema = ModelEma(model, 0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
        model.running_mean.fill_(7.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert torch.equal(ema.module.running_mean, torch.full((3,), 7.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="ema decay"):
        ModelEma(model, 1.0)


def test_history_helpers_and_files(tmp_path):
    h = History([{"epoch": 1, "test_acc": 0.5, "loss": 2.0}, {"epoch": 2, "test_acc": 0.7, "alpha/x": 0.3}])
    assert h.best("test_acc")["epoch"] == 2 and h.best("loss", mode="min")["epoch"] == 1
    assert h.column("test_acc") == [0.5, 0.7] and h.column("alpha/x") == [None, 0.3]
    h.to_json(tmp_path / "h.json")
    h.to_csv(tmp_path / "h.csv")
    assert History.from_json(tmp_path / "h.json") == h
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines[0] == "epoch,test_acc,loss,alpha/x" and lines[2] == "2,0.7,,0.3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "h.json"]  # no temp files left
    with pytest.raises(KeyError, match="no epoch has a value for 'nope'"):
        h.best("nope")
