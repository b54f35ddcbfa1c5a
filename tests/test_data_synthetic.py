"""The synthetic tasks: ``texture`` (class from any small patch) and ``longrange`` (same or
different shape of two far-apart marks)."""

from __future__ import annotations

import pytest
import torch

from unifiedctx import data
from unifiedctx.data import longrange, texture


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- shared: determinism, shapes

@pytest.mark.parametrize("name", ["texture", "longrange"])
def test_deterministic_seeded_and_shaped(name):
    a = data.load(name, n_train=60, n_test=20, size=16, channels=2, seed=3)
    b = data.load(name, n_train=60, n_test=20, size=16, channels=2, seed=3)
    c = data.load(name, n_train=60, n_test=20, size=16, channels=2, seed=4)
    assert a.train_x.shape == (60, 2, 16, 16) and a.test_x.shape == (20, 2, 16, 16)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert not torch.equal(a.train_x[:20], a.test_x)  # the test split is drawn apart
    # the test split does not depend on the size of the training split
    d = data.load(name, n_train=30, n_test=20, size=16, channels=2, seed=3)
    assert torch.equal(d.test_x, a.test_x)


@pytest.mark.parametrize("name,k", [("texture", 4), ("longrange", 2)])
def test_labels_are_balanced(name, k):
    ds = data.load(name, n_train=101, n_test=40, size=16)
    assert ds.num_classes == k
    counts = torch.bincount(ds.train_y, minlength=k)
    assert counts.max() - counts.min() <= 1
    assert torch.bincount(ds.test_y, minlength=k).tolist() == [40 // k] * k


@pytest.mark.parametrize("name,option", [("texture", {"n_train": 0}), ("texture", {"period": 3}),
                                         ("longrange", {"size": 4}), ("longrange", {"min_distance": 40}),
                                         ("longrange", {"seed": -1})])
def test_bad_options_are_named(name, option):
    with pytest.raises(ValueError, match=next(iter(option))):
        data.load(name, **option)


# ---------------------------------------------------------------- texture

def direction_changes(patch: torch.Tensor) -> torch.Tensor:
    """Mean |difference| of a grey patch (H, W) to its neighbour right, down, down-left, down-right."""
    p = patch.float()
    return torch.stack([(p[:, 1:] - p[:, :-1]).abs().mean(), (p[1:] - p[:-1]).abs().mean(),
                        (p[1:, :-1] - p[:-1, 1:]).abs().mean(), (p[1:, 1:] - p[:-1, :-1]).abs().mean()])


def classify_patch(patch: torch.Tensor) -> int:
    """A hand-written rule: the direction along which the pixel value stays put gives the class
    (right: horizontal stripes, down: vertical stripes, down-left: diagonal); none: checker."""
    d = direction_changes(patch)
    d = d / d.max()
    if d[:3].min() > 0.5:
        return 3
    return int(d[:3].argmin())


def test_texture_class_is_decidable_from_one_small_patch():
    x, y = texture.texture_images(200, size=32, channels=3, generator=gen(0))
    rng = gen(1)
    correct = 0
    for i in range(len(x)):
        r, c = torch.randint(0, 32 - 6, (2,), generator=rng).tolist()
        correct += classify_patch(x[i, :, r:r + 6, c:c + 6].float().mean(0)) == int(y[i])
    assert correct / len(x) > 0.95


def test_texture_position_and_brightness_carry_no_class():
    x, y = texture.texture_images(2000, size=16, channels=1, generator=gen(2))
    x = x.float()[:, 0]
    per_class_mean = torch.stack([x[y == k].mean(0) for k in range(4)])   # (4, 16, 16)
    # random phases: averaged over a class the image is flat (no position says anything) ...
    assert per_class_mean.std(dim=(1, 2)).max() < 0.1 * x.std()
    # ... and every class has the same mean brightness (each pattern covers half the pixels)
    # (within sampling error: colours and contrast vary from image to image)
    per_image = x.mean(dim=(1, 2))
    standard_error = per_image.std() / (len(x) / 4) ** 0.5
    brightness = torch.stack([per_image[y == k].mean() for k in range(4)])
    assert brightness.max() - brightness.min() < 4 * standard_error


# ---------------------------------------------------------------- longrange

def test_longrange_images_show_exactly_the_scene():
    """Thresholding each image finds the two marks' shapes at their centres and nothing else."""
    s = longrange.longrange_scenes(300, size=24, channels=3, generator=gen(0))
    bright = (s.images.float().mean(1) > 0.5 * 255)                     # (n, H, W)
    for i in range(len(s.images)):
        expected = torch.zeros(24, 24, dtype=torch.bool)
        for m in range(2):
            r, c = s.centres[i, m].tolist()
            found = bright[i, r - 1:r + 2, c - 1:c + 2]
            assert torch.equal(found, longrange.SHAPES[s.shapes[i, m]].bool())
            expected[r - 1:r + 2, c - 1:c + 2] = longrange.SHAPES[s.shapes[i, m]].bool()
        assert torch.equal(bright[i], expected)
    assert torch.equal(s.labels, (s.shapes[:, 0] == s.shapes[:, 1]).long())


def test_longrange_marks_are_far_apart():
    s = longrange.longrange_scenes(500, size=32, generator=gen(1))
    distance = (s.centres[:, 0] - s.centres[:, 1]).float().norm(dim=1)
    assert distance.min() >= 16
    assert s.centres.min() >= 1 and s.centres.max() <= 30
    s = longrange.longrange_scenes(200, size=32, min_distance=24, generator=gen(1))
    assert (s.centres[:, 0] - s.centres[:, 1]).float().norm(dim=1).min() >= 24


def test_longrange_single_marks_say_nothing_about_the_label():
    s = longrange.longrange_scenes(6000, size=16, generator=gen(2))
    k = len(longrange.SHAPES)
    assert (longrange.SHAPES.sum(dim=(1, 2)) == 5).all()  # equal ink: total brightness is no clue
    for label in (0, 1):
        for m in range(2):
            freq = torch.bincount(s.shapes[s.labels == label, m], minlength=k).float()
            freq = freq / freq.sum()
            assert (freq - 1 / k).abs().max() < 0.03, (label, m, freq)
    # the mean ink of an image is the same in both classes
    ink = s.images.float().mean(dim=(1, 2, 3))
    assert (ink[s.labels == 1].mean() - ink[s.labels == 0].mean()).abs() < 0.01 * ink.mean()


def test_longrange_swapping_one_mark_flips_the_label():
    s = longrange.longrange_scenes(50, size=24, generator=gen(3))
    swapped = s.shapes.clone()
    k = len(longrange.SHAPES)
    # make each "same" pair different and each "different" pair the same, by changing mark 2 only
    swapped[:, 1] = torch.where(s.labels == 1, (s.shapes[:, 0] + 1) % k, s.shapes[:, 0])
    images = longrange.to_uint8(longrange.render(swapped, s.centres, 24, 3, gen(4)))
    bright = images.float().mean(1) > 0.5 * 255
    for i in range(50):
        r, c = s.centres[i, 1].tolist()
        assert torch.equal(bright[i, r - 1:r + 2, c - 1:c + 2], longrange.SHAPES[swapped[i, 1]].bool())
    new_labels = (swapped[:, 0] == swapped[:, 1]).long()
    assert torch.equal(new_labels, 1 - s.labels)


def test_longrange_colour_marks_show_the_palette_colour_at_each_centre():
    """marks="colors": each mark is a solid 3x3 square whose dominant channels are its palette colour."""
    s = longrange.longrange_scenes(200, size=24, channels=3, generator=gen(5), marks="colors")
    assert torch.equal(s.labels, (s.shapes[:, 0] == s.shapes[:, 1]).long())
    for i in range(len(s.images)):
        for m in range(2):
            r, c = s.centres[i, m].tolist()
            square = s.images[i, :, r - 1:r + 2, c - 1:c + 2].float() / 255          # (3, 3, 3)
            lit = longrange.PALETTE[s.shapes[i, m]].bool()
            assert (square[lit] >= 0.7 - 1e-6).all() and (square[~lit] == 0).all()
    # the colours alone say nothing about the label: each is uniform in both classes
    k = len(longrange.PALETTE)
    for label in (0, 1):
        freq = torch.bincount(s.shapes[s.labels == label, 0], minlength=k).float()
        assert (freq / freq.sum() - 1 / k).abs().max() < 0.1


def test_longrange_colour_marks_need_rgb_and_a_known_kind():
    with pytest.raises(ValueError, match="channels=3"):
        data.load("longrange", n_train=4, n_test=4, size=16, channels=1, marks="colors")
    with pytest.raises(ValueError, match="marks must be .shapes. or .colors., got .stripes."):
        data.load("longrange", n_train=4, n_test=4, size=16, marks="stripes")
    colours = data.load("longrange", n_train=8, n_test=4, size=16, marks="colors", seed=0)
    shapes = data.load("longrange", n_train=8, n_test=4, size=16, seed=0)
    assert torch.equal(colours.train_y, shapes.train_y) and not torch.equal(colours.train_x, shapes.train_x)
