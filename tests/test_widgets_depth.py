"""The explorer's through-depth view: the query's rollout (or ERF) on the input pixels, beside the
layer's own map, through the state (``depth``), the data layer and the view, and in the page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unifiedctx.context import erf_maps, rollout_maps
from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer, ExplorerValueError
from unifiedctx.widgets.explorer_data import depth_scale
from unifiedctx.widgets.explorer_view import Frame
from unifiedctx.widgets.export import TooLarge, read_payload, unpack_depth

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
    assert shown["depth_picture"] is not None and shown["depth_picture"].shape[0] >= 96


def test_changing_query_layer_or_image_updates_the_depth_map(explorer, model, images):
    before, before_picture = explorer.rendered()["depth"], explorer.rendered()["depth_picture"]
    explorer.query = (3, 0)
    after = explorer.rendered()
    np.testing.assert_allclose(after["depth"], rollout_maps(model, images[:1], MIXED, query=(3, 0))["map"],
                               rtol=0, atol=1e-12)
    assert np.abs(after["depth"] - before).max() > 1e-4
    assert not np.array_equal(after["depth_picture"], before_picture)
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
    assert shown["depth"] is None and shown["depth_picture"] is None and explorer.depth_map() is None
    assert "depth" not in explorer.status and explorer.controls["depth_map"].layout.display == "none"
    assert AffinityExplorer(model, images).depth == "off"
    explorer.controls["depth"].value = "rollout"  # the toggle sets the state
    assert explorer.depth == "rollout" and explorer.rendered()["depth"] is not None
    assert explorer.controls["depth_map"].layout.display is None


def test_depth_is_a_state_field_with_clear_errors(explorer):
    explorer.depth = "erf"  # spelled either way
    assert explorer.depth == "ERF" and explorer.state.as_dict()["depth"] == "ERF"
    with pytest.raises(ExplorerValueError, match="depth 'rolout'.*'rollout'"):
        explorer.depth = "rolout"
    assert explorer.depth == "ERF"
    frames = []
    original = explorer.view.show
    explorer.view.show = lambda frame: (frames.append(frame), original(frame))[1]
    try:
        explorer.depth = "rollout"
    finally:
        explorer.view.show = original
    (frame,) = frames
    assert isinstance(frame, Frame) and isinstance(frame.depth["map"], np.ndarray)
    assert frame.depth["scale"] == depth_scale(explorer.depth_data())


def test_depth_rows_are_every_query_of_rollout_maps(explorer, model, images):
    rows = explorer.data.depth_rows(explorer.model_name, 0, MIXED, "rollout")
    assert rows.shape == (16, 32, 32)
    for q in range(16):
        want = rollout_maps(model, images[:1], MIXED, query=divmod(q, 4))["map"]
        np.testing.assert_allclose(rows[q], want, rtol=0, atol=1e-12)


def test_channels_are_named_channels_and_the_mixer_describes_itself(model, images):
    explorer = AffinityExplorer(model, images, layer=FIRST)
    assert explorer.status["head"] == "all channels (8)"
    assert explorer.status["affinity"].startswith("static local")
    assert [label for label, _ in explorer.controls["head"].options][:2] == ["all channels", "channel 0"]
    mixer = AffinityExplorer(_model("mixer_s16_nano"), images)
    assert "gated" in mixer.status["affinity"] and mixer.status["head"].startswith("all channels")


def test_the_page_holds_every_querys_rollout(explorer, model, images, tmp_path):
    page = explorer.to_html(tmp_path / "page.html")
    data = read_payload(page)
    assert data["depth_modes"] == ["rollout"] and data["start"]["depth"] == "rollout"
    for layer in data["layers"][explorer.model_name]:
        through = layer["depth"]
        assert list(through) == ["rollout"] and through["rollout"]["input"] == [32, 32]
        h, w = layer["grid"]
        for i, entry in enumerate(through["rollout"]["maps"]):
            got = unpack_depth(entry, (32, 32))
            want = explorer.data.depth_rows(explorer.model_name, i, layer["name"], "rollout")
            step = np.asarray(entry["vmax"])[:, None, None] / 510
            assert (np.abs(got - want) <= step + 1e-12).all()
        q = (h // 2, w // 3)
        want = rollout_maps(model, images[1:2], layer["name"], query=q)["map"]
        got = unpack_depth(through["rollout"]["maps"][1], (32, 32))[q[0] * w + q[1]]
        assert np.abs(got - want).max() <= max(want.max(), 1 / 1024) / 510 + 1e-12
    assert layer["description"] == "mixed: alpha*attention + beta*conv" and layer["unit"] == "head"


def test_erf_goes_in_only_when_asked_and_the_size_limit_still_holds(explorer, tmp_path):
    plain = explorer.to_html(tmp_path / "plain.html", depth=())
    assert read_payload(plain)["depth_modes"] == [] and read_payload(plain)["start"]["depth"] == "off"
    both = explorer.to_html(tmp_path / "both.html", depth=("rollout", "ERF"), images=[0])
    layer = read_payload(both)["layers"][explorer.model_name][-1]
    assert list(layer["depth"]) == ["rollout", "ERF"]
    rows = explorer.data.depth_rows(explorer.model_name, 0, layer["name"], "ERF")
    got = unpack_depth(layer["depth"]["ERF"]["maps"][0], (32, 32))
    assert np.abs(got - rows).max() <= rows.max() / 510 + 1e-12
    assert plain.stat().st_size < (tmp_path / "both.html").stat().st_size
    limit = plain.stat().st_size / 1e6 * 1.05  # room for the affinities, not for the rollout too
    explorer.to_html(tmp_path / "fits.html", depth=(), max_mb=limit)
    with pytest.raises(TooLarge, match="depth=()"):
        explorer.to_html(tmp_path / "big.html", max_mb=limit)
    with pytest.raises(ValueError, match="depth"):
        explorer.to_html(tmp_path / "bad.html", depth=("nope",))
