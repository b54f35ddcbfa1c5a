"""The one hook-and-guard path every reader of a network goes through.

Everything that reads a model's layers (``record_affinities`` and ``layer_affinities``,
``inspect_model``, ``model_distances``, the explorer, ``rollout`` and the ERF) runs the model once
through :func:`forward_pass`, inside :func:`untouched`:

* :func:`untouched` saves and restores what a forward pass could change: every module's
  ``training`` flag, every buffer (BatchNorm statistics), every parameter's ``requires_grad`` and
  the global RNG (CPU and the model's CUDA devices, ``torch.random.fork_rng``);
* :func:`forward_pass` registers temporary hooks on every module (the public ``nn.Module`` API)
  for one forward pass ``model(x)`` and always removes them, even when the forward fails. It
  records the order in which modules are first called, how often, the shape of each one's first
  input, and, for the modules asked for, the arguments and the output of their first call.

Nothing is left behind: no hook, no changed flag, no changed statistic, no drawn random number.
"""

from __future__ import annotations

import fnmatch
import inspect as pyinspect
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from ..mixers.base import AffinityMixer
from ..validation import check_finite, check_float_image, check_int, check_optional_positive_int


def check_model(model, name: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module``, else a ``TypeError`` naming what it got."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__} {model!r:.60}")
    return model


def check_door(model, x, *, max_tokens=None, prefix_tokens=None) -> tuple[int, int]:
    """The checks every reader does at its door, through :mod:`unifiedctx.validation`: ``model`` an
    ``nn.Module``; ``x`` a finite floating-point image batch ``(B, C, H, W)`` of the model's dtype;
    ``max_tokens`` None or a positive int; ``prefix_tokens`` None or an int >= 0. Returns ``(H, W)``."""
    check_model(model)
    check_float_image("x", x, like=model)
    check_finite("x", x)
    check_optional_positive_int("max_tokens", max_tokens)
    if prefix_tokens is not None:
        check_int("prefix_tokens", prefix_tokens, low=0)
    return (int(x.shape[-2]), int(x.shape[-1]))


def _cuda_devices(model: nn.Module, *tensors) -> list[int]:
    found = (*model.parameters(), *model.buffers(), *tensors)
    return sorted({t.device.index or 0 for t in found if isinstance(t, torch.Tensor) and t.is_cuda})


