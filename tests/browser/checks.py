"""Drive the explorer's one front end in Chromium and check what it draws against ExplorerData.

The same routine runs live in JupyterLab and on the exported page. The test process holds an
explorer built like the browser's (:mod:`.cases`); each step changes one control in the browser,
the same change is made on the local explorer through its Python API (its rules, in Python), and
the browser's state must be the local one (so the front end's transitions agree with the kernel's),
its status fields the local ``status``, and the pixels of every drawn map the colours that the
local ``ExplorerData`` gives: at the centre of each grid cell, ``(1 - alpha) * grey + alpha *
lut[rint(255 * normalise(a))]`` within 1, with ``a`` the affinity row of the query.
"""

from __future__ import annotations

import statistics

import numpy as np
from matplotlib import colormaps

ROOT = ".ucx-explorer"
CANVASES = """(root) => Array.from(root.querySelectorAll(SELECTOR)).map((c) => ({
  head: c.dataset.head, w: c.width, h: c.height,
  data: Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data) }))"""
STATUS = """(root) => Array.from(root.querySelectorAll(".ucx-status dt")).map((dt) =>
  [dt.textContent, dt.nextElementSibling.textContent])"""
MATCHES = """(arg) => { const r = document.querySelector(arg.root);
  return Boolean(r) && Object.entries(arg.want).every(([k, v]) => r.dataset[k] === v); }"""


def lut(name: str) -> np.ndarray:
    return (np.clip(colormaps[name](np.linspace(0, 1, 256))[:, :3], 0, 1) * 255 + 0.5).astype(np.uint8)


def want_state(explorer) -> dict:
    return {"query": f"{explorer.query[0]},{explorer.query[1]}", "layer": explorer.layer,
            "component": explorer.component, "head": str(explorer.head), "model": explorer.model_name,
            "image": str(explorer.image_index), "depth": explorer.depth, "scaleMode": explorer.scale_mode,
            "epoch": "null" if explorer.epoch is None else str(explorer.epoch)}


