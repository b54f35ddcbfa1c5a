"""What the explorer's front end is sent: plain data, compact byte buffers, every word written here.

The kernel computes, the browser draws. For each thing the front end (``explorer.js``) may draw,
this module turns :class:`~.explorer_data.ExplorerData` into one plain dict (JSON-able) and one
byte buffer:

* :func:`catalogue` -- a model's layers: name, kind, grid, unit, description, components with
  their head counts (``M``) and whether they depend on the image, the model's default layer, and
  the **carry tables** (:func:`carry_tables`): for every pair of grids, the cell of the new grid
  over the same place of the image as each cell of the old one (the rule of
  :func:`~.explorer_state.carry_query`, as data, so the browser never re-implements it);
* :func:`maps_entry` -- one layer component for one image (and epoch, in a training run), whole (its form
  ``"whole"``, see :data:`~.explorer_data.FORMS`): its ``(M, N, N)`` affinity as **colour indices**
  ``u = rint(255 * normalise(a))`` (uint8, so the browser only looks ``u`` up in the colormap) on the colour
  scale the state asks for (``scale_mode``: ``"layer"``, the component's
  :class:`~unifiedctx.viz.scales.Scale`, shared by every head and query; ``"fixed"``, one over every epoch
  of a run; ``"map"``, each row -- one head's map of one query -- on its own range,
  :func:`~unifiedctx.viz.scales.row_limits`, the ranges listed per row), the scale's words and colorbar
  marks (:func:`scale_data`) and the status fields (:func:`maps_fields`) as templates;
* :func:`rows_entry` -- the same for one query of a layer component whose form is ``"query"``: its ``(M, N)``
  rows only (memory and messages grow with what is shown, not with ``N^2``);
* :func:`stencil_entry`, :func:`windows_entry`, :func:`lattice_entry` -- what the exported page stores of a
  ``"query"`` component, from which its stand-in for the kernel (``page_model.js``) answers the same rows
  request (:func:`place_rows` is that rule in Python): a kernel layer's kernels, cut by the border as each
  class of queries sees them; a windowed attention's windows and their places on the grid; any other layer's
  rows for the queries of a lattice;
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
from .explorer_data import ExplorerData, LayerInfo, StencilLayer, WindowedLayer, default_layer
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
            "components": [{"name": c, "heads": int(m), "shared": info.image_independent(c),
                            "form": info.form(c)} for c, m in info.heads.items()]}


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


def _shared_scale(data, model, image, layer, component, scale_mode, epoch) -> Scale:
    if scale_mode == "fixed":
        return data.fixed_scale(model, image, layer, component)
    return data.scale(model, image, layer, component, epoch)


def _meta(data, kind, model, image, layer, component, a, scale, scale_mode, epoch, cmap, warning) -> dict:
    shown_cmap = cmap if cmap is not None and not scale.signed else None
    return {"kind": kind, "model": model, "image": int(image), "layer": layer, "component": component,
            "epoch": epoch, "scale_mode": scale_mode, "heads": int(a.shape[0]),
            "scale": map_scale_data(scale, shown_cmap) if scale_mode == "map" and not warning else
            scale_data(scale, shown_cmap),
            "rows": None, "fields": maps_fields(data, model, layer, component, scale, scale_mode),
            "warning": warning}


def _where(model, layer, component, epoch) -> str:
    where = f"layer {layer!r} ({component}) of model {model!r}"
    return where + ("" if epoch is None else f" at epoch {epoch}")


def maps_entry(data: ExplorerData, model: str, image: int, layer: str, component: str,
               cmap: str | None = None, scale_mode: str = "layer", epoch: int | None = None
               ) -> tuple[dict, bytes]:
    """One layer component for one image (and ``epoch`` of a run), whole: ``(meta, buffer)``; the buffer is
    the ``(M, N, N)`` affinity as uint8 colour indices on the ``scale_mode``'s scale (see the module
    docstring; ``meta["rows"]`` lists each row's range with ``"map"``), empty (and ``meta["warning"]`` set)
    when the affinity holds a non-finite value."""
    a = data.affinity(model, image, layer, component, epoch)
    warning = nonfinite_warning(_where(model, layer, component, epoch), a)
    scale = Scale("magma", 0.0, 1.0, False) if warning else \
        _shared_scale(data, model, image, layer, component, scale_mode, epoch)
    meta = _meta(data, "maps", model, image, layer, component, a, scale, scale_mode, epoch, cmap, warning)
    if warning:
        return meta, b""
    if scale_mode == "map":
        u, meta["rows"] = row_scales(a, scale)
        return meta, u.tobytes()
    return meta, colour_index(a, scale).tobytes()


def rows_entry(data: ExplorerData, model: str, image: int, layer: str, component: str, query,
               cmap: str | None = None, scale_mode: str = "layer", epoch: int | None = None
               ) -> tuple[dict, bytes]:
    """One query of a layer component: ``(meta, buffer)``, the buffer the ``(M, N)`` rows of ``query``
    (``(row, col)``) as uint8 colour indices, on the layer's shared scale or (``"map"``) each row on its own
    (``meta["rows"]``: the M rows' ranges). A layer with a non-finite value anywhere has no shared scale: the
    meta's ``warning`` says so and no buffer comes."""
    a = data.rows(model, image, layer, component, query, epoch)
    where = _where(model, layer, component, epoch)
    warning = nonfinite_warning(where + f", query {tuple(query)}", a)
    scale = Scale("magma", 0.0, 1.0, False)
    if not warning:
        try:
            scale = _shared_scale(data, model, image, layer, component, scale_mode, epoch)
        except ValueError as error:  # a non-finite value in another query's rows
            warning = f"{where} holds non-finite values (NaN or inf): not drawn ({error})"
    meta = _meta(data, "rows", model, image, layer, component, a, scale, scale_mode, epoch, cmap, warning)
    meta["query"] = [int(query[0]), int(query[1])]
    if warning:
        return meta, b""
    if scale_mode == "map":
        u, meta["rows"] = row_scales(a, scale)
        return meta, u.tobytes()
    return meta, colour_index(a, scale).tobytes()


# ------------------------------------------------------------------ what the exported page stores
def _coloured(a: np.ndarray, scale: Scale, scale_mode: str) -> tuple[np.ndarray, dict | None]:
    """``a`` (rows on the last axis) as colour indices on the shared scale, or each row on its own."""
    if scale_mode == "map":
        return row_scales(a, scale)
    return colour_index(a, scale), None


def _zero(scale: Scale, scale_mode: str) -> int:
    """The colour index of an affinity of 0 (what a row holds off its kernel or window)."""
    if scale_mode == "map":
        return int(np.rint(0.5 * 255)) if scale.signed else 0
    return int(colour_index(np.zeros(1), scale)[0])


def stencil_entry(data: ExplorerData, model: str, layer: str, component: str, cmap: str | None = None,
                  scale_mode: str = "layer") -> tuple[dict, bytes]:
    """A kernel layer (:class:`~.explorer_data.StencilLayer`) as the page stores it: ``(meta, buffer)``, the
    buffer ``(C, M, K)`` uint8, the colour indices of the K taps of each head's kernel for each class of
    queries that the grid's border cuts alike (computed from a real row of each class, so each class's own
    range with ``"map"``); ``meta``: ``offsets`` (the taps, ``[dy, dx]``), ``class_y`` / ``class_x`` (the
    class
    of each row and column; class ``class_y[r] * classes_x + class_x[c]``), ``zero`` (the colour of 0, every
    other cell) and with ``"map"`` ``rows`` listed per class and head. :func:`place_rows` draws a query."""
    info = data.info(model, layer)
    source = data.source(model, 0, layer)
    (h, w), heads = info.grid, info.heads[component]
    scale = _shared_scale(data, model, 0, layer, component, scale_mode, None)
    cy, cx, ry, rx = source.classes()
    probes = [r * w + c for r in ry for c in rx]
    rows = source.rows(component, np.asarray(probes))  # (M, C, N)
    u, listed = _coloured(rows.transpose(1, 0, 2), scale, scale_mode)  # (C, M, N)
    zero = _zero(scale, scale_mode)
    offsets = source.offsets()
    taps = np.full((len(probes), heads, len(offsets)), zero, np.uint8)
    for k, q in enumerate(probes):
        r, c = divmod(q, w)
        for t, (dy, dx) in enumerate(offsets):
            if 0 <= r + dy < h and 0 <= c + dx < w:
                taps[k, :, t] = u[k, :, (r + dy) * w + c + dx]
    meta = _meta(data, "rows", model, 0, layer, component, rows, scale, scale_mode, None, cmap, "")
    meta.update({"form": "stencil", "offsets": [list(o) for o in offsets], "class_y": cy.tolist(),
                 "class_x": cx.tolist(), "classes_x": len(rx), "zero": zero, "rows": listed})
    return meta, taps.tobytes()


def windows_entry(data: ExplorerData, model: str, image: int, layer: str, component: str,
                  cmap: str | None = None, scale_mode: str = "layer") -> tuple[dict, bytes]:
    """A windowed attention (:class:`~.explorer_data.WindowedLayer`) as the page stores it: ``(meta,
    buffer)``, the buffer its windows' ``(nW, M, n, n)`` affinities as colour indices (with ``"map"``, each
    row on the range of its whole row, zeros outside the window counted); ``meta``: ``window`` / ``place`` (of
    each grid token), ``size`` (n), ``zero`` and, with ``"map"``, ``rows`` listed per ``(window, head,
    place)``. :func:`place_rows` draws a query."""
    info = data.info(model, layer)
    source = data.source(model, image, layer)
    scale = _shared_scale(data, model, image, layer, component, scale_mode, None)
    local = source.local
    n_grid, n = info.grid[0] * info.grid[1], local.shape[-1]
    if scale_mode == "map":
        padded = np.concatenate([local, np.zeros((*local.shape[:-1], 1), local.dtype)], -1) if n_grid > n \
            else local
        u, listed = row_scales(padded, scale)
        u = np.ascontiguousarray(u[..., :n])
    else:
        u, listed = colour_index(local, scale), None
    meta = _meta(data, "rows", model, image, layer, component, local[0], scale, scale_mode, None, cmap, "")
    meta.update({"form": "windows", "window": source.window.tolist(), "place": source.place.tolist(),
                 "size": int(n), "zero": _zero(scale, scale_mode), "rows": listed})
    return meta, u.tobytes()


def lattice(grid, step: int) -> list[int]:
    """The queries (flat indices) on every ``step``-th row and column of ``grid``, through its centre."""
    (h, w) = grid
    rows = [r for r in range(h) if r % step == (h // 2) % step]
    cols = [c for c in range(w) if c % step == (w // 2) % step]
    return [r * w + c for r in rows for c in cols]


def lattice_words(grid, queries: list[int]) -> str:
    """The queries of a lattice in words (``"rows 1, 5, 9 x columns 1, 5, 9"``)."""
    w = grid[1]
    rows = sorted({q // w for q in queries})
    cols = sorted({q % w for q in queries})
    return f"rows {', '.join(map(str, rows))} x columns {', '.join(map(str, cols))}"


def lattice_entry(data: ExplorerData, model: str, image: int, layer: str, component: str, queries,
                  cmap: str | None = None, scale_mode: str = "layer") -> tuple[dict, bytes]:
    """Any layer as the page stores it when it is neither small nor a kernel nor windows: the rows of the
    ``queries`` (flat indices) only, ``(Q, M, N)`` colour indices; ``meta["queries"]`` lists them, and a
    request for another query is answered with the lattice in words (``meta["held"]``)."""
    info = data.info(model, layer)
    w = info.grid[1]
    scale = _shared_scale(data, model, image, layer, component, scale_mode, None)
    rows = np.stack([data.rows(model, image, layer, component, divmod(q, w)) for q in queries])  # (Q, M, N)
    u, listed = _coloured(rows, scale, scale_mode)
    meta = _meta(data, "rows", model, image, layer, component, rows[0], scale, scale_mode, None, cmap, "")
    meta.update({"form": "lattice", "queries": [int(q) for q in queries], "rows": listed,
                 "held": lattice_words(info.grid, list(queries))})
    return meta, u.tobytes()


def page_form(data, model: str, layer: str, component: str) -> str:
    """How the page stores a layer component: a kernel layer's kernels (``"stencil"``) or a windowed
    attention's
    windows (``"windows"``) where that is smaller than the whole ``(M, N, N)``, else ``"whole"`` where the
    component is sent whole, else the rows of a lattice of queries (``"lattice"``)."""
    info = data.info(model, layer)
    source = data.source(model, 0, layer) if hasattr(data, "source") else None
    (h, w), heads = info.grid, info.heads[component]
    whole = heads * (h * w) ** 2
    if isinstance(source, StencilLayer):
        cy, cx, ry, rx = source.classes()
        small = len(ry) * len(rx) * heads * source.kernels.shape[-1] * source.kernels.shape[-2] < whole
        return "stencil" if small else "whole"
    if isinstance(source, WindowedLayer):
        return "windows" if source.local.size < whole else "whole"
    return "whole" if info.form(component) == "whole" else "lattice"


def place_rows(meta: dict, buffer: bytes, query, grid) -> tuple[np.ndarray, dict | None]:
    """The ``(M, N)`` colour indices of ``query`` (``(row, col)``) from a stored entry (whole, stencil,
    windows or lattice, see the module docstring), and the ranges of its M rows with ``"map"``: the rule
    ``page_model.js`` follows to answer a rows request from the page's data (None for a lattice query that is
    not held)."""
    (h, w), (r, c) = grid, (int(query[0]), int(query[1]))
    n, heads, q = h * w, meta["heads"], r * w + c
    data = np.frombuffer(buffer, np.uint8)
    listed = meta.get("rows")

    def pick(indices):
        if not listed:
            return None
        out = {k: [listed[k][i] for i in indices] for k in ("vmin", "vmax")}
        uniform = listed["uniform_at"]
        return {**listed, **out, "uniform_at": None if uniform is None else [uniform[i] for i in indices]}

    form = meta.get("form", "whole" if meta["kind"] == "maps" else "rows")
    if form == "whole":
        return data.reshape(heads, n, n)[:, q].copy(), pick([m * n + q for m in range(heads)])
    if form == "rows":
        return data.reshape(heads, n).copy(), listed
    if form == "lattice":
        if q not in meta["queries"]:
            return None, None
        k = meta["queries"].index(q)
        return data.reshape(-1, heads, n)[k].copy(), pick([k * heads + m for m in range(heads)])
    out = np.full((heads, n), meta["zero"], np.uint8)
    if form == "stencil":
        offsets = meta["offsets"]
        cls = meta["class_y"][r] * meta["classes_x"] + meta["class_x"][c]
        taps = data.reshape(-1, heads, len(offsets))[cls]
        for t, (dy, dx) in enumerate(offsets):
            if 0 <= r + dy < h and 0 <= c + dx < w:
                out[:, (r + dy) * w + c + dx] = taps[:, t]
        return out, pick([cls * heads + m for m in range(heads)])
    size, window, place = meta["size"], np.asarray(meta["window"]), np.asarray(meta["place"])
    local = data.reshape(-1, heads, size, size)
    same = np.flatnonzero(window == window[q])
    out[:, same] = local[window[q], :, place[q]][:, place[same]]
    return out, pick([(window[q] * heads + m) * size + place[q] for m in range(heads)])


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


def depth_rows_entry(mode: str, layers: int, rows: np.ndarray, queries: list[int] | None = None,
                     held: str = "") -> tuple[dict, bytes]:
    """Through-depth maps ``(Q, H_in, W_in)`` (one row a query) as ``(meta, uint8 buffer)``, each
    row on its own scale ``[0, vmax_q]``: ``vmax`` (texts) and ``uniform_at`` (the 1/(H_in W_in)
    level's position) are listed per row. ``queries``: the flat indices of the rows when they are not every
    query of the layer (``held`` says which, in words, for a request of another)."""
    flat = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    n = flat.shape[1]
    warning = nonfinite_warning(f"the {mode} map", flat)
    vmax = np.maximum(np.nan_to_num(flat, nan=0.0, posinf=0.0).max(axis=1), 1.0 / n)
    u = np.rint(np.clip(np.nan_to_num(flat / vmax[:, None]), 0, 1) * 255).astype(np.uint8)
    meta = {"kind": "depth", "mode": mode, "input": list(rows.shape[1:]), "cmap": "magma",
            "title": "rollout up to this layer" if mode == "rollout" else "effective receptive field",
            "vmax": [g3(v) for v in vmax], "uniform_at": [round(float(1 / n / v), 5) for v in vmax],
            "uniform": f"uniform 1/{n}", "fields": depth_fields(mode, layers, rows.shape[1:], ["vmax"]),
            "warning": warning, "queries": None if queries is None else [int(q) for q in queries],
            "held": held}
    return meta, b"" if warning else u.tobytes()


def depth_entry(data: ExplorerData, model: str, image: int, layer: str, query, mode: str):
    """One query's through-depth map (``mode`` ``"rollout"`` or ``"ERF"``) as ``(meta, buffer)``
    with one row (see :func:`depth_rows_entry`); a model the context code cannot read gets
    ``meta["warning"]`` with its error, and no buffer."""
    try:
        found = data.depth(model, image, layer, query, mode)
    except (TypeError, ValueError) as error:
        return {"kind": "depth", "mode": mode, "warning": f"{mode} unavailable for this layer: {error}",
                "fields": [["depth", [f"{mode} unavailable for this layer: {error}"]]]}, b""
    return depth_rows_entry(mode, len(found.get("layers", ())), found["map"][None])
