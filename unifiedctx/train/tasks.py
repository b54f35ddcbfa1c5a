"""What a training run optimises and measures: the :class:`Task`.

:func:`unifiedctx.train.fit` does the same for every task (warmup + cosine schedule, AdamW, EMA,
autocast, ``torch.compile``, channels_last, DDP, atomic checkpoints, exact resume, the history);
a task says only what differs:

==============  ===============================  =====================================  ==============
task            a batch                          loss                                   best.pt by
==============  ===============================  =====================================  ==============
``classify``    ``(x, target, labels)``          cross-entropy (label smoothing, mixup)  ``test_acc``
``segment``     ``(x, mask)``                    per-pixel cross-entropy                ``test_miou``
``dino``        ``(x, ...)`` (labels unused)     self-distillation over multi-crops     ``knn_acc``
==============  ===============================  =====================================  ==============

``create(name, **options)`` builds a registered task; ``register(cls)`` adds one (a class with a
unique ``name``). Tasks other than ``classify`` live in their own modules and are imported on
first use (``LAZY``), so ``import unifiedctx.train`` stays light.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as D
from .batches import make_batches

#: Registered task classes by name.
REGISTRY: dict[str, type[Task]] = {}
#: Tasks that register themselves when their module is imported: name -> module.
LAZY = {"segment": "unifiedctx.train.segment_task", "dino": "unifiedctx.train.dino"}


def register(cls: type[Task]) -> type[Task]:
    """Add a :class:`Task` subclass to the registry under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register expects a Task subclass, got {cls!r}")
    REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of every task, registered or importable."""
    return sorted({*REGISTRY, *LAZY})


def create(task, **options) -> Task:
    """A :class:`Task` from a name (``"classify"``, ``"segment"``, ``"dino"``) and its options;
    a Task instance is returned as it is (then ``options`` must be empty)."""
    if isinstance(task, Task):
        if options:
            raise TypeError(f"task options {sorted(options)} given with a Task instance; set them on it")
        return task
    if task is None:
        task = "classify"
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name ({', '.join(available())}) or a Task, "
                        f"got {type(task).__name__}")
    if task not in REGISTRY and task in LAZY:
        importlib.import_module(LAZY[task])
    if task not in REGISTRY:
        close = difflib.get_close_matches(task, available(), n=2)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {task!r}; available: {', '.join(available())}.{hint}")
    return REGISTRY[task](**options)


def autocast_context(device: torch.device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype`` on ``device``'s type, or a no-op context."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


class Task(ABC):
    """Base class: the contract between a task and the engine (defaults are classification's).

    Subclasses set ``name`` and ``best_metric`` and override what differs. The methods, in the
    order the engine calls them:

    * ``build_model(preset, data, seed, **overrides)``: the model to train (the CLI's ``--model``);
    * ``settings()``: JSON-able options that change the result (stored in checkpoints and
      ``config.json``, compared on resume);
    * ``setup(model, data, device)``: once, before the first step: check the model against the data
      (``ValueError`` naming the mismatch) and build what depends on the model;
    * ``modules()``: extra trainable modules (optimised and checkpointed with the model);
    * ``batches(data, batch_size, device, **options)``: ``.steps_per_epoch``, ``.epoch(epoch,
      max_steps)`` (an iterator of batches whose first element is the image batch ``(b, C, H, W)``)
      and ``.test_batches(batch_size)``;
    * ``loss(model, batch)`` -> ``(loss, sums)`` under autocast, every step;
    * ``after_step(model, global_step, total_steps)`` after every optimizer step;
    * ``train_metrics(sums)`` -> history columns, every epoch (sums all-reduced over ranks);
    * ``evaluate(model, batches, batch_size, amp_dtype, ctx, device)`` -> history columns;
    * ``state_dict()`` / ``load_state_dict(state)``: what else exact resume needs.
    """

    name: ClassVar[str] = "task"
    best_metric: ClassVar[str] = "test_acc"

    def settings(self) -> dict:
        """JSON-able settings of this task that decide the result (none by default)."""
        return {}

    def build_model(self, preset: str, data, seed: int = 0, **overrides) -> nn.Module:
        """The model this task trains, from a preset sized for ``data`` (the CLI calls this):
        by default the preset itself (:func:`unifiedctx.train.cache.build_model`)."""
        from .cache import build_model

        return build_model(preset, data, seed, **overrides)

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Check ``model`` against ``data`` and build model-dependent state (nothing by default)."""
        return None  # optional hook: nothing by default

    def modules(self) -> nn.ModuleDict:
        """Trainable modules besides the model (none by default)."""
        return nn.ModuleDict()

    def batches(self, data, batch_size: int, device, **options):
        """The classification batches of :func:`unifiedctx.train.batches.make_batches`."""
        return make_batches(data, batch_size, device, **options)

    @abstractmethod
    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, sums)`` for one batch: the 0-d float32 loss and per-step sums for the epoch."""

    def after_step(self, model: nn.Module, global_step: int, total_steps: int) -> None:
        """Called after every optimizer step (nothing by default)."""
        return None  # optional hook: nothing by default

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Epoch sums -> history columns (none by default)."""
        return {}

    @abstractmethod
    def evaluate(self, model: nn.Module, batches, batch_size: int, amp_dtype, ctx: D.DistContext,
                 device: torch.device) -> dict[str, float]:
        """Test metrics (history columns), summed over ranks."""

    def state_dict(self) -> dict:
        """Non-trainable state that exact resume needs (none by default)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None  # optional hook: nothing by default


@register
class Classify(Task):
    """Image classification: ``loss = CE(model(x), q)`` with ``q = (1 - eps) t + eps / K``.

    ``t`` is the label (one-hot) or, under mixup/cutmix, the mixed soft target. Metrics: train and
    test accuracy (fraction of argmax hits in [0, 1]) and the test loss (mean CE, no smoothing).
    """

    name = "classify"
    best_metric = "test_acc"

    def __init__(self, label_smoothing: float = 0.0):
        ok = isinstance(label_smoothing, (int, float)) and not isinstance(label_smoothing, bool)
        if not ok or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def settings(self) -> dict:
        return {"label_smoothing": self.label_smoothing}

    def setup(self, model, data, device) -> None:
        wanted = getattr(data, "num_classes", None)
        if not isinstance(wanted, int):
            return
        classes = output_classes(model, data, device)
        if classes is not None and classes != wanted:
            raise ValueError(f"the model has {classes} classes but the data has {wanted}: build it with "
                             f"num_classes={wanted} (or model.reset_classifier({wanted}))")

    def loss(self, model, batch):
        x, target, labels = batch
        logits = model(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        correct = (logits.detach().argmax(-1) == labels).sum()
        return loss, {"correct": correct, "count": torch.tensor(labels.numel(), device=labels.device)}

    def train_metrics(self, sums):
        return {"train_acc": sums["correct"] / max(sums["count"], 1)}

    @torch.no_grad()
    def evaluate(self, model, batches, batch_size, amp_dtype, ctx, device):
        return evaluate_classifier(model, batches.test_batches(batch_size), amp_dtype, ctx, device)


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
