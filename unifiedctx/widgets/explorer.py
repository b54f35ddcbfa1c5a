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

The kernel computes, the browser draws. This class is the trait bridge: an ``anywidget`` whose
front end (``explorer.js`` + ``explorer.css``, one ES module) draws every picture and control
from plain data. :class:`~.explorer_data.ExplorerData` reads the layers and keeps what it needs within
one memory budget (``cache_mb``); :mod:`.explorer_payload` turns them into what the front end is sent
(colour indices as binary buffers, colour scales, status templates); :class:`~.explorer_state.ExplorerState`
owns the state (model, image, layer, head or all heads, component, query, depth view) and its rules, and is
synced with the browser through the ``shown`` trait. The front end asks (a custom message) only
for what it has not got: a small layer component whole for an image (and epoch, on a colour scale), a big
one's rows for the query shown (memory grows with what is shown, not with ``N^2``), or one query's
through-depth map. Every request is checked at the door like a public argument
(:meth:`AffinityExplorer.check_request`); a bad one is answered with an error the page shows,
never left unanswered.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..validation import check_choice, check_float, check_int, check_positive_int, check_query
from . import explorer_payload as payload
from .explorer_data import COMPONENT_ORDER, DEPTH_MODES, SCALE_MODES, ExplorerData, as_images
from .explorer_state import FIELDS, ExplorerState, ExplorerTypeError, ExplorerValueError, compact_epochs
from .front import FrontEnd, check_cmap, check_finite_model, display_image, lut_bytes, marker_rgb

__all__ = ["COMPONENT_ORDER", "DEPTH_MODES", "SCALE_MODES", "AffinityExplorer", "ExplorerTypeError",
           "ExplorerValueError"]

#: What the front end may ask for: ``need`` -> (the keys it must give, the keys it may give).
REQUESTS = {"maps": (("model", "image", "layer", "component"), ("scale", "epoch")),
            "rows": (("model", "image", "layer", "component", "query"), ("scale", "epoch")),
            "depth": (("model", "image", "layer", "query", "mode"), ())}


def _state_property(name: str, doc: str):
    def get(self):
        return getattr(self.state, name)

    def set_(self, value):
        setattr(self.state, name, value)

    return property(get, set_, doc=doc)


