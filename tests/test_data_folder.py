"""imagefolder: a tiny folder of PNGs written here, read through DataLoaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unifiedctx import data
from unifiedctx.data import folder

COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}
MEAN = torch.tensor(folder.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(folder.IMAGENET_STD).view(3, 1, 1)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def solid(colour, h=30, w=40) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


def make_flat(root: Path, per_class: int = 10) -> Path:
    """``root/<class>/<i>.png``: solid images of the class's colour, of varied sizes."""
    for name, colour in COLOURS.items():
        for i in range(per_class):
            write_png(root / name / f"{i}.png", solid(colour, 20 + 3 * i, 50 - 2 * i))
    return root


def make_split(root: Path) -> Path:
    """``root/train/<class>/`` with 4 images a class and ``root/val/<class>/`` with 2."""
    for split, n in (("train", 4), ("val", 2)):
        for name, colour in COLOURS.items():
            for i in range(n):
                write_png(root / split / name / f"{split}{i}.png", solid(colour))
    return root


def normalised(colour) -> torch.Tensor:
    return (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD


def test_flat_layout_is_split_per_class_with_a_seed(tmp_path):
    ds = data.load("imagefolder", path=make_flat(tmp_path), image_size=16, val_fraction=0.2, num_workers=0)
    assert isinstance(ds, data.FolderData)
    assert ds.classes == ["cat", "dog", "emu"] and ds.num_classes == 3 and ds.channels == 3
    assert ds.image_size == (16, 16) and ds.mean == folder.IMAGENET_MEAN and ds.std == folder.IMAGENET_STD
    assert len(ds.train_samples) == 24 and len(ds.test_samples) == 6
    assert sorted(label for _, label in ds.test_samples) == [0, 0, 1, 1, 2, 2]
    for path, label in ds.train_samples + ds.test_samples:
        assert Path(path).parent.name == ds.classes[label]
    assert not set(ds.train_samples) & set(ds.test_samples)
    again = data.load("imagefolder", path=tmp_path, image_size=16, val_fraction=0.2, num_workers=0)
    assert again.test_samples == ds.test_samples
    other = data.load("imagefolder", path=tmp_path, image_size=16, val_fraction=0.2, split_seed=5,
                      num_workers=0)
    assert other.test_samples != ds.test_samples


def test_train_val_layout_uses_the_val_folder(tmp_path):
    ds = data.load("imagefolder", path=make_split(tmp_path), image_size=8, num_workers=0)
    assert len(ds.train_samples) == 12 and len(ds.test_samples) == 6
    assert all("/val/" in p for p, _ in ds.test_samples)
    assert all("/train/" in p for p, _ in ds.train_samples)


def test_loaders_yield_normalised_images_and_labels(tmp_path):
    ds = data.load("imagefolder", path=make_flat(tmp_path, 4), image_size=12, val_fraction=0.25,
                   num_workers=0)
    for loader in (ds.train_loader(5, seed=0), ds.test_loader(4)):
        seen = 0
        for x, y in loader:
            assert x.dtype == torch.float32 and y.dtype == torch.int64
            assert x.shape == (len(y), 3, 12, 12)
            for img, label in zip(x, y):
                # a solid image stays solid through crop, resize and flip
                expected = normalised(COLOURS[ds.classes[label]]).expand(3, 12, 12)
                assert torch.allclose(img, expected, atol=1e-5)
            seen += len(y)
        assert seen == len(loader.dataset)


def half_and_half(h=48, w=64) -> np.ndarray:
    """Left half black, right half white."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, w // 2:] = 255
    return img


def test_test_transform_is_a_centre_crop_and_train_flips(tmp_path):
    write_png(tmp_path / "only" / "a.png", half_and_half())
    write_png(tmp_path / "only" / "b.png", half_and_half())
    ds = data.load("imagefolder", path=tmp_path, image_size=16, val_fraction=0.5, num_workers=0)
    x, _ = next(iter(ds.test_loader(1)))
    grey = x[0].mul(STD).add(MEAN).mean(0)                        # back to [0, 1], channels averaged
    assert grey[:, :7].max() < 0.05 and grey[:, 9:].min() > 0.95  # not flipped, not shifted
    item = folder.ImageFiles(ds.train_samples, 16, True, folder.IMAGENET_MEAN, folder.IMAGENET_STD, seed=0)
    sides = []
    for _ in range(60):
        grey = item[0][0].mul(STD).add(MEAN).mean(0)
        left, right = grey[:, :8].mean().item(), grey[:, 8:].mean().item()
        if abs(left - right) > 0.5:
            sides.append(left < right)
    assert 10 < sum(sides) < len(sides) - 10  # both orientations, about half each


def test_train_augmentation_is_reproducible_from_the_seed(tmp_path):
    for i in range(3):
        write_png(tmp_path / "only" / f"{i}.png", np.random.default_rng(i).integers(0, 256, (20, 30, 3),
                                                                                   dtype=np.uint8))
    ds = data.load("imagefolder", path=tmp_path, image_size=8, val_fraction=0.3, num_workers=0)
    a, b, c = (torch.cat([x for x, _ in ds.train_loader(2, seed=s)]) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_crop_box_respects_scale_and_ratio():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = folder.random_crop_box(100, 60, gen)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 100 + 1e-9 and bottom <= 60 + 1e-9
        area = w * h / (100 * 60)
        assert folder.CROP_SCALE[0] - 1e-9 <= area <= 1 + 1e-9
        assert 3 / 4 - 1e-9 <= w / h <= 4 / 3 + 1e-9
    box = folder.centre_crop_box(100, 60, 8)
    assert box == pytest.approx((50 - 26.25, 30 - 26.25, 50 + 26.25, 30 + 26.25))


def test_workers_and_ranks(tmp_path):
    ds = data.load("imagefolder", path=make_flat(tmp_path, 5), image_size=8, val_fraction=0.2, num_workers=1)
    labels = torch.cat([y for _, y in ds.test_loader(2)])
    assert labels.tolist() == [label for _, label in ds.test_samples]
    a, b = (torch.cat([x for x, _ in ds.train_loader(4, seed=3)]) for _ in range(2))
    assert torch.equal(a, b)  # the worker's augmentation stream comes from the seed too
    shards = [ds.train_loader(3, seed=0, rank=r, world_size=2).sampler for r in range(2)]
    indices = [list(s) for s in shards]
    assert not set(indices[0]) & set(indices[1])
    assert set(indices[0]) | set(indices[1]) == set(range(len(ds.train_samples)))
    with pytest.raises(ValueError, match="rank"):
        ds.train_loader(3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ds.test_loader(0)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="path"):
        data.load("imagefolder")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load("imagefolder", path=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        data.load("imagefolder", path=tmp_path / "empty")
    make_flat(tmp_path / "flat", 2)
    (tmp_path / "flat" / "yak").mkdir()
    (tmp_path / "flat" / "yak" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="yak"):
        data.load("imagefolder", path=tmp_path / "flat")
    make_split(tmp_path / "split")
    write_png(tmp_path / "split" / "val" / "gnu" / "0.png", solid((1, 2, 3)))
    with pytest.raises(ValueError, match="gnu"):
        data.load("imagefolder", path=tmp_path / "split")
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("imagefolder", path=tmp_path / "flat", val_fraction=1.0)
