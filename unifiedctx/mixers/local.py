"""Dense affinities of local, translation-equivariant operators (conv and pooling).

A k x k window operator on an H x W grid takes, for token i = (y, x), a weighted sum of the
tokens j = (y + dy, x + dx) with offsets dy, dx in [-(k//2), k//2] (zero padding at borders).
Its affinity is therefore a sum of *shift matrices*, one per offset o = (dy, dx)::

    S_o[i, j] = 1  if j = i + o is inside the grid, else 0        (N x N)
    A         = sum_o w_o * S_o                                  (a banded Toeplitz matrix)

PyTorch's ``conv2d`` is a cross-correlation, so the kernel entry ``w[dy + k//2, dx + k//2]``
is the weight of offset (dy, dx).
"""

from __future__ import annotations

import torch


def shift_pairs(grid: tuple[int, int], dy: int, dx: int, device=None):
    """Row and column indices ``(i, j)`` with ``j = i + (dy, dx)``, both inside the grid."""
    h, w = grid
    index = torch.arange(h * w, device=device).view(h, w)
    y0, y1 = max(0, -dy), min(h, h - dy)
    x0, x1 = max(0, -dx), min(w, w - dx)
    if y0 >= y1 or x0 >= x1:
        empty = index.new_zeros(0)
        return empty, empty
    rows = index[y0:y1, x0:x1].reshape(-1)
    cols = index[y0 + dy : y1 + dy, x0 + dx : x1 + dx].reshape(-1)
    return rows, cols


def local_affinity(kernel: torch.Tensor, grid: tuple[int, int], dilation=1) -> torch.Tensor:
    """Dense affinity of per-head kernels with odd sides: ``(M, kh, kw) -> (M, N, N)``.

    ``A[m, i, i + o] = kernel[m, dy / d_y + kh//2, dx / d_x + kw//2]`` for every offset
    o = (dy, dx) of the (dilated) window whose target is on the grid; every other entry is zero.
    ``dilation`` is an int or a ``(d_y, d_x)`` pair. Differentiable in ``kernel``.
    """
    heads, kh, kw = kernel.shape
    dil_y, dil_x = (dilation, dilation) if isinstance(dilation, int) else dilation
    n = grid[0] * grid[1]
    a = kernel.new_zeros(heads, n, n)
    for ky in range(kh):
        for kx in range(kw):
            rows, cols = shift_pairs(grid, (ky - kh // 2) * dil_y, (kx - kw // 2) * dil_x, kernel.device)
            a[:, rows, cols] = kernel[:, ky, kx].unsqueeze(1)
    return a


def shift_matrices(kernel_size: int, grid: tuple[int, int], dtype=None, device=None):
    """The k*k shift matrices ``S_o`` of a k x k window, stacked: ``(k*k, N, N)``."""
    eye = torch.eye(kernel_size * kernel_size, dtype=dtype, device=device)
    return local_affinity(eye.view(-1, kernel_size, kernel_size), grid)



def token_offsets(grid: tuple[int, int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets between every pair of tokens: ``dy[i, j] = y_j - y_i`` and ``dx[i, j] = x_j - x_i``,
    each an int64 ``(N, N)`` tensor on ``device``. (Not cached: two int64 N x N tables at
    56 x 56 are 157 MB, more than rebuilding them costs.)"""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return ys.view(1, -1) - ys.view(-1, 1), xs.view(1, -1) - xs.view(-1, 1)
