"""The one block every network here is made of.

A block keeps the image shape ``(B, C, H, W)`` and computes::

    x = x + pos(x)                                   (optional depthwise 3x3 positional conv)
    x = x + drop_path(gamma_1 * mixer(norm_1(x)))    (context aggregation: project(A @ V))
    x = x + drop_path(gamma_2 * mlp(norm_2(x)))      (per-token channel MLP)

The mixer comes from the registry by name (:func:`unifiedctx.mixers.create`), so the same block
is a Container-Light conv block (``dwconv``), a mixed Container block (``container``), a ViT
block (``attention``), an MLP-Mixer block (``tokenmlp``) or a PoolFormer block (``pool``).
``gamma`` is the optional layer scale (identity when ``layer_scale`` is None). Every setting
comes from the stage's :class:`~unifiedctx.models.spec.StageSpec`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..mixers import create
from .layers import DropPath, LayerScale, Mlp, make_norm
from .spec import StageSpec


class Block(nn.Module):
    """norm -> mixer -> residual -> norm -> MLP -> residual (see the module docstring).

    Args:
        spec: the stage's :class:`StageSpec` (a stage dict is read with ``StageSpec.from_dict``);
            a block uses every setting but the embedding's, ``depth`` and ``stride``.
        grid: the ``(H, W)`` token grid the block will see (grid-bound mixers are sized by it).
        drop_path: stochastic-depth rate of both residual branches.
        dropout: dropout inside the MLP.
    """

    def __init__(self, spec: StageSpec | dict, grid: tuple[int, int] | None = None, drop_path: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        spec = StageSpec.from_dict(spec, where="spec")
        dim = spec.dim
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if spec.pos_conv else None
        self.norm1 = make_norm(spec.norm, dim, spec.norm_eps)
        options = spec.mixer_options if grid is None else {**spec.mixer_options, "grid": tuple(grid)}
        self.mixer = create(spec.mixer, dim, **options)
        self.norm2 = make_norm(spec.norm, dim, spec.norm_eps)
        self.mlp = Mlp(dim, spec.mlp_ratio, dropout)
        scale = (lambda: LayerScale(dim, spec.layer_scale)) if spec.layer_scale is not None else nn.Identity
        self.scale1, self.scale2 = scale(), scale()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        x = x + self.drop_path(self.scale1(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.scale2(self.mlp(self.norm2(x))))
