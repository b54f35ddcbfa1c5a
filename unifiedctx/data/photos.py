"""Real photographs that work offline: the two that scikit-learn ships (``china``, ``flower``).

    image = sample_photo("china", size=224)       # float64 (3, 224, 224) in [0, 1]

They are for *looking* (query maps, pretrained networks, the comparison figure), not for training.
scikit-learn comes with mlxtend, the project's offline dataset dependency; without it the error
says how to get it.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import check_choice, check_int_or_pair

PHOTOS = ("china", "flower")


def sample_photo(name: str = "china", size=None, dtype=torch.float64) -> torch.Tensor:
    """One of scikit-learn's sample photos as a ``(3, H, W)`` tensor in [0, 1].

    Args:
        name: ``"china"`` (a temple) or ``"flower"``; both are 427 x 640 RGB JPEGs.
        size: ``None`` keeps 427 x 640; an int S gives the centred square crop resized to S x S
            (area resampling); a pair ``(H, W)`` resizes the whole photo to H x W.
        dtype: a floating-point dtype.
    """
    check_choice("name", name, PHOTOS)
    crop = size is not None and isinstance(size, numbers.Integral) and not isinstance(size, bool)
    if size is not None:
        size = check_int_or_pair("size", size)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as err:  # pragma: no cover - mlxtend brings scikit-learn
        raise ImportError("sample photos come from scikit-learn: pip install scikit-learn") from err
    pixels = np.asarray(load_sample_image(f"{name}.jpg"))  # (427, 640, 3) uint8
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(dtype) / 255.0
    if size is None:
        return image
    if crop:
        side = min(image.shape[1:])
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        image = image[:, top:top + side, left:left + side]
    return F.interpolate(image[None], size=tuple(size), mode="area")[0].clamp(0, 1)
