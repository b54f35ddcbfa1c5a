"""The typed records the reader yields for each layer of a network, as plain data.

A network moves context between tokens in three kinds of places, and the reader gives one record
type for each::

    AffinityRecord  a token mixer:            y = A x             A: (B|1, M, n, n) on its tokens
    WindowRecord    a window over the grid:   y = W * x           a conv, a pooling, a patch merging
    JoinRecord      where token paths meet:   y = sum_i s_i x_i   a residual x + f(x), a shortcut beside
                                                                  its branch (found in the forward itself)

Each token set is a :class:`TokenGrid`: the ``(H, W)`` grid and the prefix (class / distillation /
register) tokens in front of it (``n = prefix + H * W``). :mod:`unifiedctx.inspection.trace` makes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass(frozen=True)
class TokenGrid:
    """``prefix`` tokens (class, distillation) in front of the ``grid = (H, W)`` tokens."""

    grid: tuple[int, int]
    prefix: int = 0

    @property
    def tokens(self) -> int:
        """``n = prefix + H * W``."""
        return self.prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ConvWindow:
    """A convolution's weight ``(C_out, C_in / groups, kh, kw)`` with its stride, padding, dilation.

    Head m is output channel m; its kernel is the sum over the input channels it reads
    (signed), or the sum of their absolute values (the non-negative rule).
    """

    weight: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def kernel(self, heads: str, signed: bool) -> torch.Tensor:
        """``(kh, kw)``: signed, the mean over heads of ``sum_c W[m, c]``; else the mean or max
        over heads of ``sum_c |W[m, c]|``."""
        if signed:
            return self.weight.sum(1).mean(0)
        per_head = self.weight.abs().sum(1)
        return per_head.mean(0) if heads == "mean" else per_head.amax(0)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The output grid: ``(n + 2 p - d (k - 1) - 1) // s + 1`` per axis."""
        kh, kw = self.weight.shape[-2:]
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip(grid, self.padding, self.dilation, (kh, kw), self.stride))

    def matrix(self, kernel: torch.Tensor, grid_in: tuple[int, int]) -> torch.Tensor:
        """The window as a matrix ``(N_out, N_in)``: ``A[t, j] = kernel[o]`` where input pixel j is
        at offset o of output token t's window (zero padding: offsets off the grid are dropped)."""
        (hi, wi), (ho, wo) = grid_in, self.out_grid(grid_in)
        a = kernel.new_zeros(ho, wo, hi, wi)
        oy, ox = torch.arange(ho, device=kernel.device), torch.arange(wo, device=kernel.device)
        kh, kw = kernel.shape
        for ky in range(kh):
            iy = oy * self.stride[0] - self.padding[0] + ky * self.dilation[0]
            vy = (iy >= 0) & (iy < hi)
            for kx in range(kw):
                ix = ox * self.stride[1] - self.padding[1] + kx * self.dilation[1]
                vx = (ix >= 0) & (ix < wi)
                a[oy[vy][:, None], ox[vx][None, :], iy[vy][:, None], ix[vx][None, :]] = kernel[ky, kx]
        return a.reshape(ho * wo, hi * wi)


@dataclass
class AffinityRecord:
    """A token mixer: ``affinity`` ``(B|1, M, n, n)`` on ``tokens`` (prefix tokens first, extra keys
    such as a bias key dropped), computed on first access.

    ``windows``: for a windowed attention, ``(Windows, (B * nW, M, n_w, n_w))``: the block-sparse form that
    :meth:`rows` and the rollout use without the dense ``(N, N)`` (see ``trace.Windows``)."""

    name: str
    tokens: TokenGrid
    module_type: str
    read: Callable[[], torch.Tensor] = field(repr=False)
    windows: tuple | None = field(default=None, repr=False)

    @cached_property
    def affinity(self) -> torch.Tensor:
        return self.read()

    def rows(self, queries) -> torch.Tensor:
        """Rows ``queries`` (token indices, prefix counted) of the affinity, ``(B|1, M, Q, n)``, without the
        dense ``(n, n)`` of a windowed attention."""
        q = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
        if self.windows is not None:
            windows, local = self.windows
            return windows.rows(local, q)
        return self.affinity[..., q, :]


@dataclass
class JoinRecord:
    """Token paths that meet in a sum: ``y = sum_i s_i x_i`` (a residual ``x + f(x)``, a shortcut beside its
    branch). ``scales``: each path's factor in the signed rule (a layer scale's mean, -1 for a subtraction);
    the non-negative rule weighs the paths equally (Abnar & Zuidema's ``0.5 A + 0.5 I``)."""

    name: str
    tokens: TokenGrid
    module_type: str
    scales: tuple = ()


@dataclass
class WindowRecord:
    """A strided window (patch embedding, downsampling conv, pooling, patch merging)."""

    name: str
    tokens_in: TokenGrid
    tokens_out: TokenGrid
    window: ConvWindow
    module_type: str = ""


__all__ = ["AffinityRecord", "ConvWindow", "JoinRecord", "TokenGrid", "WindowRecord"]
