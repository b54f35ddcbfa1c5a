"""Real photographs that work offline: the two that scikit-learn ships (``china``, ``flower``).

    image = sample_photo("china", size=224)       # float64 (3, 224, 224) in [0, 1]

They are for *looking* (query maps, pretrained networks, the comparison figure), not for training.
scikit-learn comes with mlxtend, the project's offline dataset dependency; without it the error
says how to get it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("china", "flower")


def sample_photo(name: str = "china", size=None, dtype=torch.float64) -> torch.Tensor:
    """One of scikit-learn's sample photos as a ``(3, H, W)`` tensor in [0, 1].

    Args:
        name: ``"china"`` (a temple) or ``"flower"``; both are 427 x 640 RGB JPEGs.
        size: ``None`` keeps 427 x 640; an int S gives the centred square crop resized to S x S
            (area resampling); a pair ``(H, W)`` resizes the whole photo to H x W.
        dtype: a floating-point dtype.
    """
    if name not in PHOTOS:
        raise ValueError(f"name must be one of {', '.join(map(repr, PHOTOS))}, got {name!r}")
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
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        side = min(image.shape[1:])
        top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
        image, size = image[:, top:top + side, left:left + side], (size, size)
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise TypeError(f"size must be None, a positive int or a pair (H, W) of them, got {size!r}")
    return F.interpolate(image[None], size=tuple(size), mode="area")[0].clamp(0, 1)
