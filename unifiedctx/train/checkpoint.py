"""Checkpoints: written atomically, read with ``torch.load(..., weights_only=True)``, refused when
they were made for another architecture.

A checkpoint is a dict of tensors and plain values::

    {"format": "unifiedctx-checkpoint/1", "model_config": model.config or None,
     "model": state_dict, "optimizer": state_dict or None, "ema": state_dict or None,
     "epoch": completed epochs, "epochs": planned epochs, "step": optimizer steps so far,
     "recipe": the fit settings that decide the result, "history": [per-epoch dicts], ...}
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..files import (
    FORMAT,
    check_resumable,
    describe,
    load_weights_into,
    model_config,
    nonfinite_tensors,
    read_checkpoint,
    save_checkpoint,
)
from ..validation import check_bool
from .recipe import upgrade_record

__all__ = ["FORMAT", "build_from_config", "check_config", "data_identity", "describe", "load_checkpoint",
           "model_config", "read_checkpoint", "recipe_differences", "resume_state", "save_checkpoint"]


def _normalized(config):
    """A model config with its stages completed by the stage spec (older configs list only what
    their preset gave); a config the spec cannot read is compared as it is."""
    from unifiedctx.models import normalize_config

    try:
        return normalize_config(config)
    except (TypeError, ValueError):
        return config


def check_config(stored, current, where: str) -> None:
    """Raise ``ValueError`` naming both architectures when ``stored`` and ``current`` differ
    (stage dicts are compared as stage specs: defaults filled, ``8`` and ``8.0`` alike)."""
    if stored is None or current is None or stored == current:
        return
    stored, current = _normalized(stored), _normalized(current)
    if stored == current:
        return
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    raise ValueError(f"{where} was made for {describe(stored)}, not for {describe(current)} "
                     f"(differs in: {', '.join(diff)}); use a matching model or another output folder")


def build_from_config(config: dict) -> nn.Module:
    """Rebuild a model from its stored ``config`` with :func:`unifiedctx.models.create_model`."""
    from unifiedctx import models

    if hasattr(models, "from_config"):
        return models.from_config(config)
    config = dict(config)
    name = config.pop("name", None) or config.pop("preset", None) or config.pop("model", None)
    return models.create_model(name, **config)


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *, ema: bool = False,
                    map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint into ``model`` (or into a model rebuilt from its stored config).

    Args:
        path: the ``.pt`` file.
        model: a model of the same architecture; ``None`` rebuilds it with ``create_model``.
        ema: load the EMA weights instead of the raw ones (``ValueError`` if there are none).
        map_location: where tensors are loaded (default CPU).

    Returns:
        ``(model, state)`` where ``state`` is the whole checkpoint dict.

    Raises:
        ValueError: the checkpoint was made for another architecture (both are named).
    """
    check_bool("ema", ema)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    state = read_checkpoint(path, map_location)
    if model is None:
        if state.get("model_config") is None:
            raise ValueError(f"{path} stores no model config: pass the model to load it into")
        model = build_from_config(state["model_config"])
    else:
        check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    load_weights_into(model, path, state, ema=ema)
    return model, state


# ---------------------------------------------------------------------------------- the run record
def data_identity(data) -> dict:
    """What the data is, for the record: ``{"name", "options", "fingerprint"}`` (the fingerprint
    hashes the sizes and a strided sample of the contents; see ``ImageData.fingerprint``)."""
    fingerprint = getattr(data, "fingerprint", None)
    return {"name": getattr(data, "name", None), "options": getattr(data, "options", None),
            "fingerprint": fingerprint() if callable(fingerprint) else None}


def recipe_differences(stored: dict, wanted: dict, where: str = "in the checkpoint") -> list[str]:
    """``"key: A in the checkpoint, B now"`` for every setting in which two run records differ,
    nested settings by their dotted path (``task.settings.mixup: 0.0 in the checkpoint, 0.2 now``;
    below the top level only dicts with the same keys are compared entry by entry);
    a record of an older version is first read in today's shape (:func:`upgrade_record`)."""
    stored = upgrade_record(stored) if isinstance(stored, dict) else {}
    return _differences(stored, wanted, where, "")


def _differences(old: dict, new: dict, where: str, prefix: str) -> list[str]:
    diff = []
    for key in new:
        a, b = old.get(key, "(not recorded)"), new[key]
        if isinstance(a, dict) and isinstance(b, dict) and (not prefix or set(a) == set(b)):
            diff += _differences(a, b, where, f"{prefix}{key}.")
        elif a != b:
            diff.append(f"{prefix}{key}: {a!r} {where}, {b!r} now")
    return diff


def resume_state(path: Path, model: nn.Module, record: dict) -> dict:
    """The checkpoint at ``path`` if a run with this ``model`` and run ``record`` can resume from
    it exactly: same architecture, same settings, a full training state, finite weights."""
    state = read_checkpoint(path)
    check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    check_resumable(path, state)
    diff = recipe_differences(state.get("recipe", {}), record)
    if diff:
        raise ValueError(f"cannot resume {path} exactly with other settings ({'; '.join(diff)}); "
                         "use the same settings or another output folder")
    bad = nonfinite_tensors({"model": state.get("model"), "ema": state.get("ema")})
    if bad:
        raise ValueError(f"cannot resume {path}: {', '.join(bad[:3])} hold NaN or inf "
                         "(not a good checkpoint)")
    return state
