"""Mean affinity distance per head and layer, and its plot: how far each head gathers its context.

The math, ``D[m] = mean_i sum_j |A[m, i, j]| / sum_j' |A[m, i, j']| * ||p_i - p_j|| * stride`` (the ViT
paper's "attention distance", for any affinity), is :mod:`unifiedctx.inspection.distance`
(:func:`affinity_distance`, :func:`token_distances`, re-exported here); this module applies it to
recorded layers (:func:`layer_distances`), to any model (:func:`model_distances`, through the one
reader) and draws it (:func:`plot_affinity_distance`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from ..inspection.distance import affinity_distance, token_distances  # noqa: F401  (the math; re-exported)
from ..inspection.network import tiling_grid
from ..validation import check_optional_positive_int
from ._common import new_axes
from .scales import MIN_FONTSIZE


def infer_grid(n: int, image_size) -> tuple[int, int]:
    """The ``(h, w)`` grid of N tokens that tiles ``image_size=(H, W)`` with one square stride
    (:func:`unifiedctx.inspection.network.tiling_grid`), or a ValueError."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    grid = tiling_grid(n, tuple(image_size))
    if grid is None:
        raise ValueError(f"cannot infer a grid of {n} tokens for image_size {tuple(image_size)}; "
                         f"pass grids={{layer: (H, W)}}")
    return grid


def layer_distances(affinities: Mapping, image_size, grids: Mapping | None = None) -> OrderedDict:
    """Mean affinity distance of every head of every layer: ``{name: (M,)}``, in input pixels.

    ``affinities`` maps layer names to ``(B|1, M, N, N)`` (e.g. ``models.record_affinities``).
    Each layer's grid is ``grids[name]`` when given, else the grid that tiles ``image_size``
    with N tokens; the stride is ``image_size / grid`` per axis.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    out = OrderedDict()
    for name, a in affinities.items():
        n = a.shape[-2]
        grid = tuple(grids[name]) if grids and name in grids else infer_grid(n, image_size)
        stride = (image_size[0] / grid[0], image_size[1] / grid[1])
        out[name] = affinity_distance(a, grid, stride)
    return out


def model_distances(model, x: torch.Tensor, max_tokens: int | None = None, layers=None,
                    most_heads: int | None = None) -> OrderedDict:
    """Mean affinity distance of every head of every viewable layer of any model: ``{name: (M,)}`` px.

    The layers are read by :func:`unifiedctx.inspection.layers.layer_affinities` (unifiedctx mixers,
    or ``inspect_model`` for any other network: timm's, a user's own), each on its own token grid
    with its own stride in input pixels, ``D[m]`` as in :func:`affinity_distance`. ``most_heads``
    measures every k-th head only (``k = M // most_heads``), for the per-channel affinities of
    convolutions and token MLPs (hundreds of "heads"). The model is left as it was.
    """
    from ..inspection.layers import layer_affinities

    check_optional_positive_int("most_heads", most_heads)
    out = OrderedDict()
    for record in layer_affinities(model, x, layers=layers, max_tokens=max_tokens):
        if record.grid is None:
            continue
        a = record.affinity
        if most_heads is not None:
            a = a[:, :: max(1, a.shape[1] // most_heads)]
        out[record.name] = affinity_distance(a, record.grid, record.pixel_stride or 1.0)
    return out


def plot_affinity_distance(distances, image_size=None, grids: Mapping | None = None, ax=None,
                           title: str | None = None, x: torch.Tensor | None = None):
    """Scatter of every head's mean affinity distance per layer, the layer mean as a line.

    ``distances`` maps layer name -> ``(M,)`` distances (see :func:`layer_distances`), or
    layer name -> ``(B|1, M, N, N)`` affinities, in which case ``image_size`` is required and
    the distances are computed here, or any model (an ``nn.Module``) with its input ``x=``
    (:func:`model_distances`). x axis: layer (in order), y: distance in input pixels.

    Returns:
        the ``Figure``; ``ax.collections[0]`` holds the head points, ``ax.lines[0]`` the means.
    """
    if isinstance(distances, torch.nn.Module):
        if x is None:
            raise ValueError("x (the model's input, (B, C, H, W)) is needed to plot a model's distances")
        distances = model_distances(distances, x)
    elif x is not None:
        raise ValueError("x is only used with a model as distances")
    if not isinstance(distances, Mapping) or not distances:
        raise ValueError("distances must be a non-empty mapping {layer name: distances or affinity} "
                         "or a model with x=")
    if any(torch.as_tensor(v).dim() > 1 for v in distances.values()):
        if image_size is None:
            raise ValueError("image_size is needed to turn affinities into pixel distances")
        distances = layer_distances(distances, image_size, grids)
    names = list(distances)
    fig, ax = new_axes(ax, figsize=(max(4.5, 0.6 * len(names) + 2), 3.6))
    xs, ys, means = [], [], []
    for k, name in enumerate(names):
        d = torch.as_tensor(distances[name], dtype=torch.float64).reshape(-1).numpy()
        xs.extend([k] * len(d))
        ys.extend(d.tolist())
        means.append(float(np.nanmean(d)) if np.isfinite(d).any() else math.nan)
    ax.scatter(xs, ys, s=14, alpha=0.55, color="tab:blue", label="one head")
    ax.plot(range(len(names)), means, "-o", color="tab:red", ms=4, label="layer mean")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=MIN_FONTSIZE)
    ax.tick_params(labelsize=MIN_FONTSIZE)
    ax.set_ylabel("mean affinity distance (input px)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONTSIZE)
    ax.set_title(title or "How far each head looks", fontsize=10)
    return fig
