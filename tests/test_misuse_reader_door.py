"""Every reader of a network stops a wrong argument at its door (issue 22): ``inspect``, ``inspect_model``,
``rollout``, ``effective_receptive_field``, ``record_affinities`` and ``model_distances``, each walked with a
table of wrong inputs (wrong type, bool for an int, a string for a number, negative, zero, NaN, out of
range). Each must raise our own ValueError / TypeError that names the argument, what it got and what it
expects, raised by unifiedctx's code (the traceback's last frame is in ``unifiedctx``, not in torch)."""

from __future__ import annotations

import math
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

import unifiedctx
from unifiedctx import context, inspect, inspect_model
from unifiedctx.inspection.layers import record_affinities
from unifiedctx.viz.distance import model_distances

PACKAGE = Path(unifiedctx.__file__).parent
erf = context.effective_receptive_field


def net():
    torch.manual_seed(0)
    layers = nn.Conv2d(3, 3, 3, padding=1, groups=3), nn.GELU(), nn.Conv2d(3, 3, 3, padding=1)
    return nn.Sequential(*layers).eval()


def image():
    return torch.randn(1, 3, 8, 8)


def nan_image():
    x = torch.randn(1, 3, 8, 8)
    x[0, 0, 1, 1] = math.nan
    return x


CONV = nn.Conv2d(3, 3, 3, padding=1, groups=3)

