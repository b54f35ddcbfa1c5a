"""Reading a model's affinities without touching it: every read leaves the model as it was.

Nothing here is active unless called: ``mixer_inputs`` registers temporary forward pre-hooks
(the public ``nn.Module`` API) for the length of one forward pass and always removes them, and
every other function asks each mixer, through the contract of
:class:`~unifiedctx.mixers.AffinityMixer`, for its own ``affinity(x)``, ``components(x)`` or
``mixing_weights()`` on the input it received. Training speed is therefore untouched.

:func:`untouched` is the one guard every read-only view uses: the train/eval mode of every
module, the buffers (BatchNorm's running statistics), ``requires_grad`` of every parameter and
the global random state (CPU and CUDA) are the same after the block as before it.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import nn

from ..mixers import AffinityMixer


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


@contextmanager
def untouched(model: nn.Module, *, eval_mode: bool = False):
    """Run a block that reads ``model`` and put back everything a forward pass could change.

    Saved and restored: each module's ``training`` flag, every buffer's values, every
    parameter's ``requires_grad``, and the global torch RNG (``torch.random.fork_rng`` over
    the CUDA devices the model lives on, so dropout in train mode draws from a copy).
    ``eval_mode=True`` also switches the model to eval mode inside the block.
    """
    _check_model(model)
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers())
                   if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda):
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


def mixer_layers(model: nn.Module) -> OrderedDict[str, AffinityMixer]:
    """Every mixer of ``model``, by its module name, in model order (``named_modules``)."""
    _check_model(model)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, AffinityMixer))


@torch.no_grad()
def mixer_inputs(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """The input ``(B, C, H, W)`` each mixer received during one forward pass ``model(x)``.

    Runs under ``torch.no_grad`` in the model's own train/eval mode, inside :func:`untouched`:
    modes, BatchNorm statistics, ``requires_grad`` and the global RNG are as they were after
    it. The pre-hooks are removed even when the forward fails.
    """
    layers = mixer_layers(model)
    seen: OrderedDict[str, torch.Tensor] = OrderedDict()
    handles = []

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].detach()
        return hook

    with untouched(model):
        try:
            for name, mixer in layers.items():
                handles.append(mixer.register_forward_pre_hook(keep(name)))
            model(x)
        finally:
            for handle in handles:
                handle.remove()
    return OrderedDict((name, seen[name]) for name in layers if name in seen)


@torch.no_grad()
def record_affinities(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Name -> ``mixer.affinity(input)`` of shape ``(B or 1, M, N, N)`` for every mixer layer.

    Row i of ``A[b, m]`` says how much token i of that layer takes from token j, so
    ``mixer.project(A @ mixer.values(input))`` is exactly what the layer computed. The model is
    left as it was found (:func:`untouched`).
    """
    layers = mixer_layers(model)
    inputs = mixer_inputs(model, x)
    with untouched(model):
        return OrderedDict((name, layers[name].affinity(inp)) for name, inp in inputs.items())


@torch.no_grad()
def mixer_components(mixer: AffinityMixer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One mixer's affinities by part for its input ``x``: the contract's ``components(x)``.

    ``{kind: affinity(x)}`` for most mixers; ``{"dynamic", "static", "mixed"}`` at attention-head
    resolution for mixed ones (container, gpsa); each ``(B|1, M_view, N, N)``.
    """
    if not isinstance(mixer, AffinityMixer):
        raise TypeError(f"mixer must be an AffinityMixer, got {type(mixer).__name__}")
    with untouched(mixer):
        return dict(mixer.components(x))


def record_components(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, dict[str, torch.Tensor]]:
    """Name -> affinities by part (:func:`mixer_components`) of every mixer layer for ``model(x)``."""
    layers = mixer_layers(model)
    return OrderedDict((name, mixer_components(layers[name], inp))
                       for name, inp in mixer_inputs(model, x).items())


def _plain(value: torch.Tensor):
    """A 0-d tensor as a float, any other as a (nested) list of floats."""
    value = value.detach().to("cpu", torch.float64)
    return value.item() if value.dim() == 0 else value.tolist()


@torch.no_grad()
def mixing_weights(model: nn.Module) -> OrderedDict[str, dict]:
    """Name -> the mixer's ``mixing_weights()`` as plain numbers, for every mixer that has a knob.

    Container: ``{"alpha": a, "beta": b}`` (``A = alpha * A_dynamic + beta * A_static``); GPSA:
    ``{"gate": [g_0, ..., g_{M-1}]}`` (per head). 0-d weights become floats, others lists.
    Mixers whose ``mixing_weights()`` is ``None`` are left out.
    """
    out = OrderedDict()
    for name, mixer in mixer_layers(model).items():
        weights = mixer.mixing_weights()
        if weights is not None:
            out[name] = {key: _plain(value) for key, value in weights.items()}
    return out
