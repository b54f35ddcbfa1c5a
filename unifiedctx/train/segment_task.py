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
when the engine's ``augment`` is on too. Mixup and cutmix have no meaning here and are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .batches import derive_seed
from .tasks import Task, autocast_context, register


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


class SegmentBatches:
    """Epochs of ``(x, mask)`` batches from a device-resident SegmentationData.

    Args:
        data: has ``train_x``/``test_x`` uint8 ``(N, C, H, W)``, ``train_masks``/``test_masks``
            ``(N, H, W)``, ``mean``, ``std``.
        batch_size: images per rank per step; the global batch is ``batch_size * world_size``.
        device: where the data and the batches live.
        seed, flip, rank, world_size, channels_last: see the module docstring.
    """

    def __init__(self, data, batch_size: int, device, *, seed: int = 0, flip: bool = False, rank: int = 0,
                 world_size: int = 1, channels_last: bool = False):
        self.device = torch.device(device)
        self.train_x, self.test_x = data.train_x.to(self.device), data.test_x.to(self.device)
        self.train_masks, self.test_masks = data.train_masks.to(self.device), data.test_masks.to(self.device)
        self.num_classes = int(data.num_classes)
        c = self.train_x.shape[1]
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.batch_size, self.global_batch = batch_size, batch_size * world_size
        self.seed, self.flip, self.rank, self.world_size = seed, flip, rank, world_size
        self.channels_last = channels_last
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size={batch_size} x world_size={world_size} is larger than the "
                             f"{self.train_x.shape[0]} training images: not one full batch per epoch")

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial one is dropped)."""
        return self.train_x.shape[0] // self.global_batch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / 255 - mean) / std`` of uint8 ``(B, C, H, W)``, in the wanted layout."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return ((x.float() / 255.0 - self.mean) / self.std).contiguous(memory_format=fmt)

    def epoch(self, epoch: int, max_steps: int | None = None):
        """Yield ``(x, mask)`` for this rank for every step of epoch ``epoch`` (0-based)."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 0))
        steps, gb = self.steps_per_epoch, self.global_batch
        if max_steps is not None:
            steps = min(steps, max_steps)
        perm = torch.randperm(self.train_x.shape[0], generator=gen)[: steps * gb].view(steps, gb)
        flips = torch.rand(steps, gb, generator=gen) < 0.5
        perm, flips = perm.to(self.device), flips.to(self.device)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for step in range(steps):
            idx = perm[step, mine]
            x, mask = self.train_x[idx], self.train_masks[idx].long()
            if self.flip:
                f = flips[step, mine]
                x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
                mask = torch.where(f.view(-1, 1, 1), mask.flip(-1), mask)
            yield self.normalize(x), mask

    def test_batches(self, batch_size: int):
        """Yield ``(x, mask)`` over the test split in order; rank r takes batches r, r + K, ..."""
        for i, start in enumerate(range(0, self.test_x.shape[0], batch_size)):
            if i % self.world_size == self.rank:
                sl = slice(start, start + batch_size)
                yield self.normalize(self.test_x[sl]), self.test_masks[sl].long()


