"""Segmenter: (B, K, H, W) logits from every backbone family, the stated FPN formula, config round trip."""

import math

import pytest
import torch
import torch.nn.functional as F

from unifiedctx.models import create_model
from unifiedctx.models.segment import SegmentationHead, Segmenter, create_segmenter, from_config
from unifiedctx.train import load_checkpoint, save_checkpoint

NANO = ["convnet_nano", "container_light_nano", "container_nano", "deit_tiny_nano", "mixer_s16_nano",
        "poolformer_s12_nano"]


@pytest.mark.parametrize("preset", NANO)
def test_logits_per_pixel_for_every_family(preset):
    torch.manual_seed(0)
    model = create_segmenter(preset, num_classes=5, img_size=(32, 48), in_chans=1)
    out = model(torch.randn(2, 1, 32, 48))
    assert out.shape == (2, 5, 32, 48)
    assert model.num_classes == 5 and model.backbone.num_classes == 0
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing  # no unused parameter (DDP would refuse them): the classifier is gone


def test_other_input_sizes_unless_grid_bound():
    model = create_segmenter("container_light_nano", 3, img_size=32)
    assert model(torch.randn(1, 3, 64, 40)).shape == (1, 3, 64, 40)
    bound = create_segmenter("mixer_s16_nano", 3, img_size=32)
    with pytest.raises(ValueError, match="img_size"):
        bound(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 36, 36))


def _reference_head(head: SegmentationHead, maps):
    """The module docstring's formula, in float64, written with einsum and repeat_interleave."""
    def lateral(conv, f):
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], f) + conv.bias.view(1, -1, 1, 1)

    p = lateral(head.lateral[-1], maps[-1])
    for conv, f in zip(reversed(head.lateral[:-1]), reversed(maps[:-1])):
        ry, rx = f.shape[-2] // p.shape[-2], f.shape[-1] // p.shape[-1]
        p = lateral(conv, f) + p.repeat_interleave(ry, -2).repeat_interleave(rx, -1)
    conv, gn = head.smooth[0], head.smooth[1]
    z = F.conv2d(p, conv.weight, padding=1)
    b, c, h, w = z.shape
    groups = z.reshape(b, gn.num_groups, -1)  # each sample's group: (C / G) x H x W values
    mean, var = groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True)
    z = ((groups - mean) / torch.sqrt(var + gn.eps)).reshape(b, c, h, w)
    z = F.gelu(z * gn.weight.view(1, -1, 1, 1) + gn.bias.view(1, -1, 1, 1))
    return lateral(head.classifier, z)


@pytest.mark.parametrize("dims, sizes, width", [([4, 6, 8, 10], [16, 8, 4, 4], 12), ([7], [6], 5)])
def test_head_is_the_stated_top_down_formula(dims, sizes, width):
    torch.manual_seed(1)
    head = SegmentationHead(dims, num_classes=3, width=width).double()
    with torch.no_grad():  # a non-trivial GroupNorm affine
        head.smooth[1].weight.uniform_(0.5, 2)
        head.smooth[1].bias.uniform_(-1, 1)
    assert head.smooth[1].num_groups == math.gcd(8, width)  # 4 groups of 3 channels; 1 group of 5
    maps = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in zip(dims, sizes)]
    torch.testing.assert_close(head(maps), _reference_head(head, maps), rtol=1e-12, atol=1e-12)


def test_segmenter_upsamples_the_finest_prediction_bilinearly():
    torch.manual_seed(2)
    model = create_segmenter("container_light_nano", 4, img_size=32).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    coarse = model.head(model.backbone.features(x))
    assert coarse.shape[-2:] == (16, 16)  # nano: first stride 2
    expected = F.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_config_rebuilds_the_architecture_and_checkpoints_round_trip(tmp_path):
    torch.manual_seed(3)
    model = create_segmenter("deit_tiny_nano", 6, img_size=32, width=12, in_chans=1)
    assert model.config["segmenter"] == {"num_classes": 6, "width": 12}
    rebuilt = from_config(model.config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())  # strict: same parameters and buffers
    x = torch.randn(1, 1, 32, 32)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)
    save_checkpoint(tmp_path / "seg.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "seg.pt", from_config(model.config))
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    other = create_segmenter("deit_tiny_nano", 7, img_size=32, width=12, in_chans=1)
    with pytest.raises(ValueError, match="segmenter"):
        load_checkpoint(tmp_path / "seg.pt", other)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        create_segmenter("convnet_nano", 0)
    with pytest.raises(ValueError, match="width"):
        create_segmenter("convnet_nano", 3, width=0)
    with pytest.raises(TypeError, match="backbone"):
        Segmenter(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="Segmenter's config"):
        from_config({"preset": "convnet_nano"})
    backbone = create_model("convnet_nano", num_classes=10)
    Segmenter(backbone, 3)
    assert backbone.num_classes == 0 and backbone.config["num_classes"] == 0
