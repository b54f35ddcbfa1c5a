"""The explorer's through-depth view: the query's rollout (or ERF) on the input pixels, beside the
layer's own map, through the state (``depth``), the data layer, what the front end is sent, and in
the page."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from unifiedctx.context import erf_maps, rollout_maps
from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer, ExplorerValueError
from unifiedctx.widgets.explorer_data import depth_scale
from unifiedctx.widgets.export import LeftOut, TooLarge, read_payload, unpack

MIXED = "stages.3.blocks.0.mixer"  # container_light_nano: the Container stage, 4x4 grid
FIRST = "stages.0.blocks.0.mixer"  # a depthwise conv on 16x16


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():  # random weights everywhere, so no map is flat by initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.fixture(scope="module")
def model():
    return _model("container_light_nano")


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def shared(model, images):
    return AffinityExplorer(model, images, layer=MIXED, query=(1, 2), depth="rollout")


@pytest.fixture
def explorer(shared):
    return shared.show(image_index=0, layer=MIXED, component="mixed", head=-1, query=(1, 2), depth="rollout")


def test_the_depth_map_is_rollout_maps_of_the_layer_and_query(explorer, model, images):
    want = rollout_maps(model, images[:1], MIXED, query=(1, 2))
    shown = explorer.rendered()
    assert shown["depth"].shape == (32, 32)
    np.testing.assert_allclose(shown["depth"], want["map"], rtol=0, atol=1e-12)
    assert abs(shown["depth"].sum() - 1) < 1e-6  # a float32 model: a distribution to float32 precision
    assert explorer.depth_data()["layers"] == want["layers"]
    fields = explorer.status
    assert "rollout up to this layer" in fields["depth"] and "32x32 input pixels" in fields["depth"]
    assert "uniform 1/1024" in fields["depth scale"]  # the non-negative rollout marks its uniform level
    assert depth_scale(want).vmax == pytest.approx(max(want["map"].max(), 1 / 1024), abs=0)
    # what the front end is sent: the map as colormap positions on [0, vmax], vmax = max(peak, 1/N)
    (_, _), (meta, buffer) = explorer.shown_entries()
    vmax = max(want["map"].max(), 1 / 1024)
    np.testing.assert_array_equal(np.frombuffer(buffer, np.uint8).reshape(32, 32),
                                  np.rint(want["map"] / vmax * 255).astype(np.uint8))
    assert meta["vmax"] == [f"{vmax:.3g}"]
    assert meta["uniform_at"][0] == pytest.approx(1 / 1024 / vmax, abs=1e-5)


def test_changing_query_layer_or_image_updates_the_depth_map(explorer, model, images):
    before, before_sent = explorer.rendered()["depth"], explorer.shown_entries()[1][1]
    explorer.query = (3, 0)
    after = explorer.rendered()
    np.testing.assert_allclose(after["depth"], rollout_maps(model, images[:1], MIXED, query=(3, 0))["map"],
                               rtol=0, atol=1e-12)
    assert np.abs(after["depth"] - before).max() > 1e-4
    assert explorer.shown_entries()[1][1] != before_sent
    explorer.layer = FIRST  # the query carried to the 16x16 grid: (3, 0) -> (14, 2)
    assert explorer.query == (14, 2)
    want = rollout_maps(model, images[:1], FIRST, query=(14, 2))["map"]
    np.testing.assert_allclose(explorer.rendered()["depth"], want, rtol=0, atol=1e-12)
    explorer.image_index = 1
    want = rollout_maps(model, images[1:2], FIRST, query=(14, 2))["map"]
    np.testing.assert_allclose(explorer.depth_map(), want, rtol=0, atol=1e-12)


def test_erf_mode_is_erf_maps(explorer, model, images):
    explorer.depth = "ERF"
    want = erf_maps(model, images[:1], MIXED, query=(1, 2))
    np.testing.assert_allclose(explorer.rendered()["depth"], want["map"], rtol=0, atol=1e-12)
    assert "effective receptive field" in explorer.status["depth"]
    explorer.query = (0, 0)
    np.testing.assert_allclose(explorer.depth_map(), erf_maps(model, images[:1], MIXED, query=(0, 0))["map"],
                               rtol=0, atol=1e-12)


def test_off_hides_the_panel_and_is_the_default(explorer, model, images):
    explorer.depth = "off"
    shown = explorer.rendered()
    assert shown["depth"] is None and explorer.depth_map() is None and explorer.shown_entries()[1] is None
    assert "depth" not in explorer.status and explorer.shown["depth"] == "off"
    assert AffinityExplorer(model, images).depth == "off"
    explorer.shown = {**explorer.shown, "depth": "rollout"}  # the browser's control sets the state
    assert explorer.depth == "rollout" and explorer.rendered()["depth"] is not None


def test_depth_is_a_state_field_with_clear_errors(explorer):
    explorer.depth = "erf"  # spelled either way
    assert explorer.depth == "ERF" and explorer.state.as_dict()["depth"] == "ERF"
    with pytest.raises(ExplorerValueError, match="depth 'rolout'.*'rollout'"):
        explorer.depth = "rolout"
    assert explorer.depth == "ERF" and explorer.shown["depth"] == "ERF"  # sent to the browser
    explorer.depth = "rollout"
    text = explorer.status["depth scale"]
    assert text.startswith(depth_scale(explorer.depth_data()).describe())  # the library's one scale rule


def test_depth_maps_of_several_queries_are_rollout_maps_of_each(explorer, model, images):
    queries = [15, 0, 6, 9]  # any order, any subset: row k is query queries[k]
    rows, steps = explorer.data.depth_maps(explorer.model_name, 1, MIXED, queries, "rollout")
    assert rows.shape == (4, 32, 32)
    for k, q in enumerate(queries):
        want = rollout_maps(model, images[1:2], MIXED, query=divmod(q, 4))
        np.testing.assert_allclose(rows[k], want["map"], rtol=0, atol=1e-12)
    assert steps == len(want["layers"])


def test_channels_are_named_channels_and_the_mixer_describes_itself(model, images):
    explorer = AffinityExplorer(model, images, layer=FIRST)
    assert explorer.status["head"] == "all channels (8)"
    assert explorer.status["affinity"].startswith("static local")
    layer = explorer.catalog["models"][explorer.model_name]["layers"][0]
    assert layer["unit"] == "channel"
    assert layer["components"] == [{"name": "static", "heads": 8, "shared": True, "form": "whole"}]
    mixer = AffinityExplorer(_model("mixer_s16_nano"), images)
    assert "gated" in mixer.status["affinity"] and mixer.status["head"].startswith("all channels")


def test_the_page_holds_every_querys_rollout(explorer, model, images, tmp_path):
    page = explorer.to_html(tmp_path / "page.html")
    data = read_payload(page)
    assert data["traits"]["setup"]["depth_modes"] == ["off", "rollout"] and not data["left_out"]
    assert data["traits"]["shown"]["depth"] == "rollout"
    name = explorer.model_name
    for layer in data["traits"]["catalog"]["models"][name]["layers"]:
        (h, w), stored = layer["grid"], data["depth"][name][layer["name"]]
        assert list(stored) == ["rollout"] and len(stored["rollout"]) == 2  # one per image
        for i, entry in enumerate(stored["rollout"]):
            assert entry["meta"]["input"] == [32, 32] and entry["meta"]["queries"] is None  # every query
            got = unpack(entry).reshape(h * w, 32, 32).astype(np.float64)
            want = np.stack([rollout_maps(model, images[i:i + 1], layer["name"], query=divmod(q, w))["map"]
                             for q in range(h * w)])
            vmax = np.maximum(want.reshape(h * w, -1).max(1), 1 / 1024)
            assert entry["meta"]["vmax"] == [f"{v:.3g}" for v in vmax]
            np.testing.assert_array_equal(got, np.rint(want / vmax[:, None, None] * 255))
    assert layer["description"] == "mixed: alpha*attention + beta*conv" and layer["unit"] == "head"


def test_erf_goes_in_only_when_asked(explorer, model, images, tmp_path):
    plain = explorer.to_html(tmp_path / "plain.html", depth=())
    traits = read_payload(plain)["traits"]
    assert traits["setup"]["depth_modes"] == ["off"] and traits["shown"]["depth"] == "off"
    both = explorer.to_html(tmp_path / "both.html", depth=("rollout", "ERF"), images=[0])
    name = explorer.model_name
    stored = read_payload(both)["depth"][name][MIXED]
    assert list(stored) == ["rollout", "ERF"]
    rows = np.stack([erf_maps(model, images[:1], MIXED, query=divmod(q, 4))["map"] for q in range(16)])
    vmax = np.maximum(rows.reshape(16, -1).max(1), 1 / 1024)
    got = unpack(stored["ERF"][0]).reshape(16, 32, 32) / 255 * vmax[:, None, None]
    assert np.abs(got - rows).max() <= rows.max() / 510 + 1e-12
    assert plain.stat().st_size < both.stat().st_size
    with pytest.raises(ValueError, match="depth"):
        explorer.to_html(tmp_path / "bad.html", depth=("nope",))


def test_a_page_too_small_for_every_rollout_keeps_a_lattice_of_queries_and_says_so(explorer, model, images,
                                                                                  tmp_path):
    """Over its size, the page keeps the through-depth maps of fewer queries (a lattice through the centre),
    never more than ``max_mb``; the page's note, its data and a warning say what it left out, and each stored
    map is still rollout_maps of its query."""
    plain = explorer.to_html(tmp_path / "plain.html", depth=()).stat().st_size
    full = explorer.to_html(tmp_path / "full.html").stat().st_size
    limit = (plain + 0.4 * (full - plain)) / 1e6  # room for the affinities, not for every query's rollout
    with pytest.warns(LeftOut, match="at most .* queries per layer"):
        page = explorer.to_html(tmp_path / "small.html", max_mb=limit)
    assert page.stat().st_size <= limit * 1e6
    data = read_payload(page)
    assert any("rollout maps but for at most" in words for words in data["left_out"])
    note = re.search(r'<p class="ucx-note">(.*?)</p>', page.read_text(), re.S)[1]
    assert "leaves out" in note and "rollout maps but for at most" in note
    name, stored, thinned = explorer.model_name, 0, False
    for layer in data["traits"]["catalog"]["models"][name]["layers"]:
        for i, entry in enumerate(data["depth"][name][layer["name"]]["rollout"]):
            queries, (h, w) = entry["meta"]["queries"], layer["grid"]
            if queries is None:  # a small layer: every query fits the lattice
                queries = list(range(h * w))
            else:
                thinned = True
                assert len(queries) < h * w and entry["meta"]["held"].startswith("rows ")
            assert (h // 2) * w + w // 2 in queries  # the lattice runs through the centre
            got = unpack(entry).reshape(len(queries), 32, 32) / 255
            for k, q in enumerate(queries):
                want = rollout_maps(model, images[i:i + 1], layer["name"], query=divmod(q, w))["map"]
                top = max(want.max(), 1 / 1024)
                assert np.abs(got[k] * top - want).max() <= top / 510 + 1e-12
            stored += 1
    assert stored and thinned  # some maps fit, some layers for a lattice of queries
    # every colour scale the page offers holds every layer's maps; one it left out is said, and not offered
    offered = data["traits"]["setup"]["scale_modes"]
    for by_comp in data["maps"][name].values():
        for by_scale in by_comp.values():
            for scale, by_epoch in by_scale.items():
                assert all(entries for entries in by_epoch.values()) == (scale in offered), scale
    for scale in {"layer", "map"} - set(offered):
        assert any(f"colour scales '{scale}'" in words for words in data["left_out"])
    with pytest.raises(TooLarge, match="pictures"):  # not even the front end and the pictures fit
        explorer.to_html(tmp_path / "none.html", max_mb=0.01)
