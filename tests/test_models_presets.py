"""The presets against published sizes, and the MAC counter against the attention formula.

Paper-size models are counted on the ``meta`` device (shapes only, no arithmetic), so the whole
table costs a few seconds; ``test_meta_counts_equal_real_counts`` checks that this changes
nothing against real CPU tensors.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from unifiedctx.mixers import create
from unifiedctx.models import (
    count_flops,
    count_macs,
    count_params,
    create_model,
    list_models,
    mixer_inputs,
    mixer_layers,
)

#: preset -> (params, relative tolerance, GMACs, relative tolerance): the issue's table.
PUBLISHED = {
    "container_light": (20.63e6, 0.005, 3.85, 0.03),
    "container": (22.1e6, 0.02, 8.1, 0.05),
    "deit_tiny": (5_717_416, 0.01, 1.25, 0.05),
    "deit_small": (22_050_664, 0.01, 4.60, 0.05),
    "mixer_s16": (18_528_264, 0.01, 3.78, 0.05),
    "poolformer_s12": (11_915_176, 0.01, 1.81, 0.05),
}
FAMILIES = [*PUBLISHED, "convnet"]


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.fixture(scope="module")
def counts() -> dict[str, tuple[int, int]]:
    """(params, MACs) at 1000 classes and 224 x 224, once per paper preset."""
    out = {}
    for name in FAMILIES:
        model = meta_model(name, num_classes=1000, img_size=224)
        out[name] = (count_params(model), count_macs(model))
    return out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_params_match_published(counts, name):
    params, tol, _, _ = PUBLISHED[name]
    assert abs(counts[name][0] - params) <= tol * params, f"{name}: {counts[name][0]:,} vs {params:,.0f}"


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_gmacs_match_published(counts, name):
    _, _, gmacs, tol = PUBLISHED[name]
    assert abs(counts[name][1] / 1e9 - gmacs) <= tol * gmacs, f"{name}: {counts[name][1] / 1e9:.3f} G"


def test_family_relations(counts):
    """The static ConvNet has no attention, so it is the cheapest of the Container family;
    mixed blocks everywhere (Container) cost more than in stage 4 only (Container-Light)."""
    assert counts["convnet"][1] < counts["container_light"][1] < counts["container"][1]
    assert counts["convnet"][0] < counts["container_light"][0]


def test_meta_counts_equal_real_counts():
    """Counting on the meta device gives the same numbers as on real tensors."""
    for name in ("container_light_nano", "deit_tiny_nano", "mixer_s16_nano", "poolformer_s12_nano"):
        real, meta = create_model(name), meta_model(name)
        assert (count_params(real), count_macs(real)) == (count_params(meta), count_macs(meta))


def test_sdpa_is_counted_by_its_formula():
    """One attention mixer: the counter sees 2*B*H*N*N*(d + d_v) FLOPs for SDPA on top of the
    two linear maps, where FlopCounterMode alone counts attention as free on a CPU."""
    b, c, heads, grid = 2, 16, 4, (6, 5)
    mixer = create("attention", c, heads=heads).eval()
    x = torch.randn(b, c, *grid)
    n, d = grid[0] * grid[1], c // heads
    linear = 2 * b * n * (c * 3 * c + c * c)
    attention = 2 * b * heads * n * n * (d + d)
    assert count_flops(mixer, x) == linear + attention
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        mixer(x)
    assert plain.get_total_flops() == linear


def test_deit_attention_term_grows_with_n_squared():
    """At 448 every token-wise cost is 4x that at 224 and the attention products 16x, so
    MACs(448) - 4 MACs(224) = 12 * depth * 2 N^2 C - 3 * head (the head does not grow)."""
    model = meta_model("deit_tiny")
    n, c, depth = (224 // 16) ** 2, 192, 12
    growth = count_macs(model, 448) - 4 * count_macs(model, 224)
    assert growth == 12 * depth * 2 * n * n * c - 3 * c * 1000


def test_list_models_has_every_family_in_three_sizes():
    names = list_models()
    assert len(names) == len(set(names)) == 3 * len(FAMILIES)
    for family in FAMILIES:
        assert {family, f"{family}_cifar", f"{family}_nano"} <= set(names)
    assert list_models("*_nano") == [f"{f}_nano" for f in names if f in FAMILIES]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", list_models("*_nano"))
def test_nano_presets_are_tiny_and_mixers_see_real_grids(name):
    """A few tens of thousands of parameters (10 classes), 32 x 32 inputs, every mixer on a
    grid of at least 2 x 2 and some mixer on at least 4 x 4."""
    model = create_model(name)
    assert model.img_size == (32, 32) and model.num_classes == 10
    assert 10_000 <= count_params(model) <= 100_000
    inputs = mixer_inputs(model, torch.zeros(1, 3, 32, 32))
    assert list(inputs) == list(mixer_layers(model))
    sizes = [tuple(x.shape[-2:]) for x in inputs.values()]
    assert sizes and min(h * w for h, w in sizes) >= 4 and max(min(g) for g in sizes) >= 4


@pytest.mark.parametrize("name", list_models("*_cifar"))
def test_cifar_presets_are_gpu_hour_sized(name):
    """32 x 32 inputs, 10 classes, between 1M and 25M parameters and under 1.5 GMACs."""
    model = meta_model(name)
    assert model.img_size == (32, 32) and model.num_classes == 10
    assert 1e6 < count_params(model) < 25e6
    assert count_macs(model) < 1.5e9
