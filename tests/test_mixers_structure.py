"""The shape of each affinity A: where it is zero, what repeats, what sums to one, what depends on x.

Each check is computed independently of the mixer's own affinity code wherever that is possible:
convolution affinities against the impulse responses of ``F.conv2d``, attention against a softmax
built here from the ``qkv`` weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import build, rand_x, rel_err

from unifiedctx.mixers import create

DIM = 6
GRIDS = [(6, 6), (5, 7)]


def window_mask(grid, k: int) -> torch.Tensor:
    """``(N, N)`` bool: True where token j lies in the k x k window centred on token i."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys.view(1, -1) - ys.view(-1, 1)).abs()
    dx = (xs.view(1, -1) - xs.view(-1, 1)).abs()
    return (dy <= k // 2) & (dx <= k // 2)


def interior_patches(a: torch.Tensor, grid, k: int) -> torch.Tensor:
    """For every interior token i, the k x k block of row ``A[:, i]`` around i: ``(M, n_int, k, k)``."""
    h, w = grid
    r = k // 2
    rows = a.reshape(a.shape[0], h, w, h, w)
    patches = []
    for y in range(r, h - r):
        for x in range(r, w - r):
            patches.append(rows[:, y, x, y - r : y + r + 1, x - r : x + r + 1])
    return torch.stack(patches, dim=1)


def impulse_affinity(conv: torch.nn.Conv2d, channels: int, grid) -> torch.Tensor:
    """Column j of a depthwise conv's affinity is its (bias-free) response to a unit impulse at j."""
    n = grid[0] * grid[1]
    impulses = torch.eye(n, dtype=torch.float64).view(n, 1, *grid).expand(n, channels, *grid)
    pad = conv.kernel_size[0] // 2
    out = F.conv2d(impulses, conv.weight, None, padding=pad, groups=channels)  # (N_j, C, H, W)
    return out.reshape(n, channels, n).permute(1, 2, 0)  # (C, N_i, N_j)


# --------------------------------------------------------------------------- convolution family
@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("k", [3, 5])
def test_dwconv_affinity_is_a_banded_toeplitz_of_the_kernel(grid, k):
    """dwconv: zero outside the k x k window; every interior row holds the channel's kernel."""
    mixer = build("dwconv", dim=DIM, kernel_size=k)
    a = mixer.affinity(rand_x(DIM, grid, batch=1))[0]
    outside = ~window_mask(grid, k)
    assert a[:, outside].abs().max() == 0
    assert a[:, ~outside].abs().min() > 0  # random kernel: the window is really filled
    patches = interior_patches(a, grid, k)
    kernel = mixer.conv.weight[:, 0].unsqueeze(1).expand_as(patches)
    assert torch.equal(patches, kernel)
    # and the whole matrix (borders included) is the conv's impulse response
    assert rel_err(a, impulse_affinity(mixer.conv, DIM, grid)) < 1e-14


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_conv_affinities_are_the_k2_shift_matrices(grid):
    """conv: head o is the 0/1 shift by offset o, zero outside the window, the same at every token."""
    k = 3
    mixer = build("conv", dim=DIM, kernel_size=k)
    a = mixer.affinity(rand_x(DIM, grid, batch=1))[0]  # (k*k, N, N)
    assert a.shape[0] == k * k
    assert a[:, ~window_mask(grid, k)].abs().max() == 0
    assert set(a.unique().tolist()) == {0.0, 1.0}
    patches = interior_patches(a, grid, k)  # (k*k, n_int, k, k)
    one_hot = torch.eye(k * k, dtype=a.dtype).view(k * k, 1, k, k).expand_as(patches)
    assert torch.equal(patches, one_hot)
    # each head holds at most one 1 per row: a shift, not a blur
    assert a.sum(-1).max() == 1


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("subtract_input", [False, True])
def test_pool_affinity_is_uniform_over_the_window_on_the_grid(grid, subtract_input):
    """pool: 1/|window(i) on grid| inside the window, 0 outside; rows sum to 1 (0 minus identity)."""
    k = 3
    mixer = build("pool", dim=DIM, kernel_size=k, subtract_input=subtract_input)
    a = mixer.affinity(rand_x(DIM, grid, batch=1))[0, 0]
    inside = window_mask(grid, k)
    if subtract_input:
        a = a + torch.eye(a.shape[0], dtype=a.dtype)
    assert a[~inside].abs().max() == 0
    counts = inside.sum(1, keepdim=True).to(a.dtype)  # 4 at corners, 6 on edges, 9 inside
    assert torch.allclose(a, inside.to(a.dtype) / counts, rtol=0, atol=1e-15)
    patches = interior_patches(a.unsqueeze(0), grid, k)
    assert torch.allclose(patches, torch.full_like(patches, 1 / k**2), rtol=0, atol=1e-15)
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[0], dtype=a.dtype), rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- static means static
@pytest.mark.parametrize("name", ["dwconv", "conv", "pool", "tokenmlp"])
def test_static_affinities_do_not_depend_on_x(name):
    """Two different inputs give bit-identical affinities for every static mixer."""
    mixer = build(name, dim=DIM, grid=(4, 4))
    assert mixer.kind == "static"
    a1 = mixer.affinity(rand_x(DIM, (4, 4), batch=1, seed=1))
    a2 = mixer.affinity(rand_x(DIM, (4, 4), batch=3, seed=2) * 10)
    assert a1.shape[0] == 1 and torch.equal(a1, a2)


