"""``classify``: image classification (:class:`Classify`), with its own options (:class:`ClassifyOptions`).

One step on a batch ``x`` ``(b, C, H, W)`` with targets ``t`` (labels, or soft targets under
mixup/cutmix, see :mod:`unifiedctx.train.batches`) and label smoothing ``eps`` over ``K`` classes::

    q = (1 - eps) t + eps / K                          (t one-hot for plain labels)
    loss = mean_i  - sum_k q_ik log softmax(model(x))_ik

Metrics: ``train_acc``, ``test_acc`` (fraction of argmax hits in [0, 1]) and ``test_loss`` (mean
cross-entropy, no smoothing). Label smoothing, mixup and cutmix are options of this task only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...validation import check_float
from .. import distributed as D
from ..batches import make_batches
from .base import Task, TaskExample, autocast_context


@dataclass(frozen=True)
class ClassifyOptions:
    """The options of :class:`Classify`, each checked when made (``ValueError``/``TypeError`` naming it).

    Attributes:
        label_smoothing: ``eps`` in ``q = (1 - eps) t + eps / K``, in [0, 1).
        mixup: mixup Beta(a, a) parameter (0: off).
        cutmix: cutmix Beta(a, a) parameter (0: off).
    """

    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_smoothing", check_float("label_smoothing", self.label_smoothing,
                                                                low=0, high=1, high_open=True))
        object.__setattr__(self, "mixup", check_float("mixup", self.mixup, low=0))
        object.__setattr__(self, "cutmix", check_float("cutmix", self.cutmix, low=0))


def check_image_data(data) -> None:
    """The tensors of an ImageData-like ``data``: uint8 images, int64 labels in ``[0, num_classes)``,
    both splits non-empty (``TypeError``/``ValueError`` naming the split). Folder data passes."""
    if not hasattr(data, "train_x"):
        return
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x", None), getattr(data, f"{split}_y", None)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"data.{split}_x must be a uint8 tensor (N, C, H, W) of images in [0, 255], got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}; "
                            "build an ImageData (float images in [0, 1]: (x * 255).round().to(torch.uint8))")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise TypeError(f"data.{split}_y must be an int64 tensor ({x.shape[0]},), got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        k = getattr(data, "num_classes", None)
        if isinstance(k, int) and len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"data.{split}_y has labels in [{int(y.min())}, {int(y.max())}] but the data "
                             f"has {k} classes (labels must be in [0, {k - 1}])")


class Classify(Task):
    """Image classification: ``loss = CE(model(x), q)`` with ``q = (1 - eps) t + eps / K``.

    Args:
        label_smoothing, mixup, cutmix: see :class:`ClassifyOptions`.
    """

    name = "classify"
    best_metric = "test_acc"
    Options = ClassifyOptions
    #: Options the command line offers as flags of their own (``--label-smoothing 0.1``).
    flags = {"label_smoothing": "label smoothing eps of the classify task: q = (1 - eps) t + eps / K",
             "mixup": "mixup Beta(a, a) parameter of the classify task (0: off)",
             "cutmix": "cutmix Beta(a, a) parameter of the classify task (0: off)"}

    @classmethod
    def example(cls) -> TaskExample:
        """32 training and 16 test texture images of 16 px; label smoothing, mixup and an EMA exercise
        the task's options and the EMA's resume."""
        from unifiedctx.data.texture import load_texture

        return TaskExample("deit_tiny_nano", load_texture(n_train=32, n_test=16, size=16, seed=0),
                           {"label_smoothing": 0.1, "mixup": 0.4}, {"drop_path": 0.0},
                           {"batch_size": 16, "lr": 3e-3, "seed": 1, "ema": 0.9})

    def check_data(self, data) -> None:
        check_image_data(data)
        super().check_data(data)

    def setup(self, model, data, device) -> None:
        """Refuse a model whose number of logits is not the data's number of classes."""
        wanted = getattr(data, "num_classes", None)
        if not isinstance(wanted, int):
            return
        classes = output_classes(model, data, device)
        if classes is not None and classes != wanted:
            raise ValueError(f"the model has {classes} classes but the data has {wanted} classes: "
                             "build it with "
                             f"num_classes={wanted} (or model.reset_classifier({wanted}))")

    def batches(self, data, batch_size: int, device, **options):
        """:func:`~unifiedctx.train.batches.make_batches` with this task's mixup and cutmix."""
        return make_batches(data, batch_size, device, mixup=self.options.mixup, cutmix=self.options.cutmix,
                            **options)

    def loss(self, model, batch):
        x, target, labels = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.options.label_smoothing)
        correct = (logits.detach().argmax(-1) == labels).sum()
        return loss, {"correct": correct, "count": torch.tensor(labels.numel(), device=labels.device)}

    def train_metrics(self, sums):
        return {"train_acc": sums["correct"] / max(sums["count"], 1)}

    @torch.no_grad()
    def evaluate(self, model, batches, batch_size, amp_dtype, ctx, device):
        return evaluate_classifier(model, batches.test_batches(batch_size), amp_dtype, ctx, device)

    @staticmethod
    def public_metrics(metrics: dict) -> dict:
        """What :func:`unifiedctx.train.evaluate` returns: ``{"loss", "acc"}``."""
        return {"loss": metrics["test_loss"], "acc": metrics["test_acc"]}


@torch.no_grad()
def output_classes(model: nn.Module, data, device: torch.device) -> int | None:
    """How many logits ``model`` gives: its ``num_classes`` (or ``config["num_classes"]``), else
    what one forward pass of one test image returns (in eval mode; the mode is restored)."""
    config = getattr(model, "config", None)
    from_config = config.get("num_classes") if isinstance(config, dict) else None
    for value in (getattr(model, "num_classes", None), from_config):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    test_x = getattr(data, "test_x", None)
    if not isinstance(test_x, torch.Tensor) or len(test_x) == 0:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            out = model(test_x[:1].to(device).float())
    finally:
        model.train(was_training)
    return int(out.shape[-1]) if out.dim() == 2 else None


@torch.no_grad()
def evaluate_classifier(model: nn.Module, test_batches, amp_dtype, ctx: D.DistContext,
                        device: torch.device) -> dict[str, float]:
    """``{"test_loss", "test_acc"}``: mean CE and accuracy over ``(x, labels)`` batches, all ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    try:
        for x, y in test_batches:
            with autocast_context(device, amp_dtype):
                logits = model(x)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(-1) == y).sum()
            sums[2] += y.numel()
        D.all_reduce_sum(sums, ctx)
    finally:
        model.train(was_training)
    loss, correct, count = sums.tolist()
    if count == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    return {"test_loss": loss / count, "test_acc": correct / count}
