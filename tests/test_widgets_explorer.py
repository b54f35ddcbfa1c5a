"""Headless tests of ``AffinityExplorer``, the kernel side: the data and the trait bridge.

Driving it from Python changes the state the browser is sent (the ``shown`` trait); a state the
browser sends is taken, or refused and sent back. What the front end draws from (the answers to
its requests: colour indices, scales, status templates) is checked against affinities recorded
independently with ``record_components``. The drawing itself is checked in Chromium
(``tests/browser``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from unifiedctx.models import create_model, record_components
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer, ExplorerTypeError, ExplorerValueError
from unifiedctx.widgets.explorer_payload import fill

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


def sent_rows(explorer) -> np.ndarray:
    """The colour indices the browser is sent for the shown heads' query rows, ``(M', H, W)``."""
    return explorer.rendered()["indices"]


def test_initial_state_is_sent(explorer, model, images):
    shown = explorer.rendered()
    assert parse(shown["fields"]) == ((1, 1), (4, 4), MIXED_LAYER, "all heads")
    assert explorer.components == ["mixed", "dynamic", "static"] and explorer.component == "mixed"
    want = expected_rows(model, images[0], MIXED_LAYER, "mixed", (1, 1), (4, 4))
    np.testing.assert_allclose(shown["maps"], want, rtol=1e-5, atol=1e-7)
    assert explorer.shown == {"model_name": explorer.model_name, "image_index": 0, "layer": MIXED_LAYER,
                              "head": -1, "component": "mixed", "query": [1, 1], "depth": "off",
                              "scale_mode": "layer", "epoch": None}
    assert explorer.setup["marker"] == [0, 255, 255] and explorer.epochs == []  # viz.scales.QUERY_MARKER
    assert explorer.setup["h"] == 32 and explorer.setup["panel"] == 256
    assert len(explorer.pictures) == 3 * 32 * 32 * 3  # uint8 RGB of every image, no PNG
    assert len(explorer.luts) == 2 * 256 * 3 and explorer.setup["luts"] == ["magma", "RdBu_r"]


def test_the_browser_is_sent_colour_indices_of_the_recorded_affinity(explorer, model, images):
    explorer.show(head=1, query=(0, 3))
    rows = expected_rows(model, images[0], MIXED_LAYER, "mixed", None, (4, 4))
    scale = scale_for(rows)  # one scale for all heads and queries of the layer
    assert explorer.scale == scale
    want = np.rint(scale.normalise(rows[1, 3]) * 255).reshape(1, 4, 4)
    np.testing.assert_allclose(sent_rows(explorer), want, atol=1)  # float32 vs float64 rounding
    meta, buffer = explorer.answer({"need": "maps", "model": explorer.model_name, "image": 0,
                                    "layer": MIXED_LAYER, "component": "mixed"})
    assert len(buffer) == 2 * 16 * 16 and meta["heads"] == 2  # every row: a click needs no kernel
    assert meta["scale"]["text"] == scale.describe() and meta["scale"]["cmap"] == scale.cmap
    assert meta["scale"]["marks"][:2] == [[1.0, f"{scale.vmax:.3g}", ""], [0.0, f"{scale.vmin:.3g}", ""]]


def test_query_head_component_and_image_change_what_is_sent(explorer, model, images):
    before = sent_rows(explorer)
    explorer.query = (3, 2)
    assert parse(explorer.status)[0] == (3, 2) and explorer.shown["query"] == [3, 2]
    assert not np.array_equal(before, sent_rows(explorer))
    np.testing.assert_allclose(explorer.maps(), expected_rows(model, images[0], MIXED_LAYER, "mixed", (3, 2),
                                                              (4, 4)), rtol=1e-5, atol=1e-7)
    explorer.head = 0
    assert parse(explorer.status)[3] == "head 0" and explorer.maps().shape == (1, 4, 4)
    for component in ("static", "dynamic"):
        explorer.component = component
        want = expected_rows(model, images[0], MIXED_LAYER, component, (3, 2), (4, 4))[:1]
        np.testing.assert_allclose(explorer.maps(), want, rtol=1e-5, atol=1e-7)
    explorer.image_index = 2
    assert explorer.status["image"] == "2 of 3"
    want = expected_rows(model, images[2], MIXED_LAYER, "dynamic", (3, 2), (4, 4))[:1]
    np.testing.assert_allclose(explorer.maps(), want, rtol=1e-5, atol=1e-7)


def test_layer_change_keeps_the_query_in_place(explorer):
    explorer.query = (1, 2)  # on 4x4: the cell covering rows 8..15, cols 16..23 of the 32x32 image
    explorer.layer = FIRST_LAYER  # dwconv on 16x16: static only, 8 channel heads
    assert explorer.component == "static" and explorer.components == ["static"]
    assert explorer.query == (6, 10)  # the same place of the image on the finer grid
    assert parse(explorer.status)[:3] == ((6, 10), (16, 16), FIRST_LAYER)
    assert explorer.maps().shape == (8, 16, 16)
    explorer.head = 3
    assert explorer.status["head"] == "channel 3 of 8" and "head: channel 3 of 8" in explorer.label_text


def test_the_carry_tables_are_the_kernels_rule(explorer):
    """The browser carries the query with tables made by the kernel's own rule: they agree."""
    from unifiedctx.widgets.explorer_state import carry_query

    table = explorer.catalog["carry"]["4,4>16,16"]
    assert len(table) == 16
    for q, cell in enumerate(table):
        assert divmod(cell, 16) == carry_query(divmod(q, 4), (4, 4), (16, 16))
    assert explorer.catalog["models"][explorer.model_name]["default_layer"] == MIXED_LAYER


