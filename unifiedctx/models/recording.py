"""Reading a model's affinities without touching its training path.

Nothing here is active unless called: ``mixer_inputs`` registers temporary forward pre-hooks
(the public ``nn.Module`` API) for the length of one forward pass and always removes them, and
every other function asks each mixer for its own ``affinity(x)`` / ``components(x)`` /
``mixing_weights()`` on the input it received. Training speed is therefore untouched.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..mixers import AffinityMixer


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def mixer_layers(model: nn.Module) -> OrderedDict[str, AffinityMixer]:
    """Every mixer of ``model``, by its module name, in model order (``named_modules``)."""
    _check_model(model)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, AffinityMixer))


@torch.no_grad()
def mixer_inputs(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """The input ``(B, C, H, W)`` each mixer received during one forward pass ``model(x)``.

    Runs under ``torch.no_grad`` and leaves the train/eval mode as it is; buffers a forward in
    train mode would update (BatchNorm's running statistics) are put back, so recording leaves
    the model exactly as it found it. The pre-hooks are removed even when the forward fails.
    """
    layers = mixer_layers(model)
    seen: OrderedDict[str, torch.Tensor] = OrderedDict()
    handles = []
    buffers = [(b, b.clone()) for b in model.buffers()]

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].detach()
        return hook

    try:
        for name, mixer in layers.items():
            handles.append(mixer.register_forward_pre_hook(keep(name)))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for buffer, saved in buffers:
            buffer.copy_(saved)
    return OrderedDict((name, seen[name]) for name in layers if name in seen)


@torch.no_grad()
def record_affinities(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Name -> ``mixer.affinity(input)`` of shape ``(B or 1, M, N, N)`` for every mixer layer.

    Row i of ``A[b, m]`` says how much token i of that layer takes from token j, so
    ``mixer.project(A @ mixer.values(input))`` is exactly what the layer computed.
    """
    layers = mixer_layers(model)
    return OrderedDict((name, layers[name].affinity(inp)) for name, inp in mixer_inputs(model, x).items())


@torch.no_grad()
def mixer_components(mixer: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One mixer's affinities by part for its input ``x``: ``components(x)`` for mixers that have
    it (container, gpsa: ``{"static", "dynamic", "mixed"}`` at attention-head resolution),
    ``{mixer.kind: mixer.affinity(x)}`` for the others."""
    if hasattr(mixer, "components"):
        return dict(mixer.components(x))
    return {mixer.kind: mixer.affinity(x)}


def record_components(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, dict[str, torch.Tensor]]:
    """Name -> affinities by part (:func:`mixer_components`) of every mixer layer for ``model(x)``."""
    layers = mixer_layers(model)
    return OrderedDict((name, mixer_components(layers[name], inp))
                       for name, inp in mixer_inputs(model, x).items())


def mixing_weights(model: nn.Module) -> OrderedDict[str, dict[str, float]]:
    """Name -> ``{"alpha": float, "beta": float}`` for every Container mixer:
    ``A = alpha * A_dynamic + beta * A_static``."""
    out = OrderedDict()
    for name, mixer in mixer_layers(model).items():
        if hasattr(mixer, "mixing_weights"):
            alpha, beta = mixer.mixing_weights()
            out[name] = {"alpha": alpha.detach().item(), "beta": beta.detach().item()}
    return out
