"""Hugging Face and torchvision networks read exactly (issue 26), small random float64 models built from
their configs (no downloads).

Each proof is against what the model itself gives: the attention probabilities it returns
(``output_attentions=True`` on Hugging Face, ``need_weights=True`` on torchvision's
``nn.MultiheadAttention``), the block's own output rebuilt from our windowed affinities (Swin), Abnar &
Zuidema's rollout written out here from the model's own attentions, and autograd's input gradient for the
ERF. ``make timm-test`` runs it in ``.venv-timm`` with ``UNIFIEDCTX_REQUIRE_TIMM=1``, where a missing
``transformers`` or ``torchvision`` is a failure, not a skip.
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from einops import rearrange

from unifiedctx import context, inspect_model

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import torchvision  # the timm environment: no skipping
    import transformers
else:
    torchvision = pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")

TOL = 1e-12
T = transformers
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=8)


def hf(cls, config, impl="eager", **options):
    cfg = config(**options)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return perturbed(cls(cfg))


def perturbed(model):
    """float64, eval, every weight random (so no zero initialisation, e.g. a layer scale, hides a bug)."""
    model = model.double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


#: key -> (build(impl), image side, prefix tokens, patch size) of the plain-attention transformers
VITS = {
    "hf_vit": (lambda impl: hf(T.ViTForImageClassification, T.ViTConfig, impl, num_labels=3, **SMALL), 1, 8),
    "hf_deit": (lambda impl: hf(T.DeiTForImageClassificationWithTeacher, T.DeiTConfig, impl, num_labels=3,
                                **SMALL), 2, 8),
    "hf_dinov2": (lambda impl: hf(T.Dinov2Model, T.Dinov2Config, impl, **SMALL), 1, 8),
    "hf_dinov2_registers": (lambda impl: hf(T.Dinov2WithRegistersModel, T.Dinov2WithRegistersConfig, impl,
                                            num_register_tokens=3, **SMALL), 4, 8),
    "hf_beit": (lambda impl: hf(T.BeitModel, T.BeitConfig, impl, use_relative_position_bias=True,
                                layer_scale_init_value=0.3, **SMALL), 1, 8),
}


def image(side=32, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, side, side, dtype=torch.float64, generator=gen)


def attention_nodes(graph):
    return [n for n in graph.nodes if n.kind == "map" and n.step.window is None]


def patch_embedding(conv, grid, size) -> torch.Tensor:
    """``(N, H * W)``: token t takes pixel p of its patch in proportion to ``sum |W|`` (rows sum to 1)."""
    kernel = conv.weight.detach().abs().sum((0, 1))
    k = kernel.shape[0]
    embed = torch.zeros(*grid, size, size, dtype=torch.float64)
    for r in range(grid[0]):
        for c in range(grid[1]):
            embed[r, c, k * r:k * r + k, k * c:k * c + k] = kernel / kernel.sum()
    return embed.reshape(grid[0] * grid[1], size * size)


def abnar_zuidema(attentions, prefix, embed) -> torch.Tensor:
    """The paper's rollout from the model's own attentions: ``prod_l (0.5 mean_m A_l + 0.5 I)``, then the
    patch embedding (prefix tokens come from no pixel)."""
    n = attentions[0].shape[-1]
    eye, tokens = torch.eye(n, dtype=torch.float64), None
    for a in attentions:
        layer = 0.5 * a.mean(1) + 0.5 * eye
        tokens = layer if tokens is None else layer @ tokens
    return tokens[:, :, prefix:] @ embed


@pytest.mark.parametrize("key", list(VITS))
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_attention_is_read_at_its_call_and_rollout_is_abnar_zuidema(key, impl):
    build, prefix, patch = VITS[key]
    model, x = build(impl), image()
    with torch.no_grad():
        own = build("eager")(x, output_attentions=True).attentions  # the model's own probabilities
    graph = context.context_graph(model, x)
    assert not graph.unread
    nodes = attention_nodes(graph)
    assert len(nodes) == len(own) == 3
    # Hugging Face's eager softmax runs in float32 (then cast back): the SDPA read, all float64, agrees with
    # it to float32's precision; the eager read is its very tensor
    tol = TOL if impl == "eager" else 1e-6
    for node, a in zip(nodes, own):
        assert node.tokens.prefix == prefix and node.tokens.grid == (4, 4)
        assert (node.step.affinity - a).abs().max().item() < tol  # sdpa: Q, K, scale, bias at the call
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    want = abnar_zuidema(own, prefix, patch_embedding(conv, (4, 4), 32))
    ours = context.rollout(model, x)
    tol = 1e-10 if impl == "eager" else 1e-6  # eager: the float32 rows renormalised, to 1e-8 relative
    assert (ours.maps - want[:, prefix:]).abs().max().item() < tol
    assert (ours.prefix_maps - want[:, :prefix]).abs().max().item() < tol


def tv_vit():
    torch.manual_seed(0)
    return perturbed(torchvision.models.VisionTransformer(32, 8, 3, 2, 32, 64, num_classes=3))


def test_torchvision_vit_attention_is_need_weights_and_rollout_is_abnar_zuidema():
    model, x = tv_vit(), image()
    inputs = {}
    layers = list(model.encoder.layers)
    hooks = [blk.self_attention.register_forward_pre_hook(lambda m, a, kw, i=i: inputs.__setitem__(i, a[0]),
                                                          with_kwargs=True) for i, blk in enumerate(layers)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    own = []
    with torch.no_grad():
        for i, blk in enumerate(layers):
            u = inputs[i]
            own.append(blk.self_attention(u, u, u, need_weights=True, average_attn_weights=False)[1])
    graph = context.context_graph(model, x)
    nodes = attention_nodes(graph)
    assert not graph.unread and len(nodes) == 3
    for node, a in zip(nodes, own):
        assert node.tokens.prefix == 1 and (node.step.affinity - a).abs().max().item() < TOL
    want = abnar_zuidema(own, 1, patch_embedding(model.conv_proj, (4, 4), 32))
    ours = context.rollout(model, x)
    assert (ours.maps - want[:, 1:]).abs().max().item() < TOL
    assert (ours.prefix_maps - want[:, :1]).abs().max().item() < TOL


def hf_swin(impl="eager", v2=False):
    model, config = (T.Swinv2Model, T.Swinv2Config) if v2 else (T.SwinModel, T.SwinConfig)
    return hf(model, config, impl, image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
              window_size=4)


def tv_swin(v2=False):
    torch.manual_seed(0)
    sw = torchvision.models.swin_transformer
    extra = {"block": sw.SwinTransformerBlockV2, "downsample_layer": sw.PatchMergingV2} if v2 else {}
    model = torchvision.models.SwinTransformer([2, 2], 16, [2, 2], [2, 2], [4, 4], num_classes=3, **extra)
    return perturbed(model)


@pytest.mark.parametrize("v2", [False, True])
def test_hf_swin_windows_are_its_own_attentions(v2):
    """Swin V2's cosine attention and its patch merging (the reduction before the norm) too."""
    model, x = hf_swin(v2=v2), image()
    with torch.no_grad():
        own = model(x, output_attentions=True).attentions  # each stage's last block: (B * nW, M, n, n)
    graph = context.context_graph(model, x)
    assert not graph.unread
    nodes = {n.name: n for n in attention_nodes(graph)}
    attention = ".self" if v2 else ""  # where the softmax runs: V2's SelfAttention module, V1's attention
    for stage, a in enumerate(own):
        windows, local = nodes[f"encoder.layers.{stage}.blocks.1.attention{attention}"].step.windows
        assert local.shape == a.shape and (local - a).abs().max().item() < TOL
        assert windows.count == a.shape[0] // 2
    # the shifted block's layout: its (2, 2) shift, as torchvision's (whose rebuild is proved below)
    windows, _ = nodes[f"encoder.layers.0.blocks.1.attention{attention}"].step.windows
    # (0, 0) rolled to (14, 14): window (3, 3) of the 4 x 4 windows, place (2, 2) in it
    assert int(windows.window[0]) == 15 and int(windows.place[0]) == 10


