"""The ``dino`` task now lives in :mod:`unifiedctx.train.tasks.dino`; this path re-exports it."""

from __future__ import annotations

from ..tasks.dino import Dino, DinoStudent

__all__ = ["Dino", "DinoStudent"]
