"""The affinity explorer in a real browser: JupyterLab 4, Chromium, a click on the image.

Opens ``explorer_test.ipynb`` (a seeded ``container_nano`` on an 8x8 layer, head 0, query
(0, 0)), runs it from the Run menu, waits for the explorer and an idle kernel, clicks on the
explorer's image at a known pixel and checks that the status's query field now names the grid cell under
that pixel and that the map picture (its bytes, not only its URL) changed. A screenshot goes
to ``artifacts/explorer.png`` (the JupyterLab window) and ``artifacts/explorer_widget.png``
(the explorer alone). Run with ``pytest -m browser``; needs ``tests/browser/setup.sh``.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
LABEL = re.compile(r"\((\d+), (\d+)\) on a (\d+)x(\d+) grid")
IMAGE = ".ucx-explorer-image img.ucx-clickable-img"
MAP = "img.ucx-explorer-map"
LABEL_SEL = ".ucx-explorer-label .ucx-field-query"  # the status field that states the query
#: where to click, as fractions (x, y) of the drawn image: inside cell (3, 5) of an 8x8 grid
CLICK = (0.70, 0.40)

# the bytes behind an <img>'s src (a blob: URL), base64, read inside the page
READ_IMG = """async (selector) => {
  const img = document.querySelector(selector);
  const buffer = await (await fetch(img.src)).arrayBuffer();
  let s = ""; const bytes = new Uint8Array(buffer);
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return {src: img.src, data: btoa(s), width: img.naturalWidth, height: img.naturalHeight};
}"""


def wait_kernel_idle(page, server, timeout: float = 60.0) -> None:
    """Wait until the notebook's toolbar and the server both say the kernel is idle."""
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout * 1e3)
    deadline = time.monotonic() + timeout
    while True:
        kernels = server.kernels()
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"kernel not idle after {timeout:.0f} s: {kernels}")
        time.sleep(0.2)


def run_all_cells(page) -> None:
    """Run > Run All Cells, from the menu bar like a person would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def label_of(page) -> str:
    return page.locator(LABEL_SEL).inner_text()


def test_click_on_the_image_moves_the_query(chromium_page, jupyter_lab):
    page = chromium_page
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/explorer_test.ipynb", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        wait_kernel_idle(page, jupyter_lab)  # the first load (kernel start) can take 10 s
        run_all_cells(page)
        page.wait_for_selector(IMAGE, state="visible", timeout=60_000)
        page.wait_for_function(f"() => document.querySelector('{IMAGE}').naturalWidth > 0 && "
                               f"document.querySelector('{MAP}') !== null", timeout=30_000)
        wait_kernel_idle(page, jupyter_lab)

        before_label = label_of(page)
        m = LABEL.search(before_label)
        assert m, f"no query in the label: {before_label!r}"
        assert (int(m[1]), int(m[2])) == (0, 0), before_label
        grid = (int(m[3]), int(m[4]))
        before_map = page.evaluate(READ_IMG, MAP)
        before_image = page.evaluate(READ_IMG, IMAGE)

        box = page.locator(IMAGE).bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0
        start = time.monotonic()
        page.mouse.click(box["x"] + CLICK[0] * box["width"], box["y"] + CLICK[1] * box["height"])
        expected = (int(CLICK[1] * grid[0]), int(CLICK[0] * grid[1]))
        text = f"({expected[0]}, {expected[1]}) on a {grid[0]}x{grid[1]} grid"
        page.wait_for_function(f"() => document.querySelector('{LABEL_SEL}').innerText.includes({text!r})",
                               timeout=15_000)
        print(f"click -> new label in the browser: {1e3 * (time.monotonic() - start):.0f} ms")
        page.wait_for_function(f"(old) => document.querySelector('{MAP}').src !== old",
                               arg=before_map["src"], timeout=15_000)
        wait_kernel_idle(page, jupyter_lab)

        after_label = label_of(page)
        after_map = page.evaluate(READ_IMG, MAP)
        after_image = page.evaluate(READ_IMG, IMAGE)
        assert text in after_label, after_label
        assert after_map["src"] != before_map["src"]
        assert after_map["data"] != before_map["data"], "the map's picture did not change"
        assert after_image["data"] != before_image["data"], "the query marker did not move"
        assert base64.b64decode(after_map["data"])[:8] == b"\x89PNG\r\n\x1a\n"
        # the fallback sliders followed the click
        readouts = page.locator(".ucx-affinity-explorer .widget-readout").all_inner_texts()
        assert str(expected[0]) in readouts and str(expected[1]) in readouts, readouts
    finally:
        explorer = page.locator(".ucx-affinity-explorer")
        if explorer.count():
            explorer.first.scroll_into_view_if_needed()
            explorer.first.screenshot(path=str(ARTIFACTS / "explorer_widget.png"))
        page.screenshot(path=str(ARTIFACTS / "explorer.png"))
    assert (ARTIFACTS / "explorer.png").stat().st_size > 0