def store(into: dict, key: str, value) -> None:
    """Keep the first value seen under ``key`` (a hook that returns None: it changes nothing)."""
    into.setdefault(key, value)


def keep_input(into: dict, key: str, module, args) -> None:
    store(into, key, args[0])


def keep_output(into: dict, key: str, module, args, output) -> None:
    store(into, key, output)


@pytest.mark.parametrize("v2", [False, True])
def test_torchvision_swin_windows_rebuild_the_attention_branch(v2):
    model, x = tv_swin(v2), image()
    graph = context.context_graph(model, x)
    assert not graph.unread
    nodes = {n.name: n for n in attention_nodes(graph)}
    for stage, grid in ((1, 16), (3, 8)):
        for i in range(2):
            block = model.features[stage][i]
            seen = {}
            h1 = block.attn.register_forward_pre_hook(partial(keep_input, seen, "u"))
            h2 = block.attn.register_forward_hook(partial(keep_output, seen, "y"))
            with torch.no_grad():
                model(x)
            h1.remove()
            h2.remove()
            windows, local = nodes[f"features.{stage}.{i}.attn"].step.windows
            a = windows.on_grid(local)
            assert a.shape == (2, 2, grid * grid, grid * grid)
            torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]), rtol=0, atol=1e-12)
            with torch.no_grad():
                u = rearrange(seen["u"], "b h w c -> b (h w) c")
                v = rearrange(block.attn.qkv(u), "b n (three m d) -> three b m n d", three=3, m=2)[2]
                got = block.attn.proj(rearrange(a @ v, "b m n d -> b n (m d)")).reshape(seen["y"].shape)
            assert (got - seen["y"]).abs().max().item() < 1e-10, (stage, i)
    assert model.features[1][1].attn.shift_size == [2, 2]


