"""Helpers shared by the synthetic tasks (``texture``, ``longrange``)."""

from __future__ import annotations

import torch


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` (values outside are clipped) to uint8 in ``[0, 255]``."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def check_common(n_train: int, n_test: int, size: int, channels: int, seed: int, min_size: int = 8) -> None:
    """Raise ``ValueError`` naming the first bad option of a synthetic task."""
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("size", size, min_size),
                             ("channels", channels, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
