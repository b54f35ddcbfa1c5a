"""The explorer's data: its images, and its models' layer layouts and affinities, cached.

One forward per (model, image) records the input of every mixer (``mixer_inputs``); a
layer's affinities (what ``record_components`` gives) are computed from its input the first
time it is shown and kept (LRU, at most ``cache_mb``), so a big model never holds every
layer's N x N at once.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..models.recording import mixer_components, mixer_inputs, mixer_layers

#: The order components are offered in: the paper's mixed affinity first, then its parts.
COMPONENT_ORDER = ("mixed", "dynamic", "static")


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


def _eval_no_grad(model: nn.Module, fn, *args):
    """``fn(*args)`` with ``model`` in eval mode and no grad; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn(*args)
    finally:
        model.train(was_training)


class AffinityCache:
    """The affinities of named models on a list of images, computed when first asked for.

    ``models`` is ``{name: nn.Module}`` and ``images`` a list of ``(C, H, W)`` tensors (see
    :func:`as_images`). Layer affinities are kept least recently used first out, within
    ``cache_mb``; mixer inputs and layouts are kept for good.
    """

    def __init__(self, models: dict[str, nn.Module], images: list[torch.Tensor], cache_mb: float):
        self.models = models
        self.images = images
        self._cache: OrderedDict = OrderedDict()  # (model, image, layer) -> {component: array}
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)
        self._input_cache: dict = {}  # (model, image) -> {layer: mixer input}
        self._layouts: dict[str, OrderedDict] = {}  # model -> layer -> {"mixer", "kind", "grid", ...}

    def inputs(self, model_name: str, index: int) -> OrderedDict:
        """The input of every mixer of one model for one image (cached)."""

        key = (model_name, index)
        if key not in self._input_cache:
            model = self.models[model_name]
            x = self.images[index].unsqueeze(0)
            try:
                x = x.to(next(model.parameters()))
            except StopIteration:
                pass
            self._input_cache[key] = _eval_no_grad(model, mixer_inputs, model, x)
        return self._input_cache[key]

    def layer_data(self, model_name: str, index: int, layer: str) -> OrderedDict:
        """``{component: (M, N, N) float32 array}`` of one layer for one image (cached, LRU)."""
        key = (model_name, index, layer)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        model = self.models[model_name]
        mixer = self.layout(model_name, index)[layer]["mixer"]
        parts = _eval_no_grad(model, mixer_components, mixer, self.inputs(model_name, index)[layer])
        ordered = sorted(parts, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99)
        data = OrderedDict((c, parts[c][0].detach().float().cpu().numpy()) for c in ordered)
        self._cache[key] = data
        self._cache_bytes += sum(a.nbytes for a in data.values())
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= sum(a.nbytes for a in dropped.values())
        return data

    def layout(self, model_name: str, index: int) -> OrderedDict:
        """``layer -> {"mixer", "kind", "grid"}`` of a model, from one recorded forward.

        The forward is the one of image ``index`` (image 0 if ``index`` is out of range) the
        first time a model's layout is asked for; the layout is the same for every image.
        """
        if model_name not in self._layouts:

            mixers = mixer_layers(self.models[model_name])
            index = index if 0 <= index < len(self.images) else 0
            inputs = self.inputs(model_name, index)
            layout = OrderedDict(
                (layer, {"mixer": mixers[layer], "kind": mixers[layer].kind,
                         "grid": (int(inp.shape[-2]), int(inp.shape[-1]))})
                for layer, inp in inputs.items())
            if not layout:
                raise ValueError(f"model {model_name!r} has no affinity mixers (AffinityMixer) to explore")
            self._layouts[model_name] = layout
        return self._layouts[model_name]

    def info(self, model_name: str, index: int, layer: str) -> dict:
        """The layout of ``layer`` plus its ``components`` and their ``heads`` (computed once)."""
        info = self.layout(model_name, index)[layer]
        if "components" not in info:
            data = self.layer_data(model_name, index, layer)
            info["components"] = list(data)
            info["heads"] = {c: a.shape[0] for c, a in data.items()}
        return info


def default_layer(layout: OrderedDict) -> str:
    """The first layer of ``layout`` that has a mixed affinity, else its first layer."""
    for name, info in layout.items():
        if info["kind"] == "mixed":
            return name
    return next(iter(layout))
