"""DINO's parts: multi-crop augmentation, the projection head, the loss, the schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unifiedctx.train.dino import (
    DinoHead,
    DinoLoss,
    MultiCrop,
    color_jitter,
    crop_boxes,
    is_grey,
    resized_crops,
    teacher_momentum,
    teacher_temperature,
)


def box(h, w, cy, cx, flip=False):
    """theta (1, 2, 3) of a box of fractional size h x w centred at (cy, cx) in [-1, 1] units."""
    return torch.tensor([[[-w if flip else w, 0.0, cx], [0.0, h, cy]]], dtype=torch.float64)


# ---------------------------------------------------------------------------- multi-crop
def test_the_whole_image_box_gives_the_image_back():
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    theta = crop_boxes(3, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.equal(theta[:, :, 2], torch.zeros(3, 2))  # centred: no room to move
    torch.testing.assert_close(resized_crops(x, theta, 8), x, atol=1e-12, rtol=0)


def test_a_pixel_aligned_crop_equals_interpolating_the_cut_out_region():
    # rows 4..19, cols 8..23 of a 32 x 32 image, shrunk to 8 x 8: F.interpolate on the slice
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    theta = box(0.5, 0.5, cy=(4 + 8) / 16 - 1, cx=(8 + 8) / 16 - 1).repeat(2, 1, 1)
    want = F.interpolate(x[:, :, 4:20, 8:24], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized_crops(x, theta, 8), want, atol=1e-12, rtol=0)
    flipped = resized_crops(
        x, box(0.5, 0.5, (4 + 8) / 16 - 1, (8 + 8) / 16 - 1, flip=True).repeat(2, 1, 1), 8
    )
    torch.testing.assert_close(flipped, want.flip(-1), atol=1e-12, rtol=0)


def test_boxes_stay_inside_the_image_and_cover_the_asked_area():
    theta = crop_boxes(4000, scale=(0.05, 0.4), generator=torch.Generator().manual_seed(0))
    w, h, cx, cy = theta[:, 0, 0].abs(), theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    assert (cx.abs() <= 1 - w + 1e-12).all() and (cy.abs() <= 1 - h + 1e-12).all()
    area = w * h
    assert area.min() >= 0.05 - 1e-12 and area.max() <= 0.4 + 1e-12
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-9 and ratio.max() <= 4 / 3 + 1e-9
    assert (theta[:, 0, 0] > 0).all()  # no flips unless asked
    flips = crop_boxes(4000, (0.4, 1.0), flip=True, generator=torch.Generator().manual_seed(0))[:, 0, 0] < 0
    assert 0.45 < flips.double().mean() < 0.55


def test_multicrop_shapes_and_that_the_global_rng_decides_the_crops():
    x = torch.randn(5, 3, 32, 32)
    crop = MultiCrop(32, 16, local_crops=3)
    torch.manual_seed(7)
    a = crop(x)
    torch.manual_seed(7)
    b = crop(x)
    assert [tuple(c.shape) for c in a] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], a[1])  # two different views
    gen = torch.Generator().manual_seed(7)
    assert len(crop(x, generator=gen)) == 5


def test_colour_jitter_keeps_range_and_grey_stays_grey():
    gen = torch.Generator().manual_seed(0)
    colour = torch.rand(64, 3, 8, 8, generator=gen, dtype=torch.float64)
    out = color_jitter(colour, 0.4, p=1.0, generator=gen)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, colour)
    grey = torch.rand(64, 1, 8, 8, generator=gen, dtype=torch.float64).expand(64, 3, 8, 8)
    out = color_jitter(grey, 0.4, p=1.0, generator=gen)
    torch.testing.assert_close(out, out[:, :1].expand_as(out), atol=1e-12, rtol=0)
    torch.testing.assert_close(color_jitter(colour, 0.4, p=0.0), colour, atol=1e-12, rtol=0)
    assert is_grey(torch.zeros(4, 1, 8, 8)) and is_grey(grey) and not is_grey(colour)


def test_brightness_alone_multiplies_the_pixels():
    # contrast and saturation factors drawn 1 +- 0 leave x; brightness then scales x by its factor
    x = torch.full((2, 3, 4, 4), 0.25, dtype=torch.float64)
    out = color_jitter(x, strength=0.4, p=1.0, generator=torch.Generator().manual_seed(3))
    factor = out[:, 0, 0, 0] / 0.25  # a flat grey image: contrast and saturation cannot change it
    assert ((factor >= 0.6 - 1e-12) & (factor <= 1.4 + 1e-12)).all()
    torch.testing.assert_close(out, 0.25 * factor.view(2, 1, 1, 1).expand_as(out), atol=1e-12, rtol=0)


def test_multicrop_refuses_bad_settings_by_name():
    with pytest.raises(ValueError, match="local_size"):
        MultiCrop(32, 0)
    with pytest.raises(ValueError, match="local_scale"):
        MultiCrop(32, 16, local_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="local_crops"):
        MultiCrop(32, 16, local_crops=-1)
    with pytest.raises(ValueError, match="3-channel"):
        MultiCrop(32, 16, jitter=0.4, mean=(0.5,), std=(0.2,))
    for wrong in ({"global_size": True}, {"local_size": 16.0}, {"local_crops": "2"}, {"jitter": "0.1"}):
        with pytest.raises(TypeError, match=next(iter(wrong))):  # bool is not a size, strings not numbers
            MultiCrop(**({"global_size": 32, "local_size": 16} | wrong))
    with pytest.raises(ValueError, match="jitter"):
        MultiCrop(32, 16, jitter=1.0)
    with pytest.raises(ValueError, match="x must be"):
        MultiCrop(32, 16)(torch.zeros(3, 32, 32))


# ---------------------------------------------------------------------------- head
def test_head_is_an_mlp_then_cosines_with_unit_prototypes():
    torch.manual_seed(0)
    head = DinoHead(12, out_dim=40, hidden_dim=24, bottleneck_dim=8, layers=3).double()
    f = torch.randn(6, 12, dtype=torch.float64)
    lin = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    h = lin[2](F.gelu(lin[1](F.gelu(lin[0](f)))))
    v = head.last_layer.parametrizations.weight.original1
    want = (h / h.norm(dim=1, keepdim=True)) @ (v / v.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(f), want, atol=1e-12, rtol=0)
    assert head(f).abs().max() <= 1 + 1e-12
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones_like(g)) and not g.requires_grad
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in trainable
    assert "last_layer.parametrizations.weight.original0" not in trainable
    with pytest.raises(ValueError, match=r"features must have shape \(B, 12\)"):
        head(torch.randn(6, 11, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_dim"):
        DinoHead(12, out_dim=0)


def test_head_with_batch_norm_and_one_layer():
    head = DinoHead(12, out_dim=10, hidden_dim=24, bottleneck_dim=8, layers=3, batch_norm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp) == 2
    single = DinoHead(12, out_dim=10, bottleneck_dim=8, layers=1)
    assert [type(m) for m in single.mlp] == [torch.nn.Linear]
    assert single(torch.randn(3, 12)).shape == (3, 10)


# ---------------------------------------------------------------------------- loss
def dino_loss_by_the_formula(student, teacher, center, tau_s, tau_t):
    """The paper's loss: sum over global g and every crop v != g of H(P_t(g), P_s(v)), averaged
    over the pairs and the images, written with numpy one image at a time."""

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    total, pairs = 0.0, 0
    for g, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == g:
                continue
            pair = 0.0
            for b in range(t.shape[0]):
                p_t = softmax((t[b] - center) / tau_t)
                log_p_s = np.log(softmax(s[b] / tau_s))
                pair += -(p_t * log_p_s).sum()
            total += pair / t.shape[0]
            pairs += 1
    return total / pairs


def test_dino_loss_matches_the_formula_in_float64():
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(5, 16, generator=gen, dtype=torch.float64) for _ in range(6)]
    teacher = [torch.randn(5, 16, generator=gen, dtype=torch.float64) for _ in range(2)]
    criterion = DinoLoss(16, student_temp=0.1, center_momentum=0.9).double()
    criterion.center.copy_(0.3 * torch.randn(1, 16, generator=gen, dtype=torch.float64))
    got = criterion(student, teacher, teacher_temp=0.04)
    want = dino_loss_by_the_formula(
        [s.numpy() for s in student], [t.numpy() for t in teacher], criterion.center[0].numpy(), 0.1, 0.04
    )
    assert got.dtype == torch.float64 and abs(got.item() - want) < 1e-10


def test_centre_is_an_ema_of_the_teacher_batch_mean():
    gen = torch.Generator().manual_seed(1)
    teacher = [torch.randn(4, 8, generator=gen, dtype=torch.float64) for _ in range(2)]
    criterion = DinoLoss(8, center_momentum=0.9).double()
    start = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    criterion.center.copy_(start)
    criterion.update_center(teacher)
    want = 0.9 * start + 0.1 * torch.cat(teacher).mean(0, keepdim=True)
    torch.testing.assert_close(criterion.center, want, atol=1e-12, rtol=0)


def test_dino_loss_refuses_fewer_student_than_teacher_crops():
    t = [torch.randn(4, 8) for _ in range(2)]
    with pytest.raises(ValueError, match="global crops"):
        DinoLoss(8)([t[0]], t, 0.1)


# ---------------------------------------------------------------------------- schedules
def test_schedules_follow_their_formulas():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(99, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(5, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    steps = np.arange(101)
    want = 1 - (1 - 0.99) * (np.cos(np.pi * steps / 100) + 1) / 2
    got = np.array([teacher_momentum(int(s), 100, 0.99) for s in steps])
    np.testing.assert_allclose(got, want, atol=1e-15)
    assert got[0] == pytest.approx(0.99) and got[-1] == pytest.approx(1.0) and (np.diff(got) >= 0).all()
    assert math.isclose(teacher_momentum(50, 100, 0.9), 0.95)