@pytest.mark.parametrize(("name", "opts"), [("attention", {}), ("window", {}), ("relattn", {}),
                                            ("container", {}), ("gpsa", {}), ("tokenmlp", {"hidden": 5})])
def test_dynamic_and_mixed_affinities_depend_on_x(name, opts):
    """The same check on input-dependent mixers sees a change (so the check above has teeth)."""
    mixer = build(name, dim=DIM, grid=(4, 4), **opts)
    assert mixer.kind in ("dynamic", "mixed")
    a1 = mixer.affinity(rand_x(DIM, (4, 4), batch=1, seed=1))
    a2 = mixer.affinity(rand_x(DIM, (4, 4), batch=1, seed=2))
    assert rel_err(a1, a2) > 1e-3


def test_token_mixing_affinity_is_its_weight():
    """mixer (static): A is the token-axis weight W itself, one matrix for all channels."""
    mixer = build("tokenmlp", dim=DIM, grid=(4, 4))
    a = mixer.affinity(rand_x(DIM, (4, 4), batch=1))
    assert torch.equal(a[0, 0], mixer.token.weight)


def test_gated_token_mlp_affinity_is_the_input_gated_product():
    """mixer(hidden=h): A[b, c] = W2 diag(Phi(W1 x_c)) W1, so that A x_c = W2 GELU(W1 x_c)."""
    mixer = build("tokenmlp", dim=DIM, grid=(4, 4), hidden=5)
    x = rand_x(DIM, (4, 4), batch=2)
    a = mixer.affinity(x)  # (B, C, N, N)
    w1, w2 = mixer.token_in.weight, mixer.token_out.weight
    t = x.flatten(2)  # (B, C, N)
    u = t @ w1.T
    phi = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    for b in range(2):
        for c in range(DIM):
            expected = w2 @ torch.diag(phi[b, c]) @ w1
            assert rel_err(a[b, c], expected) < 1e-13
    assert rel_err(a[0, 0], a[1, 0]) > 1e-3  # a different image gives a different affinity


