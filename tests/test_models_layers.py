"""The block and its layers compute what their docstrings say; presets have the stated structure."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from unifiedctx.mixers import Container, DepthwiseConv
from unifiedctx.models import Block, StageSpec, create_model
from unifiedctx.models.layers import DropPath, LayerNorm2d, PatchEmbed, make_norm


def test_layernorm2d_is_layernorm_over_channels_of_each_token():
    norm = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(2, 6, 3, 5)
    ref = nn.functional.layer_norm(rearrange(x, "b c h w -> b h w c"), (6,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), rearrange(ref, "b h w c -> b c h w"))


def test_make_norm_kinds():
    assert isinstance(make_norm("batch", 4), nn.BatchNorm2d)
    group = make_norm("group", 4)
    assert isinstance(group, nn.GroupNorm) and group.num_groups == 1
    assert isinstance(make_norm("none", 4), nn.Identity) and isinstance(make_norm(None, 4), nn.Identity)


@pytest.mark.parametrize(("kernel", "stride", "size"),
                         [(4, 4, 32), (7, 4, 32), (3, 2, 12), (3, 1, 5), (16, 16, 48)])
def test_patch_embed_divides_the_size_by_the_stride(kernel, stride, size):
    embed = PatchEmbed(3, 5, stride, kernel)
    assert embed(torch.randn(1, 3, size, size + stride)).shape == (1, 5, size // stride, size // stride + 1)


def test_patch_embed_refuses_kernels_that_change_the_grid():
    with pytest.raises(ValueError, match="embed_kernel=2"):
        PatchEmbed(3, 5, stride=4, kernel=2)
    with pytest.raises(ValueError, match="embed_kernel=2 with stride=1"):
        PatchEmbed(3, 5, stride=1, kernel=2)


def test_drop_path():
    drop = DropPath(0.5)
    x = torch.ones(2000, 1, 1, 1)
    kept = drop.train()(x)
    assert set(kept.unique().tolist()) == {0.0, 2.0} and abs(kept.mean().item() - 1) < 0.1
    assert torch.equal(drop.eval()(x), x)


def test_block_is_pos_then_two_residual_branches():
    """y = x' + g2 * mlp(n2(x' + g1 * mixer(n1(x')))) with x' = x + pos(x)."""
    torch.manual_seed(0)
    spec = StageSpec(dim=8, depth=1, stride=1, mixer="container",
                     mixer_options={"heads": 2, "kernel_size": 3}, mlp_ratio=2, norm="batch", pos_conv=True,
                     layer_scale=0.3)
    block = Block(spec).eval()
    for p in block.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 8, 4, 4)
    x1 = x + block.pos(x)
    x2 = x1 + block.scale1.gamma.view(1, -1, 1, 1) * block.mixer(block.norm1(x1))
    y = x2 + block.scale2.gamma.view(1, -1, 1, 1) * block.mlp(block.norm2(x2))
    torch.testing.assert_close(block(x), y)


def test_container_light_has_the_released_structure():
    """Stages 1-3: dwconv 5x5 between 1x1 convs; stage 4: Container, 16 heads of 32; every block
    has a depthwise 3x3 positional conv and BatchNorms; patch embeds are k = stride convs + LN."""
    with torch.device("meta"):
        model = create_model("container_light")
    for i, stage in enumerate(model.stages):
        assert stage.embed.proj.kernel_size == stage.embed.proj.stride == ((4, 4) if i == 0 else (2, 2))
        assert isinstance(stage.embed.norm, LayerNorm2d)
        assert stage.pos_embed is None
        for block in stage.blocks:
            assert block.pos.kernel_size == (3, 3) and block.pos.groups == block.pos.in_channels
            assert isinstance(block.norm1, nn.BatchNorm2d) and isinstance(block.norm2, nn.BatchNorm2d)
            if i < 3:
                assert isinstance(block.mixer, DepthwiseConv) and block.mixer.kernel_size == 5
                assert isinstance(block.mixer.proj_in, nn.Conv2d)
            else:
                assert isinstance(block.mixer, Container)
                assert (block.mixer.attention_heads, block.mixer.head_dim) == (16, 32)
    assert isinstance(model.stages[-1].norm, nn.BatchNorm2d)
    assert [s.blocks[0].mlp.fc1.out_channels // s.blocks[0].mlp.fc1.in_channels for s in model.stages] \
        == [8, 8, 4, 4]
