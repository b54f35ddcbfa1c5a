"""The plain U-Net reference of notebook 09: shapes, its config, and its input checks."""

import pytest
import torch

from unifiedctx.models import count_params
from unifiedctx.models.unet import UNet


def test_unet_maps_an_image_to_per_pixel_logits_and_rebuilds_from_its_config():
    torch.manual_seed(0)
    model = UNet(11, in_chans=1, base=5, depth=3).double()
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    out = model(x)
    assert out.shape == (2, 11, 64, 64)
    again = UNet(**model.config["unet"]).double()
    again.load_state_dict(model.state_dict())
    assert torch.equal(again(x), out)


def test_unet_has_about_the_nano_segmenters_parameter_count():
    assert 35_000 < count_params(UNet(11, in_chans=1, base=5, depth=3)) < 50_000


def test_unet_rejects_a_size_its_depth_does_not_divide_and_wrong_channels():
    model = UNet(3, in_chans=1, base=4, depth=3)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8"):
        model(torch.zeros(1, 1, 60, 64))
    with pytest.raises(ValueError, match="\\(B, 1, H, W\\)"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError):
        UNet(True)
