"""Learned static kernels: the depthwise convolution weights of dwconv and Container layers.

A depthwise k x k kernel is the whole content of a static, local affinity (``A[c]`` is the
banded matrix that repeats the kernel along the grid), so looking at the kernels is looking
at the static affinities. Each kernel is drawn as a small k x k tile in the library's diverging
colormap centred on 0 (red positive, blue negative, white zero). The kernels are read through
the mixer contract (``static_kernels()``), so a new mixer with a static kernel shows up here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ..validation import check_bool, check_finite, check_float, check_positive_int
from .scales import DIVERGING, MIN_FONTSIZE, Scale, add_colorbar, check_cmap, symmetric_limits


def _is_depthwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and max(conv.kernel_size) > 1)


def static_kernels(model: nn.Module, all_depthwise: bool = False) -> OrderedDict:
    """The learned static kernels of a model: ``{layer name: (C, kh, kw)}`` (detached float64 CPU).

    Every token mixer is asked through the contract (``mixer.static_kernels()``: dwconv's
    kernel, the conv half of Container's mixed affinity; ``None`` for mixers without a learned
    static kernel). ``all_depthwise=True`` adds every other depthwise ``nn.Conv2d`` outside the
    mixers with a kernel larger than 1 (positional convs). A network without unifiedctx mixers
    (timm's ConvNeXt, a user's own) is read the same way: its depthwise ``nn.Conv2d`` kernels are
    its static kernels. A bare ``nn.Conv2d`` or mixer is accepted as a model of one layer.
    """
    from ..inspection.layers import mixer_layers

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_bool("all_depthwise", all_depthwise)
    out = OrderedDict()
    mixers = mixer_layers(model)
    for name, mixer in mixers.items():
        kernel = mixer.static_kernels()
        if kernel is not None:
            out[name or type(mixer).__name__] = kernel.detach().to("cpu", torch.float64)
    if all_depthwise or not mixers:
        inside = {id(m) for mixer in mixers.values() for m in mixer.modules()}
        for name, mod in model.named_modules():
            if id(mod) not in inside and _is_depthwise(mod):
                out[name or type(mod).__name__] = mod.weight.detach().to("cpu", torch.float64)[:, 0]
    if not out and _is_depthwise(model):
        out[type(model).__name__] = model.weight.detach().to("cpu", torch.float64)[:, 0]
    return out


def _as_kernel_dict(kernels) -> OrderedDict:
    if isinstance(kernels, nn.Module):
        found = static_kernels(kernels)
        if not found:
            raise ValueError(f"{type(kernels).__name__} has no depthwise (dwconv / Container) kernels")
        for name, k in found.items():
            check_finite(f"the kernels of {name!r}", k)
        return found
    if isinstance(kernels, (torch.Tensor, np.ndarray)):
        kernels = {"kernels": kernels}
    if not isinstance(kernels, Mapping) or not kernels:
        raise TypeError("kernels must be a (C, k, k) tensor, a mapping {name: (C, k, k)} or a model")
    out = OrderedDict()
    for name, k in kernels.items():
        if not isinstance(k, (torch.Tensor, np.ndarray)):
            raise TypeError(f"kernels[{name!r}] must be a tensor or an array (C, kh, kw), "
                            f"got {type(k).__name__}")
        k = torch.as_tensor(k).detach().to("cpu", torch.float64)
        check_finite(f"kernels[{name!r}]", k)
        if k.dim() == 4 and k.shape[1] == 1:
            k = k[:, 0]
        if k.dim() == 2:
            k = k[None]
        if k.dim() != 3:
            raise ValueError(f"kernels[{name!r}] must be (C, kh, kw) or (C, 1, kh, kw), got {tuple(k.shape)}")
        out[name] = k
    return out


def kernel_limits(*kernel_sets, channels: int | None = None) -> OrderedDict:
    """``{layer: v}``: the symmetric colour limit ``±v`` of each layer over several kernel sets.

    Give it the kernels before and after training (each a model, a tensor or a mapping, as
    :func:`plot_static_kernels` takes) and pass the result as ``limits=`` to both plots: the
    two figures then share one colour range per layer. Only the first ``channels`` are read.
    """
    if channels is not None:
        channels = check_positive_int("channels", channels)
    limits = OrderedDict()
    for kernels in kernel_sets:
        for name, k in _as_kernel_dict(kernels).items():
            shown = k[:channels] if channels else k
            limits[name] = max(limits.get(name, 0.0), symmetric_limits(shown.numpy())[1])
    return limits


def plot_static_kernels(kernels, channels: int = 16, cmap: str = DIVERGING, fig=None,
                        title: str | None = None, limits=None):
    """Draw learned depthwise kernels as a grid of k x k tiles: one row per layer.

    Row r shows the first ``channels`` channels of layer r, on the diverging colormap centred on
    0 whose range is symmetric and shared within the row (``±max |w|`` of those tiles, stated by
    the row's colorbar), so tiles of one layer compare directly. ``limits`` (a number, or
    ``{layer: v}`` from :func:`kernel_limits`) fixes the range ``±v`` instead, so that two
    figures (before and after training) share one scale.

    Args:
        kernels: a ``(C, kh, kw)`` (or ``(C, 1, kh, kw)`` conv weight) tensor, a mapping
            ``{layer name: such a tensor}``, or a model (see :func:`static_kernels`).
        channels: how many channels per layer (the first ones).
        fig: an existing figure to draw into (it is cleared).
        limits: shared symmetric colour limits (see above).

    Returns:
        the ``Figure``; tile ``(r, c)`` is ``fig.axes[r * channels + c]``'s image (the
        colorbars come after the tiles in ``fig.axes``).
    """
    layers = _as_kernel_dict(kernels)
    channels = check_positive_int("channels", channels)
    check_cmap("cmap", cmap, none_ok=False)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__} {title!r}")
    if fig is not None:
        from matplotlib.figure import Figure

        if not isinstance(fig, Figure):
            raise TypeError(f"fig must be a matplotlib Figure or None, got {type(fig).__name__}")
    if limits is not None and not isinstance(limits, Mapping):
        check_float("limits", limits, low=0, low_open=True)
    elif limits is not None:
        for name, v in limits.items():
            check_float(f"limits[{name!r}]", v, low=0, low_open=True)
    ncols = min(channels, max(k.shape[0] for k in layers.values()))
    nrows = len(layers)
    if fig is None:
        fig = plt.figure(figsize=(0.6 * ncols + 3.2, 0.7 * nrows + 1.1), layout="constrained")
    else:
        fig.clear()
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for r, (name, k) in enumerate(layers.items()):
        shown = k[:ncols].numpy()
        vmin, vmax = symmetric_limits(shown)
        if limits is not None:
            v = limits.get(name, vmax) if isinstance(limits, Mapping) else float(limits)
            vmin, vmax = -v, v
        scale = Scale(cmap, vmin, vmax, True)
        for c in range(ncols):
            ax = grid[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < shown.shape[0]:
                ax.imshow(shown[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            else:
                ax.set_visible(False)
        grid[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=MIN_FONTSIZE)
        add_colorbar(fig, scale, list(grid[r]), shrink=0.9, aspect=6, pad=0.01)
    for c in range(ncols):  # each column says its channel, on the first row that has one there
        first = next(r for r, k in enumerate(layers.values()) if c < min(ncols, k.shape[0]))
        grid[first, c].set_title(f"ch {c}", fontsize=MIN_FONTSIZE)
    fig.suptitle(title or "Learned static kernels (one row per layer, channel = column)", fontsize=10)
    return fig
