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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..inspection.records import ConvWindow
from ..validation import check_choice

HEADS = ("mean", "max")


def _rownorm(a: torch.Tensor) -> torch.Tensor:
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


@dataclass(frozen=True)
class ContextStep:
    """One token map of a network, in forward order.

    Attributes:
        name: the module's name (``model.named_modules()``), e.g. ``"stages.0.blocks.0.mixer"``.
        grid_in, grid_out: token grids ``(H, W)`` before and after (equal unless it resamples).
        affinity: ``(B|1, M, N_out, N_in)``, or None when ``window`` or ``branch`` is given.
        window: a :class:`ConvWindow`, or None.
        residual: the layer is ``x + scale * A x`` (True) or ``A x`` (False).
        scale: the branch's weight in the signed rule (a layer scale's mean gamma; 1 without one).
        prefix_in, prefix_out: prefix (class / distillation) tokens in front of the grid's tokens;
            N counts them (``N = prefix + H * W``).
        branch: for a residual block whose branch holds several token maps (ResNet's convs), their
            steps in order; then the step is ``shortcut(x) + scale * branch(x)``.
        shortcut: the steps of a downsampling shortcut (empty: the identity).
        covers: the module names inside this step (a ``branch``'s layers), that ``upto`` may name.
        windows: a windowed attention's ``(Windows, A_local (B * nW, M, n, n))`` (``trace.Windows``): applied
            window by window, never as the dense ``(N, N)``.
    """

    name: str
    grid_in: tuple[int, int]
    grid_out: tuple[int, int]
    affinity: torch.Tensor | None = None
    window: ConvWindow | None = None
    residual: bool = False
    scale: float = 1.0
    prefix_in: int = 0
    prefix_out: int = 0
    branch: tuple = ()
    shortcut: tuple = ()
    covers: tuple = ()
    windows: tuple | None = None

    def combined(self, heads: str, signed: bool) -> torch.Tensor:
        """The heads combined, before the residual: ``(B|1, N_out, N_in)``.

        signed: ``mean_m A_m``; non-negative: ``mean_m |A_m|`` or ``max_m |A_m|``. A ``branch``: the
        product of its steps' matrices.
        """
        if self.branch:
            return product([s.matrix(heads, signed) for s in self.branch])
        if self.window is not None:
            return self.window.matrix(self.window.kernel(heads, signed), self.grid_in).unsqueeze(0)
        a = self.affinity if self.windows is None else self.windows[0].on_grid(self.windows[1])
        if signed:
            return a.mean(1)
        return a.abs().mean(1) if heads == "mean" else a.abs().amax(1)

    def matrix(self, heads: str, signed: bool) -> torch.Tensor:
        """This step's contribution to the rollout, ``(B|1, N_out, N_in)``.

        signed:        ``I + scale * A`` (residual) or ``A``: the exact linear map of a linear layer.
        non-negative:  ``0.5 rownorm(A) + 0.5 I`` (residual: Abnar & Zuidema's weighting, for every family)
                       or ``rownorm(A)``, with ``A`` from :meth:`combined` and ``rownorm`` dividing each
                       row by its sum.
        A ``branch`` (several maps, or a downsampling shortcut S): signed ``S + scale * F``,
        non-negative ``(S' + F) / 2`` with ``F`` the product of the branch's row-normalised maps and
        ``S'`` the row-normalised shortcut (``I`` without one): branch and shortcut weigh the same.
        """
        a = self.combined(heads, signed)
        if self.branch or self.shortcut:
            n_in = a.shape[-1]
            cut = (product([s.matrix(heads, signed) for s in self.shortcut]) if self.shortcut
                   else torch.eye(n_in, dtype=a.dtype, device=a.device))
            if signed:
                return cut + self.scale * a
            return 0.5 * (_rownorm(cut) + _rownorm(a))
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device) if self.residual else None
        if signed:
            return eye + self.scale * a if self.residual else a
        a = _rownorm(a)
        return 0.5 * a + 0.5 * eye if self.residual else a

    def right(self, t: torch.Tensor, heads: str, signed: bool) -> torch.Tensor:
        """``t @ matrix(heads, signed)`` for ``t`` ``(B|1, R, N_out)``, without building a window's
        ``(N_out, N_in)`` matrix: a window is applied as the transposed convolution of its kernel (the
        adjoint of the convolution), its row sums as the convolution of ones."""
        if self.branch:
            f = fold(self.branch, t, heads, signed)
            c = fold(self.shortcut, t, heads, signed) if self.shortcut else t
            return c + self.scale * f if signed else 0.5 * (c + f)
        if self.windows is not None:
            out = self._windowed(t, heads, signed)
        elif self.window is None or self.shortcut:
            return t @ self.matrix(heads, signed).to(t.dtype)
        else:
            kernel = self.window.kernel(heads, signed).to(t.dtype)
            if signed:
                out = self._adjoint(t, kernel)
            else:
                out = self._adjoint(t / self._row_sums(kernel).clamp_min(torch.finfo(t.dtype).tiny), kernel)
        if not self.residual:
            return out
        return t + self.scale * out if signed else 0.5 * t + 0.5 * out

    def _windowed(self, t: torch.Tensor, heads: str, signed: bool) -> torch.Tensor:
        """``t @ S`` for a windowed attention, window by window: ``S`` restricted to one window is that
        window's combined ``(n, n)``; tokens of different windows never meet."""
        windows, local = self.windows
        a = local.mean(1) if signed else (local.abs().mean(1) if heads == "mean" else local.abs().amax(1))
        if not signed:
            a = _rownorm(a)
        a = a.reshape(-1, windows.count, *a.shape[-2:])  # (B, nW, n, n)
        n_local = a.shape[-1]
        where = torch.empty(windows.count, n_local, dtype=torch.long)
        where[windows.window, windows.place] = torch.arange(windows.window.numel())
        gathered = t[..., where.reshape(-1)].reshape(*t.shape[:-1], windows.count, n_local)
        gathered = gathered.expand(max(gathered.shape[0], a.shape[0]), *gathered.shape[1:])
        out = torch.einsum("brwi,bwij->brwj", gathered, a.to(t.dtype))
        result = torch.empty(out.shape[0], t.shape[1], t.shape[-1], dtype=out.dtype, device=out.device)
        result[..., where.reshape(-1)] = out.reshape(out.shape[0], t.shape[1], -1)
        return result

    def _adjoint(self, t: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        w, (hi, wi), (ho, wo) = self.window, self.grid_in, self.grid_out
        b, r, _ = t.shape
        base = [(o - 1) * s - 2 * p + d * (k - 1) + 1
                for o, s, p, d, k in zip((ho, wo), w.stride, w.padding, w.dilation, kernel.shape)]
        out = F.conv_transpose2d(t.reshape(b * r, 1, ho, wo), kernel[None, None], stride=w.stride,
                                 padding=w.padding, output_padding=(hi - base[0], wi - base[1]),
                                 dilation=w.dilation)
        return out.reshape(b, r, hi * wi)

    def _row_sums(self, kernel: torch.Tensor) -> torch.Tensor:
        w = self.window
        ones = kernel.new_ones(1, 1, *self.grid_in)
        sums = F.conv2d(ones, kernel[None, None], stride=w.stride, padding=w.padding, dilation=w.dilation)
        return sums.reshape(-1)

    def names(self) -> tuple[str, ...]:
        """This step's name and every module name it covers."""
        return (self.name, *self.covers)


def product(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """``M_L @ ... @ M_1`` of matrices given in forward order ``[M_1, ..., M_L]``, multiplied from the
    last one down, so the cost is ``sum_l N_L N_l N_(l-1)``: cheap when the last layer is small."""
    out = matrices[-1]
    for m in reversed(matrices[:-1]):
        out = out @ m
    return out


def fold(steps: Sequence[ContextStep], t: torch.Tensor, heads: str, signed: bool) -> torch.Tensor:
    """``t @ S_L @ ... @ S_1`` for ``steps = [S_1, ..., S_L]`` (:meth:`ContextStep.right`, last first)."""
    for step in reversed(steps):
        t = step.right(t, heads, signed)
    return t


def join_matrix(grid, prefix_from: int, prefix_to: int, dtype, device) -> torch.Tensor:
    """``(prefix_to + N, prefix_from + N)``: where prefix tokens join (a class token concatenated
    after the patch embedding) or leave: grid tokens map to themselves, the first
    ``min(prefix_from, prefix_to)`` prefix tokens to themselves, a new prefix token to nothing (it
    is a parameter, no pixel reaches it)."""
    n = grid[0] * grid[1]
    out = torch.zeros(prefix_to + n, prefix_from + n, dtype=dtype, device=device)
    keep = min(prefix_from, prefix_to)
    idx = torch.arange(keep, device=device)
    out[idx, idx] = 1
    grid_idx = torch.arange(n, device=device)
    out[prefix_to + grid_idx, prefix_from + grid_idx] = 1
    return out.unsqueeze(0)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_window(conv: nn.Conv2d, grid: tuple[int, int] | None = None) -> ConvWindow:
    """The :class:`ConvWindow` of a torch ``nn.Conv2d`` (zero padding only; ``grid`` is not needed)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"rollout handles zero-padded convolutions only, got padding_mode="
                         f"{conv.padding_mode!r}")
    kernel, dilation = _pair(conv.kernel_size), _pair(conv.dilation)
    if conv.padding == "same":
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        padding = (0, 0) if conv.padding == "valid" else _pair(conv.padding)
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
    """``"mean"`` or ``"max"`` (how the heads are combined), through ``validation.check_choice``."""
    return check_choice("heads", heads, HEADS)
