"""``texture``: a synthetic task whose class lives only in *local* texture.

Each image is a tiling of one binary pattern of period ``period`` (default 4 pixels) with a
50 % duty cycle; the class is the pattern's orientation:

=====  ==============  ===========================================
label  name            pattern on pixel (y, x), phases (py, px)
=====  ==============  ===========================================
0      ``horizontal``  ``(y + py) mod P < P/2``  (stripes along x)
1      ``vertical``    ``(x + px) mod P < P/2``
2      ``diagonal``    ``(x + y + px) mod P < P/2``
3      ``checker``     ``((x + px) mod P < P/2) xor ((y + py) mod P < P/2)``
=====  ==============  ===========================================

Per image, the phases are random (so no pixel position says anything about the class), the
two colours are random (a dark background and a brighter foreground, per channel), the
contrast is jittered and Gaussian noise is added. Every pattern covers half the pixels, so
the mean brightness carries no information either. Any patch of about ``P x P`` pixels decides
the class (which neighbour offsets keep the pixel value: right, down or down-left), so a
small receptive field (a convolution) suffices and a good inductive bias shows as sample
efficiency.

Images are generated from ``torch.Generator``s seeded with ``2 * seed`` (training split) and
``2 * seed + 1`` (test split), so each split depends only on ``seed`` and its own size.
"""

from __future__ import annotations

import torch

from ..validation import check_int, check_positive_int
from .base import ImageData, channel_stats
from .synthetic import check_common, to_uint8

CLASSES = ["horizontal", "vertical", "diagonal", "checker"]
NOISE = 0.06


def texture_images(n: int, size: int = 32, channels: int = 3, period: int = 4,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` texture images, uint8 ``(n, channels, size, size)``, and their int64 labels ``(n,)``
    (classes exactly balanced, in random order)."""
    n, size = check_positive_int("n", n), check_positive_int("size", size)
    channels = check_positive_int("channels", channels)
    if check_int("period", period, low=2, high=size) % 2:
        raise ValueError(f"period must be an even int in [2, size], got {period!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=gen)]
    coords = torch.arange(size)
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    py = torch.randint(period, (n, 1, 1), generator=gen)
    px = torch.randint(period, (n, 1, 1), generator=gen)
    half = period // 2
    bit_y = (y + py) % period < half
    bit_x = (x + px) % period < half
    label = labels.view(n, 1, 1)
    pattern = torch.where(label == 0, bit_y, torch.where(label == 1, bit_x, torch.where(
        label == 2, (x + y + px) % period < half, bit_x ^ bit_y)))        # (n, size, size)
    pattern = pattern.unsqueeze(1).float()                              # (n, 1, size, size)
    background = torch.rand(n, channels, 1, 1, generator=gen) * 0.35
    contrast = 0.3 + 0.35 * torch.rand(n, 1, 1, 1, generator=gen)
    tint = 0.6 + 0.4 * torch.rand(n, channels, 1, 1, generator=gen)
    image = background + contrast * tint * pattern
    image = image + NOISE * torch.randn(n, channels, size, size, generator=gen)
    return to_uint8(image), labels


def load_texture(n_train: int = 5000, n_test: int = 1000, size: int = 32, channels: int = 3,
                 period: int = 4, seed: int = 0) -> ImageData:
    """The ``texture`` task (see the module docstring) as :class:`ImageData` with 4 classes."""
    check_common(n_train, n_test, size, channels, seed)
    if check_int("period", period, low=2, high=size) % 2:
        raise ValueError(f"period must be an even int in [2, size], got {period!r}")
    (train_x, train_y), (test_x, test_y) = (
        texture_images(n, size, channels, period, torch.Generator().manual_seed(2 * seed + i))
        for i, n in enumerate((n_train, n_test)))
    mean, std = channel_stats(train_x)
    # a mirror turns a diagonal into an anti-diagonal; a padded crop breaks the period at the border
    return ImageData("texture", train_x, train_y, test_x, test_y, list(CLASSES), mean, std,
                     crop_ok=False, flip_ok=False)