# --------------------------------------------------------------------------- attention family
def softmax_attention(mixer, x, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` per head, computed here from the mixer's ``qkv`` weights."""
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = t @ mixer.qkv.weight.T + mixer.qkv.bias
    c = x.shape[1]
    d = c // heads
    q = qkv[..., :c].reshape(*t.shape[:2], heads, d).transpose(1, 2)
    k = qkv[..., c : 2 * c].reshape(*t.shape[:2], heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)


@pytest.mark.parametrize("name", ["attention", "window", "relattn", "gpsa"])
def test_attention_rows_are_probability_distributions(name):
    """Attention-type affinities are non-negative and each row sums to 1."""
    grid = (4, 6)
    mixer = build(name, dim=DIM, grid=grid)
    a = mixer.affinity(rand_x(DIM, grid, batch=2))
    assert a.min() >= 0
    assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype), rtol=0, atol=1e-13)


def test_plain_attention_affinity_is_the_softmax_of_scaled_scores():
    """attention: A equals a softmax built here from the qkv weights."""
    mixer = build("attention", dim=DIM, grid=(4, 6))
    x = rand_x(DIM, (4, 6), batch=2)
    assert rel_err(mixer.affinity(x), softmax_attention(mixer, x, mixer.heads)) < 1e-13


@pytest.mark.parametrize("grid", [(4, 4), (4, 6), (6, 2)], ids=str)
def test_window_attention_is_zero_across_windows(grid):
    """window: A[i, j] > 0 exactly when i and j share a window; within one window it is a softmax."""
    s = 2
    mixer = build("window", dim=DIM, grid=grid, window_size=s)
    x = rand_x(DIM, grid, batch=2)
    a = mixer.affinity(x)
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    win = (ys // s * (w // s) + xs // s).reshape(-1)
    same = win.view(-1, 1) == win.view(1, -1)
    assert a[..., ~same].abs().max() == 0
    assert a[..., same].min() > 0
    # inside a window, A is the plain softmax restricted to that window's tokens
    full = softmax_attention(mixer, x, mixer.heads)
    for window in win.unique():
        idx = (win == window).nonzero().view(-1)
        block = full[..., idx[:, None], idx[None, :]]
        block = block / block.sum(-1, keepdim=True)
        assert rel_err(a[..., idx[:, None], idx[None, :]], block) < 1e-13


def test_relattn_bias_is_shared_by_equal_offsets_and_clipped():
    """relattn: log A - scores/sqrt(d) depends only on the (clipped) offset j - i, per head."""
    grid, r = (5, 6), 2
    mixer = build("relattn", dim=DIM, grid=grid, max_distance=r)
    x = rand_x(DIM, grid, batch=1)
    a = mixer.affinity(x)[0]
    plain = softmax_attention(mixer, x, mixer.heads)[0]
    # log A = scores + bias - logsumexp_row; log plain = scores - logsumexp'_row. Their
    # difference minus its row mean is bias - mean_row(bias): recover bias up to a row constant.
    diff = a.log() - plain.log()
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = (ys.view(1, -1) - ys.view(-1, 1)).clamp(-r, r) + r
    dx = (xs.view(1, -1) - xs.view(-1, 1)).clamp(-r, r) + r
    bias = mixer.rel_bias[:, dy, dx]
    centred = diff - bias
    assert (centred - centred[..., :1]).abs().max() < 1e-12  # a constant per row: softmax shift


# --------------------------------------------------------------------------- mixed affinities
@pytest.mark.parametrize("mixing", ["sigmoid", "independent"])
def test_container_affinity_is_alpha_attention_plus_beta_dwconv(mixing):
    """container: A[c] = alpha softmax(q_m k_m^T/sqrt(d)) + beta A_dwconv[c], built independently."""
    grid = (4, 5)
    mixer = build("container", dim=DIM, grid=grid, heads=2, kernel_size=3, mixing=mixing)
    x = rand_x(DIM, grid, batch=2)
    if mixing == "sigmoid":
        alpha = 1 / (1 + math.exp(-mixer.mix_logit.item()))
        beta = 1 - alpha
    else:
        alpha, beta = mixer.alpha_param.item(), mixer.beta_param.item()
    assert 1e-3 < abs(alpha) and 1e-3 < abs(beta)
    attn = softmax_attention(mixer, x, 2)  # (B, 2, N, N)
    head_of_channel = torch.arange(DIM) // (DIM // 2)
    dynamic = attn[:, head_of_channel]  # (B, C, N, N)
    static = impulse_affinity(mixer.static, DIM, grid).unsqueeze(0)  # (1, C, N, N)
    assert rel_err(mixer.affinity(x), alpha * dynamic + beta * static) < 1e-13


def test_container_components_mix_linearly_and_average_the_channels():
    """container components: mixed == alpha dynamic + beta static; static is the per-head channel mean."""
    grid = (4, 4)
    mixer = build("container", dim=DIM, grid=grid, heads=2)
    x = rand_x(DIM, grid, batch=2)
    parts = mixer.components(x)
    weights = mixer.mixing_weights()
    alpha, beta = weights["alpha"], weights["beta"]
    assert parts["dynamic"].shape == (2, 2, 16, 16) and parts["static"].shape == (1, 2, 16, 16)
    assert rel_err(parts["mixed"], alpha * parts["dynamic"] + beta * parts["static"]) < 1e-14
    assert rel_err(parts["dynamic"], softmax_attention(mixer, x, 2)) < 1e-13
    per_channel = impulse_affinity(mixer.static, DIM, grid)
    head_mean = per_channel.view(2, DIM // 2, 16, 16).mean(1, keepdim=False).unsqueeze(0)
    assert rel_err(parts["static"], head_mean) < 1e-13
    # the head-level mixed affinity is the mean of the exact per-channel affinities of the head
    exact = mixer.affinity(x).view(2, 2, DIM // 2, 16, 16).mean(2)
    assert rel_err(parts["mixed"], exact) < 1e-13


def test_gpsa_components_mix_with_the_gate():
    """gpsa: mixed == (1 - g) dynamic + g static with g = sigmoid(lambda) per head; static is fixed."""
    grid = (4, 5)
    mixer = build("gpsa", dim=DIM, grid=grid, heads=2)
    x1, x2 = rand_x(DIM, grid, batch=2, seed=1), rand_x(DIM, grid, batch=2, seed=2)
    p1, p2 = mixer.components(x1), mixer.components(x2)
    g = torch.sigmoid(mixer.gate_logit).view(1, -1, 1, 1)
    assert ((g > 0.01) & (g < 0.99)).all()
    assert rel_err(p1["mixed"], (1 - g) * p1["dynamic"] + g * p1["static"]) < 1e-14
    assert rel_err(mixer.affinity(x1), p1["mixed"]) == 0
    assert rel_err(p1["dynamic"], softmax_attention(mixer, x1, 2)) < 1e-13
    assert torch.equal(p1["static"], p2["static"]) and p1["static"].shape[0] == 1
    # the static part is a softmax over relative positions r = (dx, dy, dx^2 + dy^2)
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    dy, dx = ys.view(1, -1) - ys.view(-1, 1), xs.view(1, -1) - xs.view(-1, 1)
    r = torch.stack([dx, dy, dx**2 + dy**2], -1)
    logits = r @ mixer.pos_proj.weight.T + mixer.pos_proj.bias  # (N, N, M)
    assert rel_err(p1["static"][0], logits.permute(2, 0, 1).softmax(-1)) < 1e-13


def test_gpsa_positional_part_starts_local():
    """gpsa at initialisation (9 heads): head m's positional affinity peaks at its own offset."""
    torch.manual_seed(0)
    mixer = create("gpsa", dim=9, heads=9).double()
    grid = (7, 7)
    static = mixer.positional_affinity(grid)[0]  # (9, N, N)
    centre = 3 * 7 + 3
    for m in range(9):
        dy, dx = m // 3 - 1, m % 3 - 1
        assert static[m, centre].argmax().item() == (3 + dy) * 7 + (3 + dx)
