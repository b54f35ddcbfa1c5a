"""Shared checks and helpers of the plotting functions (shapes, heads, queries, figures)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..inspection.distance import as_affinity, grid_of  # noqa: F401  (re-exported: used by every plot)
from ..validation import check_finite, check_int, check_query
from .scales import symmetric_limits  # noqa: F401  (re-exported: the one colour rule lives in scales)


def pick_index(value: int, size: int, name: str) -> int:
    """Check an index (``head``, ``batch``) lies in ``range(size)``; negatives count from the end."""
    value = check_int(name, value)
    if not -size <= value < size:
        raise ValueError(f"{name}={value} is out of range: there are {size} (valid: 0..{size - 1})")
    return int(value) % size


def pick_heads(heads, size: int) -> list[int]:
    """``None`` -> all heads; an int or a sequence of ints -> validated head indices."""
    if heads is None:
        return list(range(size))
    if isinstance(heads, (int, np.integer)) and not isinstance(heads, bool):
        heads = [heads]
    return [pick_index(h, size, "head") for h in heads]


def query_index(query, grid: tuple[int, int]) -> int:
    """Token index of ``query``: a ``(y, x)`` position on ``grid``, a flat int index, or None (the
    centre token): the one rule, :func:`unifiedctx.validation.check_query`."""
    return check_query("query", query, grid)


def new_axes(ax=None, figsize=(5, 4)):
    """``(fig, ax)``: the given axes and its figure, or a fresh figure with one axes."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def axes_grid(count: int, axes=None, ncols: int | None = None, size: float = 2.4):
    """``(fig, list_of_axes)`` with ``count`` axes: the given ones, or a new grid (extras hidden)."""
    if axes is not None:
        axes = list(np.ravel(axes))
        if len(axes) < count:
            raise ValueError(f"axes has {len(axes)} axes but {count} panels are needed")
        return axes[0].figure, axes[:count]
    ncols = ncols or min(count, 4)
    nrows = math.ceil(count / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False,
                             layout="constrained")
    flat = list(grid.ravel())
    for extra in flat[count:]:
        extra.set_visible(False)
    return fig, flat[:count]


def image_array(image) -> np.ndarray:
    """An image as an ``(H, W)`` or ``(H, W, 3)`` float array in [0, 1] for ``imshow``.

    Accepts ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` tensors/arrays with C = 1 or 3;
    the values are min-max scaled (per image) so normalised inputs display correctly. An image
    holding NaN or an infinity is a ``ValueError`` saying how many (it is not drawn as zeros); one
    that is not numbers (a string, a PIL image of another mode) is a ``TypeError``.
    """
    if not isinstance(image, torch.Tensor):
        array = np.asarray(image)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TypeError(f"image must be a tensor or array of numbers, got {type(image).__name__} "
                            f"(dtype {array.dtype})")
        image = array
    t = torch.as_tensor(image)
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"image must hold one image, got a batch of shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() == 3:
        if t.shape[0] == 1:
            t = t[0]
        elif t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        else:
            raise ValueError(f"image must have 1 or 3 channels (C, H, W), got shape {tuple(t.shape)}")
    if t.dim() != 2 and not (t.dim() == 3 and t.shape[-1] == 3):
        raise ValueError(f"image must be (H, W), (C, H, W) or (1, C, H, W), got {tuple(t.shape)}")
    check_finite("image", t)
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return t.numpy()
