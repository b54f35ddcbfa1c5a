"""Affinity matrix, query maps and the comparison figure: the drawn data is the affinity."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import build, rand_x  # noqa: E402

from unifiedctx.mixers.local import local_affinity  # noqa: E402
from unifiedctx.viz import (  # noqa: E402
    comparison_affinities,
    comparison_figure,
    comparison_mixers,
    grid_features,
    plot_affinity_matrix,
    plot_query_maps,
    query_maps,
    upsample_maps,
)

pytestmark = pytest.mark.usefixtures("close_figures")


def random_affinity(b=2, m=3, grid=(3, 4), seed=0):
    n = grid[0] * grid[1]
    return torch.randn(b, m, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_affinity_matrix_shows_the_head():
    a = random_affinity().softmax(-1)
    fig = plot_affinity_matrix(a, grid=(3, 4), head=2, batch=1)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), a[1, 2].numpy())
    assert len(fig.axes) == 2  # the matrix and its colorbar
    # image-row separators every W = 4 tokens, on both axes: 2 horizontal + 2 vertical lines
    assert len(ax.lines) == 4
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    assert ax.images[0].get_cmap().name == "magma"  # non-negative -> sequential


def test_affinity_matrix_signed_uses_centred_diverging_map():
    a = random_affinity(b=1, m=1)
    fig, ax = plt.subplots()
    out = plot_affinity_matrix(a[0, 0], grid=(3, 4), ax=ax, colorbar=False)
    assert out is fig and len(fig.axes) == 1
    im = ax.images[0]
    assert im.get_cmap().name == "RdBu_r"
    lo, hi = im.get_clim()
    assert lo == -hi == -a.abs().max().item()


@pytest.mark.parametrize("kwargs, match", [
    ({"head": 3}, "head=3 is out of range"),
    ({"batch": 2}, "batch=2"),
    ({"grid": (3, 3)}, "grid"),
])
def test_affinity_matrix_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_affinity_matrix(random_affinity(), **{"grid": (3, 4), **kwargs})


def test_query_maps_fold_the_row():
    a = random_affinity()
    maps = query_maps(a, (3, 4), (1, 2), batch=1)
    assert maps.shape == (3, 3, 4)
    q = 1 * 4 + 2
    for m in range(3):
        np.testing.assert_array_equal(maps[m].reshape(-1).numpy(), a[1, m, q].numpy())
    # the flat token index gives the same maps
    torch.testing.assert_close(query_maps(a, (3, 4), q, batch=1), maps, rtol=0, atol=0)


def test_query_maps_of_a_depthwise_conv_are_its_kernel():
    mixer = build("dwconv", dim=2, grid=(5, 5), kernel_size=3)
    x = rand_x(2, (5, 5))
    maps = query_maps(mixer.affinity(x), (5, 5), (2, 2))
    torch.testing.assert_close(maps[:, 1:4, 1:4], mixer.conv.weight[:, 0].detach(), rtol=0, atol=0)
    assert maps[:, 0].abs().sum() == 0 and maps[:, :, 4].abs().sum() == 0


@pytest.mark.parametrize("query, err, match", [
    ((3, 0), ValueError, "outside the grid"),
    ((0, -1), ValueError, "outside the grid"),
    (12, ValueError, "outside the grid"),
    ((1.0, 2), TypeError, "pair of ints"),
    ("a", TypeError, "query"),
])
def test_query_errors(query, err, match):
    with pytest.raises(err, match=match):
        query_maps(random_affinity(), (3, 4), query)


def test_plot_query_maps_overlays_upsampled_maps():
    a = random_affinity().softmax(-1)
    image = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(0))
    fig = plot_query_maps(a, (3, 4), (2, 1), image=image, heads=[0, 2], batch=1, mode="nearest")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert len(panels) == 2 and [ax.get_title() for ax in panels] == ["head 0", "head 2"]
    assert len(fig.axes) == 3  # the two heads and their one shared colorbar
    ax = fig.axes[1]
    assert len(ax.images) == 2  # the image, then the map
    shown = np.asarray(ax.images[1].get_array())
    assert shown.shape == (12, 16)
    expected = np.kron(a[1, 2, 2 * 4 + 1].view(3, 4).numpy(), np.ones((4, 4)))
    np.testing.assert_allclose(shown, expected, rtol=0, atol=1e-15)
    box = ax.patches[0]  # the query's cell, in image pixels
    assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (3.5, 7.5, 4.0, 4.0)


def test_upsample_bilinear_and_errors():
    maps = torch.arange(4.0, dtype=torch.float64).view(1, 2, 2)
    up = upsample_maps(maps, (4, 4), mode="bilinear")
    assert up.shape == (1, 4, 4) and up[0, 0, 0] == 0 and up[0, -1, -1] == 3
    with pytest.raises(ValueError, match="mode"):
        upsample_maps(maps, (4, 4), mode="cubic")
    with pytest.raises(ValueError, match="head=5"):
        plot_query_maps(random_affinity(), (3, 4), (0, 0), heads=[5])


def test_comparison_figure_draws_the_four_computed_affinities():
    image = torch.zeros(1, 16, 16)
    image[0, 4:12, 8:12] = 1.0  # a vertical bar, like a "1": grid cells (1, 2) and (2, 2)
    affs = comparison_affinities(image, dim=8, grid=(4, 4), seed=0)
    assert list(affs) == ["dwconv", "attention", "tokenmlp", "container"]
    fig = comparison_figure(image, dim=8, grid=(4, 4), seed=0)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 8
    for col, a in enumerate(affs.values()):
        np.testing.assert_array_equal(np.asarray(panels[col].images[0].get_array()), a.numpy())
    # attention rows are distributions; the conv matrix is banded (zero beyond one grid row)
    torch.testing.assert_close(affs["attention"].sum(-1), torch.ones(16, dtype=torch.float64))
    assert affs["dwconv"][0, 2 * 4:].abs().sum() == 0
    # container = alpha * attention + beta * (mean over head 0's channels 0..3 of) dwconv, alpha = beta = 0.5:
    # literally the two panels beside it
    mixers = comparison_mixers(8, (4, 4), seed=0)
    kernels = mixers["dwconv"].static_kernels()[:4].detach()
    static = local_affinity(kernels, (4, 4)).mean(0)
    torch.testing.assert_close(affs["container"], 0.5 * affs["attention"] + 0.5 * static, rtol=0, atol=1e-15)
    weights = {k: v.item() for k, v in mixers["container"].mixing_weights().items()}
    assert weights == {"alpha": 0.5, "beta": 0.5}
    torch.testing.assert_close(affs["dwconv"], local_affinity(kernels[:1], (4, 4))[0], rtol=0, atol=0)
    # default query: the brightest grid cell (on the bar), marked on every query panel
    box = panels[4].patches[0]
    assert (box.get_x(), box.get_y()) == (7.5, 3.5)


def test_comparison_mixers_are_the_registrys_own_seeded_mixers():
    """Each equals a fresh registry mixer from the same seed, except Container's static kernel,
    which is the depthwise conv's; building them leaves the global RNG as it was."""
    from unifiedctx.mixers import create

    state = torch.get_rng_state()
    mixers = comparison_mixers(8, (4, 4), seed=3, heads=2, kernel_size=3)
    assert torch.equal(torch.get_rng_state(), state)
    options = {"dwconv": {"kernel_size": 3}, "attention": {"heads": 2}, "tokenmlp": {"grid": (4, 4)},
               "container": {"heads": 2, "kernel_size": 3}}
    for name, mixer in mixers.items():
        torch.manual_seed(3)
        fresh = create(name, dim=8, **options[name]).double()
        assert mixer.state_dict().keys() == fresh.state_dict().keys()
        changed = [k for k, v in fresh.state_dict().items() if not torch.equal(mixer.state_dict()[k], v)]
        assert len(changed) == (1 if name == "container" else 0), (name, changed)  # only the kernel
    torch.testing.assert_close(mixers["container"].static_kernels(), mixers["dwconv"].static_kernels(),
                               rtol=0, atol=0)
    x = grid_features(torch.rand(1, 16, 16), 8, (4, 4))
    torch.testing.assert_close(mixers["container"].components(x)["dynamic"], mixers["attention"].affinity(x),
                               rtol=0, atol=0)  # the same seed gives Container the attention's q and k


