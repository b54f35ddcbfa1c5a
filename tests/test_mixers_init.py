"""Each mixer owns its own initialisation (``reset_parameters``), and model builders keep it."""

from __future__ import annotations

import math

import torch
from conftest import build

from unifiedctx.mixers import GatedPositionalAttention, create
from unifiedctx.models import create_model


def local_pos_weights(heads: int, strength: float) -> torch.Tensor:
    """ConViT's local init of W_pos, written out here: head m at offset (dy, dx) of a square grid."""
    side = math.ceil(math.sqrt(heads))
    centre = (side - 1) / 2
    rows = [[2 * (m % side - centre), 2 * (m // side - centre), -1.0] for m in range(heads)]
    return strength * torch.tensor(rows, dtype=torch.float64)


def test_gpsa_reset_restores_the_local_init_after_any_change():
    mixer = build("gpsa", dim=8, heads=4, locality_strength=1.5)  # every parameter random
    mixer.reset_parameters()
    assert torch.equal(mixer.pos_proj.weight, local_pos_weights(4, 1.5))
    assert torch.equal(mixer.pos_proj.bias, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(mixer.gate_logit, torch.ones(4, dtype=torch.float64))


def test_container_reset_sets_the_knob_even():
    for mixing, expected in [("sigmoid", {"alpha": 0.5, "beta": 0.5}),
                             ("independent", {"alpha": 0.5, "beta": 0.5})]:
        mixer = build("container", dim=6, heads=2, mixing=mixing)
        assert mixer.mixing_weights()["alpha"].item() != 0.5  # perturbed
        mixer.reset_parameters()
        assert {k: w.item() for k, w in mixer.mixing_weights().items()} == expected
    fresh = create("container", dim=6, heads=2)
    assert fresh.mix_logit.item() == 0.0


def test_relattn_reset_draws_a_small_table():
    """relattn's table is redrawn with std .02 (Swin's trunc_normal_(std=.02)), whatever it held."""
    mixer = build("relattn", dim=8, heads=2, max_distance=7)  # perturbed: std 0.5
    torch.manual_seed(0)
    mixer.reset_parameters()
    assert 0.015 < mixer.rel_bias.std().item() < 0.025 and mixer.rel_bias.abs().max() < 0.1


def test_model_init_keeps_each_mixers_own_init():
    """create_model runs trunc_normal over every Linear, GPSA's pos_proj included, then each mixer's
    reset_parameters: the positional part is local again, and the other Linear layers are generic."""
    torch.manual_seed(0)
    model = create_model("deit_tiny_nano", mixer="gpsa")
    mixers = [m for m in model.modules() if isinstance(m, GatedPositionalAttention)]
    assert mixers
    for mixer in mixers:
        expected = local_pos_weights(mixer.heads, mixer.locality_strength).float()
        assert torch.equal(mixer.pos_proj.weight, expected)
        assert torch.equal(mixer.pos_proj.bias, torch.zeros(mixer.heads))
        assert torch.equal(mixer.qkv.bias, torch.zeros_like(mixer.qkv.bias))  # generic: zero bias
        assert 0.01 < mixer.qkv.weight.std() < 0.03                            # generic: std .02
