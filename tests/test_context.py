"""Context through depth: rollout against the exact Jacobian, support growth, Container-Light's
locality, the heads rules, the ERF against autograd's full Jacobian, plain-data maps, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import unifiedctx
from unifiedctx import context
from unifiedctx.inspection import inspect
from unifiedctx.inspection.layers import mixer_layers
from unifiedctx.mixers import AvgPool, DepthwiseConv
from unifiedctx.models import ContextNet

NANOS = ["convnet_nano", "poolformer_s12_nano", "mixer_s16_nano", "deit_tiny_nano", "container_nano",
         "container_light_nano"]


def linear_static_net(seed: int = 0) -> ContextNet:
    """One channel all the way: static linear mixers with residuals, nothing else.

    Norms are off, the MLPs are zeroed (their residual is then exactly the identity), and the
    stages resample with strided convs, so the whole network is one linear map of the pixels.
    """
    torch.manual_seed(seed)
    stages = [
        {"dim": 1, "depth": 2, "stride": 1, "mixer": "dwconv", "mixer_options": {"kernel_size": 3},
         "norm": "none", "pos_conv": True, "layer_scale": 0.7},
        {"dim": 1, "depth": 1, "stride": 2, "embed_kernel": 4, "mixer": "pool",
         "mixer_options": {"kernel_size": 3, "subtract_input": True}, "norm": "none"},
        {"dim": 1, "depth": 1, "stride": 2, "mixer": "mixer", "norm": "none", "pos_conv": True},
    ]
    model = ContextNet(stages, img_size=12, in_chans=1, num_classes=0, final_norm="none",
                       abs_pos_embed=True).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))  # every weight non-trivial (pos convs, embeds, ...)
        for block in model.modules():
            if isinstance(block, unifiedctx.models.Block):
                block.mlp.fc2.weight.zero_()
                block.mlp.fc2.bias.zero_()
    return model


def jacobian(f, x):
    """``(N_out, N_in)``: d f(x)[0, 0] / d x[0, 0] by autograd, for one single-channel image."""
    j = torch.autograd.functional.jacobian(f, x)
    return j.reshape(j.shape[2] * j.shape[3], x.shape[-2] * x.shape[-1])


# ---------------------------------------------------------------------------- exactness
def test_signed_rollout_is_the_jacobian_of_a_linear_static_network():
    model = linear_static_net()
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    exact = jacobian(model.forward_features, x)
    r = context.rollout(model, x, signed=True)
    assert r.grid == (3, 3) and r.input_grid == (12, 12)
    assert r.maps.shape == (1, 9, 144)
    assert torch.allclose(r.maps[0], exact, atol=1e-10, rtol=0)
    # ... and at an intermediate layer: the Jacobian of the first stage
    first = context.rollout(model, x, upto="stages.0", signed=True)
    assert first.layers[-1] == "stages.0.blocks.1"  # the block's residual sum, its last node
    assert torch.allclose(first.maps[0], jacobian(model.stages[0], x), atol=1e-10, rtol=0)


def test_erf_is_the_normalised_jacobian_row_of_a_linear_static_network():
    model = linear_static_net(seed=1)
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    r = context.rollout(model, x, signed=True)
    for query in [(1, 1), (0, 2), 5]:
        erf = context.effective_receptive_field(model, x, "stages.2.norm", query=query)
        row = r.map(query).abs()
        assert torch.allclose(erf[0], row / row.sum(), atol=1e-10, rtol=0)


def test_signed_rollout_of_a_sequential_of_mixers_and_convs_is_its_jacobian():
    torch.manual_seed(2)
    model = nn.Sequential(DepthwiseConv(1, 5), nn.Conv2d(1, 1, 3, padding=1), AvgPool(1, 3),
                          nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Identity()),
                          nn.Conv2d(1, 1, 3, padding="same", dilation=2)).double()
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    r = context.rollout(model, x, signed=True)
    assert r.layers == ["0", "1", "2", "3.0", "4"] and r.grid == (5, 5)
    assert torch.allclose(r.maps[0], jacobian(model, x), atol=1e-10, rtol=0)


class ScaledResidual(nn.Module):
    """A user's own block, ``x + gamma * conv(x)``: its residual is found in the forward itself."""

    def __init__(self, k):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, k, padding=k // 2)
        self.gamma = nn.Parameter(torch.tensor([0.6]))

    def forward(self, x):
        return x + self.gamma * self.conv(x)


