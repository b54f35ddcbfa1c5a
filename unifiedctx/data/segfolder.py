"""``segfolder``: a user's own segmentation folder, loaded whole into a
:class:`~unifiedctx.data.canvas.SegmentationData`.

Layouts (a mask has the same stem as its image and is a PNG)::

    path/train/images/a.jpg   path/train/masks/a.png     (+ path/val/... or path/test/...)
    path/images/a.jpg         path/masks/a.png           (a seeded val_fraction becomes the test split)

A mask is a single-channel PNG (mode ``L``, ``P`` or ``I``) whose value at a pixel is the class
index of that pixel (a palette PNG's index, not its colour). Every image is converted to RGB
(``channels=3``) or grey (``channels=1``) and, when ``image_size`` is given, resized to it
(bilinear; its mask with nearest neighbour, so classes are never blended). Nothing is written.

Ignored pixels: mask value 255 is, as in VOC, Cityscapes or ADE20K masks, the usual "ignore" label
(object borders, void, unlabelled): with the default ``ignore_index="auto"`` a pixel of value 255
belongs to no class (unless ``num_classes`` / ``classes`` make 255 a real class). The data then
has ``ignore_index == 255`` (``None`` when no mask holds 255 and none was declared), and
``classes`` and ``num_classes`` count the real classes only: masks of values {0, 1, 2, 255} give
3 classes, not 256. ``ignore_index=255`` (or another value above the classes) declares it even
when no pixel uses it; ``ignore_index=None`` says every value is a class. A loss and the mIoU
skip those pixels (the segment task reads ``data.ignore_index``).

When ``num_classes`` is not given it is the largest class index found, plus one. A count that
would leave most of its classes without a single pixel (masks of values {0, 1, 200}: 201
classes, 198 of them empty) is refused with the values found, rather than silently building a
head of 201 classes: pass ``num_classes=`` (or ``classes=``) if that is what the data is, or
``ignore_index=`` for the value that marks "no class".

Errors name the file: an image without a mask, a mask without an image, a file Pillow cannot
decode, a mask whose size differs from its image's, a class index >= ``num_classes``, images
of different sizes without ``image_size``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..validation import (
    check_fraction,
    check_int,
    check_int_choice,
    check_int_or_pair,
    check_path,
    check_seed,
)
from .base import channel_stats
from .canvas import SegmentationData, dominant_class
from .folder import EXTENSIONS

TEST_FOLDERS = ("val", "test")
#: What ``path=`` must point to (the loader's error without it, and the ``unifiedctx data`` listing).
YOUR_FILES = "the folder that holds images/ and masks/ (or train/ and val/ of them)"
#: The mask value that means "no class" unless declared otherwise (VOC's, Cityscapes', ADE20K's).
IGNORE = 255


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` for every image in ``folder/images``, matched by stem in ``folder/masks``."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise ValueError(f"segmentation folder {folder} has no {d.name}/ folder (expected "
                             f"{folder}/images/*.jpg and {folder}/masks/*.png with the same stems)")
    images = sorted(p for p in images_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
    masks = {p.stem: p for p in masks_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"}
    if not images:
        raise ValueError(f"{images_dir} holds no images ({', '.join(sorted(EXTENSIONS))})")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"{images_dir} has several images with the stem {twice[0]!r}: "
                         "one mask cannot serve both")
    for image in images:
        if image.stem not in masks:
            raise ValueError(f"image {image} has no mask: expected {masks_dir / (image.stem + '.png')}")
    orphans = sorted(set(masks) - set(stems))
    if orphans:
        raise ValueError(f"mask {masks[orphans[0]]} has no image in {images_dir}")
    return [(image, masks[image.stem]) for image in images]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode {path}: {err}") from err
    return img


def read_pair(image_path: Path, mask_path: Path, image_size, channels: int, num_classes: int | None,
              ignore_index: int | None = None):
    """One image as uint8 ``(C, H, W)`` and its mask as int64 ``(H, W)``, checked (see the module):
    every mask value is a class in ``[0, num_classes)`` or ``ignore_index``."""
    from PIL import Image

    image = _open(image_path).convert("RGB" if channels == 3 else "L")
    mask = _open(mask_path)
    if mask.mode not in ("L", "P", "I", "I;16", "1"):
        raise ValueError(f"mask {mask_path} has mode {mask.mode!r}: a mask must be a single-channel PNG "
                         "(L, P or I) holding one class index a pixel")
    if mask.size != image.size:
        raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} (WxH) but its image "
                         f"{image_path} is {image.size[0]}x{image.size[1]}")
    if image_size is not None:
        image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
        mask = mask.resize((image_size[1], image_size[0]), Image.NEAREST)
    labels = np.asarray(mask).astype(np.int64)
    real = labels[labels != ignore_index] if ignore_index is not None else labels
    if real.size and (real.min() < 0 or (num_classes is not None and real.max() >= num_classes)):
        bad = int(real.max()) if real.min() >= 0 else int(real.min())
        ignored = f" or the ignore label {ignore_index}" if ignore_index is not None else ""
        raise ValueError(f"mask {mask_path} holds class index {bad}, outside [0, {num_classes}){ignored} "
                         "(pass num_classes= or classes= to allow more, or ignore_index= for a "
                         "value that marks no class)")
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous(), torch.from_numpy(labels)


def _stack(pairs, image_size, channels, num_classes, ignore_index=None):
    images, masks = [], []
    for image_path, mask_path in pairs:
        x, m = read_pair(image_path, mask_path, image_size, channels, num_classes, ignore_index)
        if images and x.shape != images[0].shape:
            raise ValueError(f"image {image_path} is {x.shape[2]}x{x.shape[1]} (WxH), not "
                             f"{images[0].shape[2]}x{images[0].shape[1]} like {pairs[0][0]}: "
                             "pass image_size= to resize every image to one size")
        images.append(x)
        masks.append(m)
    return torch.stack(images), torch.stack(masks)


def _split_pairs(pairs, val_fraction: float, seed: int):
    """A ``random.Random(seed)`` shuffle; ``round(val_fraction * n)`` pairs (at least one, at most
    ``n - 1``) go to the test split."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    k = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return sorted(order[k:]), sorted(order[:k])


