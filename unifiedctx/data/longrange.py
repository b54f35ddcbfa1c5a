"""``longrange``: a synthetic task that needs a *long-range* relation: are two far-apart marks
the same shape?

Each image holds two 3x3 marks, drawn from :data:`SHAPES` (five shapes, each exactly 5 pixels
on), on a dark background with light Gaussian noise. Their centres are at least
``min_distance`` pixels apart (Euclidean; default half the image side; at least 3, so the
marks never overlap). Label 1 ("same") if the two marks are the same shape, 0 ("different")
otherwise; the labels are exactly balanced.

The marks alone say nothing about the label: in both classes each mark is uniform over the
shapes, every shape has the same number of pixels (so the total brightness is no clue), and
each mark's brightness is drawn independently of the label. A network whose receptive field
never covers both marks at once sees the image as a *sum* of per-mark features; after global
pooling a linear classifier cannot tell same from different on such sums (for shapes s != t,
``f(s) + f(t)`` is the average of ``f(s) + f(s)`` and ``f(t) + f(t)``, so its score lies between
two "same" scores). A nonlinear head after pooling could count shapes, so keep the head linear.
Global attention (or a receptive field of about the image's size) can compare the two marks.

:func:`longrange_scenes` returns the scene behind each image (shapes and centres) too.
Images are generated from ``torch.Generator``s seeded with ``2 * seed`` (training split) and
``2 * seed + 1`` (test split).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..validation import check_choice, check_float, check_int, check_positive_int
from .base import ImageData, channel_stats
from .synthetic import check_common, to_uint8

CLASSES = ["different", "same"]
#: The marks: 3x3 binary shapes, 5 pixels on in each (plus, x, T, L, Z).
SHAPES = torch.tensor([
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
    [[1, 0, 1], [0, 1, 0], [1, 0, 1]],
    [[1, 1, 1], [0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [1, 0, 0], [1, 1, 1]],
    [[1, 1, 0], [0, 1, 0], [0, 1, 1]],
], dtype=torch.float32)
#: The colours for ``marks="colors"``: a solid 3x3 square in one of five saturated colours.
PALETTE = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.float32)
MARKS = ("shapes", "colors")
BACKGROUND = 0.1
NOISE = 0.04
MARK_LOW, MARK_HIGH = 0.7, 1.0


class Scenes(NamedTuple):
    """Images and the scenes behind them.

    Attributes:
        images: uint8 ``(n, channels, size, size)``.
        labels: int64 ``(n,)``: 1 if both marks have the same shape.
        shapes: int64 ``(n, 2)``: index into :data:`SHAPES` of each mark.
        centres: int64 ``(n, 2, 2)``: ``(row, column)`` of each mark's centre pixel.
    """

    images: torch.Tensor
    labels: torch.Tensor
    shapes: torch.Tensor
    centres: torch.Tensor


def sample_centres(n: int, size: int, min_distance: float, gen: torch.Generator) -> torch.Tensor:
    """``(n, 2, 2)`` pairs of centres in ``[1, size - 2]`` (a 3x3 mark fits), uniform over the
    pairs whose Euclidean distance is at least ``min_distance`` (rejection sampling)."""
    out = torch.empty(n, 2, 2, dtype=torch.int64)
    filled = 0
    while filled < n:
        draws = torch.randint(1, size - 1, (4 * (n - filled) + 64, 2, 2), generator=gen)
        distance = (draws[:, 0] - draws[:, 1]).float().norm(dim=1)
        keep = draws[distance >= min_distance][: n - filled]
        out[filled:filled + len(keep)] = keep
        filled += len(keep)
    return out


def sample_shapes(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``(n, 2)`` shape indices: the first uniform; the second equal to it where the label is 1,
    else uniform over the other shapes (so it too is uniform, in both classes)."""
    k = len(SHAPES)
    first = torch.randint(k, (len(labels),), generator=gen)
    offset = torch.randint(1, k, (len(labels),), generator=gen)
    second = torch.where(labels == 1, first, (first + offset) % k)
    return torch.stack([first, second], dim=1)


