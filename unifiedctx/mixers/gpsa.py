"""ConViT's gated positional self-attention (GPSA): content attention gated with a positional one."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_float
from .attention import Attention, qkv_heads, softmax_affinity
from .local import token_offsets


class GatedPositionalAttention(Attention):
    """ConViT's gated positional self-attention (GPSA).

    Math, per head m with gate ``g_m = sigmoid(lambda_m)``::

        A_m = (1 - g_m) softmax(q k^T / sqrt(d)) + g_m softmax(r W_pos^T)_m
        r_ij = (dx, dy, dx^2 + dy^2)  for the offset from token i to token j

    The positional part is static and initialised *local* by ``reset_parameters`` (head m peaks
    at offset delta_m, ``W_pos[m] = strength (2 dx_m, 2 dy_m, -1)``, and lambda = 1), so the
    layer starts as a convolution and can learn to forget locality. Mixed;
    ``mixing_weights() = {"gate": g}`` of shape ``(M,)``. Fast path:
    ``(1-g) SDPA(q, k, v) + g (A_pos @ v)`` (A_pos does not depend on x, but it is rebuilt from
    the learned ``pos_proj`` on every call: like ``relattn``'s bias it costs an N x N matrix per
    head, unlike ``attention``).
    """

    kind = "mixed"

    def describe(self) -> str:
        return "mixed: (1-g)*softmax(QK^T/sqrt d) + g*softmax(positions), g per head"


    def __init__(self, dim: int, heads: int = 4, locality_strength: float = 1.0,
                 qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.locality_strength = check_float("locality_strength", locality_strength)
        self.pos_proj = nn.Linear(3, self.heads)
        self.gate_logit = nn.Parameter(torch.ones(self.heads))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ConViT's local init: head m on a ``ceil(sqrt M)``-wide grid of offsets around 0, gate 1."""
        side = math.ceil(math.sqrt(self.heads))
        centre = (side - 1) / 2
        for m in range(self.heads):
            dy, dx = m // side - centre, m % side - centre
            self.pos_proj.weight[m] = self.locality_strength * torch.tensor([2 * dx, 2 * dy, -1.0])
        self.pos_proj.bias.zero_()
        self.gate_logit.fill_(1.0)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2}, {"dim": 9, "heads": 9, "locality_strength": 2.0}]

    def positional_affinity(self, grid) -> torch.Tensor:
        """``softmax(r W_pos^T)``: the static, positional affinity ``(1, M, N, N)``."""
        weight = self.pos_proj.weight
        dy, dx = (t.to(weight) for t in token_offsets(grid, weight.device))
        r = torch.stack([dx, dy, dx**2 + dy**2], dim=-1)  # (N, N, 3)
        return rearrange(self.pos_proj(r), "n j m -> 1 m n j").softmax(dim=-1)

    def gate(self) -> torch.Tensor:
        """Per-head weight ``g`` of the positional affinity, shaped ``(1, M, 1, 1)``."""
        return torch.sigmoid(self.gate_logit).view(1, -1, 1, 1)

    def mixing_weights(self) -> dict[str, torch.Tensor]:
        """``{"gate": g}``, ``(M,)``: ``mixed = (1 - g) * dynamic + g * static`` per head."""
        return {"gate": torch.sigmoid(self.gate_logit)}

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"dynamic", "static", "mixed"}`` affinities, each ``(B|1, M, N, N)``."""
        grid = self.check_input(x)
        q, k, _ = qkv_heads(self.qkv, x, self.heads)
        dynamic = softmax_affinity(q, k)
        static = self.positional_affinity(grid)
        g = self.gate()
        return {"dynamic": dynamic, "static": static, "mixed": (1 - g) * dynamic + g * static}

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        return self.components(x)["mixed"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = qkv_heads(self.qkv, x, self.heads)
        g = self.gate()
        z = (1 - g) * F.scaled_dot_product_attention(q, k, v) + g * (self.positional_affinity(grid) @ v)
        return self._project(z, grid)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, locality_strength={self.locality_strength}"
