"""A plain U-Net (Ronneberger et al. 2015), the reference a user would otherwise pick for segmentation.

Written here in plain PyTorch, with nothing of the unified view in it, so that notebook 09 can say
where the Container backbones stand against the network people train for dense prediction. With
``depth`` levels of widths ``w_l = base * 2**l`` (``l = 0 .. depth - 1``) and a bottleneck of width
``w_depth``::

    E_0 = DC(x)                                          (B, w_0, H, W)
    E_l = DC(maxpool2(E_{l-1}))                          (B, w_l, H / 2^l, W / 2^l)
    D_depth = DC(maxpool2(E_{depth-1}))                  the bottleneck, (B, w_depth, H / 2^depth, ...)
    D_l = DC(concat(up2(D_{l+1}), E_l))                  up2: 2x2 transposed conv w_{l+1} -> w_l
    logits = conv1x1(D_0)                                (B, K, H, W)

``DC`` is the double convolution (conv3x3 -> GroupNorm -> ReLU) x 2; GroupNorm instead of the
original BatchNorm, like the segmentation head of :mod:`unifiedctx.models.segment`, so that small
batches compute the same function. ``H`` and ``W`` must be divisible by ``2**depth``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..validation import check_positive_int

#: At most this many GroupNorm groups per layer (``gcd(GROUPS, width)`` are used).
GROUPS = 8


def double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """(conv3x3 -> GroupNorm -> ReLU) x 2: ``(B, c_in, H, W) -> (B, c_out, H, W)``."""
    layers = []
    for c in (c_in, c_out):
        layers += [nn.Conv2d(c, c_out, kernel_size=3, padding=1, bias=False),
                   nn.GroupNorm(math.gcd(GROUPS, c_out), c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The U-Net of the module docstring: ``(B, in_chans, H, W) -> (B, num_classes, H, W)`` logits.

    Args:
        num_classes: ``K``, classes per pixel.
        in_chans: input channels ``C``.
        base: width ``w_0`` of the first level; level ``l`` has ``base * 2**l`` channels.
        depth: number of 2x down-samplings (the bottleneck is at stride ``2**depth``).

    ``config`` (JSON-able) rebuilds the architecture: ``UNet(**model.config["unet"])``.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, base: int = 8, depth: int = 3):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_chans = check_positive_int("in_chans", in_chans)
        self.base = check_positive_int("base", base)
        self.depth = check_positive_int("depth", depth)
        widths = [base * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList([double_conv(in_chans, widths[0])] +
                                  [double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2)
                                for i in reversed(range(depth)))
        self.merge = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        self.config = {"unet": {"num_classes": num_classes, "in_chans": in_chans, "base": base,
                                "depth": depth}}

    def check_input(self, x: torch.Tensor) -> None:
        """``ValueError`` unless ``x`` is ``(B, in_chans, H, W)`` with ``H`` and ``W`` divisible by
        ``2**depth``."""
        step = 2**self.depth
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a (B, {self.in_chans}, H, W) tensor, got {got}")
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"x's height and width must be divisible by 2**depth = {step}, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` of ``x`` ``(B, C, H, W)``."""
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()                                   # the bottleneck
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.classifier(x)
