"""The explorer's data: its images, and its models' layer catalogues and affinities, cached.

Any network: one forward per (model, image) reads its layers through
:func:`~unifiedctx.inspection.layers.layer_affinities` (unifiedctx mixers through their contract;
any other network, timm's or a user's own, through ``inspect_model``). A mixer's affinities
(``components(x)``) are computed from its recorded input the first time they are asked for and
kept (LRU, at most ``cache_mb``), so a big unifiedctx model never holds every layer's N x N at
once; an inspected network's views are built in that one forward (layers with more than
``max_tokens`` tokens are left out). Everything this module hands out is plain data: numpy arrays,
:class:`LayerInfo` records and :class:`~unifiedctx.viz.scales.Scale` objects. Reading leaves
every model as it was (``inspection.reader.untouched``: modes, statistics, RNG).

Through depth (:meth:`ExplorerData.depth`): one query's rollout up to a layer, or its effective
receptive field, as the plain dict of :func:`unifiedctx.context.rollout_maps` /
:func:`~unifiedctx.context.erf_maps` (``map`` ``(H_in, W_in)`` on the input pixels, summing to
1), computed when first asked for and cached per (model, image, layer, query, mode).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..context import erf_maps, rollout, rollout_maps
from ..inspection.layers import LayerAffinity, layer_affinities, mixer_layers, untouched
from ..viz.scales import Scale, scale_for

#: Layers of a network read through ``inspect_model`` with more tokens are left out of the explorer
#: (ConvNeXt-T's 56 x 56 stage would hold 96 x 3136 x 3136 numbers per layer); a unifiedctx model
#: shows every mixer, as always.
MAX_TOKENS = 1024

#: The order components are offered in: the paper's mixed affinity first, then its parts.
COMPONENT_ORDER = ("mixed", "dynamic", "static")
#: The through-depth views: none, the rollout up to the layer, the effective receptive field.
DEPTH_MODES = ("off", "rollout", "ERF")
#: The colour scales of the maps: one for every head and query of a layer component (for one image),
#: each map (one head's row for one query) its own, or (a training run's) one for the layer over every epoch.
SCALE_MODES = ("layer", "map", "fixed")


def as_images(images) -> list[torch.Tensor]:
    """``images`` (a tensor ``(B, C, H, W)`` or ``(C, H, W)``, or a sequence of ``(C, H, W)``)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
        out = list(images)
    elif isinstance(images, (list, tuple)):
        out = [torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im for im in images]
    else:
        raise TypeError(f"images must be a tensor (B, C, H, W) or a list of (C, H, W) tensors, "
                        f"got {type(images).__name__}")
    if not out:
        raise ValueError("images is empty: give at least one image")
    for i, im in enumerate(out):
        if im.dim() != 3:
            raise ValueError(f"images[{i}] must have shape (C, H, W), got {tuple(im.shape)}")
    return [im.float() for im in out]


@dataclass
class LayerInfo:
    """What the explorer shows of one layer: its mixer's ``kind``, its token ``grid``, once its
    affinities have been computed ``heads`` per component (in :data:`COMPONENT_ORDER`), and the
    mixer's own words for its affinity (``description``, from ``describe()``) and for one of its
    M affinities (``head_unit``: ``"head"`` or ``"channel"``)."""

    kind: str
    grid: tuple[int, int]
    heads: dict[str, int] = field(default_factory=dict)
    description: str = ""
    head_unit: str = "head"

    @property
    def components(self) -> list[str]:
        return list(self.heads)

    def image_independent(self, component: str) -> bool:
        """True when the component's affinity is the same for every image (a static one)."""
        return component == "static" or self.kind == "static"


