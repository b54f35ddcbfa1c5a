"""The explorer's through-depth view on networks unifiedctx did not build (timm's, random float64
weights, small sizes): live, the map it shows is ``rollout_maps`` / ``erf_maps`` of the same layer and
query; exported, the page holds every query's rollout of every layer, quantised to 8 bits of that map.

Skips without timm in the main environment; ``make timm-test`` runs it with ``UNIFIEDCTX_REQUIRE_TIMM=1``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_inspect_model_timm import build

from unifiedctx.context import erf_maps, rollout_maps
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets.export import read_payload, unpack

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import timm  # noqa: F401  (the timm environment: no skipping)
else:
    pytest.importorskip("timm")

#: the families whose layers differ in how the reader sees them: class + distillation tokens, a token
#: MLP, fixed pooling windows with image-wide GroupNorm, full convolutions, shifted windows
FAMILIES = ["deit_distilled", "mixer", "poolformer", "resnet", "swin"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model, x = build(request.param)
    x = x.float().double()  # the explorer keeps its images in float32: give both sides the same input
    explorer = AffinityExplorer({request.param: model}, x, depth="rollout")
    return request.param, model, x, explorer


def _last_layer_query(explorer):
    layer = explorer.layers[-1]
    explorer.show(layer=layer)
    h, w = explorer.grid
    query = (h // 2, w // 3)  # off the centre: a wrong row/column order would show
    explorer.show(query=query)
    return layer, query


def test_the_live_depth_view_is_rollout_maps_of_the_foreign_layer(family):
    name, model, x, explorer = family
    assert len(explorer.layers) > 1, name
    layer, query = _last_layer_query(explorer)
    want = rollout_maps(model, x, layer, query=query)
    shown = explorer.rendered()["depth"]
    assert shown.shape == tuple(x.shape[-2:])
    np.testing.assert_allclose(shown, want["map"], rtol=0, atol=1e-12)
    assert explorer.depth_data()["layers"] == want["layers"] and len(want["layers"]) > 1
    assert f"query {query}" in explorer.status["depth"]
    # an earlier layer composes fewer steps, and the view follows it
    earlier = explorer.layers[0]
    explorer.show(layer=earlier, query=(0, 0))
    first = rollout_maps(model, x, earlier, query=(0, 0))
    np.testing.assert_allclose(explorer.depth_map(), first["map"], rtol=0, atol=1e-12)
    assert len(first["layers"]) < len(want["layers"])


def test_the_erf_mode_is_erf_maps_of_the_foreign_layer(family):
    name, model, x, explorer = family
    layer, query = _last_layer_query(explorer)
    explorer.show(depth="ERF")
    try:
        want = erf_maps(model, x, layer, query=query)
        np.testing.assert_allclose(explorer.depth_map(), want["map"], rtol=0, atol=1e-12)
        assert abs(explorer.depth_map().sum() - 1) < 1e-9
    finally:
        explorer.show(depth="rollout")


def test_the_exported_page_holds_each_querys_rollout_of_the_foreign_network(family, tmp_path):
    name, model, x, explorer = family
    page = read_payload(explorer.to_html(tmp_path / f"{name}.html"))
    assert page["traits"]["setup"]["depth_modes"] == ["off", "rollout"]
    layers = page["traits"]["catalog"]["models"][name]["layers"]
    assert [entry["name"] for entry in layers] == explorer.layers
    pixels = x.shape[-2] * x.shape[-1]
    for entry in (layers[0], layers[-1]):
        (h, w), stored = entry["grid"], page["depth"][name][entry["name"]]["rollout"][0]
        assert stored["meta"]["input"] == list(x.shape[-2:])
        got = unpack(stored).reshape(h * w, *x.shape[-2:]).astype(np.float64)
        query = (h - 1, 0)
        want = rollout_maps(model, x, entry["name"], query=query)["map"]
        top = max(want.max(), 1 / pixels)  # each row is stored as 0..255 of its own top (or uniform) level
        assert np.abs(got[query[0] * w + query[1]] / 255 * top - want).max() <= top / 510 + 1e-12


def test_swin_layers_are_read_on_the_blocks_whole_grid():
    """A Swin layer is read as its block's tokens (as rollout reads it), not as one window: each row
    is a softmax over its own 7 x 7 window and 0 elsewhere; the shifted block's windows differ."""
    from unifiedctx.inspection.layers import layer_affinities

    model, x = build("swin")
    records = {r.name: r for r in layer_affinities(model, x)}
    supports = {}
    for name, grid in [("layers.0.blocks.0.attn", (14, 14)), ("layers.0.blocks.1.attn", (14, 14)),
                       ("layers.1.blocks.0.attn", (7, 7))]:
        record = records[name]
        n = grid[0] * grid[1]
        assert record.grid == grid and record.affinity.shape == (1, 2, n, n), name
        a = record.affinity[0]
        np.testing.assert_allclose(a.sum(-1).numpy(), 1.0, rtol=0, atol=1e-12)
        assert ((a != 0).sum(-1) == 49).all(), name  # one whole window per row
        supports[name] = (a[0] != 0)
    assert not np.array_equal(supports["layers.0.blocks.0.attn"], supports["layers.0.blocks.1.attn"])
    # token 0 of the unshifted block shares a window with the tokens (0..6, 0..6) exactly
    window = np.zeros((14, 14), bool)
    window[:7, :7] = True
    assert np.array_equal(supports["layers.0.blocks.0.attn"][0].numpy().reshape(14, 14), window)
    assert records["layers.0.blocks.1.attn"].notes["shifted"] is True
