"""The explorer's widgets: controls, the two pictures and the status fields.

:class:`ExplorerView` knows nothing of models or of the explorer: it is given plain data (a
:class:`Frame`: the display image, the maps as a numpy array, the grid, the query, the colour
scale, the status fields and the options of the controls) and draws it; a control moved, or a
click on the image, is reported to the callbacks registered with :meth:`on_control`
(``callback(name, value)``, with ``name`` one of ``model_name``, ``image_index``, ``layer``,
``head``, ``component``, ``query``, ``depth``, ``click``). Controls are not echoed back while a
frame is being shown. With a through-depth map in the frame (``Frame.depth``) a third picture
shows it on the input pixels, with its own colorbar.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np

from . import rendering
from .explorer_data import DEPTH_MODES


@dataclass
class Frame:
    """Everything one picture of the explorer shows, as plain data."""

    image: np.ndarray                   # float (h, w, 3) in [0, 1]
    maps: np.ndarray                    # (M', H, W): row `query` of each shown head
    heads: list[int]                    # which head each map is
    grid: tuple[int, int]
    query: tuple[int, int]
    scale: object                       # unifiedctx.viz.scales.Scale, shared by all maps
    fields: dict[str, str]              # status: layer, head, component, query, kind, scale, ...
    state: dict                         # the values the controls show
    options: dict = field(default_factory=dict)  # layers [(label, name)], heads M, components, unit
    depth: dict | None = None           # {"map": (H_in, W_in), "scale": Scale, "title": str} or None


def _image_widget():
    """A :class:`ClickableImage` when anywidget is installed, else a plain (unclickable) Image."""
    try:
        from .clickimage import ClickableImage
    except ImportError:  # anywidget missing: sliders still set the query
        return widgets.Image(format="png")
    return ClickableImage()


def status_html(fields: dict[str, str]) -> str:
    """The status fields as an HTML grid of ``name: value`` rows (one field a row)."""
    rows = "".join(f'<span class="ucx-field-name">{html.escape(k)}</span>'
                   f'<span class="ucx-field ucx-field-{html.escape(k)}">{html.escape(v)}</span>'
                   for k, v in fields.items())
    return ('<div class="ucx-explorer-status" style="display:grid;grid-template-columns:max-content auto;'
            f'column-gap:10px;font-family:monospace;font-size:12px">{rows}</div>')


class ExplorerView:
    """The widgets of one explorer.

    Parameters
    ----------
    model_names, n_images:
        The models offered (a dropdown when several) and the number of images (a slider when
        several).
    image_hw, panel:
        Size of the images, and of the longer side of each picture in pixels.
    alpha:
        Opacity of the maps over the (grey) image.
    """

    def __init__(self, model_names: list[str], n_images: int, image_hw: tuple[int, int], panel: int,
                 alpha: float):
        self._callbacks: list[Callable[[str, object], None]] = []
        self._syncing = False
        self._luts: dict[str, np.ndarray] = {}
        self.last_depth: np.ndarray | None = None
        self.alpha = float(alpha)
        scale = panel / max(image_hw)
        self.panel_hw = (max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale)))
        self.panel = int(panel)

        self.image = _image_widget()
        self.image.add_class("ucx-explorer-image")
        if hasattr(self.image, "on_click"):
            self.image.on_click(lambda x, y: self._emit("click", (x, y)))
        self.map = widgets.Image(format="png")
        self.map.add_class("ucx-explorer-map")
        self.depth_map = widgets.Image(format="png", layout=widgets.Layout(display="none"))
        self.depth_map.add_class("ucx-explorer-depth")
        self.label = widgets.HTML()
        self.label.add_class("ucx-explorer-label")
        style = {"description_width": "70px"}
        self.model = widgets.Dropdown(options=list(model_names), description="model", style=style)
        self.image_slider = widgets.IntSlider(min=0, max=n_images - 1, description="image",
                                              style=style, continuous_update=False)
        self.layer = widgets.Dropdown(description="layer", style=style,
                                      layout=widgets.Layout(width="420px"))
        self.head = widgets.Dropdown(description="head", style=style)
        self.component = widgets.ToggleButtons(description="component", style=style)
        self.depth = widgets.ToggleButtons(options=list(DEPTH_MODES), description="depth", style=style,
                                           tooltips=["no through-depth map", "rollout: the affinities "
                                                     "up to this layer composed", "effective receptive "
                                                     "field: |d y / d x|"])
        self.row = widgets.IntSlider(min=0, max=0, description="query row", style=style)
        self.col = widgets.IntSlider(min=0, max=0, description="query col", style=style)
        for control, name in ((self.model, "model_name"), (self.image_slider, "image_index"),
                              (self.layer, "layer"), (self.head, "head"), (self.component, "component"),
                              (self.depth, "depth")):
            control.observe(lambda change, name=name: self._emit(name, change["new"]), names="value")
        for control in (self.row, self.col):
            control.observe(lambda change: self._emit("query", (self.row.value, self.col.value)),
                            names="value")
        self.children = self._layout_children(len(model_names), n_images)

    def on_control(self, callback: Callable[[str, object], None]) -> None:
        """Call ``callback(name, value)`` when the user moves a control or clicks the image."""
        self._callbacks.append(callback)

    def _emit(self, name: str, value) -> None:
        if self._syncing or value is None:
            return
        for callback in list(self._callbacks):
            callback(name, value)

    def by_role(self) -> dict[str, widgets.Widget]:
        """The widgets by role: ``model``, ``image``, ``layer``, ``head``, ``component``,
        ``row``, ``col``, ``depth`` (controls), ``label``, ``picture`` (the clickable image),
        ``map``, ``depth_map``."""
        return {"model": self.model, "image": self.image_slider, "layer": self.layer,
                "head": self.head, "component": self.component, "row": self.row,
                "col": self.col, "depth": self.depth, "label": self.label, "picture": self.image,
                "map": self.map, "depth_map": self.depth_map}

    def _layout_children(self, n_models: int, n_images: int) -> list[widgets.Widget]:
        rows = []
        if n_models > 1:
            rows.append(self.model)
        if n_images > 1:
            rows.append(self.image_slider)
        rows += [
            widgets.HBox([self.layer, self.head]),
            self.component,
            self.depth,
            widgets.HBox([self.row, self.col]),
            self.label,
            widgets.HBox([self.image, self.map, self.depth_map],
                         layout=widgets.Layout(align_items="flex-start")),
        ]
        return rows

    def pixel_to_cell(self, x: float, y: float, grid: tuple[int, int]) -> tuple[int, int]:
        """Grid cell ``(row, col)`` of ``grid`` under pixel ``(x, y)`` of the image picture."""
        (h, w), (ph, pw) = grid, self.panel_hw
        row = int(np.clip(np.floor(y * h / ph), 0, h - 1))
        col = int(np.clip(np.floor(x * w / pw), 0, w - 1))
        return row, col

    def lut(self, cmap: str) -> np.ndarray:
        if cmap not in self._luts:
            self._luts[cmap] = rendering.colormap_lut(cmap)
        return self._luts[cmap]

    def maps_picture(self, frame: Frame) -> np.ndarray:
        """The maps of ``frame`` over its image, tiled and labelled by head, with their colorbar."""
        if len(frame.maps) == 1:
            size = self.panel_hw
        else:
            side = rendering.head_tile_size(len(frame.maps), self.panel, frame.grid)
            ratio = side / max(self.panel_hw)
            size = (max(1, round(self.panel_hw[0] * ratio)), max(1, round(self.panel_hw[1] * ratio)))
        lut = self.lut(frame.scale.cmap)
        tiles = rendering.map_panel(frame.image, frame.maps, size, frame.query, frame.grid, lut,
                                    self.alpha, scale=frame.scale, heads=frame.heads,
                                    unit=frame.options.get("unit", "head"))
        bar = rendering.colorbar_panel(frame.scale, lut, max(tiles.shape[0], 96))
        return rendering.beside(tiles, bar)

    def depth_picture(self, frame: Frame) -> np.ndarray | None:
        """The through-depth map of ``frame`` over its image (one panel, titled, the query cell
        outlined) with its own colorbar; ``None`` when the frame has none."""
        if frame.depth is None:
            return None
        scale, size = frame.depth["scale"], self.panel_hw
        lut = self.lut(scale.cmap)
        small = rendering.upsample(frame.image, size)
        amap = rendering.upsample(scale.normalise(frame.depth["map"]), size)
        tile = rendering.to_uint8(rendering.overlay(small, amap, lut, self.alpha))
        rendering.draw_box(tile, rendering.cell_box(frame.query, frame.grid, size), thickness=1)
        rendering.label(tile, frame.depth["title"])
        return rendering.beside(tile, rendering.colorbar_panel(scale, lut, max(tile.shape[0], 96)))

    def show(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``frame``: the image with the query marked, the maps, the through-depth map (when
        the frame has one), the status; set the controls.

        Returns the two pictures (uint8 ``(h, w, 3)``); the depth picture is :attr:`last_depth`.
        """
        picture = rendering.image_panel(frame.image, self.panel_hw, frame.query, frame.grid)
        map_picture = self.maps_picture(frame)
        self.last_depth = self.depth_picture(frame)
        self._syncing = True
        try:
            self.image.value = rendering.png_bytes(picture)
            self.map.value = rendering.png_bytes(map_picture)
            if self.last_depth is None:
                self.depth_map.layout.display = "none"
            else:
                self.depth_map.value = rendering.png_bytes(self.last_depth)
                self.depth_map.layout.display = None
            self.label.value = status_html(frame.fields)
            self._set_controls(frame)
        finally:
            self._syncing = False
        return picture, map_picture

    def _set_controls(self, frame: Frame) -> None:
        state, options = frame.state, frame.options
        self.model.value = state["model_name"]
        self.image_slider.value = state["image_index"]
        if list(self.layer.options) != options["layers"]:
            self.layer.options = options["layers"]
        self.layer.value = state["layer"]
        unit = options.get("unit", "head")
        head_options = [(f"all {unit}s", -1)] + [(f"{unit} {i}", i) for i in range(options["heads"])]
        if list(self.head.options) != head_options:
            self.head.options = head_options
        self.head.value = state["head"]
        if tuple(self.component.options) != tuple(options["components"]):
            self.component.options = list(options["components"])
        self.component.value = state["component"]
        self.depth.value = state.get("depth", "off")
        h, w = frame.grid
        self.row.max, self.col.max = h - 1, w - 1
        self.row.value, self.col.value = frame.query
