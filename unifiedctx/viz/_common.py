"""Shared checks and helpers of the plotting functions (shapes, heads, queries, figures)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..validation import check_int_or_pair
from .scales import symmetric_limits  # noqa: F401  (re-exported: the one colour rule lives in scales)


def as_affinity(a, name: str = "A") -> torch.Tensor:
    """Return ``a`` as a detached float64 CPU tensor of shape ``(B|1, M, N, K)``.

    Accepts ``(N, K)`` (one head), ``(M, N, K)`` (heads) or ``(B, M, N, K)``; numpy arrays too.
    """
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    if a.dim() == 2:
        a = a[None, None]
    elif a.dim() == 3:
        a = a[None]
    elif a.dim() != 4:
        raise ValueError(f"{name} must have shape (N, N), (M, N, N) or (B, M, N, N), got {tuple(a.shape)}")
    return a.detach().to("cpu", torch.float64)


def grid_of(grid, n: int, name: str = "grid") -> tuple[int, int]:
    """Validate ``grid`` against N tokens; ``None`` means one row of N tokens ``(1, N)``."""
    if grid is None:
        return (1, n)
    grid = check_int_or_pair("grid", grid)
    if grid[0] * grid[1] != n:
        raise ValueError(f"{name}={grid} holds {grid[0] * grid[1]} tokens but the affinity has N={n}")
    return grid


def pick_index(value: int, size: int, name: str) -> int:
    """Check an index (``head``, ``batch``) lies in ``range(size)``; negatives count from the end."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
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
    """Token index of ``query``: a ``(y, x)`` position on ``grid`` (or a flat int index)."""
    h, w = grid
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not 0 <= query < h * w:
            raise ValueError(f"query={query} is outside the grid {grid} (token indices 0..{h * w - 1})")
        return int(query)
    if not (isinstance(query, (tuple, list)) and len(query) == 2):
        raise TypeError(f"query must be a (y, x) pair of ints or a token index, got {query!r}")
    y, x = query
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (y, x)):
        raise TypeError(f"query must be a (y, x) pair of ints, got {query!r}")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"query={tuple(query)} is outside the grid {grid}: need 0 <= y < {h}, 0 <= x < {w}")
    return int(y) * w + int(x)


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
    the values are min-max scaled (per image) so normalised inputs display correctly.
    """
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
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
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    return t.numpy()
