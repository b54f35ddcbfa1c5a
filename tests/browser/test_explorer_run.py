"""A training run's explorer (``AffinityExplorer.from_run``) exported (``to_html``) in Chromium.

The epoch slider is moved to every stored epoch and the play button pressed; at each step the drawn
maps are checked against the run's snapshots (:mod:`.checks`), on the fixed colour scale and on
each epoch's own, and the query, layer and head stay where they were. The time an epoch change
takes to redraw is measured in the browser (the median is printed). A bad request (here: a page
whose catalogue names a layer it holds no maps for) shows the error in the page and stops waiting.
Screenshot: ``artifacts/explorer_run.png`` (``docs/figures/`` with ``UNIFIEDCTX_SCREENSHOTS``). Run with
``pytest -m browser``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from .cases import probe_images, watched_run
from .checks import Driver, scrub_epochs

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
REDRAW_MS = 50.0
MIXED = "stages.3.blocks.0.mixer"


def open_page(page, path: Path) -> list[str]:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.route("**/*", lambda route: route.continue_() if route.request.url == path.as_uri()
               else route.abort())
    page.goto(path.as_uri())
    page.wait_for_function("() => document.querySelector('.ucx-explorer')?.dataset.ready === '1'",
                           timeout=30_000)
    return requests


@pytest.fixture
def fresh_page(chromium_page):
    yield chromium_page
    chromium_page.unroute("**/*")
    chromium_page.goto("about:blank")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    watched_run(folder, epochs=4, seed=3)
    return folder


def test_the_epoch_slider_draws_every_epoch_of_the_run(fresh_page, run_folder, tmp_path):
    from unifiedctx.widgets import AffinityExplorer

    explorer = AffinityExplorer.from_run(run_folder, layer=MIXED, head=-1, query=(1, 2))
    assert explorer.epochs == [0, 1, 2, 3, 4] and explorer.epoch == 4 and explorer.scale_mode == "fixed"
    path = explorer.to_html(tmp_path / "run.html")
    print(f"exported run (container_light_nano, 3 probe images, 5 epochs, 3 scales): "
          f"{path.stat().st_size / 1e3:.1f} kB")
    requests = open_page(fresh_page, path)
    driver = Driver(fresh_page, explorer)
    driver.check()
    scrub_epochs(driver)
    driver.select("component", "dynamic", component="dynamic")
    driver.select("scale_mode", "layer", scale_mode="layer")  # each epoch its own scale
    scrub_epochs(driver)
    driver.select("head", 1, head=1)
    driver.select("scale_mode", "map", scale_mode="map")
    for value in explorer.epochs:
        driver.epoch(value)
    driver.click(0.9, 0.1)
    assert set(requests) == {path.as_uri()}, requests
    ms = sorted(driver.epoch_ms)
    print(f"exported run: redraw after an epoch change, median of {len(ms)}: {ms[len(ms) // 2]:.1f} ms, "
          f"max {ms[-1]:.1f} ms (shared CPU)")
    assert ms[len(ms) // 2] < REDRAW_MS
    ARTIFACTS.mkdir(exist_ok=True)
    fresh_page.locator(".ucx-explorer").screenshot(path=str(ARTIFACTS / "explorer_run.png"))
    if os.environ.get("UNIFIEDCTX_SCREENSHOTS"):
        shutil.copy(ARTIFACTS / "explorer_run.png", REPO / "docs" / "figures" / "explorer_run.png")


def test_a_bad_request_shows_its_error_in_the_page(fresh_page, tmp_path):
    """A page whose catalogue names a layer it holds no maps for (a tampered or mismatched page): the
    front end asks for it, the page's stand-in for the kernel answers with an error, and the page
    shows it (no endless wait: nothing is left waiting); the next good state clears it."""
    from unifiedctx.widgets import AffinityExplorer
    from unifiedctx.widgets.export import read_payload

    from .cases import seeded

    explorer = AffinityExplorer(seeded("deit_tiny_nano", 0), probe_images(2))
    path = explorer.to_html(tmp_path / "page.html", depth=())
    data = read_payload(path)
    catalog = data["traits"]["catalog"]
    model = next(iter(catalog["models"]))
    ghost = {**catalog["models"][model]["layers"][0], "name": "ghost", "label": "ghost"}
    catalog["models"][model]["layers"].append(ghost)
    text = path.read_text()
    start = text.index('id="ucx-data">') + len('id="ucx-data">')
    end = text.index("</script>", start)
    from unifiedctx.widgets.export import embed_json

    path.write_text(text[:start] + embed_json(data) + text[end:])
    open_page(fresh_page, path)
    root = fresh_page.locator(".ucx-explorer")
    fresh_page.select_option(".ucx-explorer select.ucx-layer", "ghost")
    error = root.locator(".ucx-error")
    error.wait_for(state="visible", timeout=10_000)
    assert re.search(r"holds no maps for .*ghost", error.inner_text()), error.inner_text()
    assert root.get_attribute("data-waiting") == "0" and root.locator(".ucx-busy").is_hidden()
    fresh_page.select_option(".ucx-explorer select.ucx-layer", explorer.layers[0])
    fresh_page.wait_for_function("() => document.querySelector('.ucx-explorer').dataset.layer === "
                                 + json.dumps(explorer.layers[0]))
    assert error.is_hidden()