def test_a_state_from_the_browser_is_taken_and_a_bad_one_sent_back(explorer):
    explorer.shown = {**explorer.shown, "query": [3, 0], "head": 1}
    assert explorer.query == (3, 0) and explorer.head == 1
    explorer.shown = {**explorer.shown, "layer": FIRST_LAYER, "component": "static", "head": -1,
                      "query": [12, 1]}  # the browser applied the carry rule itself
    assert explorer.layer == FIRST_LAYER and explorer.query == (12, 1)
    good = dict(explorer.shown)
    explorer.shown = {**good, "query": [99, 0]}
    assert explorer.shown == good and explorer.query == (12, 1)


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
    before, sent = explorer.status, dict(explorer.shown)
    with pytest.raises(error) as info:
        setattr(explorer, trait, value)
    assert isinstance(info.value, ValueError if error is ExplorerValueError else TypeError)
    for word in words:
        assert word in str(info.value)
    assert explorer.status == before and explorer.shown == sent  # nothing changed


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
    assert explorer.status["model"] == "container" and explorer.setup["models"] == ["container", "deit"]
    explorer.model_name = "deit"
    assert explorer.layers == ["stages.0.blocks.0.mixer", "stages.0.blocks.1.mixer"]
    assert explorer.component == "dynamic" and explorer.grid == (8, 8)
    assert explorer.status["model"] == "deit" and explorer.shown["model_name"] == "deit"
    want = expected_rows(models["deit"], images[0], explorer.layer, "dynamic", explorer.query, (8, 8))
    np.testing.assert_allclose(explorer.maps(), want, rtol=1e-5, atol=1e-7)
    assert set(explorer.catalog["models"]) == {"container", "deit"}  # the browser knows both


def test_heads_share_one_stated_scale(images):
    """No per-head rescaling: one scale for every head and query of a layer, 1/N for softmax."""
    explorer = AffinityExplorer(_model("deit_tiny_nano"), images, query=(3, 3))
    a = explorer.data.affinity(explorer.model_name, 0, explorer.layer, "dynamic")
    scale = explorer.scale
    assert (scale.cmap, scale.vmin, scale.vmax) == ("magma", 0.0, float(a.max()))
    assert scale.uniform == pytest.approx(1 / 64)
    assert "uniform 1/64" in explorer.status["scale"]
    marks = explorer.shown_entries()[0][0]["scale"]["marks"]
    assert marks[-1] == [pytest.approx(1 / 64 / scale.vmax), "uniform 1/64", "ucx-uniform"]
    peaks = explorer.maps().reshape(explorer.heads, -1).max(1)
    assert peaks.max() <= scale.vmax and not np.allclose(peaks, scale.vmax)  # heads are not stretched
    explorer.query = (0, 0)
    assert explorer.scale == scale  # moving the query keeps the scale


def test_a_scale_per_map_lets_every_head_fill_the_colormap(explorer, model, images):
    """Issue 30: with one scale for every head and query some maps are nearly black; the per-map
    scale shows each head's row on its own range, and the status says the maps are then not
    comparable by colour. Each row is checked against its own range, computed here."""
    explorer.show(component="dynamic", head=-1, query=(2, 1))
    shared = explorer.rendered()["indices"].reshape(2, -1)
    explorer.scale_mode = "map"
    rows = expected_rows(model, images[0], MIXED_LAYER, "dynamic", (2, 1), (4, 4)).reshape(2, -1)
    top = np.maximum(rows.max(1, keepdims=True), 1 / 16)  # softmax rows: never below the uniform level
    own = explorer.rendered()["indices"].reshape(2, -1)
    np.testing.assert_allclose(own, np.rint(rows / top * 255), atol=1)
    assert shared.max(1).min() < 255 and (own.max(1) >= 254).all()  # the dimmer head now fills the colormap
    words = explorer.status["scale"]
    assert "each map on its own scale" in words and "NOT comparable" in words
    assert [s.vmax for s in explorer.map_scales()] == pytest.approx(top.ravel().tolist(), rel=1e-6)
    meta = explorer.shown_entries()[0][0]
    k = 1 * 16 + 2 * 4 + 1  # head 1's row of query (2, 1)
    assert meta["rows"]["vmax"][k] == f"{top[1, 0]:.3g}" and meta["rows"]["uniform_at"][k] == pytest.approx(
        1 / 16 / top[1, 0], abs=1e-5)
    assert explorer.shown["scale_mode"] == "map"
    explorer.scale_mode = "layer"
    assert "shared by every head and query of this layer" in explorer.status["scale"]


