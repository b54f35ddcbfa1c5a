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
from .records import ConvWindow
from .torch_layers import kernel_rows
from .windows import Windows, static_window, window_layout, window_places


def _check_model(model) -> None:
    check_model(model)


def mixer_layers(model: nn.Module) -> OrderedDict[str, AffinityMixer]:
    """Every mixer of ``model``, by its module name, in model order (``named_modules``)."""
    _check_model(model)
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, AffinityMixer))


@torch.no_grad()
def mixer_inputs(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """The input ``(B, C, H, W)`` each mixer received during one forward pass ``model(x)``, in model order
    (``named_modules``); a mixer that ran more than once (weight sharing, a loop) gives one input per call,
    named ``name#k`` (k = 0, 1, ...), as the rollout names its steps.

    Runs under ``torch.no_grad`` in the model's own train/eval mode, through the one reader
    (:func:`unifiedctx.inspection.reader.forward_pass`): modes, BatchNorm statistics,
    ``requires_grad`` and the global RNG are as they were after it, and the hooks are removed even
    when the forward fails.
    """
    layers = mixer_layers(model)
    seen = forward_pass(model, x, lambda name, module: name in layers)
    inputs = OrderedDict()
    for name in layers:
        if name not in seen.inputs:
            continue
        calls = seen.calls[name]
        inputs[call_name(name, 0, calls)] = next(iter(seen.inputs[name].values()))
        for k in range(1, calls):  # a later call: one more pass that keeps that call's input
            later = forward_pass(model, x, lambda n, m, name=name: n == name, call=k)
            inputs[call_name(name, k, calls)] = next(iter(later.inputs[name].values()))
    return inputs


def call_name(name: str, call: int, calls: int) -> str:
    """``name`` for a module that ran once, ``name#call`` for call ``call`` of one that ran ``calls``
    times."""
    return name if calls <= 1 else f"{name}#{call}"


def module_of(name: str) -> str:
    """The module name of a layer name (``"blocks.0.attn#1"`` -> ``"blocks.0.attn"``)."""
    return name.rsplit("#", 1)[0] if "#" in name and name.rsplit("#", 1)[1].isdigit() else name


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
        name: the module's name in ``model.named_modules()``; ``name#k`` for call k of a module that ran
            more than once in the forward (weight sharing, a loop): every call is a layer of its own.
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
        window: a static layer whose affinity is a centred stride-1 window, one kernel per head (a depthwise
            conv, a static mixer's kernels): its :class:`~unifiedctx.inspection.records.ConvWindow` (weight
            ``(M, 1, kh, kw)``); row q is each head's kernel placed at q. None otherwise.
        windows: a windowed attention (Swin, MaxViT): ``(Windows, A_local (B * nW, M, n, n))``, its windows'
            own affinities and where their tokens sit on the grid (block-sparse). None otherwise.

    :meth:`rows` gives rows of the affinity, without the dense ``(N, N)`` for a window or windows.
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
    window: ConvWindow | None = field(default=None, repr=False)
    windows: tuple | None = field(default=None, repr=False)

    @cached_property
    def affinity(self) -> torch.Tensor:
        return self.read_affinity()

    @cached_property
    def components(self) -> dict[str, torch.Tensor]:
        return self.read_components()

    def rows(self, queries, component: str | None = None) -> torch.Tensor:
        """Rows ``queries`` (grid token indices ``row * W + col``) of one component's affinity (default: the
        layer's ``kind``), ``(B|1, M, Q, N)``: ``components[component][..., queries, :]``, computed without
        the dense ``(N, N)`` for a window (each head's kernel placed at each query, off-grid taps dropped as
        zero padding drops them) and for windowed attention (each query's row of its own window, 0
        elsewhere)."""
        component = self.kind if component is None else component
        q = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
        if component == self.kind and self.window is not None:
            return kernel_rows(self.window.weight[:, 0], self.grid, self.window.dilation, q)
        if component == self.kind and self.windows is not None:
            layout, local = self.windows
            return layout.rows(local, q)
        return self.components[component][..., q, :]


def _listed(reasons: dict, most: int = 12) -> str:
    items = [f"{name or '<model>'}: {why}" for name, why in list(reasons.items())[:most]]
    if len(reasons) > most:
        items.append(f"... and {len(reasons) - most} more")
    return "; ".join(items) if items else "no module ran"


def _mixer_records(model, x, select, max_tokens) -> tuple[list[LayerAffinity], dict]:
    mixers = mixer_layers(model)
    records, skipped = [], OrderedDict()
    for name, inp in mixer_inputs(model, x).items():
        mixer = mixers[module_of(name)]
        if not select(module_of(name), mixer):
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
                                     partial(mixer_components, mixer, inp), window=static_window(mixer)))
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
    "Conv2d (grouped, im2col)": ("static local: one shift matrix per kernel offset; the kernel mixes the "
                                 "channels of each group", "shift"),
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
    """``(grid, Windows)`` for a view whose grid is one window (Swin's window attention): the block's whole
    token grid and where each of its tokens sits in the ``(B * nW, M, n, n)`` window affinities (the cyclic
    shift undone); ``None`` for any other view, or when the parent block does not say its window and shift."""
    if "layout" in view.notes:  # read at the call: the trace knows where each window's tokens sit
        grid = tuple(int(round(g / s)) for g, s in zip(image_grid, view.pixel_stride))
        return grid, view.notes["layout"]
    module = module_of(name)
    block = model.get_submodule(module.rsplit(".", 1)[0]) if "." in module else None
    if "windows" not in view.notes or not all(hasattr(block, a) for a in ("window_size", "shift_size")):
        return None
    grid = tuple(int(round(g / s)) for g, s in zip(image_grid, view.pixel_stride))
    window, shift = window_layout(block, grid)
    if grid[0] % window[0] or grid[1] % window[1]:
        return None
    count = (grid[0] // window[0]) * (grid[1] // window[1])
    return grid, Windows(*window_places(grid, window, shift), count)


def _inspected_record(model, name: str, view, image_grid, max_tokens) -> LayerAffinity | None:
    grid, affinity, components = view.grid, view.grid_affinity, partial(_view_components, view)
    notes, windows = dict(view.notes), None
    found = _windows_on_grid(model, name, view, image_grid)
    if found is not None:  # the one reader's rule: a layer's tokens are its block's whole grid
        grid, layout = found
        if max_tokens is not None and grid[0] * grid[1] > max_tokens:
            return None
        affinity = lambda: layout.on_grid(view.grid_affinity())  # noqa: E731
        components = lambda: {k: layout.on_grid(a) for k, a in _view_components(view).items()}  # noqa: E731
        windows = None if view.components else (layout, view.grid_affinity())
        notes["windows"] = ("the windows laid out on the block's whole grid (0 between tokens of different "
                            "windows)")
        notes.pop("layout", None)
    return LayerAffinity(name, view.kind, grid, view.module_type, "inspect", None, notes, view.pixel_stride,
                         *describe_view(view), affinity, components, window=view.window, windows=windows)


def _inspected_records(model, x, layers, max_tokens, prefix_tokens) -> tuple[list[LayerAffinity], dict]:
    from .network import inspect_model

    with untouched(model):
        result = inspect_model(model, x, layers=layers, max_tokens=max_tokens, prefix_tokens=prefix_tokens)
    skipped = dict(result.skipped)
    records = []
    later = _LaterCalls(model, x, prefix_tokens, max_tokens)
    first_call = {name: i for i, name in enumerate(result.calls)}  # in the order modules first ran
    for name, view in sorted(result.items(), key=lambda item: first_call.get(item[0], len(first_call))):
        calls = result.calls.get(name, 1)
        views = [view] + [later.view(name, view, k) for k in range(1, calls)]
        for k, one in enumerate(views):
            here = call_name(name, k, calls)
            if one is None:
                skipped[here] = f"call {k} of {calls} could not be read again"
                continue
            if calls > 1:
                one.notes.pop("calls", None)
                one.notes["call"] = f"call {k} of the {calls} calls of {name} in one forward"
            record = _inspected_record(model, here, one, tuple(x.shape[-2:]), max_tokens)
            if record is None:
                skipped[here] = f"its block's whole grid has more tokens than max_tokens={max_tokens}"
            else:
                records.append(record)
    return records, skipped


class _LaterCalls:
    """The views of later calls of a module that ran more than once: a family's view from the arguments of
    that call (one more hooked pass keeps them), an attention read at its call from the trace's k-th call of
    that module (one more watched pass, shared by every such module)."""

    def __init__(self, model, x, prefix_tokens, max_tokens):
        self.model, self.x, self.prefix_tokens, self.max_tokens = model, x, prefix_tokens, max_tokens
        self.found = None

    def view(self, name: str, first, k: int):
        from .families import NoView, family_of
        from .network import attention_view, view_of_call
        from .trace import prefix_candidates, trace

        module = self.model.get_submodule(name) if name else self.model
        if "read at" in first.notes:
            if self.found is None:
                self.found = trace(self.model, self.x, self.prefix_tokens, keep_values=True)
            entries = [e for e in self.found.attention
                       if e.module == name and e.call is not None and e.index == 0]
            return attention_view(entries[k], self.x, first.module_type) if k < len(entries) else None
        family = family_of(module)
        seen = forward_pass(self.model, self.x, lambda n, m: n == name, call=k)
        if family is None or name not in seen.inputs:
            return None
        candidates = prefix_candidates(self.model, self.prefix_tokens)
        try:
            view = view_of_call(family, module, seen.inputs[name], tuple(self.x.shape[-2:]), self.x.shape[0],
                                candidates, self.max_tokens)
        except NoView:
            return None
        return view


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


__all__ = ["LayerAffinity", "SOURCES", "VIEW_WORDS", "call_name", "describe_view", "layer_affinities",
           "mixer_components", "mixer_inputs", "mixer_layers", "mixing_weights", "module_of",
           "record_affinities",
           "record_components"]
