"""A training run's snapshots as the explorer's data: every stored epoch of every watched layer.

:class:`RunData` reads the run folders written by :mod:`unifiedctx.inspection.snapshots` (checked
entry by entry) and answers the explorer's questions as :class:`~.explorer_data.ExplorerData` does
for models -- its ``models`` (one per run), ``images`` (the probe images), ``catalogue``, ``info``,
``affinity`` and ``scale`` -- with one more field, the ``epoch``. Its colour scales:
``"fixed"`` (one for a layer component and image over every stored epoch: the scale that makes a
change visible, the default), ``"layer"`` (each epoch its own) and ``"map"`` (each map its own).
It holds affinities, not models, so it offers no through-depth view.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..inspection.snapshots import SnapshotRun, read_snapshots
from ..viz.scales import Scale, merge_scales, scale_for
from .explorer_data import COMPONENT_ORDER, LayerInfo
from .explorer_state import compact_epochs

#: How far a stored softmax row may sum from 1: float16 rounds each (non-negative) weight to a
#: relative 2**-12, so a row's sum moves by at most 2**-12; twice that, and float32's own error, leave room.
ROW_SUM_ATOL = 2.0 ** -10


class RunData:
    """The snapshots of one training run, or of several runs watched on the same probe images and
    epochs (``{name: run folder}``, to compare networks as they learn)."""

    scale_modes = ("fixed", "layer", "map")
    depth_modes = ("off",)
    no_depth_reason = ("a run's snapshots hold the affinities, not the models: through-depth maps need "
                       "the model (open its checkpoint with AffinityExplorer(model, images))")

    def __init__(self, runs: dict[str, SnapshotRun]):
        self.models: OrderedDict[str, SnapshotRun] = OrderedDict(runs)
        first_name, first = next(iter(runs.items()))
        for name, run in runs.items():
            if run.epochs != first.epochs:
                raise ValueError(f"runs compared in one explorer must hold the same epochs: {first_name!r} "
                                 f"has {compact_epochs(first.epochs)}, {name!r} has "
                                 f"{compact_epochs(run.epochs)}")
            if run.images.shape != first.images.shape or not torch.equal(run.images, first.images):
                raise ValueError(f"runs compared in one explorer must watch the same probe images: those "
                                 f"of {name!r} ({run.folder}) differ from those of {first_name!r} "
                                 f"({first.folder})")
        self.images = list(first.images)
        self.epochs = tuple(first.epochs)
        self._catalogues = {name: OrderedDict(
            (la.name, LayerInfo(la.kind, la.grid, OrderedDict(sorted(
                ((c, m) for c, m, _ in la.components),
                key=lambda cm: COMPONENT_ORDER.index(cm[0]) if cm[0] in COMPONENT_ORDER else 99)),
                la.description, la.head_unit)) for la in run.layers) for name, run in runs.items()}
        self._scales: dict = {}

    @classmethod
    def open(cls, path) -> RunData:
        """The snapshots of a run folder, or of ``{name: run folder}`` (checked: ``read_snapshots``)."""
        if isinstance(path, dict):
            if not path:
                raise ValueError("path must name at least one run folder, got an empty dict")
            for name in path:
                if not isinstance(name, str):
                    raise TypeError(f"the names of the runs must be strings, got {type(name).__name__} "
                                    f"{name!r}")
            return cls({name: read_snapshots(folder) for name, folder in path.items()})
        if not isinstance(path, (str, os.PathLike)) or isinstance(path, bool):
            raise TypeError(f"path must be a run folder (str or os.PathLike) or a dict {{name: run folder}}, "
                            f"got {type(path).__name__} {path!r}")
        run = read_snapshots(path)
        return cls({Path(path).expanduser().resolve().name or "run": run})

    def catalogue(self, model_name: str) -> OrderedDict:
        """``layer -> LayerInfo`` of a run's watched layers, in forward order."""
        return self._catalogues[model_name]

    def info(self, model_name: str, layer: str) -> LayerInfo:
        return self._catalogues[model_name][layer]

    def affinity(self, model_name: str, index: int, layer: str, component: str, epoch: int | None = None
                 ) -> np.ndarray:
        """Image ``index``'s ``(M, N, N)`` affinity of one layer component at ``epoch`` (float32,
        from the stored float16)."""
        if epoch not in self.epochs:
            raise ValueError(f"epoch must be one of the run's epochs ({compact_epochs(self.epochs)}), "
                             f"got {epoch!r}")
        return self.models[model_name].affinity(epoch, layer, component, index)

    def rows(self, model_name: str, index: int, layer: str, component: str, query, epoch: int | None = None
             ) -> np.ndarray:
        """Row ``query`` (``(row, col)``) of every head of one component at ``epoch``: ``(M, N)``."""
        w = self.info(model_name, layer).grid[1]
        return self.affinity(model_name, index, layer, component, epoch)[:, int(query[0]) * w + int(query[1])]

    def scale(self, model_name: str, index: int, layer: str, component: str,
              epoch: int | None = None) -> Scale:
        """The colour scale of one component at one epoch, shared by its heads and queries (cached)."""
        key = (model_name, index, layer, component, epoch)
        if key not in self._scales:
            self._scales[key] = scale_for(self.affinity(model_name, index, layer, component, epoch),
                                          atol=ROW_SUM_ATOL)
        return self._scales[key]

    def fixed_scale(self, model_name: str, index: int, layer: str, component: str) -> Scale:
        """The colour scale of one component over every stored epoch (those whose maps are finite):
        the scale of them all (:func:`~unifiedctx.viz.scales.merge_scales` of each epoch's), so the
        same colour is the same weight at every epoch (cached)."""
        key = (model_name, index, layer, component, "fixed")
        if key not in self._scales:
            finite = [e for e in self.epochs
                      if np.isfinite(self.affinity(model_name, index, layer, component, e)).all()]
            if not finite:
                raise ValueError(f"layer {layer!r} ({component}) of run {model_name!r} holds non-finite "
                                 "values at every epoch: there is no scale to fix")
            self._scales[key] = merge_scales(self.scale(model_name, index, layer, component, e)
                                             for e in finite)
        return self._scales[key]

    def depth(self, *args, **kwargs):
        raise ValueError(self.no_depth_reason)

    depth_rows = depth
