"""Context through depth: how far each token of a layer reaches back into the input image.

* :func:`rollout` composes every layer's affinity (each residual sum found in the forward as
  ``0.5 A + 0.5 I``, patch embeddings as their strided window) into one map from the input pixels to a
  layer's tokens (Abnar & Zuidema 2020, for every family, not attention only).
* :func:`effective_receptive_field` is the exact counterpart: ``|d y / d x|`` by autograd
  (Luo et al. 2016), for any model.
* :func:`rollout_maps` / :func:`erf_maps` give one query's map as plain numpy data for widgets;
  :func:`agreement` says how much two maps agree (rank correlation, top-pixel overlap);
  :func:`plot_context_map` draws one with its colour scale stated.

Every model is read as a context graph (:func:`context_graph`: token maps, and joins where paths meet in a
sum) from one forward pass; token mixing the reader cannot read is named and refused (``partial=True`` for
the map of what was read). Affinities from elsewhere plug in through :class:`ContextStep` lists
(:func:`steps_from_affinities`, then :func:`rollout_steps`).
"""

from .erf import effective_receptive_field
from .extract import ContextGraph, GraphNode, context_graph
from .maps import agreement, erf_maps, map_distance, rollout_maps, spearman, top_overlap
from .plot import plot_context_map
from .rollout import (
    Rollout,
    compose,
    compose_graph,
    context_distance,
    mean_distance,
    rollout,
    rollout_graph,
    rollout_steps,
)
from .steps import ContextStep, ConvWindow, steps_from_affinities

__all__ = [
    "ContextGraph", "ContextStep", "ConvWindow", "GraphNode", "Rollout", "agreement", "compose",
    "compose_graph",
    "context_distance", "context_graph", "rollout_graph",
    "effective_receptive_field", "erf_maps", "map_distance", "mean_distance", "plot_context_map", "rollout",
    "rollout_maps", "rollout_steps",
    "spearman", "steps_from_affinities", "top_overlap",
]
