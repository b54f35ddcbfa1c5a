"""``record_affinities``, ``record_components``, the distance plot and the explorer on ANY network.

A network built here from plain PyTorch layers (``nn.Conv2d``, ``nn.AvgPool2d``,
``nn.MultiheadAttention`` with a class token) is read through ``inspect_model``; its recorded
affinities are checked against the views and against PyTorch's own attention weights and
convolution. A unifiedctx model is read exactly as before (its mixers' ``affinity`` on their inputs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unifiedctx import inspect_model
from unifiedctx.models import (
    create_model,
    layer_affinities,
    mixer_components,
    mixer_inputs,
    mixer_layers,
    record_affinities,
    record_components,
)
from unifiedctx.viz import affinity_distance, model_distances, plot_affinity_distance, static_kernels
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets.explorer_data import ExplorerData

TOL = 1e-12
GRID = (4, 4)  # 16 x 16 input, patch stride 4


class AttentionBlock(nn.Module):
    """A class token, LayerNorm and ``nn.MultiheadAttention`` over the tokens of an image."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def tokens(self, x):
        t = rearrange(x, "b c h w -> b (h w) c")
        return self.norm(torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1))

    def forward(self, x):
        n = self.tokens(x)
        y = self.attn(n, n, n, need_weights=False)[0][:, 1:]
        return x + rearrange(y, "b (h w) c -> b c h w", h=x.shape[2])


