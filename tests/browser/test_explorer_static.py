"""The exported explorer (``AffinityExplorer.to_html``) in real Chromium, from a file:// URL.

A seeded ``container_light_nano`` (three images) is written to one HTML file and opened from
disk with every request logged: the page must make no request but the file itself. Clicking on
the image moves the query to the grid cell under the pointer and changes the map's pixels; the
selectors change layer, head and component, and the query is carried over to the new grid.
A screenshot goes to ``artifacts/explorer_static.png`` (and ``docs/figures/explorer_static.png``
when ``UNIFIEDCTX_SCREENSHOTS`` is set). Run with ``pytest -m browser``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
MIXED = "stages.3.blocks.0.mixer"   # container_light_nano: the Container stage, 4x4 grid
FIRST = "stages.0.blocks.0.mixer"   # a depthwise conv on 16x16

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
    assert page.locator(".ucx-tile span").all_inner_texts() == ["head 3"]
    assert "centred at 0" in page.locator(".ucx-field-scale").inner_text()
    page.select_option("#ucx-layer", MIXED)
    wait_for(page, "layer", MIXED)
    page.select_option("#ucx-component", "dynamic")
    wait_for(page, "component", "dynamic")
    assert "uniform 1/16" in page.locator("#ucx-bar-labels").inner_text()  # softmax: 1/N marked
    page.locator("#ucx-root").screenshot(path=str(ARTIFACTS / "explorer_static.png"))
    if os.environ.get("UNIFIEDCTX_SCREENSHOTS"):
        shutil.copy(ARTIFACTS / "explorer_static.png", REPO / "docs" / "figures" / "explorer_static.png")
    assert set(requests) == {page_file.as_uri()}, requests
