"""unifiedctx: convolution, self-attention and MLP-Mixer as one operator.

Every token mixer aggregates context through an affinity matrix, ``Y = project(A @ V)``
(see :mod:`unifiedctx.mixers`); networks are built from those mixers by one builder
(:func:`create_model`). Submodules load on first use, so ``import unifiedctx`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily on first access)
_LAZY_ATTRS = {
    "create_model": "unifiedctx.models",
    "list_models": "unifiedctx.models",
    "record_affinities": "unifiedctx.inspection",
    "mixing_weights": "unifiedctx.inspection",
    "inspect": "unifiedctx.inspection",
    "inspect_model": "unifiedctx.inspection",
}
_SUBMODULES = ("mixers", "models", "data", "train", "viz", "widgets", "inspection", "profiles",
               "context")


def __getattr__(name: str):
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"unifiedctx.{name}")
    raise AttributeError(f"module 'unifiedctx' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY_ATTRS, *_SUBMODULES])


__all__ = [*_LAZY_ATTRS, *_SUBMODULES]
