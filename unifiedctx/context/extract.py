"""The :class:`~unifiedctx.context.steps.ContextStep` list of any model, read from one forward pass.

The steps come from the one reader's typed records
(:func:`unifiedctx.inspection.structure.read_records`), for unifiedctx's networks and foreign ones
alike:

* a token mixer (a unifiedctx mixer, asked for its own ``affinity(input)``; a layer ``inspect_model``
  views: ``nn.MultiheadAttention``, timm's attention, Mixer, Pooling, Swin, ConViT) is ``A x``;
* a convolution, a strided pooling or Swin's patch merging is its window (patch embeddings,
  downsampling, plain conv layers);
* a block that describes its residual branches (unifiedctx's ``Block``; timm's ViT, Mixer,
  MetaFormer, ConvNeXt, ResNet, Swin and ConViT blocks) makes each branch ``x + gamma * A x``, or
  ``shortcut(x) + gamma * branch(x)`` when the branch holds several maps or has a downsampling
  shortcut. A channel MLP mixes channels only: its branch is the identity and has no step.

Prefix tokens (class, distillation) are carried: a step's N counts them, and
:func:`~unifiedctx.context.rollout.compose` joins them where they enter the sequence.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..inspection.reader import check_model, forward_pass, untouched
from ..inspection.records import AffinityRecord, ResidualRecord, WindowRecord
from ..inspection.structure import read_records
from ..validation import check_finite, check_float_image, check_int
from .steps import ContextStep


def ModelState(model: nn.Module):  # noqa: N802  (kept: the old guard's name, now the one guard)
    """The one guard (:func:`unifiedctx.inspection.reader.untouched`): the model is left as it was."""
    return untouched(model)


def check_image(x, model: nn.Module) -> tuple[int, int]:
    """``x`` must be a float ``(B, C, H, W)`` tensor of the model's dtype; returns ``(H, W)``."""
    check_model(model)
    check_float_image("x", x)
    check_finite("x", x)
    param = next(model.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {param.dtype}: "
                        f"use x.to({param.dtype}) or model.to({x.dtype})")
    if callable(getattr(model, "check_input", None)):
        model.check_input(x)
    return tuple(x.shape[-2:])


def module_inputs(model: nn.Module, x: torch.Tensor,
                  modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The input each of ``modules`` received in one ``model(x)``; the model is left as it was."""
    wanted = {id(m) for m in modules.values()}
    with torch.no_grad():
        seen = forward_pass(model, x, lambda name, module: id(module) in wanted)
    names = {id(m): n for n, m in modules.items()}
    lookup = dict(model.named_modules())
    out = {}
    for name, call in seen.inputs.items():
        out[names[id(lookup[name])]] = next(iter(call.values()))
    return out


def step_of(record, residual: bool = False, scale: float = 1.0, name: str | None = None) -> ContextStep:
    """The :class:`ContextStep` of one record (:mod:`unifiedctx.inspection.records`)."""
    if isinstance(record, AffinityRecord):
        t = record.tokens
        return ContextStep(name or record.name, t.grid, t.grid, affinity=record.affinity, residual=residual,
                           scale=scale, prefix_in=t.prefix, prefix_out=t.prefix,
                           covers=() if name in (None, record.name) else (record.name,))
    if isinstance(record, WindowRecord):
        return ContextStep(name or record.name, record.tokens_in.grid, record.tokens_out.grid,
                           window=record.window, residual=residual, scale=scale,
                           covers=() if name in (None, record.name) else (record.name,))
    if isinstance(record, ResidualRecord):
        gamma = record.residual.gamma
        if len(record.inner) == 1 and not record.shortcut and not isinstance(record.inner[0], ResidualRecord):
            return step_of(record.inner[0], residual=True, scale=gamma, name=record.name)
        branch = tuple(step_of(r) for r in record.inner)
        shortcut = tuple(step_of(r) for r in record.shortcut)
        first, last = (shortcut or branch)[0], branch[-1]
        covers = tuple(n for s in branch + shortcut for n in s.names() if n != record.name)
        return ContextStep(record.name, first.grid_in, last.grid_out, residual=True, scale=gamma,
                           prefix_in=first.prefix_in, prefix_out=last.prefix_out, branch=branch,
                           shortcut=shortcut, covers=covers)
    raise TypeError(f"not a layer record: {type(record).__name__}")


def read_steps(model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None
               ) -> tuple[list[ContextStep], OrderedDict]:
    """``(steps, skipped)``: :func:`context_steps` and the layers the reader could not read, with why."""
    check_image(x, model)
    if prefix_tokens is not None:
        check_int("prefix_tokens", prefix_tokens, low=0)
    records, skipped = read_records(model, x, prefix_tokens)
    return [step_of(r) for r in records], skipped


def context_steps(model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None) -> list[ContextStep]:
    """The :class:`ContextStep` of every token map of ``model`` on input ``x``, in forward order.

    ``model`` is any network the reader covers (see the module docstring): unifiedctx's, a plain
    PyTorch stack, timm's ViT / DeiT, Mixer, PoolFormer, ConvNeXt, ResNet, Swin, ConViT. Affinities
    are those of the inputs the layers received in one ``model(x)``; ``prefix_tokens`` as in
    :func:`unifiedctx.inspect_model`.
    """
    return read_steps(model, x, prefix_tokens)[0]
