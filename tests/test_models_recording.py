"""Recording affinities: every mixer layer, the right shapes, faithful, and no trace left."""

from __future__ import annotations

import pytest
import torch

from unifiedctx.mixers import AffinityMixer
from unifiedctx.models import (
    create_model,
    list_models,
    mixer_inputs,
    mixer_layers,
    mixing_weights,
    record_affinities,
    record_components,
)

NANO = list_models("*_nano")
PAPER = [n for n in list_models() if not n.endswith(("_cifar", "_nano"))]


def expected_shape(mixer: AffinityMixer, x: torch.Tensor) -> tuple[int, ...]:
    n = x.shape[-2] * x.shape[-1]
    return (1 if mixer.kind == "static" else x.shape[0], mixer.heads, n, n)


@pytest.mark.parametrize("name", NANO)
def test_affinities_cover_every_mixer_and_reproduce_it(name):
    """One entry per mixer module, in model order, of shape (B|1, M, N, N), and
    ``project(A @ V)`` on the recorded input is exactly what that layer computed (float64)."""
    torch.manual_seed(0)
    model = create_model(name).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layers = mixer_layers(model)
    names = [n for n, m in model.named_modules() if isinstance(m, AffinityMixer)]
    affinities, inputs = record_affinities(model, x), mixer_inputs(model, x)
    assert list(layers) == list(affinities) == list(inputs) == names and names
    for layer, a in affinities.items():
        mixer, inp = layers[layer], inputs[layer]
        assert tuple(a.shape) == expected_shape(mixer, inp), layer
        torch.testing.assert_close(mixer.project(a @ mixer.values(inp)), mixer(inp))


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_record_every_layer(name):
    """The paper presets at 32 x 32 (MLP-Mixer built for it): every layer, right shapes."""
    model = create_model(name, img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    affinities, inputs = record_affinities(model, x), mixer_inputs(model, x)
    layers = mixer_layers(model)
    assert list(affinities) == list(layers)
    assert len(layers) == sum(len(s.blocks) for s in model.stages)
    for layer, a in affinities.items():
        assert tuple(a.shape) == expected_shape(layers[layer], inputs[layer]), layer


def test_recording_leaves_no_trace():
    """No hooks remain (even after a failing forward), the mode is kept, buffers are restored."""
    model = create_model("container_light_nano").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record_affinities(model, torch.randn(4, 3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError):
        mixer_inputs(model, torch.randn(1, 3, 36, 36))
    assert all(not m._forward_pre_hooks for m in model.modules())
    model.eval()
    record_affinities(model, torch.randn(1, 3, 32, 32))
    assert not model.training


def test_components_and_mixing_weights():
    """Container layers give static/dynamic/mixed with mixed = alpha dynamic + beta static;
    mixing_weights reads alpha and beta of exactly those layers."""
    model = create_model("container_light_nano").eval()
    container_layers = [n for n, m in mixer_layers(model).items() if m.kind == "mixed"]
    assert container_layers == ["stages.3.blocks.0.mixer"]
    with torch.no_grad():  # the sigmoid mix's one scalar logit w: alpha = sigmoid(w)
        (logit,) = [p for p in mixer_layers(model)[container_layers[0]].parameters() if p.dim() == 0]
        logit.fill_(1.5)
    weights = mixing_weights(model)
    assert list(weights) == container_layers
    alpha = torch.sigmoid(torch.tensor(1.5)).item()
    assert weights[container_layers[0]] == pytest.approx({"alpha": alpha, "beta": 1 - alpha})
    x = torch.randn(2, 3, 32, 32)
    parts = record_components(model, x)
    assert list(parts) == list(mixer_layers(model))
    mixed = parts[container_layers[0]]
    assert set(mixed) == {"static", "dynamic", "mixed"}
    assert mixed["dynamic"].shape == (2, 2, 16, 16) and mixed["static"].shape == (1, 2, 16, 16)
    torch.testing.assert_close(mixed["mixed"], alpha * mixed["dynamic"] + (1 - alpha) * mixed["static"])
    assert set(parts["stages.0.blocks.0.mixer"]) == {"static"}
    assert mixing_weights(create_model("deit_tiny_nano")) == {}


class DropoutNet(torch.nn.Module):
    """dwconv -> BatchNorm -> dropout -> attention: every kind of state a forward can change."""

    def __init__(self):
        super().__init__()
        from unifiedctx.mixers import create

        self.conv = create("dwconv", dim=4, kernel_size=3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.attn = create("attention", dim=4, heads=2)

    def forward(self, x):
        return self.attn(self.drop(self.norm(self.conv(x))))


def _state(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {k: v.clone() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("read", [record_affinities, record_components, mixer_inputs])
def test_reading_leaves_modes_statistics_grads_and_the_rng_as_found(read):
    """Dropout in train mode draws random numbers and BatchNorm updates its statistics in a
    forward: after a read, the global RNG, every mode, buffer and requires_grad are as before."""
    torch.manual_seed(0)
    model = DropoutNet().train()
    model.norm.eval()  # modes that differ between modules are kept module by module
    model.conv.requires_grad_(False)
    before = _state(model)
    x = torch.randn(2, 4, 6, 6)
    rng = torch.get_rng_state()
    out = read(model, x)
    assert torch.equal(torch.get_rng_state(), rng)
    after = _state(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(torch.equal(before[2][k], v) for k, v in after[2].items())
    assert list(out) == ["conv", "attn"]
    # the next random numbers are the ones the caller would have drawn without the read
    torch.set_rng_state(rng)
    expected = torch.rand(3)
    torch.set_rng_state(rng)
    read(model, x)
    assert torch.equal(torch.rand(3), expected)


def test_recording_in_train_mode_sees_the_train_mode_forward():
    """The mode is the model's own: in train mode BatchNorm normalises with batch statistics."""
    model = DropoutNet()
    model.drop.p = 0.0
    x = torch.randn(2, 4, 6, 6) * 3 + 1
    train_in = mixer_inputs(model.train(), x)["attn"]
    eval_in = mixer_inputs(model.eval(), x)["attn"]
    assert not torch.allclose(train_in, eval_in)
    torch.testing.assert_close(train_in.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
