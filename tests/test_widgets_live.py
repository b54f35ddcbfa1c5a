"""``LiveView``: the live view of a training run, driven by a manual training loop.

The principle: every push sends, at once and unasked, exactly what the front end draws -- for the
chosen layer, component and query, every pushed epoch's row for every probe image and head, on each
colour scale -- and those colours are the snapshots' numbers (each checked here against rows and
scales computed independently from the snapshots). The drawing itself, and the view growing while a
notebook cell trains, are checked in Chromium in JupyterLab (``tests/browser``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unifiedctx.inspection.snapshots import take_snapshot
from unifiedctx.models import create_model, mixing_weights
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets.live import LIVE_SCALES, LiveView

MIXED = "stages.3.blocks.0.mixer"


def u8(values, lo, hi):
    return np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def probe():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))


def manual_loop(live, probe, epochs=3, seed=6, name="container_light_nano", steps=3):
    """A loop written by hand, pushing a row every step and a snapshot every epoch; returns the
    snapshots and rows it pushed, and the model."""
    torch.manual_seed(seed)
    model = create_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    pushed = [(0.0, take_snapshot(model, probe), None)]
    live.push(0, pushed[0][1])
    for epoch in range(1, epochs + 1):
        model.train()
        for step in range(steps):
            x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            if step < steps - 1:
                live.push(epoch - 1 + (step + 1) / steps, row={"train_loss": loss.item()})
        row = {"train_loss": loss.item(), "test_acc": 0.1 * epoch, "lr": 1e-2, "time": 3.0 * epoch,
               "test_loss": math.nan if epoch == 2 else 2.0}
        snapshot = take_snapshot(model, probe)
        live.push(epoch, snapshot, row)
        pushed.append((float(epoch), snapshot, row))
    return pushed, model


def test_every_push_sends_what_is_drawn_unasked(probe, monkeypatch):
    live = LiveView(probe, query=(1, 2), head=1)
    sent = []
    monkeypatch.setattr(live, "send_state", lambda key=None: sent.append(set(key) if key else {"all"}))
    pushed, model = manual_loop(live, probe)
    snapshot_pushes = [s for s in sent if "frames" in s]
    assert len(snapshot_pushes) == 4 and all(s >= {"frames", "frame_data", "curves"} for s in snapshot_pushes)
    assert len(sent) == 4 + 3 * 2  # one message a push (hold_sync): the front end needs nothing else
    assert live.epochs == [0.0, 1.0, 2.0, 3.0] and live.frames["epochs"] == live.epochs
    assert live.shown == {"layer": MIXED, "component": "mixed", "head": 1, "query": [1, 2],
                          "scale_mode": "fixed"}
    assert live.frames["for"] == live.shown and live.frames["heads"] == 2 and live.frames["grid"] == [4, 4]


@pytest.mark.parametrize("component", ["mixed", "dynamic", "static"])
def test_the_colours_sent_are_the_snapshots_numbers(probe, component):
    live = LiveView(probe, component=component, query=(3, 0))
    pushed, _ = manual_loop(live, probe, epochs=2, seed=2)
    q = 3 * 4 + 0
    parts = [np.broadcast_to(s.maps[(MIXED, component)].astype(np.float64), (2, 2, 16, 16)).copy()
             for _, s, _ in pushed]
    rows = np.stack([p[:, :, q, :] for p in parts])  # (E, B, M, N): the query's row
    np.testing.assert_array_equal(live.maps().reshape(rows.shape), rows.astype(np.float32))
    whole = [scale_for(p, atol=2.0 ** -10) for p in parts]  # each epoch: every image, head and query
    everything = scale_for(np.stack(parts), atol=2.0 ** -10)
    assert live.fixed_scale() == everything
    want = {"fixed": u8(rows, everything.vmin, everything.vmax),
            "layer": np.stack([u8(r, s.vmin, s.vmax) for r, s in zip(rows, whole)])}
    own = []  # each map on its own range, of the kind of its epoch's scale (signed or not, 1/N or not)
    for r, s in zip(rows, whole):
        peak = r.max(-1, keepdims=True)
        top = np.abs(r).max(-1, keepdims=True) if s.signed else np.maximum(peak, s.uniform or 0)
        top = np.where(top > 0, top, 1)
        own.append(u8(r, -top if s.signed else 0, top))
    want["map"] = np.stack(own)
    sent = np.frombuffer(live.frame_data, np.uint8).reshape(3, *rows.shape)
    for k, mode in enumerate(LIVE_SCALES):
        np.testing.assert_array_equal(live.frame(mode).reshape(rows.shape), want[mode])
        np.testing.assert_array_equal(sent[k], want[mode])
    assert live.frames["fixed"]["text"].endswith(everything.describe())
    if not everything.signed and component != "mixed":
        assert everything.uniform == pytest.approx(1 / 16)


def test_the_curves_are_the_pushed_rows(probe):
    live = LiveView(probe)
    pushed, model = manual_loop(live, probe, epochs=3, steps=2)
    loss, scores, mixing = live.curves["panels"]
    assert [p["title"] for p in live.curves["panels"]] == ["loss", "scores", "mixing weights"]
    series = {s["name"]: s for s in loss["series"]}
    assert set(series) == {"train_loss", "test_loss"}  # not lr, not time
    assert series["train_loss"]["x"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert series["test_loss"]["x"] == [1.0, 3.0]  # the NaN of epoch 2 is not drawn
    want = [{"name": "test_acc", "x": [1.0, 2.0, 3.0], "y": [0.1, 0.2, pytest.approx(0.3)]}]
    assert scores["series"] == want
    alpha = next(s for s in mixing["series"] if s["name"] == f"{MIXED} alpha")
    assert alpha["x"] == [0.0, 1.0, 2.0, 3.0]
    assert alpha["y"][-1] == pytest.approx(mixing_weights(model)[MIXED]["alpha"])
    assert alpha["y"][0] == 0.5 and len(set(alpha["y"])) > 1  # alpha leaves 50/50


def test_the_browsers_choice_is_taken_when_the_kernel_is_free(probe, monkeypatch):
    live = LiveView(probe)
    manual_loop(live, probe, epochs=1)
    refused = []
    monkeypatch.setattr(live, "send", lambda content, buffers=None: refused.append(content), raising=False)
    live.shown = {**live.shown, "layer": "stages.1.blocks.0.mixer", "component": "static", "query": [7, 0]}
    assert live.frames["for"]["layer"] == "stages.1.blocks.0.mixer" and live.frames["grid"] == [8, 8]
    assert live.frame().shape == (2, 2, 16, 8, 8) and not refused
    good = dict(live.shown)
    live.shown = {**good, "query": [8, 0]}  # off the 8x8 grid
    assert live.shown == good and "query" in refused[0]["error"] and refused[0]["kind"] == "refused"


def test_show_from_python(probe):
    live = LiveView(probe)
    live.show(layer="stages.0.blocks.0.mixer")  # before the first snapshot: kept for it
    manual_loop(live, probe, epochs=1)
    assert live.shown["layer"] == "stages.0.blocks.0.mixer" and live.shown["query"] == [8, 8]
    live.show(layer=MIXED, head=1, scale_mode="map")
    assert live.shown == {"layer": MIXED, "component": "mixed", "head": 1, "query": [2, 2],
                          "scale_mode": "map"}
    with pytest.raises(ValueError, match="head must be < 2"):
        live.show(head=2)
    with pytest.raises(ValueError, match="component"):
        live.show(component="banana")
    with pytest.raises(ValueError, match="query"):
        live.show(query=(4, 0))


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"layer": 3}, TypeError, ["layer", "int 3"]), ({"component": 1}, TypeError, ["component"]),
    ({"head": "x"}, TypeError, ["head", "str"]), ({"head": -1}, ValueError, ["head", ">= 0"]),
    ({"query": (1,)}, TypeError, ["query", "pair"]), ({"query": (-1, 2)}, ValueError, ["query[0]"]),
    ({"query": (1, 2.5)}, TypeError, ["query[1]"]), ({"scale_mode": "per"}, ValueError, ["scale_mode"]),
])
def test_show_before_the_first_snapshot_refuses_at_once(probe, kwargs, error, words):
    """Before any snapshot the layers are not known, but a wrong type, a negative head or query and an
    unknown scale are: refused at the call, not later inside fit's first push."""
    live = LiveView(probe)
    with pytest.raises(error) as info:
        live.show(**kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)
    with pytest.raises(error):
        LiveView(probe, **kwargs)  # the constructor checks the same


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"panel": 8}, ValueError, ["panel"]), ({"columns": 1}, ValueError, ["columns"]),
    ({"scale_mode": "per"}, ValueError, ["scale_mode"]), ({"alpha": 2}, ValueError, ["alpha"]),
    ({"layer": 3}, TypeError, ["layer"]), ({"head": -1}, ValueError, ["head"]),
    ({"cmap": "nope"}, ValueError, ["cmap"]),
])
def test_construction_refuses(probe, kwargs, error, words):
    with pytest.raises(error) as info:
        LiveView(probe, **kwargs)
    assert all(w in str(info.value) for w in words)


def test_pushes_are_checked(probe):
    live = LiveView(probe)
    model = create_model("deit_tiny_nano")
    live.push(1, take_snapshot(model, probe))
    with pytest.raises(ValueError, match="before the last one pushed"):
        live.push(0.5, row={"train_loss": 1.0})
    with pytest.raises(ValueError, match="snapshot, a history row or both"):
        live.push(2)
    with pytest.raises(TypeError, match="row must be a dict"):
        live.push(2, row=[1, 2])
    with pytest.raises(TypeError, match="snapshot must be a Snapshot"):
        live.push(2, snapshot={"a": 1})
    with pytest.raises(ValueError, match="layers are not those"):
        live.push(2, take_snapshot(create_model("container_light_nano"), probe))
    with pytest.raises(ValueError, match="snapshot is of 1 images"):
        live.push(2, take_snapshot(model, probe[:1]))
    with pytest.raises(ValueError, match="epoch"):
        live.push(math.nan, row={})
    assert live.epochs == [1.0]
