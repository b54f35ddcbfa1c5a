"""``imagefolder``: an image-classification folder (ImageNet, Imagenette, your own) streamed from
disk by DataLoader workers.

Layouts: ``path/train/<class>/*.jpg`` with ``path/val/<class>/*.jpg`` (the ImageNet and
Imagenette layout), or ``path/train/<class>/`` alone, or ``path/<class>/*.jpg``; without a
``val/`` folder a seeded, per-class ``val_fraction`` of the images becomes the test split.
Class folders are sorted by name (label = position); images are found recursively.
Nothing is written to disk.

Pillow decodes and resizes; torch does the rest (no torchvision). Training images get a
random resized crop (scale 0.08-1, aspect 3/4-4/3) and a horizontal flip; test images are
resized so the shorter side is ``image_size / 0.875`` and centre-cropped. Both are normalised
with the ImageNet mean and std.

Every image is decoded with its real bit depth (:func:`decode_rgb`: a 16-bit PNG is scaled by
255 / 65535, not clipped to white); a file that cannot be decoded (truncated, not an image) is a
:class:`UnreadableImage` error naming the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from ..validation import check_bool, check_fraction, check_int, check_path, check_positive_int, check_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"}
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
TEST_CROP = 0.875
#: What ``path=`` must point to (the loader's error without it, and the ``unifiedctx data`` listing).
YOUR_FILES = "the folder that holds train/ (and val/) or the class folders"


#: Pillow modes of one channel with more than 8 bits, and the largest value of each.
HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


class UnreadableImage(ValueError):
    """An image file of the dataset cannot be decoded; the message names the file."""


def decode_rgb(path: str | os.PathLike):
    """The image at ``path`` as an 8-bit RGB Pillow image, every pixel decoded.

    High-bit-depth grey images (16-bit PNG: Pillow mode ``I;16`` or ``I``) are scaled to 8 bits,
    ``round(v * 255 / 65535)``, instead of saturating. A truncated or unreadable file raises
    :class:`UnreadableImage` naming ``path``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in HIGH_DEPTH:
                value = np.asarray(img, dtype=np.float64).clip(0, HIGH_DEPTH[img.mode])
                grey = np.round(value * (255.0 / HIGH_DEPTH[img.mode])).astype(np.uint8)
                return Image.fromarray(grey, mode="L").convert("RGB")
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"cannot decode image {path}: {err}") from None


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden names skipped), sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."))


