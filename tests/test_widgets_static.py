"""``AffinityExplorer.to_html``: one self-contained page, the widget's own front end, safe to share."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets.explorer_payload import colour_index, place_rows
from unifiedctx.widgets.export import TooLarge, embed_json, page_script, read_payload, unpack

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


def test_colour_indices_are_the_scales_positions():
    from unifiedctx.viz.scales import scale_for

    gen = torch.Generator().manual_seed(0)
    for a in (torch.randn(3, 5, 5, generator=gen).numpy(), torch.rand(3, 5, 5, generator=gen).numpy()):
        scale = scale_for(a)
        u = colour_index(a, scale)
        assert u.dtype == np.uint8 and u.min() >= 0 and u.max() == 255
        np.testing.assert_allclose(u / 255, scale.normalise(a), atol=0.5 / 255 + 1e-12)  # within half a step


def own_rows(a: np.ndarray, scale) -> np.ndarray:
    """Each row of ``a`` on its own range, written out here: signed ``[-max|row|, max|row|]``, else
    ``[0, max(peak, 1/N if the layer's rows are distributions)]``."""
    a = a.astype(np.float64)
    if scale.signed:
        top = np.abs(a).max(-1, keepdims=True)
        lo, hi = -top, top
    else:
        hi = np.maximum(a.max(-1, keepdims=True), 1 / a.shape[-1] if scale.uniform else 0)
        lo = np.zeros_like(hi)
    return np.rint(np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def test_the_page_holds_every_map_of_every_layer(explorer, page):
    data = read_payload(page)
    traits = data["traits"]
    assert traits["setup"]["models"] == list(explorer.data.models) and traits["shown"]["layer"] == MIXED
    assert traits["shown"]["query"] == [1, 2]
    for model, page_cat in traits["catalog"]["models"].items():
        live = explorer.catalog["models"][model]
        for page_layer, live_layer in zip(page_cat["layers"], live["layers"]):
            for page_comp, live_comp in zip(page_layer["components"], live_layer["components"]):
                # the page asks by query for what it stores compactly (a static layer's kernels)
                stored = data["maps"][model][page_layer["name"]][page_comp["name"]]["layer"]["null"][0]
                assert page_comp.pop("form") == ("query" if "form" in stored["meta"] else "whole")
                assert live_comp["form"] == "whole" and page_comp == {k: v for k, v in live_comp.items()
                                                                      if k != "form"}
    name = traits["setup"]["models"][0]
    layers = traits["catalog"]["models"][name]["layers"]
    assert [layer["name"] for layer in layers] == explorer.layers
    forms = set()
    for layer in layers:
        (h, w) = layer["grid"]
        n = h * w
        for comp in layer["components"]:
            by_scale = data["maps"][name][layer["name"]][comp["name"]]
            assert set(by_scale) == {"layer", "map"} and all(set(e) == {"null"} for e in by_scale.values())
            entries, own = by_scale["layer"]["null"], by_scale["map"]["null"]  # no epochs: key null
            assert len(entries) == len(own) == (1 if comp["shared"] else 2)  # static: stored once
            for i, (entry, mine) in enumerate(zip(entries, own)):
                a = explorer.data.affinity(name, i, layer["name"], comp["name"])
                scale = explorer.data.scale(name, i, layer["name"], comp["name"])
                assert entry["meta"]["scale"]["text"] == scale.describe()
                # whole, or a static layer's kernels cut by the border as each class of queries sees them:
                # either way every query's rows, as the page model places them
                forms.add(entry["meta"].get("form", "whole"))
                got = np.stack([place_rows(entry["meta"], unpack(entry).tobytes(), divmod(q, w), (h, w))[0]
                                for q in range(n)], 1)
                np.testing.assert_array_equal(got, colour_index(a, scale))
                got = np.stack([place_rows(mine["meta"], unpack(mine).tobytes(), divmod(q, w), (h, w))[0]
                                for q in range(n)], 1)
                np.testing.assert_array_equal(got, own_rows(a, scale))
    assert forms == {"whole", "stencil"}  # the depthwise stages' kernels are smaller than their maps
    assert {c["name"] for c in layers[-1]["components"]} == {"mixed", "dynamic", "static"}
    assert base64.b64decode(data["pictures"]) == explorer.pictures


def test_the_page_runs_the_widgets_own_module(page):
    html = page.read_text()
    from pathlib import Path

    import unifiedctx.widgets as widgets

    module = (Path(widgets.__file__).parent / "explorer.js").read_text()
    body = module.rstrip()[: -len("export default { render };")]
    assert body in html  # the same front end, not a second application
    assert page_script() in html


def test_the_page_loads_nothing_from_anywhere(page):
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>")
    forbidden = (r"<link\b", r"\bsrc\s*=\s*[\"']", r"https?://", r"@import", r"\bfetch\(", r"XMLHttpRequest",
                 r"innerHTML", r"\bon[a-z]+\s*=")
    for pattern in forbidden:
        assert not re.search(pattern, html), pattern


def test_a_content_security_policy_allows_only_the_pages_own_script_and_style(page):
    html = page.read_text()
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)[1]
    script = re.search(r"<script>(.*)</script>", html, re.S)[1]
    style = re.search(r"<style>(.*)</style>", html, re.S)[1]
    digest = lambda text: base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()  # noqa: E731
    assert f"script-src 'sha256-{digest(script)}'" in csp and f"style-src 'sha256-{digest(style)}'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp


@pytest.mark.parametrize("text", ["</script><script>alert(1)</script>", "<!--", "a\u2028b\u2029c", "&lt;",
                                  '"><img>'])
def test_embedded_json_cannot_close_the_script_or_open_a_comment(text):
    blob = embed_json({"name": text})
    assert not any(c in blob for c in "<>&\u2028\u2029")
    assert json.loads(blob) == {"name": text}


def test_the_title_is_text(explorer, tmp_path):
    page = explorer.to_html(tmp_path / "t.html", title="</title><script>alert(1)</script>", depth=())
    html = page.read_text()
    assert "<title>&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    assert html.count("<script") == 2


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
    assert one["traits"]["setup"]["n_images"] == 1 and len(base64.b64decode(one["pictures"])) == 32 * 32 * 3
    with pytest.raises(ValueError, match="images must be indices"):
        explorer.to_html(tmp_path / "bad.html", images=[5])


def test_the_page_describes_what_it_offers_and_nothing_else(explorer, tmp_path):
    """Issue 30: notebook 05's page described the ERF but offered only the rollout. The note names
    the through-depth views the page holds, and the selector offers exactly those."""
    def note_and_modes(**options):
        page = explorer.to_html(tmp_path / "n.html", **options)
        note = re.search(r'<p class="ucx-note">(.*?)</p>', page.read_text(), re.S)[1]
        return note, read_payload(page)["traits"]["setup"]["depth_modes"]

    note, modes = note_and_modes()
    assert modes == ["off", "rollout"] and "rollout" in note and "receptive" not in note and "ERF" not in note
    note, modes = note_and_modes(depth=())
    assert modes == ["off"] and "rollout" not in note and "receptive" not in note
    assert "Through depth" not in note
    note, modes = note_and_modes(depth=("rollout", "ERF"), images=[0])
    assert modes == ["off", "rollout", "ERF"] and "rollout" in note and "effective receptive field" in note
    note, _ = note_and_modes(depth=(), scales=["layer"])
    assert "one per layer" in note and "one per map" not in note
