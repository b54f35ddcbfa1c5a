"""Helpers shared by the synthetic tasks (``texture``, ``longrange``)."""

from __future__ import annotations

import torch

from ..validation import check_int, check_seed


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` (values outside are clipped) to uint8 in ``[0, 255]``."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def check_common(n_train: int, n_test: int, size: int, channels: int, seed: int, min_size: int = 8) -> None:
    """Raise ``TypeError`` (not an int) or ``ValueError`` (too small) naming the first bad option
    of a synthetic task."""
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("size", size, min_size),
                             ("channels", channels, 1)):
        check_int(name, value, low=low)
    check_seed("seed", seed)
