"""The small layers a block is made of: norms for images, the channel MLP, drop path, layer
scale, and the patch embedding. Every layer here works on images ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NORMS = ("batch", "layer", "group", "none")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each token: ``(B, C, H, W) -> (B, C, H, W)``.

    ``y[b, :, i, j] = (x[b, :, i, j] - mean) / sqrt(var + eps) * gamma + beta`` (the transformer
    LayerNorm, applied to the image without flattening it into a sequence first).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b c h w -> b h w c")
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return rearrange(x, "b h w c -> b c h w")


def make_norm(kind: str | None, dim: int, eps: float | None = None) -> nn.Module:
    """A norm for ``dim``-channel images by name.

    ``"batch"``: BatchNorm2d (statistics over B, H, W); ``"layer"``: LayerNorm over channels per
    token; ``"group"``: GroupNorm(1, C) (PoolFormer: statistics over C, H, W per image);
    ``"none"``/``None``: identity. ``eps`` defaults to each class's own default.
    """
    if kind is None or kind == "none":
        return nn.Identity()
    extra = {} if eps is None else {"eps": float(eps)}
    if kind == "batch":
        return nn.BatchNorm2d(dim, **extra)
    if kind == "layer":
        return LayerNorm2d(dim, **extra)
    if kind == "group":
        return nn.GroupNorm(1, dim, **extra)
    raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {kind!r}")


class Mlp(nn.Module):
    """The channel MLP of a block, as two 1x1 convolutions (a per-token linear map).

    ``y = W2 GELU(W1 x + b1) + b2`` with ``W1: C -> r*C`` and ``W2: r*C -> C``; shapes
    ``(B, C, H, W) -> (B, C, H, W)``. Identical to ``nn.Linear`` on tokens, without reshaping.
    """

    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples.

    ``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)`` of shape ``(B, 1, 1, 1)``;
    the identity in eval mode or when ``p == 0``.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (CaiT): ``y = gamma[None, :, None, None] * x``."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class PatchEmbed(nn.Module):
    """Patch embedding / downsampling: a strided convolution, then an optional norm.

    ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``. With ``kernel == stride`` it cuts
    the image into non-overlapping patches (ViT, Container); a larger kernel overlaps them
    (PoolFormer's 7x7 stride-4 stem). Padding ``(kernel - stride + 1) // 2`` keeps the output
    exactly ``H / stride`` whenever the stride divides H.
    """

    def __init__(self, in_dim: int, dim: int, stride: int, kernel: int | None = None,
                 norm: str | None = None, eps: float | None = None):
        super().__init__()
        kernel = stride if kernel is None else kernel
        if kernel < stride:
            raise ValueError(f"embed_kernel={kernel} must be >= stride={stride} (no pixel may be skipped)")
        padding = (kernel - stride + 1) // 2
        if not (kernel - stride <= 2 * padding < kernel):
            raise ValueError(f"embed_kernel={kernel} with stride={stride} cannot keep the output at "
                             f"H / stride; use a kernel of the stride's parity")
        self.stride = stride
        self.proj = nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=padding)
        self.norm = make_norm(norm, dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))
