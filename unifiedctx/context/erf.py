"""The effective receptive field (Luo et al., 2016): the exact counterpart of rollout.

For the output ``y`` of one module at one token ``t``, summed over its channels,

    ERF_t[p] = sum_c | d (sum_k y[k, t]) / d x[c, p] |  /  Z        (H_in, W_in) per image

with ``Z`` making each map sum to 1 (a distribution over input pixels, like a rollout row).
It is computed by autograd through the real network: MLPs, norms and channel mixing included.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .extract import ModelState, check_image
from .rollout import query_index


class _Reached(Exception):
    """Stops the forward pass once the layer's output is captured."""


def find_module(model: nn.Module, layer, argument: str = "layer") -> nn.Module:
    """``model``'s submodule called ``layer``, or a ValueError listing close names."""
    if not isinstance(layer, str):
        raise TypeError(f"{argument} must be a module name (str), got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules:
        close = difflib.get_close_matches(layer, [n for n in modules if n], n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"{argument}={layer!r} is not a module of this model.{hint} "
                         f"(names as in model.named_modules())")
    return modules[layer]


def effective_receptive_field(model: nn.Module, x: torch.Tensor, layer: str, query=None) -> torch.Tensor:
    """``|d y_query / d x|`` by autograd: ``(B, H_in, W_in)``, each map normalised to sum 1.

    Args:
        model: any ``nn.Module`` taking ``x``.
        x: ``(B, C, H, W)`` float images.
        layer: a name in ``model.named_modules()``; ``y`` is that module's output, either an image
            ``(B, K, h, w)`` or tokens ``(B, n, K)``.
        query: the token of ``y``: ``(row, col)`` or a flat index on an image output, a token index
            on a token output; default the centre.

    The gradient of ``sum_k y[b, k, query]`` is taken w.r.t. ``x``, its absolute value summed over
    the input channels, and each image's map divided by its sum (all zeros stay zeros). The
    images of a batch are independent only in eval mode (BatchNorm in train mode couples them).
    The model's mode, parameters' ``requires_grad`` and ``.grad``, buffers (BatchNorm statistics)
    and the RNG state are left as they were; the forward pass stops at ``layer``.
    """
    return erf_on_grid(model, x, layer, query)[0]


def erf_on_grid(model: nn.Module, x: torch.Tensor, layer: str, query=None):
    """:func:`effective_receptive_field` with where it was taken: ``(field, output_grid, token)``;
    ``output_grid`` is ``(h, w)`` for an image output, ``(1, n)`` for tokens."""
    check_image(x, model)
    target = find_module(model, layer)
    captured = {}

    def hook(module, args, output):
        captured["y"] = output
        raise _Reached

    xr = x.detach().clone().requires_grad_(True)
    handle = target.register_forward_hook(hook)
    with ModelState(model), torch.enable_grad():
        try:
            model(xr)
        except _Reached:
            pass
        finally:
            handle.remove()
        if "y" not in captured:
            raise ValueError(f"layer={layer!r} did not run in model(x)")
        y = captured["y"]
        if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4):
            raise TypeError(f"layer {layer!r} must output an image (B, K, h, w) or tokens (B, n, K), "
                            f"got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        if y.dim() == 4:
            out_grid = tuple(y.shape[-2:])
            t = query_index(query, out_grid)
            picked = y.flatten(2)[:, :, t]
        else:
            n = y.shape[1]
            out_grid = (1, n)
            t = n // 2 if query is None else query
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n:
                raise ValueError(f"query must be a token index in [0, {n}) for the token output of "
                                 f"{layer!r}, got {query!r}")
            picked = y[:, t]
        (grad,) = torch.autograd.grad(picked.sum(), xr, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device), out_grid, t
    field = grad.detach().abs().sum(1)
    field = field / field.flatten(1).sum(-1).clamp_min(torch.finfo(field.dtype).tiny).view(-1, 1, 1)
    return field, out_grid, t
