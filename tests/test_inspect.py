"""``unifiedctx.inspect``: the affinity view rebuilds the module's own output (float64, tight)."""

from __future__ import annotations

import pytest
import torch
from conftest import build, perturb, rand_x, rel_err
from torch import nn

import unifiedctx
from unifiedctx.inspection import AffinityView, inspect

TOL = 1e-12


def check_rebuild(module, x, **kwargs) -> AffinityView:
    module = module.double().eval()
    view = inspect(module, x, **kwargs)
    with torch.no_grad():
        expected = module(x) if not isinstance(module, nn.MultiheadAttention) else \
            module(x, x, x, need_weights=False)[0]
        got = view.project(view.affinity @ view.values)
    assert got.shape == expected.shape
    assert rel_err(got, expected) < TOL
    assert rel_err(view.output(), expected) < TOL
    b, m, n, k = view.affinity.shape
    assert view.values.shape[1] == m == view.heads and view.values.shape[2] == k
    return view


def test_top_level_export():
    assert unifiedctx.inspect is inspect


@pytest.mark.parametrize("kernel", [1, 3, 5, (3, 5)])
def test_depthwise_conv2d(kernel):
    conv = perturb(nn.Conv2d(4, 4, kernel, padding="same", groups=4).double())
    x = rand_x(4, (5, 6))
    view = check_rebuild(conv, x)
    assert view.kind == "static" and view.heads == 4 and view.affinity.shape == (1, 4, 30, 30)
    # interior row of channel 0 holds exactly the kernel, at the right offsets
    kh, kw = conv.kernel_size
    i = (2 * 6 + 3)
    row = view.affinity[0, 0, i].view(5, 6)
    torch.testing.assert_close(row[2 - kh // 2: 2 + kh // 2 + 1, 3 - kw // 2: 3 + kw // 2 + 1],
                               conv.weight[0, 0], rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_full_conv2d_im2col(bias):
    conv = perturb(nn.Conv2d(3, 5, 3, padding=1, bias=bias).double())
    x = rand_x(3, (4, 5))
    view = check_rebuild(conv, x)
    assert view.heads == 9 and view.affinity.shape == (1, 9, 20, 20)
    assert set(view.affinity.unique().tolist()) == {0.0, 1.0}  # pure shift matrices
    assert view.values.shape == (2, 9, 20, 3)


@pytest.mark.parametrize("cin,cout,groups", [(4, 4, 2), (6, 9, 3), (8, 4, 4)])
def test_grouped_conv2d_im2col(cin, cout, groups):
    """ResNeXt's and RegNet's grouped 3x3: im2col's shift heads, each output group reading its own input
    group only (a kernel of another group's channels would change the output)."""
    conv = perturb(nn.Conv2d(cin, cout, 3, padding=1, groups=groups).double())
    x = rand_x(cin, (4, 5))
    view = check_rebuild(conv, x)
    assert view.heads == 9 and view.module_type == "Conv2d (grouped, im2col)"
    assert view.values.shape == (2, 9, 20, cin)
    mixed = view.values.clone()
    mixed[..., : cin // groups] = 0  # the first input group: only the first output group may change
    y, y0 = view.project(view.affinity @ view.values), view.project(view.affinity @ mixed)
    changed = (y - y0).abs().amax(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [True] * (cout // groups) + [False] * (cout - cout // groups)


def test_dilated_conv2d():
    conv = perturb(nn.Conv2d(2, 2, 3, padding=2, dilation=2, groups=2).double())
    check_rebuild(conv, rand_x(2, (6, 6)))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel", [3, 5])
def test_avgpool2d(count_include_pad, kernel):
    pool = nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=count_include_pad)
    view = check_rebuild(pool, rand_x(3, (5, 4)))
    rows = view.affinity[0, 0].sum(-1)
    if count_include_pad:
        assert rows.min() < 1 - 1e-3  # border rows lose the padded share
        assert view.affinity[0, 0].max().item() == pytest.approx(1 / kernel**2, abs=1e-15)
    else:
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-14)


def test_avgpool2d_divisor_override():
    check_rebuild(nn.AvgPool2d(3, stride=1, padding=1, divisor_override=4), rand_x(2, (4, 4)))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_multihead_attention(batch_first, bias):
    torch.manual_seed(0)
    mha = perturb(nn.MultiheadAttention(8, 2, bias=bias, batch_first=batch_first).double(), std=0.3)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 12, 8, generator=gen, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    view = check_rebuild(mha, x, grid=(3, 4))
    assert view.affinity.shape == (2, 2, 12, 12) and view.grid == (3, 4) and view.kind == "dynamic"
    torch.testing.assert_close(view.affinity.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    # the per-head A averaged over heads is what PyTorch itself returns as weights
    _, weights = mha(x, x, x, need_weights=True, average_attn_weights=True)
    assert rel_err(view.affinity.mean(1), weights) < TOL


def test_multihead_attention_unbatched_bias_kv_zero_attn():
    mha = perturb(nn.MultiheadAttention(6, 3, add_bias_kv=True, add_zero_attn=True).double(), std=0.3)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    view = check_rebuild(mha, x)
    assert view.extra_keys == 2 and view.affinity.shape == (1, 3, 5, 7) and view.grid is None
    assert view.grid_affinity().shape == (1, 3, 5, 5)


def test_unifiedctx_mixers():
    for name in ("dwconv", "attention", "container", "pool"):
        mixer = build(name, dim=4, grid=(4, 4))
        view = check_rebuild(mixer, rand_x(4, (4, 4)))
        assert view.kind == mixer.kind


def test_local_affinity_of_rectangular_dilated_kernels_is_the_conv_impulse_response():
    """inspect() relies on local_affinity for (kh, kw) kernels and (d_y, d_x) dilation:
    column j of A[m] is the depthwise conv of a one-hot image at token j (conv is linear)."""
    from unifiedctx.mixers.local import local_affinity

    k = torch.randn(3, 3, 5, dtype=torch.float64)
    grid, dilation = (6, 7), (2, 1)
    a = local_affinity(k, grid, dilation)
    onehots = torch.eye(42, dtype=torch.float64).view(42, 1, *grid).expand(42, 3, *grid)
    y = torch.nn.functional.conv2d(onehots, k[:, None], padding=(2, 2), dilation=dilation, groups=3)
    torch.testing.assert_close(a, y.flatten(2).permute(1, 2, 0), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "module, attr",
    [
        (nn.Conv2d(2, 2, 3, stride=2, padding=1), "stride"),
        (nn.Conv2d(2, 2, 3, padding=0), "padding"),
        (nn.Conv2d(2, 2, 4, padding=2), "kernel_size"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "padding_mode"),
        (nn.AvgPool2d(3, padding=1), "stride"),
        (nn.AvgPool2d(3, stride=1, padding=0), "padding"),
    ],
)
def test_unsupported_settings_name_the_attribute(module, attr):
    x = rand_x(module.in_channels if isinstance(module, nn.Conv2d) else 2, (4, 4))
    with pytest.raises(ValueError, match=attr):
        inspect(module.double(), x)


def test_unsupported_module_type():
    with pytest.raises(TypeError, match=r"Linear.*supported:.*Conv2d.*MultiheadAttention"):
        inspect(nn.Linear(3, 3), torch.randn(2, 3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="grid"):
        inspect(nn.MultiheadAttention(4, 2, batch_first=True), torch.randn(1, 6, 4), grid=(2, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        inspect(nn.Conv2d(2, 2, 3, padding=1), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="embed_dim"):
        inspect(nn.MultiheadAttention(4, 2), torch.randn(3, 1, 5))


@pytest.mark.parametrize("groups,dilation", [(6, 1), (6, 2), (1, 1), (3, 1)])
def test_a_conv_views_rows_are_its_kernel_at_the_query_without_the_dense_affinity(groups, dilation):
    torch.manual_seed(groups + dilation)
    conv = nn.Conv2d(6, 6, 5, padding=2 * dilation, dilation=dilation, groups=groups).double()
    x = torch.randn(1, 6, 7, 9, dtype=torch.float64)
    view = inspect(conv, x)
    queries = [0, 8, 31, 62]  # corners and the middle of the 7 x 9 grid
    rows = view.rows(queries)
    assert callable(view.__dict__["_affinity"])  # the dense (M, N, N) was not built for the rows
    dense = view.affinity  # asked for: built now
    assert (rows - dense[..., queries, :]).abs().max().item() == 0
    assert (view.project(view.affinity @ view.values) - conv(x)).abs().max().item() < 1e-12
