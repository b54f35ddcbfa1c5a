"""``AffinityExplorer``: click on an image, see where each layer and head takes context from.

Every mixer in this library aggregates context through an affinity ``A_m`` (``(N, N)`` per
head m): row ``q`` of ``A_m`` says how much the token at grid position ``q`` takes from
every other token. Folded onto the ``H x W`` grid of its layer, that row is a map over the
image. The explorer shows it::

    from unifiedctx.widgets import AffinityExplorer
    explorer = AffinityExplorer(model, images)            # or {"container": m1, "deit": m2}
    explorer                                               # in JupyterLab: click on the image
    explorer.query = (2, 5); explorer.layer = "stages.1.blocks.0.mixer"; explorer.head = 0
    explorer.depth = "rollout"                             # beside it: the context through depth
    explorer.to_html("explorer.html")                      # the same, as one static page

Three parts, each with one job: :class:`~.explorer_state.ExplorerState` owns what is shown
(model, image, layer, head or all heads, component, query, depth view) and its rules;
:class:`~.explorer_data.ExplorerData` computes and caches the affinities (one forward per model
and image, a layer's ``components(x)`` when first shown); :class:`~.explorer_view.ExplorerView`
draws the plain data it is given. This class wires them together and keeps the public API.

All heads of a layer share one colour scale (no per-head rescaling), stated by a colorbar
that marks the uniform level 1/N of softmax maps; the status lists layer, head, component,
query, kind, the mixer's own words for its affinity (``describe()``) and scale as fields.

**Through depth** (``depth="rollout"`` or ``"ERF"``): beside the layer's own maps, the same
query's context on the input pixels, with every layer up to this one taken into account: the
rollout (:func:`unifiedctx.context.rollout_maps`, the affinities composed with their residuals)
or the effective receptive field (:func:`~unifiedctx.context.erf_maps`, ``|d y / d x|``). It
has its own colorbar (0 to the map's peak, the uniform level ``1 / (H_in W_in)`` marked).

Bad values are clear errors: a ``ValueError`` (also a ``traitlets.TraitError``) naming the
field, e.g. ``explorer.query = (99, 99)`` or ``explorer.layer = "nope"``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import ipywidgets as widgets
import numpy as np
from torch import nn

from . import rendering
from .explorer_data import COMPONENT_ORDER, DEPTH_MODES, ExplorerData, as_images, depth_scale
from .explorer_state import FIELDS, ExplorerState, ExplorerTypeError, ExplorerValueError
from .explorer_view import ExplorerView, Frame

__all__ = ["COMPONENT_ORDER", "DEPTH_MODES", "AffinityExplorer", "ExplorerTypeError", "ExplorerValueError"]


def _state_property(name: str, doc: str):
    def get(self):
        return getattr(self.state, name)

    def set_(self, value):
        setattr(self.state, name, value)

    return property(get, set_, doc=doc)


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
    layer, head, component, query, image_index, model_name, depth:
        Initial state. By default: the first model, the first image, the first layer that has
        a mixed affinity (else the first layer), all heads, the mixed component where there is
        one, the centre of the grid, and no through-depth map (``depth="off"``).
    panel:
        Size in pixels of the longer side of each picture.
    cmap:
        Colormap of non-negative maps (default: the library's, ``viz.scales.SEQUENTIAL``);
        signed maps always use the diverging one, centred at 0.
    alpha:
        Opacity of the maps over the (grey) image.
    cache_mb:
        Memory for cached affinities (least recently shown layers are dropped first).

    Fields (read and set as attributes): ``model_name`` (str), ``image_index`` (int),
    ``layer`` (a name from ``explorer.layers``), ``head`` (int, ``-1`` = all heads as a grid),
    ``component`` (``"mixed"``, ``"dynamic"`` or ``"static"``: the ones the layer has) and
    ``query`` (``(row, col)`` on the layer's grid) and ``depth`` (``"off"``, ``"rollout"`` or
    ``"ERF"``: the through-depth map beside the layer's own). Changing the layer or the model keeps the
    query on the same place of the image (rescaled to the new grid) and falls back to all heads
    or another component when the old one does not exist there.
    """

    model_name = _state_property("model_name", "Name of the model shown.")
    image_index = _state_property("image_index", "Index of the image shown.")
    layer = _state_property("layer", "Name of the mixer layer shown.")
    head = _state_property("head", "The head shown, or -1 for all heads as a grid.")
    component = _state_property("component", "The component shown: mixed, dynamic or static.")
    query = _state_property("query", "The query token (row, col) on the layer's grid.")
    depth = _state_property("depth", "The through-depth map shown beside: off, rollout or ERF.")

    def __init__(self, model, images, *, layer: str | None = None, head: int = -1,
                 component: str | None = None, query=None, image_index: int = 0,
                 model_name: str | None = None, panel: int = 256, cmap: str | None = None,
                 alpha: float = 0.75, cache_mb: float = 512, depth: str = "off"):
        if isinstance(model, nn.Module):
            models = {type(model).__name__: model}
        elif isinstance(model, dict) and model and all(isinstance(m, nn.Module) for m in model.values()):
            models = {str(k): m for k, m in model.items()}
        else:
            raise TypeError("model must be an nn.Module or a non-empty dict {name: nn.Module}, "
                            f"got {type(model).__name__}")
        images = as_images(images)
        image_hw = tuple(images[0].shape[-2:])
        for i, im in enumerate(images):
            if tuple(im.shape[-2:]) != image_hw:
                raise ValueError(f"all images must have one size; images[0] is {image_hw}, "
                                 f"images[{i}] is {tuple(im.shape[-2:])}")
        self.data = ExplorerData(models, images, cache_mb)
        self._display = [rendering.as_display_image(im) for im in images]
        self._cmap = cmap
        self._last: dict = {}
        self.timings: list[tuple[str, float]] = []  # (what changed, seconds to redraw)
        self.state = ExplorerState(self.data, model_name=model_name if model_name is not None else
                                   next(iter(models)), image_index=image_index, layer=layer, head=head,
                                   component=component, query=query, depth=depth)
        self.view = ExplorerView(list(models), len(images), image_hw, panel, alpha)
        super().__init__(children=self.view.children)
        self.add_class("ucx-affinity-explorer")
        self.view.on_control(self._on_control)
        self.state.on_change(self._redraw)
        self._redraw("init")

    # ------------------------------------------------------------------ reading
    @property
    def layers(self) -> list[str]:
        """Names of the mixer layers of the current model, in forward order."""
        return list(self.data.catalogue(self.model_name))

    @property
    def grid(self) -> tuple[int, int]:
        """``(H, W)`` grid of the current layer (query coordinates live on it)."""
        return self.state.grid

    @property
    def components(self) -> list[str]:
        """Components the current layer has (``mixed``/``dynamic``/``static``)."""
        return self.state.info.components

    @property
    def heads(self) -> int:
        """Number of heads M of the current layer and component."""
        return self.state.heads

    @property
    def scale(self):
        """The colour scale now shown (:class:`unifiedctx.viz.scales.Scale`), shared by all heads
        and queries of the layer's component for this image."""
        scale = self.data.scale(self.model_name, self.image_index, self.layer, self.component)
        if self._cmap is not None and not scale.signed:
            scale = replace(scale, cmap=self._cmap)
        return scale

    @property
    def controls(self) -> dict[str, widgets.Widget]:
        """The widgets inside, by role: ``model``, ``image``, ``layer``, ``head``, ``component``,
        ``row``, ``col``, ``depth`` (controls), ``label``, ``picture`` (the clickable image),
        ``map``, ``depth_map``."""
        return self.view.by_role()

    @property
    def status(self) -> dict[str, str]:
        """The status fields shown above the pictures: ``{field: text}``."""
        return dict(self._last.get("fields", {}))

    @property
    def label_text(self) -> str:
        """The status as one line of text, ``"field: value; ..."`` (no HTML)."""
        return "; ".join(f"{k}: {v}" for k, v in self.status.items())

    def maps(self) -> np.ndarray:
        """The maps now shown: row ``query`` of each shown head's affinity, ``(M', H, W)``."""
        a = self.data.affinity(self.model_name, self.image_index, self.layer, self.component)
        h, w = self.grid
        q = self.query[0] * w + self.query[1]
        rows = a[:, q, :].reshape(a.shape[0], h, w)
        return rows if self.head == -1 else rows[self.head:self.head + 1]

    def depth_data(self) -> dict | None:
        """The through-depth map now shown, as the plain dict of
        :func:`~unifiedctx.context.rollout_maps` / :func:`~unifiedctx.context.erf_maps` (``map``
        ``(H_in, W_in)`` summing to 1, ``vmin``, ``vmax``, ``uniform``, ``layers``, ...), or
        ``None`` when ``depth == "off"``."""
        if self.depth == "off":
            return None
        return self.data.depth(self.model_name, self.image_index, self.layer, self.query, self.depth)

    def depth_map(self) -> np.ndarray | None:
        """The through-depth map now shown, ``(H_in, W_in)`` float64, or ``None`` when off."""
        data = self.depth_data()
        return None if data is None else data["map"]

    def rendered(self) -> dict:
        """What the widgets show now, read back from them (for tests).

        ``{"maps": (M', H, W) float array, "image": uint8 (h, w, 3) decoded from the image
        widget's PNG, "map": the same for the map widget, "label": the status text,
        "fields": the status fields, "image_png"/"map_png": the raw bytes, "depth": the
        through-depth map drawn ((H_in, W_in) or None), "depth_picture": its picture (or None)}``.
        """
        shown = self.view.depth_map.layout.display != "none"
        return {
            "depth": self._last.get("depth"),
            "depth_picture": rendering.decode_png(self.view.depth_map.value) if shown else None,
            "maps": self._last.get("maps"),
            "image": rendering.decode_png(self.view.image.value),
            "map": rendering.decode_png(self.view.map.value),
            "label": self.label_text,
            "fields": self.status,
            "image_png": bytes(self.view.image.value),
            "map_png": bytes(self.view.map.value),
        }

    # ------------------------------------------------------------------ changing
    def show(self, *, model_name=None, image_index=None, layer=None, component=None, head=None,
             query=None, depth=None) -> AffinityExplorer:
        """Set several fields at once, in dependency order, and redraw once.

        ``query`` is read on the grid of the new ``layer`` (setting ``layer`` alone rescales
        the old query onto the new grid).
        """
        self.state.update(model_name=model_name, image_index=image_index, layer=layer,
                          component=component, head=head, query=query, depth=depth)
        return self

    def click(self, x: float, y: float) -> None:
        """Click at pixel ``(x, y)`` of the image picture, as a click in the browser does."""
        if hasattr(self.view.image, "click"):
            self.view.image.click(x, y)
        else:
            self._on_control("click", (x, y))

    def pixel_to_query(self, x: float, y: float) -> tuple[int, int]:
        """Grid cell ``(row, col)`` of the current layer under pixel ``(x, y)`` of the picture."""
        return self.view.pixel_to_cell(x, y, self.grid)

    def to_html(self, path, **options):
        """Write the explorer as ONE self-contained HTML page (see :func:`.export.write_html`).

        Every layer, head, component and query of every model and image is precomputed and
        embedded (uint8-quantised, compressed), with every query's rollout map (``depth``, default
        ``("rollout",)``; add ``"ERF"`` for the effective receptive fields too: one backward per
        query, so off by default); the page needs no kernel and no network.
        Returns the path written; ``options`` go to :func:`~.export.write_html`
        (``max_mb``, ``images``, ``title``, ``depth``).
        """
        from .export import write_html

        return write_html(self.data, self._display, path, start=self.state.as_dict(),
                          alpha=self.view.alpha, **options)

    def _on_control(self, name: str, value) -> None:
        if name == "click":
            self.state.query = self.pixel_to_query(*value)
        elif name in FIELDS:
            setattr(self.state, name, value)

    # ------------------------------------------------------------------ drawing
    def _redraw(self, what: str) -> None:
        """Fold the query's row for the shown heads and draw both pictures and the status."""
        start = time.perf_counter()
        maps, state, scale = self.maps(), self.state, self.scale
        info = state.info
        fields = self._fields(scale)
        depth = self._depth_frame(fields)
        frame = Frame(image=self._display[self.image_index], maps=maps, heads=state.shown_heads,
                      grid=info.grid, query=self.query, scale=scale, fields=fields,
                      state=state.as_dict(), depth=depth,
                      options={"layers": self._layer_options(), "heads": self.heads,
                               "components": info.components, "unit": info.head_unit})
        picture, map_picture = self.view.show(frame)
        self._last = {"maps": maps, "picture": picture, "map_picture": map_picture,
                      "fields": frame.fields, "depth": None if depth is None else depth["map"]}
        self.timings.append((what, time.perf_counter() - start))
        del self.timings[:-200]

    def _depth_frame(self, fields: dict[str, str]) -> dict | None:
        """The through-depth map for the frame (and its status fields, added to ``fields``)."""
        if self.depth == "off":
            return None
        try:
            data = self.depth_data()
        except (ValueError, TypeError) as error:  # a model rollout cannot read: say so, draw none
            fields["depth"] = f"{self.depth} unavailable for this model: {error}"
            return None
        scale = depth_scale(data)
        h, w = data["map"].shape
        if self.depth == "rollout":
            what, title = f"rollout up to this layer ({len(data['layers'])} steps composed)", "rollout"
        else:
            what, title = "effective receptive field |d y / d x| of this layer's output", "ERF"
        fields["depth"] = f"{what}, query {data['query']}, on the {h}x{w} input pixels"
        fields["depth scale"] = scale.describe() + ", this query's map alone (sums to 1)"
        return {"map": data["map"], "scale": scale, "title": title}

    def _layer_options(self) -> list[tuple[str, str]]:
        catalogue = self.data.catalogue(self.model_name)
        return [(f"{name}  [{i.kind}, {i.grid[0]}x{i.grid[1]}]", name) for name, i in catalogue.items()]

    def _fields(self, scale) -> dict[str, str]:
        """The status fields: model (when several), image, layer, head, component, query, kind,
        affinity (the mixer's describe()), scale; depth and depth scale when a depth view is on."""
        (h, w), info = self.grid, self.state.info
        fields = {}
        if len(self.data.models) > 1:
            fields["model"] = self.model_name
        if len(self.data.images) > 1:
            fields["image"] = f"{self.image_index} of {len(self.data.images)}"
        fields["layer"] = f"{self.layer} ({h}x{w} grid)"
        m, unit = self.heads, info.head_unit
        fields["head"] = f"all {unit}s ({m})" if self.head == -1 else f"{unit} {self.head} of {m}"
        fields["component"] = self.component
        fields["query"] = f"({self.query[0]}, {self.query[1]}) on a {h}x{w} grid"
        fields["kind"] = info.kind
        fields["affinity"] = info.description
        fields["scale"] = scale.describe() + f", shared by every {unit} and query of this layer"
        return fields
