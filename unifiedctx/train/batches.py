"""Training batches cut on the device, with augmentation done by tensor ops on the whole batch.

A small-image dataset (:class:`unifiedctx.data.ImageData`) lives as one uint8 tensor
``(N, C, H, W)`` on the training device. Every epoch ``e`` draws one permutation of the N
images from a ``torch.Generator`` seeded by ``(seed, e)``, cuts it into global batches of
``B = batch_size * world_size`` images, and rank ``r`` keeps positions ``[r*b, (r+1)*b)`` of
each global batch. The augmentation of every position (crop offset, flip, mixup partner) is
drawn for the *global* batch, so K ranks with batch b see exactly the images that one process
with batch K*b sees; and because all randomness depends only on ``(seed, epoch, step)``, a run
resumed after epoch k replays epochs k+1.. exactly.

Random crop with padding p and horizontal flip, as one gather (no loop over images)::

    rows[b, i] = reflect(oy[b] + i - p)            oy, ox ~ U{0..2p}     i in [0, H)
    cols[b, j] = reflect(ox[b] + j - p)  (reversed when flip[b])          j in [0, W)
    out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]

(``padding_mode="zero"`` clamps instead of reflecting and zeroes the pixels outside the image.)

Mixup / cutmix (soft targets): with ``lam ~ Beta(a, a)`` per batch and partner ``pi(i) = i+1 mod
B`` in the global batch, ``x = lam x_i + (1-lam) x_pi(i)`` (mixup) or a box of area
``(1-lam) H W`` pasted from ``x_pi(i)`` (cutmix, ``lam`` then recomputed from the clipped box),
and ``target = lam onehot(y_i) + (1-lam) onehot(y_pi(i))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PADDING_MODES = ("reflect", "zero")


def derive_seed(*keys: int) -> int:
    """One 63-bit seed from a tuple of non-negative ints (``numpy.random.SeedSequence``), so
    ``(seed, epoch, stream)`` gives independent, reproducible streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect indices in ``[-size+1, 2 size - 2]`` into ``[0, size)`` (like ``F.pad(mode="reflect")``)."""
    idx = idx.abs()
    return torch.where(idx >= size, 2 * (size - 1) - idx, idx)


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int,
              padding_mode: str = "reflect") -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip of a whole batch in one gather.

    Args:
        x: ``(B, C, H, W)`` images (any dtype; uint8 stays uint8).
        oy, ox: ``(B,)`` int64 crop offsets in ``[0, 2*padding]`` into the padded image.
        flip: ``(B,)`` bool, flip image b left-right.
        padding: pixels of padding on each side (``padding < min(H, W)`` for reflection).
        padding_mode: ``"reflect"`` or ``"zero"``.

    Returns:
        ``(B, C, H, W)`` tensor with the memory layout of ``channels_last`` (call
        ``.contiguous()`` for the default layout).
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    b, _, h, w = x.shape
    if padding_mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"padding={padding} must be smaller than the image ({h}x{w}) to reflect")
    dev = x.device
    rows = oy.view(b, 1) + torch.arange(h, device=dev) - padding  # (B, H)
    cols = ox.view(b, 1) + torch.arange(w, device=dev) - padding  # (B, W)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    if padding_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
        valid = None
    else:
        valid = ((rows >= 0) & (rows < h)).view(b, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, w)
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x[torch.arange(b, device=dev).view(b, 1, 1), :, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B,H,W,C)
    if valid is not None:
        out = out * valid.unsqueeze(-1).to(out.dtype)
    return out.permute(0, 3, 1, 2)


def cutmix_box(lam: float, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box ``(y0, y1, x0, x1)`` of area about ``(1 - lam) H W`` centred at a uniform point, clipped."""
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


def mix_batch(x: torch.Tensor, partner: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor,
              num_classes: int, mixup: float, cutmix: float, rng: np.random.Generator):
    """Mix float images ``x`` ``(B, C, H, W)`` with ``partner`` (same shape) by mixup or cutmix.

    One of the two is chosen with probability 1/2 when both alphas are positive. Returns
    ``(mixed_x, soft_target)`` with ``soft_target`` ``(B, num_classes)`` float32, rows summing to 1.
    """
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha))
    if use_cutmix:
        h, w = x.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(lam, h, w, rng)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + partner * (1.0 - lam)
    onehot = torch.nn.functional.one_hot
    target = lam * onehot(y, num_classes).float() + (1.0 - lam) * onehot(y_partner, num_classes).float()
    return x, target


