"""Self-attention and relative-position attention, and the q/k/v helpers the attention family shares.

Every attention-type mixer computes queries, keys and values from x with one linear map (per
token)::

    q, k, v = split(x W_qkv)                    each (B, M, N, d), d = C / M
    A_att   = softmax(q k^T / sqrt(d) + bias)   (B, M, N, N), rows sum to 1
    y       = W_proj concat_m(A_m v_m)

and they differ in what else enters A (``window.py``, ``container.py``, ``gpsa.py``). The fast
paths call ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, a fused
kernel on CPU): no N x N matrix is built for ``attention``, ``container`` and ``window``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_bool, check_positive_int
from .base import AffinityMixer, check_heads, image, merge_heads, tokens
from .local import token_offsets


# ----------------------------------------------------------------------------- shared helpers
def qkv_heads(qkv: nn.Linear, x: torch.Tensor, heads: int):
    """``(B, C, H, W) -> q, k, v``, each ``(B, M, N, d)``: ``split_M(tokens(x) W_qkv^T + b)``."""
    return rearrange(qkv(tokens(x)), "b n (three m d) -> three b m n d", three=3, m=heads).unbind(0)


def softmax_affinity(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias)`` over the keys: ``(B, M, N, d), (B, M, K, d) -> (B, M, N, K)``.

    The one softmax affinity of the library (the mixers and the inspected attention layers).
    ``scale`` defaults to ``1 / sqrt(d)``. ``bias`` is an additive float term broadcastable to
    ``(B, M, N, K)`` (``-inf`` blocks a pair), or a boolean mask where ``True`` means "may attend"
    (PyTorch's SDPA convention).
    """
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if bias is not None:
        scores = scores.masked_fill(~bias, float("-inf")) if bias.dtype == torch.bool else scores + bias
    return scores.softmax(dim=-1)


class Attention(AffinityMixer):
    """Multi-head self-attention: ``A_m = softmax(q_m k_m^T / sqrt(d))`` (dynamic, M heads).

    Shapes: ``values -> (B, M, N, d)``, ``affinity -> (B, M, N, N)``.
    Fast path: ``F.scaled_dot_product_attention``. Subclasses change ``attention_bias`` (a term
    inside the softmax) and, for a faster kernel, ``attend``.
    """

    kind = "dynamic"

    def describe(self) -> str:
        return "dynamic: softmax(QK^T/sqrt d)"


    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True):
        super().__init__(dim)
        self.heads = check_heads(dim, heads)
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=check_bool("qkv_bias", qkv_bias))
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2}, {"dim": 6, "heads": 3, "qkv_bias": False}]

    def attention_bias(self, grid) -> torch.Tensor | None:
        """An additive ``(M, N, N)`` term inside the softmax; none for plain attention."""
        return None

    def attend(self, q, k, v, grid) -> torch.Tensor:
        """Fast ``A_att @ v`` without building A: ``(B, M, N, d)``."""
        bias = self.attention_bias(grid)
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = qkv_heads(self.qkv, x, self.heads)
        return self._project(self.attend(q, k, v, grid), grid)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return qkv_heads(self.qkv, x, self.heads)[2]

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, _ = qkv_heads(self.qkv, x, self.heads)
        return softmax_affinity(q, k, self.attention_bias(grid))

    def _project(self, z, grid):
        return image(self.proj(merge_heads(z)), grid)


class RelPosAttention(Attention):
    """Attention with a learned relative-position bias inside the softmax (CoAtNet, Swin).

    ``A_m[i, j] = softmax_j(q_i k_j / sqrt(d) + B_m[clip(y_j - y_i), clip(x_j - x_i)])`` with
    offsets clipped to ``[-max_distance, max_distance]``, so one table of
    ``(2R+1)^2`` numbers per head serves every grid size. Dynamic (it mixes a static
    positional term with content). Fast path: SDPA with the ``(M, N, N)`` bias as its mask.
    ``reset_parameters``: the table ~ trunc_normal(std .02), as Swin's.
    """

    def __init__(self, dim: int, heads: int = 8, max_distance: int = 7, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.max_distance = check_positive_int("max_distance", max_distance)
        span = 2 * max_distance + 1
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, span, span))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.rel_bias, std=0.02)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2, "max_distance": 2}]

    def attention_bias(self, grid):
        r = self.max_distance
        dy, dx = token_offsets(grid, self.rel_bias.device)
        return self.rel_bias[:, dy.clamp(-r, r) + r, dx.clamp(-r, r) + r]

    def describe(self) -> str:
        return "dynamic: softmax(QK^T/sqrt d + relative position bias)"

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_distance={self.max_distance}"
