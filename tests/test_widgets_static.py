"""``AffinityExplorer.to_html``: one self-contained page whose embedded maps are the explorer's."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from unifiedctx.models import create_model
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets.export import TooLarge, dequantise, quantise, read_payload, unpack

MIXED = "stages.3.blocks.0.mixer"


@pytest.fixture(scope="module")
def explorer():
    torch.manual_seed(0)
    model = create_model("container_light_nano").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return AffinityExplorer(model, images, layer=MIXED, query=(1, 2))


@pytest.fixture(scope="module")
def page(explorer, tmp_path_factory):
    return explorer.to_html(tmp_path_factory.mktemp("html") / "explorer.html")


def test_quantisation_round_trips_within_a_step():
    gen = torch.Generator().manual_seed(0)
    signed = torch.randn(3, 5, 5, generator=gen).numpy()
    positive = torch.rand(3, 5, 5, generator=gen).numpy()
    for a in (signed, positive):
        scale = scale_for(a)
        step = max(abs(scale.vmin), abs(scale.vmax)) / (127 if scale.signed else 255)
        np.testing.assert_allclose(dequantise(quantise(a, scale), scale), a, rtol=0, atol=step / 2 + 1e-12)
    zero = scale_for(signed)
    assert dequantise(quantise(np.zeros(1), zero), zero)[0] == 0.0  # 0 is exact on signed scales


def test_the_page_holds_every_map_of_every_layer(explorer, page):
    data = read_payload(page)
    assert data["models"] == list(explorer.data.models) and data["start"]["layer"] == MIXED
    assert data["start"]["query"] == [1, 2]
    name = data["models"][0]
    layers = data["layers"][name]
    assert [layer["name"] for layer in layers] == explorer.layers
    for layer in layers:
        n = layer["grid"][0] * layer["grid"][1]
        for comp in layer["components"]:
            assert len(comp["maps"]) == (1 if comp["shared"] else 2)  # static: stored once
            for i, entry in enumerate(comp["maps"]):
                want = explorer.data.affinity(name, i, layer["name"], comp["name"])
                scale = explorer.data.scale(name, i, layer["name"], comp["name"])
                assert entry["scale"]["vmax"] == scale.vmax and entry["scale"]["cmap"] == scale.cmap
                step = max(abs(scale.vmin), abs(scale.vmax)) / 254
                np.testing.assert_allclose(unpack(entry, comp["heads"], n), want, rtol=0, atol=step + 1e-7)
    assert {c["name"] for c in layers[-1]["components"]} == {"mixed", "dynamic", "static"}


def test_the_page_loads_nothing_from_anywhere(page):
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    forbidden = (r"<link\b", r"\bsrc\s*=\s*[\"']", r"https?://", r"@import", r"\bfetch\(", r"XMLHttpRequest")
    for pattern in forbidden:
        assert not re.search(pattern, html), pattern


def test_a_nano_page_is_small(page):
    size = page.stat().st_size
    print(f"container_light_nano, 2 images: {size / 1e3:.1f} kB")
    assert size < 1e6


def test_too_big_is_refused_with_advice(explorer, tmp_path):
    with pytest.raises(TooLarge, match=r"over 0.01 MB.*images=") as info:
        explorer.to_html(tmp_path / "big.html", max_mb=0.01)
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "big.html").exists()
    one = read_payload(explorer.to_html(tmp_path / "one.html", images=[1]))
    assert len(one["images"]["rgb"]) == 1
    with pytest.raises(ValueError, match="images must be indices"):
        explorer.to_html(tmp_path / "bad.html", images=[5])
