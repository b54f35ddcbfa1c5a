"""Dynamic and mixed mixers: self-attention, Container, and three relatives.

All of them compute queries, keys and values from x with one linear map (per token)::

    q, k, v = split(x W_qkv)                    each (B, M, N, d), d = C / M
    A_att   = softmax(q k^T / sqrt(d) + bias)   (B, M, N, N), rows sum to 1
    y       = W_proj concat_m(A_m v_m)

and differ in what else enters A. The fast paths call ``F.scaled_dot_product_attention``
(flash / memory-efficient kernels on GPU, a fused kernel on CPU): no N x N matrix is built
for ``attention``, ``container`` and ``window``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import AffinityMixer, check_heads, check_positive_int, image, merge_heads, tokens
from .local import local_affinity, token_offsets


class Attention(AffinityMixer):
    """Multi-head self-attention: ``A_m = softmax(q_m k_m^T / sqrt(d))`` (dynamic, M heads).

    Shapes: ``values -> (B, M, N, d)``, ``affinity -> (B, M, N, N)``.
    Fast path: ``F.scaled_dot_product_attention``.
    """

    kind = "dynamic"

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True):
        super().__init__(dim)
        self.heads = check_heads(dim, heads)
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor):
        """``(B, C, H, W) -> q, k, v``, each ``(B, M, N, d)``."""
        qkv = self.qkv(tokens(x))
        return rearrange(qkv, "b n (three m d) -> three b m n d", three=3, m=self.heads).unbind(0)

    def attention_bias(self, grid) -> torch.Tensor | None:
        """An additive ``(M, N, N)`` term inside the softmax; none for plain attention."""
        return None

    def attention_affinity(self, q, k, grid) -> torch.Tensor:
        """``softmax(q k^T / sqrt(d) + bias)``: ``(B, M, N, N)``."""
        scores = (q @ k.transpose(-2, -1)) * self.scale
        bias = self.attention_bias(grid)
        return (scores if bias is None else scores + bias).softmax(dim=-1)

    def attend(self, q, k, v, grid) -> torch.Tensor:
        """Fast ``A_att @ v`` without building A: ``(B, M, N, d)``."""
        bias = self.attention_bias(grid)
        if bias is not None:
            bias = bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = self.qkv_heads(x)
        return self._project(self.attend(q, k, v, grid), grid)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.qkv_heads(x)[2]

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, _ = self.qkv_heads(x)
        return self.attention_affinity(q, k, grid)

    def _project(self, z, grid):
        return image(self.proj(merge_heads(z)), grid)


class WindowAttention(Attention):
    """Self-attention inside non-overlapping ``window_size`` x ``window_size`` windows.

    ``A`` is block-diagonal (after sorting tokens by window): token i attends only to the
    tokens of its own window, ``A_m[i, j] = softmax_j(q_i k_j / sqrt(d))`` over that window and
    0 elsewhere. The grid must be divisible by the window. Fast path: the windows become the
    batch of ``F.scaled_dot_product_attention`` (cost O(N w^2), not O(N^2)).
    """

    def __init__(self, dim: int, heads: int = 8, window_size: int = 7, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.window_size = check_positive_int("window_size", window_size)

    def check_input(self, x):
        grid = super().check_input(x)
        if grid[0] % self.window_size or grid[1] % self.window_size:
            raise ValueError(f"window attention needs a grid divisible by window_size="
                             f"{self.window_size}, got grid {grid}")
        return grid

    def attention_bias(self, grid):
        h, w = grid
        s = self.window_size
        win = (torch.arange(h).view(h, 1) // s * (w // s) + torch.arange(w).view(1, w) // s).view(-1)
        same = win.view(-1, 1) == win.view(1, -1)
        return torch.zeros(same.shape).masked_fill(~same, float("-inf")).to(self.qkv.weight)

    def attend(self, q, k, v, grid):
        h, w, s = grid[0], grid[1], self.window_size
        to_windows = "b m (nh wh nw ww) d -> (b nh nw) m (wh ww) d"
        q, k, v = (rearrange(t, to_windows, nh=h // s, wh=s, nw=w // s, ww=s) for t in (q, k, v))
        z = F.scaled_dot_product_attention(q, k, v)
        return rearrange(z, "(b nh nw) m (wh ww) d -> b m (nh wh nw ww) d",
                         nh=h // s, nw=w // s, wh=s, ww=s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}"


class RelPosAttention(Attention):
    """Attention with a learned relative-position bias inside the softmax (CoAtNet, Swin).

    ``A_m[i, j] = softmax_j(q_i k_j / sqrt(d) + B_m[clip(y_j - y_i), clip(x_j - x_i)])`` with
    offsets clipped to ``[-max_distance, max_distance]``, so one table of
    ``(2R+1)^2`` numbers per head serves every grid size. Dynamic (it mixes a static
    positional term with content). Fast path: SDPA with the ``(M, N, N)`` bias as its mask.
    """

    def __init__(self, dim: int, heads: int = 8, max_distance: int = 7, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.max_distance = check_positive_int("max_distance", max_distance)
        span = 2 * max_distance + 1
        self.rel_bias = nn.Parameter(torch.zeros(self.heads, span, span))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)

    def attention_bias(self, grid):
        r = self.max_distance
        dy, dx = token_offsets(grid, self.rel_bias.device)
        return self.rel_bias[:, dy.clamp(-r, r) + r, dx.clamp(-r, r) + r]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_distance={self.max_distance}"


class Container(Attention):
    """Container's mixed affinity: ``A = alpha * A_attention + beta * A_dwconv``, sharing V.

    Math (one affinity per channel c, of attention head m(c); M = C heads of d = 1)::

        A[c]  = alpha * softmax(q_m k_m^T / sqrt(d_head)) + beta * sum_o w[c, o] S_o
        y     = W_proj (A v + beta * b_conv)

    ``mixing="sigmoid"`` (the authors' released code): ``alpha = sigmoid(w)``,
    ``beta = 1 - alpha``, one scalar ``w`` initialised to 0. ``mixing="independent"`` (the
    paper's text): alpha and beta are two free learnable scalars, initialised to 0.5.
    Fast path: ``alpha * SDPA(q, k, v) + beta * dwconv(v)``; A is never built.
    ``components(x)`` gives the affinities at attention-head resolution for viewing.
    """

    kind = "mixed"

    def __init__(self, dim: int, heads: int = 8, kernel_size: int = 5, qkv_bias: bool = True,
                 mixing: str = "sigmoid"):
        super().__init__(dim, heads, qkv_bias)
        self.attn_heads, self.heads = self.heads, dim
        self.kernel_size = check_positive_int("kernel_size", kernel_size, odd=True)
        self.static = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        if mixing == "sigmoid":
            self.mix_logit = nn.Parameter(torch.zeros(()))
        elif mixing == "independent":
            self.alpha_param = nn.Parameter(torch.tensor(0.5))
            self.beta_param = nn.Parameter(torch.tensor(0.5))
        else:
            raise ValueError(f"mixing must be 'sigmoid' or 'independent', got {mixing!r}")
        self.mixing = mixing

    def qkv_heads(self, x):
        qkv = self.qkv(tokens(x))
        return rearrange(qkv, "b n (three m d) -> three b m n d", three=3, m=self.attn_heads).unbind(0)

    def mixing_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)``: the weights of the dynamic and the static affinity."""
        if self.mixing == "sigmoid":
            alpha = torch.sigmoid(self.mix_logit)
            return alpha, 1 - alpha
        return self.alpha_param, self.beta_param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = self.qkv_heads(x)
        alpha, beta = self.mixing_weights()
        dynamic = merge_heads(F.scaled_dot_product_attention(q, k, v))
        v_image = image(merge_heads(v), grid)
        static = tokens(self.static(v_image))
        return image(self.proj(alpha * dynamic + beta * static), grid)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        v = self.qkv_heads(x)[2]
        return rearrange(v, "b m n d -> b (m d) n 1")

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head-level affinities ``{"dynamic", "static", "mixed"}``, each ``(B|1, M_att, N, N)``.

        ``static`` is the depthwise kernel's affinity averaged over the channels of each
        attention head, so ``mixed = alpha * dynamic + beta * static`` is the mean of the exact
        per-channel affinities of that head.
        """
        grid = self.check_input(x)
        q, k, _ = self.qkv_heads(x)
        dynamic = self.attention_affinity(q, k, grid)
        static = local_affinity(self.static.weight[:, 0], grid)
        static = rearrange(static, "(m d) n j -> m d n j", m=self.attn_heads).mean(1).unsqueeze(0)
        alpha, beta = self.mixing_weights()
        return {"dynamic": dynamic, "static": static, "mixed": alpha * dynamic + beta * static}

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, _ = self.qkv_heads(x)
        dynamic = self.attention_affinity(q, k, grid).repeat_interleave(self.head_dim, dim=1)
        static = local_affinity(self.static.weight[:, 0], grid).unsqueeze(0)
        alpha, beta = self.mixing_weights()
        return alpha * dynamic + beta * static

    def _project(self, z, grid):
        _, beta = self.mixing_weights()
        y = rearrange(z, "b c n 1 -> b n c") + beta * self.static.bias
        return image(self.proj(y), grid)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, attn_heads={self.attn_heads}, kernel_size={self.kernel_size}, "
                f"mixing={self.mixing!r}")


class GatedPositionalAttention(Attention):
    """ConViT's gated positional self-attention (GPSA).

    Math, per head m with gate ``g_m = sigmoid(lambda_m)``::

        A_m = (1 - g_m) softmax(q k^T / sqrt(d)) + g_m softmax(r W_pos^T)_m
        r_ij = (dx, dy, dx^2 + dy^2)  for the offset from token i to token j

    The positional part is static and initialised *local* (head m peaks at offset delta_m,
    ``W_pos[m] = alpha (2 dx_m, 2 dy_m, -1)``), so the layer starts as a convolution and can
    learn to forget locality. Mixed. Fast path: ``(1-g) SDPA(q, k, v) + g (A_pos @ v)``
    (A_pos does not depend on x, but it is rebuilt from the learned ``pos_proj`` on every call:
    like ``relattn``'s bias it costs an N x N matrix per head, unlike ``attention``).
    """

    kind = "mixed"

    def __init__(self, dim: int, heads: int = 4, locality_strength: float = 1.0,
                 qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.pos_proj = nn.Linear(3, self.heads)
        self.gate_logit = nn.Parameter(torch.ones(self.heads))
        self._local_init(float(locality_strength))

    @torch.no_grad()
    def _local_init(self, strength: float):
        side = math.ceil(math.sqrt(self.heads))
        centre = (side - 1) / 2
        for m in range(self.heads):
            dy, dx = m // side - centre, m % side - centre
            self.pos_proj.weight[m] = strength * torch.tensor([2 * dx, 2 * dy, -1.0])
        self.pos_proj.bias.zero_()

    def positional_affinity(self, grid) -> torch.Tensor:
        """``softmax(r W_pos^T)``: the static, positional affinity ``(1, M, N, N)``."""
        weight = self.pos_proj.weight
        dy, dx = (t.to(weight) for t in token_offsets(grid, weight.device))
        r = torch.stack([dx, dy, dx**2 + dy**2], dim=-1)  # (N, N, 3)
        return rearrange(self.pos_proj(r), "n j m -> 1 m n j").softmax(dim=-1)

    def gate(self) -> torch.Tensor:
        """Per-head weight ``g`` of the positional affinity, shaped ``(1, M, 1, 1)``."""
        return torch.sigmoid(self.gate_logit).view(1, -1, 1, 1)

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"dynamic", "static", "mixed"}`` affinities, each ``(B|1, M, N, N)``."""
        grid = self.check_input(x)
        q, k, _ = self.qkv_heads(x)
        dynamic = self.attention_affinity(q, k, grid)
        static = self.positional_affinity(grid)
        g = self.gate()
        return {"dynamic": dynamic, "static": static, "mixed": (1 - g) * dynamic + g * static}

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        return self.components(x)["mixed"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = self.qkv_heads(x)
        g = self.gate()
        z = (1 - g) * F.scaled_dot_product_attention(q, k, v) + g * (self.positional_affinity(grid) @ v)
        return self._project(z, grid)
