"""The ``segment`` task now lives in :mod:`unifiedctx.train.tasks.segment`; this path re-exports it."""

from __future__ import annotations

from .tasks.segment import (
    Segment,
    SegmentBatches,
    confusion_matrix,
    evaluate_segmenter,
    iou_per_class,
    mean_iou,
)

__all__ = ["Segment", "SegmentBatches", "confusion_matrix", "evaluate_segmenter", "iou_per_class", "mean_iou"]
