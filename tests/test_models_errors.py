"""Every bad input is refused with an error that names the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

from unifiedctx.models import count_macs, create_model, record_affinities


@pytest.fixture(scope="module")
def nano():
    return create_model("container_light_nano").eval()


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="unknown model 'container_lite'.*'container_light'"):
        create_model("container_lite")
    with pytest.raises(ValueError, match="deit_tiny"):
        create_model("deit-tiny")
    with pytest.raises(TypeError, match="name must be a string"):
        create_model(3)


@pytest.mark.parametrize(("name", "size"), [("deit_tiny", 225), ("container_light", (224, 100)),
                                            ("mixer_s16_nano", 30), ("poolformer_s12", 200)])
def test_img_size_the_strides_do_not_divide(name, size):
    with pytest.raises(ValueError, match=r"img_size=.*not divisible .*stride"):
        create_model(name, img_size=size)


@pytest.mark.parametrize("size", ["big", 0, (32,), (32.0, 32), True])
def test_img_size_of_the_wrong_type(size):
    with pytest.raises((TypeError, ValueError), match="img_size"):
        create_model("convnet_nano", img_size=size)


def test_forward_with_a_size_the_strides_do_not_divide(nano):
    with pytest.raises(ValueError, match=r"input size 36x36 .* stride 8"):
        nano(torch.randn(1, 3, 36, 36))
    with pytest.raises(ValueError, match=r"input size 32x20 .* stride 8"):
        nano.features(torch.randn(1, 3, 32, 20))


def test_mixer_models_refuse_other_sizes_naming_img_size():
    model = create_model("mixer_s16_nano")
    with pytest.raises(ValueError, match=r"built for img_size=\(32, 32\).*64x64.*img_size=\(64, 64\)"):
        model(torch.randn(1, 3, 64, 64))
    assert create_model("mixer_s16_nano", img_size=64)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_bad_tensors(nano):
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        nano(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        nano(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        nano([[1.0]])


def test_bad_options():
    with pytest.raises(TypeError, match="unknown option 'depth_rate'"):
        create_model("convnet_nano", depth_rate=0.1)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("convnet_nano", num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        create_model("convnet_nano", in_chans=0)
    with pytest.raises(ValueError, match="depths must be a list with one entry per stage"):
        create_model("convnet_nano", depths=[1, 1])
    with pytest.raises(ValueError, match="norm must be one of"):
        create_model("convnet_nano", norm="instance")
    with pytest.raises(ValueError, match="init must be one of"):
        create_model("convnet_nano", init="xavier")
    with pytest.raises(ValueError, match="drop_path"):
        create_model("convnet_nano", drop_path=1.5)
    with pytest.raises(ValueError, match=r"stages\[0\]\['dim'\]"):
        create_model("convnet_nano", dims=[0, 16, 24, 32])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        create_model("convnet_nano", stages=[{"dim": 8, "depth": 1, "stride": 2, "mixer": object()}])
    with pytest.raises(TypeError, match="has no option 'window'"):
        create_model("convnet_nano", mixer_options={"window": 3})


def test_bad_calls(nano):
    with pytest.raises(ValueError, match="num_classes"):
        nano.reset_classifier(-2)
    with pytest.raises(ValueError, match="batch"):
        count_macs(nano, batch=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        record_affinities("model", torch.randn(1, 3, 32, 32))
