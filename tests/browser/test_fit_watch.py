"""A run made by ``fit(..., watch=probe, live=True)`` in Chromium: its live view in JupyterLab while the
cell trains, and its snapshots' explorer (``from_run``), live and exported.

* ``fit_test.ipynb`` trains a nano Container on real digits with ``live=True`` (``cases.watched_fit``):
  the view must grow while the cell still runs (the kernel reads nothing then); once the cell is done
  every drawn map, chart and epoch is checked against a twin view fed by the same ``fit`` in the test
  process (one thread: the same numbers), on several heads and colour scales. Screenshot:
  ``artifacts/live_view_fit.png``, copied to ``docs/figures/live_view.png`` (the README's) when
  ``UNIFIEDCTX_SCREENSHOTS`` is set.
* The run's explorer: the epoch slider to every epoch and the play button, each drawn map checked
  against the snapshots, in JupyterLab (a new epoch is asked of the kernel) and on the exported page
  (every epoch embedded); the time an epoch change takes to redraw is printed.

Run with ``pytest -m browser``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .cases import digits, watched_fit
from .checks import LIVE, ROOT, Driver, check_live, scrub_epochs
from .test_explorer_browser import run_all_cells, wait_kernel_idle
from .test_explorer_run import open_page

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"
EXPLORER_STATE = {"layer": "stages.0.blocks.0.mixer", "component": "dynamic", "head": -1, "query": (5, 9)}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The same run in the test process, feeding a LiveView of its own: ``(view, run folder)``."""
    from unifiedctx.widgets import LiveView

    folder = tmp_path_factory.mktemp("twin") / "run_fit"
    view = LiveView(digits()[1])
    watched_fit(folder, live=view)
    return view, folder


def test_the_live_view_of_fit_grows_while_the_cell_trains(chromium_page, jupyter_lab, twin):
    from unifiedctx.widgets import AffinityExplorer

    view, _ = twin
    page = chromium_page
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    shown = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    live_root, run_root = f"{shown} {LIVE}", f"{shown} {ROOT}:not(.ucx-live)"
    try:
        page.goto(f"{jupyter_lab.url}/lab/tree/fit_test.ipynb", timeout=60_000)
        page.wait_for_selector(f"{shown} .jp-Notebook .jp-Cell", timeout=60_000)
        wait_kernel_idle(page, jupyter_lab)
        run_all_cells(page)
        page.wait_for_function(f"() => document.querySelector('{live_root}')?.dataset.epochs?.includes(',')",
                               timeout=120_000)
        # while fit's cell runs (its prompt shows [*]: the server's execution_state was seen reading idle
        # then, so the prompt is what is watched), the view must grow
        prompts = page.locator(f"{shown} .jp-CodeCell .jp-InputPrompt")
        seen = set()
        while "*" in prompts.first.inner_text():
            seen.add(page.locator(live_root).get_attribute("data-epochs") or "")
            page.wait_for_timeout(150)
        assert len({e for e in seen if e}) >= 2, f"the view did not grow while fit trained: {seen}"
        page.wait_for_function(f"() => [...document.querySelectorAll('{shown} .jp-CodeCell .jp-InputPrompt')]"
                               ".every((p) => !p.textContent.includes('*'))", timeout=120_000)
        wait_kernel_idle(page, jupyter_lab)
        assert view.epochs == [0.0, 1.0, 2.0, 3.0, 4.0]  # maps every epoch (within one: off, by the clock)
        data = check_live(page, view, root=live_root)
        points = data["points"].split(",")  # the loss chart: 3 points within each epoch, 3 curves a epoch
        assert int(points[0]) == 4 * 3 + 2 * 4, data["points"]
        for head, scale in ((1, "fixed"), (0, "layer"), (1, "map")):  # drawn from what fit pushed
            page.locator(f"{live_root} select.ucx-head").select_option(str(head))
            page.locator(f"{live_root} select.ucx-scale_mode").select_option(scale)
            view.show(head=head, scale_mode=scale)
            check_live(page, view, root=live_root)
        page.locator(f"{live_root} select.ucx-head").select_option("0")
        page.locator(f"{live_root} select.ucx-scale_mode").select_option("fixed")
        view.show(head=0, scale_mode="fixed")
        check_live(page, view, root=live_root)
        page.locator(live_root).scroll_into_view_if_needed()
        page.locator(live_root).screenshot(path=str(ARTIFACTS / "live_view_fit.png"))
        # the run's explorer, live: every epoch of the snapshots fit stored
        explorer = AffinityExplorer.from_run(jupyter_lab.root / "run_fit", **EXPLORER_STATE)
        assert explorer.epochs == [0, 1, 2, 3, 4]
        driver = Driver(page, explorer, root=run_root)
        page.locator(run_root).scroll_into_view_if_needed()
        driver.check()
        scrub_epochs(driver)
        ms = sorted(driver.epoch_ms)
        print(f"fit's run explorer live in JupyterLab: redraw after an epoch change, median of {len(ms)}: "
              f"{ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms (shared CPU; a new epoch asks the kernel)")
        assert errors == [], errors
    finally:
        if os.environ.get("UNIFIEDCTX_SCREENSHOTS") and (ARTIFACTS / "live_view_fit.png").exists():
            shutil.copy(ARTIFACTS / "live_view_fit.png", FIGURES / "live_view.png")
        page.screenshot(path=str(ARTIFACTS / "fit_lab.png"))


def test_the_exported_explorer_of_a_fit_run_draws_every_epoch(chromium_page, twin, tmp_path):
    from unifiedctx.widgets import AffinityExplorer

    _, folder = twin
    explorer = AffinityExplorer.from_run(folder, **EXPLORER_STATE)
    path = explorer.to_html(tmp_path / "run.html")
    print(f"exported fit run (container_nano, 3 digits, 5 epochs): {path.stat().st_size / 1e3:.1f} kB")
    page = chromium_page
    requests = open_page(page, path)
    try:
        driver = Driver(page, explorer)
        driver.check()
        scrub_epochs(driver)
        driver.select("scale_mode", "layer", scale_mode="layer")
        driver.click(0.3, 0.6)
        for epoch in explorer.epochs:
            driver.epoch(epoch)
        assert set(requests) == {path.as_uri()}, requests  # nothing loaded from elsewhere
        ms = sorted(driver.epoch_ms)
        print(f"fit's run explorer exported: redraw after an epoch change, median of {len(ms)}: "
              f"{ms[len(ms) // 2]:.1f} ms, max {ms[-1]:.1f} ms (shared CPU)")
    finally:
        page.unroute("**/*")
        page.goto("about:blank")
