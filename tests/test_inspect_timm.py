"""``unifiedctx.inspect`` on timm's ViT Attention, MixerBlock and PoolFormer Pooling (skip without timm)."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, rand_x, rel_err

from unifiedctx.inspection import inspect

timm = pytest.importorskip("timm")

TOL = 1e-12


def rebuild(module, x, **kwargs):
    module = module.double().eval()
    view = inspect(module, x, **kwargs)
    with torch.no_grad():
        expected = module(x)
        got = view.project(view.affinity @ view.values)
    assert got.shape == expected.shape
    assert rel_err(got, expected) < TOL
    return view


def tokens(n=10, c=8, batch=2, seed=0):
    return torch.randn(batch, n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_vit_attention(fused, qk_norm):
    from timm.models.vision_transformer import Attention

    attn = Attention(8, num_heads=2, qkv_bias=True, qk_norm=qk_norm,
                     norm_layer=torch.nn.LayerNorm if qk_norm else None)
    attn.fused_attn = fused
    perturb(attn, std=0.4)
    x = tokens(n=1 + 9)
    view = rebuild(attn, x, grid=(3, 3), prefix_tokens=1)
    assert view.affinity.shape == (2, 2, 10, 10) and view.kind == "dynamic"
    assert view.grid_affinity().shape == (2, 2, 9, 9)
    torch.testing.assert_close(view.affinity.sum(-1), torch.ones(2, 2, 10, dtype=torch.float64))


def test_vit_attention_inside_a_model():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1,
                              pretrained=False).double().eval()
    block = model.blocks[0]
    x = tokens(n=1 + 16, c=192, batch=1)
    rebuild(block.attn, block.norm1(x).detach(), grid=(4, 4), prefix_tokens=1)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh"])
def test_mixer_block_exact_with_first_layer_bias(act):
    from timm.layers import get_act_layer
    from timm.models.mlp_mixer import MixerBlock

    block = perturb(MixerBlock(6, seq_len=12, act_layer=get_act_layer(act)), std=0.4)
    view = rebuild(block, tokens(n=12, c=6), grid=(3, 4))
    # one constant-1 key carries the input-dependent share of fc1's bias
    assert view.extra_keys == 1 and view.affinity.shape == (2, 6, 12, 13)
    assert view.values.shape == (2, 6, 13, 1)
    torch.testing.assert_close(view.values[..., -1, 0], torch.ones(2, 6, dtype=torch.float64))
    assert view.affinity[..., -1].abs().max() > 1e-3  # the bias column is not empty
    assert view.grid_affinity().shape == (2, 6, 12, 12)


def test_metaformer_pooling():
    from timm.models.metaformer import Pooling

    view = rebuild(Pooling(3), rand_x(4, (5, 6)))
    a = view.affinity[0, 0]
    assert view.affinity.shape == (1, 1, 30, 30)
    torch.testing.assert_close(a.sum(-1), torch.zeros(30, dtype=torch.float64), rtol=0, atol=1e-14)
    assert a[0, 0].item() == pytest.approx(1 / 4 - 1)  # corner: 4 neighbours in the window, minus x
