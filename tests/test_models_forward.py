"""Networks: output shapes at several sizes, multi-scale features, gradients, seeding, config."""

from __future__ import annotations

import json

import pytest
import torch

from unifiedctx.models import count_params, create_model, from_config, list_models

PAPER = [n for n in list_models() if not n.endswith(("_cifar", "_nano"))]
NANO = list_models("*_nano")
HIERARCHICAL = ["container_light", "container", "convnet", "poolformer_s12"]


def meta_model(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("size", [224, 256, 320, (224, 288)], ids=str)
@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_take_any_size_the_strides_divide(name, size):
    """Logits (B, 1000) at 224, 256, 320 and 224 x 288 (shapes on the meta device); the
    grid-bound MLP-Mixer is built for each size, the others are built once at 224."""
    h, w = (size, size) if isinstance(size, int) else size
    model = meta_model(name, img_size=(h, w) if name.startswith("mixer") else 224)
    assert model(torch.zeros(2, 3, h, w, device="meta")).shape == (2, 1000)


@pytest.mark.parametrize("name", PAPER)
def test_paper_features_have_strides_4_8_16_32(name):
    """features(x): one map per stage, at strides 4, 8, 16, 32 (16 for isotropic nets)."""
    model = meta_model(name, img_size=(224, 288) if name.startswith("mixer") else 224)
    maps = model.features(torch.zeros(1, 3, 224, 288, device="meta"))
    strides = [4, 8, 16, 32] if name in HIERARCHICAL else [16]
    assert model.feature_strides == strides and model.stride == strides[-1]
    assert [tuple(m.shape) for m in maps] == [(1, d, 224 // s, 288 // s)
                                              for d, s in zip(model.feature_dims, strides)]


@pytest.mark.parametrize("name", NANO)
def test_nano_forward_at_several_sizes(name):
    """Real CPU forward at 32, 64 and 32 x 48; features end at the stride the model reports."""
    for h, w in [(32, 32), (64, 64), (32, 48)]:
        model = create_model(name, img_size=(h, w) if name.startswith("mixer") else 32).eval()
        x = torch.randn(2, 3, h, w)
        out = model(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        maps = model.features(x)
        assert maps[-1].shape[-2:] == (h // model.stride, w // model.stride)
        # the classifier reads the mean of the last feature map
        torch.testing.assert_close(model.forward_head(maps[-1]), out)


@pytest.mark.parametrize("name", NANO)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("name", NANO)
def test_same_seed_gives_same_weights(name):
    states = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        states.append(create_model(name).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.parametrize("name", NANO)
def test_config_is_json_and_rebuilds_the_architecture(name):
    model = create_model(name, num_classes=7, drop_path=0.1)
    config = json.loads(json.dumps(model.config))
    assert config["preset"] == name and config["num_classes"] == 7 and config["drop_path"] == 0.1
    assert config["img_size"] == [32, 32] and config["in_chans"] == 3
    rebuilt = from_config(config)
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_reset_classifier():
    model = create_model("container_light_nano")
    model.reset_classifier(5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert model.num_classes == 5 and model.config["num_classes"] == 5
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


def test_overrides_change_the_network():
    """Per-stage overrides apply to every stage; dims/depths give one entry per stage."""
    base = create_model("container_light_nano")
    scaled = create_model("container_light_nano", layer_scale=1e-6)
    assert count_params(scaled) == count_params(base) + 2 * sum(s["dim"] * s["depth"]
                                                                for s in base.config["stages"])
    deeper = create_model("container_light_nano", depths=[1, 1, 1, 2])
    assert len(deeper.stages[3].blocks) == 2
    attention = create_model("deit_tiny_nano", mixer="gpsa")
    assert type(attention.stages[0].blocks[0].mixer).__name__ == "GatedPositionalAttention"


def test_in_chans_and_layer_scale_init():
    model = create_model("poolformer_s12_nano", in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    gammas = [m.gamma for m in model.modules() if hasattr(m, "gamma")]
    assert gammas and all(torch.all(g == 1e-5) for g in gammas)


def test_deit_position_embedding_is_resized():
    """DeiT's absolute position embedding is learned at the built grid and resized to others."""
    model = create_model("deit_tiny_nano").eval()
    stage = model.stages[0]
    assert stage.pos_embed.shape == (1, 32, 8, 8)
    assert stage.position((8, 8)) is stage.pos_embed
    assert stage.position((16, 12)).shape == (1, 32, 16, 12)