def class_folders(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` (hidden ones skipped), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(folder: Path, classes: list[str], allow_missing: bool = False) -> list[tuple[str, int]]:
    """``(file, label)`` for every image of every class folder of ``folder``; a class folder
    without images is an error, and so is a missing one unless ``allow_missing``."""
    samples = []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir() and allow_missing:
            continue
        files = list_images(folder / name) if (folder / name).is_dir() else []
        if not files:
            raise ValueError(f"class folder {folder / name} holds no images "
                             f"({', '.join(sorted(EXTENSIONS))})")
        samples += [(str(f), label) for f in files]
    return samples


def split(samples: list[tuple[str, int]], val_fraction: float, seed: int):
    """Per class, a ``random.Random(seed)`` shuffle; ``round(val_fraction * n)`` images (at least
    one, leaving at least one for training) go to the test split."""
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({y for _, y in samples}):
        files = [s for s in samples if s[1] == label]
        rng.shuffle(files)
        k = min(max(1, round(val_fraction * len(files))), len(files) - 1) if val_fraction > 0 else 0
        test += files[:k]
        train += files[k:]
    return sorted(train), sorted(test)


def random_crop_box(width: int, height: int, gen: torch.Generator) -> tuple[float, float, float, float]:
    """A random-resized-crop box ``(left, top, right, bottom)``: area a uniform fraction in
    ``CROP_SCALE`` of the image, log-uniform aspect ratio in ``CROP_RATIO``; the centred largest
    box of a clamped ratio when ten tries fail (as torchvision does)."""
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        scale = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * torch.rand(1, generator=gen).item()
        target = area * scale
        ratio = math.exp(log_lo + (log_hi - log_lo) * torch.rand(1, generator=gen).item())
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if w <= width and h <= height:
            left = (width - w) * torch.rand(1, generator=gen).item()
            top = (height - h) * torch.rand(1, generator=gen).item()
            return left, top, left + w, top + h
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, width / ratio) if width / height > ratio else (height * ratio, height)
    w, h = min(w, width), min(h, height)
    return (width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2


def centre_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The box that, resized to ``size x size``, equals resizing the shorter side to
    ``size / TEST_CROP`` and cropping the centre ``size x size``."""
    side = min(width, height) * TEST_CROP
    return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2


class ImageFiles(Dataset):
    """``(image, label)`` pairs read from ``samples``: float32 ``(3, size, size)`` normalised
    images and int labels. ``train`` turns on the random crop and flip, drawn from a generator
    seeded with ``seed`` in the main process, or with the worker's seed (which the DataLoader
    derives from its own generator) in a worker: either way reproducible."""

    def __init__(self, samples: list[tuple[str, int]], size: int, train: bool,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0):
        self.samples, self.size, self.train, self.seed = samples, size, train, seed
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self._gen, self._gen_key = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gen": None, "_gen_key": None}

    def __len__(self) -> int:
        return len(self.samples)

    def generator(self) -> torch.Generator:
        """The augmentation generator of this process (see the class docstring)."""
        info = get_worker_info()
        key = None if info is None else info.seed
        if self._gen is None or self._gen_key != key:
            self._gen = torch.Generator().manual_seed(self.seed if key is None else key)
            self._gen_key = key
        return self._gen

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        img = decode_rgb(path)
        gen = self.generator() if self.train else None
        box = random_crop_box(*img.size, gen) if self.train else centre_crop_box(*img.size, self.size)
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        if self.train and torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(-1)
        return (x.float() / 255.0 - self.mean) / self.std, label


@dataclass
class FolderData:
    """An image folder read lazily by DataLoader workers.

    Attributes:
        name: ``"imagefolder"``.
        root: the folder given as ``path``.
        classes: class names (sorted folder names); ``num_classes`` is their number.
        image_size: ``(H, W)`` of every image the loaders yield.
        mean, std: ImageNet's, used to normalise.
        train_samples, test_samples: ``(file, label)`` of every image of each split.
        num_workers: DataLoader workers of both loaders.
    """

    name: str
    root: Path
    classes: list[str]
    image_size: tuple[int, int]
    train_samples: list[tuple[str, int]] = field(repr=False)
    test_samples: list[tuple[str, int]] = field(repr=False)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_workers: int = 2
    channels: int = 3
    options: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def fingerprint(self) -> str:
        """A short hash of the index (every file's path under ``root`` and label, the sizes of
        about 1000 files at a stride), the classes and the image size: cheap, no image decoded."""
        digest = hashlib.sha256(repr((self.classes, self.image_size, self.mean, self.std)).encode())
        for samples in (self.train_samples, self.test_samples):
            digest.update(repr([(os.path.relpath(f, self.root), y) for f, y in samples]).encode())
            stride = max(1, len(samples) // 1000)
            digest.update(repr([os.path.getsize(f) for f, _ in samples[::stride]]).encode())
        return digest.hexdigest()[:16]

    def _loader(self, samples, batch_size: int, train: bool, seed: int = 0, **kwargs) -> DataLoader:
        batch_size = check_positive_int("batch_size", batch_size)
        seed = check_seed("seed", seed)
        dataset = ImageFiles(samples, self.image_size[0], train, self.mean, self.std, seed)
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          **kwargs)

    def train_loader(self, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                     world_size: int = 1, drop_last: bool = False) -> DataLoader:
        """Batches ``(x, y)`` of training images: float32 ``(B, 3, H, W)`` normalised, int64 ``(B,)``,
        randomly cropped and flipped. ``seed`` fixes the order and the augmentation (for a
        given ``num_workers``; each rank augments with a stream of its own). With
        ``world_size > 1`` each ``rank`` reads its own shard through a
        :class:`~torch.utils.data.DistributedSampler`: call ``loader.sampler.set_epoch(epoch)``
        each epoch to reshuffle."""
        world_size = check_positive_int("world_size", world_size)
        rank = check_int("rank", rank, low=0)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        seed, shuffle = check_seed("seed", seed), check_bool("shuffle", shuffle)
        drop_last = check_bool("drop_last", drop_last)
        aug_seed = seed + 100_003 * rank
        gen = torch.Generator().manual_seed(aug_seed)
        if world_size > 1:
            sampler = DistributedSampler(self.train_samples, num_replicas=world_size, rank=rank,
                                         shuffle=shuffle, seed=seed, drop_last=drop_last)
            return self._loader(self.train_samples, batch_size, True, aug_seed, sampler=sampler,
                                generator=gen, drop_last=drop_last)
        return self._loader(self.train_samples, batch_size, True, aug_seed, shuffle=shuffle, generator=gen,
                            drop_last=drop_last)

    def test_loader(self, batch_size: int) -> DataLoader:
        """Batches ``(x, y)`` of test images, in order: float32 ``(B, 3, H, W)`` normalised
        (resize and centre crop), int64 ``(B,)``."""
        return self._loader(self.test_samples, batch_size, False, shuffle=False)


def load_imagefolder(path: str | Path | None = None, image_size: int = 224, val_fraction: float = 0.1,
                     split_seed: int = 0, num_workers: int = 2) -> FolderData:
    """Index the image folder at ``path`` (see the module docstring) as :class:`FolderData`.

    Args:
        path: the folder (``path/train/<class>/``, ``path/val/<class>/`` or ``path/<class>/``).
        image_size: side S of the square images the loaders yield, ``(3, S, S)``.
        val_fraction: without a ``val/`` folder, the share of each class that becomes the test
            split, in the open interval (0, 1): 0 would leave the test split empty and 1 the
            training split, so both are refused here, before anything is read or written.
        split_seed: seed of that split (an int >= 0).
        num_workers: DataLoader workers (an int >= 0).
    """
    if path is None:
        raise ValueError(f"load('imagefolder') needs path=: {YOUR_FILES}")
    root = check_path("path", path, kind="folder")
    image_size = check_positive_int("image_size", image_size)
    val_fraction = check_fraction("val_fraction", val_fraction)
    split_seed = check_seed("split_seed", split_seed)
    num_workers = check_int("num_workers", num_workers, low=0)
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = class_folders(train_dir)
    if not classes:
        raise ValueError(f"{train_dir} has no class folders "
                         f"(expected {train_dir}{os.sep}<class>{os.sep}*.jpg)")
    samples = scan(train_dir, classes)
    val_dir = root / "val"
    if train_dir != root and val_dir.is_dir():
        extra = sorted(set(class_folders(val_dir)) - set(classes))
        if extra:
            raise ValueError(f"{val_dir} has class folders not in {train_dir}: {', '.join(extra)}")
        train, test = samples, scan(val_dir, classes, allow_missing=True)
        if not test:
            raise ValueError(f"{val_dir} has no class folders")
    else:
        train, test = split(samples, val_fraction, split_seed)
    return FolderData("imagefolder", root, classes, (image_size, image_size), train, test,
                      num_workers=num_workers)
