"""``AffinityExplorer``: click on an image, see where each layer and head takes context from.

Every mixer in this library aggregates context through an affinity ``A_m`` (``(N, N)`` per
head m): row ``q`` of ``A_m`` says how much the token at grid position ``q`` takes from
every other token. Folded onto the ``H x W`` grid of its layer, that row is a map over the
image. The explorer shows it::

    from unifiedctx.widgets import AffinityExplorer
    explorer = AffinityExplorer(model, images)            # or {"container": m1, "deit": m2}
    explorer                                               # in JupyterLab: click on the image
    explorer.query = (2, 5); explorer.layer = "stages.1.blocks.0.mixer"; explorer.head = 0

Its state lives in traitlets (``model_name``, ``image_index``, ``layer``, ``head``,
``component``, ``query``), so Python can drive it and tests can check it; every change
redraws the picture. One forward per (model, image) records every mixer's input
(``unifiedctx.models.recording.mixer_inputs``); a layer's affinities (what
``record_components`` gives) are computed from it when the layer is first shown and cached,
so a change of query, head or component, or back to a seen layer, only folds one row per
head and encodes two PNGs.

Bad values are clear errors: a ``ValueError`` (also a ``traitlets.TraitError``) naming the
trait, e.g. ``explorer.query = (99, 99)`` or ``explorer.layer = "nope"``.
"""

from __future__ import annotations

import html
import re
import time
from collections import OrderedDict
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import traitlets
from torch import nn

from . import rendering
from .explorer_data import COMPONENT_ORDER, AffinityCache, as_images, default_layer
from .explorer_traits import ExplorerTypeError, ExplorerValidation, ExplorerValueError
from .explorer_view import ExplorerView

__all__ = ["COMPONENT_ORDER", "AffinityExplorer", "ExplorerTypeError", "ExplorerValueError"]


