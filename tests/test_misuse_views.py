"""The views and networks name the argument they refuse (never a shape error from inside torch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import unifiedctx
from unifiedctx.mixers import REGISTRY, available, create


def tiny(name):
    return create(name, **REGISTRY[name].example_options((4, 4))[0])


@pytest.mark.parametrize("name", available())
def test_project_refuses_z_of_another_shape_naming_m_and_d(name):
    mixer = tiny(name)
    x = torch.randn(1, mixer.dim, 4, 4)
    z = mixer.affinity(x) @ mixer.values(x)
    mixer.project(z)  # the right shape is accepted
    wrong_heads = torch.randn(z.shape[0], z.shape[1] + 1, *z.shape[2:])
    wrong_width = torch.randn(*z.shape[:3], z.shape[3] + 1)
    for bad in (wrong_heads, wrong_width):
        with pytest.raises(ValueError, match=rf"M={mixer.heads}, N, d={mixer.value_dim}"):
            mixer.project(bad)


@pytest.mark.parametrize("dtype, error, match", [
    (torch.uint8, TypeError, r"uint8 image.*x.float\(\) / 255"),
    (torch.float64, TypeError, "float64 but the parameters it meets are torch.float32"),
    (torch.int64, TypeError, "floating-point"),
])
def test_a_model_refuses_an_image_of_another_dtype(dtype, error, match):
    model = unifiedctx.create_model("convnet_nano").eval()
    with pytest.raises(error, match=match):
        model(torch.zeros(1, 3, 32, 32, dtype=dtype))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # float32 is fine
    assert model.double()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("option, value, error", [
    ("drop_path", "0.1", TypeError), ("drop_path", float("nan"), ValueError), ("drop_path", 1.0, ValueError),
    ("dropout", -0.1, ValueError), ("abs_pos_embed", "False", TypeError), ("init", "kaiming", ValueError),
])
def test_create_model_names_a_bad_builder_option(option, value, error):
    with pytest.raises(error, match=option):
        unifiedctx.create_model("deit_tiny_nano", **{option: value})


def test_inspect_names_the_channel_count_and_dtype_a_layer_takes():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    with pytest.raises(ValueError, match="4 channels but this Conv2d takes 8"):
        unifiedctx.inspect(conv, torch.randn(1, 4, 5, 5))
    with pytest.raises(TypeError, match="float64 but the parameters"):
        unifiedctx.inspect(conv, torch.randn(1, 8, 5, 5, dtype=torch.float64))
    view = unifiedctx.inspect(conv.double(), torch.randn(1, 8, 5, 5, dtype=torch.float64))
    assert view.affinity.shape == (1, 8, 25, 25)


def test_an_image_with_nan_or_inf_is_refused_not_drawn_as_zeros():
    import math

    import numpy as np
    from misuse_helpers import raises_at_door

    from unifiedctx.viz._common import image_array

    good = torch.arange(12.0).reshape(1, 3, 2, 2)
    out = image_array(good)
    assert out.shape == (2, 2, 3) and out.min() == 0.0 and out.max() == 1.0
    for bad in (math.nan, math.inf, -math.inf):
        image = good.clone()
        image[0, 1, 0, 1] = bad
        err = raises_at_door("image", image_array, image)
        assert "1 non-finite values of 12" in str(err)
        raises_at_door("image", image_array, image[0].numpy())
    assert isinstance(raises_at_door("image", image_array, np.array([["a", "b"]])), TypeError)
    assert image_array(np.ones((2, 2), dtype=bool)).shape == (2, 2)  # a bool mask is numbers


def test_the_comparison_figure_refuses_a_nan_image():
    import math

    from misuse_helpers import raises_at_door

    from unifiedctx.viz.affinity import comparison_figure

    image = torch.rand(3, 16, 16)
    image[0, 3, 3] = math.nan
    raises_at_door("image", comparison_figure, image)
