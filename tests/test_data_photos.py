"""The offline sample photos: shapes, ranges, crops and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unifiedctx.data.photos import sample_photo


def test_full_photo_is_the_jpeg_scaled_to_unit_range():
    from sklearn.datasets import load_sample_image

    photo = sample_photo("flower")
    raw = np.asarray(load_sample_image("flower.jpg"))
    assert photo.shape == (3, 427, 640) and photo.dtype == torch.float64
    assert torch.equal(photo, torch.from_numpy(raw.copy()).permute(2, 0, 1).double() / 255)


def test_square_size_is_the_centre_crop_averaged():
    photo = sample_photo("china", size=61)  # 427 = 7 * 61: each output pixel averages a 7 x 7 block
    full = sample_photo("china")
    left = (640 - 427) // 2
    block = full[:, :7, left:left + 7].mean((1, 2))
    assert photo.shape == (3, 61, 61)
    torch.testing.assert_close(photo[:, 0, 0], block, rtol=0, atol=1e-12)


def test_pair_size_and_dtype():
    photo = sample_photo("china", size=(32, 48), dtype=torch.float32)
    assert photo.shape == (3, 32, 48) and photo.dtype == torch.float32
    assert 0 <= photo.min() and photo.max() <= 1


@pytest.mark.parametrize("kwargs, error, match", [
    ({"name": "cat"}, ValueError, "name must be .china. or .flower., got .cat."),
    ({"size": 0}, ValueError, r"size\[0\] \(H\) must be positive, got 0"),
    ({"size": (3,)}, TypeError, r"size must be an int or a pair \(H, W\)"),
    ({"size": True}, TypeError, r"size must be an int or a pair \(H, W\), got bool True"),
    ({"dtype": torch.int64}, TypeError, "dtype must be"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample_photo(**kwargs)
