"""Plots of the unified view: affinity matrices, query maps, distances, kernels, training curves.

Colours follow one rule, in :mod:`unifiedctx.viz.scales`: non-negative quantities on one
sequential colormap from 0, signed ones on one diverging colormap centred at 0, a colorbar (or a
stated shared scale) on every affinity map, the uniform level 1/N marked on softmax maps, and one
colour for the query marker everywhere (``QUERY_MARKER``).

Every plotting function returns the matplotlib ``Figure`` and draws into a given ``ax=`` /
``axes=`` when passed one. The numbers behind the figures come from plain functions that the
tests and widgets use too: :func:`query_maps`, :func:`affinity_distance`,
:func:`layer_distances`, :func:`static_kernels`, :func:`comparison_affinities`.

==============================  ================================================================
function                        figure
==============================  ================================================================
``plot_affinity_matrix``        the N x N matrix of one head, image rows marked
``plot_query_maps``             each head's row ``A[m, q, :]`` on the grid, over the image
``comparison_figure``           conv / attention / MLP-Mixer / Container for one image
``plot_affinity_distance``      mean affinity distance (input pixels) per layer and head
``plot_static_kernels``         learned depthwise kernels as k x k tiles
``plot_mixing_weights``         the mixing weights per layer (Container's alpha / beta), bars
``plot_mixing_history``         the mixing weights over training (lines)
``learning_curves``             a metric of several runs on one figure
==============================  ================================================================
"""

from __future__ import annotations

from .affinity import (
    comparison_affinities,
    comparison_figure,
    comparison_mixers,
    grid_features,
    plot_affinity_matrix,
    plot_query_maps,
    query_maps,
    upsample_maps,
)
from .curves import learning_curves, metric_label, plot_mixing_history, plot_mixing_weights
from .distance import (
    affinity_distance,
    layer_distances,
    model_distances,
    plot_affinity_distance,
    token_distances,
)
from .kernels import kernel_limits, plot_static_kernels, static_kernels
from .scales import DIVERGING, QUERY_MARKER, SEQUENTIAL, Scale, add_colorbar, maps_scale, scale_for

__all__ = [
    "DIVERGING", "QUERY_MARKER", "SEQUENTIAL", "add_colorbar", "affinity_distance", "comparison_affinities",
    "comparison_figure", "comparison_mixers", "grid_features", "kernel_limits", "layer_distances",
    "model_distances",
    "learning_curves", "maps_scale", "metric_label", "plot_affinity_distance", "plot_affinity_matrix",
    "plot_mixing_history", "plot_mixing_weights", "plot_query_maps", "plot_static_kernels",
    "query_maps", "Scale", "scale_for", "static_kernels", "token_distances",
    "upsample_maps",
]