class DeviceSplit:
    """A device-resident data set cut into seeded, rank-sliced global batches: what classify and
    segment batches share.

    Holds ``train_x``/``test_x`` uint8 ``(N, C, H, W)`` and their targets ``train_y``/``test_y``
    (labels ``(N,)`` or masks ``(N, H, W)``) on ``device``. Epoch ``e`` permutes the training split
    with a generator seeded by ``(seed, e)`` and cuts it into global batches of
    ``B = batch_size * world_size``; rank ``r`` keeps positions ``[r b, (r+1) b)`` of each.

    Args:
        train_x, train_y, test_x, test_y: the two splits (``train_x`` may be empty for evaluation).
        mean, std: per-channel statistics for ``(x / 255 - mean) / std``.
        batch_size, device, seed, rank, world_size, channels_last: as their names say.
        train: ``False`` allows an empty training split (evaluation only).
    """

    def __init__(self, train_x, train_y, test_x, test_y, mean, std, batch_size: int, device, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, train: bool = True):
        self.device = torch.device(device)
        self.train_x, self.train_y = train_x.to(self.device), train_y.to(self.device)
        self.test_x, self.test_y = test_x.to(self.device), test_y.to(self.device)
        c = self.test_x.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.batch_size, self.global_batch = batch_size, batch_size * world_size
        self.seed, self.rank, self.world_size, self.channels_last = seed, rank, world_size, channels_last
        if train and self.steps_per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} x world_size={world_size} is larger than the "
                             f"{self.train_x.shape[0]} training images: not one full batch per epoch")

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.train_x.shape[0] // self.global_batch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / 255 - mean) / std`` for uint8 ``x`` ``(B, C, H, W)``, in the wanted layout."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return ((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=fmt)

    def target(self, t: torch.Tensor) -> torch.Tensor:
        """A target batch as the loss takes it (labels as they are; masks override this)."""
        return t

    def permutation(self, epoch: int, max_steps: int | None = None):
        """``(generator, steps, perm)`` of epoch ``epoch``: ``perm`` int64 ``(steps, B)`` image indices;
        the generator (seeded by ``(seed, epoch)``) goes on to draw the epoch's augmentation."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        steps = self.steps_per_epoch if max_steps is None else min(self.steps_per_epoch, max_steps)
        perm = torch.randperm(self.train_x.shape[0], generator=gen)[: steps * self.global_batch]
        return gen, steps, perm.view(steps, self.global_batch)

    def mine(self) -> torch.Tensor:
        """This rank's positions ``[r b, (r+1) b)`` in a global batch."""
        b = self.batch_size
        return torch.arange(self.rank * b, (self.rank + 1) * b, device=self.device)

    def test_batches(self, batch_size: int):
        """Yield ``(x, target)`` over the test split in order; with several ranks, rank r takes
        batches r, r + K, r + 2K, ... (sum the results over ranks)."""
        for i, start in enumerate(range(0, self.test_x.shape[0], batch_size)):
            if i % self.world_size == self.rank:
                sl = slice(start, start + batch_size)
                yield self.normalize(self.test_x[sl]), self.target(self.test_y[sl])