def expected_colours(picture, index, size, grid, alpha, lut_name, skip=None):
    """``(points, rgb)``: the centre pixel of each grid cell of a ``size`` canvas and the colour
    the map ``index`` (uint8 colormap positions on ``grid``) must have there over the grey version
    of ``picture`` (the uint8 RGB image the front end was sent)."""
    (th, tw), (h, w) = size, grid
    picture = picture.astype(np.float64)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    keep = np.ones((h, w), bool) if skip is None else ~((rows == skip[0]) & (cols == skip[1]))
    ys, xs = ((rows + 0.5) * th / h).astype(int), ((cols + 0.5) * tw / w).astype(int)
    big_h, big_w = picture.shape[:2]
    grey = picture[ys * big_h // th, xs * big_w // tw].mean(axis=-1)
    colour = (1 - alpha) * grey[..., None] + alpha * lut(lut_name)[index].astype(np.float64)
    return (ys[keep], xs[keep]), colour[keep]


LABELS = """(root) => { const box = root.getBoundingClientRect();
  let clip = root.parentElement;  // the nearest ancestor that clips what overflows it
  while (clip && getComputedStyle(clip).overflowX === "visible") clip = clip.parentElement;
  const edge = clip ? Math.min(box.right, clip.getBoundingClientRect().right) : box.right;
  return Array.from(root.querySelectorAll(".ucx-bar-labels span")).filter((s) => s.offsetParent).map((s) => {
    const r = s.getBoundingClientRect();
    return { text: s.textContent, left: r.left, right: r.right, edge,
             inside: r.left >= box.left && r.right <= edge, whole: s.scrollWidth <= Math.ceil(r.width) + 1 };
  }); }"""


def labels_fit(page, root: str) -> list[dict]:
    """Every colorbar label of the explorer at ``root``: its text, and whether it is whole and inside
    both the widget's box and whatever clips the widget (JupyterLab's output area)."""
    return page.locator(root).first.evaluate(LABELS)


class Driver:
    """One explorer in a browser ``page`` (under ``root``) and its twin in the test process."""

    def __init__(self, page, explorer, root: str = ROOT):
        self.page, self.explorer, self.root = page, explorer, root
        self.redraw_ms: list[float] = []
        self.epoch_ms: list[float] = []
        self.checked = 0

    def node(self, selector: str):
        return self.page.locator(f"{self.root} {selector}")

    def wait(self) -> dict:
        """Wait until the browser shows the local explorer's state; return its dataset."""
        self.page.wait_for_function(MATCHES, arg={"root": self.root, "want": want_state(self.explorer)},
                                    timeout=30_000)
        return self.page.locator(self.root).evaluate("(r) => Object.assign({}, r.dataset)")

    def check(self) -> dict:
        """The browser's state, status and maps against the local explorer's numbers."""
        data = self.wait()
        ex = self.explorer
        root = self.page.locator(self.root)
        assert dict(root.evaluate(STATUS)) == ex.status
        tiles = root.evaluate(CANVASES.replace("SELECTOR", '"canvas.ucx-map"'))
        heads = list(range(ex.heads)) if ex.head == -1 else [ex.head]
        assert [int(t["head"]) for t in tiles] == heads
        a = ex.data.affinity(ex.model_name, ex._maps_image(), ex.layer, ex.component, ex.epoch)
        (h, w), scales = ex.grid, ex.map_scales()  # every map's scale: shared, or its own (scale_mode "map")
        q = ex.query[0] * w + ex.query[1]
        alpha = ex.setup["alpha"]
        for tile, m, scale in zip(tiles, heads, scales):
            index = np.rint(scale.normalise(a[m, q]) * 255).astype(int).reshape(h, w)
            px = np.asarray(tile["data"], np.float64).reshape(tile["h"], tile["w"], 4)
            (ys, xs), want = expected_colours(ex._display[ex.image_index], index, (tile["h"], tile["w"]),
                                              (h, w), alpha,
                                              ex.cmap or scale.cmap if not scale.signed else scale.cmap,
                                              skip=ex.query)
            assert np.abs(px[ys, xs, :3] - want).max() <= 1.0, f"head {m}: the drawn map is not the data"
        assert int(data["mapSum"]) == sum(int(np.rint(scale.normalise(a[m, q]) * 255).sum())
                                          for m, scale in zip(heads, scales))
        assert self.node(".ucx-depth-panel").is_visible() == (ex.depth != "off")
        if ex.depth != "off":
            self.check_depth(root)
        self.checked += 1
        return data

    def check_depth(self, root) -> None:
        ex = self.explorer
        found = ex.depth_data()
        m = found["map"]
        vmax = max(float(m.max()), 1.0 / m.size)
        index = np.rint(np.clip(m / vmax, 0, 1) * 255).astype(int)
        (canvas,) = root.evaluate(CANVASES.replace("SELECTOR", '"canvas.ucx-depth-map"'))
        px = np.asarray(canvas["data"], np.float64).reshape(canvas["h"], canvas["w"], 4)
        (ys, xs), want = expected_colours(ex._display[ex.image_index], index, (canvas["h"], canvas["w"]),
                                          m.shape, ex.setup["alpha"], "magma")
        # the query cell's outline covers a few input pixels: compare the others
        box = _cell_pixels(ex.query, ex.grid, (canvas["h"], canvas["w"]))
        keep = ~box[ys, xs]
        assert np.abs(px[ys, xs, :3][keep] - want[keep]).max() <= 1.0, "the drawn depth map is not the data"

    # ------------------------------------------------------------------ steps
    def click(self, fx: float, fy: float) -> None:
        self.node("canvas.ucx-image").scroll_into_view_if_needed()
        box = self.node("canvas.ucx-image").bounding_box()
        self.page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        h, w = self.explorer.grid
        self.explorer.query = (int(fy * h), int(fx * w))
        data = self.check()
        self.redraw_ms.append(float(data["redrawMs"]))

    def key(self, key: str, move) -> None:
        self.node("canvas.ucx-image").focus()
        self.page.keyboard.press(key)
        h, w = self.explorer.grid
        r, c = self.explorer.query
        self.explorer.query = (min(max(r + move[0], 0), h - 1), min(max(c + move[1], 0), w - 1))
        self.check()

    def select(self, control: str, value, **local) -> None:
        self.node(f"select.ucx-{control}").select_option(str(value))
        self.explorer.show(**local)
        self.check()

    def slide(self, axis: str, value: int) -> None:
        self.node(f"input.ucx-{axis}").fill(str(value))
        r, c = self.explorer.query
        self.explorer.query = (value, c) if axis == "row" else (r, value)
        self.check()

    def epoch(self, value: int) -> float:
        """Move the epoch slider to ``value`` (the query, layer and head stay); returns the redraw's ms."""
        index = self.explorer.epochs.index(value)
        self.node("input.ucx-epoch").fill(str(index))
        self.explorer.epoch = value
        data = self.check()
        self.epoch_ms.append(float(data["redrawMs"]))
        return self.epoch_ms[-1]

    def tab_order(self, count: int = 12) -> list[str]:
        """The classes of the elements that Tab reaches, from the first control on."""
        self.node("select").first.focus()
        seen = []
        for _ in range(count):
            seen.append(self.page.evaluate("() => document.activeElement.className"))
            self.page.keyboard.press("Tab")
        return seen

    def median_redraw_ms(self) -> float:
        return statistics.median(self.redraw_ms)


def _cell_pixels(query, grid, size) -> np.ndarray:
    (r, c), (gh, gw), (h, w) = query, grid, size
    mask = np.zeros(size, bool)
    mask[r * h // gh:(r + 1) * h // gh, c * w // gw:(c + 1) * w // gw] = True
    return mask


def scrub_epochs(driver: Driver) -> None:
    """A run's epochs: the slider to every epoch (and back to the first), then the play button to the
    end, each drawn map checked against the snapshots; the query, layer and head never move."""
    ex = driver.explorer
    before = (ex.query, ex.layer, ex.head)
    for value in [*ex.epochs[::-1], ex.epochs[-1], ex.epochs[0]]:
        driver.epoch(value)
        assert (ex.query, ex.layer, ex.head) == before
    driver.node("button.ucx-play").click()
    ex.epoch = ex.epochs[-1]
    driver.wait()  # played to the last epoch
    assert driver.node("button.ucx-play").get_attribute("aria-label") == "play the epochs"  # stopped there
    driver.check()


def exercise(driver: Driver, other_model: str | None = None) -> None:
    """Every control once (twice for the query), each checked against the local explorer."""
    ex = driver.explorer
    driver.check()
    driver.click(0.70, 0.40)
    driver.key("ArrowRight", (0, 1))
    driver.key("ArrowDown", (1, 0))
    driver.key("ArrowUp", (-1, 0))
    driver.key("ArrowLeft", (0, -1))
    driver.slide("row", ex.grid[0] - 1)
    driver.slide("col", 0)
    driver.select("head", -1, head=-1)
    for component in ex.components:
        driver.select("component", component, component=component)
    first = ex.layers[0]
    driver.select("layer", first, layer=first)             # the query is carried to the new grid
    if ex.heads > 1:
        driver.select("head", 1, head=1)
    driver.select("layer", ex.layers[-1], layer=ex.layers[-1])
    if len(ex.data.images) > 1 and driver.node("select.ucx-image_index").is_visible():
        driver.select("image_index", 1, image_index=1)
    if driver.node("select.ucx-scale_mode").is_visible():
        driver.select("scale_mode", "map", scale_mode="map")   # each map on its own scale
        driver.click(0.55, 0.3)
        driver.select("scale_mode", ex.setup["scale_modes"][0], scale_mode=ex.setup["scale_modes"][0])
    if driver.node("select.ucx-depth").is_visible():
        driver.select("depth", "rollout", depth="rollout")
        driver.click(0.10, 0.90)                            # the depth map follows the query
        driver.select("depth", "off", depth="off")
    if other_model is not None:
        driver.select("model_name", other_model, model_name=other_model)
        driver.click(0.30, 0.60)


# ------------------------------------------------------------------ the live view (widgets/live.py)
LIVE = ".ucx-explorer.ucx-live"


def check_live(page, live, root: str = LIVE) -> dict:
    """The live view in the browser against ``live``, a twin fed the same pushes in the test process:
    its state, the epochs drawn, the points of every chart, and every drawn map's colours."""
    from unifiedctx.widgets.front import display_image

    s = live.shown
    want = {"layer": s["layer"], "component": s["component"], "query": f"{s['query'][0]},{s['query'][1]}",
            "head": str(s["head"]), "scaleMode": s["scale_mode"], "fresh": "1",
            "epochs": ",".join(f"{e:g}" for e in live.epochs)}
    page.wait_for_function(MATCHES, arg={"root": root, "want": want}, timeout=60_000)
    node = page.locator(root)
    data = node.evaluate("(r) => Object.assign({}, r.dataset)")
    panels = live.curves["panels"]
    assert data["series"] == ",".join(str(len(p["series"])) for p in panels)
    assert data["points"] == ",".join(str(sum(len(x["x"]) for x in p["series"])) for p in panels)
    frame = live.frame()  # (E, B, M, h, w) colour indices
    h, w = live.frames["grid"]
    shown = [float(e) for e in data["shownEpochs"].split(",")]
    canvases = node.evaluate(CANVASES.replace("SELECTOR", '"canvas.ucx-map"').replace(
        "head: c.dataset.head", "epoch: c.dataset.epoch, image: c.dataset.image"))
    assert len(canvases) == len(shown) * len(live._images)
    alpha = live.setup["alpha"]
    total = 0
    for canvas in canvases:
        e, b = live.epochs.index(float(canvas["epoch"])), int(canvas["image"])
        index = frame[e, b, s["head"]].astype(int)
        total += int(index.sum())
        fixed = s["scale_mode"] == "fixed"
        lut_name = live.frames["fixed"]["cmap"] if fixed else live.frames["layer"]["cmap"][e]
        px = np.asarray(canvas["data"], np.float64).reshape(canvas["h"], canvas["w"], 4)
        (ys, xs), colours = expected_colours(display_image(live._images[b]), index,
                                             (canvas["h"], canvas["w"]), (h, w), alpha, lut_name,
                                             skip=tuple(s["query"]))
        assert np.abs(px[ys, xs, :3] - colours).max() <= 1.0, f"epoch {canvas['epoch']}, image {b}"
    assert int(data["mapSum"]) == total
    return data