class PlainNet(nn.Module):
    """Strided stem (no view), depthwise 3x3 conv, 3x3 average pool, attention, a head."""

    def __init__(self, dim: int = 8, heads: int = 2, norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.bn = nn.BatchNorm2d(dim) if norm else nn.Identity()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.block = AttentionBlock(dim, heads)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = self.block(self.pool(self.dw(x)))
        return self.head(self.drop(x.mean((2, 3))))


LAYERS = ["dw", "pool", "block.attn"]


@pytest.fixture
def plain():
    torch.manual_seed(0)
    return PlainNet().double().eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_a_foreign_network_is_read_through_its_views(plain, x):
    """Keys in forward order; each affinity is exactly the view's grid affinity (class token dropped)."""
    recorded = record_affinities(plain, x)
    views = inspect_model(plain, x)
    assert list(recorded) == list(views) == LAYERS
    for name, a in recorded.items():
        assert torch.equal(a, views[name].grid_affinity()), name
        assert a.shape[-2:] == (16, 16), name
    assert views["block.attn"].affinity.shape[-1] == 17 and views["block.attn"].prefix_tokens == 1
    assert recorded["dw"].shape == (1, 8, 16, 16) and recorded["block.attn"].shape == (2, 2, 16, 16)


def test_foreign_affinities_agree_with_pytorch(plain, x):
    """The attention block equals ``nn.MultiheadAttention``'s own per-head weights (token block), and
    the depthwise conv's static affinity applied to its input is ``F.conv2d`` (PyTorch's)."""
    recorded = record_affinities(plain, x)
    with torch.no_grad():
        feats = plain.stem(x)
        n = plain.block.tokens(plain.pool(plain.dw(feats)))
        weights = plain.block.attn(n, n, n, need_weights=True, average_attn_weights=False)[1]
        torch.testing.assert_close(recorded["block.attn"], weights[:, :, 1:, 1:], rtol=0, atol=TOL)
        want = F.conv2d(feats, plain.dw.weight, None, padding=1, groups=8)
        got = recorded["dw"] @ rearrange(feats, "b c h w -> b c (h w) 1")
        torch.testing.assert_close(rearrange(got, "b c (h w) 1 -> b c h w", h=4), want, rtol=0, atol=TOL)


def test_components_and_records_of_a_foreign_network(plain, x):
    comps = record_components(plain, x)
    recorded = record_affinities(plain, x)
    assert {k: list(v) for k, v in comps.items()} == {"dw": ["static"], "pool": ["static"],
                                                      "block.attn": ["dynamic"]}
    for name, parts in comps.items():
        assert torch.equal(next(iter(parts.values())), recorded[name])
    records = layer_affinities(plain, x)
    assert [(r.name, r.kind, r.grid, r.source, r.mixing_weights) for r in records] == [
        ("dw", "static", GRID, "inspect", None), ("pool", "static", GRID, "inspect", None),
        ("block.attn", "dynamic", GRID, "inspect", None)]
    assert all(r.pixel_stride == (4.0, 4.0) for r in records)
    assert [r.head_unit for r in records] == ["channel", "head", "head"]
    assert records[0].description.startswith("static local") and "AvgPool2d" in records[1].description
    assert records[2].description.startswith("dynamic") and "MultiheadAttention" in records[2].description
    # softmax rows over all 17 keys sum to 1; the token block alone sums to less (the class token's share)
    sums = recorded["block.attn"].sum(-1)
    assert (sums < 1).all() and (sums > 0).all()


@pytest.mark.parametrize("name", ["container_light_nano", "deit_tiny_nano", "convnet_nano"])
def test_unifiedctx_models_are_read_as_before(name):
    """Exactly ``mixer.affinity(input)`` / ``mixer_components`` for every mixer, same keys."""
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layers, inputs = mixer_layers(model), mixer_inputs(model, x)
    recorded, comps = record_affinities(model, x), record_components(model, x)
    assert list(recorded) == list(comps) == list(layers) == list(inputs)
    with torch.no_grad():
        for layer, a in recorded.items():
            assert torch.equal(a, layers[layer].affinity(inputs[layer])), layer
            want = mixer_components(layers[layer], inputs[layer])
            assert list(comps[layer]) == list(want)
            assert all(torch.equal(comps[layer][k], want[k]) for k in want), layer
    records = layer_affinities(model, x)
    assert all(r.source == "mixer" and r.kind == layers[r.name].kind for r in records)
    assert all((r.description, r.head_unit) == (layers[r.name].describe(), layers[r.name].head_unit)
               for r in records)
    # read through inspect_model instead: the mixers' affinities are the same tensors' values
    inspected = record_affinities(model, x, source="inspect")
    assert set(recorded) <= set(inspected)
    for layer, a in recorded.items():
        torch.testing.assert_close(inspected[layer], a, rtol=0, atol=TOL)


def test_container_mixing_weights_come_with_the_records():
    model = create_model("container_light_nano").eval()
    records = layer_affinities(model, torch.randn(1, 3, 32, 32))
    mixed = [r for r in records if r.kind == "mixed"]
    assert mixed and all(set(r.mixing_weights) == {"alpha", "beta"} for r in mixed)
    assert all(r.mixing_weights is None for r in records if r.kind != "mixed")


def test_reading_leaves_the_model_untouched(x):
    """Train mode, BatchNorm statistics, requires_grad and the global RNG are as they were."""
    torch.manual_seed(0)
    model = PlainNet(norm=True, dropout=0.5).double().train()
    model.head.weight.requires_grad_(False)
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    for read in (record_affinities, record_components, layer_affinities):
        out = read(model, x)
        if read is layer_affinities:
            [(r.affinity, r.components) for r in out]
        assert all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()].count(False) == 1
        assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
        assert torch.equal(torch.get_rng_state(), rng)


def test_max_tokens_and_layers_are_passed_through(plain, x):
    assert list(record_affinities(plain, x, max_tokens=16)) == ["dw", "pool"]  # attention: 17 tokens
    assert list(record_affinities(plain, x, layers="block.*")) == ["block.attn"]
    model = create_model("convnet_nano").eval()
    small = torch.randn(1, 3, 32, 32)
    every = record_affinities(model, small)
    few = record_affinities(model, small, max_tokens=16)
    assert list(few) == [k for k, a in every.items() if a.shape[-1] <= 16] and len(few) < len(every)