@contextmanager
def untouched(model: nn.Module, *, eval_mode: bool = False):
    """Run a block that reads ``model`` and put back everything a forward pass could change.

    Saved and restored: each module's ``training`` flag, every buffer's values, every
    parameter's ``requires_grad``, and the global torch RNG (``torch.random.fork_rng`` over
    the CUDA devices the model lives on, so dropout in train mode draws from a copy).
    ``eval_mode=True`` also switches the model to eval mode inside the block.
    """
    check_model(model)
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            if eval_mode:
                model.eval()
            yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in grads:
            param.requires_grad_(flag)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def select_layers(layers) -> Callable[[str, nn.Module], bool]:
    """``layers`` as a predicate ``(name, module) -> bool``: ``None`` (every module), a callable, or
    module names / ``fnmatch`` patterns (``"blocks.*.attn"``)."""
    if layers is None:
        return lambda name, module: True
    if callable(layers):
        return layers
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        layers = [layers]
    patterns = list(layers)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError("layers must be None, a callable (name, module) -> bool, or module names / "
                        f"fnmatch patterns, got {layers!r}")
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def copied(value, memo=None):
    """Tensors (also inside a tuple, list or dict) detached and cloned, one copy per tensor so that
    ``attn(x, x, x)`` still gets one tensor three times; anything else as it is."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.detach().clone()
        return memo[id(value)]
    if isinstance(value, (tuple, list)):
        return type(value)(copied(v, memo) for v in value)
    if isinstance(value, dict):
        return {k: copied(v, memo) for k, v in value.items()}
    return value


def bound_call(module: nn.Module, args, kwargs) -> dict:
    """``{parameter name: value}`` of one call ``module(*args, **kwargs)`` (``arg0``... when the
    signature cannot be bound)."""
    try:
        bound = pyinspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    return dict(bound.arguments)


class _Reached(Exception):
    """Stops the forward pass once the module asked for has given its output."""


@dataclass
class ForwardPass:
    """What one hooked forward pass saw.

    Attributes:
        order: module names in the order they were first called (``""`` is the model).
        calls: ``{name: how many times it was called}``.
        shapes: ``{name: shape of its first positional input}`` (tensors only).
        inputs: ``{name: {parameter: value}}`` of the first call of each kept module.
        outputs: ``{name: output}`` of the first call of each kept module.
        stopped: the pass was cut short at ``stop_at``.
    """

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)
    inputs: OrderedDict = field(default_factory=OrderedDict)
    outputs: OrderedDict = field(default_factory=OrderedDict)
    stopped: bool = False


def forward_pass(model: nn.Module, x: torch.Tensor, keep: Callable[[str, nn.Module], bool] | None = None,
                 *, copy: bool = True, stop_at: str | None = None, guard: bool = True, call: int = 0,
                 watcher=None) -> ForwardPass:
    """Run ``model(x)`` once with temporary hooks on every module (see the module docstring).

    Args:
        model: any ``nn.Module``; run in its own train/eval mode inside :func:`untouched`.
        x: its input.
        keep: ``(name, module) -> bool``: the modules whose first call (arguments, output) is kept.
        copy: keep detached clones (a later in-place layer cannot change them); ``False`` keeps the
            tensors themselves, with their autograd graph (the ERF differentiates through them).
        stop_at: a kept module's name: the pass stops as soon as it has given its output.
        guard: run inside :func:`untouched`; ``False`` when the caller holds the guard itself (to
            differentiate through the pass before the buffers are put back, as the ERF does).
        call: which call of each kept module is kept (0: the first; a module called several times in one
            forward, by weight sharing or a loop, has one output per call).
        watcher: a :class:`~unifiedctx.inspection.trace.Watcher` (a ``TorchFunctionMode``) that sees every
            torch call of the pass and is told when each module call starts and ends; it always exits.

    Returns:
        a :class:`ForwardPass`. The hooks are removed and the model is as it was, even on error.
    """
    keep = keep or (lambda name, module: False)
    seen = ForwardPass()
    modules = list(model.named_modules())
    handles = []

    def before(name, kept):
        def hook(module, args, kwargs):
            if name not in seen.calls:
                seen.order.append(name)
                if args and isinstance(args[0], torch.Tensor):
                    seen.shapes[name] = tuple(args[0].shape)
            if kept and seen.calls.get(name, 0) == call:
                memo = {}
                take = (lambda v: copied(v, memo)) if copy else (lambda v: v)
                seen.inputs[name] = bound_call(module, take(args), take(kwargs))
            seen.calls[name] = seen.calls.get(name, 0) + 1
            if watcher is not None:
                watcher.enter(name, module, args, kwargs)
        return hook

    def after(name, kept):
        def hook(module, args, kwargs, output):
            if watcher is not None:
                watcher.leave(name, module, args, kwargs, output)
            if kept and name not in seen.outputs and seen.calls.get(name, 0) == call + 1:
                seen.outputs[name] = copied(output) if copy else output
                if name == stop_at:
                    raise _Reached
        return hook

    with untouched(model) if guard else nullcontext(), torch.random.fork_rng(devices=_cuda_devices(model, x)):
        try:
            for name, module in modules:
                kept = bool(keep(name, module))
                handles.append(module.register_forward_pre_hook(before(name, kept), with_kwargs=True))
                if kept or watcher is not None:
                    handles.append(module.register_forward_hook(after(name, kept), with_kwargs=True,
                                                                always_call=watcher is not None))
            try:
                with watcher if watcher is not None else nullcontext():
                    model(x)
            except _Reached:
                seen.stopped = True
        finally:
            for handle in handles:
                handle.remove()
    return seen


@torch.no_grad()
def mixer_affinity(mixer: AffinityMixer, x: torch.Tensor) -> torch.Tensor:
    """``mixer.affinity(x)``, asked through the contract inside the guard: ``(B|1, M, N, N)``."""
    with untouched(mixer):
        return mixer.affinity(x).detach()


__all__ = ["bound_call", "check_door", "check_model", "copied", "forward_pass", "ForwardPass",
           "mixer_affinity", "select_layers", "untouched"]