def _check_ignore(ignore_index, num_classes: int | None) -> int | None | str:
    """``"auto"``, ``None`` or an int above the classes (see the module docstring)."""
    if ignore_index is None or ignore_index == "auto":
        return ignore_index
    if isinstance(ignore_index, str):
        raise ValueError(f"ignore_index must be 'auto', None or an int, got {ignore_index!r}")
    value = check_int("ignore_index", ignore_index, low=0)
    if num_classes is not None and value < num_classes:
        raise ValueError(f"ignore_index={value} is one of the {num_classes} classes [0, {num_classes}): "
                         "the ignore label must lie above them (255, say)")
    return value


def _class_count(found: torch.Tensor, ignore_index: int | None) -> int:
    """The class count the masks imply (largest index + 1, at least 2), refused when most of
    those classes would have no pixel at all (a sign of an undeclared ignore label)."""
    values = sorted(int(v) for v in torch.unique(found) if ignore_index is None or int(v) != ignore_index)
    if not values:
        raise ValueError(f"every mask pixel is the ignore label {ignore_index}: there is no class to learn")
    count = max(values[-1] + 1, 2)
    if count > 4 and len(values) * 2 < count:
        shown = ", ".join(map(str, values[:12])) + (", ..." if len(values) > 12 else "")
        raise ValueError(f"the masks hold the values {shown}: taking the largest as the last class would make "
                         f"{count} classes, {count - len(values)} of them without a single pixel. Pass "
                         f"num_classes={count} (or classes=) if that is what the data is, or "
                         f"ignore_index={values[-1]} if {values[-1]} marks pixels of no class")
    return count


