"""Rollout and the ERF on timm's networks, read by the one reader (random float64 weights, small sizes).

Proofs: on ViT / DeiT (class and distillation tokens) the rollout equals Abnar & Zuidema's formula
computed from timm's *own* attention maps (its unfused softmax, caught at ``attn_drop``); on Swin the
shifted-window affinities laid out on the grid rebuild the block's attention branch exactly; on every
family the ERF equals autograd's input gradient of the layer's output, taken here by hand. Skips without
timm in the main environment; ``make timm-test`` runs it with ``UNIFIEDCTX_REQUIRE_TIMM=1``.
"""

from __future__ import annotations

import os

import pytest
import torch
from einops import rearrange
from test_inspect_model_timm import build

from unifiedctx import context

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import timm  # the timm environment: no skipping
else:
    timm = pytest.importorskip("timm")

TOL = 1e-12


def vit(class_token: bool, distilled: bool = False):
    torch.manual_seed(3)
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    pool = "token" if class_token else "avg"
    tokens = {} if distilled else {"class_token": class_token, "global_pool": pool}
    model = timm.create_model(name, pretrained=False, img_size=32, patch_size=4, embed_dim=32, depth=3,
                              num_heads=2, num_classes=0, **tokens)
    return model.double().eval()


def timm_attention_maps(model, x) -> list[torch.Tensor]:
    """timm's own attention maps ``(B, M, n, n)``, layer by layer: its unfused path's softmax, as it
    enters ``attn_drop``."""
    maps, hooks = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, a, y: maps.append(a[0].detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return maps


def patch_embedding(model, grid, size) -> torch.Tensor:
    """``(N, H * W)``: token t takes pixel p of its patch in proportion to ``sum |W|`` (rows sum to 1)."""
    kernel = model.patch_embed.proj.weight.detach().abs().sum((0, 1))
    k = kernel.shape[0]
    embed = torch.zeros(*grid, size, size, dtype=torch.float64)
    for r in range(grid[0]):
        for c in range(grid[1]):
            embed[r, c, k * r:k * r + k, k * c:k * c + k] = kernel / kernel.sum()
    return embed.reshape(grid[0] * grid[1], size * size)


@pytest.mark.parametrize("class_token,distilled,prefix",
                         [(True, False, 1), (False, True, 2), (False, False, 0)])
def test_vit_rollout_is_abnar_zuidema_from_timms_own_attention_maps(class_token, distilled, prefix):
    model = vit(class_token, distilled)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = context.rollout(model, x)
    maps = timm_attention_maps(model, x)
    assert len(maps) == 3 and maps[0].shape == (2, 2, prefix + 64, prefix + 64)
    eye, tokens = torch.eye(prefix + 64, dtype=torch.float64), None
    for a in maps:  # Abnar & Zuidema: 0.5 mean_m A_m + 0.5 I, multiplied through depth
        layer = 0.5 * a.mean(1) + 0.5 * eye
        tokens = layer if tokens is None else layer @ tokens
    pixels = tokens[:, :, prefix:] @ patch_embedding(model, (8, 8), 32)  # prefix tokens come from no pixel
    assert ours.grid == (8, 8) and ours.layers == ["patch_embed.proj", "blocks.0.attn", "blocks.0",
                                                   "blocks.1.attn",
                                                   "blocks.1", "blocks.2.attn", "blocks.2"]
    err = (ours.maps - pixels[:, prefix:]).abs().max().item()
    assert err < TOL, err
    assert ours.prefix_maps.shape == (2, prefix, 1024)
    if prefix:
        assert (ours.prefix_maps - pixels[:, :prefix]).abs().max().item() < TOL
        cls = ours.prefix_map(0, index=1).reshape(-1)
        assert torch.allclose(cls, pixels[1, 0], atol=TOL, rtol=0)
        assert float(cls.sum()) < 1  # the class token also takes from itself, which no pixel reaches


def test_swin_shifted_windows_on_the_grid_rebuild_the_attention_branch():
    model, x = build("swin")
    graph = context.context_graph(model, x)
    assert not graph.unread
    nodes = {n.name: n for n in graph.nodes}
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, b in enumerate(model.layers[0].blocks)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for i, block in enumerate(model.layers[0].blocks):
        step = nodes[f"layers.0.blocks.{i}.attn"].step  # read at timm's fused SDPA, laid out by its block
        windows, local = step.windows
        a = windows.on_grid(local)  # (B, M, N, N) on the whole 14 x 14 grid
        assert a.shape == (1, 2, 196, 196)
        with torch.no_grad():
            u = block.norm1(inputs[i])  # (B, H, W, C)
            want = block._attn(u)
            qkv = block.attn.qkv(rearrange(u, "b h w c -> b (h w) c"))
            v = rearrange(qkv, "b n (three m d) -> three b m n d", three=3, m=2)[2]
            got = block.attn.proj(rearrange(a @ v, "b m n d -> b n (m d)")).reshape(want.shape)
        assert (got - want).abs().max().item() < TOL
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]))
        # the block-sparse product is the dense one
        t = torch.rand(1, 3, 196, dtype=torch.float64)
        for signed in (False, True):
            assert (step.right(t, "mean", signed) - t @ step.matrix("mean", signed)).abs().max() < 1e-14
    assert tuple(model.layers[0].blocks[1].shift_size) == (3, 3)  # the second block is the shifted one