def test_the_query_marker_has_one_colour_everywhere(explorer, tmp_path):
    """Issue 30: the figures, the explorer's outline and its page's words share viz.QUERY_MARKER."""
    import matplotlib

    from unifiedctx import viz

    matplotlib.use("Agg")
    rgb = [round(255 * c) for c in matplotlib.colors.to_rgb(viz.QUERY_MARKER)]
    assert explorer.setup["marker"] == rgb and viz.QUERY_MARKER in explorer.status["query"]
    a = torch.softmax(torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)), -1)
    fig = viz.plot_query_maps(a, (4, 4), (1, 2))
    boxes = [p for ax in fig.axes for p in ax.patches if p.get_label() == "query token"]
    cyan = matplotlib.colors.to_rgb(viz.QUERY_MARKER)
    assert boxes and all(matplotlib.colors.to_rgb(p.get_edgecolor()) == cyan for p in boxes)
    assert any(t.get_text().startswith(f"{viz.QUERY_MARKER} square") for t in fig.texts)
    page = explorer.to_html(tmp_path / "page.html", depth=()).read_text()
    words = page.split('id="ucx-data"')[0]
    assert f"outlined in {viz.QUERY_MARKER}" in words and not re.search(r"\bred\b", words)
    js = (Path(viz.__file__).parents[1] / "widgets" / "explorer.js").read_text()
    assert "setup.marker" in js and not re.search(r"MARKER = \[", js)  # no colour of its own


def test_status_is_laid_out_as_fields(explorer):
    fields = explorer.status
    assert list(fields) == ["image", "layer", "head", "component", "query", "kind", "affinity", "scale"]
    assert fields["kind"] == "mixed" and fields["component"] == "mixed"
    assert fields["affinity"] == "mixed: alpha*attention + beta*conv"  # the mixer's describe()
    templates = dict(explorer.shown_entries()[0][0]["fields"])
    assert templates["query"] == ["(", "row", ", ", "col", ") on a 4x4 grid, outlined in cyan"]
    assert fill(templates["query"], {"row": 1, "col": 1}) == fields["query"]


def test_templates_never_read_slots_in_names():
    assert fill(["{row} <b>", "row", ""], {"row": 3}) == "{row} <b>3"


def test_a_new_model_carries_the_query_like_a_new_layer(images):
    models = {"container": _model("container_light_nano"), "deit": _model("deit_tiny_nano")}
    explorer = AffinityExplorer(models, images, query=(1, 2))  # 4x4: rows 8..15, cols 16..23 of 32x32
    explorer.model_name = "deit"  # 8x8 grid, 4 pixels a cell: the same place is cell (3, 5)
    assert explorer.grid == (8, 8) and explorer.query == (3, 5)
    assert parse(explorer.status)[0] == (3, 5)
    explorer.model_name = "container"  # its layer of that name is the dwconv on 16x16
    assert explorer.layer == FIRST_LAYER and explorer.query == (7, 11)
    assert explorer.catalog["carry"]["8,8>16,16"][3 * 8 + 5] == 7 * 16 + 11  # the browser's table


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
    """The explorer's fields are its state object's, and the browser is sent exactly that state."""
    explorer.show(head=1, query=(2, 3))
    assert explorer.state.as_dict() == {"model_name": explorer.model_name, "image_index": 0, "head": 1,
                                        "layer": MIXED_LAYER, "component": "mixed", "query": (2, 3),
                                        "depth": "off", "scale_mode": "layer", "epoch": None}
    assert explorer.state.view_mode == "one head"
    assert explorer.shown == {**explorer.state.as_dict(), "query": [2, 3]}


def test_the_front_end_is_one_module_following_anywidgets_pattern():
    from pathlib import Path

    import unifiedctx.widgets as widgets

    here = Path(widgets.__file__).parent
    js = (here / "explorer.js").read_text()
    assert str(AffinityExplorer._esm) == js
    assert str(AffinityExplorer._css) == (here / "explorer.css").read_text()
    assert js.rstrip().endswith("export default { render };") and "function render({ model, el })" in js
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    assert "innerHTML" not in (here / "page_model.js").read_text()
    assert not list(here.glob("*.png")) and not (here / "rendering.py").exists()
