"""The contract, checked on every registered mixer with nothing in this file that names one.

The mixers come from ``available()``; the instances from each class's own ``example_options``;
kind, heads, components, mixing weights and static kernels are read from the instance. A mixer
added to the registry is checked here with no change to this file (``test_adding_a_mixer.py``
shows it). Everything is float64 with every parameter drawn at random (``conftest.perturb``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, rand_x, rel_err
from einops import reduce

from unifiedctx.mixers import REGISTRY, available, create
from unifiedctx.mixers.base import KINDS, AffinityMixer
from unifiedctx.mixers.local import local_affinity

GRIDS = [(4, 4), (5, 7), (3, 3)]


def examples(names=None):
    """``(name, options, grid)`` for every registered mixer, example and grid."""
    out = []
    for name in names or available():
        for grid in GRIDS:
            for options in REGISTRY[name].example_options(grid):
                out.append((name, options, grid))
    return out


def example_id(case) -> str:
    name, options, grid = case
    opts = ",".join(f"{k}={v}" for k, v in options.items() if k != "grid")
    return f"{name}[{opts}]@{grid[0]}x{grid[1]}"


def build(name, options, seed=0) -> AffinityMixer:
    torch.manual_seed(seed)
    return perturb(create(name, **options).double(), seed=seed)


def head_groups(a: torch.Tensor, groups: int) -> torch.Tensor:
    """``(B, M, N, N) -> (B, groups, N, N)``: the mean over consecutive blocks of M / groups heads."""
    assert a.shape[1] % groups == 0, (a.shape, groups)
    return reduce(a, "b (g r) n j -> b g n j", "mean", g=groups)


def check_contract(name, options, grid):
    """Every promise of ``AffinityMixer`` for one instance on one grid (see ``base.py``)."""
    mixer = build(name, options)
    assert isinstance(mixer, AffinityMixer)
    assert mixer.kind in KINDS
    assert isinstance(mixer.heads, int) and not isinstance(mixer.heads, bool) and mixer.heads >= 1
    x = rand_x(mixer.dim, grid, batch=2)
    b, n, m = 2, grid[0] * grid[1], mixer.heads

    # the two views agree, with the documented shapes
    values, affinity = mixer.values(x), mixer.affinity(x)
    assert values.dim() == 4 and values.shape[:3] == (b, m, n)
    assert values.shape[3] == mixer.value_dim  # what project() checks z against
    assert affinity.shape == (1 if mixer.kind == "static" else b, m, n, n)
    fast = mixer(x)
    assert fast.shape == x.shape and fast.dtype == torch.float64
    assert rel_err(fast, mixer.project(affinity @ values, grid)) < 1e-10
    assert rel_err(mixer.reference(x), fast) < 1e-10
    assert fast.std() > 1e-3

    # components: the parts of A at the resolution a person reads
    parts = mixer.components(x)
    weights = mixer.mixing_weights()
    if mixer.kind != "mixed":
        assert list(parts) == [mixer.kind] and torch.equal(parts[mixer.kind], affinity)
        assert weights is None
    else:
        assert set(parts) == {"dynamic", "static", "mixed"}
        m_view = parts["mixed"].shape[1]
        assert parts["dynamic"].shape == parts["mixed"].shape == (b, m_view, n, n)
        assert parts["static"].shape == (1, m_view, n, n)
        assert rel_err(parts["mixed"], head_groups(affinity, m_view)) < 1e-12
        # mixing_weights: the knob between the parts, as differentiable tensors
        assert weights is not None and set(weights) in ({"alpha", "beta"}, {"gate"})
        for w in weights.values():
            assert isinstance(w, torch.Tensor) and w.shape in ((), (m_view,)) and w.requires_grad
        if "gate" in weights:
            alpha, beta = 1 - weights["gate"], weights["gate"]
        else:
            alpha, beta = weights["alpha"], weights["beta"]
        alpha, beta = (w.reshape(-1, 1, 1) for w in (alpha, beta))  # () or per view head
        assert rel_err(parts["mixed"], alpha * parts["dynamic"] + beta * parts["static"]) < 1e-12

    # static_kernels rebuild the static part of A through the shared builder local_affinity
    kernels = mixer.static_kernels()
    if kernels is not None:
        assert "static" in parts
        assert kernels.dim() == 3 and kernels.shape[1] % 2 == 1 and kernels.shape[2] % 2 == 1
        assert kernels.requires_grad
        rebuilt = local_affinity(kernels, grid).unsqueeze(0)  # (1, M_s, N, N)
        assert rel_err(head_groups(rebuilt, parts["static"].shape[1]), parts["static"]) < 1e-12


@pytest.mark.parametrize("case", examples(), ids=example_id)
def test_every_registered_mixer_keeps_the_contract(case):
    check_contract(*case)


@pytest.mark.parametrize("name", available())
def test_every_mixer_says_how_to_build_a_tiny_one(name):
    """``example_options`` gives at least one instance, each with its ``dim``, that create() accepts."""
    for grid in GRIDS:
        options = REGISTRY[name].example_options(grid)
        assert options and all(isinstance(o, dict) and "dim" in o for o in options)


@pytest.mark.parametrize("name", available())
def test_reset_parameters_keeps_every_parameter_and_depends_only_on_the_rng(name):
    """reset_parameters returns None, keeps each parameter's name, shape and dtype, and two resets
    from the same RNG state give the same state (it re-initialises, it does not accumulate)."""
    mixer = build(name, REGISTRY[name].example_options((4, 4))[0])
    shapes = {k: (v.shape, v.dtype) for k, v in mixer.state_dict().items()}
    torch.manual_seed(5)
    assert mixer.reset_parameters() is None
    once = {k: v.clone() for k, v in mixer.state_dict().items()}
    torch.manual_seed(5)
    mixer.reset_parameters()
    assert {k: (v.shape, v.dtype) for k, v in mixer.state_dict().items()} == shapes
    assert all(torch.equal(once[k], v) for k, v in mixer.state_dict().items())


@pytest.mark.parametrize("case", examples(), ids=example_id)
def test_every_fast_path_is_differentiable_like_its_reference(case):
    """Gradients of forward and of project(A @ V) agree for x and every parameter."""
    name, options, grid = case
    mixer = build(name, options)
    x = rand_x(mixer.dim, grid, batch=1).requires_grad_(True)
    params = [x, *mixer.parameters()]
    fast = torch.autograd.grad((mixer(x) ** 2).sum(), params, allow_unused=True)
    slow = torch.autograd.grad((mixer.reference(x) ** 2).sum(), params, allow_unused=True)
    fast = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(fast, params)])
    slow = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(slow, params)])
    assert slow.norm() > 0 and rel_err(fast, slow) < 1e-10
