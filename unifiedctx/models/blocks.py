"""The one block every network here is made of.

A block keeps the image shape ``(B, C, H, W)`` and computes::

    x = x + pos(x)                                   (optional depthwise 3x3 positional conv)
    x = x + drop_path(gamma_1 * mixer(norm_1(x)))    (context aggregation: project(A @ V))
    x = x + drop_path(gamma_2 * mlp(norm_2(x)))      (per-token channel MLP)

The mixer comes from the registry by name (:func:`unifiedctx.mixers.create`), so the same block
is a Container-Light conv block (``dwconv``), a mixed Container block (``container``), a ViT
block (``attention``), an MLP-Mixer block (``mixer``) or a PoolFormer block (``pool``).
``gamma`` is the optional layer scale (identity when ``layer_scale`` is None).
"""

from __future__ import annotations

import torch
from torch import nn

from ..mixers import create
from .layers import DropPath, LayerScale, Mlp, make_norm


class Block(nn.Module):
    """norm -> mixer -> residual -> norm -> MLP -> residual (see the module docstring).

    Args:
        dim: channels C.
        mixer: registry name of the token mixer.
        mixer_options: keyword options for that mixer (``heads``, ``kernel_size``, ``grid``, ...).
        mlp_ratio: hidden width of the MLP as a multiple of C.
        norm, norm_eps: ``"batch"``, ``"layer"``, ``"group"`` or ``"none"``, and its eps.
        pos_conv: add Container-Light's depthwise 3x3 positional conv ``x + dwconv3x3(x)`` first.
        layer_scale: initial value of the per-channel residual scales, or None for none.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, dim: int, mixer: str, mixer_options: dict | None = None, mlp_ratio: float = 4.0,
                 norm: str = "layer", norm_eps: float | None = None, pos_conv: bool = False,
                 layer_scale: float | None = None, drop_path: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if pos_conv else None
        self.norm1 = make_norm(norm, dim, norm_eps)
        self.mixer = create(mixer, dim, **(mixer_options or {}))
        self.norm2 = make_norm(norm, dim, norm_eps)
        self.mlp = Mlp(dim, mlp_ratio, dropout)
        scale = (lambda: LayerScale(dim, layer_scale)) if layer_scale is not None else nn.Identity
        self.scale1, self.scale2 = scale(), scale()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        x = x + self.drop_path(self.scale1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.scale2(self.mlp(self.norm2(x))))
