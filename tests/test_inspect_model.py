"""``unifiedctx.inspect_model``: every layer's view, from the input it really received, rebuilds that
layer's own output (float64, 1e-12); the model is left as it was found."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, rel_err
from torch import nn

import unifiedctx
from unifiedctx.inspection import NetworkInspection, inspect_model

TOL = 1e-12


def image(batch=1, size=32, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen, dtype=torch.float64)


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def container_light():
    torch.manual_seed(0)
    return perturb(unifiedctx.create_model("container_light_nano").double(), std=0.3).eval()


def test_top_level_export():
    assert unifiedctx.inspect_model is inspect_model


def test_unifiedctx_network_every_view_rebuilds_its_layer(container_light):
    result = inspect_model(container_light, image())
    assert isinstance(result, NetworkInspection) and no_hooks_left(container_light)
    errors = result.rebuild_errors()
    assert errors and max(errors.values()) < TOL
    view = result["stages.3.blocks.0.mixer"]
    view.affinity = view.affinity * 1.01  # a wrong affinity no longer rebuilds the layer's own output
    assert result.rebuild_errors()["stages.3.blocks.0.mixer"] > 1e-3
    mixers = [n for n, m in container_light.named_modules() if isinstance(m, unifiedctx.mixers.AffinityMixer)]
    pos_convs = [n for n, m in container_light.named_modules() if n.endswith(".pos")]
    # forward order: each block's positional conv comes before its mixer
    assert list(result) == [n for pair in zip(pos_convs, mixers) for n in pair]
    assert result["stages.3.blocks.0.mixer"].kind == "mixed"
    assert set(result["stages.3.blocks.0.mixer"].components) == {"dynamic", "static", "mixed"}
    # the mixer's own 1x1 and depthwise convs are covered by its view: neither viewed nor skipped
    assert not [n for n in [*result, *result.skipped] if ".mixer." in n]
    assert "stride" in result.skipped["stages.0.embed.proj"]
    assert "normalisation" in result.skipped["stages.0.blocks.0.norm1"]
    assert "1x1 conv" in result.skipped["stages.0.blocks.0.mlp.fc1"]


def test_views_are_built_from_the_input_each_layer_received(container_light):
    x = image()
    seen = {}
    mixer = container_light.stages[1].blocks[0].mixer
    handle = mixer.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0].clone()))
    with torch.no_grad():
        container_light(x)
    handle.remove()
    view = inspect_model(container_light, x)["stages.1.blocks.0.mixer"]
    torch.testing.assert_close(view.values, mixer.values(seen["x"]), rtol=0, atol=0)
    torch.testing.assert_close(view.affinity, mixer.affinity(seen["x"]), rtol=0, atol=0)
    assert view.grid == (8, 8) and view.pixel_stride == (4.0, 4.0)


def test_model_state_rng_and_statistics_untouched():
    torch.manual_seed(0)
    model = unifiedctx.create_model("container_light_nano", dropout=0.2, drop_path=0.2).double()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    inspect_model(model, image(batch=2))
    after_inspect = torch.rand(5)
    torch.manual_seed(123)
    assert torch.equal(after_inspect, torch.rand(5))  # the global RNG is where it was
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():  # BatchNorm statistics put back, weights unchanged
        assert torch.equal(value, before[key]), key
    assert no_hooks_left(model)


class PlainNet(nn.Module):
    """A network in plain PyTorch: strided stem, depthwise and full convs, pooling, attention with a
    class token."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.local = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.full = nn.Conv2d(dim, dim, 3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.norm = nn.LayerNorm(dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = torch.relu(self.full(self.local(self.stem(x))))
        x = self.pool(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        out, _ = self.attn(tokens, tokens, tokens)
        return self.head(out[:, 0])


def test_plain_pytorch_network():
    torch.manual_seed(0)
    net = perturb(PlainNet().double(), std=0.4).eval()
    result = inspect_model(net, image(batch=2))
    assert list(result) == ["local", "full", "pool", "attn"]
    assert max(result.rebuild_errors().values()) < TOL
    attn = result["attn"]
    assert attn.prefix_tokens == 1 and attn.grid == (8, 8) and attn.pixel_stride == (4.0, 4.0)
    torch.testing.assert_close(attn.affinity.sum(-1), torch.ones(2, 2, 65, dtype=torch.float64))
    assert "stride" in result.skipped["stem"] and "linear" in result.skipped["head"]
    assert set(result.distances()) == set(result)


def test_cross_attention_and_masks_are_skipped_with_a_reason():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)
            return self.attn(t, t.flip(1), t.flip(1))[0]

    result = inspect_model(Cross().double().eval(), torch.randn(1, 4, 4, 4, dtype=torch.float64))
    assert not result and "cross-attention" in result.skipped["attn"]


def test_layer_selection_and_token_limit(container_light):
    x = image()
    only = inspect_model(container_light, x, layers="stages.3.*.mixer")
    assert list(only) == ["stages.3.blocks.0.mixer"]
    picked = inspect_model(container_light, x, layers=lambda name, m: name.endswith(".pos"))
    assert all(n.endswith(".pos") for n in picked) and len(picked) == 4
    small = inspect_model(container_light, x, max_tokens=16)
    assert {v.grid for v in small.values()} == {(4, 4)}
    assert "max_tokens=16" in small.skipped["stages.0.blocks.0.mixer"]
    assert "strided conv" in small.skipped["stages.0.embed.proj"]  # the reason that matters comes first


def test_hooks_removed_when_the_forward_fails(container_light):
    with pytest.raises(ValueError):
        inspect_model(container_light, image(size=30))  # not divisible by the stride
    assert no_hooks_left(container_light)


def test_bad_arguments():
    net = PlainNet().double()
    with pytest.raises(TypeError, match="model"):
        inspect_model("net", image())
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\)"):
        inspect_model(net, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="max_tokens"):
        inspect_model(net, image(), max_tokens=0)
    with pytest.raises(TypeError, match="layers"):
        inspect_model(net, image(), layers=[3])
    with pytest.raises(ValueError, match="prefix_tokens"):
        inspect_model(net, image(), prefix_tokens=-1)


def test_shared_module_called_twice_is_viewed_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)

        def forward(self, x):
            return self.conv(self.conv(x))

    net = perturb(Twice().double()).eval()
    x = image()
    result = inspect_model(net, x)
    assert "2 times" in result["conv"].notes["calls"]
    with torch.no_grad():
        assert rel_err(result["conv"].output(), net.conv(x)) < TOL


def test_a_global_pooling_is_named_for_what_it_is():
    """An adaptive pooling summarises every token (a classifier's pooling, a squeeze-and-excitation gate's
    input): .skipped says so, not 'a per-element layer'."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    result = inspect_model(net.double(), image(batch=1))
    assert list(result) == ["0"]
    assert "pools the grid to 1" in result.skipped["1"] and "per-element" in result.skipped["2"]