def tv_maxvit():
    torch.manual_seed(0)
    return perturbed(torchvision.models.MaxVit((64, 64), 16, 2, [16, 32], [1, 1], 8, 0.0, num_classes=3))


def test_torchvision_maxvit_window_and_grid_partitions_rebuild_the_attention():
    model, x = tv_maxvit(), image(64)
    graph = context.context_graph(model, x)
    assert not graph.unread
    nodes = {n.name: n for n in attention_nodes(graph)}
    for name, module in model.named_modules():
        if type(module).__name__ != "PartitionAttentionLayer":
            continue
        seen = {}
        attn = module.attn_layer[1]
        h1 = module.register_forward_pre_hook(partial(keep_input, seen, "x"))
        h2 = attn.register_forward_hook(partial(keep_output, seen, "y"))
        with torch.no_grad():
            model(x)
        h1.remove()
        h2.remove()
        windows, local = nodes[f"{name}.attn_layer.1"].step.windows
        a = windows.on_grid(local)  # (B, M, N, N) on the block's grid
        xg = rearrange(seen["x"], "b c h w -> b (h w) c")
        with torch.no_grad():
            u = module.attn_layer[0](xg)
            v = rearrange(attn.to_qkv(u), "b n (three m d) -> three b m n d", three=3, m=attn.n_heads)[2]
            z = attn.merge(rearrange(a @ v, "b m n d -> b n (m d)"))
        y = seen["y"]  # (B, nW, n, C) in partition order: put it back on the grid
        y_grid = torch.empty_like(z)
        y_grid[:, torch.arange(z.shape[1])] = y[:, windows.window, windows.place]
        assert (z - y_grid).abs().max().item() < 1e-10, (name, module.partition_type)


#: key -> (build, image side, a block whose output the ERF takes, its output layout)
ERFS = {
    "hf_vit": (lambda: VITS["hf_vit"][0]("sdpa"), 32, None, "tokens"),
    "hf_swin": (hf_swin, 32, "encoder.layers.0", "tokens"),  # a stage: its output is a tuple
    "hf_swin_v2": (partial(hf_swin, v2=True), 32, "encoder.layers.1", "tokens"),
    "hf_convnext": (lambda: hf(T.ConvNextModel, T.ConvNextConfig, "eager", num_stages=2, hidden_sizes=[8, 16],
                               depths=[1, 1], image_size=32), 32, "encoder.stages.1", "nchw"),
    "tv_vit": (tv_vit, 32, "encoder.layers.encoder_layer_1", "tokens"),
    "tv_swin_v2": (lambda: tv_swin(True), 32, "features.3", "nhwc"),
    "tv_convnext": (lambda: perturbed(torchvision.models.ConvNeXt(
        [torchvision.models.convnext.CNBlockConfig(8, 16, 1),
         torchvision.models.convnext.CNBlockConfig(16, None, 1)],
        num_classes=3)), 32, "features.3", "nchw"),
    "tv_resnet": (lambda: perturbed(torchvision.models.resnet18(num_classes=3)), 32, "layer2", "nchw"),
    "tv_resnext": (lambda: perturbed(torchvision.models.ResNet(  # grouped 3x3 convs (4 groups)
        torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=3, groups=4, width_per_group=4)),
        32, "layer2", "nchw"),
    "tv_regnet": (lambda: perturbed(torchvision.models.regnet_x_400mf(num_classes=3)), 32,
                  "trunk_output.block2", "nchw"),
    "tv_maxvit": (tv_maxvit, 64, "blocks.1", "nchw"),
}


