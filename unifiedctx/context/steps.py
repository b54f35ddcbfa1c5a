"""The layers that rollout composes, as plain data: one :class:`ContextStep` per token map.

A network moves context between tokens in a few kinds of layers, each a linear map from the
tokens of one grid to the tokens of the next (the same grid, or a coarser one)::

    mixer (residual)        x -> x + gamma * A x          A: (B|1, M, N, N), the mixer's affinity
    positional conv         x -> x + A_pos x              A_pos: the depthwise 3x3 kernel's affinity
    patch embed / downsample x -> A_embed x               A_embed: (N_out, N_in), its strided window
    channel MLP, norms      x -> x (token-wise)           no step: rollout ignores channel mixing

A step holds either a dense affinity (any source: a unifiedctx mixer, or an ``AffinityView``
of a model built elsewhere, through its ``grid_affinity()``) or a convolution's weight, whose
window is laid out as a matrix only after its heads are combined (cheaper by M). Foreign
models plug in by building steps (:func:`steps_from_affinities`) and calling
:func:`unifiedctx.context.rollout_steps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

HEADS = ("mean", "max")


@dataclass(frozen=True)
class ConvWindow:
    """A convolution's weight ``(C_out, C_in / groups, kh, kw)`` with its stride, padding, dilation.

    Head m is output channel m; its kernel is the sum over the input channels it reads
    (signed), or the sum of their absolute values (the non-negative rule).
    """

    weight: torch.Tensor
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    def kernel(self, heads: str, signed: bool) -> torch.Tensor:
        """``(kh, kw)``: signed, the mean over heads of ``sum_c W[m, c]``; else the mean or max
        over heads of ``sum_c |W[m, c]|``."""
        if signed:
            return self.weight.sum(1).mean(0)
        per_head = self.weight.abs().sum(1)
        return per_head.mean(0) if heads == "mean" else per_head.amax(0)

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        kh, kw = self.weight.shape[-2:]
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip(grid, self.padding, self.dilation, (kh, kw), self.stride))

    def matrix(self, kernel: torch.Tensor, grid_in: tuple[int, int]) -> torch.Tensor:
        """The window as a matrix ``(N_out, N_in)``: ``A[t, j] = kernel[o]`` where input pixel j is
        at offset o of output token t's window (zero padding: offsets off the grid are dropped)."""
        (hi, wi), (ho, wo) = grid_in, self.out_grid(grid_in)
        a = kernel.new_zeros(ho, wo, hi, wi)
        oy, ox = torch.arange(ho, device=kernel.device), torch.arange(wo, device=kernel.device)
        kh, kw = kernel.shape
        for ky in range(kh):
            iy = oy * self.stride[0] - self.padding[0] + ky * self.dilation[0]
            vy = (iy >= 0) & (iy < hi)
            for kx in range(kw):
                ix = ox * self.stride[1] - self.padding[1] + kx * self.dilation[1]
                vx = (ix >= 0) & (ix < wi)
                a[oy[vy][:, None], ox[vx][None, :], iy[vy][:, None], ix[vx][None, :]] = kernel[ky, kx]
        return a.reshape(ho * wo, hi * wi)


