"""Which inspector reads which module: the table behind ``inspect`` and ``inspect_model``.

Each :class:`Family` knows how to recognise its modules, how to turn the arguments of one call
(``module(*args, **kwargs)``, as a forward hook sees them) into the view's input, and which part of
the module's output the view rebuilds. timm classes are matched by exact type, found by import path,
so timm stays optional.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..mixers.base import AffinityMixer
from ..validation import check_finite, check_int_or_pair, check_module
from .timm_attention import (
    inspect_convit_gpsa,
    inspect_convit_mhsa,
    inspect_swin_window_attention,
    inspect_timm_attention,
)
from .timm_mixer import inspect_timm_mixer_block
from .torch_layers import inspect_avgpool, inspect_conv2d, inspect_mha
from .view import AffinityView


class NoView(Exception):
    """A supported module called in a way that has no affinity view (the message says why)."""


def _timm_class(path: str, name: str):
    try:
        return getattr(importlib.import_module(path), name)
    except (ImportError, AttributeError):
        return None


def _is_timm(*places) -> Callable[[nn.Module], bool]:
    def matches(module):
        if not type(module).__module__.startswith("timm."):
            return False
        return any(type(module) is _timm_class(path, name) for path, name in places)
    return matches


def _mixer_view(module: AffinityMixer, x, grid=None, prefix_tokens=0) -> AffinityView:
    g = module.check_input(x)
    components = None
    if module.kind == "mixed" and hasattr(module, "components"):
        components = dict(module.components(x))
    return AffinityView(module.values(x), partial(module.affinity, x), partial(module.project, grid=g), g,
                        module.kind, module.heads, type(module).__name__, components=components)


def _pooling_view(module, x, grid=None, prefix_tokens=0) -> AffinityView:
    if not isinstance(getattr(module, "pool", None), nn.AvgPool2d):
        raise ValueError("timm Pooling.pool must be an nn.AvgPool2d")
    return inspect_avgpool(module.pool, x, subtract_input=True, name="timm Pooling")


def _swin_view(module, x, grid=None, prefix_tokens=0, mask=None) -> AffinityView:
    return inspect_swin_window_attention(module, x, mask)


def _gpsa_view(module, x, grid=None, prefix_tokens=0) -> AffinityView:
    return inspect_convit_gpsa(module, x, grid)


def _image_only(fn):
    return lambda module, x, grid=None, prefix_tokens=0: fn(module, x)


def _mha_call(module, call: dict):
    query, key, value = call.get("query"), call.get("key"), call.get("value")
    if not (query is key is value):
        raise NoView("cross-attention (query, key and value are not one tensor): not one grid's mixer")
    for name in ("key_padding_mask", "attn_mask"):
        if call.get(name) is not None:
            raise NoView(f"called with {name}: a masked MultiheadAttention is not supported")
    if call.get("is_causal"):
        raise NoView("called with is_causal=True: not supported")
    return query, {}


def _conv_call(module, call: dict):
    if module.stride != (1, 1):  # said before any token limit: it is why there is no view
        raise NoView(f"stride {module.stride}: a strided conv changes the grid (a downsampling, not a mixer)")
    if module.kernel_size == (1, 1) and (module.groups == 1 or module.groups < module.in_channels):
        raise NoView("a 1x1 conv: a per-token channel map (its affinity is the identity)")
    return _first_input(module, call)


def _first_input(module, call: dict):
    return next(iter(call.values())), {}


def _timm_attention_call(module, call: dict):
    return call["x"], {"attn_mask": call.get("attn_mask"), "is_causal": bool(call.get("is_causal", False))}


def _swin_call(module, call: dict):
    return call["x"], {"mask": call.get("mask")}


def _first_of_tuple(output):
    return output[0] if isinstance(output, tuple) else output


@dataclass(frozen=True)
class Family:
    """One kind of inspectable module.

    Attributes:
        label: how ``SUPPORTED`` names it.
        matches: ``module -> bool``.
        inspect: ``(module, x, grid, prefix_tokens, **extra) -> AffinityView``.
        call_input: ``(module, bound call arguments) -> (x, extra)``; raises :class:`NoView`.
        layout: ``"image"`` (x is ``(B, C, H, W)``), ``"tokens"`` (``(B, N, C)``, grid inferred),
            ``"seq_first"`` (``nn.MultiheadAttention``: batch-first or not), ``"own_grid"`` (the
            module knows its grid: Swin windows, GPSA's square grid).
        output: ``module output -> the tensor the view rebuilds``.
    """

    label: str
    matches: Callable[[nn.Module], bool]
    inspect: Callable[..., AffinityView]
    call_input: Callable = _first_input
    layout: str = "image"
    output: Callable = _first_of_tuple


FAMILIES: tuple[Family, ...] = (
    Family("unifiedctx AffinityMixer", lambda m: isinstance(m, AffinityMixer), _mixer_view),
    Family("torch.nn.Conv2d (full, grouped or depthwise; stride 1, odd kernel, padding k//2, zeros)",
           lambda m: isinstance(m, nn.Conv2d), _image_only(inspect_conv2d), _conv_call),
    Family("torch.nn.AvgPool2d (stride 1, odd kernel, padding k//2)",
           lambda m: isinstance(m, nn.AvgPool2d), _image_only(inspect_avgpool)),
    Family("torch.nn.MultiheadAttention (self-attention)", lambda m: isinstance(m, nn.MultiheadAttention),
           inspect_mha, _mha_call, "seq_first"),
    Family("timm Attention (ViT, DeiT: class and distillation tokens)",
           _is_timm(("timm.layers.attention", "Attention"), ("timm.models.vision_transformer", "Attention")),
           inspect_timm_attention, _timm_attention_call, "tokens"),
    Family("timm MixerBlock (MLP-Mixer)", _is_timm(("timm.models.mlp_mixer", "MixerBlock")),
           inspect_timm_mixer_block, layout="tokens"),
    Family("timm Pooling (PoolFormer / MetaFormer)",
           _is_timm(("timm.models.metaformer", "Pooling"), ("timm.models.poolformer", "Pooling")),
           _pooling_view),
    Family("timm WindowAttention (Swin: relative-position bias, shifted windows)",
           _is_timm(("timm.models.swin_transformer", "WindowAttention")), _swin_view, _swin_call, "own_grid"),
    Family("timm GPSA (ConViT)", _is_timm(("timm.models.convit", "GPSA")), _gpsa_view, layout="own_grid"),
    Family("timm MHSA (ConViT)", _is_timm(("timm.models.convit", "MHSA")), inspect_convit_mhsa,
           layout="tokens"),
)

SUPPORTED = tuple(f.label for f in FAMILIES)


def family_of(module: nn.Module) -> Family | None:
    """The family that reads ``module``, or ``None``."""
    for family in FAMILIES:
        if family.matches(module):
            return family
    return None


def inspect(module: nn.Module, x: torch.Tensor, grid=None, prefix_tokens: int = 0,
            **call_kwargs) -> AffinityView:
    """The affinity view of ``module`` on input ``x``: ``view.project(view.affinity @ view.values)``
    equals ``module(x)`` (``module(x, x, x)[0]`` for ``nn.MultiheadAttention``).

    Args:
        module: one of the supported modules (``SUPPORTED``; see the package docstring); put it
            in ``eval()`` so that dropout is off.
        x: its input: ``(B, C, H, W)`` for convolutions, pooling and unifiedctx mixers;
            ``(B, N, C)`` (or ``(N, B, C)`` when ``batch_first=False``, or unbatched ``(N, C)``)
            tokens for ``nn.MultiheadAttention``; ``(B, N, C)`` for the timm token layers
            (``(B * nW, Wh * Ww, C)`` windows for Swin).
        grid: for token modules, the ``(H, W)`` grid the tokens come from (optional; it is
            ``None`` in the view when not given). Image modules take the grid from ``x``.
        prefix_tokens: leading tokens of a sequence that are not on the grid (class, distillation).
        **call_kwargs: the layer's own extra forward arguments: ``attn_mask=`` / ``is_causal=`` for
            timm ``Attention``, ``mask=`` (the shifted-window mask) for Swin's ``WindowAttention``.

    Returns:
        an :class:`AffinityView` with ``values (B, M, K, d)``, ``affinity (B|1, M, N, K)``,
        ``project``, ``grid``, ``kind`` and ``heads``.

    Raises:
        TypeError: for a module type it does not support (the message lists the supported ones).
        ValueError: for a supported type with unsupported settings (stride, padding, groups...),
            naming the attribute.
    """
    from .view import check_prefix

    check_module("module", module)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (an image batch or tokens), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    check_finite("x", x)
    if grid is not None:
        check_int_or_pair("grid", grid)
    check_prefix(prefix_tokens)
    family = family_of(module)
    if family is None:
        raise TypeError(f"inspect does not support {type(module).__module__}.{type(module).__name__}; "
                        f"supported: {'; '.join(SUPPORTED)}")
    return family.inspect(module, x, grid=grid, prefix_tokens=prefix_tokens, **call_kwargs)