def test_no_viewable_layer_is_a_clear_error(plain, x):
    net = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.ReLU(), nn.Flatten())
    with pytest.raises(ValueError, match=r"no layer with an affinity view.*0: stride \(2, 2\).*1: ReLU"):
        record_affinities(net, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"no layer with an affinity view.*dw: 16 tokens > max_tokens=4"):
        record_components(plain, x, max_tokens=4)
    with pytest.raises(ValueError, match="source must be one of"):
        record_affinities(plain, x, source="timm")
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        record_affinities(plain, x[0])
    with pytest.raises(ValueError, match="max_tokens must be positive, got 0"):
        layer_affinities(plain, x, max_tokens=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        layer_affinities("plain", x)


def test_distances_and_kernels_of_a_foreign_network(plain, x):
    recorded = record_affinities(plain, x)
    dists = model_distances(plain, x)
    assert list(dists) == LAYERS
    for name, a in recorded.items():
        torch.testing.assert_close(dists[name], affinity_distance(a, GRID, 4.0), rtol=0, atol=TOL)
    fig = plot_affinity_distance(plain, x=x)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [d.mean().item() for d in dists.values()])
    with pytest.raises(ValueError, match="x .* is needed"):
        plot_affinity_distance(plain)
    kernels = static_kernels(plain)
    assert list(kernels) == ["dw"] and torch.equal(kernels["dw"], plain.dw.weight[:, 0].detach())


def test_explorer_data_on_a_foreign_network(plain, x):
    model = plain.float()
    images = list(x.float())
    data = ExplorerData({"plain": model}, images)
    catalogue = data.catalogue("plain")
    assert list(catalogue) == LAYERS
    assert [(i.kind, i.grid) for i in catalogue.values()] == [("static", GRID), ("static", GRID),
                                                             ("dynamic", GRID)]
    for index, image in enumerate(images):
        recorded = record_affinities(model, image[None])
        for layer in LAYERS:
            assert catalogue[layer].components == [catalogue[layer].kind]
            got = data.affinity("plain", index, layer, catalogue[layer].kind)
            np.testing.assert_array_equal(got, recorded[layer][0].numpy())
    assert data.info("plain", "block.attn").heads == {"dynamic": 2}
    with pytest.raises(ValueError, match="no layer to explore.*stride"):
        ExplorerData({"flat": nn.Sequential(nn.Conv2d(3, 4, 2, stride=2))}, images).catalogue("flat")


def test_explorer_compares_a_foreign_network_with_a_unifiedctx_one():
    torch.manual_seed(0)
    plain = PlainNet().eval()
    nano = create_model("container_light_nano").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    explorer = AffinityExplorer({"nano": nano, "plain": plain}, images)
    explorer.model_name = "plain"
    assert explorer.layers == LAYERS
    explorer.show(layer="block.attn", head=1, query=(2, 5))
    assert explorer.grid == (8, 8) and explorer.component == "dynamic"
    a = record_affinities(plain, images[:1])["block.attn"][0, 1].numpy()
    np.testing.assert_allclose(explorer.rendered()["maps"], a[2 * 8 + 5].reshape(1, 8, 8), rtol=1e-6,
                               atol=1e-8)
    assert all(not m.training for m in plain.modules())


@pytest.mark.timm
def test_a_timm_vit_in_the_recording_and_the_explorer():
    """A timm DeiT (random weights, 64 x 64): its attention layers, class and distillation tokens
    dropped; the explorer lists them and shows their rows."""
    if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
        import timm
    else:
        timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    recorded = record_affinities(vit, images[:1])
    views = inspect_model(vit, images[:1])
    assert list(recorded) == list(views) == ["blocks.0.attn", "blocks.1.attn"]
    for name, a in recorded.items():
        assert views[name].prefix_tokens == 2 and a.shape == (1, 3, 16, 16)
        assert torch.equal(a, views[name].grid_affinity())
    records = layer_affinities(vit, images)
    assert all(r.head_unit == "head" and "timm Attention" in r.description for r in records)
    explorer = AffinityExplorer({"deit": vit}, images)
    assert explorer.layers == list(recorded)
    explorer.show(layer="blocks.1.attn", head=0, query=(1, 2))
    want = recorded["blocks.1.attn"][0, 0, 1 * 4 + 2].reshape(1, 4, 4).numpy()
    np.testing.assert_allclose(explorer.rendered()["maps"], want, rtol=1e-5, atol=1e-7)
