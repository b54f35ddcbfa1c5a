"""One builder for every network here: a sequence of stages, each (embed, blocks, norm).

    x  (B, 3, H, W)
    stage s:  x = embed_s(x)                 strided conv (+ norm): (B, C_s, H / S_s, W / S_s)
              x = x + pos_embed              (optional, first stage only: ViT/DeiT's absolute one)
              x = block(...block(x))         norm -> mixer -> residual -> norm -> MLP -> residual
              x = norm_s(x)                  (the last stage only: the network's final norm)
    logits = head(mean over H, W of x)       (B, num_classes)

Four stages of strides 4, 2, 2, 2 make a hierarchical network (Container, PoolFormer, the
ConvNet), one stage of stride 16 an isotropic one (ViT/DeiT, MLP-Mixer). ``features(x)``
returns every stage's output, for dense prediction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..mixers import AffinityMixer
from ..validation import (
    check_bool,
    check_choice,
    check_float,
    check_float_image,
    check_int,
    check_int_or_pair,
    check_positive_int,
)
from .blocks import Block
from .layers import NORMS, PatchEmbed, make_norm
from .spec import StageSpec, stage_specs

INITS = ("linear", "pointwise", "all")


def as_size(img_size, name: str = "img_size") -> tuple[int, int]:
    """``224`` or ``(224, 288)`` -> ``(H, W)``, with a clear error for anything else (a bool, a
    string, a float, a zero or negative side): :func:`~unifiedctx.validation.check_int_or_pair`."""
    return check_int_or_pair(name, img_size)


class Stage(nn.Module):
    """``embed -> (+ pos_embed) -> blocks -> norm`` at one resolution (see the module docstring)."""

    def __init__(self, embed: PatchEmbed, blocks: list[Block], norm: nn.Module,
                 pos_embed_grid: tuple[int, int] | None = None, dim: int = 0):
        super().__init__()
        self.embed = embed
        self.pos_embed = None
        if pos_embed_grid is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, dim, *pos_embed_grid))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm

    def position(self, grid: tuple[int, int]) -> torch.Tensor:
        """The absolute position embedding ``(1, C, H, W)``, bicubically resized to ``grid``."""
        if tuple(self.pos_embed.shape[-2:]) == tuple(grid):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=grid, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        if self.pos_embed is not None:
            x = x + self.position(x.shape[-2:])
        return self.norm(self.blocks(x))


class ContextNet(nn.Module):
    """A network of context-aggregation blocks, built from a JSON-able description.

    Args:
        stages: one :class:`~unifiedctx.models.spec.StageSpec` per stage, or its dict (the
            settings, their defaults and checks are the spec's fields: ``StageSpec.keys()``).
        img_size: the ``(H, W)`` the network is built for (grid-bound mixers and the position
            embedding are sized from it).
        final_norm, final_eps: the norm after the last stage.
        abs_pos_embed: a learned absolute position embedding after the first embedding (DeiT).
        drop_path: stochastic depth, rising linearly from 0 to this value over all blocks.
        dropout: dropout in the MLPs and before the classifier.
        init: ``"linear"``: every ``nn.Linear`` gets trunc_normal(std .02) and zero bias, convs
            keep PyTorch's default (the authors' Container code); ``"pointwise"``: 1x1 convs too
            (they are per-token linear maps: timm's ViT and Mixer); ``"all"``: every conv too
            (timm's PoolFormer).
    """

    def __init__(self, stages: list[StageSpec | dict], img_size=224, in_chans: int = 3,
                 num_classes: int = 1000, final_norm: str = "layer", final_eps: float | None = None,
                 abs_pos_embed: bool = False,
                 drop_path: float = 0.0, dropout: float = 0.0, init: str = "linear", name: str | None = None):
        super().__init__()
        check_choice("init", init, INITS)
        check_bool("abs_pos_embed", abs_pos_embed)
        drop_path = check_float("drop_path", drop_path, low=0, high=1, high_open=True)
        dropout = check_float("dropout", dropout, low=0, high=1, high_open=True)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None, got {type(name).__name__} {name!r}")
        check_choice("final_norm", final_norm, NORMS)
        if final_eps is not None:
            final_eps = check_float("final_eps", final_eps, low=0, low_open=True)
        self.name = name
        self.img_size = as_size(img_size)
        in_chans = check_positive_int("in_chans", in_chans)
        num_classes = check_int("num_classes", num_classes, low=0)
        self.in_chans, self.num_classes = in_chans, num_classes
        stages = stage_specs(stages)
        self.stride = math.prod(s.stride for s in stages)
        if self.img_size[0] % self.stride or self.img_size[1] % self.stride:
            raise ValueError(f"img_size={self.img_size} is not divisible by the network's total "
                             f"stride {self.stride}: use a multiple of {self.stride}")
        depths = [s.depth for s in stages]
        total = sum(depths)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        grid, in_dim, built, stride = self.img_size, in_chans, [], 1
        self.feature_strides, self.feature_dims = [], []
        for i, s in enumerate(stages):
            stride *= s.stride
            grid = (self.img_size[0] // stride, self.img_size[1] // stride)
            embed = PatchEmbed(in_dim, s.dim, stride=s.stride, kernel=s.embed_kernel, norm=s.embed_norm,
                               eps=s.embed_eps)
            blocks = [Block(s, grid=grid, drop_path=rates[sum(depths[:i]) + j], dropout=dropout)
                      for j in range(s.depth)]
            last = i == len(stages) - 1
            norm = make_norm(final_norm, s.dim, final_eps) if last else nn.Identity()
            pos_grid = grid if (abs_pos_embed and i == 0) else None
            built.append(Stage(embed, blocks, norm, pos_grid, s.dim))
            self.feature_strides.append(stride)
            self.feature_dims.append(s.dim)
            in_dim = s.dim
        self.stages = nn.ModuleList(built)
        self.num_features = in_dim
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(in_dim, num_classes) if num_classes > 0 else nn.Identity()
        #: True when some mixer's affinity exists for one grid only (MLP-Mixer's token weights).
        self.grid_bound = any(getattr(m, "grid", None) is not None for m in self.mixers())
        init_weights(self, init)

    # ------------------------------------------------------------------ helpers
    def mixers(self) -> list[AffinityMixer]:
        return [m for m in self.modules() if isinstance(m, AffinityMixer)]

    def check_input(self, x) -> None:
        """Refuse inputs this network cannot take, naming the size and what it needs."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must have shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        check_float_image("x", x, like=self)
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input size {h}x{w} is not divisible by the network's stride {self.stride}: "
                             f"use a multiple of {self.stride}")
        if self.grid_bound and (h, w) != self.img_size:
            raise ValueError(
                f"{self.name or 'this model'} was built for img_size={self.img_size} and its 'mixer' "
                f"layers learn one affinity per grid, so it cannot take a {h}x{w} input; build it "
                f"for that size: create_model({self.name!r}, img_size=({h}, {w}))")

    # ------------------------------------------------------------------ forward
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output map, ``[(B, C_s, H / S_s, W / S_s)]`` (strides ``feature_strides``)."""
        self.check_input(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised map ``(B, num_features, H / stride, W / stride)``."""
        self.check_input(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool then the classifier: ``(B, C, h, w) -> (B, num_classes)``."""
        return self.head(self.head_drop(x.mean(dim=(-2, -1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0: no classifier)."""
        num_classes = check_int("num_classes", num_classes, low=0)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.head.to(next(self.parameters()).device)
        if hasattr(self, "config"):
            self.config["num_classes"] = num_classes


@torch.no_grad()
def init_weights(model: nn.Module, policy: str) -> None:
    """trunc_normal(std .02) and zero bias for linear layers (see ``ContextNet``'s ``init``),
    then each mixer's own ``reset_parameters()`` (e.g. ConViT's local init of GPSA).

    The generic pass runs over every module; a mixer whose init is its own re-applies it after.
    """
    for m in model.modules():
        is_conv = isinstance(m, nn.Conv2d)
        pointwise = is_conv and m.kernel_size == (1, 1) and m.groups == 1
        if isinstance(m, nn.Linear) or (pointwise and policy != "linear") or (is_conv and policy == "all"):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, AffinityMixer):
            m.reset_parameters()
