"""``mnist_canvas``: a dense-prediction dataset made of real digits, and the container every
segmentation dataset is returned in (:class:`SegmentationData`).

Each canvas is a black ``size x size`` image on which ``digits`` mnist5k digits are pasted,
each rescaled to a side ``s ~ U{digit_size}`` pixels (bilinear, from 28x28) at a uniform
position that keeps it whole inside the canvas. The training canvases use only digits of
mnist5k's training split and the test canvases only digits of its test split (the split of
:func:`unifiedctx.data.mnist.stratified_split`, 1,000 test digits, seeded by ``seed``).

Labels, per pixel (11 classes; ``classes[k]``)::

    mask[i, j] = 0                  background ("bg"): no digit has ink >= INK at (i, j)
    mask[i, j] = 1 + d              the pixel belongs to a digit d in 0..9

Overlaps (digits may overlap) are resolved by the brightest ink: the image keeps the maximum
grey value over the digits at a pixel, and the mask the class of the digit that gave it
(equal grey values: the higher class wins). Each digit also gets a box ``(x0, y0, x1, y1,
label)``: the tight box (half-open, in canvas pixels) of the pixels where *its own* ink is
>= INK before overlaps are resolved, ``label`` its mask class 1..10. ``train_y`` is the
image-level label "the class with the most mask pixels" (ties: the lower class).

Everything is vectorised: one ``grid_sample`` resizes all the digits of all the canvases,
one ``scatter_reduce(amax)`` pastes them (1,000 canvases of 128 px in well under a second).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import check_int, check_int_choice, check_int_range, check_positive_int, check_seed
from .base import ImageData, channel_stats, tensor_fingerprint
from .mnist import SIDE, read_table, stratified_split

#: Grey value (of 255) from which a resized digit pixel counts as the digit's (mask and boxes).
INK = 128
#: Digits of mnist5k held out for the test canvases.
TEST_DIGITS = 1000
CLASSES = ["bg"] + [str(d) for d in range(10)]


@dataclass(repr=False)
class SegmentationData(ImageData):
    """:class:`~unifiedctx.data.ImageData` with a class index per pixel and optional boxes.

    Attributes (beyond ImageData's):
        train_masks, test_masks: uint8 ``(N, H, W)`` class indices in ``[0, num_classes)``
            (uint8 keeps 1,000 canvases of 512 px at 262 MB; batches turn them into int64).
        train_boxes, test_boxes: int64 ``(N, K, 5)`` rows ``(x0, y0, x1, y1, label)``, padded
            with rows of -1 where an image has fewer than K objects; ``None`` when the dataset
            has no boxes (a segmentation folder).
        ignore_index: the mask value of pixels that belong to no class (segmentation's usual
            "void" / "don't care" label, 255 in VOC-style masks), which a loss and the mIoU
            skip; ``None`` when every pixel has a class. It is never one of ``classes`` and is
            not counted in ``num_classes``.
        ``train_y``/``test_y`` (ImageData's) hold an image-level label: the class with the
        most pixels other than class 0 and the ignored ones (0 if there is none).
    """

    train_masks: torch.Tensor | None = None
    test_masks: torch.Tensor | None = None
    train_boxes: torch.Tensor | None = None
    test_boxes: torch.Tensor | None = None
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ignore_index is not None:
            self.ignore_index = check_int("ignore_index", self.ignore_index, low=self.num_classes)
        for split in ("train", "test"):
            x, m = getattr(self, f"{split}_x"), getattr(self, f"{split}_masks")
            if not isinstance(m, torch.Tensor) or m.dtype not in (torch.uint8, torch.int64):
                raise TypeError(f"{split}_masks must be a uint8 or int64 tensor (N, H, W), "
                                f"got {getattr(m, 'dtype', type(m).__name__)}")
            if m.shape != (x.shape[0], *x.shape[2:]):
                raise ValueError(f"{split}_masks must be {(x.shape[0], *x.shape[2:])} to match {split}_x, "
                                 f"got {tuple(m.shape)}")
            boxes = getattr(self, f"{split}_boxes")
            if boxes is not None and (boxes.dtype != torch.int64 or boxes.dim() != 3
                                      or boxes.shape[0] != x.shape[0] or boxes.shape[2] != 5):
                raise ValueError(f"{split}_boxes must be int64 ({x.shape[0]}, K, 5), "
                                 f"got {boxes.dtype} {tuple(boxes.shape)}")

    def __repr__(self) -> str:
        return (f"SegmentationData({self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)}, classes={self.num_classes}, device={self.train_x.device})")

    def fingerprint(self) -> str:
        """ImageData's hash of the contents, with the masks (and boxes) hashed as well."""
        parts = [self.train_x, self.train_y, self.test_x, self.test_y, self.train_masks, self.test_masks]
        parts += [b for b in (self.train_boxes, self.test_boxes) if b is not None]
        extra = (self.classes, self.mean, self.std)
        if self.ignore_index is not None:
            extra = (*extra, self.ignore_index)
        return tensor_fingerprint(*parts, extra=extra)

    def to(self, device: torch.device | str) -> SegmentationData:
        """A new :class:`SegmentationData` whose tensors (images, labels, masks, boxes) live on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def subset(self, n_train: int | None = None, n_test: int | None = None,
               seed: int = 0) -> SegmentationData:
        """``n_train`` / ``n_test`` images drawn without replacement (seeded like ImageData's
        ``subset``), each with its mask and boxes; ``mean``/``std`` kept."""
        gen = torch.Generator().manual_seed(check_seed("seed", seed))
        picked = {}
        for split, n in (("train", n_train), ("test", n_test)):
            count = getattr(self, f"{split}_x").shape[0]
            if n is None:
                continue
            n = check_int(f"n_{split}", n, low=1, high=count)
            idx = torch.randperm(count, generator=gen)[:n]
            for field in ("x", "y", "masks", "boxes"):
                value = getattr(self, f"{split}_{field}")
                if value is not None:
                    picked[f"{split}_{field}"] = value[idx.to(value.device)]
        return dataclasses.replace(self, **picked)


def dominant_class(masks: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> torch.Tensor:
    """int64 ``(N,)``: for each mask ``(H, W)`` the class >= 1 with the most pixels (ties: the
    lower class; 0 when the mask is all background). Pixels equal to ``ignore_index`` count
    for no class."""
    n = masks.shape[0]
    flat = masks.reshape(n, -1).long()
    if ignore_index is not None:
        flat = torch.where(flat == ignore_index, torch.zeros_like(flat), flat)  # class 0 is not counted
    counts = torch.zeros(n, num_classes, dtype=torch.int64).scatter_add_(1, flat, torch.ones_like(flat))
    counts[:, 0] = 0
    best = counts.argmax(1)  # argmax returns the first maximum: the lower class on ties
    return torch.where(counts.amax(1) > 0, best, torch.zeros_like(best))


def _int_range(name: str, value, low: int, high: int) -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; ``(a, b)`` -> ``(a, b)``; both within ``[low, high]``, ``a <= b``."""
    return check_int_range(name, value, low, high)


def render_canvases(digits: torch.Tensor, labels: torch.Tensor, n: int, size: int, count: tuple[int, int],
                    side: tuple[int, int], gen: torch.Generator):
    """Paste random digits on ``n`` black canvases (see the module docstring for the rules).

    Args:
        digits: uint8 ``(M, 28, 28)`` digit pool; labels: int64 ``(M,)`` digits 0..9.
        n, size: number of canvases and their side.
        count: ``(min, max)`` digits per canvas; side: ``(min, max)`` digit side in pixels.
        gen: the ``torch.Generator`` every draw comes from.

    Returns:
        ``(images, masks, boxes)``: uint8 ``(n, size, size)``, uint8 ``(n, size, size)`` classes
        0..10, int64 ``(n, count[1], 5)`` boxes (rows of -1 for absent digits).

    With ``K = count[1]`` slots per canvas and patches of side ``P = side[1]``, slot ``(b, k)``
    holds digit ``pick[b, k]`` resized to ``s[b, k]``: patch pixel ``(i, j)`` samples the digit at
    the normalised point ``((2 j + 1) / s - 1, (2 i + 1) / s - 1)`` (beyond 1: zero), then lands
    on canvas pixel ``(y0 + i, x0 + j)`` with key ``grey * 16 + class`` reduced by ``amax``.
    """
    k_max, p = count[1], side[1]
    n_digits = torch.randint(count[0], count[1] + 1, (n,), generator=gen)
    present = torch.arange(k_max).view(1, k_max) < n_digits.view(n, 1)        # (n, K)
    pick = torch.randint(0, digits.shape[0], (n, k_max), generator=gen)
    s = torch.randint(side[0], side[1] + 1, (n, k_max), generator=gen)        # (n, K)
    y0 = (torch.rand(n, k_max, generator=gen) * (size - s + 1)).long()
    x0 = (torch.rand(n, k_max, generator=gen) * (size - s + 1)).long()

    # resize every slot's digit into a P x P patch with one grid_sample
    axis = (2 * torch.arange(p, dtype=torch.float32) + 1).view(1, 1, p)       # 2i + 1
    coords = axis / s.view(n, k_max, 1).float() - 1                            # (n, K, P)
    coords = coords.view(n * k_max, p)
    grid = torch.stack([coords.view(-1, 1, p).expand(-1, p, p),                # x: along a row (j)
                        coords.view(-1, p, 1).expand(-1, p, p)], dim=-1)       # y: down a column (i)
    source = digits[pick.view(-1)].view(n * k_max, 1, SIDE, SIDE).float()
    patch = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    grey = patch.view(n, k_max, p, p).round().clamp(0, 255).long()
    inside = torch.arange(p).view(1, 1, p) < s.view(n, k_max, 1)               # (n, K, P)
    grey = grey * (inside.unsqueeze(-1) & inside.unsqueeze(-2) & present.view(n, k_max, 1, 1))

    # boxes: the tight box of each slot's own ink
    ink = grey >= INK                                                           # (n, K, P, P)
    rows, cols = ink.any(-1), ink.any(-2)                                       # (n, K, P)
    idx = torch.arange(p).view(1, 1, p)
    has = rows.any(-1) & present
    top = torch.where(rows, idx, p).amin(-1)
    bottom = torch.where(rows, idx + 1, 0).amax(-1)
    left = torch.where(cols, idx, p).amin(-1)
    right = torch.where(cols, idx + 1, 0).amax(-1)
    label = labels[pick] + 1
    boxes = torch.stack([x0 + left, y0 + top, x0 + right, y0 + bottom, label], dim=-1)
    boxes = torch.where(has.unsqueeze(-1), boxes, torch.full_like(boxes, -1))
    order = torch.argsort((~has).to(torch.int8), dim=1, stable=True)           # real boxes first
    boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 5))

    # paste: key = grey * 16 + class, reduced by amax over the digits that cover a pixel
    key = grey * 16 + label.view(n, k_max, 1, 1) * (grey > 0)
    ys = (y0.view(n, k_max, 1, 1) + torch.arange(p).view(1, 1, p, 1)).clamp(max=size - 1)
    xs = (x0.view(n, k_max, 1, 1) + torch.arange(p).view(1, 1, 1, p)).clamp(max=size - 1)
    flat = (torch.arange(n).view(n, 1, 1, 1) * size + ys) * size + xs          # (n, K, P, P)
    canvas = torch.zeros(n * size * size, dtype=torch.int64)
    canvas.scatter_reduce_(0, flat.reshape(-1), key.reshape(-1), reduce="amax")
    canvas = canvas.view(n, size, size)
    images = (canvas // 16).to(torch.uint8)
    masks = torch.where(images >= INK, canvas % 16, 0).to(torch.uint8)
    return images, masks, boxes


def load_mnist_canvas(size: int = 128, digits=(1, 4), n_train: int = 1000, n_test: int = 200, seed: int = 0,
                      digit_size=(22, 34), channels: int = 1) -> SegmentationData:
    """Canvases of real mnist5k digits with a class per pixel and a box per digit.

    Args:
        size: canvas side, 64..512 (any int; the model's stride must divide it).
        digits: digits per canvas, an int or ``(min, max)`` (uniform), 1..32.
        n_train, n_test: number of training and test canvases.
        seed: every draw (the mnist5k split, digits, sizes, positions) comes from it: the same
            seed gives the same data.
        digit_size: side of a pasted digit in pixels, an int or ``(min, max)`` (uniform), from
            8 to ``size``; the default 22..34 is 28 +- 20 %.
        channels: 1, or 3 (the grey channel repeated, for RGB-built models).

    Returns:
        :class:`SegmentationData` named ``"mnist_canvas"``: images uint8 ``(N, channels, size,
        size)``, masks uint8 ``(N, size, size)`` with 11 classes (``"bg"``, ``"0"``..``"9"``),
        boxes int64 ``(N, max digits, 5)``; mean/std of the training canvases; ``flip_ok`` and
        ``crop_ok`` False (a mirrored digit is not a digit).
    """
    size = check_int("size", size, low=64, high=512)
    count = _int_range("digits", digits, 1, 32)
    side = _int_range("digit_size", digit_size, 8, size)
    n_train, n_test = check_positive_int("n_train", n_train), check_positive_int("n_test", n_test)
    seed = check_seed("seed", seed)
    channels = check_int_choice("channels", channels, (1, 3))
    table = read_table()
    pool = torch.from_numpy(np.ascontiguousarray(table[:, :-1])).view(-1, SIDE, SIDE)
    pool_labels = torch.from_numpy(table[:, -1].astype(np.int64))
    train_idx, test_idx = stratified_split(pool_labels, TEST_DIGITS, seed)
    gen = torch.Generator().manual_seed(seed)
    splits = {}
    for split, idx, n in (("train", train_idx, n_train), ("test", test_idx, n_test)):
        images, masks, boxes = render_canvases(pool[idx], pool_labels[idx], n, size, count, side, gen)
        x = images.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
        splits[split] = (x, dominant_class(masks, len(CLASSES)), masks, boxes)
    mean, std = channel_stats(splits["train"][0])
    (tx, ty, tm, tb), (vx, vy, vm, vb) = splits["train"], splits["test"]
    return SegmentationData("mnist_canvas", tx, ty, vx, vy, list(CLASSES), mean, std, crop_ok=False, flip_ok=False,
                            train_masks=tm, test_masks=vm, train_boxes=tb, test_boxes=vb)
