"""Learned static kernels: the depthwise convolution weights of dwconv and Container layers.

A depthwise k x k kernel is the whole content of a static, local affinity (``A[c]`` is the
banded matrix that repeats the kernel along the grid), so looking at the kernels is looking
at the static affinities. Each kernel is drawn as a small k x k tile in a diverging colormap
centred on 0 (red positive, blue negative, white zero).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from ._common import symmetric_limits


def _is_depthwise(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
            and max(conv.kernel_size) > 1)


def static_kernels(model: nn.Module, all_depthwise: bool = False) -> OrderedDict:
    """The depthwise kernels of a model: ``{layer name: (C, kh, kw)}`` (detached float CPU tensors).

    By default only the static affinities of token mixers: ``DepthwiseConv.conv`` (``dwconv``)
    and ``Container.static`` (the conv half of the mixed affinity). ``all_depthwise=True``
    takes every depthwise ``nn.Conv2d`` with a kernel larger than 1 (positional convs too).
    A bare ``nn.Conv2d`` or mixer is accepted as a model of one layer.
    """
    from ..mixers import Container, DepthwiseConv

    out = OrderedDict()
    for name, mod in model.named_modules():
        if isinstance(mod, DepthwiseConv):
            conv, label = mod.conv, name
        elif isinstance(mod, Container):
            conv, label = mod.static, name
        elif all_depthwise and _is_depthwise(mod):
            conv, label = mod, name
        else:
            continue
        if _is_depthwise(conv) and label not in out:
            out[label or type(mod).__name__] = conv.weight.detach().to("cpu", torch.float64)[:, 0]
    if not out and _is_depthwise(model):
        out[type(model).__name__] = model.weight.detach().to("cpu", torch.float64)[:, 0]
    return out


def _as_kernel_dict(kernels) -> OrderedDict:
    if isinstance(kernels, nn.Module):
        found = static_kernels(kernels)
        if not found:
            raise ValueError(f"{type(kernels).__name__} has no depthwise (dwconv / Container) kernels")
        return found
    if isinstance(kernels, (torch.Tensor, np.ndarray)):
        kernels = {"kernels": kernels}
    if not isinstance(kernels, Mapping) or not kernels:
        raise TypeError("kernels must be a (C, k, k) tensor, a mapping {name: (C, k, k)} or a model")
    out = OrderedDict()
    for name, k in kernels.items():
        k = torch.as_tensor(k).detach().to("cpu", torch.float64)
        if k.dim() == 4 and k.shape[1] == 1:
            k = k[:, 0]
        if k.dim() == 2:
            k = k[None]
        if k.dim() != 3:
            raise ValueError(f"kernels[{name!r}] must be (C, kh, kw) or (C, 1, kh, kw), got {tuple(k.shape)}")
        out[name] = k
    return out


def plot_static_kernels(kernels, channels: int = 16, cmap: str = "RdBu_r", fig=None,
                        title: str | None = None):
    """Draw learned depthwise kernels as a grid of k x k tiles: one row per layer.

    Row r shows the first ``channels`` channels of layer r, on a diverging colormap centred on 0
    whose range is symmetric and shared within the row (``±max |w|`` of those tiles, given by
    the row's colorbar), so tiles of one layer compare directly.

    Args:
        kernels: a ``(C, kh, kw)`` (or ``(C, 1, kh, kw)`` conv weight) tensor, a mapping
            ``{layer name: such a tensor}``, or a model (see :func:`static_kernels`).
        channels: how many channels per layer (the first ones).
        fig: an existing figure to draw into (it is cleared).

    Returns:
        the ``Figure``; tile ``(r, c)`` is ``fig.axes[r * channels + c]``'s image (the
        colorbars come after the tiles in ``fig.axes``).
    """
    layers = _as_kernel_dict(kernels)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    ncols = min(channels, max(k.shape[0] for k in layers.values()))
    nrows = len(layers)
    if fig is None:
        fig = plt.figure(figsize=(0.55 * ncols + 2.6, 0.62 * nrows + 0.9), layout="constrained")
    else:
        fig.clear()
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for r, (name, k) in enumerate(layers.items()):
        shown = k[:ncols].numpy()
        vmin, vmax = symmetric_limits(shown)
        im = None
        for c in range(ncols):
            ax = grid[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < shown.shape[0]:
                im = ax.imshow(shown[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            else:
                ax.set_visible(False)
        grid[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        fig.colorbar(im, ax=list(grid[r]), shrink=0.9, aspect=6, pad=0.01).ax.tick_params(labelsize=6)
    for c in range(ncols):
        grid[0, c].set_title(str(c), fontsize=6)
    fig.suptitle(title or "Learned static kernels (channel = column)", fontsize=10)
    return fig