def first_tensor(y):
    if isinstance(y, torch.Tensor):
        return y
    values = y.to_tuple() if hasattr(y, "to_tuple") else y
    return next(v for v in values if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("key", list(ERFS))
def test_erf_is_autograds_input_gradient_and_the_whole_network_rolls_out(key):
    build, side, layer, layout = ERFS[key]
    model, x = build(), image(side)
    names = dict(model.named_modules())
    if layer is None:  # a block: the module where the second residual sum happens
        layer = [n for n in context.context_graph(model, x).nodes if n.kind == "join"][1].name
    xr = x.clone().requires_grad_(True)
    out = {}
    hook = names[layer].register_forward_hook(lambda m, a, y: store(out, "y", first_tensor(y)))
    model(xr)
    hook.remove()
    y = out["y"]
    if layout == "nchw":
        grid, picked = tuple(y.shape[-2:]), lambda r, c: y[:, :, r, c]
    elif layout == "nhwc":
        grid, picked = tuple(y.shape[1:3]), lambda r, c: y[:, r, c, :]
    else:
        n = y.shape[1]
        side_tokens = int((n - (n % 4 == 1)) ** 0.5)  # a class token in front, or none (Swin)
        prefix = n - side_tokens * side_tokens
        grid, picked = (side_tokens, side_tokens), lambda r, c: y[:, prefix + r * side_tokens + c]
    query = (grid[0] - 1, 1)
    (grad,) = torch.autograd.grad(picked(*query).sum(), xr)
    want = grad.abs().sum(1)
    want = want / want.sum((1, 2), keepdim=True)
    got = context.effective_receptive_field(model, x, layer, query=query)
    assert (got - want).abs().max().item() < TOL
    views = inspect_model(model, x)  # every view rebuilds its module's output (attention: read at its call)
    assert views and max(views.rebuild_errors().values()) < 1e-12
    for name, view in views.items():  # a view read at the call rebuilds from its A: another A, another output
        if "read at" in view.notes:
            other = view.project(view.affinity.flip(-1) @ view.values)
            other = other[0] if isinstance(other, tuple) else other
            assert (other - views.outputs[name]).abs().max().item() > 1e-6, name
    r = context.rollout(model, x)  # the whole network, read without a gap
    assert not r.skipped and bool((r.maps >= 0).all())
    data = context.rollout_maps(model, x, layer, query=query)
    whole = context.rollout(model, x, layer).map(query).numpy()
    assert data["grid"] == grid and abs(data["map"] - whole).max() < 1e-12


def test_rows_of_a_windowed_attention_are_its_dense_rows_without_the_dense_matrix():
    from unifiedctx.inspection import trace

    model, x = tv_swin(), image()
    found = trace(model, x)
    records = [n.record for n in found.nodes[1:] if getattr(n.record, "windows", None) is not None]
    assert len(records) == 4
    for record in records:
        n = record.tokens.grid[0] * record.tokens.grid[1]
        queries = [0, 5, n // 2, n - 1]
        rows = record.rows(queries)  # block-sparse: from the windows' own (n_w, n_w) affinities
        assert "affinity" not in record.__dict__  # the dense (N, N) was not built for them
        assert rows.shape == (2, 2, 4, n)
        assert (rows - record.affinity[..., queries, :]).abs().max().item() == 0


def test_an_attention_on_no_known_grid_is_named_and_refused_not_a_crash():
    """Hugging Face MobileViT attends over the patches of every pixel offset, a batch of windows that no
    block declares: inspect_model raised AttributeError ('NoneType' ... 'grid') on it. Now every such
    attention is named in .skipped with why, the convolutions are read, and the rollout refuses it by name."""
    model = hf(T.MobileViTModel, T.MobileViTConfig, "eager", image_size=64)  # its only implementation
    x = image(64, batch=1)  # the last stage's grid: 2 x 2
    views = inspect_model(model, x)
    attentions = [name for name, module in model.named_modules()
                  if type(module).__name__ == "MobileViTSelfAttention"]
    assert attentions and views  # the depthwise convs are read
    for name in attentions:
        assert name not in views, name
        assert "no block above it declares" in views.skipped[name], views.skipped.get(name)
    with pytest.raises(ValueError, match=f"{attentions[0]}: MobileViTSelfAttention: an attention over"):
        context.rollout(model, x)
