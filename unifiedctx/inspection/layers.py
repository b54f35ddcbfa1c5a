"""Every layer's affinity on one input, whichever network it comes from: the records that the explorer, the
plots and ``record_affinities`` read. Every read leaves the model as it was.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

import torch
from torch import nn

from ..mixers import AffinityMixer
from ..mixers.base import DESCRIPTIONS
from ..validation import check_choice
from .reader import check_door, check_model, forward_pass, mixer_affinity, select_layers, untouched
from .windows import Windows, window_layout, window_places


def _check_model(model) -> None:
    check_model(model)


def mixer_layers(model: nn.Module) -> OrderedDict[str, AffinityMixer]:
    """Every mixer of ``model``, by its module name, in model order (``named_modules``)."""
    _check_model(model)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, AffinityMixer))


@torch.no_grad()
def mixer_inputs(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """The input ``(B, C, H, W)`` each mixer received during one forward pass ``model(x)``.

    Runs under ``torch.no_grad`` in the model's own train/eval mode, through the one reader
    (:func:`unifiedctx.inspection.reader.forward_pass`): modes, BatchNorm statistics,
    ``requires_grad`` and the global RNG are as they were after it, and the hooks are removed even
    when the forward fails.
    """
    layers = mixer_layers(model)
    seen = forward_pass(model, x, lambda name, module: name in layers)
    return OrderedDict((name, next(iter(seen.inputs[name].values())))
                       for name in layers if name in seen.inputs)


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


SOURCES = ("auto", "mixers", "inspect")


@dataclass
class LayerAffinity:
    """One layer's affinity on one input, whichever network it comes from.

    Read either from a unifiedctx mixer (through the contract: ``affinity(x)``, ``components(x)``,
    ``mixing_weights()``) or from the :class:`~unifiedctx.inspection.AffinityView` that
    :func:`unifiedctx.inspect_model` built for a layer unifiedctx did not build (a ``nn.Conv2d``,
    ``nn.MultiheadAttention``, a timm block). ``affinity`` and ``components`` are computed on first
    access and kept (a mixer's N x N only exists once somebody asks for it).

    Attributes:
        name: the module's name in ``model.named_modules()``.
        kind: ``"static"`` (independent of x: convolutions, pooling), ``"dynamic"`` (attention; a token
            MLP, whose affinity is input-gated) or ``"mixed"`` (a weighted sum of both).
        grid: ``(H, W)`` of the layer's tokens (Swin's window attention: its block's whole grid), or ``None``.
        module_type: the class that computed it (the view's ``module_type`` for inspected layers).
        source: ``"mixer"`` or ``"inspect"``.
        mixing_weights: the mixer's knobs as plain numbers (:func:`mixing_weights`), else ``None``.
        notes: what the view says about itself (inspected layers; see ``AffinityView.notes``).
        pixel_stride: input pixels per grid step ``(sy, sx)`` (image size / the layer's grid), when known.
        description: the affinity in words (a mixer's ``describe()``; for inspected layers
            :func:`describe_view`), e.g. ``"input-gated: ..."`` for a token MLP.
        head_unit: what one of the M affinities is: ``"head"`` or ``"channel"`` (or ``"shift"``).
        affinity: ``(B|1, M, N, N)`` on the token grid (inspected layers: prefix tokens and extra
            keys dropped, ``view.grid_affinity()``; Swin: the windows laid out on the whole grid, 0 between
            tokens of different windows, the cyclic shift undone).
        components: ``{kind: A}``, or ``{"dynamic", "static", "mixed"}`` for mixed layers, each
            ``(B|1, M_view, N, N)`` on the grid.
    """

    name: str
    kind: str
    grid: tuple[int, int] | None
    module_type: str
    source: str
    mixing_weights: dict | None
    notes: dict
    pixel_stride: tuple[float, float] | None
    description: str
    head_unit: str
    read_affinity: Callable[[], torch.Tensor] = field(repr=False)
    read_components: Callable[[], dict] = field(repr=False)

    @cached_property
    def affinity(self) -> torch.Tensor:
        return self.read_affinity()

    @cached_property
    def components(self) -> dict[str, torch.Tensor]:
        return self.read_components()


def _listed(reasons: dict, most: int = 12) -> str:
    items = [f"{name or '<model>'}: {why}" for name, why in list(reasons.items())[:most]]
    if len(reasons) > most:
        items.append(f"... and {len(reasons) - most} more")
    return "; ".join(items) if items else "no module ran"


def _mixer_records(model, x, select, max_tokens) -> tuple[list[LayerAffinity], dict]:
    mixers = mixer_layers(model)
    records, skipped = [], OrderedDict()
    for name, inp in mixer_inputs(model, x).items():
        mixer = mixers[name]
        if not select(name, mixer):
            continue
        grid = (int(inp.shape[-2]), int(inp.shape[-1]))
        if max_tokens is not None and grid[0] * grid[1] > max_tokens:
            skipped[name] = f"{grid[0] * grid[1]} tokens > max_tokens={max_tokens}"
            continue
        weights = mixer.mixing_weights()
        weights = None if weights is None else {k: _plain(v) for k, v in weights.items()}
        stride = (x.shape[-2] / grid[0], x.shape[-1] / grid[1])
        records.append(LayerAffinity(name, mixer.kind, grid, type(mixer).__name__, "mixer", weights, {},
                                     stride, mixer.describe(), mixer.head_unit,
                                     partial(mixer_affinity, mixer, inp),
                                     partial(mixer_components, mixer, inp)))
    return records, skipped


def _on_grid(view, a: torch.Tensor) -> torch.Tensor:
    p, n = view.prefix_tokens, a.shape[-2]
    return a[..., p:, p:n]


def _view_components(view) -> dict[str, torch.Tensor]:
    if view.components:
        return {kind: _on_grid(view, a) for kind, a in view.components.items()}
    return {view.kind: view.grid_affinity()}


#: Words for the views whose kind alone says too little: ``module_type -> (description, head unit)``.
VIEW_WORDS = {
    "Conv2d (depthwise)": ("static local: one kernel per channel, slid along", "channel"),
    "Conv2d (full, im2col)": ("static local: one shift matrix per kernel offset; the kernel mixes channels",
                              "shift"),
    "timm MixerBlock": ("input-gated: the token MLP's weights gated by its own activation, per channel",
                        "channel"),
}


def describe_view(view) -> tuple[str, str]:
    """``(description, head unit)`` of an inspected layer's :class:`~unifiedctx.inspection.AffinityView`:
    :data:`VIEW_WORDS` for the types that need more words than their kind, else the kind's default
    words (``mixers.base.DESCRIPTIONS``) with the layer's type, and ``"head"``."""
    if view.module_type in VIEW_WORDS:
        return VIEW_WORDS[view.module_type]
    words = DESCRIPTIONS.get(view.kind, view.kind)
    return (f"{words} ({view.module_type})" if view.module_type else words), "head"


def _windows_on_grid(model, name: str, view, image_grid) -> tuple | None:
    """``(grid, to_grid)`` for a view whose grid is one window (Swin's window attention): the
    block's whole token grid and the map that lays ``(B * nW, M, n, n)`` window affinities on it
    as ``(B, M, N, N)`` (0 between tokens of different windows, the cyclic shift undone); ``None``
    for any other view, or when the parent block does not say its window and shift."""
    if "layout" in view.notes:  # read at the call: the trace knows where each window's tokens sit
        grid = tuple(int(round(g / s)) for g, s in zip(image_grid, view.pixel_stride))
        return grid, view.notes["layout"].on_grid
    block = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
    if "windows" not in view.notes or not all(hasattr(block, a) for a in ("window_size", "shift_size")):
        return None
    grid = tuple(int(round(g / s)) for g, s in zip(image_grid, view.pixel_stride))
    window, shift = window_layout(block, grid)
    if grid[0] % window[0] or grid[1] % window[1]:
        return None
    count = (grid[0] // window[0]) * (grid[1] // window[1])
    return grid, Windows(*window_places(grid, window, shift), count).on_grid


def _inspected_record(model, name: str, view, image_grid, max_tokens) -> LayerAffinity | None:
    grid, affinity, components = view.grid, view.grid_affinity, partial(_view_components, view)
    notes = dict(view.notes)
    windows = _windows_on_grid(model, name, view, image_grid)
    if windows is not None:  # the one reader's rule: a layer's tokens are its block's whole grid
        grid, to_grid = windows
        if max_tokens is not None and grid[0] * grid[1] > max_tokens:
            return None
        affinity = lambda: to_grid(view.grid_affinity())  # noqa: E731
        components = lambda: {k: to_grid(a) for k, a in _view_components(view).items()}  # noqa: E731
        notes["windows"] = ("the windows laid out on the block's whole grid (0 between tokens of different "
                            "windows)")
        notes.pop("layout", None)
    return LayerAffinity(name, view.kind, grid, view.module_type, "inspect", None, notes, view.pixel_stride,
                         *describe_view(view), affinity, components)


def _inspected_records(model, x, layers, max_tokens, prefix_tokens) -> tuple[list[LayerAffinity], dict]:
    from .network import inspect_model

    with untouched(model):
        result = inspect_model(model, x, layers=layers, max_tokens=max_tokens, prefix_tokens=prefix_tokens)
    skipped = dict(result.skipped)
    records = []
    for name, view in result.items():
        record = _inspected_record(model, name, view, tuple(x.shape[-2:]), max_tokens)
        if record is None:
            skipped[name] = f"its block's whole grid has more tokens than max_tokens={max_tokens}"
        else:
            records.append(record)
    return records, skipped


def layer_affinities(model: nn.Module, x: torch.Tensor, layers=None, max_tokens: int | None = None,
                     prefix_tokens: int | None = None, source: str = "auto") -> list[LayerAffinity]:
    """The :class:`LayerAffinity` of every viewable layer of ``model`` for one forward pass ``model(x)``.

    The one reader behind :func:`record_affinities`, :func:`record_components`, the plots that take a
    model and the explorer. Where it reads from (``source``):

    * ``"auto"``: a model holding unifiedctx mixers (``AffinityMixer``) is read through them, exactly
      as unifiedctx reads its own networks (one record per mixer, other layers ignored); any other
      network (timm's, a user's own) through :func:`unifiedctx.inspect_model`.
    * ``"mixers"`` / ``"inspect"``: only that way (``"inspect"`` also views a unifiedctx model's
      positional convolutions: every layer ``inspect_model`` has a view of).

    Args:
        model: any ``nn.Module``; its mode is used as it is (``eval()`` it for exact views).
        x: its input ``(B, C, H, W)``.
        layers: ``None`` (all), module names / ``fnmatch`` patterns, or ``(name, module) -> bool``.
        max_tokens: layers with more tokens N are left out (their dense ``(M, N, N)`` would not fit).
        prefix_tokens: class / distillation tokens of token layers (see ``inspect_model``).

    Returns:
        the records in forward order. The model is left as it was (:func:`untouched`: modes,
        buffers, ``requires_grad``, the global RNG).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a bad option, or no layer with a view (the message lists what was skipped, and why).
    """
    check_door(model, x, max_tokens=max_tokens, prefix_tokens=prefix_tokens)
    check_choice("source", source, SOURCES)
    use_mixers = source == "mixers" or (source == "auto" and bool(mixer_layers(model)))
    if use_mixers:
        records, skipped = _mixer_records(model, x, select_layers(layers), max_tokens)
    else:
        records, skipped = _inspected_records(model, x, layers, max_tokens, prefix_tokens)
    if not records:
        how = "unifiedctx mixers" if use_mixers else "inspect_model"
        chosen = "" if layers is None else f", layers={layers!r}"
        raise ValueError(f"model {type(model).__name__} has no layer with an affinity view (read through "
                         f"{how}{chosen}); skipped: {_listed(skipped)}")
    return records


@torch.no_grad()
def record_affinities(model: nn.Module, x: torch.Tensor, max_tokens: int | None = None, layers=None,
                      prefix_tokens: int | None = None, source: str = "auto"
                      ) -> OrderedDict[str, torch.Tensor]:
    """Name -> the layer's affinity ``A`` of shape ``(B or 1, M, N, N)`` on its token grid, for any model.

    Row i of ``A[b, m]`` says how much token i of that layer takes from token j. For a unifiedctx
    mixer ``A = mixer.affinity(input)``, so ``mixer.project(A @ mixer.values(input))`` is exactly what
    the layer computed. For a layer unifiedctx did not build (any network without unifiedctx mixers:
    timm's zoo, a user's own ``nn.Conv2d`` / ``nn.MultiheadAttention`` blocks) ``A`` is
    ``inspect_model(model, x)[name].grid_affinity()``: the token-to-token block on the grid, with
    the class / distillation tokens (prefix) and extra keys (a bias key, ``bias_k``) **dropped**, so
    it is the full affinity only where the layer has neither. See :func:`layer_affinities` for
    ``max_tokens``, ``layers``, ``prefix_tokens`` and ``source``. The model is left as it was found
    (:func:`untouched`).
    """
    records = layer_affinities(model, x, layers, max_tokens, prefix_tokens, source)
    return OrderedDict((r.name, r.affinity) for r in records)


def record_components(model: nn.Module, x: torch.Tensor, max_tokens: int | None = None, layers=None,
                      prefix_tokens: int | None = None, source: str = "auto"
                      ) -> OrderedDict[str, dict[str, torch.Tensor]]:
    """Name -> affinities by part of every layer for ``model(x)``, any model.

    unifiedctx mixers: :func:`mixer_components`. Other layers: ``{kind: A}`` with ``kind`` known
    from the layer's family (convolutions and pooling ``"static"``, attention ``"dynamic"``, a token
    MLP ``"dynamic"``: input-gated), or ``{"dynamic", "static", "mixed"}`` for a mixed view (ConViT's
    GPSA); each ``(B|1, M_view, N, N)`` on the grid, prefix tokens and extra keys dropped (as in
    :func:`record_affinities`).
    """
    records = layer_affinities(model, x, layers, max_tokens, prefix_tokens, source)
    return OrderedDict((r.name, r.components) for r in records)


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


__all__ = ["LayerAffinity", "SOURCES", "VIEW_WORDS", "describe_view", "layer_affinities",
           "mixer_components", "mixer_inputs", "mixer_layers", "mixing_weights", "record_affinities",
           "record_components"]