#: key -> (layer, its output layout, prefix tokens, the output grid)
ERF_LAYERS = {
    "deit_distilled": ("blocks.0", "tokens", 2, (4, 4)),
    "mixer": ("blocks.1", "tokens", 0, (4, 4)),
    "poolformer": ("stages.1.blocks.0", "nchw", 0, (8, 8)),
    "convnext": ("stages.1.blocks.0", "nchw", 0, (8, 8)),
    "resnet": ("layer2.0", "nchw", 0, (8, 8)),
    "swin": ("layers.0.blocks.1", "nhwc", 0, (14, 14)),
    "convit": ("blocks.2", "tokens", 1, (4, 4)),
}


def autograd_erf(model, x, layer, layout, prefix, grid, query):
    xr = x.clone().requires_grad_(True)
    out = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, y: out.setdefault("y", y))
    model(xr)
    hook.remove()
    y, (r, c) = out["y"], query
    picked = {"nchw": lambda: y[:, :, r, c], "nhwc": lambda: y[:, r, c, :],
              "tokens": lambda: y[:, prefix + r * grid[1] + c, :]}[layout]()
    (grad,) = torch.autograd.grad(picked.sum(), xr)
    field = grad.abs().sum(1)
    return field / field.sum((1, 2), keepdim=True)


@pytest.mark.parametrize("key", list(ERF_LAYERS))
def test_erf_is_autograds_input_gradient_on_every_family(key):
    model, x = build(key)
    layer, layout, prefix, grid = ERF_LAYERS[key]
    for query in [(1, 2), (grid[0] - 1, 0)]:
        want = autograd_erf(model, x, layer, layout, prefix, grid, query)
        got = context.effective_receptive_field(model, x, layer, query=query)
        assert (got - want).abs().max().item() < TOL
        data = context.erf_maps(model, x, layer, query=query)
        assert data["grid"] == grid and data["query"] == query


@pytest.mark.parametrize("key", list(ERF_LAYERS))
def test_rollout_covers_every_family(key):
    model, x = build(key)
    layer, _, prefix, grid = ERF_LAYERS[key]
    r = context.rollout(model, x, upto=layer)
    assert r.grid == grid and r.maps.shape == (1, grid[0] * grid[1], x.shape[-1] ** 2) and not r.skipped
    sums = r.maps.sum(-1)
    assert bool((r.maps >= 0).all())
    if prefix or key == "convit":  # grid tokens also take from prefix tokens, which no pixel reaches
        assert bool((sums < 1).all()) and bool((sums > 0.5).all())
    else:
        torch.testing.assert_close(sums, torch.ones_like(sums))
    data = context.rollout_maps(model, x, layer, query=(1, 1))
    assert data["grid"] == grid and abs(data["map"].sum() - float(r.map((1, 1)).sum())) < 1e-12
    # the whole network too, up to its last token map
    full = context.rollout(model, x)
    assert full.layers[-1] != full.layers[0]


def test_blocks_are_read_with_their_residual_structure_from_the_forward():
    model, x = build("resnet")
    graph = context.context_graph(model, x)
    names = graph.names()
    assert names[:3] == ["conv1", "maxpool", "layer1.0.conv1"]
    join = graph.nodes[1 + names.index("layer2.0")]  # conv1 (stride 2) -> conv2 beside the strided downsample
    assert join.kind == "join"
    assert sorted(graph.nodes[p].name for p in join.parents) == ["layer2.0.conv2", "layer2.0.downsample.0"]
    assert join.tokens.grid == (8, 8)
    upto_conv = context.rollout(model, x, upto="layer2.0.conv2")  # that call itself, before the sum
    assert upto_conv.layers[-1] == "layer2.0.conv2"
    model, x = build("convnext")
    graph = context.context_graph(model, x)
    join = next(n for n in graph.nodes if n.name == "stages.0.blocks.0")
    gamma = float(model.stages[0].blocks[0].gamma.detach().double().mean())
    assert join.kind == "join" and len(join.scales) == 2 and 1.0 in join.scales  # the shortcut: factor 1
    assert [s for s in join.scales if s != 1.0] == [pytest.approx(gamma)]  # the branch: its layer scale
