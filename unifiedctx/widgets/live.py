"""``LiveView``: a network's affinities learning, in the notebook, while the training cell runs.

A training loop (``fit(..., watch=images)``, or a loop written by hand) calls :meth:`LiveView.push`
after each epoch with the epoch's snapshot (:func:`~unifiedctx.inspection.snapshots.take_snapshot`)
and its history row, and every few steps of a long epoch with a row alone::

    live = LiveView(probe)                      # the probe images (B, C, H, W) the snapshots are of
    display(live)
    live.push(0, take_snapshot(model, probe))   # before the first step
    for epoch in range(1, epochs + 1):
        ...                                      # one epoch; live.push(epoch - 1 + k / steps, row={...})
        live.push(epoch, take_snapshot(model, probe), {"train_loss": ..., "test_acc": ...})

It shows the learning curves so far (every loss in one chart, every other score in [0, 1] in a
second), the mixing weights of every mixed layer (Container's alpha and beta, GPSA's gates) over the
epochs, and, for one chosen layer, component and query, every probe image's map at epoch 0 and at the
latest epochs, one column an epoch, growing as training goes.

**Pushed, never asked for.** While a cell runs the kernel sends messages out but reads none in, so
the front end (the explorer's own ES module, ``explorer.js``, in its live mode) can ask nothing
while training runs: each push sends everything the view draws, for every head and every colour
scale (one over the run so far, each epoch its own, each map its own), so the head and the scale
move in the browser at once. Another layer, component or query is taken by the kernel when it is
free (between cells; the page says it waits), or set from Python (:meth:`show`). What is sent is
the chosen query's row for each image, epoch and head: ``3 x E x B x M x N`` bytes.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy as np
import torch
import traitlets

from ..inspection.snapshots import Snapshot
from ..validation import check_choice, check_float, check_int, check_positive_int, check_query
from ..viz.scales import Scale, merge_scales, scale_for
from . import explorer_payload as payload
from .explorer_data import COMPONENT_ORDER, LayerInfo, as_images, default_layer
from .explorer_run import ROW_SUM_ATOL
from .front import FrontEnd, check_cmap, display_image, lut_bytes, marker_rgb

#: The colour scales of the live view, in the order offered: one over every image and epoch so far
#: (what makes change visible), one per epoch (over its images), each map its own.
LIVE_SCALES = ("fixed", "layer", "map")
#: Entries of a history row that are not curves (times, rates, counters).
NOT_CURVES = {"epoch", "lr", "time", "epoch_time", "images_per_s", "step", "steps", "mixing"}


def curves_of(rows: list[tuple[float, dict]], snapshots: list[tuple[float, Snapshot]]) -> dict:
    """The charts of the live view, as plain data: ``{"panels": [{"title", "series": [{"name", "x",
    "y"}]}]}``: every loss of the rows (``*loss*``) in one, every other score in [0, 1] in a second,
    and the mixing weights of every mixed layer (from the snapshots, else the rows' ``"mixing"``)."""
    losses, scores = OrderedDict(), OrderedDict()
    for epoch, row in rows:
        for key, value in row.items():
            if key in NOT_CURVES or not isinstance(value, numbers.Real) or isinstance(value, bool):
                continue
            value = float(value)
            if not math.isfinite(value):
                continue
            if "loss" in key:
                losses.setdefault(key, []).append((epoch, value))
            elif 0.0 <= value <= 1.0:
                scores.setdefault(key, []).append((epoch, value))
    mixing = OrderedDict()
    sources = [(e, s.mixing) for e, s in snapshots] or [(e, r.get("mixing") or {}) for e, r in rows]
    for epoch, layers in sources:
        for layer, knobs in layers.items():
            for knob, value in knobs.items():
                values = value if isinstance(value, (list, tuple)) else [value]
                for k, v in enumerate(values):
                    if v is not None and math.isfinite(float(v)):
                        name = f"{layer} {knob}" + (f"[{k}]" if len(values) > 1 else "")
                        mixing.setdefault(name, []).append((epoch, float(v)))

    def panel(title, series):
        return {"title": title, "series": [{"name": n, "x": [p[0] for p in pts], "y": [p[1] for p in pts]}
                                           for n, pts in series.items()]}

    return {"panels": [panel("loss", losses), panel("scores", scores), panel("mixing weights", mixing)]}


def _check_wanted(layer, component, head, query, scale_mode) -> None:
    """What :meth:`LiveView.show` can check before the first snapshot says which layers there are: the
    types, a head >= 0, a query (row, col) of ints >= 0, a known colour scale (``None``: not given)."""
    for name, value in (("layer", layer), ("component", component)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string (a name) or None, got {type(value).__name__} {value!r}")
    if head is not None:
        check_int("head", head, low=0)  # the constructor's default 0 is given
    if query is not None:
        if not (isinstance(query, (tuple, list)) and len(query) == 2):
            raise TypeError(f"query must be a pair (row, col), got {query!r}")
        check_int("query[0]", query[0], low=0)
        check_int("query[1]", query[1], low=0)
    if scale_mode is not None:
        check_choice("scale_mode", scale_mode, LIVE_SCALES)


class LiveView(FrontEnd):
    """The live view of a training run; see the module docstring.

    Parameters
    ----------
    images:
        The probe images ``(B, C, H, W)`` the pushed snapshots are of.
    layer, component, head, query:
        What the maps show (defaults: the first mixed layer, else the first; its first component in
        the order mixed, dynamic, static; head 0; the centre of the layer's grid); checked when the
        first snapshot comes.
    scale_mode:
        ``"fixed"`` (one colour scale over every image and epoch so far, stated by a colorbar),
        ``"layer"`` (each epoch its own, over its images) or ``"map"`` (each map its own).
    columns:
        How many epochs are drawn side by side: epoch 0 and the latest ``columns - 1``.
    panel:
        Size in pixels of the longer side of each map (16..512).
    cmap, alpha:
        As :class:`~.explorer.AffinityExplorer`'s.
    """

    curves = traitlets.Dict().tag(sync=True)
    frames = traitlets.Dict().tag(sync=True)
    frame_data = traitlets.Bytes(b"").tag(sync=True)

    def __init__(self, images, *, layer: str | None = None, component: str | None = None, head: int = 0,
                 query=None, scale_mode: str = "fixed", columns: int = 8, panel: int = 96,
                 cmap: str | None = None, alpha: float = 0.75):
        images = as_images(images)
        panel = check_positive_int("panel", panel)
        if not 16 <= panel <= 512:
            raise ValueError(f"panel must be a size in pixels in 16..512, got {panel}")
        columns = check_int("columns", columns, low=2)
        alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        self._colormap = check_cmap(cmap)
        _check_wanted(layer, component, head, query, scale_mode)
        self._wanted = {"layer": layer, "component": component, "head": head, "query": query,
                        "scale_mode": scale_mode}
        self._images = images
        self._snapshots: list[tuple[float, Snapshot]] = []
        self._rows: list[tuple[float, dict]] = []
        self._scales: dict = {}
        display = [display_image(im) for im in images]
        h, w = (int(v) for v in images[0].shape[-2:])
        luts, names = lut_bytes(self._colormap)
        super().__init__(
            setup={"live": True, "n_images": len(images), "h": h, "w": w, "panel": panel, "alpha": alpha,
                   "luts": names, "marker": marker_rgb(), "columns": columns,
                   "scale_modes": list(LIVE_SCALES)},
            pictures=b"".join(p.tobytes() for p in display), luts=luts, curves=curves_of([], []),
            shown={"scale_mode": scale_mode, "head": head})
        self.observe(self._on_shown, names="shown")

    # ------------------------------------------------------------------ the trainer's side
    def push(self, epoch, snapshot: Snapshot | None = None, row: dict | None = None) -> None:
        """Draw one more moment of training: ``epoch`` (a number of epochs trained, from 0; a fraction
        within a long epoch), its ``snapshot`` (of this view's probe images) and/or its history
        ``row`` (numbers by name: losses, scores, ``"mixing"``). Epochs must not go back. Everything
        the view draws is sent now (the page asks nothing while the cell runs)."""
        epoch = check_float("epoch", epoch, low=0.0)
        last = max([e for e, _ in self._snapshots] + [e for e, _ in self._rows], default=None)
        if last is not None and epoch < last:
            raise ValueError(f"epoch {epoch:g} comes before the last one pushed ({last:g}): epochs must "
                             "not go back")
        if snapshot is None and row is None:
            raise ValueError("push needs a snapshot, a history row or both")
        if row is not None:
            if not isinstance(row, dict):
                raise TypeError("row must be a dict of numbers by name (a history row), got "
                                f"{type(row).__name__}")
            self._rows.append((epoch, dict(row)))
        with self.hold_sync():
            if snapshot is not None:
                self._take(epoch, snapshot)
                self._send_frames()
            self.curves = curves_of(self._rows, self._snapshots)

    def _take(self, epoch: float, snapshot: Snapshot) -> None:
        if not isinstance(snapshot, Snapshot):
            raise TypeError(f"snapshot must be a Snapshot (take_snapshot(model, images)), got "
                            f"{type(snapshot).__name__}")
        if snapshot.images != len(self._images):
            raise ValueError(f"snapshot is of {snapshot.images} images, this view's probe images are "
                             f"{len(self._images)}")
        if self._snapshots and snapshot.layers != self._snapshots[0][1].layers:
            raise ValueError("snapshot's layers are not those of the first one pushed: watch one model")
        if self._snapshots and self._snapshots[-1][0] == epoch:
            self._snapshots.pop()  # the same moment again: the newer snapshot replaces it
        self._snapshots.append((epoch, snapshot))
        if not self.catalog:
            self._start(snapshot)

    def _start(self, snapshot: Snapshot) -> None:
        """The first snapshot: the layers are known, the wanted state is checked."""
        self._infos = OrderedDict((la.name, LayerInfo(la.kind, la.grid, OrderedDict(sorted(
            ((c, m) for c, m, _ in la.components),
            key=lambda cm: COMPONENT_ORDER.index(cm[0]) if cm[0] in COMPONENT_ORDER else 99)),
            la.description, la.head_unit)) for la in snapshot.layers)
        self.catalog = {"default_layer": default_layer(self._infos),
                        "layers": [payload.layer_entry(n, i) for n, i in self._infos.items()]}
        wanted = self._wanted
        self.shown = self._checked({**wanted, "layer": wanted["layer"] or default_layer(self._infos)})

    # ------------------------------------------------------------------ the state
    def _checked(self, state: dict) -> dict:
        """``state`` (layer, component, head, query, scale_mode) made whole and checked."""
        layer = check_choice("layer", state.get("layer"), self._infos)
        info = self._infos[layer]
        component = state.get("component") or info.components[0]
        component = check_choice("component", component, info.components)
        heads = info.heads[component]
        head = check_int("head", state.get("head", 0), low=0)
        if head >= heads:
            raise ValueError(f"head must be < {heads} (layer {layer!r} has {heads} {info.head_unit}s), "
                             f"got {head}")
        h, w = info.grid
        query = state.get("query")
        query = (h // 2, w // 2) if query is None else query
        if not (isinstance(query, (tuple, list)) and len(query) == 2):
            raise TypeError(f"query must be a pair (row, col), got {query!r}")
        check_query("query", tuple(query), info.grid)
        scale_mode = check_choice("scale_mode", state.get("scale_mode", "fixed"), LIVE_SCALES)
        return {"layer": layer, "component": component, "head": head, "query": [int(query[0]), int(query[1])],
                "scale_mode": scale_mode}

    def show(self, *, layer=None, component=None, head=None, query=None, scale_mode=None) -> LiveView:
        """Choose what the maps show (checked; a new layer starts at its first component and the
        centre of its grid unless given) and send it."""
        if not self.catalog:  # nothing pushed yet: checked now what needs no layer, the rest later
            _check_wanted(layer, component, head, query, scale_mode)
            given = dict(layer=layer, component=component, head=head, query=query, scale_mode=scale_mode)
            self._wanted.update({k: v for k, v in given.items() if v is not None})
            return self
        new_layer = layer is not None and layer != self.shown["layer"]
        state = {**self.shown, **({"component": None, "query": None, "head": 0} if new_layer else {})}
        state.update({k: v for k, v in dict(layer=layer, component=component, head=head, query=query,
                                            scale_mode=scale_mode).items() if v is not None})
        checked = self._checked(state)
        with self.hold_sync():
            self.shown = checked
            self._send_frames()
        return self

    def _on_shown(self, change) -> None:
        """The browser chose another layer, component, head, query or scale: take it (when the
        kernel is free), or send the state back with the reason."""
        new = change["new"]
        if not self.catalog or new == self.frames.get("for"):
            return
        try:
            checked = self._checked(dict(new) if isinstance(new, dict) else {})
        except (TypeError, ValueError) as error:
            self.send({"kind": "refused", "key": None, "error": f"the kernel kept its state: {error}"})
            self.shown = self.frames.get("for", {})
            return
        if checked != new:
            self.shown = checked
        self._send_frames()

    # ------------------------------------------------------------------ what is drawn
    @property
    def images(self) -> torch.Tensor:
        """The probe images ``(B, C, H, W)`` (float32) the pushed snapshots are of."""
        return torch.stack(self._images)

    @property
    def epochs(self) -> list[float]:
        """The epochs of the snapshots pushed so far."""
        return [e for e, _ in self._snapshots]

    def maps(self) -> np.ndarray:
        """The rows now shown: for every pushed epoch, image and head, row ``query`` of the layer
        component, folded onto its grid: ``(E, B, M, h, w)`` float32 (a component that is the same
        for every image is repeated)."""
        s = self.shown
        info = self._infos[s["layer"]]
        (h, w), q = info.grid, s["query"][0] * info.grid[1] + s["query"][1]
        rows = [np.broadcast_to(snap.maps[(s["layer"], s["component"])][:, :, q, :].astype(np.float32),
                                (len(self._images), info.heads[s["component"]], h * w))
                for _, snap in self._snapshots]
        return np.stack(rows).reshape(len(rows), len(self._images), -1, h, w)

    def epoch_scale(self, index: int) -> Scale:
        """The colour scale of the ``index``-th pushed epoch: its layer component over every probe
        image (every head and query)."""
        s = self.shown
        epoch, snap = self._snapshots[index]
        key = (s["layer"], s["component"], epoch, id(snap))
        if key not in self._scales:
            self._scales[key] = scale_for(snap.maps[(s["layer"], s["component"])].astype(np.float32),
                                          atol=ROW_SUM_ATOL)
        return self._scales[key]

    def fixed_scale(self) -> Scale:
        """One colour scale over every pushed epoch and image (``viz.scales.merge_scales``)."""
        return merge_scales(self.epoch_scale(i) for i in range(len(self._snapshots)))

    def frame(self, scale_mode: str | None = None) -> np.ndarray:
        """The colour indices sent for ``scale_mode`` (default the shown one): uint8 ``(E, B, M, h, w)``."""
        mode = check_choice("scale_mode", scale_mode or self.shown["scale_mode"], LIVE_SCALES)
        maps = self.maps()
        scales = [self.epoch_scale(i) for i in range(len(maps))]
        return self._encode(maps.reshape(*maps.shape[:3], -1), mode, scales).reshape(maps.shape)

    @staticmethod
    def _encode(flat: np.ndarray, mode: str, scales: list[Scale]) -> np.ndarray:
        """Rows ``(E, B, M, N)`` as colour indices on ``mode``'s scale (uint8, same shape)."""
        flat = flat.astype(np.float64)
        if mode == "fixed":
            return payload.colour_index(flat, merge_scales(scales))
        if mode == "layer":
            return np.stack([payload.colour_index(f, sc) for f, sc in zip(flat, scales)])
        return np.stack([payload.row_scales(f, sc)[0] for f, sc in zip(flat, scales)])

    def _send_frames(self) -> None:
        if not self._snapshots:
            return
        s = self.shown
        info = self._infos[s["layer"]]
        n = info.grid[0] * info.grid[1]
        scales = [self.epoch_scale(i) for i in range(len(self._snapshots))]
        fixed = merge_scales(scales)
        flat = self.maps().reshape(len(scales), len(self._images), -1, n).astype(np.float64)
        own = [payload.row_scales(f, sc)[1] for f, sc in zip(flat, scales)]
        cmap = self._colormap
        self.frames = {
            "for": dict(s), "epochs": self.epochs, "grid": list(info.grid), "heads": int(flat.shape[2]),
            "unit": info.head_unit, "images": len(self._images), "modes": list(LIVE_SCALES),
            "fixed": {**payload.scale_data(fixed, None if fixed.signed else cmap),
                      "text": f"one scale over every image and epoch so far: {fixed.describe()}"},
            "layer": {"cmap": [sc.cmap if sc.signed or cmap is None else cmap for sc in scales],
                      "range": [f"{payload.g3(sc.vmin)} to {payload.g3(sc.vmax)}" for sc in scales],
                      "text": "each epoch on its own scale (its range written under it), over its images"},
            "map": {"range": [[f"{v} to {x}" for v, x in zip(o["vmin"], o["vmax"])] for o in own],
                    "text": "each map on its own scale, written under it: maps are NOT comparable by colour"},
            "description": info.description, "kind": info.kind}
        self.frame_data = b"".join(self._encode(flat, mode, scales).tobytes() for mode in LIVE_SCALES)
