"""The exported explorer (``AffinityExplorer.to_html``) in real Chromium, from a file:// URL.

A seeded ``container_light_nano`` (three images) is written to one HTML file and opened from
disk with every request logged: the page must make no request but the file itself. Clicking on
the image moves the query to the grid cell under the pointer and changes the map's pixels; the
selectors change layer, head and component, and the query is carried over to the new grid.
The "through depth" selector shows a second map (the query's rollout on the input pixels, the
bytes the page stored for that query) that changes with a click. Screenshots go to
``artifacts/explorer_static.png`` and ``artifacts/explorer_depth.png`` (and to
``docs/figures/`` when ``UNIFIEDCTX_SCREENSHOTS`` is set). Run with ``pytest -m browser``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
MIXED = "stages.3.blocks.0.mixer"   # container_light_nano: the Container stage, 4x4 grid
FIRST = "stages.0.blocks.0.mixer"   # a depthwise conv on 16x16

DEPTH_PIXELS = """() => { const c = document.getElementById("ucx-depth-map");
  return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data).join(","); }"""
MAP_PIXELS = """() => Array.from(document.querySelectorAll("canvas.ucx-map")).map((c) =>
  Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data).join(","))"""


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    from unifiedctx.data import load
    from unifiedctx.train import build_model
    from unifiedctx.widgets import AffinityExplorer

    data = load("mnist5k")
    model = build_model("container_light_nano", data, seed=0).eval()
    images = data.normalize(data.test_x[:3]).float()
    explorer = AffinityExplorer(model, images, layer=MIXED, head=-1, query=(0, 0))
    path = explorer.to_html(tmp_path_factory.mktemp("page") / "explorer.html")
    print(f"exported explorer: {path.stat().st_size / 1e3:.1f} kB")
    return path


def root_data(page) -> dict:
    return page.evaluate("() => Object.assign({}, document.getElementById('ucx-root').dataset)")


def wait_for(page, key: str, value: str) -> None:
    page.wait_for_function(f"() => document.getElementById('ucx-root').dataset.{key} === {value!r}",
                           timeout=10_000)


def test_static_page_is_interactive_and_self_contained(chromium_page, page_file):
    page = chromium_page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url == page_file.as_uri()
               else route.abort())
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(page_file.as_uri())
    wait_for(page, "ready", "1")
    assert root_data(page)["query"] == "0,0" and root_data(page)["layer"] == MIXED
    before = page.evaluate(MAP_PIXELS)
    assert len(before) == 2  # two attention heads, one tile each
    assert page.locator(".ucx-tile span").all_inner_texts() == ["head 0", "head 1"]

    # a click on the image moves the query to the cell under the pointer and changes the map
    box = page.locator("#ucx-image").bounding_box()
    page.mouse.click(box["x"] + 0.70 * box["width"], box["y"] + 0.40 * box["height"])
    wait_for(page, "query", "1,2")  # 4x4 grid: row int(0.4 * 4) = 1, col int(0.7 * 4) = 2
    after = page.evaluate(MAP_PIXELS)
    assert after != before, "the map's pixels did not change"
    assert page.locator(".ucx-field-query").inner_text() == "(1, 2) on a 4x4 grid"

    # another layer: the query stays on the same place of the image, on the finer grid
    page.select_option("#ucx-layer", FIRST)
    wait_for(page, "layer", FIRST)
    assert root_data(page)["query"] == "6,10" and root_data(page)["component"] == "static"
    assert len(page.evaluate(MAP_PIXELS)) == 8
    page.select_option("#ucx-head", "3")
    wait_for(page, "head", "3")
    assert page.locator(".ucx-tile span").all_inner_texts() == ["channel 3"]  # a depthwise conv
    assert "centred at 0" in page.locator(".ucx-field-scale").inner_text()
    page.select_option("#ucx-layer", MIXED)
    wait_for(page, "layer", MIXED)
    page.select_option("#ucx-component", "dynamic")
    wait_for(page, "component", "dynamic")
    assert "uniform 1/16" in page.locator("#ucx-bar-labels").inner_text()  # softmax: 1/N marked
    page.locator("#ucx-root").screenshot(path=str(ARTIFACTS / "explorer_static.png"))
    if os.environ.get("UNIFIEDCTX_SCREENSHOTS"):
        shutil.copy(ARTIFACTS / "explorer_static.png", REPO / "docs" / "figures" / "explorer_static.png")

    # through depth: a second map, the query's rollout on the input pixels, moving with a click
    assert not page.locator("#ucx-depth-map").is_visible() and root_data(page)["depthSum"] == ""
    page.select_option("#ucx-depth", "rollout")
    wait_for(page, "depth", "rollout")
    assert page.locator("#ucx-depth-map").is_visible()
    assert "uniform 1/1024" in page.locator(".ucx-field-depth-scale").inner_text()
    assert "uniform 1/1024" in page.locator("#ucx-depth-bar-labels").inner_text()
    assert root_data(page)["depthSum"] == str(stored_depth_sum(page_file, MIXED, root_data(page)["query"]))
    depth_before = page.evaluate(DEPTH_PIXELS)
    page.mouse.click(box["x"] + 0.10 * box["width"], box["y"] + 0.90 * box["height"])
    wait_for(page, "query", "3,0")
    assert page.evaluate(DEPTH_PIXELS) != depth_before, "the depth map did not follow the click"
    assert root_data(page)["depthSum"] == str(stored_depth_sum(page_file, MIXED, "3,0"))
    assert "rollout up to this layer" in page.locator(".ucx-field-depth").inner_text()
    page.locator("#ucx-root").screenshot(path=str(ARTIFACTS / "explorer_depth.png"))
    if os.environ.get("UNIFIEDCTX_SCREENSHOTS"):
        shutil.copy(ARTIFACTS / "explorer_depth.png", REPO / "docs" / "figures" / "explorer_depth.png")
    assert set(requests) == {page_file.as_uri()}, requests


def stored_depth_sum(path, layer: str, query: str) -> int:
    """The sum of the bytes the page stored for one query's rollout (image 0), read in Python."""
    import base64
    import gzip

    from unifiedctx.widgets.export import read_payload

    data = read_payload(path)
    (entry,) = [la for la in data["layers"][data["models"][0]] if la["name"] == layer]
    through = entry["depth"]["rollout"]
    row, col = map(int, query.split(","))
    u = np.frombuffer(gzip.decompress(base64.b64decode(through["maps"][0]["data"])), np.uint8)
    n = through["input"][0] * through["input"][1]
    q = row * entry["grid"][1] + col
    return int(u[q * n:(q + 1) * n].astype(np.int64).sum())
