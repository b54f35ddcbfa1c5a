"""Window attention (Swin without the shift) on any grid: attention inside non-overlapping windows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from ..validation import check_positive_int
from .attention import Attention


class WindowAttention(Attention):
    """Self-attention inside non-overlapping ``wh x ww`` windows tiled from the top-left corner.

    ``A`` is block-diagonal (after sorting tokens by window): token i attends only to the real
    tokens of its own window, ``A_m[i, j] = softmax_j(q_i k_j / sqrt(d))`` over them, and 0
    elsewhere; every row sums to 1.

    Any grid works. The window is ``(wh, ww) = (min(s, H), min(s, W))`` for ``s = window_size``
    (clamped per side to the grid), and the grid is padded at the bottom and right to
    ``(ceil(H / wh) wh, ceil(W / ww) ww)``. Padded positions are *masked out of the keys*, so
    A over the N real tokens is exactly the block softmax above. This differs from Swin in two
    ways: Swin attends to its zero-padded tokens too (their keys and values are the qkv bias,
    so border windows mix in a constant that no real token holds), and when the grid is
    smaller than the window Swin clamps the window to a square of side ``min(H, W)``, here each
    side is clamped on its own (a 5 x 7 grid with ``s = 7`` is one 5 x 7 window).

    Fast path: the windows become the batch of ``F.scaled_dot_product_attention`` (cost
    O(N wh ww), not O(N^2)), with a key mask only when the grid needed padding.
    """

    def __init__(self, dim: int, heads: int = 8, window_size: int = 7, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.window_size = check_positive_int("window_size", window_size)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2, "window_size": 2}, {"dim": 6, "heads": 3, "window_size": 3},
                {"dim": 6, "heads": 2, "window_size": 7}]

    def window(self, grid) -> tuple[int, int]:
        """The window ``(wh, ww)`` on ``grid``: ``window_size`` clamped to each side of the grid."""
        return min(self.window_size, grid[0]), min(self.window_size, grid[1])

    def window_index(self, grid) -> torch.Tensor:
        """``(N,)`` int64: the window each token belongs to, numbered row by row."""
        (h, w), (wh, ww) = grid, self.window(grid)
        columns = -(-w // ww)
        rows = torch.arange(h).view(h, 1) // wh
        cols = torch.arange(w).view(1, w) // ww
        return (rows * columns + cols).view(-1)

    def attention_bias(self, grid):
        """``0`` where two tokens share a window and ``-inf`` elsewhere: ``(1, N, N)``."""
        window = self.window_index(grid)
        same = window.view(-1, 1) == window.view(1, -1)
        bias = torch.zeros(same.shape).masked_fill(~same, float("-inf"))
        return bias.unsqueeze(0).to(self.qkv.weight)

    def attend(self, q, k, v, grid):
        """``A @ v`` window by window: ``(B, M, N, d) -> (B, M, N, d)``."""
        (h, w), (wh, ww) = grid, self.window(grid)
        pad_h, pad_w = -h % wh, -w % ww
        nh, nw = (h + pad_h) // wh, (w + pad_w) // ww

        def to_windows(t):  # (B, M, N, d) -> (B * windows, M, wh * ww, d), zero-padded
            t = rearrange(t, "b m (h w) d -> b m h w d", h=h)
            t = F.pad(t, (0, 0, 0, pad_w, 0, pad_h))
            return rearrange(t, "b m (nh wh) (nw ww) d -> (b nh nw) m (wh ww) d", wh=wh, ww=ww)

        mask = None
        if pad_h or pad_w:  # keys at padded positions take no part
            real = F.pad(torch.ones(h, w, dtype=torch.bool, device=q.device), (0, pad_w, 0, pad_h))
            real = rearrange(real, "(nh wh) (nw ww) -> (nh nw) 1 1 (wh ww)", wh=wh, ww=ww)
            mask = real.repeat(q.shape[0], 1, 1, 1)
        z = F.scaled_dot_product_attention(to_windows(q), to_windows(k), to_windows(v), attn_mask=mask)
        z = rearrange(z, "(b nh nw) m (wh ww) d -> b m (nh wh) (nw ww) d", nh=nh, nw=nw, wh=wh)
        return rearrange(z[:, :, :h, :w], "b m h w d -> b m (h w) d")

    def describe(self) -> str:
        return f"dynamic: softmax(QK^T/sqrt d) inside {self.window_size}x{self.window_size} windows"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}"
