"""``AffinityExplorer.from_run``: the explorer of a training run's snapshots, one more field, ``epoch``.

A tiny run is trained by hand (``tests/browser/cases.py``, :func:`watched_run`: a nano model a few steps per
epoch, its snapshots and its weights kept every epoch). The principle: at every epoch the run's
explorer shows what the explorer of that epoch's weights shows (to float16's rounding), the query,
layer and head stay while the epoch moves, the fixed colour scale is one over every epoch, and the
exported page holds every epoch. The drawing itself is checked in Chromium
(``tests/browser/test_explorer_run.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from browser.cases import probe_images, watched_run

from unifiedctx.models import create_model
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer, ExplorerValueError
from unifiedctx.widgets.explorer_payload import colour_index
from unifiedctx.widgets.export import read_payload, unpack

FLOAT16_REL, FLOAT16_TINY = 2.0 ** -11, 2.0 ** -24
MIXED = "stages.3.blocks.0.mixer"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    watched_run(folder, "container_light_nano", epochs=3, seed=4, weights=True)
    return folder


def weights_at(run, epoch: int, name: str = "container_light_nano") -> torch.nn.Module:
    model = create_model(name)
    model.load_state_dict(torch.load(run / f"weights{epoch}.pt", weights_only=True))
    return model.eval()


def test_every_epoch_shows_what_that_epochs_weights_show(run):
    explorer = AffinityExplorer.from_run(run, scale_mode="layer")
    assert explorer.epochs == [0, 1, 2, 3] and explorer.epoch == 3  # the last by default
    for epoch in explorer.epochs:
        live = AffinityExplorer(weights_at(run, epoch), probe_images())
        assert explorer.layers == live.layers
        for layer in explorer.layers:
            for component in live.show(layer=layer).components:
                for image in (0, 2):
                    for query in ((0, 0), (live.grid[0] - 1, 1)):
                        live.show(component=component, image_index=image, query=query)
                        explorer.show(layer=layer, component=component, image_index=image, query=query,
                                      epoch=epoch)
                        np.testing.assert_allclose(explorer.maps(), live.maps(), rtol=FLOAT16_REL,
                                                   atol=FLOAT16_TINY)
                        # what the browser is sent: the same colours, but for float16's rounding
                        sent, want = explorer.rendered()["indices"], live.rendered()["indices"]
                        assert np.abs(sent.astype(int) - want).max() <= 1
    assert explorer.status["epoch"] == "3 (stored: 0..3)"


def test_the_epoch_moves_and_nothing_else(run):
    explorer = AffinityExplorer.from_run(run, layer=MIXED, head=1, component="dynamic", query=(2, 1))
    before = explorer.maps()
    for epoch in (0, 2, 1):
        explorer.epoch = epoch
        kept = (explorer.layer, explorer.head, explorer.component, explorer.query)
        assert kept == (MIXED, 1, "dynamic", (2, 1))
        assert explorer.shown["epoch"] == epoch
    assert not np.allclose(explorer.maps(), before)  # the maps did move with training
    with pytest.raises(ExplorerValueError, match=r"epoch 9 is not stored in this run; its epochs are 0..3"):
        explorer.epoch = 9
    with pytest.raises(TypeError, match="epoch must be an int"):
        explorer.epoch = "1"
    with pytest.raises(ValueError, match="snapshots hold the affinities, not the models"):
        explorer.depth = "rollout"
    assert explorer.setup["depth_modes"] == ["off"] and explorer.setup["epochs"] == [0, 1, 2, 3]


def test_the_fixed_scale_is_one_over_every_epoch(run):
    """Fixed: the same colour is the same weight at every epoch (so a change is seen); per epoch: each
    epoch's own scale, as an explorer of that epoch's weights would state it."""
    explorer = AffinityExplorer.from_run(run, layer=MIXED, component="dynamic")
    stack = np.stack([explorer.show(epoch=e).maps() for e in explorer.epochs])  # every epoch's query maps
    everything = np.stack([explorer.data.affinity(explorer.model_name, 0, MIXED, "dynamic", e)
                           for e in explorer.epochs])
    fixed = {explorer.show(epoch=e).scale for e in explorer.epochs}
    assert len(fixed) == 1
    (scale,) = fixed
    assert scale == scale_for(everything, atol=2.0 ** -10) and scale.vmax >= stack.max()
    assert scale.uniform == pytest.approx(1 / 16)  # attention rows: the uniform level is stated
    assert "and by every epoch of the run" in explorer.status["scale"]
    explorer.scale_mode = "layer"
    per_epoch = [explorer.show(epoch=e).scale for e in explorer.epochs]
    assert per_epoch == [scale_for(a, atol=2.0 ** -10) for a in everything]
    assert len({s.vmax for s in per_epoch}) > 1
    assert all(s.uniform == pytest.approx(1 / 16) for s in per_epoch)
    assert "at this epoch" in explorer.status["scale"]


def test_the_page_holds_every_epoch(run, tmp_path):
    explorer = AffinityExplorer.from_run(run, layer=MIXED)
    data = read_payload(explorer.to_html(tmp_path / "run.html"))
    name = explorer.model_name
    setup = data["traits"]["setup"]
    assert setup["epochs"] == [0, 1, 2, 3] and setup["depth_modes"] == ["off"]
    by_scale = data["maps"][name][MIXED]["dynamic"]
    assert set(by_scale) == {"fixed", "layer", "map"}
    assert all(set(entries) == {"0", "1", "2", "3"} for entries in by_scale.values())
    for epoch in explorer.epochs:
        for image in range(3):
            a = explorer.data.affinity(name, image, MIXED, "dynamic", epoch)
            fixed = explorer.data.fixed_scale(name, image, MIXED, "dynamic")
            got = unpack(by_scale["fixed"][str(epoch)][image]).reshape(a.shape)
            np.testing.assert_array_equal(got, colour_index(a, fixed))
    assert not data["depth"][name][MIXED]  # no through-depth view: the run holds no models


def test_runs_are_compared_on_the_same_images_and_epochs(run, tmp_path):
    other = tmp_path / "deit"
    watched_run(other, "deit_tiny_nano", epochs=3, seed=1)
    both = AffinityExplorer.from_run({"container": run, "deit": other})
    assert both.setup["models"] == ["container", "deit"] and both.epochs == [0, 1, 2, 3]
    both.model_name = "deit"
    assert both.layer == "stages.0.blocks.0.mixer" and both.component == "dynamic"
    shorter = tmp_path / "short"
    watched_run(shorter, "deit_tiny_nano", epochs=2, seed=1)
    with pytest.raises(ValueError, match="the same epochs"):
        AffinityExplorer.from_run({"a": run, "b": shorter})


@pytest.mark.parametrize(("path", "error", "words"), [
    (5, TypeError, ["path", "int"]),
    ({}, ValueError, ["at least one run"]),
    ({1: "x"}, TypeError, ["names of the runs"]),
    ("/nonexistent/run", ValueError, ["no run", "/nonexistent/run"]),
])
def test_from_run_refuses_what_is_not_a_run(path, error, words):
    with pytest.raises(error) as info:
        AffinityExplorer.from_run(path)
    for word in words:
        assert word in str(info.value)


def test_from_run_options_are_checked(run, tmp_path):
    with pytest.raises(ValueError, match="panel"):
        AffinityExplorer.from_run(run, panel=5)
    with pytest.raises(ValueError, match="scale_mode 'banana'"):
        AffinityExplorer.from_run(run, scale_mode="banana")
    with pytest.raises(ValueError, match="snapshots.json is missing"):
        AffinityExplorer.from_run(tmp_path)
