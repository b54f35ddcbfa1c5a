"""Window attention on every grid: padded to a multiple of the window, padded keys masked out.

Proofs in float64 on grids the window does not divide (6x6 and 5x7 with windows 4 and 3) and on
a grid smaller than the window (3x3 with window 7): the fast path equals ``project(A @ V)``, A is
exactly the block softmax over the real tokens of each window (rows sum to 1), and both equal an
independent implementation written here: ``nn.MultiheadAttention`` run on the real tokens of
each window, one window at a time.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build, rand_x, rel_err
from torch import nn

DIM, HEADS = 6, 2
CASES = [((6, 6), 4), ((5, 7), 3), ((5, 7), 4), ((3, 3), 7), ((5, 7), 7), ((4, 4), 2)]
IDS = [f"{h}x{w}-window{s}" for (h, w), s in CASES]


def torch_mha(mixer) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` carrying the mixer's qkv and proj weights."""
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(mixer.qkv.weight)
        mha.in_proj_bias.copy_(mixer.qkv.bias)
        mha.out_proj.weight.copy_(mixer.proj.weight)
        mha.out_proj.bias.copy_(mixer.proj.bias)
    return mha.eval()


def tiles(grid, s):
    """The windows as (row slice, column slice): s x s tiles from the top-left, cut at the border,
    with each side first clamped to the grid."""
    h, w = grid
    sh, sw = min(s, h), min(s, w)
    return [(slice(y, min(y + sh, h)), slice(x, min(x + sw, w)))
            for y in range(0, h, sh) for x in range(0, w, sw)]


def windowed_mha(mixer, x, s):
    """Attention computed window by window over each window's real tokens only."""
    mha = torch_mha(mixer)
    out = torch.zeros_like(x)
    for rows, cols in tiles(x.shape[-2:], s):
        patch = x[:, :, rows, cols]
        t = patch.flatten(2).transpose(1, 2)
        y = mha(t, t, t, need_weights=False)[0]
        out[:, :, rows, cols] = y.transpose(1, 2).reshape(patch.shape)
    return out


@pytest.mark.parametrize(("grid", "s"), CASES, ids=IDS)
def test_window_on_any_grid_equals_the_affinity_view_and_mha_per_window(grid, s):
    mixer = build("window", dim=DIM, heads=HEADS, window_size=s)
    x = rand_x(DIM, grid, batch=2)
    fast = mixer(x)
    slow = mixer.project(mixer.affinity(x) @ mixer.values(x), grid)
    assert fast.shape == x.shape
    assert rel_err(fast, slow) < 1e-12
    assert rel_err(fast, windowed_mha(mixer, x, s)) < 1e-12


@pytest.mark.parametrize(("grid", "s"), CASES, ids=IDS)
def test_window_affinity_is_the_block_softmax_over_real_tokens(grid, s):
    """A[i, j] > 0 exactly when i and j share a window, rows sum to 1, and each block is MHA's weights."""
    mixer = build("window", dim=DIM, heads=HEADS, window_size=s)
    x = rand_x(DIM, grid, batch=2)
    a = mixer.affinity(x)
    n = grid[0] * grid[1]
    assert a.shape == (2, HEADS, n, n)
    assert torch.allclose(a.sum(-1), torch.ones(2, HEADS, n, dtype=a.dtype), rtol=0, atol=1e-13)
    window_of = torch.empty(grid, dtype=torch.long)
    for index, (rows, cols) in enumerate(tiles(grid, s)):
        window_of[rows, cols] = index
    window_of = window_of.view(-1)
    same = window_of.view(-1, 1) == window_of.view(1, -1)
    assert (a[..., ~same] == 0).all() and a[..., same].min() > 0
    mha = torch_mha(mixer)
    for index, (rows, cols) in enumerate(tiles(grid, s)):
        tokens = (window_of == index).nonzero().view(-1)
        t = x[:, :, rows, cols].flatten(2).transpose(1, 2)
        _, weights = mha(t, t, t, need_weights=True, average_attn_weights=False)
        assert rel_err(a[..., tokens[:, None], tokens[None, :]], weights) < 1e-12


def test_a_window_larger_than_the_grid_is_global_attention():
    """3x3 with window 7 (and 5x7 with window 7): one window, so window == attention with the same weights."""
    window = build("window", dim=DIM, heads=HEADS, window_size=7)
    attention = build("attention", dim=DIM, heads=HEADS)
    attention.load_state_dict(window.state_dict())
    for grid in [(3, 3), (5, 7)]:
        x = rand_x(DIM, grid, batch=2)
        assert window.window(grid) == grid
        assert rel_err(window(x), attention(x)) < 1e-12


def test_window_is_clamped_per_side_and_the_grid_padded():
    """The window per side is min(window_size, side); 5x7 with window 4 has 2 x 2 windows."""
    mixer = build("window", dim=DIM, heads=HEADS, window_size=4)
    assert mixer.window((5, 7)) == (4, 4) and mixer.window((3, 9)) == (3, 4)
    index = mixer.window_index((5, 7)).view(5, 7)
    assert index.unique().tolist() == [0, 1, 2, 3]
    assert index[0, 0] == index[3, 3] == 0 and index[4, 6] == 3 and index[0, 4] == 1 and index[4, 0] == 2


def test_padded_fast_path_is_differentiable_like_the_reference():
    """Gradients through the masked, padded windows match the dense reference."""
    grid = (5, 7)
    mixer = build("window", dim=DIM, heads=HEADS, window_size=3)
    x = rand_x(DIM, grid, batch=1).requires_grad_(True)
    params = [x, *mixer.parameters()]
    fast = torch.autograd.grad((mixer(x) ** 2).sum(), params)
    slow = torch.autograd.grad((mixer.reference(x) ** 2).sum(), params)
    for g_fast, g_slow in zip(fast, slow):
        assert rel_err(g_fast, g_slow) < 1e-10
