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

import torch
from torch import nn

from .finite import nonfinite_tensors
from .history import atomic_open

FORMAT = "unifiedctx-checkpoint/1"


def model_config(model: nn.Module):
    """The model's ``config`` (a JSON-serialisable dict naming its architecture), or ``None``."""
    config = getattr(model, "config", None)
    return dict(config) if isinstance(config, dict) else None


def describe(config) -> str:
    """A short name for an architecture config: its preset name plus its build args."""
    if not isinstance(config, dict):
        return "an unnamed model"
    name = config.get("name") or config.get("preset") or config.get("model") or "model"
    rest = ", ".join(f"{k}={v!r}" for k, v in config.items() if k not in ("name", "preset", "model"))
    return f"{name}({rest})"


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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state) -> Path:
    """Save ``model``'s weights, its config and ``state`` (optimizer, epoch, history, ...) to ``path``.

    The file is written to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace``), so a crash leaves either the old or the new checkpoint, never half.

    Raises:
        ValueError: a tensor of the payload (weights, optimizer state, EMA, ...) holds a NaN or an
            infinity: a non-finite model is never saved, and ``path`` is left as it was.
    """
    path = Path(path)
    payload = {"format": FORMAT, "model_config": model_config(model), "model": model.state_dict(), **state}
    bad = nonfinite_tensors(payload)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"refusing to write {path}: {shown} {'is' if len(bad) == 1 else 'are'} not finite "
                         "(NaN or inf); a checkpoint must hold a good model")
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict (``weights_only=True``); clear errors for a missing or foreign file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code in it, not a torch file at all
        raise ValueError(f"{path} is not a readable unifiedctx checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a unifiedctx checkpoint (no format {FORMAT!r})")
    return state


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
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be True or False, got {type(ema).__name__} {ema!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    state = read_checkpoint(path, map_location)
    if model is None:
        if state.get("model_config") is None:
            raise ValueError(f"{path} stores no model config: pass the model to load it into")
        model = build_from_config(state["model_config"])
    else:
        check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    weights = state["model"]
    if ema:
        if state.get("ema") is None:
            raise ValueError(f"{path} has no EMA weights (it was trained without ema)")
        weights = state["ema"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:400]
        raise ValueError(f"checkpoint {path} does not fit the model: {reason}") from err
    return model, state
