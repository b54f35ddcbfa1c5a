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

import difflib
import html
import re
import time
from collections import OrderedDict
from contextlib import contextmanager

import ipywidgets as widgets
import numpy as np
import torch
import traitlets
from torch import nn

from . import rendering

#: The order components are offered in: the paper's mixed affinity first, then its parts.
COMPONENT_ORDER = ("mixed", "dynamic", "static")


class ExplorerValueError(traitlets.TraitError, ValueError):
    """A value the explorer cannot show (a query outside the grid, a layer that does not exist)."""


class ExplorerTypeError(traitlets.TraitError, TypeError):
    """A value of the wrong type for one of the explorer's traits."""


def _suggest(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def _as_images(images) -> list[torch.Tensor]:
    """``images`` (a tensor ``(B, C, H, W)`` or ``(C, H, W)``, or a sequence of ``(C, H, W)``)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
        out = list(images)
    elif isinstance(images, (list, tuple)):
        out = [torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im for im in images]
    else:
        raise TypeError(f"images must be a tensor (B, C, H, W) or a list of (C, H, W) tensors, "
                        f"got {type(images).__name__}")
    if not out:
        raise ValueError("images is empty: give at least one image")
    for i, im in enumerate(out):
        if im.dim() != 3:
            raise ValueError(f"images[{i}] must have shape (C, H, W), got {tuple(im.shape)}")
    return [im.float() for im in out]


def _eval_no_grad(model: nn.Module, fn, *args):
    """``fn(*args)`` with ``model`` in eval mode and no grad; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn(*args)
    finally:
        model.train(was_training)


def _components(mixer: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One mixer's affinities by part, as ``record_components`` gives them: ``components(x)``
    (container, gpsa: static/dynamic/mixed at attention-head resolution), else ``{kind: A}``."""
    if hasattr(mixer, "components"):
        return dict(mixer.components(x))
    return {mixer.kind: mixer.affinity(x)}


class AffinityExplorer(widgets.VBox):
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
        self._images = _as_images(images)
        self._image_hw = tuple(self._images[0].shape[-2:])
        for i, im in enumerate(self._images):
            if tuple(im.shape[-2:]) != self._image_hw:
                raise ValueError(f"all images must have one size; images[0] is {self._image_hw}, "
                                 f"images[{i}] is {tuple(im.shape[-2:])}")
        self._display = [rendering.as_display_image(im) for im in self._images]
        self._lut = rendering.colormap_lut(cmap)
        self._alpha = float(alpha)
        scale = panel / max(self._image_hw)
        self._panel_hw = (max(1, round(self._image_hw[0] * scale)), max(1, round(self._image_hw[1] * scale)))
        self._panel = int(panel)
        self._cache: OrderedDict = OrderedDict()  # (model, image, layer) -> {component: array}
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        self._input_cache: dict = {}  # (model, image) -> {layer: mixer input}
        self._layouts: dict[str, OrderedDict] = {}  # model -> layer -> {"mixer", "kind", "grid", ...}
        self._ready = False
        self._batch_depth = 0
        self._dirty = False
        self._syncing = False
        self._last: dict = {}
        self.timings: list[tuple[str, float]] = []  # (what changed, seconds to redraw)

        self._build_controls()
        super().__init__(children=self._layout_children())
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
        return {"model": self._w_model, "image": self._w_image, "layer": self._w_layer,
                "head": self._w_head, "component": self._w_component, "row": self._w_row,
                "col": self._w_col, "label": self._label, "picture": self._image, "map": self._map}

    @property
    def label_text(self) -> str:
        """The text of the label shown above the pictures (no HTML)."""
        return re.sub(r"<[^>]+>", "", html.unescape(self._label.value)).strip()

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
            "image": rendering.decode_png(self._image.value),
            "map": rendering.decode_png(self._map.value),
            "label": self.label_text,
            "image_png": bytes(self._image.value),
            "map_png": bytes(self._map.value),
        }

    def click(self, x: float, y: float) -> None:
        """Click at pixel ``(x, y)`` of the image picture, as a click in the browser does."""
        if hasattr(self._image, "click"):
            self._image.click(x, y)
        else:
            self._on_image_click(x, y)

    def pixel_to_query(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell ``(row, col)`` of the current layer under pixel ``(x, y)`` of the picture."""
        (h, w), (ph, pw) = self.grid, self._panel_hw
        row = int(np.clip(np.floor(y * h / ph), 0, h - 1))
        col = int(np.clip(np.floor(x * w / pw), 0, w - 1))
        return row, col

    # ------------------------------------------------------------------ validation
    @traitlets.validate("model_name")
    def _valid_model_name(self, proposal):
        name = proposal["value"]
        if name not in self._models:
            raise ExplorerValueError(f"model_name {name!r} is not one of the models: "
                                     f"{', '.join(map(repr, self._models))}.{_suggest(name, self._models)}")
        return name

    @traitlets.validate("image_index")
    def _valid_image_index(self, proposal):
        i = proposal["value"]
        if not 0 <= i < len(self._images):
            raise ExplorerValueError(f"image_index {i} is out of range: there are {len(self._images)} "
                                     f"images (0..{len(self._images) - 1})")
        return i

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        name = proposal["value"]
        layout = self._layout()
        if name not in layout:
            raise ExplorerValueError(f"layer {name!r} does not exist in model {self.model_name!r}; its "
                                     f"layers are: {', '.join(layout)}.{_suggest(name, layout)}")
        return name

    @traitlets.validate("component")
    def _valid_component(self, proposal):
        comp = proposal["value"]
        if not self.layer:
            return comp
        available = self._info(self.layer)["components"]
        if comp not in available:
            known = "" if comp in COMPONENT_ORDER else f" (components are {', '.join(COMPONENT_ORDER)})"
            raise ExplorerValueError(f"component {comp!r} is not available in layer {self.layer!r}, "
                                     f"which has: {', '.join(available)}{known}")
        return comp

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        head = proposal["value"]
        if not self.layer:
            return head
        m = self._heads_of(self.layer, self.component)
        if not -1 <= head < m:
            raise ExplorerValueError(f"head {head} is out of range: layer {self.layer!r} has {m} heads "
                                     f"(0..{m - 1}, or -1 for all heads as a grid)")
        return head

    @traitlets.validate("query")
    def _valid_query(self, proposal):
        value = proposal["value"]
        if len(value) != 2:
            raise ExplorerTypeError(f"query must be a pair (row, col), got {value!r}")
        try:
            row, col = (int(v.__index__()) for v in value)
        except (AttributeError, TypeError):
            raise ExplorerTypeError(f"query must be a pair of ints (row, col), got {value!r}") from None
        if not self.layer:
            return row, col
        h, w = self.grid
        if not (0 <= row < h and 0 <= col < w):
            raise ExplorerValueError(f"query {(row, col)} is outside the {h}x{w} grid of layer "
                                     f"{self.layer!r} (rows 0..{h - 1}, cols 0..{w - 1})")
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

    # ------------------------------------------------------------------ data
    # One forward per (model, image) records the input of every mixer (``mixer_inputs``);
    # a layer's affinities are computed from its input the first time it is shown and kept
    # (LRU, at most ``cache_mb``), so a big model never holds every layer's N x N at once.
    def _inputs(self, model_name: str, index: int) -> OrderedDict:
        """The input of every mixer of one model for one image (cached)."""
        from unifiedctx.models.recording import mixer_inputs

        key = (model_name, index)
        if key not in self._input_cache:
            model = self._models[model_name]
            x = self._images[index].unsqueeze(0)
            try:
                x = x.to(next(model.parameters()))
            except StopIteration:
                pass
            self._input_cache[key] = _eval_no_grad(model, mixer_inputs, model, x)
        return self._input_cache[key]

    def _layer_data(self, model_name: str, index: int, layer: str) -> OrderedDict:
        """``{component: (M, N, N) float32 array}`` of one layer for one image (cached, LRU)."""
        key = (model_name, index, layer)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        model = self._models[model_name]
        mixer = self._layout(model_name)[layer]["mixer"]
        parts = _eval_no_grad(model, _components, mixer, self._inputs(model_name, index)[layer])
        ordered = sorted(parts, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99)
        data = OrderedDict((c, parts[c][0].detach().float().cpu().numpy()) for c in ordered)
        self._cache[key] = data
        self._cache_bytes += sum(a.nbytes for a in data.values())
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= sum(a.nbytes for a in dropped.values())
        return data

    def _layout(self, model_name: str | None = None) -> OrderedDict:
        """``layer -> {"mixer", "kind", "grid"}`` of a model, from one recorded forward."""
        name = model_name or self.model_name
        if name not in self._layouts:
            from unifiedctx.models.recording import mixer_layers

            mixers = mixer_layers(self._models[name])
            index = self.image_index if 0 <= self.image_index < len(self._images) else 0
            inputs = self._inputs(name, index)
            layout = OrderedDict(
                (layer, {"mixer": mixers[layer], "kind": mixers[layer].kind,
                         "grid": (int(inp.shape[-2]), int(inp.shape[-1]))})
                for layer, inp in inputs.items())
            if not layout:
                raise ValueError(f"model {name!r} has no affinity mixers (AffinityMixer) to explore")
            self._layouts[name] = layout
        return self._layouts[name]

    def _info(self, layer: str) -> dict:
        """The layout of ``layer`` plus its ``components`` and their ``heads`` (computed once)."""
        info = self._layout()[layer]
        if "components" not in info:
            data = self._layer_data(self.model_name, self.image_index, layer)
            info["components"] = list(data)
            info["heads"] = {c: a.shape[0] for c, a in data.items()}
        return info

    def _heads_of(self, layer: str, component: str) -> int:
        heads = self._info(layer)["heads"]
        return heads.get(component, next(iter(heads.values())))

    def _affinity(self) -> np.ndarray:
        return self._layer_data(self.model_name, self.image_index, self.layer)[self.component]

    def _default_layer(self) -> str:
        layout = self._layout()
        for name, info in layout.items():
            if info["kind"] == "mixed":
                return name
        return next(iter(layout))

    def _centre(self) -> tuple[int, int]:
        h, w = self.grid
        return h // 2, w // 2

    # ------------------------------------------------------------------ widgets
    def _build_controls(self) -> None:
        self._image = _image_widget()
        self._image.add_class("ucx-explorer-image")
        if hasattr(self._image, "on_click"):
            self._image.on_click(self._on_image_click)
        self._map = widgets.Image(format="png")
        self._map.add_class("ucx-explorer-map")
        self._label = widgets.HTML()
        self._label.add_class("ucx-explorer-label")
        style = {"description_width": "70px"}
        self._w_model = widgets.Dropdown(options=list(self._models), description="model", style=style)
        self._w_image = widgets.IntSlider(min=0, max=len(self._images) - 1, description="image",
                                          style=style, continuous_update=False)
        self._w_layer = widgets.Dropdown(description="layer", style=style,
                                         layout=widgets.Layout(width="420px"))
        self._w_head = widgets.Dropdown(description="head", style=style)
        self._w_component = widgets.ToggleButtons(description="component", style=style)
        self._w_row = widgets.IntSlider(min=0, max=0, description="query row", style=style)
        self._w_col = widgets.IntSlider(min=0, max=0, description="query col", style=style)
        for control, handler in ((self._w_model, self._from_model), (self._w_image, self._from_image),
                                 (self._w_layer, self._from_layer), (self._w_head, self._from_head),
                                 (self._w_component, self._from_component),
                                 (self._w_row, self._from_query), (self._w_col, self._from_query)):
            control.observe(handler, names="value")

    def _layout_children(self):
        rows = []
        if len(self._models) > 1:
            rows.append(self._w_model)
        if len(self._images) > 1:
            rows.append(self._w_image)
        rows += [
            widgets.HBox([self._w_layer, self._w_head]),
            self._w_component,
            widgets.HBox([self._w_row, self._w_col]),
            self._label,
            widgets.HBox([self._image, self._map], layout=widgets.Layout(align_items="flex-start")),
        ]
        return rows

    def _from_model(self, change):
        if not self._syncing:
            self.model_name = change["new"]

    def _from_image(self, change):
        if not self._syncing:
            self.image_index = change["new"]

    def _from_layer(self, change):
        if not self._syncing and change["new"] is not None:
            self.layer = change["new"]

    def _from_head(self, change):
        if not self._syncing and change["new"] is not None:
            self.head = change["new"]

    def _from_component(self, change):
        if not self._syncing and change["new"] is not None:
            self.component = change["new"]

    def _from_query(self, change):
        if not self._syncing:
            self.query = (self._w_row.value, self._w_col.value)

    def _sync_controls(self) -> None:
        """Show the traits in the controls (without echoing back)."""
        self._syncing = True
        try:
            layout = self._layout()
            info = self._info(self.layer)
            self._w_model.value = self.model_name
            self._w_image.value = self.image_index
            layer_options = [(f"{name}  [{i['kind']}, {i['grid'][0]}x{i['grid'][1]}]", name)
                             for name, i in layout.items()]
            if list(self._w_layer.options) != layer_options:
                self._w_layer.options = layer_options
            self._w_layer.value = self.layer
            m = info["heads"][self.component]
            head_options = [("all heads", -1)] + [(f"head {i}", i) for i in range(m)]
            if list(self._w_head.options) != head_options:
                self._w_head.options = head_options
            self._w_head.value = self.head
            if tuple(self._w_component.options) != tuple(info["components"]):
                self._w_component.options = list(info["components"])
            self._w_component.value = self.component
            h, w = info["grid"]
            self._w_row.max, self._w_col.max = h - 1, w - 1
            self._w_row.value, self._w_col.value = self.query
        finally:
            self._syncing = False

    def _redraw(self, what: str) -> None:
        """Fold the query's row for the shown heads and draw both pictures and the label.

        Each map is coloured relative to its own peak; the label gives the largest peak.
        """
        self._dirty = False
        start = time.perf_counter()
        maps = self.maps()
        grid, query = self.grid, self.query
        image = self._display[self.image_index]
        picture = rendering.image_panel(image, self._panel_hw, query, grid)
        if len(maps) == 1:
            size = self._panel_hw
        else:
            side = rendering.head_tile_size(len(maps), self._panel, grid)
            scale = side / max(self._panel_hw)
            size = (max(1, round(self._panel_hw[0] * scale)), max(1, round(self._panel_hw[1] * scale)))
        map_picture = rendering.map_panel(image, maps, size, query, grid, self._lut, self._alpha)
        self._image.value = rendering.png_bytes(picture)
        self._map.value = rendering.png_bytes(map_picture)
        head = "all heads" if self.head == -1 else f"head {self.head}"
        models = f"model {html.escape(self.model_name)}, " if len(self._models) > 1 else ""
        text = (f"query ({query[0]}, {query[1]}) on a {grid[0]}x{grid[1]} grid, "
                f"layer {html.escape(self.layer)}, {head} of {self.heads}, "
                f"component {self.component}, {models}image {self.image_index}, "
                f"peak {np.abs(maps).max():.3g}")
        self._label.value = f"<code>{text}</code>"
        self._sync_controls()
        self._last = {"maps": maps, "picture": picture, "map_picture": map_picture}
        self.timings.append((what, time.perf_counter() - start))
        del self.timings[:-200]


def _image_widget():
    """A :class:`ClickableImage` when anywidget is installed, else a plain (unclickable) Image."""
    try:
        from .clickimage import ClickableImage
    except ImportError:  # anywidget missing: sliders still set the query
        return widgets.Image(format="png")
    return ClickableImage()