class Downsample(nn.Module):
    """ResNet's shape: ``down(x) + conv2(conv1(x))`` with a strided first conv and a strided shortcut."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.down = nn.Conv2d(1, 1, 1, stride=2)

    def forward(self, x):
        return self.down(x) + self.conv2(self.conv1(x))


def test_signed_rollout_of_a_plain_pytorch_stack_with_residual_blocks_is_its_jacobian():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 1, 5, padding=2), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                          ScaledResidual(3), Downsample(), nn.AvgPool2d(2), nn.Conv2d(1, 1, 1),
                          ScaledResidual(5)).double()
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    r = context.rollout(model, x, signed=True)
    # "5" is a 1x1 conv: a per-token factor, no node; "2" and "3" are the sums found in the forward
    assert r.layers == ["0", "1", "2.conv", "2", "3.down", "3.conv1", "3.conv2", "3", "4", "6.conv", "6"]
    assert r.grid == (3, 3)
    err = (r.maps[0] - jacobian(model, x)).abs().max().item()
    assert err < 1e-12, err
    graph = context.context_graph(model, x)
    names = graph.names()
    join = graph.nodes[1 + names.index("3")]  # the shortcut beside its branch, composed in parallel
    assert join.kind == "join" and sorted(graph.nodes[p].name for p in join.parents) == ["3.conv2", "3.down"]
    nonneg = context.rollout(model, x)
    torch.testing.assert_close(nonneg.maps.sum(-1), torch.ones(1, 9, dtype=torch.float64))


def test_layers_the_reader_cannot_read_are_named_not_passed_over():
    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.eye(4))

        def forward(self, x):
            return x @ self.weight  # mixes the tokens of a row: nothing the reader knows

    model, x = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), Mystery()), torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"1: Mystery: a matmul that sums over the 4 tokens.*partial=True"):
        context.rollout(model, x)
    r = context.rollout(model, x, partial=True)  # asked for: the map of what was read, the rest named
    assert list(r.skipped) == ["1"] and "Mystery" in r.skipped["1"] and r.layers == ["0"]


# ---------------------------------------------------------------------------- support
@pytest.mark.parametrize("depth,k", [(1, 3), (3, 3), (2, 5)])
def test_support_of_stacked_depthwise_layers_is_the_grown_window(depth, k):
    torch.manual_seed(depth * 10 + k)
    stage = {"dim": 4, "depth": depth, "stride": 1, "mixer": "dwconv", "mixer_options": {"kernel_size": k},
             "norm": "none"}
    model = ContextNet([stage], img_size=24, num_classes=0).eval()
    x = torch.randn(1, 3, 24, 24)
    side = 1 + depth * (k - 1)
    for signed in (False, True):
        r = context.rollout(model, x, signed=signed)
        support = r.map((12, 12)).abs() > 0
        assert int(support.sum()) == side ** 2
        h = side // 2
        window = torch.zeros(24, 24, dtype=torch.bool)
        window[12 - h:12 + h + 1, 12 - h:12 + h + 1] = True
        assert torch.equal(support, window)


def test_container_light_is_local_in_its_static_stages_and_global_in_its_mixed_stage():
    side = 80  # so that the static stages' windows (up to 92 pixels, centred) do not cover the image
    model = unifiedctx.create_model("container_light_nano").eval()
    x = torch.randn(2, 3, side, side)
    graph = context.context_graph(model, x)
    assert not graph.unread
    windows = {0: (0, 1, 1)}  # node -> (start, size, jump) in input pixels, by receptive-field arithmetic
    for node, r in context.compose_graph(graph):
        index = graph.nodes.index(node)
        if node.kind == "join":  # centred windows nest: a sum covers its largest path
            windows[index] = max((windows[p] for p in node.parents), key=lambda w: w[1])
        else:
            start, size, jump = windows[node.parents[0]]
            window = node.step.window
            k, pad, stride = ((window.weight.shape[-1], window.padding[0], window.stride[0])
                              if window is not None
                              else (1, 0, 1))
            windows[index] = (start - pad * jump, size + (k - 1) * jump, jump * stride)
        h, w = node.tokens.grid
        support = (r.expand(2, -1, -1) > 0).reshape(2, h, w, side, side)
        if node.name.startswith("stages.3.blocks"):
            if node.name.endswith("mixer"):  # the mixed stage: every token sees every pixel
                assert node.step.window is None and bool(support.all())
            continue
        start, size, jump = windows[index]
        lo = start + torch.arange(h) * jump  # token row r covers pixel rows [lo_r, lo_r + size)
        pix = torch.arange(side)
        rows = (pix >= lo[:, None]) & (pix < lo[:, None] + size)  # (h, side); square grids: cols alike
        expected = rows[:, None, :, None] & rows[None, :, None, :]
        assert torch.equal(support, expected.expand_as(support)), node.name
        if node.name == "stages.2.blocks.0.mixer":  # still local before the mixed stage
            assert not bool(support[:, 0, 0, -1, -1].any())  # a corner token misses the far corner


def test_rows_of_the_non_negative_rollout_sum_to_one_for_every_family():
    x = torch.randn(2, 3, 32, 32)
    for name in NANOS:
        model = unifiedctx.create_model(name).eval()
        r = context.rollout(model, x)
        assert r.maps.shape[0] == 2 and r.maps.shape[1] == r.grid[0] * r.grid[1]
        assert bool((r.maps >= 0).all())
        assert r.maps.dtype == torch.float64  # the rollout accumulates in float64 for every model
        assert torch.allclose(r.maps.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-5)


# ---------------------------------------------------------------------------- the rules
def test_heads_mean_and_max_follow_their_documented_formulas():
    torch.manual_seed(3)
    a = torch.randn(2, 3, 16, 16, dtype=torch.float64)  # 3 signed heads on a 4 x 4 grid
    steps = context.steps_from_affinities({"one": a, "two": a.flip(-1)}, (4, 4))
    eye = torch.eye(16, dtype=torch.float64)

    def rownorm(m):
        return m / m.sum(-1, keepdim=True)

    def layer(m):  # the residual: 0.5 rownorm(|A|) + 0.5 I (Abnar & Zuidema's weighting for every family)
        return 0.5 * rownorm(m) + 0.5 * eye

    expected = {
        "mean": layer(a.flip(-1).abs().mean(1)) @ layer(a.abs().mean(1)),
        "max": layer(a.flip(-1).abs().amax(1)) @ layer(a.abs().amax(1)),
    }
    for heads, want in expected.items():
        got = context.rollout_steps(steps, (4, 4), heads=heads).maps
        assert torch.allclose(got, want, atol=1e-12, rtol=0)
    signed = context.rollout_steps(steps, (4, 4), signed=True).maps
    assert torch.allclose(signed, (eye + a.flip(-1).mean(1)) @ (eye + a.mean(1)), atol=1e-12, rtol=0)
    # on a real multi-head model the two conventions differ; with one head they agree
    model = unifiedctx.create_model("deit_tiny_nano").eval()
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(context.rollout(model, x, heads="max").maps,
                              context.rollout(model, x, heads="mean").maps, atol=1e-4)
    one = context.steps_from_affinities({"one": a[:, :1]}, (4, 4))
    assert torch.allclose(context.rollout_steps(one, (4, 4), heads="max").maps,
                          context.rollout_steps(one, (4, 4), heads="mean").maps, atol=1e-12, rtol=0)


def test_affinity_views_from_inspect_plug_in_like_tensors():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    view = inspect(conv, x)
    from_view = context.rollout_steps(context.steps_from_affinities({"conv": view}, (6, 6)), (6, 6))
    tensor_steps = context.steps_from_affinities({"conv": view.affinity}, (6, 6))
    from_tensor = context.rollout_steps(tensor_steps, (6, 6))
    assert torch.allclose(from_view.maps, from_tensor.maps, atol=0, rtol=0)
    # the same conv as a layer of an nn.Sequential is a window step: the same rollout
    alone = context.rollout_steps(context.steps_from_affinities({"0": view}, (6, 6), residual=False), (6, 6))
    assert torch.allclose(context.rollout(nn.Sequential(conv), x).maps, alone.maps, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- the ERF
def test_erf_matches_the_full_jacobian_of_a_nonlinear_model():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.GELU(), nn.Conv2d(5, 2, 3, stride=2, padding=1),
                          nn.Tanh()).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(model, x)[0]  # (2, 4, 4, 1, 3, 8, 8)
    for query, t in [(None, 2 * 4 + 2), ((0, 3), 3), (6, 6)]:
        grad = j[:, t // 4, t % 4, 0].sum(0)  # summed over output channels: (3, 8, 8)
        want = grad.abs().sum(0)
        erf = context.effective_receptive_field(model, x, "3", query=query)
        assert torch.allclose(erf[0], want / want.sum(), atol=1e-12, rtol=0)


def test_erf_and_rollout_leave_the_model_as_they_found_it():
    model = unifiedctx.create_model("container_light_nano", drop_path=0.1).train()
    model.stages[0].embed.proj.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 3, 32, 32)
    rng = torch.random.get_rng_state()
    context.effective_receptive_field(model, x, "stages.2.blocks.0")
    context.rollout(model, x)
    context.rollout_maps(model, x, "stages.1")
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_erf_of_a_token_output():
    torch.manual_seed(5)

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, 4, 2, stride=2)
            self.mix = nn.Linear(4, 4)

        def forward(self, x):
            return self.mix(self.embed(x).flatten(2).transpose(1, 2))  # (B, 16, 4)

    model = Tokens().double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    erf = context.effective_receptive_field(model, x, "mix", query=5)  # token 5 = (1, 1) of 4 x 4
    assert torch.allclose(erf[0].sum(), torch.ones((), dtype=torch.float64))
    assert bool((erf[0][2:4, 2:4] > 0).all()) and float(erf[0].sum() - erf[0][2:4, 2:4].sum()) == 0


# ---------------------------------------------------------------------------- plain data
def test_rollout_maps_and_erf_maps_are_plain_data_of_the_same_numbers():
    model = unifiedctx.create_model("poolformer_s12_nano").eval()
    x = torch.randn(1, 3, 32, 32)
    data = context.rollout_maps(model, x, "stages.1", query=(2, 5))
    r = context.rollout(model, x, "stages.1")
    assert isinstance(data["map"], np.ndarray) and data["map"].shape == (32, 32)
    assert np.allclose(data["map"], r.map((2, 5)).numpy())
    assert data["grid"] == (8, 8) and data["query"] == (2, 5) and data["query_pixel"] == (9.5, 21.5)
    assert data["vmin"] == 0 and data["vmax"] == pytest.approx(data["map"].max())
    assert data["uniform"] == 1 / 1024 and data["total"] == pytest.approx(1, abs=1e-5)
    assert data["layer"] == "stages.1.blocks.0"  # the block's residual sum: the last node of stages.1
    erf = context.erf_maps(model, x, "stages.1.blocks.0", query=(2, 5))
    field = context.effective_receptive_field(model, x, "stages.1.blocks.0", (2, 5))
    assert np.allclose(erf["map"], field[0])
    assert erf["grid"] == (8, 8) and erf["kind"] == "erf" and erf["total"] == pytest.approx(1)
    signed = context.rollout_maps(model, x, "stages.1", signed=True)
    assert signed["vmin"] == -signed["vmax"]


def test_spearman_matches_scipy_with_ties_and_overlap_counts_shared_top_pixels():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=200).astype(float)  # many ties
    b = a + rng.normal(size=200)
    assert context.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert context.top_overlap(np.arange(10.0), np.arange(10.0), share=0.3) == 1
    assert context.top_overlap(np.arange(10.0), -np.arange(10.0), share=0.3) == 0
    assert context.agreement(a, a)["spearman"] == pytest.approx(1)


def test_mean_distance_in_input_pixels():
    # one token on a 1 x 1 grid of a 4 x 4 image sits at (1.5, 1.5); all weight on pixel (0, 0)
    maps = torch.zeros(1, 1, 16, dtype=torch.float64)
    maps[0, 0, 0] = 2.0
    assert context.mean_distance(maps, (1, 1), (4, 4)) == pytest.approx(1.5 * 2 ** 0.5)
    # identity on the pixel grid: every token's context is itself
    eye = torch.eye(16, dtype=torch.float64).unsqueeze(0)
    assert context.mean_distance(eye, (4, 4), (4, 4)) == 0
    model = unifiedctx.create_model("convnet_nano").eval()
    distances = context.context_distance(model, torch.randn(1, 3, 32, 32))
    blocks = [v for k, v in distances.items() if "blocks" in k]
    assert len(blocks) == 4 and all(b > a for a, b in zip(blocks, blocks[1:]))


# ---------------------------------------------------------------------------- errors
def test_bad_names_list_close_ones():
    model = unifiedctx.create_model("convnet_nano").eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"upto='stages.1.block'.*Did you mean 'stages.1.blocks'"):
        context.rollout(model, x, upto="stages.1.block")
    with pytest.raises(ValueError, match=r"layer='stages.0.blocks.0.mixr'.*Did you mean"):
        context.effective_receptive_field(model, x, "stages.0.blocks.0.mixr")
    with pytest.raises(TypeError, match="upto must be a layer name"):
        context.rollout(model, x, upto=3)
    with pytest.raises(ValueError, match="heads must be 'mean' or 'max'"):
        context.rollout(model, x, heads="sum")
    with pytest.raises(TypeError, match="signed must be True or False"):
        context.rollout(model, x, signed="yes")
    with pytest.raises(ValueError, match=r"query=\(4, 0\) is outside the grid \(4, 4\)"):
        context.rollout_maps(model, x, query=(4, 0))
    with pytest.raises(TypeError, match=r"query must be None \(the centre\), a \(row, col\) pair"):
        context.rollout_maps(model, x, query="centre")
    with pytest.raises(ValueError, match=r"query=\(0, 9\) is outside the grid"):
        context.effective_receptive_field(model, x, "stages.3", query=(0, 9))
    with pytest.raises(ValueError, match=r"index must be an image of the batch, an int in \[0, 1\)"):
        context.erf_maps(model, x, "stages.3", index=1)


def test_bad_inputs_and_models_are_refused_clearly():
    model = unifiedctx.create_model("convnet_nano").eval()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        context.rollout(model, np.zeros((1, 3, 32, 32)))
    with pytest.raises(TypeError, match="uint8"):
        context.rollout(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        context.effective_receptive_field(model, torch.zeros(3, 32, 32), "stages.0")
    with pytest.raises(TypeError, match="float64 but the model's parameters are torch.float32"):
        context.rollout(model, torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="not divisible"):
        context.rollout(model, torch.zeros(1, 3, 30, 30))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        context.rollout("convnet_nano", torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="Sequential has no layer that moves context between tokens"):
        context.rollout(nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU()), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="0: Linear: a linear map over the token axis"):  # over the grid's W
        context.rollout(nn.Sequential(nn.Linear(4, 4), nn.GELU()), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="affinity over 16 tokens, but grid"):
        context.steps_from_affinities({"a": torch.zeros(1, 1, 16, 16)}, (3, 3))


def test_every_mixer_layer_of_a_preset_is_a_rollout_step():
    for name in NANOS:
        model = unifiedctx.create_model(name).eval()
        graph = context.context_graph(model, torch.randn(1, 3, 32, 32))
        assert set(mixer_layers(model)) <= set(graph.names()) and not graph.unread


# ---------------------------------------------------------------------------- timm's ViT
@pytest.mark.timm
def test_rollout_on_timm_vit_equals_the_papers_formula():
    timm = pytest.importorskip("timm")
    torch.manual_seed(6)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                            embed_dim=32, depth=3, num_heads=2, class_token=False, global_pool="avg",
                            num_classes=0).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    inputs = {}
    hooks = [blk.attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, blk in enumerate(vit.blocks)]
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    grid = (8, 8)
    # unifiedctx: the embedding's window, then each block's attention read by inspect()
    from unifiedctx.context.steps import window_step
    views = {f"blocks.{i}.attn": inspect(blk.attn, inputs[i], grid=grid) for i, blk in enumerate(vit.blocks)}
    steps = [window_step("patch_embed.proj", vit.patch_embed.proj, (32, 32)),
             *context.steps_from_affinities(views, grid)]
    ours = context.rollout_steps(steps, (32, 32))
    # the paper, written out: A from qkv, scale and softmax; 0.5 A + 0.5 I; product over layers
    eye, tokens = torch.eye(64, dtype=torch.float64), None
    for i, blk in enumerate(vit.blocks):
        b, n, c = inputs[i].shape
        qkv = blk.attn.qkv(inputs[i]).reshape(b, n, 3, blk.attn.num_heads, c // blk.attn.num_heads)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * blk.attn.scale, dim=-1).mean(1)
        layer = 0.5 * a + 0.5 * eye
        tokens = layer if tokens is None else layer @ tokens
    token_part = context.rollout_steps(steps[1:], grid)
    assert torch.allclose(token_part.maps, tokens, atol=1e-10, rtol=0)
    # the patch embedding: token t takes pixel p of its 4 x 4 patch in proportion to sum |W|
    kernel = vit.patch_embed.proj.weight.detach().abs().sum((0, 1))
    embed = torch.zeros(8, 8, 32, 32, dtype=torch.float64)
    for r in range(8):
        for c in range(8):
            embed[r, c, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = kernel / kernel.sum()
    assert torch.allclose(ours.maps, tokens @ embed.reshape(64, 1024), atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------- the picture
def test_plot_context_map_states_its_scale(close_figures):
    import matplotlib

    matplotlib.use("Agg")
    model = unifiedctx.create_model("deit_tiny_nano").eval()
    x = torch.randn(1, 3, 32, 32)
    data = context.rollout_maps(model, x, query=(3, 4))
    fig = context.plot_context_map(data, title="rollout")
    ax, bar = fig.axes
    image = ax.get_images()[0]
    assert image.get_clim() == (0.0, pytest.approx(data["vmax"]))
    assert np.allclose(image.get_array(), data["map"])
    assert any(np.allclose(line.get_ydata(), data["uniform"]) for line in bar.get_lines())  # 1 / (H W)
    marker = ax.get_lines()[0]
    assert (marker.get_ydata()[0], marker.get_xdata()[0]) == data["query_pixel"] == (13.5, 17.5)
    signed = context.plot_context_map(context.rollout_maps(model, x, signed=True))
    low, high = signed.axes[0].get_images()[0].get_clim()
    assert low == -high


def test_map_distance_of_a_plain_map():
    m = np.zeros((5, 5))
    m[0, 0], m[4, 4] = 1.0, 3.0  # from the centre (2, 2): both at distance 2 * sqrt(2)
    assert context.map_distance({"map": m, "query_pixel": (2.0, 2.0)}) == pytest.approx(2 * 2 ** 0.5)
    assert context.map_distance({"map": m, "query_pixel": (0.0, 0.0)}) == pytest.approx(3 * 4 * 2 ** 0.5 / 4)


@pytest.mark.parametrize("stride,padding,kernel,residual",
                         [(1, 1, 3, True), (2, 1, 3, False), (4, 0, 4, False), (2, 2, 5, False),
                          (1, 2, 5, True)])
@pytest.mark.parametrize("signed", [False, True])
def test_a_window_applied_on_the_right_is_its_matrix(stride, padding, kernel, residual, signed):
    from unifiedctx.context.steps import ContextStep, ConvWindow

    torch.manual_seed(8)
    weight = torch.randn(3, 2, kernel, kernel, dtype=torch.float64)
    window = ConvWindow(weight, (stride, stride), (padding, padding))
    step = ContextStep("w", (9, 11), window.out_grid((9, 11)), window=window, residual=residual, scale=0.4)
    n_out = step.grid_out[0] * step.grid_out[1]
    t = torch.rand(2, 5, n_out, dtype=torch.float64)
    want = t @ step.matrix("mean", signed)
    assert (step.right(t, "mean", signed) - want).abs().max().item() < 1e-13
