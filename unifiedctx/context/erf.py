"""The effective receptive field (Luo et al., 2016): the exact counterpart of rollout.

For the output ``y`` of one module at one token ``t``, summed over its channels,

    ERF_t[p] = sum_c | d (sum_k y[k, t]) / d x[c, p] |  /  Z        (H_in, W_in) per image

with ``Z`` making each map sum to 1 (a distribution over input pixels, like a rollout row).
It is computed by autograd through the real network: MLPs, norms and channel mixing included.
"""

from __future__ import annotations

import torch
from torch import nn

from ..inspection.reader import forward_pass, untouched
from ..inspection.trace import prefix_candidates, tiling_grid
from ..validation import check_int, check_layer_name, check_query
from .extract import check_image


def find_module(model: nn.Module, layer, argument: str = "layer") -> nn.Module:
    """``model``'s submodule called ``layer``, or a ValueError listing close names."""
    check_layer_name(argument, layer, model)
    return dict(model.named_modules())[layer]


def split_call(model: nn.Module, layer, argument: str = "layer") -> tuple[str, int | None]:
    """``"name#k"`` -> ``("name", k)`` (call k of a module called several times), ``"name"`` ->
    ``("name", None)``;
    the module must exist."""
    if isinstance(layer, str) and "#" in layer:
        name, _, call = layer.rpartition("#")
        if call.isdigit() and name in dict(model.named_modules()):
            return name, int(call)
    find_module(model, layer, argument)
    return layer, None


def first_tensor(y):
    """A module's output as one tensor: itself, or the first tensor of a tuple or of a Hugging Face
    ``ModelOutput`` (Swin's stages return ``(hidden_states, ...)``)."""
    if isinstance(y, torch.Tensor):
        return y
    values = y.to_tuple() if callable(getattr(y, "to_tuple", None)) else y
    if isinstance(values, (tuple, list)):
        return next((v for v in values if isinstance(v, torch.Tensor)), y)
    return y


def output_tokens(y: torch.Tensor, image_size, prefix_candidates) -> tuple[torch.Tensor, tuple, int]:
    """A layer's output as ``(tokens (B, n, K), grid, prefix)``.

    ``(B, K, h, w)`` images (and timm's channels-last ``(B, h, w, K)``, as Swin's, recognised by
    the ``(h, w)`` that tiles the input) and ``(B, n, K)`` token sequences, whose grid and prefix
    tokens are found as ``inspect_model`` finds them (a sequence that is no grid: ``(1, n)``).
    """
    if y.dim() == 4:
        nchw, nhwc = tuple(y.shape[-2:]), tuple(y.shape[1:3])
        tiles = lambda grid: tiling_grid(grid[0] * grid[1], image_size) == grid
        if not tiles(nchw) and tiles(nhwc):
            return y.flatten(1, 2), nhwc, 0
        return y.flatten(2).transpose(1, 2), nchw, 0
    n = y.shape[1]
    for p in prefix_candidates:
        grid = tiling_grid(n - p, image_size)
        if grid is not None:
            return y, grid, p
    return y, (1, n), 0


def effective_receptive_field(model: nn.Module, x: torch.Tensor, layer: str, query=None,
                              prefix_tokens: int | None = None) -> torch.Tensor:
    """``|d y_query / d x|`` by autograd: ``(B, H_in, W_in)``, each map normalised to sum 1.

    Args:
        model: any ``nn.Module`` taking ``x`` (unifiedctx's, timm's, a plain stack).
        x: ``(B, C, H, W)`` float images.
        layer: a name in ``model.named_modules()``; ``y`` is that module's output: an image
            ``(B, K, h, w)`` (or channels-last ``(B, h, w, K)``, as timm's Swin) or tokens
            ``(B, n, K)`` (class / distillation tokens in front are found as ``inspect_model`` does); a tuple
            or a Hugging Face output gives its first tensor. A module called several times in one forward
            must be named with its call, ``"name#k"`` (k from 0), as the rollout names it.
        query: the token of ``y`` on its grid: ``(row, col)`` or a flat index, default the centre
            (:func:`unifiedctx.validation.check_query`); prefix tokens are not queried.
        prefix_tokens: the prefix tokens of a token output (default: found as ``inspect_model``).

    The gradient of ``sum_k y[b, query, k]`` is taken w.r.t. ``x``, its absolute value summed over
    the input channels, and each image's map divided by its sum (all zeros stay zeros). The
    images of a batch are independent only in eval mode (BatchNorm in train mode couples them).
    The model is left as it was (the one reader's guard: modes, ``requires_grad``, ``.grad``,
    buffers, RNG); the forward pass stops at a call named ``"name#k"``.
    """
    return erf_on_grid(model, x, layer, query, prefix_tokens)[0]


def erf_on_grid(model: nn.Module, x: torch.Tensor, layer: str, query=None, prefix_tokens: int | None = None):
    """:func:`effective_receptive_field` with where it was taken: ``(field, output_grid, token)``;
    ``token`` is the flat index on ``output_grid`` (prefix tokens not counted)."""
    check_image(x, model)
    name, call = split_call(model, layer)
    if prefix_tokens is not None:
        check_int("prefix_tokens", prefix_tokens, low=0)
    candidates = prefix_candidates(model, prefix_tokens)
    xr = x.detach().clone().requires_grad_(True)
    with untouched(model), torch.enable_grad():
        # a call named: stop once it has given its output; a plain name: the whole pass, to know it ran once
        seen = forward_pass(model, xr, lambda n, module: n == name, copy=False, guard=False, call=call or 0,
                            stop_at=name if call is not None else None)
        runs = seen.calls.get(name, 0)
        if call is None and runs > 1 and not seen.stopped:
            raise ValueError(f"layer={layer!r} runs {runs} times in model(x) (weight sharing, a loop): name "
                             f"the "
                             f"call, {', '.join(repr(f'{name}#{k}') for k in range(runs))}")
        if name not in seen.outputs:
            raise ValueError(f"layer={layer!r} did not run in model(x)" if not runs else
                             f"layer={layer!r}: {name!r} runs only {runs} time(s) in model(x)")
        y = first_tensor(seen.outputs[name])
        if not isinstance(y, torch.Tensor) or y.dim() not in (3, 4):
            raise TypeError(f"layer {layer!r} must output an image (B, K, h, w) or tokens (B, n, K), "
                            f"got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
        tokens, out_grid, prefix = output_tokens(y, tuple(x.shape[-2:]), candidates)
        t = check_query("query", query, out_grid)
        (grad,) = torch.autograd.grad(tokens[:, prefix + t].sum(), xr, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], *x.shape[-2:], dtype=x.dtype, device=x.device), out_grid, t
    field = grad.detach().abs().sum(1)
    field = field / field.flatten(1).sum(-1).clamp_min(torch.finfo(field.dtype).tiny).view(-1, 1, 1)
    return field, out_grid, t
