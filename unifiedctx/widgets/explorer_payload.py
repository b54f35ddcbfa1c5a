"""What the explorer's front end is sent: plain data, compact byte buffers, every word written here.

The kernel computes, the browser draws. For each thing the front end (``explorer.js``) may draw,
this module turns :class:`~.explorer_data.ExplorerData` into one plain dict (JSON-able) and one
byte buffer:

* :func:`catalogue` -- a model's layers: name, kind, grid, unit, description, components with
  their head counts (``M``) and whether they depend on the image, the model's default layer, and
  the **carry tables** (:func:`carry_tables`): for every pair of grids, the cell of the new grid
  over the same place of the image as each cell of the old one (the rule of
  :func:`~.explorer_state.carry_query`, as data, so the browser never re-implements it);
* :func:`maps_entry` -- one layer component for one image (and epoch, in a training run): its
  ``(M, N, N)`` affinity as **colour indices** ``u = rint(255 * normalise(a))`` (uint8, so the
  browser only looks ``u`` up in the colormap) on the colour scale the state asks for
  (``scale_mode``: ``"layer"``, the component's :class:`~unifiedctx.viz.scales.Scale`, shared by
  every head and query; ``"fixed"``, one over every epoch of a run; ``"map"``, each row -- one
  head's map of one query -- on its own range, :func:`~unifiedctx.viz.scales.row_limits`, the
  ranges listed per row), the scale's words and colorbar marks (:func:`scale_data`) and the
  status fields (:func:`maps_fields`) as templates;
* :func:`depth_entry` -- one query's through-depth map on the input pixels (``(H_in, W_in)``
  uint8, ``u = rint(255 * a / vmax)``, ``vmax = max(peak, 1 / (H_in W_in))``), with its fields.

Templates: a status value is a list of segments, literal text at even positions and the name of
a slot at odd ones (``["(", "row", ", ", "col", ") on a 4x4 grid"]``); :func:`fill` fills the
slots ``row``, ``col``, ``head``, ``image``, ``vmax``, ``epoch`` from the state. No text from a model or a
user is ever parsed for slots, so a layer called ``"{row}"`` is shown as it is.
"""

from __future__ import annotations

import numpy as np

from ..viz.scales import QUERY_MARKER, Scale, row_limits
from .explorer_data import ExplorerData, LayerInfo, default_layer
from .explorer_state import carry_query, compact_epochs

#: The slots a template may hold (see the module docstring).
SLOTS = ("row", "col", "head", "image", "vmax", "epoch")


def fill(template, values: dict) -> str:
    """The text of ``template`` (a list of segments, slots at odd positions) with ``values``."""
    return "".join(str(values[part]) if i % 2 else part for i, part in enumerate(template))


def g3(value: float) -> str:
    """A number as the colorbars and status write it (3 significant digits)."""
    return f"{value:.3g}"


def colour_index(a: np.ndarray, scale: Scale) -> np.ndarray:
    """``a`` as colormap positions ``u = rint(255 * normalise(a))``, uint8 (the browser's input)."""
    return np.rint(scale.normalise(a) * 255.0).astype(np.uint8)


def scale_data(scale: Scale, cmap: str | None = None) -> dict:
    """A colour scale for the front end: its colormap, its one-line description and the marks of
    its colorbar ``[position in [0, 1], text, class]`` (``"ucx-uniform"`` for the 1/N level)."""
    marks = [[1.0, g3(scale.vmax), ""], [0.0, g3(scale.vmin), ""]]
    if scale.signed:
        marks.append([float(scale.normalise(0.0)), "0", ""])
    if scale.uniform is not None:
        marks.append([float(scale.normalise(scale.uniform)), f"uniform 1/{scale.keys}", "ucx-uniform"])
    return {"cmap": cmap or scale.cmap, "text": scale.describe(), "marks": marks}


def carry_tables(grids) -> dict[str, list[int]]:
    """``{"oh,ow>nh,nw": [new cell of old cell q, for q in 0..oh*ow-1]}`` for every pair of
    distinct ``grids``: :func:`~.explorer_state.carry_query` as a lookup table."""
    grids = sorted({tuple(int(v) for v in g) for g in grids})
    tables = {}
    for old in grids:
        for new in grids:
            if old != new:
                cells = (carry_query(divmod(q, old[1]), old, new) for q in range(old[0] * old[1]))
                tables[f"{old[0]},{old[1]}>{new[0]},{new[1]}"] = [r * new[1] + c for r, c in cells]
    return tables


def layer_entry(name: str, info: LayerInfo) -> dict:
    """One layer of a catalogue (see :func:`catalogue`)."""
    h, w = info.grid
    return {"name": name, "label": f"{name}  [{info.kind}, {h}x{w}]", "kind": info.kind, "grid": [h, w],
            "unit": info.head_unit, "description": info.description,
            "components": [{"name": c, "heads": int(m), "shared": info.image_independent(c)}
                           for c, m in info.heads.items()]}


