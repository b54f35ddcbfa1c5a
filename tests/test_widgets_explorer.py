"""Headless tests of ``AffinityExplorer``: driving it from Python changes what it draws.

Every check reads back what the widgets show (the PNG bytes decoded to pixels, the label's
text) and compares it with affinities recorded independently with ``record_components``.
"""

from __future__ import annotations

import re
import statistics
import sys
import time

import numpy as np
import pytest
import torch

from unifiedctx.models import create_model, record_components
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer, ExplorerTypeError, ExplorerValueError, rendering

QUERY = re.compile(r"\((\d+), (\d+)\) on a (\d+)x(\d+) grid")
HEAD = re.compile(r"^(all heads|all channels|head \d+|channel \d+)")
MIXED_LAYER = "stages.3.blocks.0.mixer"  # container_light_nano: the only mixed (Container) stage
FIRST_LAYER = "stages.0.blocks.0.mixer"  # a depthwise conv on a 16x16 grid


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
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def shared_explorer(model, images):
    return AffinityExplorer(model, images, layer=MIXED_LAYER, query=(1, 1))


@pytest.fixture
def explorer(shared_explorer):
    """One explorer for the module (its affinities are cached), put back in the same state."""
    return shared_explorer.show(image_index=0, layer=MIXED_LAYER, component="mixed", head=-1, query=(1, 1),
                                depth="off")


def expected_rows(model, image, layer, component, query, grid):
    """Row ``query`` of each head of the recorded affinity, folded onto the grid
    (``query=None``: every row, ``(M, N, N)``)."""
    a = record_components(model.eval(), image[None])[layer][component][0].numpy()
    if query is None:
        return a
    h, w = grid
    return a[:, query[0] * w + query[1], :].reshape(a.shape[0], h, w)


def parse(fields: dict):
    """(query, grid, layer, head) as the status fields state them."""
    m = QUERY.search(fields["query"])
    assert m, f"the status does not say where the query is: {fields!r}"
    layer = fields["layer"].split(" (")[0]
    return (int(m[1]), int(m[2])), (int(m[3]), int(m[4])), layer, HEAD.match(fields["head"])[1]


def test_initial_state_is_drawn(explorer, model, images):
    shown = explorer.rendered()
    assert parse(shown["fields"]) == ((1, 1), (4, 4), MIXED_LAYER, "all heads")
    assert explorer.components == ["mixed", "dynamic", "static"] and explorer.component == "mixed"
    want = expected_rows(model, images[0], MIXED_LAYER, "mixed", (1, 1), (4, 4))
    np.testing.assert_allclose(shown["maps"], want, rtol=1e-5, atol=1e-7)
    assert shown["image"].shape == (256, 256, 3)
    # all heads: one tile per head side by side, wider than one picture's height
    assert shown["map"].shape[1] > shown["map"].shape[0]


