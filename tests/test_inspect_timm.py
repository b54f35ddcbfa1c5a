"""``unifiedctx.inspect`` on timm's layers: ViT Attention, MixerBlock, PoolFormer Pooling, Swin's
WindowAttention, ConViT's GPSA and MHSA. They skip without timm in the main environment; ``make test``
runs them in ``.venv-timm`` with ``UNIFIEDCTX_REQUIRE_TIMM=1``, where a missing timm is a failure."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import perturb, rand_x, rel_err

from unifiedctx.inspection import inspect

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import timm  # noqa: F401  (the timm environment: no skipping)
else:
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


def test_swin_window_attention_with_its_shift_mask():
    from timm.models.swin_transformer import SwinTransformerBlock

    block = SwinTransformerBlock(8, input_resolution=(4, 4), num_heads=2, window_size=2, shift_size=1)
    block = perturb(block, std=0.4).double().eval()
    assert block.attn_mask is not None  # shifted windows: pairs from different regions are masked
    x = tokens(n=16, c=8, batch=2)  # 2 images, 4 windows of 2 x 2 each
    windows = x.view(2, 2, 2, 2, 2, 8).permute(0, 1, 3, 2, 4, 5).reshape(8, 4, 8)
    mask = block.attn_mask.double()
    view = inspect(block.attn, windows, mask=mask)
    with torch.no_grad():
        expected = block.attn(windows, mask=mask)
        assert rel_err(view.output(), expected) < TOL
    assert view.grid == (2, 2) and view.affinity.shape == (8, 2, 4, 4)
    torch.testing.assert_close(view.affinity.sum(-1), torch.ones(8, 2, 4, dtype=torch.float64))
    blocked = mask.repeat(2, 1, 1).unsqueeze(1).expand_as(view.affinity) < 0
    assert blocked.any() and view.affinity[blocked].max() < 1e-30  # exp(-100) of the softmax
    unshifted = inspect(block.attn, windows)
    assert not unshifted.notes["shifted"] and (unshifted.affinity - view.affinity).abs().max() > 1e-3


def test_convit_gpsa_mixes_content_and_position():
    from timm.models.convit import GPSA

    layer = perturb(GPSA(8, num_heads=2, qkv_bias=True), std=0.4).double().eval()
    with torch.no_grad():
        layer.gating_param.copy_(torch.tensor([-1.0, 2.0]))
    view = rebuild(layer, tokens(n=9, c=8))
    assert view.kind == "mixed" and view.grid == (3, 3)
    g = torch.sigmoid(layer.gating_param).view(1, -1, 1, 1)
    parts = view.components
    torch.testing.assert_close(view.affinity, (1 - g) * parts["dynamic"] + g * parts["static"])
    torch.testing.assert_close(view.affinity.sum(-1), torch.ones(2, 2, 9, dtype=torch.float64))
    assert parts["static"].shape == (1, 2, 9, 9)  # positional: the same for every image


def test_convit_mhsa_with_class_token():
    from timm.models.convit import MHSA

    view = rebuild(perturb(MHSA(8, num_heads=2, qkv_bias=True), std=0.4), tokens(n=1 + 9, c=8), grid=(3, 3),
                   prefix_tokens=1)
    assert view.grid_affinity().shape == (2, 2, 9, 9)


def test_convnext_depthwise_7x7_and_resnet_3x3():
    from timm.models.convnext import ConvNeXtBlock
    from timm.models.resnet import BasicBlock

    block = perturb(ConvNeXtBlock(6, kernel_size=7), std=0.3).double().eval()
    view = rebuild(block.conv_dw, rand_x(6, (9, 9)))
    w = block.conv_dw.weight[:, 0]
    row = view.affinity[0, :, 4 * 9 + 4].view(6, 9, 9)  # the centre token: its row is the whole kernel
    torch.testing.assert_close(row[:, 1:8, 1:8], w, rtol=0, atol=0)
    assert view.affinity[0, :, 0].view(6, 9, 9)[:, 4:, :].abs().max() == 0  # nothing outside the window
    res = perturb(BasicBlock(4, 4), std=0.3).double().eval()
    view = rebuild(res.conv2, rand_x(4, (5, 5)))
    assert view.heads == 9 and view.module_type == "Conv2d (full, im2col)"
