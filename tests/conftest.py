"""Shared helpers for the tests: float64 mixers with every parameter perturbed, and an error measure."""

from __future__ import annotations

import pytest
import torch

from unifiedctx.mixers import create

#: Options that make every registered mixer work on small grids whose sides are even.
SMALL_OPTIONS = {"heads": 2, "kernel_size": 3}
PER_MIXER = {"window": {"window_size": 2}, "relattn": {"max_distance": 2}}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``||a - b|| / ||b||`` (Frobenius); ``||a - b||`` when ``b`` is zero."""
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    scale = b.norm().item()
    diff = (a - b).norm().item()
    return diff / scale if scale > 0 else diff


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Overwrite every parameter with random values so no zero/one initialisation hides a bug."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)
    return module


def build(name: str, dim: int = 6, grid=(4, 4), seed: int = 0, **options) -> torch.nn.Module:
    """A float64 mixer ``name`` for ``dim`` channels with random parameters (see ``perturb``)."""
    opts = {**SMALL_OPTIONS, **PER_MIXER.get(name, {}), "grid": tuple(grid), **options}
    torch.manual_seed(seed)
    return perturb(create(name, dim=dim, **opts).double(), seed=seed)


def rand_x(dim: int, grid, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A random float64 input of shape ``(batch, dim, H, W)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, *grid, generator=gen, dtype=torch.float64)



@pytest.fixture
def close_figures():
    """Close every matplotlib figure a test opened (the viz tests use it for every test)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