class AffinityExplorer(FrontEnd):
    """Interactive explorer of the affinity maps of one model or several named models.

    Parameters
    ----------
    model:
        An ``nn.Module`` (a unifiedctx model, a timm network, your own), or a dict
        ``{name: model}`` to compare models on the same images. Non-finite weights are refused.
    images:
        A tensor ``(B, C, H, W)`` (or ``(C, H, W)``) or a list of ``(C, H, W)`` tensors, in the
        form the model takes them (normalised is fine: they are stretched for display).
    layer, head, component, query, image_index, model_name, depth:
        Initial state. By default: the first model, the first image, the first layer that has
        a mixed affinity (else the first layer), all heads, the mixed component where there is
        one, the centre of the grid, and no through-depth map (``depth="off"``).
    panel:
        Size in pixels of the longer side of each picture (an int in 16..2048).
    cmap:
        Colormap of non-negative maps (a matplotlib colormap name; default: the library's,
        ``viz.scales.SEQUENTIAL``); signed maps always use the diverging one, centred at 0.
    alpha:
        Opacity of the maps over the (grey) image, in [0, 1].
    cache_mb:
        Memory budget, in MiB, of everything the explorer keeps: the layers it has read (each in its smallest
        exact form: a kernel layer's kernels, a windowed attention's windows, another layer's ``(M, N, N)``),
        the context graph of an image and the through-depth maps; the least recently used go first
        (``explorer.data.held_bytes()`` says how much is held).

    Fields (read and set as attributes): ``model_name`` (str), ``image_index`` (int),
    ``layer`` (a name from ``explorer.layers``), ``head`` (int, ``-1`` = all heads as a grid),
    ``component`` (``"mixed"``, ``"dynamic"`` or ``"static"``: the ones the layer has),
    ``query`` (``(row, col)`` on the layer's grid), ``depth`` (``"off"``, ``"rollout"`` or
    ``"ERF"``), ``scale_mode`` (the colour scale: ``"layer"``, one for every head and query of the
    layer, the default; ``"map"``, each map on its own, so a head that looks at a few tokens is seen
    beside one that peaks ten times higher; in a run ``"fixed"``, one over every epoch) and
    ``epoch`` (``None``; a training run's explorer, :meth:`from_run`, has ``epochs``). Changing
    the layer or the model keeps the query on the same place of the image
    (rescaled to the new grid) and falls back to all heads or another component when the old
    one does not exist there. In the browser: click the image or focus it (Tab) and use the
    arrow keys to move the query; every control is reachable by Tab and labelled.
    """


    model_name = _state_property("model_name", "Name of the model shown.")
    image_index = _state_property("image_index", "Index of the image shown.")
    layer = _state_property("layer", "Name of the mixer layer shown.")
    head = _state_property("head", "The head shown, or -1 for all heads as a grid.")
    component = _state_property("component", "The component shown: mixed, dynamic or static.")
    query = _state_property("query", "The query token (row, col) on the layer's grid.")
    depth = _state_property("depth", "The through-depth map shown beside: off, rollout or ERF.")
    scale_mode = _state_property("scale_mode", "The colour scale: 'layer' (one for every head and query of "
                                 "the layer), 'map' (each map its own) or, in a run, 'fixed' (one for "
                                 "the layer over every epoch).")
    epoch = _state_property("epoch", "The epoch shown, in a training run's explorer (None for models).")

    def __init__(self, model, images, *, layer: str | None = None, head: int = -1,
                 component: str | None = None, query=None, image_index: int = 0,
                 model_name: str | None = None, panel: int = 256, cmap: str | None = None,
                 alpha: float = 0.75, cache_mb: float = 512, depth: str = "off",
                 scale_mode: str | None = None):
        if isinstance(model, nn.Module):
            models = {type(model).__name__: model}
        elif isinstance(model, dict) and model and all(isinstance(m, nn.Module) for m in model.values()):
            models = {str(k): m for k, m in model.items()}
        else:
            raise TypeError("model must be an nn.Module or a non-empty dict {name: nn.Module}, "
                            f"got {type(model).__name__}")
        panel, alpha = self._options(panel, alpha, cmap)
        cache_mb = check_float("cache_mb", cache_mb, low=0.0, low_open=True)
        for name, m in models.items():
            check_finite_model(name, m)
        images = as_images(images)
        image_hw = tuple(images[0].shape[-2:])
        for i, im in enumerate(images):
            if tuple(im.shape[-2:]) != image_hw:
                raise ValueError(f"all images must have one size; images[0] is {image_hw}, "
                                 f"images[{i}] is {tuple(im.shape[-2:])}")
        self._start(ExplorerData(models, images, cache_mb), panel=panel, alpha=alpha, model_name=model_name,
                    image_index=image_index, layer=layer,
                    head=head, component=component, query=query, depth=depth, scale_mode=scale_mode)

    @classmethod
    def from_run(cls, path, *, layer: str | None = None, head: int = -1, component: str | None = None,
                 query=None, image_index: int = 0, model_name: str | None = None, epoch: int | None = None,
                 scale_mode: str = "fixed", panel: int = 256, cmap: str | None = None,
                 alpha: float = 0.75) -> AffinityExplorer:
        """The explorer of a training run's snapshots (:mod:`unifiedctx.inspection.snapshots`): the
        probe images' affinities of every watched layer at every stored epoch.

        ``path`` is the run folder (or ``{name: run folder}``: runs watched on the same probe images
        and epochs, compared like models). The same explorer, with one more field, ``epoch`` (default
        the last; ``explorer.epochs`` lists them), an epoch slider and a play button in the front end
        (the query, layer and head stay where they are while the epoch moves), and the colour scale
        ``scale_mode="fixed"`` by default: one scale for a layer over every epoch, so that what
        changes is seen (``"layer"``: each epoch its own; ``"map"``: each map its own). The snapshots
        hold affinities, not models: no through-depth view. ``to_html`` embeds every epoch.
        """
        from .explorer_run import RunData

        explorer = cls.__new__(cls)  # built on a run's data instead of models: the same _start
        panel, alpha = cls._options(explorer, panel, alpha, cmap)
        cls._start(explorer, RunData.open(path), panel=panel, alpha=alpha, model_name=model_name,
                   image_index=image_index, layer=layer, head=head, component=component, query=query,
                   depth="off", scale_mode=scale_mode, epoch=epoch)
        return explorer

    def _options(self, panel, alpha, cmap) -> tuple[int, float]:
        """The display options, checked (the colormap is kept as ``self._colormap``)."""
        panel = check_positive_int("panel", panel)
        if not 16 <= panel <= 2048:
            raise ValueError(f"panel must be a size in pixels in 16..2048, got {panel}")
        alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        self._colormap = check_cmap(cmap)
        return panel, alpha

    def _start(self, data, *, panel: int, alpha: float, **state) -> None:
        """Build the state on ``data`` (models' :class:`ExplorerData` or a run's ``RunData``) and the
        traits the front end draws from."""
        self.data = data
        self._display = [display_image(im) for im in data.images]
        if state["model_name"] is None:
            state["model_name"] = next(iter(data.models))
        self.state = ExplorerState(data, **state)
        luts, names = lut_bytes(self._colormap)
        h, w = (int(v) for v in data.images[0].shape[-2:])
        super().__init__(
            setup={"models": list(data.models), "n_images": len(data.images), "h": h, "w": w, "panel": panel,
                   "alpha": alpha, "luts": names, "depth_modes": list(data.depth_modes),
                   "marker": marker_rgb(), "epochs": list(data.epochs),
                   "scale_modes": list(data.scale_modes)},
            pictures=b"".join(p.tobytes() for p in self._display), luts=luts,
            catalog=payload.catalogues(self.data), shown=self.view_state())
        self.state.on_change(lambda what: setattr(self, "shown", self.view_state()))
        self.observe(self._on_shown, names="shown")
        self.on_msg(self._on_request)

    # ------------------------------------------------------------------ the bridge
    def view_state(self) -> dict:
        """The state the front end draws, as plain data: ``{model_name, image_index, layer, head,
        component, query: [row, col], depth}`` (what the ``shown`` trait carries)."""
        state = self.state.as_dict()
        return {**state, "query": list(state["query"])}

    @property
    def cmap(self) -> str:
        """The colormap name the maps are drawn with (checked at construction)."""
        return self._colormap

    def _on_shown(self, change) -> None:
        """The browser moved a control: take its state (it applied the same rules, from the
        catalogue's data); a state the kernel refuses is sent back as it was, with the reason (a
        ``{"kind": "refused", "error"}`` message the page shows)."""
        new = dict(change["new"])
        if new == self.view_state():
            return
        try:
            new["query"] = tuple(new.get("query", ()))
            self.state.update(**{k: new[k] for k in FIELDS if k in new})
        except (ValueError, TypeError) as error:
            self.send({"kind": "refused", "key": None, "error": f"the kernel kept its state: {error}"})
        if self.shown != self.view_state():
            self.shown = self.view_state()

    def check_request(self, request) -> dict:
        """A request of the front end, checked like a public argument, as a plain dict.

        ``{"need": "maps", model, image, layer, component[, scale, epoch]}`` (one layer component
        for one image, whole, on a colour scale of :data:`SCALE_MODES`, at an epoch of a run), ``{"need":
        "rows", model, image, layer, component, query[, scale, epoch]}`` (the same for one query only) or
        ``{"need": "depth", model, image, layer, mode, query}`` (one query's through-depth map); ``key`` (the
        front end's name for the request, echoed in the answer) may come with either. A message that
        is not such a dict, a missing or unknown key, a model, layer, component, scale, epoch or mode
        this explorer does not have, an image index out of range, a query that is not a pair of ints
        on the layer's grid: a ``TypeError`` / ``ValueError`` naming the entry and what it takes.
        """
        if not isinstance(request, dict):
            raise TypeError(f"a request from the front end must be a dict, got {type(request).__name__} "
                            f"{str(request)[:80]!r}")
        need = check_choice("request['need']", request.get("need"), REQUESTS)
        required, optional = REQUESTS[need]
        unknown = sorted(str(k) for k in request if k not in {"need", "key", *required, *optional})
        missing = [k for k in required if k not in request]
        if unknown or missing:
            raise ValueError(f"a {need!r} request takes {', '.join(required)} (and may take "
                             f"{', '.join(('key', *optional))}); " + "; ".join(
                                 ([f"missing: {', '.join(missing)}"] if missing else []) +
                                 ([f"unknown: {', '.join(unknown)}"] if unknown else [])))
        if "key" in request and not isinstance(request["key"], str):
            raise TypeError(f"request['key'] must be a string, got {type(request['key']).__name__}")
        checked = {"need": need,
                   "model": check_choice("request['model']", request["model"], self.data.models)}
        n = len(self.data.images)
        checked["image"] = check_int("request['image']", request["image"], low=0, high=n - 1)
        checked["layer"] = check_choice("request['layer']", request["layer"],
                                        self.data.catalogue(checked["model"]))
        info = self.data.info(checked["model"], checked["layer"])
        if need in ("maps", "rows"):
            checked["component"] = check_choice("request['component']", request["component"], info.components)
            checked["scale"] = check_choice("request['scale']", request.get("scale", "layer"),
                                            self.data.scale_modes)
            epoch = request.get("epoch")
            if self.data.epochs or epoch is not None:
                epoch = check_int("request['epoch']", epoch)
                if epoch not in self.data.epochs:
                    raise ValueError(f"request['epoch'] must be an epoch of this run "
                                     f"({compact_epochs(self.data.epochs) or 'none: no run'}), got {epoch}")
            checked["epoch"] = epoch
            if need == "maps":
                return checked
        else:
            checked["mode"] = check_choice("request['mode']", request["mode"], self.setup["depth_modes"][1:])
        query = request["query"]
        if not (isinstance(query, (list, tuple)) and len(query) == 2):
            raise TypeError(f"request['query'] must be a pair [row, col], got {type(query).__name__} "
                            f"{str(query)[:80]}")
        check_query("request['query']", tuple(query), info.grid)
        checked["query"] = (int(query[0]), int(query[1]))
        return checked

    def answer(self, request) -> tuple[dict, bytes]:
        """What the front end asked for (checked by :meth:`check_request`), as ``(meta, buffer)``:
        one layer component's colour indices (whole, or one query's rows), or one query's through-depth
        map."""
        r = self.check_request(request)
        if r["need"] == "maps":
            return payload.maps_entry(self.data, r["model"], r["image"], r["layer"], r["component"],
                                      self._colormap, r["scale"], r["epoch"])
        if r["need"] == "rows":
            return payload.rows_entry(self.data, r["model"], r["image"], r["layer"], r["component"],
                                      r["query"], self._colormap, r["scale"], r["epoch"])
        return payload.depth_entry(self.data, r["model"], r["image"], r["layer"], r["query"], r["mode"])

    def _on_request(self, _widget, content, _buffers) -> None:
        """Answer one message of the front end; a bad request (or a failure computing the answer) is
        answered too, ``{"kind": "error", "key", "error"}``, so the page shows it and stops waiting."""
        key = content.get("key") if isinstance(content, dict) else None
        try:
            meta, buffer = self.answer(content)
        except (TypeError, ValueError) as error:
            self.send({"kind": "error", "key": key if isinstance(key, str) else None, "error": str(error)})
            return
        except Exception as error:  # noqa: BLE001 -- the page must hear of it; the log keeps the traceback
            self.log.exception("the explorer failed to answer %r", content)
            self.send({"kind": "error", "key": key if isinstance(key, str) else None,
                       "error": f"the kernel failed to compute this view: {type(error).__name__}: {error}"})
            return
        self.send({**meta, "key": key}, [buffer] if buffer else [])

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
    def epochs(self) -> list[int]:
        """The epochs a training run's explorer holds (:meth:`from_run`); ``[]`` for models."""
        return list(self.data.epochs)

    @property
    def scale(self):
        """The colour scale now shared by the shown maps (:class:`unifiedctx.viz.scales.Scale`): the
        layer component's for this image (``scale_mode="layer"``; at this epoch, in a run) or over
        every epoch (``"fixed"``); with ``"map"`` each map has its own (:meth:`map_scales`) and this
        is the layer's, whose kind (signed, uniform level) they keep."""
        if self.scale_mode == "fixed":
            return self.data.fixed_scale(self.model_name, self._maps_image(), self.layer, self.component)
        return self.data.scale(self.model_name, self._maps_image(), self.layer, self.component, self.epoch)

    def map_scales(self) -> list:
        """The colour scale of each shown map (one head's row for the query), in head order: the
        shared :attr:`scale` for every map, or with ``scale_mode="map"`` each map's own range
        (:func:`~unifiedctx.viz.scales.row_limits`)."""
        from dataclasses import replace

        from ..viz.scales import row_limits

        shared = self.scale
        if self.scale_mode != "map":
            return [shared] * len(self.state.shown_heads)
        vmin, vmax = row_limits(self.maps().reshape(len(self.state.shown_heads), -1), shared)
        return [replace(shared, vmin=float(lo), vmax=float(hi)) for lo, hi in zip(vmin, vmax)]

    def _maps_image(self) -> int:
        return 0 if self.state.info.image_independent(self.component) else self.image_index

    def shown_entries(self) -> tuple[tuple[dict, bytes], tuple[dict, bytes] | None]:
        """The two answers the front end draws the current state from: the layer component's
        ``(meta, colour indices)`` (whole, or the query's rows: the component's form) and, when a depth view
        is on, the query's ``(meta, map)``."""
        s = self.state
        request = {"need": "maps", "model": s.model_name, "image": self._maps_image(), "layer": s.layer,
                   "component": s.component, "scale": s.scale_mode, "epoch": s.epoch}
        if self.state.info.form(s.component) == "query":
            request.update(need="rows", query=list(s.query))
        maps = self.answer(request)
        depth = None if s.depth == "off" else self.answer({
            "need": "depth", "model": s.model_name, "image": s.image_index, "layer": s.layer,
            "mode": s.depth, "query": s.query})
        return maps, depth

    @property
    def status(self) -> dict[str, str]:
        """The status fields the front end shows above the pictures: ``{field: text}``
        (the same templates, filled in the same way)."""
        (maps, _), depth = self.shown_entries()
        values = {"row": self.query[0], "col": self.query[1], "head": self.head, "image": self.image_index,
                  "vmax": depth[0]["vmax"][0] if depth and "vmax" in depth[0] else "", "epoch": self.epoch}
        fields = maps["fields"] + (depth[0]["fields"] if depth else [])
        return {name: payload.fill(t[0 if self.head == -1 else 1] if isinstance(t[0], list) else t, values)
                for name, t in fields}

    @property
    def label_text(self) -> str:
        """The status as one line of text, ``"field: value; ..."``."""
        return "; ".join(f"{k}: {v}" for k, v in self.status.items())

    @property
    def warning(self) -> str:
        """What the front end shows instead of a map that holds NaN or inf (``""`` when none)."""
        (maps, _), depth = self.shown_entries()
        return maps["warning"] or (depth[0]["warning"] if depth else "")

    def maps(self) -> np.ndarray:
        """The maps now shown: row ``query`` of each shown head's affinity, ``(M', H, W)``."""
        a = self.data.rows(self.model_name, self._maps_image(), self.layer, self.component, self.query,
                           self.epoch)
        rows = a.reshape(a.shape[0], *self.grid)
        return rows if self.head == -1 else rows[self.head:self.head + 1]

    def depth_data(self) -> dict | None:
        """The through-depth map now shown, as the plain dict of
        :func:`~unifiedctx.context.rollout_maps` / :func:`~unifiedctx.context.erf_maps` (``map``
        ``(H_in, W_in)`` summing to 1, ...), or ``None`` when ``depth == "off"``."""
        if self.depth == "off":
            return None
        return self.data.depth(self.model_name, self.image_index, self.layer, self.query, self.depth)

    def depth_map(self) -> np.ndarray | None:
        """The through-depth map now shown, ``(H_in, W_in)`` float64, or ``None`` when off."""
        data = self.depth_data()
        return None if data is None else data["map"]

    def rendered(self) -> dict:
        """What the front end is given to draw now: ``{"maps": (M', H, W) float, "indices": the
        colour indices of the shown heads' rows (uint8 (M', H, W), what the browser looks up in the
        colormap), "depth": the through-depth map ((H_in, W_in) float or None), "fields", "label",
        "warning"}``."""
        (meta, buffer), _ = self.shown_entries()
        indices = None
        if buffer:
            rows = payload.place_rows(meta, buffer, self.query, self.grid)[0].reshape(-1, *self.grid)
            indices = rows if self.head == -1 else rows[self.head:self.head + 1]
        try:
            depth = self.depth_map()
        except (TypeError, ValueError):
            depth = None
        return {"maps": self.maps(), "indices": indices, "depth": depth, "fields": self.status,
                "label": self.label_text, "warning": self.warning}

    # ------------------------------------------------------------------ changing
    def show(self, *, model_name=None, image_index=None, layer=None, component=None, head=None,
             query=None, depth=None, scale_mode=None, epoch=None) -> AffinityExplorer:
        """Set several fields at once, in dependency order, and send the new state once.

        ``query`` is read on the grid of the new ``layer`` (setting ``layer`` alone rescales
        the old query onto the new grid).
        """
        self.state.update(model_name=model_name, image_index=image_index, layer=layer,
                          component=component, head=head, query=query, depth=depth, scale_mode=scale_mode,
                          epoch=epoch)
        return self

    def _repr_mimebundle_(self, **kwargs):
        """The widget; while the course executes for the static site (``UNIFIEDCTX_STATIC_EXPLORERS``
        names a folder, see :mod:`unifiedctx.site`) also its exported page, written there and shown
        in an ``<iframe>`` as the ``text/html`` of the output, so the site's explorers stay live."""
        import html
        import os

        from ..site import EXPLORERS, STATIC_ENV
        from .export import export_for_site

        bundle = super()._repr_mimebundle_(**kwargs)
        folder = os.environ.get(STATIC_ENV)
        if folder:
            page = export_for_site(self, folder)
            src = html.escape(f"{EXPLORERS}/{page.name}", quote=True)
            frame = (f'<iframe src="{src}" title="affinity explorer" loading="lazy" '
                     f'style="width:100%;height:{self.setup["panel"] * 2 + 260}px;border:0"></iframe>')
            if isinstance(bundle, tuple):
                data, metadata = bundle
                bundle = ({**data, "text/html": frame}, metadata)
            else:
                bundle = {**(bundle or {}), "text/html": frame}
        return bundle

    def to_html(self, path, **options):
        """Write the explorer as ONE self-contained HTML page (see :func:`.export.write_html`): the same front
        end (``explorer.js``) with every layer, head, component and query of every model and image
        precomputed, in the compact form each layer has (a kernel layer's kernels, drawn by the page; a
        windowed attention's windows), and the through-depth maps (``depth``, default ``("rollout",)``; add
        ``"ERF"`` for the effective receptive fields, one backward per query). No kernel, no network. What
        does not fit in ``max_mb`` (default 20 MB) is left out -- through-depth maps kept for a lattice of
        queries, a colour scale, then layers -- and the page says what (so does a :class:`~.export.LeftOut`
        warning). Returns the path written; ``options`` go to :func:`~.export.write_html` (``max_mb``,
        ``images``, ``title``, ``depth``, ``scales``)."""
        from .export import write_html

        return write_html(self, path, **options)
