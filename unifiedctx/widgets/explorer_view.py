"""The explorer's widgets: the two pictures, the label and the controls, and drawing them.

:class:`ExplorerView` builds the widgets, lays them out, draws the image and the maps as
PNGs, and shows the explorer's traits in the controls; a control moved in the browser sets
the explorer's trait (and is not echoed back while the controls are being synced).
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np

from . import rendering


def _image_widget():
    """A :class:`ClickableImage` when anywidget is installed, else a plain (unclickable) Image."""
    try:
        from .clickimage import ClickableImage
    except ImportError:  # anywidget missing: sliders still set the query
        return widgets.Image(format="png")
    return ClickableImage()


class ExplorerView:
    """The widgets of one :class:`AffinityExplorer`, kept in step with its traits.

    Parameters
    ----------
    explorer:
        The explorer whose traits the controls set and show.
    model_names, n_images:
        The models offered (a dropdown when several) and the number of images (a slider when
        several).
    image_hw, panel:
        Size of the images, and of the longer side of each picture in pixels.
    cmap, alpha:
        Colormap of the maps and their opacity over the (grey) image.
    """

    def __init__(self, explorer, model_names: list[str], n_images: int, image_hw: tuple[int, int],
                 panel: int, cmap: str, alpha: float):
        self._explorer = explorer
        self._syncing = False
        self.lut = rendering.colormap_lut(cmap)
        self.alpha = float(alpha)
        scale = panel / max(image_hw)
        self.panel_hw = (max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale)))
        self.panel = int(panel)

        self.image = _image_widget()
        self.image.add_class("ucx-explorer-image")
        if hasattr(self.image, "on_click"):
            self.image.on_click(explorer._on_image_click)
        self.map = widgets.Image(format="png")
        self.map.add_class("ucx-explorer-map")
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
        self.row = widgets.IntSlider(min=0, max=0, description="query row", style=style)
        self.col = widgets.IntSlider(min=0, max=0, description="query col", style=style)
        for control, handler in ((self.model, self._from_model), (self.image_slider, self._from_image),
                                 (self.layer, self._from_layer), (self.head, self._from_head),
                                 (self.component, self._from_component),
                                 (self.row, self._from_query), (self.col, self._from_query)):
            control.observe(handler, names="value")
        self.children = self._layout_children(len(model_names), n_images)

    def by_role(self) -> dict[str, widgets.Widget]:
        """The widgets by role: ``model``, ``image``, ``layer``, ``head``, ``component``,
        ``row``, ``col`` (controls), ``label``, ``picture`` (the clickable image), ``map``."""
        return {"model": self.model, "image": self.image_slider, "layer": self.layer,
                "head": self.head, "component": self.component, "row": self.row,
                "col": self.col, "label": self.label, "picture": self.image, "map": self.map}

    def _layout_children(self, n_models: int, n_images: int) -> list[widgets.Widget]:
        rows = []
        if n_models > 1:
            rows.append(self.model)
        if n_images > 1:
            rows.append(self.image_slider)
        rows += [
            widgets.HBox([self.layer, self.head]),
            self.component,
            widgets.HBox([self.row, self.col]),
            self.label,
            widgets.HBox([self.image, self.map], layout=widgets.Layout(align_items="flex-start")),
        ]
        return rows

    # ------------------------------------------------------------------ controls -> traits
    def _from_model(self, change):
        if not self._syncing:
            self._explorer.model_name = change["new"]

    def _from_image(self, change):
        if not self._syncing:
            self._explorer.image_index = change["new"]

    def _from_layer(self, change):
        if not self._syncing and change["new"] is not None:
            self._explorer.layer = change["new"]

    def _from_head(self, change):
        if not self._syncing and change["new"] is not None:
            self._explorer.head = change["new"]

    def _from_component(self, change):
        if not self._syncing and change["new"] is not None:
            self._explorer.component = change["new"]

    def _from_query(self, change):
        if not self._syncing:
            self._explorer.query = (self.row.value, self.col.value)

    # ------------------------------------------------------------------ traits -> widgets
    def sync(self) -> None:
        """Show the explorer's traits in the controls (without echoing back)."""
        ex = self._explorer
        self._syncing = True
        try:
            layout = ex._layout()
            info = ex._info(ex.layer)
            self.model.value = ex.model_name
            self.image_slider.value = ex.image_index
            layer_options = [(f"{name}  [{i['kind']}, {i['grid'][0]}x{i['grid'][1]}]", name)
                             for name, i in layout.items()]
            if list(self.layer.options) != layer_options:
                self.layer.options = layer_options
            self.layer.value = ex.layer
            m = info["heads"][ex.component]
            head_options = [("all heads", -1)] + [(f"head {i}", i) for i in range(m)]
            if list(self.head.options) != head_options:
                self.head.options = head_options
            self.head.value = ex.head
            if tuple(self.component.options) != tuple(info["components"]):
                self.component.options = list(info["components"])
            self.component.value = ex.component
            h, w = info["grid"]
            self.row.max, self.col.max = h - 1, w - 1
            self.row.value, self.col.value = ex.query
        finally:
            self._syncing = False

    def draw(self, image: np.ndarray, maps: np.ndarray, grid: tuple[int, int],
             query: tuple[int, int], label_html: str) -> tuple[np.ndarray, np.ndarray]:
        """Draw the image with the query marked, the maps over it and the label.

        ``maps`` is ``(M', H, W)``: one map fills a picture as big as the image's; several are
        tiled as a grid of heads. Returns the two pictures (uint8 ``(h, w, 3)``).
        """
        picture = rendering.image_panel(image, self.panel_hw, query, grid)
        if len(maps) == 1:
            size = self.panel_hw
        else:
            side = rendering.head_tile_size(len(maps), self.panel, grid)
            scale = side / max(self.panel_hw)
            size = (max(1, round(self.panel_hw[0] * scale)), max(1, round(self.panel_hw[1] * scale)))
        map_picture = rendering.map_panel(image, maps, size, query, grid, self.lut, self.alpha)
        self.image.value = rendering.png_bytes(picture)
        self.map.value = rendering.png_bytes(map_picture)
        self.label.value = label_html
        return picture, map_picture
