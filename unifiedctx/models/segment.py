"""A small segmentation head on a backbone's ``features()``: :class:`Segmenter`.

The head is FPN-style (Lin et al. 2017, the top-down path only) over the stage maps
``F_s`` ``(B, C_s, H / S_s, W / S_s)`` of :meth:`ContextNet.features`, with a common width ``D``::

    P_last = L_last(F_last)                                   L_s: 1x1 conv C_s -> D (lateral)
    P_s    = L_s(F_s) + up(P_{s+1}, size of F_s)              top-down, up = nearest, s = last-1 .. 0
    Z      = GELU(GN(conv3x3(P_0)))                           (B, D, H / S_0, W / S_0)
    logits = up_bilinear(conv1x1(Z), (H, W))                  (B, K, H, W)

GN is GroupNorm with ``GROUPS`` groups (``gcd(8, D)``): unlike BatchNorm it does not depend on
the batch, so the small batches of dense prediction and the ranks of DDP all compute one function.

For an isotropic backbone (DeiT, MLP-Mixer: one stage, one stride-16 map, stride 4 in the nano
and cifar sizes) there is one map and the same formula reduces to ``lateral -> 3x3 conv ->
classifier -> bilinear upsampling`` of the single-stride map, SETR's "naive" head. A
hierarchical backbone's head reads every stage, so its finest prediction grid is stride
``S_0`` (4 for the paper presets, 2 for nano/cifar) instead of stride 16.

``create_segmenter(preset, num_classes, img_size)`` builds one from a preset (``"unet"``: the plain
U-Net reference instead); ``model.config`` (``{"segmenter": {...}, "backbone": backbone.config}``, or
``{"unet": {...}}``) rebuilds it with :func:`from_config`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_positive_int
from .network import ContextNet

#: Default common width ``D`` of the head.
DEFAULT_WIDTH = 32
#: At most this many GroupNorm groups in the head (``gcd(GROUPS, D)`` are used).
GROUPS = 8


class SegmentationHead(nn.Module):
    """The top-down head of the module docstring: stage maps -> ``(B, K, h_0, w_0)`` logits at the
    finest stage's grid (the caller upsamples them to the input size).

    Args:
        in_dims: channels ``C_s`` of each stage map, finest first.
        num_classes: ``K``.
        width: the common width ``D``.
    """

    def __init__(self, in_dims: list[int], num_classes: int, width: int = DEFAULT_WIDTH):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in in_dims)
        self.smooth = nn.Sequential(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
                                    nn.GroupNorm(math.gcd(GROUPS, width), width), nn.GELU())
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != len(self.lateral):
            raise ValueError(f"the head expects {len(self.lateral)} stage maps, got {len(maps)}")
        p = self.lateral[-1](maps[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(maps[:-1])):
            p = lateral(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest")
        return self.classifier(self.smooth(p))


class Segmenter(nn.Module):
    """A backbone plus :class:`SegmentationHead`: ``(B, C, H, W) -> (B, num_classes, H, W)`` logits.

    Args:
        backbone: a :class:`ContextNet` (anything with ``features(x)``, ``feature_dims``,
            ``check_input``). Its classifier is removed (``reset_classifier(0)``): a segmenter
            trains no unused parameters (DDP would refuse them).
        num_classes: ``K``, classes per pixel (background included).
        width: the head's common width ``D``.

    Attributes:
        num_classes, in_chans, img_size, stride: as the backbone's (``num_classes`` the head's);
        config: JSON-able; :func:`from_config` rebuilds the architecture (fresh weights).
    """

    def __init__(self, backbone: ContextNet, num_classes: int, width: int = DEFAULT_WIDTH):
        super().__init__()
        if not hasattr(backbone, "features") or not hasattr(backbone, "feature_dims"):
            raise TypeError(f"backbone must be a ContextNet (features(), feature_dims), "
                            f"got {type(backbone).__name__}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("width", width)
        if getattr(backbone, "num_classes", 0):
            backbone.reset_classifier(0)
        self.backbone = backbone
        self.head = SegmentationHead(list(backbone.feature_dims), num_classes, width)
        self.num_classes, self.width = num_classes, width
        self.in_chans, self.img_size, self.stride = backbone.in_chans, backbone.img_size, backbone.stride
        backbone_config = getattr(backbone, "config", None)
        backbone_config = copy.deepcopy(backbone_config) if isinstance(backbone_config, dict) else None
        self.config = {"segmenter": {"num_classes": num_classes, "width": width}, "backbone": backbone_config}
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def check_input(self, x) -> None:
        """The backbone's check: a ``(B, in_chans, H, W)`` tensor its strides divide (and, for a
        grid-bound backbone, its one size)."""
        self.backbone.check_input(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``logits[b, k, i, j]``: class-``k`` score of pixel ``(i, j)``, ``(B, K, H, W)``."""
        logits = self.head(self.backbone.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


#: The one segmenter that is not a backbone with a head: the plain U-Net reference (:mod:`.unet`).
UNET = "unet"


def segmenter_presets() -> list[str]:
    """What :func:`create_segmenter` builds: every backbone preset (``list_models()``) and ``"unet"``."""
    from . import list_models

    return [*list_models(), UNET]


def create_segmenter(preset_name: str, num_classes: int, img_size=None, width: int | None = None,
                     in_chans: int = 3, **overrides) -> nn.Module:
    """:class:`Segmenter` on the backbone ``create_model(preset_name, num_classes=0, img_size,
    in_chans, **overrides)`` with a head of ``width`` (default :data:`DEFAULT_WIDTH`; MLP-Mixer
    presets are built for ``img_size`` only); for ``"unet"`` the plain
    :class:`~unifiedctx.models.unet.UNet` (``overrides``: ``base``, ``depth``; it has no head width,
    and takes any ``img_size`` that ``2**depth`` divides)."""
    if preset_name == UNET:
        from ..validation import check_int_or_pair
        from .unet import UNet

        if width is not None:
            raise TypeError("the U-Net has no head width: give base= (its first width) and depth= instead")
        unet = UNet(num_classes, in_chans, **overrides)
        if img_size is not None and any(s % 2**unet.depth for s in check_int_or_pair("img_size", img_size)):
            raise ValueError(f"img_size={img_size!r}: the U-Net of depth {unet.depth} needs sides that "
                             f"2**depth = {2**unet.depth} divides")
        return unet
    from . import create_model  # the package's (no import cycle with the factory, which reads segmenters)

    backbone = create_model(preset_name, num_classes=0, img_size=img_size, in_chans=in_chans, **overrides)
    return Segmenter(backbone, num_classes, DEFAULT_WIDTH if width is None else width)


def is_segmenter_config(config) -> bool:
    """True for a :class:`Segmenter`'s ``config`` or a U-Net's (``{"unet": {...}}``)."""
    return isinstance(config, dict) and (("segmenter" in config and "backbone" in config)
                                         or set(config) == {UNET})


def from_config(config: dict) -> nn.Module:
    """Rebuild a :class:`Segmenter` (or the U-Net) from its ``config`` (fresh weights, same architecture)."""
    if isinstance(config, dict) and set(config) == {UNET} and isinstance(config[UNET], dict):
        from .unet import UNet

        return UNet(**config[UNET])
    if not is_segmenter_config(config) or not isinstance(config["backbone"], dict):
        raise ValueError("config must be a Segmenter's config: "
                         "{'segmenter': {...}, 'backbone': model.config}, or a U-Net's {'unet': {...}}")
    from . import from_config as backbone_from_config

    return Segmenter(backbone_from_config(config["backbone"]), **config["segmenter"])
