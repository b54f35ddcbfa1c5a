"""Plain data for widgets and tables: one query's rollout or ERF as a numpy map, and how much
two such maps agree. Nothing here returns a tensor.

    rollout_maps(model, x, upto, query) -> {"map": (H_in, W_in) ndarray, "vmin", "vmax", ...}
    erf_maps(model, x, layer, query)    -> the same keys, for the effective receptive field
    agreement(a, b)                     -> {"spearman": rho, "top_overlap": share}
    map_distance(data)                  -> the mean distance (input pixels) of a map from its query
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..validation import check_bool, check_int
from .erf import erf_on_grid
from .extract import ContextGraph, check_image, context_graph
from .rollout import check_partial, query_index, rollout_graph, token_centres
from .steps import check_heads


def _check_index(index, x: torch.Tensor) -> int:
    """``index`` if it picks an image of the batch ``x`` ``(B, C, H, W)``: an int (not a bool) in
    ``[0, B)`` (``TypeError`` for another kind of value, ``ValueError`` off the batch)."""
    batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() == 4 else None
    index = check_int("index", index)
    if batch is not None and not 0 <= index < batch:
        raise ValueError(f"index must be an image of the batch, an int in [0, {batch}), got {index}")
    return index


def _plain(kind: str, layer: str, image: torch.Tensor, grid, input_grid, token: int, signed: bool,
           scale: str, layers: list[str]) -> dict:
    m = image.detach().double().cpu().numpy()
    top = float(np.abs(m).max()) if m.size else 0.0
    row, col = divmod(token, grid[1])
    centre = token_centres(grid, input_grid)[token].tolist()
    return {
        "kind": kind, "layer": layer, "layers": list(layers), "map": m,
        "vmin": -top if signed else 0.0, "vmax": top, "signed": signed,
        "total": float(m.sum()), "uniform": 1.0 / m.size, "scale": scale,
        "grid": tuple(grid), "input_grid": tuple(input_grid), "query": (row, col),
        "query_pixel": (centre[0], centre[1]),
    }


def rollout_maps(model: nn.Module, x: torch.Tensor, upto: str | None = None, query=None,
                 heads: str = "mean", signed: bool = False, index: int = 0, partial: bool = False,
                 graph: ContextGraph | None = None) -> dict:
    """Token ``query`` of layer ``upto``: its rolled-out context on the input grid, as plain data.

    Returns a dict: ``map`` a float64 ndarray ``(H_in, W_in)`` (a row of
    :func:`~unifiedctx.context.rollout`; non-negative rule: it sums to 1), ``vmin``/``vmax`` the
    colour range to use (0..max, or symmetric when ``signed``), ``uniform`` = 1 / (H_in W_in) (the
    level of a map that is the same everywhere), ``total`` its sum, ``scale`` a sentence saying what
    the numbers are, ``grid`` the layer's token grid, ``input_grid``, ``query`` ``(row, col)`` on
    ``grid``, ``query_pixel`` the token's centre in input pixels, ``layer`` and ``layers`` composed.
    ``index`` picks the image of the batch. Only the query's row is carried back through the network
    (memory follows what is shown). ``partial`` as in :func:`~unifiedctx.context.rollout`. ``graph``: the
    :func:`~unifiedctx.context.context_graph` of ``model`` on ``x`` when the caller keeps one (the explorer
    keeps one per image, so that a new query composes without running the model again).
    """
    _check_index(index, x)
    check_heads(heads)
    check_bool("signed", signed)
    check_bool("partial", partial)
    check_image(x, model)
    if graph is None:
        graph = context_graph(model, x)
    elif not isinstance(graph, ContextGraph):
        raise TypeError(f"graph must be the ContextGraph of model on x (context_graph), "
                        f"got {type(graph).__name__}")
    last = graph.nodes[graph.resolve(upto)]
    check_partial(graph, model, partial, "the rollout", upto)
    token = query_index(query, last.tokens.grid)
    r = rollout_graph(graph, upto, heads, signed, rows=[last.tokens.prefix + token])
    r.maps = r.maps.expand(x.shape[0], -1, -1)
    scale = ("signed exact linear map: d y / d x of the token path" if signed else
             "share of the token's context from each pixel (sums to 1)")
    return _plain("rollout", r.layer, r.maps[index, 0].reshape(r.input_grid), r.grid,
                  r.input_grid, token, signed, scale, r.layers)


def erf_maps(model: nn.Module, x: torch.Tensor, layer: str, query=None, index: int = 0) -> dict:
    """The effective receptive field of ``layer``'s token ``query`` as plain data (the keys of
    :func:`rollout_maps`; the map sums to 1; ``layers`` is ``[layer]``)."""
    _check_index(index, x)
    field, out_grid, token = erf_on_grid(model, x, layer, query)
    input_grid = tuple(x.shape[-2:])
    return _plain("erf", layer, field[index], out_grid, input_grid, token, False,
                  "share of |d y / d x| at each pixel (sums to 1)", [layer])


def map_distance(data: dict) -> float:
    """How far the map's mass lies from its query, in input pixels: ``sum_p w_p ||p - c||`` with
    ``w = |map| / sum |map|`` and ``c = data["query_pixel"]``."""
    m = np.abs(data["map"])
    total = m.sum()
    if total == 0:
        return 0.0
    ys, xs = np.indices(m.shape)
    cy, cx = data["query_pixel"]
    return float((m * np.hypot(ys - cy, xs - cx)).sum() / total)


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-d array, ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts) - 1
    bounds = np.r_[np.flatnonzero(starts), len(values)]
    mean_rank = 0.5 * (bounds[:-1] + bounds[1:] - 1) + 1
    out = np.empty(len(values))
    out[order] = mean_rank[group]
    return out


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (flattened): the Pearson correlation of their ranks
    (NaN when one map is constant)."""
    ra, rb = ranks(np.ravel(np.asarray(a, float))), ranks(np.ravel(np.asarray(b, float)))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top_overlap(a, b, share: float = 0.1) -> float:
    """The share of the top ``share`` pixels of ``a`` (by value) that are also in the top of ``b``."""
    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    k = max(1, round(share * a.size))
    top_a = set(np.argsort(-a, kind="mergesort")[:k].tolist())
    top_b = set(np.argsort(-b, kind="mergesort")[:k].tolist())
    return len(top_a & top_b) / k


def agreement(a, b, share: float = 0.1) -> dict:
    """``{"spearman": rho, "top_overlap": overlap}`` of two maps of the same shape."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"the two maps must have the same shape, got {np.shape(a)} and {np.shape(b)}")
    return {"spearman": spearman(a, b), "top_overlap": top_overlap(a, b, share)}