#: (id, call, the error type, words the message must hold)
CASES = [
    # inspect(module, x, grid=, prefix_tokens=)
    ("inspect module str", lambda: inspect("conv", image()), TypeError, ["module", "str"]),
    ("inspect x list", lambda: inspect(CONV, [[1.0]]), TypeError, ["x", "list"]),
    ("inspect x int tensor", lambda: inspect(CONV, torch.zeros(1, 3, 8, 8, dtype=torch.long)), TypeError,
     ["x", "int64"]),
    ("inspect x NaN", lambda: inspect(CONV, nan_image()), ValueError, ["x", "non-finite"]),
    ("inspect grid zero", lambda: inspect(CONV, image(), grid=0), ValueError, ["grid", "positive"]),
    ("inspect grid str", lambda: inspect(CONV, image(), grid="8"), TypeError, ["grid", "str"]),
    ("inspect prefix bool", lambda: inspect(CONV, image(), prefix_tokens=True), TypeError,
     ["prefix_tokens", "bool"]),
    ("inspect prefix negative", lambda: inspect(CONV, image(), prefix_tokens=-1), ValueError,
     ["prefix_tokens", ">= 0", "-1"]),
    # inspect_model(model, x, layers=, max_tokens=, prefix_tokens=)
    ("inspect_model model None", lambda: inspect_model(None, image()), TypeError, ["model", "NoneType"]),
    ("inspect_model x numpy", lambda: inspect_model(net(), image().numpy()), TypeError, ["x", "ndarray"]),
    ("inspect_model x rank 3", lambda: inspect_model(net(), torch.randn(3, 8, 8)), ValueError,
     ["x", "(B, C, H, W)", "(3, 8, 8)"]),
    ("inspect_model x dtype", lambda: inspect_model(net(), image().double()), TypeError,
     ["x", "float64", "float32"]),
    ("inspect_model x NaN", lambda: inspect_model(net(), nan_image()), ValueError, ["x", "NaN"]),
    ("inspect_model max_tokens bool", lambda: inspect_model(net(), image(), max_tokens=True), TypeError,
     ["max_tokens", "bool"]),
    ("inspect_model max_tokens str", lambda: inspect_model(net(), image(), max_tokens="64"), TypeError,
     ["max_tokens", "str"]),
    ("inspect_model max_tokens zero", lambda: inspect_model(net(), image(), max_tokens=0), ValueError,
     ["max_tokens", "positive", "0"]),
    ("inspect_model max_tokens NaN", lambda: inspect_model(net(), image(), max_tokens=math.nan), TypeError,
     ["max_tokens", "nan"]),
    ("inspect_model prefix str", lambda: inspect_model(net(), image(), prefix_tokens="1"), TypeError,
     ["prefix_tokens", "str"]),
    ("inspect_model layers int", lambda: inspect_model(net(), image(), layers=[3]), TypeError, ["layers"]),
    # rollout(model, x, upto=, heads=, signed=, prefix_tokens=)
    ("rollout model str", lambda: context.rollout("net", image()), TypeError, ["model", "str"]),
    ("rollout x uint8", lambda: context.rollout(net(), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)),
     TypeError, ["x", "uint8"]),
    ("rollout x NaN", lambda: context.rollout(net(), nan_image()), ValueError, ["x", "non-finite"]),
    ("rollout upto int", lambda: context.rollout(net(), image(), upto=2), TypeError, ["upto", "int"]),
    ("rollout upto unknown", lambda: context.rollout(net(), image(), upto="3"), ValueError, ["upto", "'3'"]),
    ("rollout heads unknown", lambda: context.rollout(net(), image(), heads="sum"), ValueError,
     ["heads", "'mean'", "'sum'"]),
    ("rollout heads int", lambda: context.rollout(net(), image(), heads=1), TypeError, ["heads", "int"]),
    ("rollout signed int", lambda: context.rollout(net(), image(), signed=1), TypeError, ["signed", "int"]),
    ("rollout signed str", lambda: context.rollout(net(), image(), signed="True"), TypeError,
     ["signed", "str"]),
    ("rollout prefix negative", lambda: context.rollout(net(), image(), prefix_tokens=-2), ValueError,
     ["prefix_tokens", ">= 0"]),
    ("rollout partial int", lambda: context.rollout(net(), image(), partial=1), TypeError,
     ["partial", "int"]),
    ("rollout_maps partial str", lambda: context.rollout_maps(net(), image(), partial="yes"), TypeError,
     ["partial", "str"]),
    ("distance partial None", lambda: context.context_distance(net(), image(), partial=None), TypeError,
     ["partial", "NoneType"]),
    ("distance every unknown", lambda: context.context_distance(net(), image(), every="layer"), ValueError,
     ["every", "'layer'", "'block'"]),
    # context_graph(model, x, prefix_tokens=)
    ("context_graph model str", lambda: context.context_graph("net", image()), TypeError, ["model", "str"]),
    ("context_graph x NaN", lambda: context.context_graph(net(), nan_image()), ValueError,
     ["x", "non-finite"]),
    ("context_graph prefix bool", lambda: context.context_graph(net(), image(), prefix_tokens=True),
     TypeError,
     ["prefix_tokens", "bool"]),
    # effective_receptive_field(model, x, layer, query=, prefix_tokens=)
    ("erf call of a module called once", lambda: erf(net(), image(), "2#1"), ValueError,
     ["layer", "'2#1'", "only 1"]),
    ("erf call not a number", lambda: erf(net(), image(), "2#x"), ValueError, ["layer", "'2#x'"]),
    ("erf model int", lambda: erf(3, image(), "0"), TypeError, ["model", "int"]),
    ("erf layer int", lambda: erf(net(), image(), 0), TypeError, ["layer", "int"]),
    ("erf layer unknown", lambda: erf(net(), image(), "9"), ValueError,
     ["layer", "'9'", "named_modules"]),
    ("erf query bool", lambda: erf(net(), image(), "2", query=True), TypeError,
     ["query", "bool"]),
    ("erf query str", lambda: erf(net(), image(), "2", query="4"), TypeError,
     ["query", "str"]),
    ("erf query negative", lambda: erf(net(), image(), "2", query=-1), ValueError,
     ["query", "-1", "(8, 8)"]),
    ("erf query out of range", lambda: erf(net(), image(), "2", query=(8, 0)),
     ValueError, ["query", "(8, 0)", "outside"]),
    ("erf query float pair", lambda: erf(net(), image(), "2", query=(1.5, 2)),
     TypeError, ["query", "(1.5, 2)"]),
    ("erf x NaN", lambda: erf(net(), nan_image(), "2"), ValueError, ["x", "NaN"]),
    # record_affinities(model, x, max_tokens=, layers=, prefix_tokens=, source=)
    ("record model list", lambda: record_affinities([net()], image()), TypeError, ["model", "list"]),
    ("record x NaN", lambda: record_affinities(net(), nan_image()), ValueError, ["x", "non-finite"]),
    ("record max_tokens negative", lambda: record_affinities(net(), image(), max_tokens=-4), ValueError,
     ["max_tokens", "-4"]),
    ("record max_tokens float", lambda: record_affinities(net(), image(), max_tokens=64.0), TypeError,
     ["max_tokens", "float"]),
    ("record source unknown", lambda: record_affinities(net(), image(), source="timm"), ValueError,
     ["source", "'timm'"]),
    ("record source int", lambda: record_affinities(net(), image(), source=1), TypeError, ["source", "int"]),
    # model_distances(model, x, max_tokens=, layers=, most_heads=)
    ("distances model str", lambda: model_distances("net", image()), TypeError, ["model", "str"]),
    ("distances most_heads zero", lambda: model_distances(net(), image(), most_heads=0), ValueError,
     ["most_heads", "positive"]),
    ("distances most_heads bool", lambda: model_distances(net(), image(), most_heads=False), TypeError,
     ["most_heads", "bool"]),
    ("distances most_heads str", lambda: model_distances(net(), image(), most_heads="2"), TypeError,
     ["most_heads", "str"]),
    ("distances max_tokens NaN", lambda: model_distances(net(), image(), max_tokens=math.nan), TypeError,
     ["max_tokens", "nan"]),
    ("distances x NaN", lambda: model_distances(net(), nan_image()), ValueError, ["x", "non-finite"]),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_argument_is_stopped_at_the_door(call, error, words):
    with pytest.raises(error) as caught:
        call()
    assert type(caught.value) is error  # our own error, not a subclass from somewhere deep
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    last = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert Path(last.filename).resolve().is_relative_to(PACKAGE.resolve()), last.filename


def test_the_right_arguments_pass_the_door():
    x = image()
    assert inspect(CONV, x, grid=(8, 8)).grid == (8, 8)
    assert list(inspect_model(net(), x, max_tokens=64, prefix_tokens=0)) == ["0", "2"]
    assert context.rollout(net(), x, upto="2", heads="max", signed=False).grid == (8, 8)
    assert context.effective_receptive_field(net(), x, "2", query=(1, 2)).shape == (1, 8, 8)
    assert list(record_affinities(net(), x, max_tokens=64, source="inspect")) == ["0", "2"]
    assert set(model_distances(net(), x, most_heads=1)) == {"0", "2"}