@register
class Segment(Task):
    """Semantic segmentation with per-pixel cross-entropy; best.pt by ``test_miou``.

    Args:
        flip: left-right flip of image and mask together as augmentation (default off).
        width: the head's width when the task builds the model (:meth:`build_model`).

    History columns: ``train_pixel_acc``; ``test_loss`` (mean per-pixel CE), ``test_miou``,
    ``test_pixel_acc`` (fractions in [0, 1]).
    """

    name = "segment"
    best_metric = "test_miou"

    def __init__(self, flip: bool = False, width: int | None = None):
        if not isinstance(flip, bool):
            raise TypeError(f"flip must be a bool, got {type(flip).__name__}")
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
            raise ValueError(f"width must be a positive int, got {width!r}")
        self.flip, self.width = flip, width

    def settings(self) -> dict:
        return {"flip": self.flip}

    def build_model(self, preset: str, data, seed: int = 0, **overrides) -> nn.Module:
        """A :class:`~unifiedctx.models.segment.Segmenter` on ``preset`` sized for ``data``
        (classes, channels, image size), its weights drawn from ``torch.manual_seed(seed)``."""
        from unifiedctx.models.segment import DEFAULT_WIDTH, create_segmenter

        h, w = data.image_size
        opts = {"img_size": h if h == w else (h, w), "in_chans": data.channels} | overrides
        width = opts.pop("width", self.width or DEFAULT_WIDTH)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_segmenter(preset, data.num_classes, width=width, **opts)

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Check the data has masks and the model fits it (classes, channels, image size); each
        mismatch is a ``ValueError`` naming both sides."""
        if getattr(data, "train_masks", None) is None or getattr(data, "test_masks", None) is None:
            raise ValueError(f"task 'segment' needs a dataset with masks (train_masks, test_masks), such as "
                             f"mnist_canvas or segfolder; got {getattr(data, 'name', type(data).__name__)!r}")
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
            with torch.no_grad():
                probe = data.test_x[:1].to(device).float()
                out_shape = tuple(model(probe).shape)
        finally:
            model.train(was_training)
        if out_shape != (1, data.num_classes, *size):
            raise ValueError(f"the model maps a {size[0]}x{size[1]} image to {out_shape}, but {name} needs "
                             f"(1, {data.num_classes}, {size[0]}, {size[1]}) logits: one score per class "
                             "and pixel")

    def batches(self, data, batch_size: int, device, *, seed: int = 0, augment: bool = True,
                mixup: float = 0.0, cutmix: float = 0.0, rank: int = 0, world_size: int = 1,
                channels_last: bool = False, **_) -> SegmentBatches:
        """:class:`SegmentBatches`; ``flip`` only when both ``augment`` and the task's ``flip``."""
        if mixup or cutmix:
            raise ValueError(f"mixup={mixup} / cutmix={cutmix}: task 'segment' has no mixing (set both to 0)")
        return SegmentBatches(data, batch_size, device, seed=seed, flip=bool(augment and self.flip),
                              rank=rank, world_size=world_size, channels_last=channels_last)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, mask = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), mask)
        correct = (logits.detach().argmax(1) == mask).sum()
        return loss, {"correct": correct, "pixels": torch.tensor(mask.numel(), device=mask.device)}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_pixel_acc": sums["correct"] / max(sums["pixels"], 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches, batch_size: int, amp_dtype, ctx: D.DistContext,
                 device: torch.device) -> dict[str, float]:
        """``test_loss``, ``test_miou``, ``test_pixel_acc`` over the test split (all ranks)."""
        result = evaluate_segmenter(model, batches.test_batches(batch_size), batches.num_classes, amp_dtype,
                                    ctx, device)
        return {k: v for k, v in result.items() if k != "confusion"}


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, test_batches, num_classes: int, amp_dtype, ctx: D.DistContext,
                       device: torch.device) -> dict:
    """Loss, mIoU, pixel accuracy and the confusion matrix (int64 ``(K, K)``, ``K = num_classes``)
    over ``(x, mask)`` batches, summed over ranks (a rank may have no batch: it adds zeros); the
    model is put in eval mode and back."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros(1, dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    try:
        for x, mask in test_batches:
            with autocast_context(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, mask, reduction="sum").double()
            confusion += confusion_matrix(logits.argmax(1), mask, num_classes)
        D.all_reduce_sum(loss_sum, ctx)
        D.all_reduce_sum(confusion, ctx)
    finally:
        model.train(was_training)
    pixels = int(confusion.sum())
    if pixels == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    return {"test_loss": float(loss_sum) / pixels, "test_miou": mean_iou(confusion),
            "test_pixel_acc": float(confusion.diagonal().sum()) / pixels, "confusion": confusion.cpu()}