def catalogue(data: ExplorerData, model: str) -> dict:
    """A model's layers for the front end, in forward order, with its default layer."""
    layers = [layer_entry(name, data.info(model, name)) for name in data.catalogue(model)]
    return {"default_layer": default_layer(data.catalogue(model)), "layers": layers}


def catalogues(data: ExplorerData) -> dict:
    """Every model's :func:`catalogue` and the carry tables between all their grids."""
    models = {m: catalogue(data, m) for m in data.models}
    grids = [la["grid"] for c in models.values() for la in c["layers"]]
    return {"models": models, "order": list(data.models), "carry": carry_tables(grids)}


def scale_words(scale: Scale, scale_mode: str, unit: str, in_run: bool) -> str:
    """The status line that states the colour scale of the maps (see :func:`maps_entry`)."""
    if scale_mode == "map":
        if scale.signed:
            text = f"each map on its own scale: -max|a| to +max|a| of that map ({scale.cmap}, centred at 0)"
        else:
            text = f"each map on its own scale: 0 to that map's peak ({scale.cmap})"
        text += ", written over it"
        if scale.uniform is not None:
            text += f"; uniform 1/{scale.keys} = {g3(scale.uniform)}"
        return text + f" -- maps of different {unit}s or queries are NOT comparable by colour"
    shared = f", shared by every {unit} and query of this layer"
    if scale_mode == "fixed":
        return scale.describe() + shared + " and by every epoch of the run"
    return scale.describe() + shared + (" at this epoch" if in_run else "")


def maps_fields(data: ExplorerData, model: str, layer: str, component: str, scale: Scale,
                scale_mode: str = "layer") -> list:
    """The status fields of a layer component, as ``[name, template]`` pairs (``head``: a pair of
    templates, all heads and one head): model (when several), image (when several), epoch (in a
    run), layer, head, component, query, kind, affinity (the mixer's ``describe()``), scale."""
    info = data.info(model, layer)
    (h, w), m, unit = info.grid, info.heads[component], info.head_unit
    fields = []
    if len(data.models) > 1:
        fields.append(["model", [model]])
    if len(data.images) > 1:
        fields.append(["image", ["", "image", f" of {len(data.images)}"]])
    if data.epochs:
        fields.append(["epoch", ["", "epoch", f" (stored: {compact_epochs(data.epochs)})"]])
    fields += [["layer", [f"{layer} ({h}x{w} grid)"]],
               ["head", [[f"all {unit}s ({m})"], [f"{unit} ", "head", f" of {m}"]]],
               ["component", [component]],
               ["query", ["(", "row", ", ", "col", f") on a {h}x{w} grid, outlined in {QUERY_MARKER}"]],
               ["kind", [info.kind]], ["affinity", [info.description]],
               ["scale", [scale_words(scale, scale_mode, unit, bool(data.epochs))]]]
    return fields


def nonfinite_warning(what: str, values: np.ndarray) -> str:
    """``""`` when ``values`` are all finite, else the warning shown instead of the map."""
    bad = int(np.size(values) - np.isfinite(values).sum())
    if not bad:
        return ""
    return (f"{what} holds {bad} non-finite values (NaN or inf) of {np.size(values)}: not drawn. "
            f"Check the model's weights and inputs (a diverged training run?).")


def row_scales(a: np.ndarray, scale: Scale) -> tuple[np.ndarray, dict]:
    """``a`` ``(M, N, N)`` with each row on its own range (:func:`~unifiedctx.viz.scales.row_limits`
    of the kind of the shared ``scale``): its colour indices (uint8 ``(M, N, N)``) and, for the
    front end, every row's range as text (``vmin``, ``vmax``, row ``m * N + q``), the positions of
    0 (signed) and of the uniform level (``uniform_at``, per row, or ``None``) on each row's bar."""
    vmin, vmax = row_limits(a, scale)
    span = vmax - vmin
    u = np.rint(np.clip((a - vmin[..., None]) / span[..., None], 0.0, 1.0) * 255.0).astype(np.uint8)
    rows = {"vmin": [g3(v) for v in vmin.ravel()], "vmax": [g3(v) for v in vmax.ravel()],
            "zero_at": 0.5 if scale.signed else None,
            "uniform_at": None if scale.uniform is None else
            [round(float(v), 5) for v in ((scale.uniform - vmin) / span).ravel()],
            "uniform": None if scale.uniform is None else f"uniform 1/{scale.keys}"}
    return u, rows


