"""MLP-Mixer token mixing: a dense affinity learned for one grid size.

Two settings, one mixer:

* ``hidden=None`` (the Container paper's reading of MLP-Mixer): one learnable N x N matrix
  shared by all channels, ``A = W`` (static, M = 1 head, d = C)::

      y[:, c] = W x[:, c] + b            (token-axis nn.Linear(N, N))

* ``hidden=h`` (MLP-Mixer's token MLP, as in timm's ``mixer_s16_224`` except that the first
  layer has no bias): ``y[:, c] = W2 GELU(W1 x[:, c]) + b2``. Because GELU(u) = u * Phi(u),
  this is *exactly* an affinity that the input gates, one per channel (M = C, d = 1)::

      A[c] = W2 diag(Phi(W1 x[:, c])) W1          (dynamic: it depends on x)

  so even MLP-Mixer's non-linear token MLP is context aggregation through an affinity.

Both are built for one ``grid=(H, W)``; any other grid size is a ``ValueError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_positive_int
from .base import AffinityMixer, check_grid


def gelu_gate(u: torch.Tensor) -> torch.Tensor:
    """Phi(u), the standard normal CDF, so that ``GELU(u) = u * Phi(u)`` (exact erf form)."""
    return 0.5 * (1.0 + torch.erf(u / 2**0.5))


class TokenMixing(AffinityMixer):
    """MLP-Mixer token mixing for a fixed ``grid`` (see the module docstring for the math)."""

    def __init__(self, dim: int, grid=None, hidden: int | None = None):
        super().__init__(dim)
        if grid is None:
            raise ValueError("the 'tokenmlp' token-mixing layer needs grid=(H, W): its N x N "
                             "affinity is learned for one grid size")
        self.grid = check_grid(grid)
        n = self.grid[0] * self.grid[1]
        self.hidden = None if hidden is None else check_positive_int("hidden", hidden)
        if self.hidden is None:
            self.kind, self.heads = "static", 1
            self.token = nn.Linear(n, n)
        else:
            self.kind, self.heads = "dynamic", dim
            self.token_in = nn.Linear(n, self.hidden, bias=False)
            self.token_out = nn.Linear(self.hidden, n)

    def check_input(self, x):
        grid = super().check_input(x)
        if grid != self.grid:
            raise ValueError(
                f"this 'tokenmlp' layer was built for grid={self.grid} ({self.grid[0] * self.grid[1]} "
                f"tokens) but x has grid {grid}; MLP-Mixer's token weights exist for one size only: "
                f"build the model for this size (img_size) instead"
            )
        return grid

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "grid": tuple(grid)}, {"dim": 6, "grid": tuple(grid), "hidden": 5}]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        t = rearrange(x, "b c h w -> b c (h w)")
        if self.hidden is None:
            t = self.token(t)
        else:
            t = self.token_out(F.gelu(self.token_in(t)))
        return rearrange(t, "b c (h w) -> b c h w", h=self.grid[0])

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.hidden is None:
            return rearrange(x, "b c h w -> b 1 (h w) c")
        return rearrange(x, "b c h w -> b c (h w) 1")

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.hidden is None:
            return self.token.weight.view(1, 1, *self.token.weight.shape)
        w1 = self.token_in.weight  # (h, N)
        gate = gelu_gate(self.token_in(rearrange(x, "b c h w -> b c (h w)")))  # (B, C, h)
        return torch.einsum("nk,bck,km->bcnm", self.token_out.weight, gate, w1)

    def _project(self, z, grid):
        bias = self.token.bias if self.hidden is None else self.token_out.bias
        if self.hidden is None:
            y = rearrange(z, "b 1 n c -> b c n")
        else:
            y = rearrange(z, "b c n 1 -> b c n")
        return rearrange(y + bias, "b c (h w) -> b c h w", h=grid[0])

    @property
    def head_unit(self) -> str:
        return "head" if self.hidden is None else "channel"

    def describe(self) -> str:
        if self.hidden is None:
            return "static dense matrix: one learned N x N, shared by all channels"
        return "input-gated: a static matrix gated by the input, one per channel (W2 diag(Phi(W1 x_c)) W1)"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grid={self.grid}, hidden={self.hidden}"
