"""One figure panel for a map of :func:`~unifiedctx.context.rollout_maps` or
:func:`~unifiedctx.context.erf_maps`: the map on the input grid, its colour scale stated by a
colorbar (with the uniform level 1 / (H_in W_in) marked on non-negative maps) and the query
token's centre marked."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_context_map(data: dict, ax=None, title: str | None = None, colorbar: bool = True):
    """Draw one plain-data map into ``ax`` (a new figure without one); returns the figure.

    The colours follow the library's one rule (:mod:`unifiedctx.viz.scales`): a non-negative map on
    the sequential colormap from 0 to ``data["vmax"]``, a signed one on the diverging colormap
    centred at 0; the colorbar marks ``data["uniform"]``, the level of a map equal everywhere
    (``1 / (H_in W_in)``), as "uniform 1/N".
    """
    from ..viz.scales import DIVERGING, QUERY_MARKER, SEQUENTIAL, Scale, add_colorbar

    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 2.6), layout="constrained")
    fig = ax.figure
    signed = data.get("signed", False)
    vmax = data["vmax"] if data["vmax"] > 0 else 1.0
    pixels = int(data["map"].size)
    uniform = None if signed or data["uniform"] > vmax else float(data["uniform"])
    scale = Scale(DIVERGING if signed else SEQUENTIAL, -vmax if signed else 0.0, vmax, signed, uniform,
                  pixels)
    ax.imshow(data["map"], cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax, interpolation="nearest")
    qy, qx = data["query_pixel"]
    ax.plot([qx], [qy], marker="+", color=QUERY_MARKER, markersize=9, markeredgewidth=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{data['kind']} {data['layer']}", fontsize=8)
    if colorbar:
        add_colorbar(fig, scale, ax, fraction=0.046, pad=0.03)
    return fig