def test_query_changes_the_drawing(explorer, model, images):
    before = explorer.rendered()
    explorer.query = (3, 2)
    after = explorer.rendered()
    assert parse(after["fields"])[0] == (3, 2)
    assert not np.array_equal(before["map"], after["map"]), "the map picture did not change"
    assert not np.array_equal(before["image"], after["image"]), "the query marker did not move"
    want = expected_rows(model, images[0], MIXED_LAYER, "mixed", (3, 2), (4, 4))
    np.testing.assert_allclose(after["maps"], want, rtol=1e-5, atol=1e-7)
    # the marker is drawn around the query cell: the outline's pixels are the marker colour
    top, left, bottom, right = rendering.cell_box((3, 2), (4, 4), (256, 256))
    assert tuple(after["image"][top, (left + right) // 2]) == rendering.MARKER_RGB
    assert tuple(after["image"][(top + bottom) // 2, left]) == rendering.MARKER_RGB


def test_map_pixels_are_the_recorded_affinity(explorer, model, images):
    explorer.show(head=1, query=(0, 3))
    rows = expected_rows(model, images[0], MIXED_LAYER, "mixed", None, (4, 4))
    want = rows[1:2, 3].reshape(1, 4, 4)  # head 1, row of token (0, 3)
    display = rendering.as_display_image(images[0])
    scale = scale_for(rows)  # one scale for all heads and queries of the layer
    assert explorer.scale == scale
    lut = rendering.colormap_lut(scale.cmap)
    tiles = rendering.map_panel(display, want, (256, 256), (0, 3), (4, 4), lut, scale=scale, heads=[1])
    picture = rendering.beside(tiles, rendering.colorbar_panel(scale, lut, 256))
    np.testing.assert_array_equal(explorer.rendered()["map"], picture)


def test_head_changes_the_drawing(explorer):
    grid_of_heads = explorer.rendered()
    explorer.head = 0
    head0 = explorer.rendered()
    explorer.head = 1
    head1 = explorer.rendered()
    assert parse(head0["fields"])[3] == "head 0" and parse(head1["fields"])[3] == "head 1"
    bar = 6 + 96  # the gap and the colorbar beside the tiles
    assert head0["map"].shape == (256, 256 + bar, 3) != grid_of_heads["map"].shape
    assert head0["maps"].shape == (1, 4, 4)
    assert not np.array_equal(head0["map"], head1["map"])
    np.testing.assert_array_equal(head1["maps"][0], grid_of_heads["maps"][1])


def test_layer_change_redraws_and_keeps_the_query_in_place(explorer, model, images):
    explorer.query = (1, 2)  # on 4x4: the cell covering rows 8..15, cols 16..23 of the 32x32 image
    before = explorer.rendered()
    explorer.layer = FIRST_LAYER  # dwconv on 16x16: static only, 8 channel heads
    after = explorer.rendered()
    assert explorer.component == "static" and explorer.components == ["static"]
    assert explorer.query == (6, 10)  # the same place of the image on the finer grid
    assert parse(after["fields"])[:3] == ((6, 10), (16, 16), FIRST_LAYER)
    assert after["maps"].shape == (8, 16, 16)
    assert not np.array_equal(before["map"], after["map"])
    want = expected_rows(model, images[0], FIRST_LAYER, "static", (6, 10), (16, 16))
    np.testing.assert_allclose(after["maps"], want, rtol=1e-5, atol=1e-7)
    # a depthwise 5x5 conv: the query takes context from its 5x5 window only
    support = np.argwhere(np.abs(after["maps"]).sum(0) > 0)
    assert support.min(0).tolist() == [4, 8] and support.max(0).tolist() == [8, 12]


def test_component_changes_the_drawing(explorer, model, images):
    explorer.head = 0
    mixed = explorer.rendered()
    explorer.component = "static"
    static = explorer.rendered()
    explorer.component = "dynamic"
    dynamic = explorer.rendered()
    assert static["fields"]["component"] == "static" and dynamic["fields"]["component"] == "dynamic"
    assert not np.array_equal(mixed["map"], static["map"])
    assert not np.array_equal(static["map"], dynamic["map"])
    mixer = dict(model.named_modules())[MIXED_LAYER]
    alpha, beta = (float(mixer.mixing_weights()[k].detach()) for k in ("alpha", "beta"))
    np.testing.assert_allclose(mixed["maps"], alpha * dynamic["maps"] + beta * static["maps"],
                               rtol=1e-5, atol=1e-7)


def test_image_index_changes_the_drawing(explorer, model, images):
    before = explorer.rendered()
    explorer.image_index = 2
    after = explorer.rendered()
    assert after["fields"]["image"] == "2 of 3"
    assert not np.array_equal(before["image"], after["image"])
    want = expected_rows(model, images[2], MIXED_LAYER, "mixed", (1, 1), (4, 4))
    np.testing.assert_allclose(after["maps"], want, rtol=1e-5, atol=1e-7)


def test_click_sets_the_query_under_the_pixel(explorer):
    before = explorer.rendered()
    explorer.click(200.0, 70.0)  # picture pixels: x=200 -> col 3, y=70 -> row 1 on the 4x4 grid
    after = explorer.rendered()
    assert explorer.query == (1, 3)
    assert parse(after["fields"])[0] == (1, 3)
    assert not np.array_equal(before["map"], after["map"])
    assert (explorer.controls["row"].value, explorer.controls["col"].value) == (1, 3)
    explorer.layer = FIRST_LAYER
    explorer.click(200.0, 70.0)  # on the 16x16 grid: 16 pixels a cell
    assert explorer.query == (4, 12)


def test_sliders_and_query_stay_in_sync(explorer):
    controls = explorer.controls
    controls["row"].value = 3
    assert explorer.query == (3, 1)
    assert parse(explorer.rendered()["fields"])[0] == (3, 1)
    explorer.query = (2, 0)
    assert (controls["row"].value, controls["col"].value) == (2, 0)
    controls["layer"].value = FIRST_LAYER
    assert explorer.layer == FIRST_LAYER and controls["row"].max == 15 and controls["col"].max == 15
    controls["head"].value = 3
    # a depthwise conv: one affinity per channel, and the status says so
    assert explorer.head == 3 and explorer.status["head"] == "channel 3 of 8"
    assert "head: channel 3 of 8" in explorer.label_text


@pytest.mark.parametrize(("trait", "value", "error", "words"), [
    ("query", (99, 99), ExplorerValueError, ["query", "4x4"]),
    ("query", (-1, 0), ExplorerValueError, ["query", "outside"]),
    ("query", ("a", 0), ExplorerTypeError, ["query"]),
    ("query", (1, 2, 3), ExplorerTypeError, ["query"]),
    ("layer", "stages.9.mixer", ExplorerValueError, ["layer", "does not exist", MIXED_LAYER]),
    ("head", 2, ExplorerValueError, ["head", "2 heads"]),
    ("head", -2, ExplorerValueError, ["head"]),
    ("component", "banana", ExplorerValueError, ["component", "banana"]),
    ("image_index", 3, ExplorerValueError, ["image_index", "3 images"]),
    ("model_name", "resnet", ExplorerValueError, ["model_name"]),
])
def test_bad_values_are_clear_errors(explorer, trait, value, error, words):
    before = explorer.rendered()
    with pytest.raises(error) as info:
        setattr(explorer, trait, value)
    assert isinstance(info.value, ValueError if error is ExplorerValueError else TypeError)
    for word in words:
        assert word in str(info.value)
    # nothing changed
    assert explorer.rendered()["fields"] == before["fields"]
    np.testing.assert_array_equal(explorer.rendered()["map"], before["map"])


def test_component_missing_in_a_layer(explorer):
    explorer.layer = FIRST_LAYER
    with pytest.raises(ValueError, match="component 'dynamic' is not available in layer"):
        explorer.component = "dynamic"


def test_bad_construction():
    with pytest.raises(TypeError, match="model must be"):
        AffinityExplorer("container", torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="images"):
        AffinityExplorer(_model("deit_tiny_nano"), torch.rand(32, 32))


def test_dict_of_models_compares(images):
    models = {"container": _model("container_light_nano"), "deit": _model("deit_tiny_nano")}
    explorer = AffinityExplorer(models, images)
    assert explorer.model_name == "container" and explorer.layer == MIXED_LAYER
    before = explorer.rendered()
    explorer.model_name = "deit"
    after = explorer.rendered()
    assert explorer.layers == ["stages.0.blocks.0.mixer", "stages.0.blocks.1.mixer"]
    assert explorer.component == "dynamic" and explorer.grid == (8, 8)
    assert after["fields"]["model"] == "deit" and before["fields"]["model"] == "container"
    assert not np.array_equal(before["map"], after["map"])
    want = expected_rows(models["deit"], images[0], explorer.layer, "dynamic", explorer.query, (8, 8))
    np.testing.assert_allclose(after["maps"], want, rtol=1e-5, atol=1e-7)


def test_update_latency_under_200_ms(explorer):
    """Median time of a query, a layer and a head change (affinities cached): under 200 ms."""
    layers = explorer.layers

    def median_ms(change, n=20):
        times = []
        for i in range(n):
            start = time.perf_counter()
            change(i)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    explorer.layer = FIRST_LAYER  # the largest grid (16x16) and 8 heads tiled
    query = median_ms(lambda i: setattr(explorer, "query", (i % 16, (3 * i) % 16)))
    layer = median_ms(lambda i: setattr(explorer, "layer", layers[i % len(layers)]))
    explorer.layer = FIRST_LAYER
    head = median_ms(lambda i: setattr(explorer, "head", i % 9 - 1))
    print(f"median redraw: query {query:.1f} ms, layer {layer:.1f} ms, head {head:.1f} ms")
    assert max(query, layer, head) < 200, (query, layer, head)


def test_clickable_image_reports_clicks_in_its_pixels():
    from unifiedctx.widgets import ClickableImage

    image, seen = ClickableImage(), []
    image.on_click(lambda x, y: seen.append((x, y)))
    image.last_click = {"x": 10.5, "y": 3.0, "n": 1}  # what the browser sends
    image.click(10.5, 3.0)  # the same spot again still counts (the counter changes)
    assert seen == [(10.5, 3.0), (10.5, 3.0)] and image.last_click["n"] == 2


def test_without_anywidget_the_sliders_still_work(monkeypatch, model, images):
    """No anywidget installed: a plain (unclickable) Image, query set by sliders or Python."""
    import ipywidgets

    monkeypatch.setitem(sys.modules, "unifiedctx.widgets.clickimage", None)  # import fails
    explorer = AffinityExplorer(model, images, layer=MIXED_LAYER)
    assert type(explorer.controls["picture"]) is ipywidgets.Image
    before = explorer.rendered()
    explorer.controls["col"].value = 0
    assert explorer.query == (2, 0) and parse(explorer.rendered()["fields"])[0] == (2, 0)
    assert not np.array_equal(before["map"], explorer.rendered()["map"])


def test_heads_share_one_stated_scale(images):
    """No per-head rescaling: one scale for every head and query of a layer, 1/N for softmax."""
    explorer = AffinityExplorer(_model("deit_tiny_nano"), images, query=(3, 3))
    a = explorer.data.affinity(explorer.model_name, 0, explorer.layer, "dynamic")
    scale = explorer.scale
    assert (scale.cmap, scale.vmin, scale.vmax) == ("magma", 0.0, float(a.max()))
    assert scale.uniform == pytest.approx(1 / 64)
    assert "uniform 1/64" in explorer.status["scale"]
    peaks = explorer.maps().reshape(explorer.heads, -1).max(1)
    assert peaks.max() <= scale.vmax and not np.allclose(peaks, scale.vmax)  # heads are not stretched
    explorer.query = (0, 0)
    assert explorer.scale == scale  # moving the query keeps the scale


def test_status_is_laid_out_as_fields(explorer):
    fields = explorer.status
    assert list(fields) == ["image", "layer", "head", "component", "query", "kind", "affinity", "scale"]
    assert fields["kind"] == "mixed" and fields["component"] == "mixed"
    assert fields["affinity"] == "mixed: alpha*attention + beta*conv"  # the mixer's describe()
    html = explorer.controls["label"].value
    assert html.count('class="ucx-field-name"') == len(fields)
    assert 'class="ucx-field ucx-field-query"' in html


def test_a_new_model_carries_the_query_like_a_new_layer(images):
    models = {"container": _model("container_light_nano"), "deit": _model("deit_tiny_nano")}
    explorer = AffinityExplorer(models, images, query=(1, 2))  # 4x4: rows 8..15, cols 16..23 of 32x32
    explorer.model_name = "deit"  # 8x8 grid, 4 pixels a cell: the same place is cell (3, 5)
    assert explorer.grid == (8, 8) and explorer.query == (3, 5)
    assert parse(explorer.rendered()["fields"])[0] == (3, 5)
    explorer.model_name = "container"  # its layer of that name is the dwconv on 16x16
    assert explorer.layer == FIRST_LAYER and explorer.query == (7, 11)


def test_the_explorer_leaves_models_and_the_rng_as_found(images, tmp_path):
    model = _model("container_light_nano").train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    model.stages[0].eval()
    modes = {n: m.training for n, m in model.named_modules()}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    explorer = AffinityExplorer(model, images)
    for layer in explorer.layers:
        explorer.layer = layer
    explorer.to_html(tmp_path / "page.html")
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_one_owner_of_the_state(explorer):
    """The explorer's fields are its state object's; the view gets a Frame of plain data."""
    from unifiedctx.widgets.explorer_view import Frame

    explorer.show(head=1, query=(2, 3))
    assert explorer.state.as_dict() == {"model_name": explorer.model_name, "image_index": 0, "head": 1,
                                        "layer": MIXED_LAYER, "component": "mixed", "query": (2, 3),
                                        "depth": "off"}
    assert explorer.state.view_mode == "one head"
    frames = []
    original = explorer.view.show
    explorer.view.show = lambda frame: (frames.append(frame), original(frame))[1]
    try:
        explorer.query = (0, 0)
    finally:
        explorer.view.show = original
    (frame,) = frames
    assert isinstance(frame, Frame) and isinstance(frame.maps, np.ndarray) and frame.heads == [1]
    assert frame.query == (0, 0) and frame.fields == explorer.status