def load_segfolder(path=None, image_size=None, channels: int = 3, classes=None, num_classes: int | None = None,
                   val_fraction: float = 0.2, seed: int = 0, ignore_index="auto") -> SegmentationData:
    """A segmentation folder (see the module docstring) as :class:`SegmentationData`.

    Args:
        path: the folder (required: ``images/`` and ``masks/``, or ``train/`` and ``val/`` of them).
        image_size: ``S`` or ``(H, W)`` to resize every image and mask to; ``None`` keeps the
            size, which then must be the same for every image.
        channels: 3 (RGB) or 1 (grey).
        classes: class names, ``classes[k]`` for index k (sets ``num_classes``).
        num_classes: the number of classes when ``classes`` is not given; default: the largest
            index found in any mask (the ignore label aside), plus one (names ``"0"``, ``"1"``, ...).
        val_fraction, seed: the seeded test split when the folder has no ``val/`` or ``test/``;
            ``val_fraction`` in the open interval (0, 1) (0 or 1 would leave a split empty).
        ignore_index: ``"auto"`` (default): mask value 255 marks pixels of no class when it
            occurs (and is not a class by ``num_classes``); an int ``>= num_classes``: that value
            marks them (declared, even if no pixel uses it); ``None``: every value is a class.

    Returns:
        SegmentationData named ``"segfolder"``: uint8 images ``(N, channels, H, W)``, uint8 masks
        ``(N, H, W)`` holding ``0 .. num_classes - 1`` and the ignore label (int64 when a value
        exceeds 255), no boxes; mean/std of the training images; ``ignore_index`` 255 (or the
        declared value) when such pixels occur or were declared, else ``None``.
    """
    if path is None:
        raise ValueError(f"load('segfolder') needs path=: {YOUR_FILES}")
    root = check_path("path", path, kind="folder")
    channels = check_int_choice("channels", channels, (1, 3))
    if image_size is not None:
        image_size = check_int_or_pair("image_size", image_size)
    if classes is not None:
        if isinstance(classes, (str, bytes)) or not hasattr(classes, "__len__"):
            raise TypeError(f"classes must be a list of class names, got {type(classes).__name__} {classes!r}")
        classes = [str(c) for c in classes]
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"num_classes={num_classes} but classes has {len(classes)} names")
        num_classes = len(classes)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, low=2)
    val_fraction = check_fraction("val_fraction", val_fraction)
    seed = check_seed("seed", seed)
    ignore = _check_ignore(ignore_index, num_classes)
    if ignore == "auto":
        ignore = IGNORE if num_classes is None or num_classes <= IGNORE else None
    declared = ignore is not None and ignore_index != "auto"

    test_dir = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    if (root / "train").is_dir():
        train_pairs = _pairs(root / "train")
        test_pairs = _pairs(test_dir) if test_dir is not None else None
        if test_pairs is None:
            train_pairs, test_pairs = _split_pairs(train_pairs, val_fraction, seed)
    else:
        all_pairs = _pairs(root)
        if len(all_pairs) < 2:
            raise ValueError(f"{root} holds one image: a train and a test split need at least two")
        train_pairs, test_pairs = _split_pairs(all_pairs, val_fraction, seed)
    train_x, train_m = _stack(train_pairs, image_size, channels, num_classes, ignore)
    test_x, test_m = _stack(test_pairs, image_size, channels, num_classes, ignore)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"test image {test_pairs[0][0]} is {tuple(test_x.shape[2:])} but training image "
                         f"{train_pairs[0][0]} is {tuple(train_x.shape[2:])}: "
                         "pass image_size= to resize both")
    if ignore is not None and not declared and not (bool((train_m == ignore).any())
                                                    or bool((test_m == ignore).any())):
        ignore = None  # "auto" and no pixel uses 255
    if num_classes is None:
        num_classes = _class_count(torch.cat([train_m.reshape(-1), test_m.reshape(-1)]), ignore)
    if classes is None:
        classes = [str(k) for k in range(num_classes)]
    top = max(num_classes - 1, ignore if ignore is not None else 0)
    mask_dtype = torch.uint8 if top <= 255 else torch.int64
    train_m, test_m = train_m.to(mask_dtype), test_m.to(mask_dtype)
    mean, std = channel_stats(train_x)
    return SegmentationData("segfolder", train_x, dominant_class(train_m, num_classes, ignore), test_x,
                            dominant_class(test_m, num_classes, ignore), classes, mean, std,
                            train_masks=train_m, test_masks=test_m, ignore_index=ignore)