def test_comparison_figure_on_a_photo():
    """An RGB photo (scikit-learn's sample image) works as well as a digit, and attention's
    affinity depends on which image it sees."""
    from sklearn.datasets import load_sample_images

    photo = torch.tensor(load_sample_images().images[0][::8, ::8]).permute(2, 0, 1).double() / 255
    digit = torch.zeros(1, 32, 32, dtype=torch.float64)
    digit[0, 8:24, 14:18] = 1.0
    fig = comparison_figure(photo, dim=16, grid=(8, 8))
    assert len([ax for ax in fig.axes if ax.images]) == 8
    on_photo = comparison_affinities(photo, dim=16, grid=(8, 8))
    on_digit = comparison_affinities(digit, dim=16, grid=(8, 8))
    assert not torch.allclose(on_photo["attention"], on_digit["attention"])
    torch.testing.assert_close(on_photo["dwconv"], on_digit["dwconv"], rtol=0, atol=0)  # static


def test_load_static_kernels_goes_through_the_contract():
    from unifiedctx.viz.affinity import load_static_kernels

    conv = build("dwconv", dim=3, kernel_size=3)
    kernels = torch.arange(27, dtype=torch.float64).view(3, 3, 3)
    load_static_kernels(conv, kernels)
    torch.testing.assert_close(conv.static_kernels().detach(), kernels, rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        load_static_kernels(conv, kernels[:2])
    with pytest.raises(ValueError, match="no static kernel"):
        load_static_kernels(build("attention", dim=4), kernels)
