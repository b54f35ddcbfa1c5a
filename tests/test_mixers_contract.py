"""The contract of every registered mixer: the fast path equals ``project(affinity(x) @ values(x))``.

Each mixer is built in float64 with every parameter drawn at random (``conftest.build``), so a
zero-initialised mixing logit or bias cannot hide a mistake, and is checked at square and
non-square grids (the window mixer uses ``window_size=2`` so that every grid here divides).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build, rand_x, rel_err

from unifiedctx.mixers import available
from unifiedctx.mixers.base import KINDS

GRIDS = [(4, 4), (6, 6), (4, 8), (8, 6)]
DIM = 6

#: (name, extra options) for the variants the registry defaults do not reach.
VARIANTS = [(name, {}) for name in available()] + [
    ("tokenmlp", {"hidden": 5}),
    ("container", {"mixing": "independent"}),
    ("pool", {"subtract_input": True}),
    ("dwconv", {"proj": True}),
    ("dwconv", {"kernel_size": 5}),
    ("conv", {"kernel_size": 5}),
]
IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in VARIANTS]


def test_registry_is_the_nine_documented_mixers():
    """The registry holds exactly the mixers the package documents, in its table order."""
    assert available() == ["dwconv", "conv", "pool", "tokenmlp", "attention", "container",
                           "window", "relattn", "gpsa"]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
def test_fast_path_equals_affinity_view(name, opts, grid):
    """``forward(x) == project(affinity(x) @ values(x))`` in float64, with the documented shapes."""
    mixer = build(name, dim=DIM, grid=grid, **opts)
    x = rand_x(DIM, grid, batch=2)
    b, n = x.shape[0], grid[0] * grid[1]

    values = mixer.values(x)
    affinity = mixer.affinity(x)
    m = mixer.heads
    assert values.dim() == 4 and values.shape[:3] == (b, m, n), values.shape
    expected_batch = 1 if mixer.kind == "static" else b
    assert affinity.shape == (expected_batch, m, n, n), affinity.shape

    fast = mixer(x)
    slow = mixer.project(affinity @ values, grid)
    assert fast.shape == (b, DIM, *grid)
    assert fast.dtype == torch.float64
    assert rel_err(fast, slow) < 1e-10
    # ``reference`` is the same computation, spelled once in the base class.
    assert rel_err(mixer.reference(x), slow) < 1e-12
    # A non-trivial check: the output is not a constant or zero.
    assert fast.std() > 1e-3


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
def test_kind_and_heads(name, opts):
    """``kind`` is one of the three documented kinds and ``heads`` is the M of the affinity."""
    grid = (4, 4)
    mixer = build(name, dim=DIM, grid=grid, **opts)
    assert mixer.kind in KINDS
    x = rand_x(DIM, grid, batch=1)
    assert mixer.affinity(x).shape[1] == mixer.heads
    assert mixer.values(x).shape[1] == mixer.heads


EXPECTED_KIND = {
    "dwconv": "static", "conv": "static", "pool": "static", "tokenmlp": "static",
    "attention": "dynamic", "window": "dynamic", "relattn": "dynamic",
    "container": "mixed", "gpsa": "mixed",
}
EXPECTED_HEADS = {  # for DIM = 6 channels, heads = 2, kernel_size = 3
    "dwconv": DIM, "conv": 9, "pool": 1, "tokenmlp": 1, "attention": 2, "window": 2,
    "relattn": 2, "container": DIM, "gpsa": 2,
}


@pytest.mark.parametrize("name", available())
def test_kind_and_heads_match_the_table(name):
    """Each mixer reports the kind and number of heads that the design table gives it."""
    mixer = build(name, dim=DIM)
    assert mixer.kind == EXPECTED_KIND[name]
    assert mixer.heads == EXPECTED_HEADS[name]


def test_gated_token_mlp_is_dynamic_with_one_head_per_channel():
    """``mixer`` with ``hidden=`` is input-dependent and has one affinity per channel."""
    mixer = build("tokenmlp", dim=DIM, hidden=5)
    assert mixer.kind == "dynamic" and mixer.heads == DIM


@pytest.mark.parametrize("name", available())
def test_project_without_a_grid_uses_the_last_input(name):
    """``project`` folds tokens onto the grid of the last input when no grid is given."""
    grid = (4, 8) if name != "tokenmlp" else (4, 4)
    mixer = build(name, dim=DIM, grid=grid)
    x = rand_x(DIM, grid, batch=1)
    z = mixer.affinity(x) @ mixer.values(x)
    assert rel_err(mixer.project(z), mixer.project(z, grid)) == 0.0


@pytest.mark.parametrize("name", [n for n in available() if n != "tokenmlp"])
def test_one_mixer_serves_many_grids(name):
    """Every mixer except MLP-Mixer's works on any grid: the same module, two sizes in a row."""
    mixer = build(name, dim=DIM)
    for grid in [(4, 4), (6, 8)]:
        x = rand_x(DIM, grid, batch=1)
        assert rel_err(mixer(x), mixer.reference(x)) < 1e-10


@pytest.mark.parametrize(("name", "opts"), VARIANTS, ids=IDS)
def test_fast_path_is_differentiable_like_the_reference(name, opts):
    """Gradients of the fast path and of the reference agree for every parameter and for x."""
    grid = (4, 4)
    mixer = build(name, dim=DIM, grid=grid, **opts)
    x = rand_x(DIM, grid, batch=1).requires_grad_(True)
    weights = torch.randn(1, DIM, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [p for p in mixer.parameters()]

    fast = torch.autograd.grad((mixer(x) * weights).sum(), [x, *params], allow_unused=True)
    slow = torch.autograd.grad((mixer.reference(x) * weights).sum(), [x, *params], allow_unused=True)
    zero = torch.zeros(0, dtype=torch.float64)
    fast = [zero.new_zeros(t.shape) if g is None else g for g, t in zip(fast, [x, *params])]
    slow = [zero.new_zeros(t.shape) if g is None else g for g, t in zip(slow, [x, *params])]
    flat_fast = torch.cat([g.reshape(-1) for g in fast])
    flat_slow = torch.cat([g.reshape(-1) for g in slow])
    assert flat_slow.norm() > 0
    assert rel_err(flat_fast, flat_slow) < 1e-10
    # Per tensor too, with a floor at the overall scale: a gradient that is zero in exact
    # arithmetic (a softmax-invariant bias) is only zero to rounding in both paths.
    floor = flat_slow.norm().item()
    for g_fast, g_slow in zip(fast, slow):
        assert (g_fast - g_slow).norm().item() < 1e-10 * max(g_slow.norm().item(), floor)
