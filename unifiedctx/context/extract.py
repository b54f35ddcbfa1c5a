"""The :class:`~unifiedctx.context.steps.ContextStep` list of a model, read from one forward pass.

Two kinds of model are read here:

* unifiedctx's ``ContextNet`` (every preset): per stage, the patch embedding's strided conv,
  then per block the positional depthwise conv (Container-Light: ``x + pos(x)``) and the mixer
  (``x + gamma * mixer(norm(x))``). The channel MLP is a residual too; it mixes channels only,
  so it contributes I and has no step. Norms and the position embedding are token-wise.
* a plain ``nn.Sequential`` of unifiedctx mixers and torch ``nn.Conv2d`` layers (and token-wise
  layers: activations, norms, dropout, identity), each a step ``A x`` with no residual.

Each mixer is asked for its own ``affinity(input)`` on the input it received; nothing here
looks inside a mixer.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..mixers import AffinityMixer
from ..models.layers import LayerNorm2d, LayerScale
from ..models.network import ContextNet
from .steps import ContextStep, window_step

TOKENWISE = (nn.Identity, nn.Dropout, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
             LayerNorm2d)


class ModelState:
    """Leaves a model as it was: buffers (BatchNorm statistics) and the RNG state are restored."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        self.rng = torch.random.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)
        torch.random.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        return False


def check_image(x, model: nn.Module) -> tuple[int, int]:
    """``x`` must be a float ``(B, C, H, W)`` tensor of the model's dtype; returns ``(H, W)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point image tensor, got dtype {x.dtype} "
                        f"(convert a uint8 image with x.float() / 255)")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    param = next(model.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {param.dtype}: "
                        f"use x.to({param.dtype}) or model.to({x.dtype})")
    if isinstance(model, ContextNet):
        model.check_input(x)
    return tuple(x.shape[-2:])


@torch.no_grad()
def module_inputs(model: nn.Module, x: torch.Tensor,
                  modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The input each of ``modules`` received in one ``model(x)``; the model is left as it was."""
    seen, handles = {}, []

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].detach()
        return hook

    with ModelState(model):
        try:
            for name, module in modules.items():
                handles.append(module.register_forward_pre_hook(keep(name)))
            model(x)
        finally:
            for handle in handles:
                handle.remove()
    return seen


def _plan_contextnet(model: ContextNet) -> list[tuple[str, str, nn.Module, float]]:
    """``(kind, name, module, scale)`` for every token map, in forward order."""
    names = {id(m): n for n, m in model.named_modules()}
    plan = []
    for stage in model.stages:
        plan.append(("embed", names[id(stage.embed.proj)], stage.embed.proj, 1.0))
        for block in stage.blocks:
            if block.pos is not None:
                plan.append(("pos", names[id(block.pos)], block.pos, 1.0))
            scale = block.scale1.gamma.detach().mean().item() if isinstance(block.scale1, LayerScale) else 1.0
            plan.append(("mixer", names[id(block.mixer)], block.mixer, scale))
    return plan


def _flatten(seq: nn.Sequential, prefix: str = ""):
    for name, child in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from _flatten(child, f"{full}.")
        else:
            yield full, child


def _plan_sequential(model: nn.Sequential) -> list[tuple[str, str, nn.Module, float]]:
    plan = []
    for name, child in _flatten(model):
        if isinstance(child, AffinityMixer):
            plan.append(("layer", name, child, 1.0))
        elif isinstance(child, nn.Conv2d):
            plan.append(("conv", name, child, 1.0))
        elif not (isinstance(child, TOKENWISE) or type(child).__module__ == "torch.nn.modules.activation"):
            raise TypeError(f"rollout cannot read layer {name!r} ({type(child).__name__}) of this "
                            f"nn.Sequential: it takes unifiedctx mixers, nn.Conv2d and token-wise "
                            f"layers (activations, norms, dropout, identity)")
    return plan


@torch.no_grad()
def context_steps(model: nn.Module, x: torch.Tensor) -> list[ContextStep]:
    """The :class:`ContextStep` of every token map of ``model`` on input ``x``, in forward order.

    ``model`` is a unifiedctx ``ContextNet`` or a plain ``nn.Sequential`` (see the module
    docstring). Affinities are those of the inputs the layers received in one ``model(x)``.
    """
    check_image(x, model)
    if isinstance(model, ContextNet):
        plan = _plan_contextnet(model)
    elif isinstance(model, nn.Sequential):
        plan = _plan_sequential(model)
    else:
        raise TypeError(f"rollout reads unifiedctx ContextNet models and nn.Sequential stacks, got "
                        f"{type(model).__name__}; for another model build its steps "
                        f"(unifiedctx.context.steps_from_affinities) and call rollout_steps")
    inputs = module_inputs(model, x, OrderedDict((name, module) for _, name, module, _ in plan))
    steps = []
    for kind, name, module, scale in plan:
        if name not in inputs:
            continue  # a layer the forward pass did not reach
        inp = inputs[name]
        grid = tuple(inp.shape[-2:])
        if kind in ("embed", "conv", "pos"):
            steps.append(window_step(name, module, grid, residual=kind == "pos"))
        else:
            steps.append(ContextStep(name, grid, grid, affinity=module.affinity(inp).detach(),
                                     residual=kind == "mixer", scale=scale))
    return steps
