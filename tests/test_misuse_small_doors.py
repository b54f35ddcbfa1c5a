"""The doors that had hand-written int/positivity checks now use unifiedctx.validation: bool is not
an int (a TypeError now, where some used to be a ValueError), "3" is not a number, NaN is refused,
and each message names the argument (context maps' ``index``, a rollout's prefix ``token``, the DINO
head's sizes, the k-NN classifier's ``k``, ``temperature``, ``num_classes`` and ``chunk``)."""

from __future__ import annotations

import math

import pytest
import torch
from misuse_helpers import raises_at_door

import unifiedctx
from unifiedctx import context
from unifiedctx.train.dino.head import DinoHead
from unifiedctx.train.dino.knn import knn_predict

BANK, LABELS, QUERIES = (
    torch.randn(6, 4, dtype=torch.float64),
    torch.tensor([0, 1, 2, 0, 1, 2]),
    torch.randn(3, 4),
)


@pytest.mark.parametrize(
    "argument, value, error",
    [
        ("k", True, TypeError),
        ("k", "3", TypeError),
        ("k", 2.0, TypeError),
        ("k", 0, ValueError),
        ("k", 7, ValueError),
        ("temperature", "0.1", TypeError),
        ("temperature", True, TypeError),
        ("temperature", math.nan, ValueError),
        ("temperature", 0, ValueError),
        ("temperature", -1.0, ValueError),
        ("num_classes", 0, ValueError),
        ("num_classes", True, TypeError),
        ("chunk", 0, ValueError),
        ("chunk", 1.5, TypeError),
    ],
)
def test_knn_predict_refuses_by_name(argument, value, error):
    err = raises_at_door(
        argument, knn_predict, BANK, LABELS, QUERIES, **{"num_classes": 3, "k": 2, argument: value}
    )
    assert isinstance(err, error)


def test_knn_predict_still_votes():
    bank = torch.eye(3, dtype=torch.float64)
    pred = knn_predict(bank, torch.tensor([2, 0, 1]), bank * 5 + 0.01, num_classes=3, k=1, temperature=0.1)
    assert pred.tolist() == [2, 0, 1]


@pytest.mark.parametrize("argument", ["in_dim", "out_dim", "hidden_dim", "bottleneck_dim", "layers"])
@pytest.mark.parametrize(
    "value, error", [(True, TypeError), (0, ValueError), (-2, ValueError), (2.5, TypeError), ("8", TypeError)]
)
def test_dino_head_refuses_a_size_by_name(argument, value, error):
    sizes = {"in_dim": 8, "out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4, "layers": 2}
    assert isinstance(raises_at_door(argument, DinoHead, **{**sizes, argument: value}), error)


def test_dino_head_refuses_a_non_bool_batch_norm():
    raises_at_door("batch_norm", DinoHead, 8, 16, batch_norm="yes")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return unifiedctx.create_model("convnet_nano").eval(), torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize(
    "value, error", [(True, TypeError), ("0", TypeError), (1.0, TypeError), (2, ValueError), (-1, ValueError)]
)
def test_a_context_map_refuses_an_index_off_the_batch(small, value, error):
    model, x = small
    for call in (
        lambda: context.rollout_maps(model, x, index=value),
        lambda: context.erf_maps(model, x, "stages.3", index=value),
    ):
        assert isinstance(raises_at_door("index", call), error)


def test_a_prefix_map_refuses_a_token_by_name(small):
    model, x = small
    result = context.rollout(model, x)
    assert isinstance(raises_at_door("token", result.prefix_map, True), TypeError)
    assert isinstance(raises_at_door("token", result.prefix_map, 0), ValueError)  # this model has no prefix
