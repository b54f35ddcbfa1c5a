"""``segment``: semantic segmentation, one class per pixel (:class:`Segment`).

A batch is ``(x, mask)``: ``x`` float ``(b, C, H, W)`` normalised, ``mask`` int64 ``(b, H, W)``
class indices. The model returns ``(b, K, H, W)`` logits (a :class:`unifiedctx.models.segment.
Segmenter`). Loss and metrics, over the pixels ``p`` of a batch or of the test split::

    loss       = mean_p  - log softmax(logits_p)[mask_p]                    per-pixel cross-entropy
    C[t, k]    = #{p : mask_p = t, argmax logits_p = k}                     confusion matrix (K x K)
    IoU_k      = C[k, k] / (sum_t C[t, k] + sum_j C[k, j] - C[k, k])        TP / (TP + FP + FN)
    mIoU       = mean of IoU_k over the classes whose union is non-empty    (test_miou)
    pixel acc  = trace(C) / sum(C)                                          (test_pixel_acc)

A class that is neither in the truth nor predicted anywhere in the test split has an empty union
and is left out of the mean (it says nothing); a class that is predicted but absent from the truth
counts with IoU 0. Background (class 0 of ``mnist_canvas``) is a class like the others.

Batches are cut on the device from a :class:`unifiedctx.data.canvas.SegmentationData` like the
classification batches: epoch ``e`` shuffles with a generator seeded by ``(seed, e)``, rank ``r``
keeps its slice of each global batch. The only augmentation is an optional left-right flip of
image and mask together (``flip=True``; off by default: a flipped digit is not a digit), applied
when the engine's ``augment`` is on too. A pixel labelled ``data.ignore_index`` (if the data has
one) counts nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...validation import check_bool
from .. import distributed as D
from ..batches import DeviceSplit
from . import register
from .base import Task, TaskExample, autocast_context


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``(K, K)``: ``C[t, k]`` = pixels of true class ``t`` predicted as ``k`` (any shapes,
    equal; values in ``[0, K)``)."""
    index = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """float64 ``(K,)`` IoU of every class from a confusion matrix; NaN where the union is empty."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """The mean IoU over the classes with a non-empty union (see the module docstring)."""
    iou = iou_per_class(confusion)
    present = ~torch.isnan(iou)
    if not present.any():
        raise ValueError("the confusion matrix is empty: no pixel to measure")
    return float(iou[present].mean())


class SegmentBatches(DeviceSplit):
    """Epochs of ``(x, mask)`` batches from a device-resident SegmentationData (a
    :class:`~unifiedctx.train.batches.DeviceSplit` whose targets are the masks).

    Args:
        data: has ``train_x``/``test_x`` uint8 ``(N, C, H, W)``, ``train_masks``/``test_masks``
            ``(N, H, W)``, ``mean``, ``std``.
        batch_size: images per rank per step; the global batch is ``batch_size * world_size``.
        device: where the data and the batches live.
        seed, flip, rank, world_size, channels_last: see the module docstring.
    """

    def __init__(self, data, batch_size: int, device, *, seed: int = 0, flip: bool = False, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        super().__init__(data.train_x, data.train_masks, data.test_x, data.test_masks, data.mean, data.std,
                         batch_size, device, seed=seed, rank=rank, world_size=world_size,
                         channels_last=channels_last)
        self.num_classes = int(data.num_classes)
        self.flip = flip

    @property
    def train_masks(self) -> torch.Tensor:
        return self.train_y

    @property
    def test_masks(self) -> torch.Tensor:
        return self.test_y

    def target(self, t: torch.Tensor) -> torch.Tensor:
        return t.long()

    def epoch(self, epoch: int, max_steps: int | None = None):
        """Yield ``(x, mask)`` for this rank for every step of epoch ``epoch`` (0-based)."""
        gen, steps, perm = self.permutation(epoch, max_steps)
        flips = torch.rand(steps, self.global_batch, generator=gen) < 0.5
        perm, flips = perm.to(self.device), flips.to(self.device)
        mine = self.mine()
        for step in range(steps):
            idx = perm[step, mine]
            x, mask = self.train_x[idx], self.train_y[idx].long()
            if self.flip:
                f = flips[step, mine]
                x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
                mask = torch.where(f.view(-1, 1, 1), mask.flip(-1), mask)
            yield self.normalize(x), mask


def _valid(mask: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """bool mask of the pixels that count (``None`` when every pixel counts)."""
    return None if ignore_index is None else mask != ignore_index


@dataclass(frozen=True)
class SegmentOptions:
    """The options of :class:`Segment`, checked when made.

    Attributes:
        flip: left-right flip of image and mask together as augmentation (default off: a flipped
            digit is not a digit).
    """

    flip: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip", check_bool("flip", self.flip))


@register
class Segment(Task):
    """Semantic segmentation with per-pixel cross-entropy; best.pt by ``test_miou``.

    Args:
        flip: see :class:`SegmentOptions`.

    The model is a :class:`~unifiedctx.models.segment.Segmenter` on a preset backbone (its head's
    width is a model option, ``width=``), or the plain U-Net reference (``"unet"``, with ``base=``
    and ``depth=``). Pixels labelled ``data.ignore_index`` (when the data has one, e.g. 255 in a
    ``segfolder``) count neither in the loss nor in the metrics.

    History columns: ``train_pixel_acc``; ``test_loss`` (mean per-pixel CE), ``test_miou``,
    ``test_pixel_acc`` (fractions in [0, 1]).
    """

    name = "segment"
    best_metric = "test_miou"
    Options = SegmentOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.ignore_index: int | None = None

    @classmethod
    def example(cls) -> TaskExample:
        """32 training and 16 test canvases of 16 px with 1 to 3 digits (2 steps per epoch)."""
        from .count import small_canvases

        return TaskExample("deit_tiny_nano", small_canvases(32, 16, size=16, seed=1), {}, {},
                           {"batch_size": 16, "lr": 3e-3, "seed": 1})

    def presets(self) -> list[str]:
        """Every backbone preset, and ``"unet"``."""
        from unifiedctx.models.segment import segmenter_presets

        return segmenter_presets()

    def build(self, preset: str, **options) -> nn.Module:
        """A :class:`~unifiedctx.models.segment.Segmenter` on ``preset`` (or the U-Net), sized by
        ``options`` (classes, channels, image size; ``width`` of the head)."""
        from unifiedctx.models.segment import create_segmenter

        return create_segmenter(preset, **options)

    def check_data(self, data) -> None:
        """Masks in both splits, non-empty splits, mask values in ``[0, K)`` or the ignore label, and
        in each split at least one labelled pixel (a split whose every pixel is ignored is refused)."""
        if getattr(data, "train_masks", None) is None or getattr(data, "test_masks", None) is None:
            raise ValueError(f"task 'segment' needs a dataset with masks (train_masks, test_masks), such as "
                             f"mnist_canvas or segfolder; got {getattr(data, 'name', type(data).__name__)!r}")
        super().check_data(data)
        ignore = getattr(data, "ignore_index", None)
        k = int(data.num_classes)
        for split in ("train", "test"):
            masks = getattr(data, f"{split}_masks").long()
            bad = (masks < 0) | (masks >= k)
            if ignore is not None:
                bad &= masks != ignore
            if bool(bad.any()):
                also = "" if ignore is None else f" and not the ignore label {ignore}"
                raise ValueError(f"data.{split}_masks has the value {int(masks[bad][0])}, outside the "
                                 f"{k} classes [0, {k - 1}]{also}")
            if ignore is not None and len(masks) and not bool((masks != ignore).any()):
                use = "trained on" if split == "train" else "measured on"
                raise ValueError(f"data.{split}_masks labels no pixel: the {split} split has {len(masks)} "
                                 f"images, but every pixel of their masks is the ignore label {ignore}, so "
                                 f"nothing can be {use}; give that split masks with labelled pixels")

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Check the model fits the data (classes, channels, image size); each mismatch is a
        ``ValueError`` naming both sides. Takes the data's ``ignore_index``."""
        self.check_data(data)
        self.ignore_index = getattr(data, "ignore_index", None)
        name = getattr(data, "name", "the data")
        size = tuple(data.image_size)
        classes = getattr(model, "num_classes", None)
        if isinstance(classes, int) and classes != data.num_classes:
            raise ValueError(f"the model predicts {classes} classes per pixel but {name} has "
                             f"{data.num_classes} ({', '.join(data.classes)}): build it with "
                             f"num_classes={data.num_classes}")
        chans = getattr(model, "in_chans", None)
        if isinstance(chans, int) and chans != data.channels:
            raise ValueError(f"the model takes {chans} input channels but {name}'s images have "
                             f"{data.channels}: build it with in_chans={data.channels}")
        if hasattr(model, "check_input"):
            try:
                model.check_input(torch.empty(1, data.channels, *size, device="meta"))
            except ValueError as err:
                raise ValueError(f"{name}'s images are {size[0]}x{size[1]}, which the model cannot take: "
                                 f"{err}") from None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                out_shape = tuple(model(data.test_x[:1].to(device).float()).shape)
        finally:
            model.train(was_training)
        if out_shape != (1, data.num_classes, *size):
            raise ValueError(f"the model maps a {size[0]}x{size[1]} image to {out_shape}, but {name} needs "
                             f"(1, {data.num_classes}, {size[0]}, {size[1]}) logits: one score per class "
                             "and pixel")

    def batches(self, data, batch_size: int, device, *, seed: int = 0, augment: bool = True, rank: int = 0,
                world_size: int = 1, channels_last: bool = False, **_) -> SegmentBatches:
        """:class:`SegmentBatches`; ``flip`` only when both ``augment`` and the task's ``flip``."""
        return SegmentBatches(data, batch_size, device, seed=seed, flip=bool(augment and self.options.flip),
                              rank=rank, world_size=world_size, channels_last=channels_last)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, mask = batch
        logits = model(x)
        ignore = -100 if self.ignore_index is None else self.ignore_index
        loss = F.cross_entropy(logits.float(), mask, ignore_index=ignore)
        hits = logits.detach().argmax(1) == mask
        valid = _valid(mask, self.ignore_index)
        pixels = mask.numel() if valid is None else valid.sum()
        correct = hits.sum() if valid is None else (hits & valid).sum()
        return loss, {"correct": correct, "pixels": torch.as_tensor(pixels, device=mask.device)}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_pixel_acc": sums["correct"] / max(sums["pixels"], 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches, batch_size: int, amp_dtype, ctx: D.DistContext,
                 device: torch.device) -> dict[str, float]:
        """``test_loss``, ``test_miou``, ``test_pixel_acc`` over the test split (all ranks)."""
        result = evaluate_segmenter(model, batches.test_batches(batch_size), batches.num_classes, amp_dtype,
                                    ctx, device, ignore_index=self.ignore_index)
        return {k: v for k, v in result.items() if k != "confusion"}


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, test_batches, num_classes: int, amp_dtype, ctx: D.DistContext,
                       device: torch.device, ignore_index: int | None = None) -> dict:
    """Loss, mIoU, pixel accuracy and the confusion matrix (int64 ``(K, K)``, ``K = num_classes``)
    over ``(x, mask)`` batches, summed over ranks (a rank may have no batch: it adds zeros); the
    model is put in eval mode and back. Pixels whose mask is ``ignore_index`` are left out."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    ignore = -100 if ignore_index is None else ignore_index
    try:
        for x, mask in test_batches:
            with autocast_context(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, mask, reduction="sum", ignore_index=ignore).double()
            pred, valid = logits.argmax(1), _valid(mask, ignore_index)
            if valid is not None:
                pred, mask = pred[valid], mask[valid]
            confusion += confusion_matrix(pred, mask, num_classes)
        D.all_reduce_sum(loss_sum, ctx)
        D.all_reduce_sum(confusion, ctx)
    finally:
        model.train(was_training)
    pixels = int(confusion.sum())
    if pixels == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    return {"test_loss": float(loss_sum) / pixels, "test_miou": mean_iou(confusion),
            "test_pixel_acc": float(confusion.diagonal().sum()) / pixels, "confusion": confusion.cpu()}
