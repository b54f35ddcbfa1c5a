"""``evaluate``: a model's test-split metrics for a task, in one process (no training, no folder)."""

from __future__ import annotations

from torch import nn

from ..validation import check_bool, check_module, check_positive_int
from . import distributed as D
from .checks import prepare
from .run import resolve_amp, resolve_device
from .tasks import Task
from .tasks import create as create_task


def evaluate(model: nn.Module, data, batch_size: int = 256, device="auto", amp="auto",
             channels_last: bool = False, task: str | Task | None = None) -> dict:
    """Test-split metrics of ``model`` for ``task`` (one process, no smoothing or augmentation).

    Args:
        model: the trained network (classification: ``(B, C, H, W)`` -> ``(B, num_classes)`` logits).
        data: the data set the task takes (an ImageData, a FolderData, a SegmentationData).
        batch_size: images per forward pass.
        device, amp, channels_last: as in :func:`~unifiedctx.train.fit`.
        task: the task the model was trained for (a name or a Task; ``None``: classification).

    Returns:
        the numeric test metrics of ``task.evaluate`` (the history's test columns), or what the
        task's ``public_metrics`` makes of them (classification: ``{"loss": mean CE, "acc": in [0, 1]}``).
    """
    check_module("model", model)
    check_positive_int("batch_size", batch_size)
    check_bool("channels_last", channels_last)
    task = create_task(task)
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    prepare(model, data, task, dev)
    # a training batch of 1: only the test batches are used, and any training split has one
    batches = task.batches(data, 1, dev, seed=0, augment=False, rank=0, world_size=1,
                           channels_last=channels_last)
    metrics = task.evaluate(model, batches, batch_size, amp_dtype, D.DistContext(), dev)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    public = getattr(task, "public_metrics", None)
    return public(metrics) if public is not None else metrics
