"""Mean affinity distance on cases with known answers, and its plot."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from unifiedctx.mixers.local import local_affinity  # noqa: E402
from unifiedctx.viz import affinity_distance, layer_distances, plot_affinity_distance  # noqa: E402

pytestmark = pytest.mark.usefixtures("close_figures")


def test_identity_affinity_has_zero_distance():
    a = torch.eye(20, dtype=torch.float64).expand(2, 3, 20, 20)
    zeros = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(affinity_distance(a, (4, 5), pixel_stride=8), zeros)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_uniform_attention_on_a_line(n):
    # mean_i (1/N) sum_j |i - j| = (N^2 - 1) / (3N)
    a = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    d = affinity_distance(a, (1, n), pixel_stride=2.0)
    assert d.shape == (1,)
    assert d.item() == pytest.approx(2.0 * (n * n - 1) / (3 * n), rel=1e-14)
    # the same along a column, and with grid=None meaning a 1 x N line
    assert affinity_distance(a, (n, 1)).item() == pytest.approx((n * n - 1) / (3 * n), rel=1e-14)
    assert affinity_distance(a, None).item() == pytest.approx((n * n - 1) / (3 * n), rel=1e-14)


def test_box_filter_interior_known_mean():
    # 3x3 box on a 5x5 grid; the 9 interior queries each see 4 tokens at 1 and 4 at sqrt(2)
    box = local_affinity(torch.ones(1, 3, 3, dtype=torch.float64), (5, 5))
    idx = torch.tensor([y * 5 + x for y in range(1, 4) for x in range(1, 4)])
    interior = box[:, idx]  # (1, 9, 25): rows of the interior queries only
    # zero all other rows: rows without weight are left out of the mean
    a = torch.zeros(1, 1, 25, 25, dtype=torch.float64)
    a[0, 0, idx] = interior[0]
    want = (4 + 4 * math.sqrt(2)) / 9
    assert affinity_distance(a, (5, 5)).item() == pytest.approx(want, rel=1e-14)
    # a signed kernel with the same magnitudes gives the same distance (|A| is used)
    signs = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]], dtype=torch.float64)
    signed = local_affinity(signs[None], (5, 5))
    b = torch.zeros_like(a)
    b[0, 0, idx] = signed[0, idx]
    assert affinity_distance(b, (5, 5)).item() == pytest.approx(want, rel=1e-14)
    # an all-zero head is NaN, not 0
    assert math.isnan(affinity_distance(torch.zeros(1, 1, 4, 4), (2, 2)).item())


def test_anisotropic_stride_and_errors():
    a = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    a[0, 0, 0, 1] = a[0, 0, 1, 0] = a[0, 0, 2, 3] = a[0, 0, 3, 2] = 1.0  # horizontal neighbours on 2x2
    assert affinity_distance(a, (2, 2), pixel_stride=(3.0, 5.0)).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="pixel_stride"):
        affinity_distance(a, (2, 2), pixel_stride=0)
    with pytest.raises(ValueError, match="grid"):
        affinity_distance(a, (3, 3))


def test_layer_distances_infer_grid_and_stride():
    n1, n2 = 64, 16  # 8x8 and 4x4 grids of a 32x32 image: strides 4 and 8
    aff = {"s1": torch.full((1, 2, n1, n1), 1.0 / n1), "s2": torch.eye(n2)[None, None]}
    out = layer_distances(aff, 32)
    torch.testing.assert_close(out["s1"], affinity_distance(aff["s1"], (8, 8), 4.0))
    torch.testing.assert_close(out["s2"], torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="grids"):
        layer_distances({"x": torch.eye(7)[None, None]}, 32)


def test_plot_affinity_distance_data():
    dists = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([4.0, 6.0, 8.0])}
    fig = plot_affinity_distance(dists)
    ax = fig.axes[0]
    pts = ax.collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(pts), [[0, 1], [0, 3], [1, 4], [1, 6], [1, 8]])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [2.0, 6.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    # from affinities, with image_size
    fig2, ax2 = plt.subplots()
    assert plot_affinity_distance({"s": torch.eye(16)[None, None]}, image_size=32, ax=ax2) is fig2
    assert ax2.lines[0].get_ydata()[0] == 0
    with pytest.raises(ValueError, match="image_size"):
        plot_affinity_distance({"s": torch.eye(16)[None, None]})


def test_distances_of_a_nano_model():
    models = pytest.importorskip("unifiedctx.models")
    torch.manual_seed(0)
    model = models.create_model("container_light_nano", in_chans=1).eval()
    affs = models.record_affinities(model, torch.randn(1, 1, 32, 32))
    dists = layer_distances(affs, 32)
    assert list(dists) == list(affs)
    for name, a in affs.items():
        side = int(math.isqrt(a.shape[-1]))
        assert dists[name].shape == (a.shape[1],)
        torch.testing.assert_close(dists[name], affinity_distance(a, (side, side), 32 / side))
    fig = plot_affinity_distance(dists)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [d.mean().item() for d in dists.values()])