@dataclass(frozen=True)
class ContextStep:
    """One token map of a network, in forward order.

    Attributes:
        name: the module's name (``model.named_modules()``), e.g. ``"stages.0.blocks.0.mixer"``.
        grid_in, grid_out: token grids ``(H, W)`` before and after (equal unless it resamples).
        affinity: ``(B|1, M, N_out, N_in)``, or None when ``window`` is given.
        window: a :class:`ConvWindow`, or None when ``affinity`` is given.
        residual: the layer is ``x + scale * A x`` (True) or ``A x`` (False).
        scale: the branch's weight in the signed rule (a layer scale's mean gamma; 1 without one).
    """

    name: str
    grid_in: tuple[int, int]
    grid_out: tuple[int, int]
    affinity: torch.Tensor | None = None
    window: ConvWindow | None = None
    residual: bool = False
    scale: float = 1.0

    def combined(self, heads: str, signed: bool) -> torch.Tensor:
        """The heads combined, before the residual: ``(B|1, N_out, N_in)``.

        signed: ``mean_m A_m``; non-negative: ``mean_m |A_m|`` or ``max_m |A_m|``.
        """
        if self.window is not None:
            return self.window.matrix(self.window.kernel(heads, signed), self.grid_in).unsqueeze(0)
        a = self.affinity
        if signed:
            return a.mean(1)
        return a.abs().mean(1) if heads == "mean" else a.abs().amax(1)

    def matrix(self, heads: str, signed: bool) -> torch.Tensor:
        """This step's contribution to the rollout, ``(B|1, N_out, N_in)``.

        signed:        ``I + scale * A`` (residual) or ``A``: the exact linear map of a linear layer.
        non-negative:  ``rownorm(A + I)`` (residual) or ``rownorm(A)``, with ``A`` from
                       :meth:`combined` and ``rownorm`` dividing each row by its sum.
        """
        a = self.combined(heads, signed)
        if self.residual:
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = eye + self.scale * a if signed else a + eye
        if not signed:
            a = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
        return a


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_window(conv: nn.Conv2d, grid: tuple[int, int]) -> ConvWindow:
    """The :class:`ConvWindow` of a torch ``nn.Conv2d`` (zero padding only) on input ``grid``."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"rollout handles zero-padded convolutions only, got padding_mode="
                         f"{conv.padding_mode!r}")
    kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
    if conv.padding == "valid":
        padding = (0, 0)
    elif conv.padding == "same":
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        padding = _pair(conv.padding)
    return ConvWindow(conv.weight.detach(), _pair(conv.stride), padding, dilation)


def window_step(name: str, conv: nn.Conv2d, grid: tuple[int, int], residual: bool = False) -> ContextStep:
    """A step for a convolution (a patch embedding, a positional conv, a plain conv layer)."""
    window = conv_window(conv, grid)
    return ContextStep(name, tuple(grid), window.out_grid(grid), window=window, residual=residual)


def as_grid_affinity(affinity) -> torch.Tensor:
    """A ``(B|1, M, N, N)`` tensor from a tensor or an ``AffinityView`` (its ``grid_affinity()``)."""
    if isinstance(affinity, torch.Tensor):
        a = affinity
    elif callable(getattr(affinity, "grid_affinity", None)):
        a = affinity.grid_affinity()
    else:
        raise TypeError(f"an affinity must be a tensor (B|1, M, N, N) or an AffinityView, "
                        f"got {type(affinity).__name__}")
    if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"an affinity must have shape (B|1, M, N, N), got {tuple(a.shape)}")
    return a.detach()


def steps_from_affinities(affinities: Mapping[str, object], grid, residual: bool = True) -> list[ContextStep]:
    """Steps for a stack of token mixers on one ``grid`` (a ViT from elsewhere, say).

    Args:
        affinities: name -> ``(B|1, M, N, N)`` tensor or ``AffinityView``, in forward order.
        grid: the ``(H, W)`` token grid, N = H * W.
        residual: each layer is ``x + A x`` (a transformer block) rather than ``A x``.
    """
    grid = _pair(grid)
    steps = []
    for name, affinity in affinities.items():
        a = as_grid_affinity(affinity)
        if a.shape[-1] != grid[0] * grid[1]:
            raise ValueError(f"{name}: affinity over {a.shape[-1]} tokens, but grid {grid} holds "
                             f"{grid[0] * grid[1]}")
        steps.append(ContextStep(name, grid, grid, affinity=a, residual=residual))
    return steps


def check_heads(heads) -> str:
    if heads not in HEADS:
        raise ValueError(f"heads must be 'mean' or 'max' (how the heads are combined), got {heads!r}")
    return heads