def map_scale_data(scale: Scale, cmap: str | None) -> dict:
    """The colorbar of maps each on its own scale, when several are shown: its ends are each map's
    own (written over every map), so the bar says so instead of giving numbers."""
    marks = [[1.0, "each map's max|a|" if scale.signed else "each map's peak", ""],
             [0.0, "-max|a|" if scale.signed else "0", ""]]
    if scale.signed:
        marks.append([0.5, "0", ""])
    return {"cmap": cmap or scale.cmap, "text": "each map on its own scale", "marks": marks}


def maps_entry(data: ExplorerData, model: str, image: int, layer: str, component: str,
               cmap: str | None = None, scale_mode: str = "layer", epoch: int | None = None
               ) -> tuple[dict, bytes]:
    """One layer component for one image (and ``epoch`` of a run): ``(meta, buffer)``; the buffer is
    the ``(M, N, N)`` affinity as uint8 colour indices on the ``scale_mode``'s scale (see the module
    docstring; ``meta["rows"]`` lists each row's range with ``"map"``), empty (and
    ``meta["warning"]`` set) when the affinity holds a non-finite value."""
    a = data.affinity(model, image, layer, component, epoch)
    where = f"layer {layer!r} ({component}) of model {model!r}"
    where += "" if epoch is None else f" at epoch {epoch}"
    warning = nonfinite_warning(where, a)
    if warning:
        scale = Scale("magma", 0.0, 1.0, False)
    elif scale_mode == "fixed":
        scale = data.fixed_scale(model, image, layer, component)
    else:
        scale = data.scale(model, image, layer, component, epoch)
    shown_cmap = cmap if cmap is not None and not scale.signed else None
    meta = {"kind": "maps", "model": model, "image": int(image), "layer": layer, "component": component,
            "epoch": epoch, "scale_mode": scale_mode, "heads": int(a.shape[0]),
            "scale": scale_data(scale, shown_cmap), "rows": None,
            "fields": maps_fields(data, model, layer, component, scale, scale_mode), "warning": warning}
    if warning:
        return meta, b""
    if scale_mode == "map":
        u, meta["rows"] = row_scales(a, scale)
        meta["scale"] = map_scale_data(scale, shown_cmap)
        return meta, u.tobytes()
    return meta, colour_index(a, scale).tobytes()


def depth_fields(mode: str, layers: int, input_hw, vmax_template) -> list:
    """The status fields of a through-depth map (``depth`` and ``depth scale``) as templates."""
    h, w = input_hw
    n = h * w
    if mode == "rollout":
        what = f"rollout up to this layer ({layers} steps composed)"
    else:
        what = "effective receptive field |d y / d x| of this layer's output"
    scale = ["0 to ", *vmax_template,
             f" (magma); uniform 1/{n} = {g3(1 / n)}, this query's map alone (sums to 1)"]
    return [["depth", [f"{what}, query (", "row", ", ", "col", f"), on the {h}x{w} input pixels"]],
            ["depth scale", scale]]


def depth_rows_entry(mode: str, layers: int, rows: np.ndarray) -> tuple[dict, bytes]:
    """Through-depth maps ``(Q, H_in, W_in)`` (one row a query) as ``(meta, uint8 buffer)``, each
    row on its own scale ``[0, vmax_q]``: ``vmax`` (texts) and ``uniform_at`` (the 1/(H_in W_in)
    level's position) are listed per row."""
    flat = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    n = flat.shape[1]
    warning = nonfinite_warning(f"the {mode} map", flat)
    vmax = np.maximum(np.nan_to_num(flat, nan=0.0, posinf=0.0).max(axis=1), 1.0 / n)
    u = np.rint(np.clip(np.nan_to_num(flat / vmax[:, None]), 0, 1) * 255).astype(np.uint8)
    meta = {"kind": "depth", "mode": mode, "input": list(rows.shape[1:]), "cmap": "magma",
            "title": "rollout up to this layer" if mode == "rollout" else "effective receptive field",
            "vmax": [g3(v) for v in vmax], "uniform_at": [round(float(1 / n / v), 5) for v in vmax],
            "uniform": f"uniform 1/{n}", "fields": depth_fields(mode, layers, rows.shape[1:], ["vmax"]),
            "warning": warning}
    return meta, b"" if warning else u.tobytes()


def depth_entry(data: ExplorerData, model: str, image: int, layer: str, query, mode: str):
    """One query's through-depth map (``mode`` ``"rollout"`` or ``"ERF"``) as ``(meta, buffer)``
    with one row (see :func:`depth_rows_entry`); a model the context code cannot read gets
    ``meta["warning"]`` with its error, and no buffer."""
    try:
        found = data.depth(model, image, layer, query, mode)
    except (TypeError, ValueError) as error:
        return {"kind": "depth", "mode": mode, "warning": f"{mode} unavailable for this model: {error}",
                "fields": [["depth", [f"{mode} unavailable for this model: {error}"]]]}, b""
    return depth_rows_entry(mode, len(found.get("layers", ())), found["map"][None])
