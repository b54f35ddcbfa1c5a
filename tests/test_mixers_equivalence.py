"""Each mixer against an implementation someone else wrote (PyTorch's modules), weights copied across.

The references are ``nn.Conv2d``, ``nn.AvgPool2d``, ``nn.MultiheadAttention``, a token-axis
``nn.Linear`` / ``nn.Sequential``, or an explicit formula written here with loops. Everything is
float64 with random parameters, so agreement to < 1e-10 relative error is a proof of equality.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build, rand_x, rel_err
from torch import nn

DIM = 6
GRIDS = [(4, 4), (4, 6), (6, 4)]
grid_ids = [f"{h}x{w}" for h, w in GRIDS]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C)`` written with plain torch (no einops)."""
    return x.flatten(2).transpose(1, 2)


def to_image(t: torch.Tensor, grid) -> torch.Tensor:
    """``(B, N, C) -> (B, C, H, W)``."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)


def torch_mha(qkv: nn.Linear, proj: nn.Linear | None, heads: int) -> nn.MultiheadAttention:
    """An ``nn.MultiheadAttention`` with our qkv weights; ``proj=None`` makes out_proj the identity."""
    dim = qkv.in_features
    mha = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(qkv.weight)
        mha.in_proj_bias.copy_(qkv.bias)
        if proj is None:
            mha.out_proj.weight.copy_(torch.eye(dim, dtype=torch.float64))
            mha.out_proj.bias.zero_()
        else:
            mha.out_proj.weight.copy_(proj.weight)
            mha.out_proj.bias.copy_(proj.bias)
    return mha.eval()


# --------------------------------------------------------------------------- convolution family
@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
@pytest.mark.parametrize("k", [3, 5])
def test_dwconv_equals_nn_conv2d_groups(grid, k):
    """dwconv == nn.Conv2d(C, C, k, padding=k//2, groups=C)."""
    mixer = build("dwconv", dim=DIM, kernel_size=k)
    ref = nn.Conv2d(DIM, DIM, k, padding=k // 2, groups=DIM, dtype=torch.float64)
    ref.load_state_dict({"weight": mixer.conv.weight, "bias": mixer.conv.bias})
    x = rand_x(DIM, grid)
    assert rel_err(mixer(x), ref(x)) < 1e-12
    assert rel_err(mixer.reference(x), ref(x)) < 1e-10


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_dwconv_with_projections_equals_1x1_dw_1x1(grid):
    """dwconv(proj=True) == Conv1x1 -> depthwise Conv k x k -> Conv1x1 (Container-Light's static mixer)."""
    mixer = build("dwconv", dim=DIM, kernel_size=5, proj=True)
    ref = nn.Sequential(
        nn.Conv2d(DIM, DIM, 1, dtype=torch.float64),
        nn.Conv2d(DIM, DIM, 5, padding=2, groups=DIM, dtype=torch.float64),
        nn.Conv2d(DIM, DIM, 1, dtype=torch.float64),
    )
    with torch.no_grad():
        for layer, ours in zip(ref, [mixer.proj_in, mixer.conv, mixer.proj_out]):
            layer.weight.copy_(ours.weight)
            layer.bias.copy_(ours.bias)
    x = rand_x(DIM, grid)
    assert rel_err(mixer(x), ref(x)) < 1e-12
    assert rel_err(mixer.reference(x), ref(x)) < 1e-10


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_conv_equals_nn_conv2d(grid):
    """conv == nn.Conv2d(C, C, 3, padding=1), including through the affinity view (im2col)."""
    mixer = build("conv", dim=DIM, kernel_size=3)
    ref = nn.Conv2d(DIM, DIM, 3, padding=1, dtype=torch.float64)
    ref.load_state_dict({"weight": mixer.conv.weight, "bias": mixer.conv.bias})
    x = rand_x(DIM, grid)
    assert rel_err(mixer(x), ref(x)) < 1e-12
    assert rel_err(mixer.reference(x), ref(x)) < 1e-10


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
@pytest.mark.parametrize("subtract_input", [False, True])
def test_pool_equals_nn_avgpool2d(grid, subtract_input):
    """pool == nn.AvgPool2d(3, 1, 1, count_include_pad=False) (minus x with subtract_input)."""
    mixer = build("pool", dim=DIM, kernel_size=3, subtract_input=subtract_input)
    pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    x = rand_x(DIM, grid)
    expected = pool(x) - x if subtract_input else pool(x)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10


# --------------------------------------------------------------------------- MLP-Mixer
@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_token_mixing_equals_token_axis_linear(grid):
    """mixer == nn.Linear(N, N) applied along the token axis of every channel."""
    mixer = build("tokenmlp", dim=DIM, grid=grid)
    n = grid[0] * grid[1]
    ref = nn.Linear(n, n, dtype=torch.float64)
    ref.load_state_dict(mixer.token.state_dict())
    x = rand_x(DIM, grid)
    expected = ref(x.flatten(2)).reshape(x.shape)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_gated_token_mlp_equals_linear_gelu_linear(grid):
    """mixer(hidden=h) == Sequential(Linear(N, h, bias=False), GELU(), Linear(h, N)) on the token axis."""
    hidden = 7
    mixer = build("tokenmlp", dim=DIM, grid=grid, hidden=hidden)
    n = grid[0] * grid[1]
    ref = nn.Sequential(nn.Linear(n, hidden, bias=False, dtype=torch.float64), nn.GELU(),
                        nn.Linear(hidden, n, dtype=torch.float64))
    ref[0].load_state_dict(mixer.token_in.state_dict())
    ref[2].load_state_dict(mixer.token_out.state_dict())
    x = rand_x(DIM, grid)
    expected = ref(x.flatten(2)).reshape(x.shape)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10


# --------------------------------------------------------------------------- attention family
@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
@pytest.mark.parametrize("heads", [1, 2, 3])
def test_attention_equals_nn_multiheadattention(grid, heads):
    """attention == nn.MultiheadAttention(batch_first) with in_proj = qkv and out_proj = proj."""
    mixer = build("attention", dim=DIM, heads=heads)
    mha = torch_mha(mixer.qkv, mixer.proj, heads)
    x = rand_x(DIM, grid)
    t = to_tokens(x)
    expected = to_image(mha(t, t, t, need_weights=False)[0], grid)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10
    # the affinity is MultiheadAttention's per-head attention weights
    _, weights = mha(t, t, t, need_weights=True, average_attn_weights=False)
    assert rel_err(mixer.affinity(x), weights) < 1e-12


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
@pytest.mark.parametrize("mixing", ["sigmoid", "independent"])
def test_container_equals_alpha_mha_plus_beta_conv_then_projection(grid, mixing):
    """container == proj(alpha * MHA_core(x) + beta * Conv2d_dw(V)), references from torch.nn.

    MHA_core is ``nn.MultiheadAttention`` with its out_proj set to the identity, V = x W_v + b_v,
    and the static part is an ``nn.Conv2d(groups=C)`` (bias included) on V. The projection comes
    last because Container mixes the two aggregations before projecting.
    """
    heads, k = 2, 3
    mixer = build("container", dim=DIM, heads=heads, kernel_size=k, mixing=mixing)
    x = rand_x(DIM, grid)
    t = to_tokens(x)
    core = torch_mha(mixer.qkv, None, heads)(t, t, t, need_weights=False)[0]  # (B, N, C)
    v = F.linear(t, mixer.qkv.weight[2 * DIM :], mixer.qkv.bias[2 * DIM :])
    conv = nn.Conv2d(DIM, DIM, k, padding=k // 2, groups=DIM, dtype=torch.float64)
    conv.load_state_dict(mixer.static.state_dict())
    static = to_tokens(conv(to_image(v, grid)))
    if mixing == "sigmoid":
        alpha = torch.sigmoid(mixer.mix_logit)
        beta = 1 - alpha
    else:
        alpha, beta = mixer.alpha_param, mixer.beta_param
    proj = nn.Linear(DIM, DIM, dtype=torch.float64)
    proj.load_state_dict(mixer.proj.state_dict())
    expected = to_image(proj(alpha * core + beta * static), grid)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10


@pytest.mark.parametrize("grid", [(4, 4), (4, 6), (6, 2)], ids=str)
def test_window_attention_equals_mha_per_window(grid):
    """window == nn.MultiheadAttention run separately on the tokens of each s x s window."""
    s, heads = 2, 2
    mixer = build("window", dim=DIM, heads=heads, window_size=s)
    mha = torch_mha(mixer.qkv, mixer.proj, heads)
    x = rand_x(DIM, grid)
    expected = torch.zeros_like(x)
    for y0 in range(0, grid[0], s):
        for x0 in range(0, grid[1], s):
            patch = x[:, :, y0 : y0 + s, x0 : x0 + s]
            t = to_tokens(patch)
            expected[:, :, y0 : y0 + s, x0 : x0 + s] = to_image(mha(t, t, t, need_weights=False)[0], (s, s))
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10


def split_qkv(mixer, x, heads):
    """q, k, v of shape ``(B, M, N, d)`` computed here with ``F.linear`` and a reshape."""
    t = to_tokens(x)
    qkv = F.linear(t, mixer.qkv.weight, mixer.qkv.bias)
    b, n, _ = qkv.shape
    return qkv.reshape(b, n, 3, heads, DIM // heads).permute(2, 0, 3, 1, 4).unbind(0)


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_relattn_equals_explicit_softmax_with_relative_bias(grid):
    """relattn == proj(softmax(q k^T / sqrt(d) + B[clip(dy), clip(dx)]) v), bias filled by loops."""
    heads, r = 2, 2
    mixer = build("relattn", dim=DIM, heads=heads, max_distance=r)
    x = rand_x(DIM, grid)
    q, k, v = split_qkv(mixer, x, heads)
    h, w = grid
    n = h * w
    bias = torch.zeros(heads, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            dy = max(-r, min(r, j // w - i // w))
            dx = max(-r, min(r, j % w - i % w))
            bias[:, i, j] = mixer.rel_bias[:, dy + r, dx + r]
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // heads) + bias, dim=-1)
    z = (a @ v).transpose(1, 2).reshape(x.shape[0], n, DIM)
    expected = to_image(F.linear(z, mixer.proj.weight, mixer.proj.bias), grid)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10
    # and with PyTorch's own SDPA taking the bias as its additive mask
    z2 = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(z.shape)
    assert rel_err(mixer(x), to_image(F.linear(z2, mixer.proj.weight, mixer.proj.bias), grid)) < 1e-12


@pytest.mark.parametrize("grid", GRIDS, ids=grid_ids)
def test_gpsa_equals_explicit_formula(grid):
    """gpsa == proj(((1-g) softmax(q k^T/sqrt(d)) + g softmax(r W_pos^T + b_pos)) v), ConViT's eq."""
    heads = 2
    mixer = build("gpsa", dim=DIM, heads=heads)
    x = rand_x(DIM, grid)
    q, k, v = split_qkv(mixer, x, heads)
    h, w = grid
    n = h * w
    rel = torch.zeros(n, n, 3, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            dy, dx = j // w - i // w, j % w - i % w
            rel[i, j] = torch.tensor([dx, dy, dx * dx + dy * dy], dtype=torch.float64)
    pos = torch.softmax(torch.einsum("ijr,mr->mij", rel, mixer.pos_proj.weight)
                        + mixer.pos_proj.bias.view(-1, 1, 1), dim=-1)
    g = torch.sigmoid(mixer.gate_logit).view(1, heads, 1, 1)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // heads), dim=-1)
    z = (((1 - g) * att + g * pos) @ v).transpose(1, 2).reshape(x.shape[0], n, DIM)
    expected = to_image(F.linear(z, mixer.proj.weight, mixer.proj.bias), grid)
    assert rel_err(mixer(x), expected) < 1e-12
    assert rel_err(mixer.reference(x), expected) < 1e-10