def render(shapes: torch.Tensor, centres: torch.Tensor, size: int, channels: int,
           gen: torch.Generator, marks: str = "shapes") -> torch.Tensor:
    """Draw the marks ``shapes`` (n, 2) at ``centres`` (n, 2, 2) on noisy backgrounds:
    float ``(n, channels, size, size)``. With ``marks="colors"`` the index picks a colour of
    :data:`PALETTE` for a solid 3x3 square instead of a shape of :data:`SHAPES`."""
    n = len(shapes)
    image = BACKGROUND + NOISE * torch.randn(n, channels, size, size, generator=gen)
    brightness = MARK_LOW + (MARK_HIGH - MARK_LOW) * torch.rand(n, 2, generator=gen)
    rows = torch.arange(n)
    offsets = torch.arange(-1, 2)
    for mark in range(2):
        cy = centres[:, mark, 0].view(n, 1, 1) + offsets.view(1, 3, 1)      # (n, 3, 1)
        cx = centres[:, mark, 1].view(n, 1, 1) + offsets.view(1, 1, 3)      # (n, 1, 3)
        patch = image[rows.view(n, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1),
                      cy.unsqueeze(1), cx.unsqueeze(1)]                     # (n, C, 3, 3)
        value = brightness[:, mark].view(n, 1, 1, 1)
        if marks == "colors":
            on = torch.ones(n, 3, 3)
            value = value * PALETTE[shapes[:, mark]].view(n, 3, 1, 1)
        else:
            on = SHAPES[shapes[:, mark]]                                    # (n, 3, 3)
        patch = torch.where(on.unsqueeze(1) > 0, value, patch)
        image[rows.view(n, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1),
              cy.unsqueeze(1), cx.unsqueeze(1)] = patch
    return image


def check_min_distance(min_distance, size: int) -> float:
    """``min_distance`` as a float in ``[3, size - 3]`` (3 keeps the marks apart; farther than
    ``size - 3`` is too rare to sample, and beyond the diagonal sampling would never end)."""
    value = check_float("min_distance", min_distance)
    if not 3 <= value <= size - 3:
        raise ValueError(f"min_distance must be in [3, {size - 3}] for size {size} (3 keeps the marks "
                         f"apart; farther than size - 3 is too rare to sample), got {min_distance!r}")
    return value


def longrange_scenes(n: int, size: int = 32, channels: int = 3, min_distance: float | None = None,
                     generator: torch.Generator | None = None, marks: str = "shapes") -> Scenes:
    """``n`` images of the ``longrange`` task with their scenes (see :class:`Scenes`);
    ``marks`` is ``"shapes"`` (five 3x3 shapes) or ``"colors"`` (five colours, RGB only)."""
    n = check_positive_int("n", n)
    size = check_int("size", size, low=8)
    channels = check_positive_int("channels", channels)
    check_choice("marks", marks, MARKS)
    if marks == "colors" and channels != 3:
        raise ValueError(f"marks='colors' needs channels=3 (colours), got channels={channels}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    min_distance = size / 2 if min_distance is None else check_min_distance(min_distance, size)
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=gen)]
    shapes = sample_shapes(labels, gen)
    centres = sample_centres(n, size, min_distance, gen)
    return Scenes(to_uint8(render(shapes, centres, size, channels, gen, marks)), labels, shapes, centres)


def load_longrange(n_train: int = 5000, n_test: int = 1000, size: int = 32, channels: int = 3,
                   min_distance: float | None = None, seed: int = 0, marks: str = "shapes") -> ImageData:
    """The ``longrange`` task (see the module docstring) as :class:`ImageData` with 2 classes,
    ``["different", "same"]``. ``min_distance`` defaults to ``size / 2``. ``marks="colors"``
    makes the marks solid squares of five colours: the same relation, but each mark is
    recognisable from any part of it, so a coarse patch embedding that cuts a mark in pieces
    still sees what it is (the shapes need the whole 3x3 pattern)."""
    check_common(n_train, n_test, size, channels, seed)
    check_choice("marks", marks, MARKS)
    if min_distance is not None:
        check_min_distance(min_distance, size)
    train, test = (longrange_scenes(n, size, channels, min_distance, torch.Generator().manual_seed(s), marks)
                   for n, s in ((n_train, 2 * seed), (n_test, 2 * seed + 1)))
    mean, std = channel_stats(train.images)
    # a crop may push a mark off the image; a mirror makes shapes (L, Z) that the task never draws
    return ImageData("longrange", train.images, train.labels, test.images, test.labels, list(CLASSES),
                     mean, std, crop_ok=False, flip_ok=False)