class ExplorerData:
    """The affinities of named models on a list of images, computed when first asked for.

    ``models`` is ``{name: nn.Module}`` and ``images`` a list of ``(C, H, W)`` tensors (see
    :func:`as_images`). Layer affinities are kept least recently used first out, within
    ``cache_mb``; the per-layer records (a mixer's input, an inspected layer's view) and catalogues
    are kept for good. ``max_tokens`` (default :data:`MAX_TOKENS`) bounds the layers of networks
    without unifiedctx mixers.
    """

    #: A model is read as it is now: no epochs (a training run's snapshots have them: ``RunData``).
    epochs: tuple[int, ...] = ()
    #: The colour scales it offers (:data:`SCALE_MODES` but ``"fixed"``, which needs epochs).
    scale_modes = ("layer", "map")
    #: The through-depth views it offers (every one: it has the models).
    depth_modes = DEPTH_MODES

    def __init__(self, models: dict[str, nn.Module], images: list[torch.Tensor], cache_mb: float = 512,
                 max_tokens: int | None = MAX_TOKENS):
        self.models = models
        self.max_tokens = max_tokens
        self.images = images
        self._cache: OrderedDict = OrderedDict()  # (model, image, layer) -> {component: array}
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        self._records: dict = {}  # (model, image) -> {layer: LayerAffinity}
        self._catalogues: dict[str, OrderedDict] = {}  # model -> layer -> LayerInfo
        self._scales: dict = {}  # (model, image, layer, component) -> Scale
        self._depth: OrderedDict = OrderedDict()  # (model, image, layer, query, mode) -> dict
        self._depth_bytes, self._depth_limit = 0, max(1, self._cache_limit // 4)
        self._steps: dict = {}  # (model, image, layer, mode) -> how many layers the depth map composes

    def image_batch(self, model_name: str, index: int) -> torch.Tensor:
        """Image ``index`` as a batch of one ``(1, C, H, W)``, on the model's device and dtype."""
        x = self.images[index].unsqueeze(0)
        try:
            return x.to(next(self.models[model_name].parameters()))
        except StopIteration:
            return x

    def records(self, model_name: str, index: int) -> OrderedDict[str, LayerAffinity]:
        """``{layer: LayerAffinity}`` of one model for one image, in forward order (cached): the
        layers that have a token grid (:func:`~unifiedctx.inspection.layers.layer_affinities`)."""
        key = (model_name, index)
        if key not in self._records:
            model = self.models[model_name]
            limit = None if mixer_layers(model) else self.max_tokens  # unifiedctx's: every mixer
            with untouched(model, eval_mode=True):
                found = layer_affinities(model, self.image_batch(model_name, index), max_tokens=limit)
            self._records[key] = OrderedDict((r.name, r) for r in found if r.grid is not None)
        return self._records[key]

    def catalogue(self, model_name: str) -> OrderedDict:
        """``layer -> LayerInfo`` of a model (its viewable layers, in forward order), from one forward
        of image 0; the heads per component are filled in as layers are read (:meth:`info`)."""
        if model_name not in self._catalogues:
            try:
                records = self.records(model_name, 0)
            except ValueError as err:
                raise ValueError(f"model {model_name!r} has no layer to explore: {err}") from None
            if not records:
                raise ValueError(f"model {model_name!r} has no layer on a token grid to explore")
            self._catalogues[model_name] = OrderedDict(
                (layer, LayerInfo(r.kind, tuple(int(g) for g in r.grid), description=r.description,
                                  head_unit=r.head_unit))
                for layer, r in records.items())
        return self._catalogues[model_name]

    def info(self, model_name: str, layer: str) -> LayerInfo:
        """The :class:`LayerInfo` of one layer with its components and heads filled in."""
        info = self.catalogue(model_name)[layer]
        if not info.heads:
            data = self.affinities(model_name, 0, layer)
            info.heads.update({c: a.shape[0] for c, a in data.items()})
        return info

    def affinities(self, model_name: str, index: int, layer: str) -> OrderedDict:
        """``{component: (M, N, N) float32 array}`` of one layer for one image (cached, LRU)."""
        key = (model_name, index, layer)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        model = self.models[model_name]
        record = self.records(model_name, index)[layer]
        with untouched(model, eval_mode=True):
            parts = record.components
        ordered = sorted(parts, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99)
        data = OrderedDict((c, parts[c][0].detach().float().cpu().numpy()) for c in ordered)
        self._cache[key] = data
        self._cache_bytes += sum(a.nbytes for a in data.values())
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= sum(a.nbytes for a in dropped.values())
        return data

    def affinity(self, model_name: str, index: int, layer: str, component: str,
                 epoch: None = None) -> np.ndarray:
        """One component's ``(M, N, N)`` affinity (float32); ``epoch`` is for runs (``RunData``)."""
        _no_epoch(epoch)
        return self.affinities(model_name, index, layer)[component]

    def scale(self, model_name: str, index: int, layer: str, component: str, epoch: None = None) -> Scale:
        """The colour scale of one component, shared by all its heads and queries (cached)."""
        _no_epoch(epoch)
        key = (model_name, index, layer, component)
        if key not in self._scales:
            self._scales[key] = scale_for(self.affinity(model_name, index, layer, component))
        return self._scales[key]

    def depth(self, model_name: str, index: int, layer: str, query, mode: str) -> dict:
        """Token ``query`` of ``layer`` through depth, as plain data (cached, LRU).

        ``mode="rollout"``: :func:`~unifiedctx.context.rollout_maps` up to ``layer`` (every
        affinity before it composed, each residual sum as ``0.5 A + 0.5 I``; a network with token mixing
        the reader could not read is refused, naming the module); ``mode="ERF"``:
        :func:`~unifiedctx.context.erf_maps` of the layer's output (``|d y_query / d x|``, one
        backward). Either way ``map`` is ``(H_in, W_in)`` float64 on the input pixels, summing to 1.
        """
        if mode not in DEPTH_MODES[1:]:
            raise ValueError(f"mode must be one of {DEPTH_MODES[1:]}, got {mode!r}")
        query = (int(query[0]), int(query[1]))
        key = (model_name, index, layer, query, mode)
        if key in self._depth:
            self._depth.move_to_end(key)
            return self._depth[key]
        model, x = self.models[model_name], self.image_batch(model_name, index)
        with untouched(model, eval_mode=True):
            if mode == "rollout":
                data = rollout_maps(model, x, layer, query=query)
            else:
                data = erf_maps(model, x, layer, query=query)
        self._depth[key] = data
        self._depth_bytes += data["map"].nbytes
        while self._depth_bytes > self._depth_limit and len(self._depth) > 1:
            _, dropped = self._depth.popitem(last=False)
            self._depth_bytes -= dropped["map"].nbytes
        return data

    def depth_rows(self, model_name: str, index: int, layer: str, mode: str) -> np.ndarray:
        """Every query's through-depth map of ``layer``: ``(N, H_in, W_in)`` float64, row
        ``q = row * w + col``. The rollout is one :func:`~unifiedctx.context.rollout` (all
        tokens at once: the rows of ``rollout_maps``); the ERF is one backward per query.
        :meth:`depth_steps` then says how many layers the maps compose."""
        h, w = self.info(model_name, layer).grid
        if mode == "rollout":
            model = self.models[model_name]
            with untouched(model, eval_mode=True):
                r = rollout(model, self.image_batch(model_name, index), layer)
            self._steps[(model_name, index, layer, mode)] = len(r.layers)
            return r.maps[0].detach().double().cpu().numpy().reshape(h * w, *r.input_grid)
        self._steps[(model_name, index, layer, mode)] = 1
        return np.stack([self.depth(model_name, index, layer, divmod(q, w), mode)["map"]
                         for q in range(h * w)])


    def depth_steps(self, model_name: str, index: int, layer: str, mode: str) -> int:
        """How many layers the through-depth maps of :meth:`depth_rows` compose (1 for the ERF)."""
        key = (model_name, index, layer, mode)
        if key not in self._steps:
            self.depth_rows(model_name, index, layer, mode)
        return self._steps[key]


def _no_epoch(epoch) -> None:
    if epoch is not None:
        raise ValueError(f"epoch={epoch!r}: these models are read as they are now, there are no epochs "
                         "(a training run's snapshots have them: AffinityExplorer.from_run)")


def depth_scale(data: dict) -> Scale:
    """The colour scale of one through-depth map (the library's one rule,
    :func:`~unifiedctx.viz.scales.scale_for`): ``0`` to its peak, with the uniform level
    ``1 / (H_in W_in)`` marked (the map is a distribution over the input pixels)."""
    m = np.asarray(data["map"], dtype=np.float64)
    return scale_for(m, rows=m.reshape(1, -1))


def default_layer(catalogue: OrderedDict) -> str:
    """The first layer of ``catalogue`` that has a mixed affinity, else its first layer."""
    for name, info in catalogue.items():
        if info.kind == "mixed":
            return name
    return next(iter(catalogue))
