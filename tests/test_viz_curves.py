"""Mixing weights, their history, learning curves and static kernels: the plotted numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import build  # noqa: E402
from torch import nn  # noqa: E402

from unifiedctx.viz import (  # noqa: E402
    learning_curves,
    plot_mixing_history,
    plot_mixing_weights,
    plot_static_kernels,
    static_kernels,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def history(n=4, acc0=0.1, layers=("s4.0", "s4.1")):
    return [{"epoch": e, "train_loss": 2.0 / e, "test_acc": acc0 + 0.1 * e, "lr": 1e-3,
             "mixing": {name: {"alpha": 0.5 + 0.05 * e * (k + 1), "beta": 0.5 - 0.05 * e * (k + 1)}
                        for k, name in enumerate(layers)}}
            for e in range(1, n + 1)]


def test_mixing_weight_bars():
    weights = {"s4.0": {"alpha": 0.7, "beta": 0.3}, "s4.1": {"alpha": 0.4, "beta": 0.6}}
    fig = plot_mixing_weights(weights)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.containers[0]] == [0.7, 0.4]
    assert [p.get_height() for p in ax.containers[1]] == [0.3, 0.6]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["s4.0", "s4.1"]
    with pytest.raises(ValueError, match="alpha"):
        plot_mixing_weights({"x": {"beta": 1.0}})
    with pytest.raises(ValueError, match="no mixing weights"):
        plot_mixing_weights({})


def test_mixing_weights_from_a_model():
    model = nn.Sequential(build("container", dim=4, grid=(4, 4)), build("dwconv", dim=4))
    alpha = torch.sigmoid(model[0].mix_logit).item()
    ax = plot_mixing_weights(model).axes[0]
    assert [p.get_height() for p in ax.containers[0]] == pytest.approx([alpha])
    assert [p.get_height() for p in ax.containers[1]] == pytest.approx([1 - alpha])


def test_mixing_history_lines():
    fig = plot_mixing_history(history())
    ax = fig.axes[0]
    assert len(ax.lines) == 4  # alpha and beta of two layers
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [0.6, 0.7, 0.8, 0.9])  # s4.1 alpha
    np.testing.assert_allclose(ax.lines[3].get_ydata(), [0.4, 0.3, 0.2, 0.1])  # s4.1 beta
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    with pytest.raises(ValueError, match="mixing"):
        plot_mixing_history([{"epoch": 1, "test_acc": 0.5}])


def test_mixing_history_reads_the_training_engines_columns():
    """fit() writes flat alpha/<layer>, beta/<layer> columns; a leading "mixing" row may add epoch 0."""
    from unifiedctx.train import History

    rows = History([{"epoch": e, "test_acc": 0.5, "alpha/s4.0": a, "beta/s4.0": 1 - a}
                    for e, a in ((1, 0.55), (2, 0.6))])
    start = {"epoch": 0, "mixing": {"s4.0": {"alpha": 0.5, "beta": 0.5}}}
    ax = plot_mixing_history([start, *rows]).axes[0]
    assert len(ax.lines) == 2
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.5, 0.55, 0.6])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.5, 0.45, 0.4])


def test_learning_curves_several_runs_and_metrics():
    runs = {"conv": history(acc0=0.2), "attention": history(acc0=0.0)}
    runs["attention"][1].pop("test_acc")  # not evaluated at epoch 2
    fig = learning_curves(runs, metric=["test_acc", "train_loss"])
    acc_ax, loss_ax = fig.axes
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [0.3, 0.4, 0.5, 0.6])
    np.testing.assert_array_equal(acc_ax.lines[1].get_xdata(), [1, 3, 4])
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["conv", "attention"]
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [2.0, 1.0, 2 / 3, 0.5])
    # a History-like object (list subclass) without "epoch" keys: x is the 1-based position
    class History(list):
        pass
    fig2 = learning_curves({"x": History([{"test_acc": 0.1}, {"test_acc": 0.2}])})
    np.testing.assert_array_equal(fig2.axes[0].lines[0].get_xdata(), [1, 2])
    with pytest.raises(ValueError, match=r"'top5'.*test_acc"):
        learning_curves(runs, metric="top5")
    with pytest.raises(TypeError, match="list of per-epoch dicts"):
        learning_curves({"x": {"test_acc": 1}})


def test_static_kernels_tiles():
    model = nn.Sequential(build("dwconv", dim=3, kernel_size=3), build("container", dim=4, kernel_size=5),
                          build("attention", dim=4))
    kernels = static_kernels(model)
    assert list(kernels) == ["0", "1"]
    assert kernels["0"].shape == (3, 3, 3) and kernels["1"].shape == (4, 5, 5)
    fig = plot_static_kernels(model, channels=4)
    tiles = [ax for ax in fig.axes if ax.images]
    assert len(tiles) == 3 + 4  # the 4th tile of layer 0 is hidden (3 channels)
    first = tiles[0].images[0]
    np.testing.assert_array_equal(np.asarray(first.get_array()), model[0].conv.weight[0, 0].detach().numpy())
    lo, hi = first.get_clim()
    assert lo == -hi == -model[0].conv.weight.abs().max().item()
    assert first.get_cmap().name == "RdBu_r"
    np.testing.assert_array_equal(np.asarray(tiles[3 + 2].images[0].get_array()),
                                  model[1].static.weight[2, 0].detach().numpy())


def test_static_kernels_inputs_and_errors():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    fig = plot_static_kernels(conv.weight, channels=2)  # a raw (C, 1, k, k) weight
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert list(static_kernels(conv)) == ["Conv2d"]
    with pytest.raises(ValueError, match="no depthwise"):
        plot_static_kernels(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="channels"):
        plot_static_kernels(conv.weight, channels=0)
    with pytest.raises(ValueError, match=r"\(C, kh, kw\)"):
        plot_static_kernels({"x": torch.zeros(2, 3, 3, 3, 3)})
