"""Mean affinity distance, the math alone: how far, in input pixels, each head gathers its context.

The ViT paper's "attention distance" (Dosovitskiy et al. 2021, Fig. 7), for any affinity::

    W[m, i, j] = |A[m, i, j]| / sum_j' |A[m, i, j']|          (rows of |A|, normalised)
    D[m]       = mean_i  sum_j  W[m, i, j] * ||p_i - p_j|| * stride

with ``p_i`` the (y, x) grid position of token i and ``stride`` the layer's size of one grid
cell in input pixels (image size / grid size). For attention and pooling ``|A| = A`` already
sums to 1 per row; for signed static kernels (convolutions, MLP-Mixer weights) the absolute
value measures where the weight mass sits regardless of its sign. Rows with no weight at all
are left out of the mean (a head whose rows are all zero gets NaN).

It lives beside the reader (which needs it for ``NetworkInspection.distances``) and imports neither
the plots nor the recording; :mod:`unifiedctx.viz.distance` re-exports it with the plots.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..mixers.local import token_offsets
from ..validation import check_int_or_pair


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
    grid = check_int_or_pair(name, grid)
    if grid[0] * grid[1] != n:
        raise ValueError(f"{name}={grid} holds {grid[0] * grid[1]} tokens but the affinity has N={n}")
    return grid


def _strides(pixel_stride) -> tuple[float, float]:
    if isinstance(pixel_stride, (tuple, list)):
        if len(pixel_stride) != 2:
            raise ValueError(f"pixel_stride must be a number or a (sy, sx) pair, got {pixel_stride!r}")
        values = pixel_stride
    else:
        values = (pixel_stride, pixel_stride)
    if any(isinstance(v, (bool, str)) for v in values):
        raise TypeError(f"pixel_stride must be a positive number or a (sy, sx) pair, got {pixel_stride!r}")
    sy, sx = (float(v) for v in values)
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ValueError(f"pixel_stride must be positive and finite, got {pixel_stride!r}")
    return sy, sx


def token_distances(grid, pixel_stride=1.0) -> torch.Tensor:
    """Euclidean distances ``||p_i - p_j||`` between the N tokens of ``grid``, in pixels: ``(N, N)``."""
    sy, sx = _strides(pixel_stride)
    dy, dx = (t.to(torch.float64) for t in token_offsets(tuple(grid)))
    return torch.sqrt((dy * sy) ** 2 + (dx * sx) ** 2)


def affinity_distance(A, grid, pixel_stride=1.0) -> torch.Tensor:
    """Mean affinity distance of every head: ``(M,)`` float64, in input pixels.

    ``D[m] = mean_{b, i} sum_j |A[b, m, i, j]| / sum_j' |A[b, m, i, j']| * ||p_i - p_j|| * stride``
    (see the module docstring). ``A`` is ``(B|1, M, N, N)``, ``(M, N, N)`` or ``(N, N)``;
    ``grid=(H, W)`` with H*W = N (``None``: a 1 x N line); ``pixel_stride`` is the input
    pixels per grid step, a number or a ``(sy, sx)`` pair (e.g. ``image_size / grid_size``).
    Averaged over the batch and over all queries i with a nonzero row.
    """
    a = as_affinity(A).abs()
    n = a.shape[2]
    if a.shape[3] != n:
        raise ValueError(f"A must be square over tokens (N, N), got {tuple(a.shape[-2:])}")
    grid = grid_of(grid, n)
    dist = token_distances(grid, pixel_stride)
    mass = a.sum(-1)  # (B, M, N)
    per_row = (a * dist).sum(-1) / mass.clamp_min(torch.finfo(torch.float64).tiny)
    valid = mass > 0
    total = torch.where(valid, per_row, torch.zeros_like(per_row)).sum((0, 2))
    count = valid.sum((0, 2)).to(torch.float64)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


__all__ = ["affinity_distance", "as_affinity", "grid_of", "token_distances"]
