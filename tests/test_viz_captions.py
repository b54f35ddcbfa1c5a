"""What the query-map figures write beside their panels: never over them, and never a wall of tiles.

The caption that explains the query marker is the figure's own x label, so a constrained layout makes
room for it; whatever the layout the figure was made with (its own, one the caller made with or without
``layout="constrained"``, ``tight_layout`` afterwards), the caption lies inside the figure and touches no
panel. "All heads" of a layer with many maps (MLP-Mixer's token MLP: one per channel) draws at most
``MAX_PANELS`` of them and says so.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from unifiedctx import viz  # noqa: E402
from unifiedctx.viz.affinity import MAX_PANELS  # noqa: E402

GRID = (6, 6)


def rows(heads: int, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(1, heads, 36, 36, generator=gen), -1)


def caption_hits(fig) -> list[str]:
    """The panels (visible axes, titles and labels included) that the marker caption overlaps, and
    ``"outside"`` when the caption leaves the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (caption,) = [t for t in fig.texts if t.get_gid() == "query-marker-caption"]
    box = caption.get_window_extent(renderer)
    hits = [ax.get_title() or str(i) for i, ax in enumerate(fig.axes)
            if ax.get_visible() and box.overlaps(ax.get_tightbbox(renderer))]
    if box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox.x1 or box.y1 > fig.bbox.y1:
        hits.append("outside")
    return hits


def own_figure():
    return viz.plot_query_maps(rows(8), GRID, (2, 3), image=torch.rand(24, 24), heads=[0, 2, 4, 6],
                               title="a title, as notebook 09 gives one")


def constrained_rows():
    fig, axes = plt.subplots(2, 4, figsize=(10, 5), layout="constrained")
    for row in axes:
        viz.plot_query_maps(rows(4), GRID, (1, 1), image=torch.rand(24, 24), axes=list(row), title="")
    fig.suptitle("rows of heads, as notebook 10 draws them")
    return fig


def plain_subplots():
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    viz.plot_query_maps(rows(2), GRID, (3, 3), heads=[0], axes=[axes[0]])
    viz.plot_query_maps(rows(2), GRID, (3, 3), heads=[0, 1], axes=axes[1:])
    return fig


def tight_afterwards():
    fig, axes = plt.subplots(2, 3, figsize=(11, 7))
    for col in range(3):
        viz.plot_affinity_matrix(rows(1), grid=GRID, ax=axes[0, col], colorbar=False)
        viz.plot_query_maps(rows(1), GRID, (3, 3), image=torch.rand(24, 24), axes=[axes[1, col]])
    with warnings.catch_warnings():  # matplotlib: the colorbars' axes are not tight_layout's own
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def comparison():
    return viz.comparison_figure(torch.rand(32, 32), grid=(8, 8))


@pytest.mark.parametrize("make", [own_figure, constrained_rows, plain_subplots, tight_afterwards, comparison])
def test_the_marker_caption_is_drawn_beside_the_panels_not_over_them(make):
    fig = make()
    try:
        assert caption_hits(fig) == []
    finally:
        plt.close(fig)


def test_a_figure_with_its_own_x_label_keeps_it():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    fig.supxlabel("the caller's own label")
    viz.plot_query_maps(rows(2), GRID, (3, 3), axes=axes)
    assert fig.get_supxlabel() == "the caller's own label"
    assert sum(t.get_gid() == "query-marker-caption" for t in fig.texts) == 1
    plt.close(fig)


def test_all_heads_of_a_layer_with_many_maps_are_at_most_max_panels_and_it_says_so():
    many = MAX_PANELS * 2
    fig = viz.plot_query_maps(rows(many), GRID, (2, 2))
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(shown) == MAX_PANELS
    assert f"of {many}" in fig.get_suptitle() and "heads=" in fig.get_suptitle()
    plt.close(fig)
    fig = viz.plot_query_maps(rows(many), GRID, (2, 2), heads=list(range(many)))   # asked for: all of them
    assert len([ax for ax in fig.axes if ax.get_visible() and ax.images]) == many
    assert "of" not in fig.get_suptitle()
    plt.close(fig)
    fig = viz.plot_query_maps(rows(MAX_PANELS), GRID, (2, 2))       # few enough: all of them, no note
    assert len([ax for ax in fig.axes if ax.get_visible() and ax.images]) == MAX_PANELS
    assert "heads=" not in fig.get_suptitle()
    plt.close(fig)
