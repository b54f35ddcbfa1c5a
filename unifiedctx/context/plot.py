"""One figure panel for a map of :func:`~unifiedctx.context.rollout_maps` or
:func:`~unifiedctx.context.erf_maps`: the map on the input grid, its colour scale stated by a
colorbar (with the uniform level 1 / (H_in W_in) marked on non-negative maps) and the query
token's centre marked."""

from __future__ import annotations

import matplotlib.pyplot as plt


def plot_context_map(data: dict, ax=None, title: str | None = None, cmap: str | None = None,
                     colorbar: bool = True):
    """Draw one plain-data map into ``ax`` (a new figure without one); returns the figure.

    The colour range is ``data["vmin"]..data["vmax"]`` (0..max, or symmetric for signed maps);
    the colorbar carries a line at ``data["uniform"]`` (the level of a map equal everywhere).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 2.6), layout="constrained")
    fig = ax.figure
    signed = data.get("signed", False)
    vmax = data["vmax"] if data["vmax"] > 0 else 1.0
    image = ax.imshow(data["map"], cmap=cmap or ("RdBu_r" if signed else "viridis"),
                      vmin=-vmax if signed else 0.0, vmax=vmax, interpolation="nearest")
    qy, qx = data["query_pixel"]
    ax.plot([qx], [qy], marker="+", color="red", markersize=9, markeredgewidth=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{data['kind']} {data['layer']}", fontsize=8)
    if colorbar:
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=6)
        if not signed and data["uniform"] <= vmax:
            bar.ax.axhline(data["uniform"], color="white", linewidth=1.2)
    return fig