class AffinityExplorer(ExplorerValidation, widgets.VBox):
    """Interactive explorer of the affinity maps of one model or several named models.

    Parameters
    ----------
    model:
        An ``nn.Module`` holding affinity mixers (e.g. ``create_model("container_nano")``),
        or a dict ``{name: model}`` to compare models on the same images.
    images:
        A tensor ``(B, C, H, W)`` (or ``(C, H, W)``) or a list of ``(C, H, W)`` tensors, in the
        form the model takes them (normalised is fine: they are stretched for display).
    layer, head, component, query, image_index, model_name:
        Initial state (see the traits). By default: the first model, the first image, the
        first layer that has a mixed affinity (else the first layer), all heads, the mixed
        component where there is one, and the centre of the grid.
    panel:
        Size in pixels of the longer side of each picture.
    cmap, alpha:
        Colormap of the maps and their opacity over the (grey) image.
    cache_mb:
        Memory for cached affinities (least recently shown layers are dropped first).

    Traits
    ------
    ``model_name`` (str), ``image_index`` (int), ``layer`` (str, a name from
    ``mixer_layers(model)``), ``head`` (int, ``-1`` = all heads as a grid), ``component``
    (``"mixed"``, ``"dynamic"`` or ``"static"``: the ones the layer has) and ``query``
    (``(row, col)`` on the layer's grid). Changing the layer keeps the query on the same
    place of the image (rescaled to the new grid) and falls back to all heads or another
    component when the old one does not exist there.
    """

    model_name = traitlets.Unicode()
    image_index = traitlets.Int(0)
    layer = traitlets.Unicode()
    head = traitlets.Int(-1)
    component = traitlets.Unicode("mixed")
    query = traitlets.Tuple((0, 0))

    def __init__(self, model, images, *, layer: str | None = None, head: int = -1,
                 component: str | None = None, query=None, image_index: int = 0,
                 model_name: str | None = None, panel: int = 256, cmap: str = "inferno",
                 alpha: float = 0.75, cache_mb: float = 512):
        if isinstance(model, nn.Module):
            models = {type(model).__name__: model}
        elif isinstance(model, dict) and model and all(isinstance(m, nn.Module) for m in model.values()):
            models = {str(k): m for k, m in model.items()}
        else:
            raise TypeError("model must be an nn.Module or a non-empty dict {name: nn.Module}, "
                            f"got {type(model).__name__}")
        self._models = models
        self._images = as_images(images)
        image_hw = tuple(self._images[0].shape[-2:])
        for i, im in enumerate(self._images):
            if tuple(im.shape[-2:]) != image_hw:
                raise ValueError(f"all images must have one size; images[0] is {image_hw}, "
                                 f"images[{i}] is {tuple(im.shape[-2:])}")
        self._display = [rendering.as_display_image(im) for im in self._images]
        self._data = AffinityCache(models, self._images, cache_mb)
        self._ready = False
        self._batch_depth = 0
        self._dirty = False
        self._last: dict = {}
        self.timings: list[tuple[str, float]] = []  # (what changed, seconds to redraw)

        self._view = ExplorerView(self, list(models), len(self._images), image_hw, panel, cmap, alpha)
        super().__init__(children=self._view.children)
        self.add_class("ucx-affinity-explorer")

        name = model_name if model_name is not None else next(iter(models))
        with self._batch():
            self.model_name = name
            self.image_index = image_index
            self.layer = layer if layer is not None else self._default_layer()
            if component is not None:
                self.component = component
            if head != -1:
                self.head = head
            self.query = query if query is not None else self._centre()
        self._ready = True
        self._redraw("init")

    # ------------------------------------------------------------------ public helpers
    @property
    def layers(self) -> list[str]:
        """Names of the mixer layers of the current model, in forward order."""
        return list(self._layout())

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` grid of the current layer (query coordinates live on it)."""
        return self._layout()[self.layer]["grid"]

    @property
    def components(self) -> list[str]:
        """Components the current layer has (``mixed``/``dynamic``/``static``)."""
        return list(self._info(self.layer)["components"])

    @property
    def heads(self) -> int:
        """Number of heads M of the current layer and component."""
        return self._info(self.layer)["heads"][self.component]

    @property
    def controls(self) -> dict[str, widgets.Widget]:
        """The widgets inside, by role: ``model``, ``image``, ``layer``, ``head``, ``component``,
        ``row``, ``col`` (controls), ``label``, ``picture`` (the clickable image), ``map``."""
        return self._view.by_role()

    @property
    def label_text(self) -> str:
        """The text of the label shown above the pictures (no HTML)."""
        return re.sub(r"<[^>]+>", "", html.unescape(self._view.label.value)).strip()

    def show(self, *, model_name=None, image_index=None, layer=None, component=None, head=None,
             query=None) -> AffinityExplorer:
        """Set several traits at once, in dependency order, and redraw once.

        ``query`` is read on the grid of the new ``layer`` (setting ``layer`` alone rescales
        the old query onto the new grid).
        """
        with self._batch():
            for name, value in (("model_name", model_name), ("image_index", image_index),
                                ("layer", layer), ("component", component), ("head", head),
                                ("query", query)):
                if value is not None:
                    setattr(self, name, value)
        return self

    def maps(self) -> np.ndarray:
        """The maps now shown: row ``query`` of each shown head's affinity, ``(M', H, W)``."""
        a = self._affinity()
        h, w = self.grid
        q = self.query[0] * w + self.query[1]
        rows = a[:, q, :].reshape(a.shape[0], h, w)
        return rows if self.head == -1 else rows[self.head:self.head + 1]

    def rendered(self) -> dict:
        """What the widgets show now, read back from them (for tests).

        ``{"maps": (M', H, W) float array, "image": uint8 (h, w, 3) decoded from the image
        widget's PNG, "map": the same for the map widget, "label": label text,
        "image_png"/"map_png": the raw bytes}``.
        """
        return {
            "maps": self._last.get("maps"),
            "image": rendering.decode_png(self._view.image.value),
            "map": rendering.decode_png(self._view.map.value),
            "label": self.label_text,
            "image_png": bytes(self._view.image.value),
            "map_png": bytes(self._view.map.value),
        }

    def click(self, x: float, y: float) -> None:
        """Click at pixel ``(x, y)`` of the image picture, as a click in the browser does."""
        if hasattr(self._view.image, "click"):
            self._view.image.click(x, y)
        else:
            self._on_image_click(x, y)

    def pixel_to_query(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell ``(row, col)`` of the current layer under pixel ``(x, y)`` of the picture."""
        (h, w), (ph, pw) = self.grid, self._view.panel_hw
        row = int(np.clip(np.floor(y * h / ph), 0, h - 1))
        col = int(np.clip(np.floor(x * w / pw), 0, w - 1))
        return row, col

    # ------------------------------------------------------------------ reactions
    @contextmanager
    def _batch(self):
        """Group trait changes: redraw once, when the outermost batch ends."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
        if self._batch_depth == 0 and self._dirty and self._ready:
            self._redraw(self._dirty)

    def _mark(self, what: str) -> None:
        self._dirty = self._dirty or what
        if self._batch_depth == 0 and self._ready:
            self._redraw(what)

    @traitlets.observe("model_name")
    def _on_model(self, change):
        with self._batch():
            if self.layer and self.layer not in self._layout():
                self.layer = self._default_layer()
            elif self.layer:
                self._fit_to_layer(self.layer, self.layer)
            self._mark("model_name")

    @traitlets.observe("image_index")
    def _on_image(self, change):
        self._mark("image_index")

    @traitlets.observe("layer")
    def _on_layer(self, change):
        with self._batch():
            self._fit_to_layer(change["old"], change["new"])
            self._mark("layer")

    @traitlets.observe("component")
    def _on_component(self, change):
        with self._batch():
            if self.head >= self._heads_of(self.layer, self.component):
                self.head = -1
            self._mark("component")

    @traitlets.observe("head")
    def _on_head(self, change):
        self._mark("head")

    @traitlets.observe("query")
    def _on_query(self, change):
        self._mark("query")

    def _fit_to_layer(self, old: str, new: str) -> None:
        """Make component, head and query valid on layer ``new`` (query rescaled from ``old``)."""
        info = self._info(new)
        if self.component not in info["components"]:
            self.component = info["components"][0]
        if self.head >= info["heads"][self.component]:
            self.head = -1
        old_grid = self._layout().get(old, {}).get("grid") if old else None
        row, col = self.query
        if old_grid is not None and old_grid != info["grid"]:
            (oh, ow), (nh, nw) = old_grid, info["grid"]
            row, col = int((row + 0.5) * nh / oh), int((col + 0.5) * nw / ow)
        h, w = info["grid"]
        self.query = (min(max(row, 0), h - 1), min(max(col, 0), w - 1))

    def _on_image_click(self, x: float, y: float) -> None:
        self.query = self.pixel_to_query(x, y)

    # ------------------------------------------------------------------ data (see explorer_data)
    def _layout(self, model_name: str | None = None) -> OrderedDict:
        """``layer -> {"mixer", "kind", "grid"}`` of a model (the current one by default)."""
        return self._data.layout(model_name or self.model_name, self.image_index)

    def _info(self, layer: str) -> dict:
        """The layout of ``layer`` plus its ``components`` and their ``heads`` (computed once)."""
        return self._data.info(self.model_name, self.image_index, layer)

    def _heads_of(self, layer: str, component: str) -> int:
        heads = self._info(layer)["heads"]
        return heads.get(component, next(iter(heads.values())))

    def _affinity(self) -> np.ndarray:
        return self._data.layer_data(self.model_name, self.image_index, self.layer)[self.component]

    def _default_layer(self) -> str:
        return default_layer(self._layout())

    def _centre(self) -> tuple[int, int]:
        h, w = self.grid
        return h // 2, w // 2

    # ------------------------------------------------------------------ drawing
    def _redraw(self, what: str) -> None:
        """Fold the query's row for the shown heads and draw both pictures and the label.

        Each map is coloured relative to its own peak; the label gives the largest peak.
        """
        self._dirty = False
        start = time.perf_counter()
        maps = self.maps()
        grid, query = self.grid, self.query
        head = "all heads" if self.head == -1 else f"head {self.head}"
        models = f"model {html.escape(self.model_name)}, " if len(self._models) > 1 else ""
        text = (f"query ({query[0]}, {query[1]}) on a {grid[0]}x{grid[1]} grid, "
                f"layer {html.escape(self.layer)}, {head} of {self.heads}, "
                f"component {self.component}, {models}image {self.image_index}, "
                f"peak {np.abs(maps).max():.3g}")
        picture, map_picture = self._view.draw(self._display[self.image_index], maps, grid, query,
                                               f"<code>{text}</code>")
        self._view.sync()
        self._last = {"maps": maps, "picture": picture, "map_picture": map_picture}
        self.timings.append((what, time.perf_counter() - start))
        del self.timings[:-200]
