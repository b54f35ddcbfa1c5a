"""``count``: how many digits are on a canvas, as a classification of the count (:class:`Count`).

The data is a :class:`unifiedctx.data.canvas.SegmentationData` with boxes (``mnist_canvas``):
image ``i`` carries ``n_i`` digits, the rows of ``boxes[i]`` whose label is not the padding -1.
The model maps ``x`` ``(b, C, H, W)`` to ``K = max_count + 1`` logits, one per count 0..max_count::

    n_i       = #{j : boxes[i, j, 4] >= 0}                          the target, in [0, K)
    loss      = mean_i  - log softmax(model(x_i))[n_i]              cross-entropy over the counts
    C[t, k]   = #{i : n_i = t, argmax model(x_i) = k}               confusion matrix (K x K)
    test_acc  = trace(C) / sum(C)
    test_mae  = sum_{t,k} |t - k| C[t, k] / sum(C)                  mean absolute count error

A mirrored canvas holds as many digits as the canvas, so a left-right flip is a fair augmentation
(``flip``, on by default, applied when the recipe's ``augment`` is on); crops are not (a crop can
cut a digit off). Metrics: ``train_acc``; ``test_loss``, ``test_acc``, ``test_mae``; best.pt by
``test_acc``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from ...validation import check_bool, check_int
from .. import distributed as D
from ..batches import DeviceBatches
from . import register
from .base import Task, TaskExample, autocast_context
from .classify import output_classes


@dataclass(frozen=True)
class CountOptions:
    """The options of :class:`Count`, checked when made (``ValueError``/``TypeError`` naming them).

    Attributes:
        max_count: the largest count the model can answer; it has ``max_count + 1`` outputs.
        flip: left-right flips as augmentation (they keep the count).
    """

    max_count: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_count", check_int("max_count", self.max_count, low=1, high=64))
        object.__setattr__(self, "flip", check_bool("flip", self.flip))


def digit_counts(boxes: torch.Tensor) -> torch.Tensor:
    """int64 ``(N,)`` digits per image from int64 boxes ``(N, K, 5)`` padded with rows of -1."""
    return (boxes[..., 4] >= 0).sum(1)


@register
class Count(Task):
    """Count the digits on a canvas: cross-entropy over the counts 0..max_count.

    Args:
        max_count, flip: see :class:`CountOptions`.
    """

    name = "count"
    best_metric = "test_acc"
    Options = CountOptions

    @classmethod
    def example(cls) -> TaskExample:
        """32 training and 16 test canvases of 16 px with 1 to 3 digits (2 steps per epoch)."""
        return TaskExample("deit_tiny_nano", small_canvases(32, 16, size=16, seed=3), {"max_count": 3},
                           {"drop_path": 0.0}, {"batch_size": 16, "lr": 3e-3, "seed": 1})

    def model_options(self, data) -> dict:
        """The model sized for ``data``'s images, with ``max_count + 1`` outputs."""
        return {**super().model_options(data), "num_classes": self.options.max_count + 1}

    def check_data(self, data) -> None:
        """Boxes in both splits (they give the counts), no image with more than ``max_count`` digits."""
        for split in ("train", "test"):
            boxes = getattr(data, f"{split}_boxes", None)
            if not isinstance(boxes, torch.Tensor):
                raise ValueError(f"task 'count' needs a dataset with boxes ({split}_boxes), such as "
                                 f"mnist_canvas; got {getattr(data, 'name', type(data).__name__)!r}")
            most = int(digit_counts(boxes).max()) if len(boxes) else 0
            if most > self.options.max_count:
                raise ValueError(f"data.{split}_boxes has an image with {most} digits, more than "
                                 f"max_count={self.options.max_count}: pass max_count={most}")
        super().check_data(data)

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Refuse a model whose number of outputs is not ``max_count + 1``."""
        wanted = self.options.max_count + 1
        got = output_classes(model, data, device)
        if got is not None and got != wanted:
            raise ValueError(f"the model has {got} outputs but task 'count' with max_count="
                             f"{self.options.max_count} needs {wanted}: build it with num_classes={wanted}")

    def batches(self, data, batch_size: int, device, *, augment: bool = True, **options) -> DeviceBatches:
        """:class:`~unifiedctx.train.batches.DeviceBatches` over the images with their counts as labels."""
        counted = SimpleNamespace(train_x=data.train_x, train_y=digit_counts(data.train_boxes),
                                  test_x=data.test_x, test_y=digit_counts(data.test_boxes), mean=data.mean,
                                  std=data.std, num_classes=self.options.max_count + 1, crop_ok=False,
                                  flip_ok=self.options.flip)
        return DeviceBatches(counted, batch_size, device, augment=augment, **options)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, _, counts = batch
        logits = model(x).float()
        hits = (logits.detach().argmax(-1) == counts).sum()
        images = torch.tensor(counts.numel(), device=counts.device)
        return F.cross_entropy(logits, counts), {"correct": hits, "images": images}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"train_acc": sums["correct"] / max(sums["images"], 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches, batch_size: int, amp_dtype, ctx: D.DistContext,
                 device: torch.device) -> dict[str, float]:
        """``test_loss``, ``test_acc``, ``test_mae`` from the confusion matrix of the test split
        (summed over ranks); the model is put in eval mode and back."""
        k = self.options.max_count + 1
        sums = torch.zeros(1 + k * k, dtype=torch.float64, device=device)  # loss sum, then C row by row
        was_training = model.training
        model.eval()
        try:
            for x, counts in batches.test_batches(batch_size):
                with autocast_context(device, amp_dtype):
                    logits = model(x).float()
                sums[0] += F.cross_entropy(logits, counts, reduction="sum").double()
                sums[1:] += torch.bincount(counts * k + logits.argmax(-1), minlength=k * k).double()
            D.all_reduce_sum(sums, ctx)
        finally:
            model.train(was_training)
        return count_metrics(float(sums[0]), sums[1:].view(k, k).cpu())


def count_metrics(loss_sum: float, confusion: torch.Tensor) -> dict[str, float]:
    """``test_loss``, ``test_acc`` and ``test_mae`` from a loss sum and a ``(K, K)`` confusion matrix."""
    total = float(confusion.sum())
    if total == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    k = confusion.shape[0]
    distance = (torch.arange(k).view(-1, 1) - torch.arange(k).view(1, -1)).abs().to(confusion)
    return {"test_loss": loss_sum / total, "test_acc": float(confusion.trace()) / total,
            "test_mae": float((distance * confusion).sum()) / total}


def small_canvases(n_train: int, n_test: int, size: int = 16, digits=(1, 3), seed: int = 0):
    """``mnist_canvas`` of 64 px (digits of 28 to 36 px) shrunk to ``size`` px (64 / size must be an
    int): images averaged over ``s x s`` blocks (``s = 64 // size``), masks and boxes subsampled."""
    from unifiedctx.data import load
    from unifiedctx.data.base import channel_stats

    step = 64 // check_int("size", size, low=4, high=64)
    canvas = load("mnist_canvas", size=64, n_train=n_train, n_test=n_test, digits=digits,
                  digit_size=(28, 36), seed=seed)
    shrink = {}
    for split in ("train", "test"):
        x, boxes = getattr(canvas, f"{split}_x"), getattr(canvas, f"{split}_boxes")
        scaled = torch.where(boxes[..., :4] >= 0, boxes[..., :4] // step, boxes[..., :4])
        shrink |= {f"{split}_x": F.avg_pool2d(x.float(), step).round().to(torch.uint8),
                   f"{split}_masks": getattr(canvas, f"{split}_masks")[:, ::step, ::step].contiguous(),
                   f"{split}_boxes": torch.cat([scaled, boxes[..., 4:]], -1)}
    mean, std = channel_stats(shrink["train_x"])
    return dataclasses.replace(canvas, mean=mean, std=std, **shrink)
