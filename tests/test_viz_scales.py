"""The colour rule and the labels, checked on the figures the plot functions return."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import build  # noqa: E402
from torch import nn  # noqa: E402

from unifiedctx import viz  # noqa: E402
from unifiedctx.viz.scales import DIVERGING, SEQUENTIAL, maps_scale, scale_for  # noqa: E402

pytestmark = pytest.mark.usefixtures("close_figures")


def softmax_affinity(m=2, grid=(3, 4), seed=0, sharp=1.0):
    n = grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    return (sharp * torch.randn(1, m, n, n, generator=gen, dtype=torch.float64)).softmax(-1)


def colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def tick_texts(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def small_text(fig, minimum=8):
    """Every visible tick label and text of ``fig`` smaller than ``minimum`` points."""
    fig.canvas.draw()
    found = []
    for ax in fig.axes:
        for t in [*ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]:
            if t.get_visible() and t.get_text() and t.get_fontsize() < minimum:
                found.append((t.get_text(), t.get_fontsize()))
    found += [(t.get_text(), t.get_fontsize()) for t in fig.texts if t.get_fontsize() < minimum]
    return found


def test_scale_rule():
    a = softmax_affinity().numpy()
    s = scale_for(a)
    assert (s.cmap, s.vmin, s.signed) == (SEQUENTIAL, 0.0, False)
    assert s.vmax == a.max() and s.uniform == pytest.approx(1 / 12) and s.keys == 12
    signed = scale_for(a - a.mean())
    assert signed.cmap == DIVERGING and signed.vmin == -signed.vmax == -np.abs(a - a.mean()).max()
    assert signed.uniform is None
    pooled = scale_for(np.full((4, 4), 0.25))  # pooling rows: uniform over their window, sum 1
    assert pooled.uniform == 0.25 and pooled.vmin == 0
    assert scale_for(np.array([[0.2, 0.3]])).uniform is None  # non-negative, not a distribution
    assert "uniform 1/12" in s.describe() and "centred at 0" in signed.describe()


def test_matrix_colorbar_marks_the_uniform_level():
    a = softmax_affinity()
    fig = viz.plot_affinity_matrix(a, grid=(3, 4))
    (bar,) = colorbars(fig)
    assert "uniform 1/12" in tick_texts(bar)
    assert any(np.allclose(line.get_ydata(), 1 / 12) for line in bar.lines)
    assert fig.axes[0].images[0].get_clim() == (0.0, a[0, 0].max().item())
    signed = viz.plot_affinity_matrix(a - 1 / 12, grid=(3, 4))
    assert not any("uniform" in t for t in tick_texts(colorbars(signed)[0]))
    assert small_text(fig) == [] and small_text(signed) == []


def test_query_map_heads_share_one_scale_and_state_it():
    """No per-head rescaling: a sharp head and a flat head on one colour range, one colorbar."""
    a = torch.cat([softmax_affinity(1, sharp=4.0), softmax_affinity(1, seed=1, sharp=0.1)], dim=1)
    fig = viz.plot_query_maps(a, (3, 4), (1, 1), image=torch.rand(1, 12, 16))
    panels = [ax for ax in fig.axes if ax.images]
    clims = {ax.images[-1].get_clim() for ax in panels}
    q = 1 * 4 + 1
    assert clims == {(0.0, a[0, :, q].max().item())}
    assert {ax.images[-1].get_cmap().name for ax in panels} == {SEQUENTIAL}
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1"]
    (bar,) = colorbars(fig)
    assert "uniform 1/12" in tick_texts(bar)
    assert any("cyan square: the query token" in t.get_text() for t in fig.texts)
    assert small_text(fig) == []


def test_query_maps_of_a_signed_kernel_are_centred():
    mixer = build("dwconv", dim=2, grid=(5, 5), kernel_size=3)
    a = mixer.affinity(torch.zeros(1, 2, 5, 5, dtype=torch.float64))
    fig = viz.plot_query_maps(a, (5, 5), (2, 2))
    lo, hi = fig.axes[0].images[-1].get_clim()
    assert lo == -hi == -a[0, :, 12].abs().max().item()
    assert fig.axes[0].images[-1].get_cmap().name == DIVERGING
    assert maps_scale(viz.query_maps(a, (5, 5), (2, 2)).numpy()).uniform is None


def test_comparison_columns_each_have_one_stated_scale():
    image = torch.zeros(1, 16, 16)
    image[0, 4:12, 6:10] = 1.0
    fig = viz.comparison_figure(image, dim=8, grid=(4, 4))
    panels = [ax for ax in fig.axes if ax.images]
    bars = colorbars(fig)
    assert len(bars) == 4
    for col in range(4):
        matrix, qmap = panels[col].images[0], panels[4 + col].images[-1]
        assert matrix.get_clim() == qmap.get_clim() and matrix.get_cmap().name == qmap.get_cmap().name
        assert bars[col].get_ylim() == matrix.get_clim()  # the bar states the panels' range
    cmaps = [panels[c].images[0].get_cmap().name for c in range(4)]
    assert cmaps == [DIVERGING, SEQUENTIAL, DIVERGING, DIVERGING]  # conv, softmax, Mixer W, alpha-beta mix
    for c in (0, 2, 3):
        lo, hi = panels[c].images[0].get_clim()
        assert lo == -hi
    assert "uniform 1/16" in tick_texts(bars[1])
    assert small_text(fig) == []


def test_before_and_after_kernels_share_one_range():
    before = nn.Sequential(build("dwconv", dim=3, kernel_size=3, seed=0))
    after = nn.Sequential(build("dwconv", dim=3, kernel_size=3, seed=1))
    limits = viz.kernel_limits(before, after)
    figs = [viz.plot_static_kernels(m, limits=limits) for m in (before, after)]
    clims = [{ax.images[0].get_clim() for ax in f.axes if ax.images} for f in figs]
    v = max(before[0].static_kernels().abs().max().item(), after[0].static_kernels().abs().max().item())
    assert clims[0] == clims[1] == {(-v, v)}
    assert figs[0].axes[1].get_title() == "ch 1"
    assert all(small_text(f) == [] for f in figs)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_mixing_bars_legend_covers_no_bar():
    weights = {f"stages.{k}.mixer": {"alpha": a, "beta": 1 - a} for k, a in enumerate((0.9, 0.95, 0.1))}
    fig = viz.plot_mixing_weights(weights)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for c in ax.containers for p in c]
    assert bars and not any(_overlaps(legend, b) for b in bars)
    assert small_text(fig) == []


def test_per_head_weights_are_drawn_as_a_mean_with_dots():
    fig = viz.plot_mixing_weights({"gpsa.0": {"gate": [0.2, 0.6]}, "gpsa.1": {"gate": [0.5, 0.7]}})
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.containers[0]] == pytest.approx([0.4, 0.6])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.6])


def test_epoch_ticks_are_integers_and_axes_speak_words():
    rows = [{"epoch": e, "test_acc": 0.1 * e,
             "mixing": {"s.0": {"alpha": 0.5 + 0.01 * e, "beta": 0.5 - 0.01 * e}}} for e in range(0, 4)]
    for fig in (viz.learning_curves({"run": rows}), viz.plot_mixing_history(rows)):
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert small_text(fig) == []
    ax = viz.learning_curves({"run": rows}).axes[0]
    assert ax.get_ylabel() == "test accuracy" and "_" not in ax.get_title()
    assert viz.metric_label("train_loss") == "training loss"
    assert viz.metric_label("top5_acc") == "top5 accuracy"


def test_distance_plot_labels_are_readable():
    distances = {"stages.0.mixer": torch.tensor([1.0, 2.0]), "stages.1.mixer": torch.tensor([3.0])}
    fig = viz.plot_affinity_distance(distances)
    assert small_text(fig) == []


def test_row_limits_give_each_map_its_own_range_by_the_shared_rule():
    """Each row on its own range: 0 to its peak (never below 1/N for softmax rows), or symmetric."""
    import numpy as np

    from unifiedctx.viz.scales import row_limits, scale_for

    gen = np.random.default_rng(3)
    soft = np.exp(gen.normal(size=(2, 5, 16)) * np.array([[[0.1]], [[4.0]]]))
    soft /= soft.sum(-1, keepdims=True)
    lo, hi = row_limits(soft, scale_for(soft))
    assert (lo == 0).all() and np.allclose(hi, np.maximum(soft.max(-1), 1 / 16))
    assert (hi[0] < hi[1].min()).all()  # the flat head keeps a small range of its own
    signed = gen.normal(size=(3, 7))
    signed[1] = 0.0
    lo, hi = row_limits(signed, scale_for(signed))
    assert np.allclose(hi, [np.abs(signed[0]).max(), 1.0, np.abs(signed[2]).max()]) and np.allclose(lo, -hi)


def test_a_looser_row_sum_tolerance_keeps_the_uniform_level_of_stored_float16_rows():
    import numpy as np

    from unifiedctx.viz.scales import scale_for

    rows = np.random.default_rng(0).dirichlet(np.ones(64), size=(4, 64)).astype(np.float16).astype(np.float64)
    assert np.abs(rows.sum(-1) - 1).max() > 1e-5  # float16 moved the sums ...
    assert scale_for(rows).uniform is None
    assert scale_for(rows, atol=2.0 ** -10).uniform == 1 / 64  # ... by less than 2**-12


@pytest.mark.parametrize("kind", ["softmax", "mixed", "signed", "zeros-and-softmax"])
def test_merged_scales_are_the_scale_of_everything(kind):
    import numpy as np

    from unifiedctx.viz.scales import merge_scales, scale_for

    gen = np.random.default_rng(5)
    parts = [gen.dirichlet(np.ones(9), size=(2, 9)) * (1 + k) ** 2 for k in range(3)]
    if kind == "softmax":
        parts = [p / p.sum(-1, keepdims=True) for p in parts]
    elif kind == "signed":
        parts[1] = parts[1] - 0.5
    elif kind == "zeros-and-softmax":
        parts = [p / p.sum(-1, keepdims=True) for p in parts] + [np.zeros((2, 9, 9))]
    assert merge_scales([scale_for(p) for p in parts]) == scale_for(np.stack(parts))