class DeviceBatches(DeviceSplit):
    """Epochs of augmented, normalised batches cut from a device-resident :class:`ImageData`.

    Args:
        data: an ImageData-like object (``train_x`` uint8 ``(N, C, H, W)``, ``train_y``,
            ``test_x``, ``test_y``, ``mean``, ``std``, ``num_classes``).
        batch_size: images per rank per step (the global batch is ``batch_size * world_size``).
        device: where the data and batches live.
        seed: all randomness is a function of ``(seed, epoch, step)``.
        augment: random crop (padding ``max(1, H // 8)``: 4 px at 32x32) and horizontal flip, each
            only where the data allows it (``data.crop_ok``, ``data.flip_ok``; both default True).
        mixup, cutmix: Beta(a, a) parameters (0 turns each off).
        rank, world_size: this process's shard of each global batch.
        channels_last: hand out batches in ``channels_last`` memory format.
        padding_mode: ``"reflect"`` or ``"zero"``.
        train: ``False`` leaves the training split off the device (for evaluation only).

    Each training batch is ``(x, target, labels)``: ``x`` float32 ``(b, C, H, W)`` normalised,
    ``target`` either ``labels`` (int64 ``(b,)``) or soft targets ``(b, num_classes)`` under mixup.
    """

    def __init__(self, data, batch_size: int, device, *, seed: int = 0, augment: bool = True,
                 mixup: float = 0.0, cutmix: float = 0.0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, padding_mode: str = "reflect", train: bool = True):
        keep = slice(None) if train else slice(0)  # evaluation alone leaves the training split behind
        super().__init__(data.train_x[keep], data.train_y[keep], data.test_x, data.test_y, data.mean,
                         data.std,
                         batch_size, device, seed=seed, rank=rank, world_size=world_size,
                         channels_last=channels_last, train=train)
        self.num_classes = int(data.num_classes)
        self.augment, self.mixup, self.cutmix, self.padding_mode = augment, mixup, cutmix, padding_mode
        self.padding = max(1, min(self.test_x.shape[2:]) // 8)
        self.crop = augment and getattr(data, "crop_ok", True)
        self.flip = augment and getattr(data, "flip_ok", True)

    def _images(self, idx: torch.Tensor, oy, ox, flip) -> torch.Tensor:
        x = self.train_x[idx]
        if self.crop or self.flip:  # the offsets and flips are drawn either way: the RNG streams stay put
            centre = torch.full_like(oy, self.padding)
            oy, ox = (oy, ox) if self.crop else (centre, centre)
            x = crop_flip(x, oy, ox, flip & self.flip, self.padding, self.padding_mode)
        return self.normalize(x)

    def epoch(self, epoch: int, max_steps: int | None = None):
        """Yield ``(x, target, labels)`` for this rank for every step of epoch ``epoch`` (0-based)."""
        gen, steps, perm = self.permutation(epoch, max_steps)
        gb = self.global_batch
        oy = torch.randint(0, 2 * self.padding + 1, (steps, gb), generator=gen)
        ox = torch.randint(0, 2 * self.padding + 1, (steps, gb), generator=gen)
        flip = torch.rand(steps, gb, generator=gen) < 0.5
        perm, oy, ox, flip = (t.to(self.device, non_blocking=True) for t in (perm, oy, ox, flip))
        mine = self.mine()
        for step in range(steps):
            idx = perm[step, mine]
            x = self._images(idx, oy[step, mine], ox[step, mine], flip[step, mine])
            labels = self.train_y[idx]
            target = labels
            if self.mixup > 0 or self.cutmix > 0:
                other = (mine + 1) % gb
                pidx = perm[step, other]
                partner = self._images(pidx, oy[step, other], ox[step, other], flip[step, other])
                rng = np.random.default_rng(derive_seed(self.seed, epoch, 1, step))
                x, target = mix_batch(x, partner, labels, self.train_y[pidx], self.num_classes,
                                      self.mixup, self.cutmix, rng)
            yield x, target, labels


class LoaderBatches:
    """The same interface over a folder dataset (:class:`unifiedctx.data.FolderData`), whose
    ``train_loader(batch_size, seed, shuffle, rank, world_size)`` and ``test_loader(batch_size)``
    give DataLoaders of normalised float images (augmentation lives in the loader's transforms;
    mixup/cutmix are applied here, partner ``i+1 mod b`` within each rank's batch)."""

    def __init__(self, data, batch_size: int, device, *, seed: int = 0, mixup: float = 0.0,
                 cutmix: float = 0.0, rank: int = 0, world_size: int = 1, channels_last: bool = False, **_):
        self.data, self.device = data, torch.device(device)
        self.batch_size, self.seed, self.mixup, self.cutmix = batch_size, seed, mixup, cutmix
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.num_classes = int(data.num_classes)
        self.steps_per_epoch = len(data.train_loader(batch_size, seed=seed, shuffle=True, rank=rank,
                                                     world_size=world_size, drop_last=True))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True).contiguous(memory_format=fmt)

    def epoch(self, epoch: int, max_steps: int | None = None):
        loader = self.data.train_loader(self.batch_size, seed=derive_seed(self.seed, epoch, 0), shuffle=True,
                                        rank=self.rank, world_size=self.world_size, drop_last=True)
        for step, (x, labels) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, labels = self._to_device(x), labels.to(self.device, non_blocking=True)
            target = labels
            if self.mixup > 0 or self.cutmix > 0:
                rng = np.random.default_rng(derive_seed(self.seed, epoch, 1, step))
                x, target = mix_batch(x, x.roll(-1, 0), labels, labels.roll(-1, 0), self.num_classes,
                                      self.mixup, self.cutmix, rng)
            yield x, target, labels

    def test_batches(self, batch_size: int):
        for i, (x, labels) in enumerate(self.data.test_loader(batch_size)):
            if i % self.world_size == self.rank:
                yield self._to_device(x), labels.to(self.device, non_blocking=True)


def make_batches(data, batch_size: int, device, **options):
    """:class:`DeviceBatches` for an ImageData-like object (has ``train_x``), :class:`LoaderBatches`
    for a folder dataset (has ``train_loader``); anything else is a ``TypeError``."""
    if hasattr(data, "train_x"):
        return DeviceBatches(data, batch_size, device, **options)
    if hasattr(data, "train_loader"):
        return LoaderBatches(data, batch_size, device, **options)
    raise TypeError("data must be an ImageData (train_x/train_y/test_x/test_y tensors) or a FolderData "
                    f"(train_loader/test_loader), got {type(data).__name__}")
