"""Where the tokens of a windowed attention sit on the grid, and the windows made of reshapes.

A windowed attention computes its affinity on ``B * nW`` windows of ``n`` tokens, ``(B * nW, M, n, n)``;
its tokens were cut out of the ``(H, W)`` grid by reshapes the reader cannot follow, so the block that runs
it says how (an adapter, only where a network needs one):

* Swin (timm, torchvision, Hugging Face): the block declares ``window_size`` and ``shift_size``; the grid is
  rolled by ``-shift`` and cut into ``wh x ww`` windows, row-major (:func:`window_places`);
* MaxViT (torchvision): ``PartitionAttentionLayer`` declares ``partition_type`` and ``p`` / ``g``: ``p x p``
  windows, or a grid partition whose windows are spread over the whole grid (:func:`grid_places`);
* a patch merging (timm, torchvision, Hugging Face Swin) gathers each 2 x 2 patch by slicing and reduces it
  with a linear map: a 2 x 2 stride-2 window (:func:`merging_window`).

:class:`Windows` lays the window affinities on the whole grid (0 between windows) or gives some of its rows,
and the rollout applies it window by window, never as the dense ``(N, N)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..mixers.base import AffinityMixer
from .records import ConvWindow
from .view import pair


def window_layout(module: nn.Module, grid) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(window, shift)`` of a windowed block on ``grid`` as Swin's three implementations run it: a window
    as large as the grid side becomes that side and its shift 0 (timm at build time, torchvision and Hugging
    Face at run time)."""
    window, shift = pair(plain_int(module.window_size)), pair(plain_int(module.shift_size))
    window = tuple(min(w, g) for w, g in zip(window, grid))
    shift = tuple(0 if w >= g else s for w, s, g in zip(window, shift, grid))
    return window, shift


def plain_int(v):
    if isinstance(v, torch.Tensor):
        return tuple(int(t) for t in v.reshape(-1)) if v.numel() > 1 else int(v)
    if isinstance(v, (list, tuple)):
        return tuple(int(t) for t in v)
    return int(v)


def window_places(grid, window, shift) -> tuple[torch.Tensor, torch.Tensor]:
    """``(window index, place in window)`` of every grid token ``(N,)`` after the cyclic shift: token
    ``(y, x)`` sits at ``((y - sy) mod H, (x - sx) mod W)``, in window ``(y' // wh, x' // ww)``."""
    (h, w), (wh, ww), (sy, sx) = tuple(grid), tuple(window), tuple(shift)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ((ys - sy) % h).reshape(-1), ((xs - sx) % w).reshape(-1)
    return (ys // wh) * (w // ww) + xs // ww, (ys % wh) * ww + xs % ww


def grid_places(grid, partition) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxViT's grid partition: token ``(y, x)`` of an ``(H, W)`` grid cut into ``p x p`` "grid windows" is
    in window ``(y mod (H/p), x mod (W/p))`` at place ``(y // (H/p), x // (W/p))``."""
    (h, w), (ph, pw) = tuple(grid), tuple(partition)
    gh, gw = h // ph, w // pw
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return (ys % gh) * gw + xs % gw, (ys // gh) * pw + xs // gw


@dataclass(frozen=True)
class Windows:
    """Where each grid token sits in a windowed attention's ``(B * nW, M, n, n)`` affinity."""

    window: torch.Tensor  # (N,) window index of each grid token
    place: torch.Tensor  # (N,) place inside its window
    count: int  # windows per image

    def on_grid(self, affinity: torch.Tensor) -> torch.Tensor:
        """The window affinities laid out on the whole grid, ``(B, M, N, N)`` (0 between windows)."""
        per_image = rearrange(affinity, "(b nw) m i j -> b nw m i j", nw=self.count)
        full = per_image[:, self.window[:, None], :, self.place[:, None], self.place[None, :]]  # (N, N, B, M)
        same = (self.window[:, None] == self.window[None, :]).to(affinity.dtype)
        return rearrange(full * same[:, :, None, None], "i j b m -> b m i j")

    def rows(self, affinity: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Rows ``queries`` of :meth:`on_grid` without building it: ``(B, M, len(queries), N)``."""
        per_image = rearrange(affinity, "(b nw) m i j -> b nw m i j", nw=self.count)
        w_q, p_q = self.window[queries], self.place[queries]
        picked = per_image[:, w_q[:, None], :, p_q[:, None], self.place[None, :]]  # (Q, N, B, M)
        same = (w_q[:, None] == self.window[None, :]).to(affinity.dtype)
        return rearrange(picked * same[:, :, None, None], "q n b m -> b m q n")


def find_ancestor(stack, test):
    for name, module, _ in reversed(stack):
        if test(module):
            return name, module
    return None


def is_maxvit_partition(module) -> bool:
    return hasattr(module, "partition_type") and hasattr(module, "p") and hasattr(module, "grid_size")


def is_windowed(module) -> bool:
    return hasattr(module, "window_size") and hasattr(module, "shift_size")


def is_patch_merging(module) -> bool:
    """A Swin-style patch merging: a class named ``...PatchMerging...`` (timm's and torchvision's
    ``PatchMerging``/``PatchMergingV2``, Hugging Face's ``SwinPatchMerging``, ``Swinv2PatchMerging`` and
    their copies) whose ``reduction`` is a linear map of the 4 gathered tokens' channels."""
    reduction = getattr(module, "reduction", None)
    return "PatchMerging" in type(module).__name__ and isinstance(reduction, nn.Linear) and \
        reduction.in_features % 4 == 0


def merging_window(module) -> ConvWindow:
    """A patch merging: a 2x2 stride-2 window whose kernel is the reduction's weight per place. timm
    reshapes to ``(dx, dy, c)``; torchvision and Hugging Face concatenate ``x[0::2, 0::2]``,
    ``x[1::2, 0::2]``, ``x[0::2, 1::2]``, ``x[1::2, 1::2]``: the same order."""
    weight = module.reduction.weight.detach()  # (out, 4 C)
    return ConvWindow(rearrange(weight, "o (dx dy c) -> o c dy dx", dx=2, dy=2), (2, 2), (0, 0), (1, 1))

def static_window(mixer: AffinityMixer) -> ConvWindow | None:
    """A static mixer's affinity as the window it is, through the contract: a ``kind == "static"``
    mixer whose ``static_kernels()`` ``(M, kh, kw)`` gives one kernel per head has
    ``affinity = local_affinity(static_kernels(), grid)``, the centred stride-1 window of those kernels
    (a depthwise convolution). None for every other mixer (their dense affinity is asked for)."""
    if mixer.kind != "static":
        return None
    kernels = mixer.static_kernels()
    if kernels is None or kernels.dim() != 3 or kernels.shape[0] != mixer.heads:
        return None
    kh, kw = kernels.shape[-2:]
    return ConvWindow(kernels.detach()[:, None], (1, 1), (kh // 2, kw // 2), (1, 1))


__all__ = ["find_ancestor", "grid_places", "is_maxvit_partition", "is_patch_merging", "is_windowed",
           "merging_window", "plain_int", "static_window", "window_layout", "window_places", "Windows"]
