"""mnist_canvas: seeded, train and test digits kept apart, masks and boxes that follow the stated rules."""

import numpy as np
import pytest
import torch

from unifiedctx import data
from unifiedctx.data.canvas import INK, TEST_DIGITS, SegmentationData, dominant_class, render_canvases
from unifiedctx.data.mnist import read_table, stratified_split


def small(**kw):
    return data.load("mnist_canvas", **{"size": 64, "n_train": 24, "n_test": 8, **kw})


def test_shapes_dtypes_and_classes():
    ds = small(digits=(1, 3), channels=3)
    assert isinstance(ds, SegmentationData) and ds.name == "mnist_canvas"
    assert ds.train_x.shape == (24, 3, 64, 64) and ds.train_x.dtype == torch.uint8
    assert ds.test_masks.shape == (8, 64, 64) and ds.test_masks.dtype == torch.uint8
    assert ds.train_boxes.shape == (24, 3, 5) and ds.train_boxes.dtype == torch.int64
    assert ds.classes == ["bg"] + [str(d) for d in range(10)] and ds.num_classes == 11
    assert int(ds.train_masks.max()) <= 10
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 2])
    real = (ds.train_boxes[..., 4] >= 0).sum(1)
    assert real.min() >= 1 and real.max() <= 3


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = small(seed=3), small(seed=3), small(seed=4)
    for field in ("train_x", "train_masks", "train_boxes", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.train_x, c.train_x)


def _crop(img: np.ndarray) -> bytes:
    """The tight crop of an image's non-zero pixels, as bytes with its shape."""
    rows, cols = np.nonzero(img.any(1))[0], np.nonzero(img.any(0))[0]
    sub = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return bytes(sub.shape) + sub.tobytes()


def test_test_canvases_use_only_test_digits():
    # one unscaled digit per canvas: its non-zero crop is exactly one mnist5k digit's crop
    seed = 5
    ds = small(digits=1, digit_size=28, n_train=40, n_test=40, seed=seed)
    table = read_table()
    pool = table[:, :-1].reshape(-1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    train_idx, test_idx = stratified_split(labels, TEST_DIGITS, seed)
    where = {}
    for i, digit in enumerate(pool):
        where.setdefault(_crop(digit), set()).add(i)
    test_set, train_set = set(test_idx.tolist()), set(train_idx.tolist())
    for split, allowed, other in (("test", test_set, train_set), ("train", train_set, test_set)):
        images, masks = getattr(ds, f"{split}_x")[:, 0].numpy(), getattr(ds, f"{split}_masks").numpy()
        for img, mask in zip(images, masks):
            found = where[_crop(img)]
            assert found & allowed and not found & other
            digit_label = int(table[next(iter(found)), -1])
            assert set(np.unique(mask)) == {0, digit_label + 1}


def test_mask_follows_the_ink_and_lies_in_its_digits_boxes():
    ds = small(digits=(2, 5), n_train=30)
    x, masks, boxes = ds.train_x[:, 0], ds.train_masks, ds.train_boxes
    assert torch.equal(masks > 0, x >= INK)
    for img_mask, img_boxes in zip(masks, boxes):
        covered = torch.zeros(11, 64, 64, dtype=torch.bool)
        for x0, y0, x1, y1, label in img_boxes.tolist():
            if label < 0:
                continue
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and 1 <= label <= 10
            covered[label, y0:y1, x0:x1] = True
        for label in range(1, 11):
            assert not ((img_mask == label) & ~covered[label]).any()


def test_overlaps_keep_the_brightest_ink_and_ties_go_to_the_higher_class():
    # two flat "digits": grey 200 of digit 2 and grey 150 of digit 7 (then a tie at 150)
    pool = torch.zeros(2, 28, 28, dtype=torch.uint8)
    pool[0, 2:26, 2:26], pool[1, 2:26, 2:26] = 200, 150
    for greys in ((200, 150), (150, 150)):
        pool[0, 2:26, 2:26] = greys[0]
        gen = torch.Generator().manual_seed(0)
        images, masks, boxes = render_canvases(pool, torch.tensor([2, 7]), 200, 64, (2, 2), (28, 28), gen)
        both = torch.zeros(200, 64, 64, dtype=torch.int64)
        grey_of = {3: greys[0], 8: greys[1]}
        for b in range(200):
            for x0, y0, x1, y1, label in boxes[b].tolist():
                both[b, y0:y1, x0:x1] += 1 if label == 3 else 10
        overlap = both == 11
        assert overlap.sum() > 0 and (overlap.sum(dim=(1, 2)) > 0).sum() > 10
        winner = 3 if greys[0] > greys[1] else 8  # grey first, then the higher class
        assert (masks[overlap] == winner).all() and (images[overlap] == grey_of[winner]).all()
        assert (masks[both == 1] == 3).all() and (masks[both == 10] == 8).all()


def test_image_label_is_the_dominant_class():
    masks = torch.tensor([[[0, 3, 3], [5, 5, 0]], [[0, 0, 0], [0, 0, 0]], [[2, 2, 9], [9, 9, 1]]],
                         dtype=torch.uint8)
    assert dominant_class(masks, 11).tolist() == [3, 0, 9]
    ds = small()
    assert torch.equal(ds.train_y, dominant_class(ds.train_masks, 11))


def test_subset_and_to_carry_masks_and_boxes():
    ds = small()
    sub = ds.subset(n_train=5, n_test=3, seed=1)
    assert sub.train_x.shape[0] == 5 and sub.train_masks.shape[0] == 5 and sub.test_boxes.shape[0] == 3
    for i in range(5):
        j = next(k for k in range(24) if torch.equal(ds.train_x[k], sub.train_x[i]))
        assert torch.equal(ds.train_masks[j], sub.train_masks[i]) and torch.equal(ds.train_boxes[j],
                                                                                 sub.train_boxes[i])
    moved = ds.to("cpu")
    assert torch.equal(moved.train_masks, ds.train_masks) and moved.mean == ds.mean


@pytest.mark.parametrize("options, match", [
    ({"size": 63}, "size"), ({"size": 513}, "size"), ({"digits": 0}, "digits"),
    ({"digits": (3, 2)}, "digits"), ({"digit_size": (30, 80), "size": 64}, "digit_size"),
    ({"n_train": 0}, "n_train"), ({"channels": 2}, "channels"), ({"seed": -1}, "seed"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        data.load("mnist_canvas", **{"n_train": 2, "n_test": 2, **options})


def test_masks_must_match_images():
    ds = small()
    with pytest.raises(ValueError, match="train_masks"):
        SegmentationData("x", ds.train_x, ds.train_y, ds.test_x, ds.test_y, ds.classes, ds.mean, ds.std,
                         train_masks=ds.train_masks[:, :10], test_masks=ds.test_masks)
