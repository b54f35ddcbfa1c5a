"""The affinity explorer live in a real browser: JupyterLab 4, Chromium, every control.

Opens ``explorer_test.ipynb`` (two seeded nano models on two images, :func:`.cases.live_explorer`),
runs it from the Run menu and waits for the widget's front end (``explorer.js``) to draw. Then,
as on the exported page (:mod:`.checks`), every control is changed (a click on the image, the
arrow keys, the query sliders, head, component, layer, image, depth, model) and each drawn map is
checked against the numbers of an explorer built the same way in the test process; the front end
asks the kernel only for what it has not got (a new layer component, image or depth map). The
redraw after a click is timed in the browser. Screenshots go to ``artifacts/explorer.png`` (the
JupyterLab window) and ``artifacts/explorer_widget.png`` (the explorer alone; copied to
``docs/figures/explorer_live.png`` when ``UNIFIEDCTX_SCREENSHOTS`` is set). Run with
``pytest -m browser``; needs ``tests/browser/setup.sh``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from .cases import live_explorer
from .checks import ROOT, Driver, exercise

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
REDRAW_MS = 50.0


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


def kernel_state(page, server) -> dict:
    """The explorer's state as the kernel holds it, printed by a new cell typed into the notebook."""
    page.locator(".jp-CodeCell").last.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type('print("KERNEL-STATE", explorer.shown)')
    page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-OutputArea-output", has_text="KERNEL-STATE")
    output.wait_for(timeout=30_000)
    wait_kernel_idle(page, server)
    return ast.literal_eval(output.inner_text().split("KERNEL-STATE", 1)[1].strip())


def test_every_control_live_in_jupyterlab(chromium_page, jupyter_lab):
    page = chromium_page
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/explorer_test.ipynb", timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        wait_kernel_idle(page, jupyter_lab)  # the first load (kernel start) can take 10 s
        run_all_cells(page)
        page.wait_for_function(f"() => document.querySelector('{ROOT}')?.dataset.ready === '1'",
                               timeout=60_000)
        wait_kernel_idle(page, jupyter_lab)
        driver = Driver(page, live_explorer())
        exercise(driver, other_model="deit")
        reached = driver.tab_order()
        for control in ("ucx-model_name", "ucx-layer", "ucx-head", "ucx-component", "ucx-depth",
                        "ucx-row", "ucx-col", "ucx-image"):
            assert any(control in c.split() for c in reached), (control, reached)
        assert kernel_state(page, jupyter_lab) == driver.explorer.shown  # the kernel followed the browser
        asked = int(driver.check()["asked"])
        for _ in range(5):  # clicks on a layer already drawn: no kernel round trip
            for fx, fy in ((0.2, 0.2), (0.8, 0.7)):
                driver.click(fx, fy)
        assert int(driver.check()["asked"]) == asked, "the front end asked the kernel for what it had"
        driver.select("layer", driver.explorer.layers[-1], layer=driver.explorer.layers[-1])
        assert int(driver.check()["asked"]) == asked + 1  # a new layer: one request
        ms = driver.median_redraw_ms()
        print(f"nano, live in JupyterLab: redraw after a click, median of {len(driver.redraw_ms)}: "
              f"{ms:.1f} ms (shared CPU)")
        assert ms < REDRAW_MS
        assert errors == [], errors
    finally:
        explorer = page.locator(ROOT)
        if explorer.count():
            explorer.first.scroll_into_view_if_needed()
            explorer.first.screenshot(path=str(ARTIFACTS / "explorer_widget.png"))
            if os.environ.get("UNIFIEDCTX_SCREENSHOTS"):
                shutil.copy(ARTIFACTS / "explorer_widget.png", ARTIFACTS.parent / "docs" / "figures" /
                            "explorer_live.png")
        page.screenshot(path=str(ARTIFACTS / "explorer.png"))
