"""The checkpoint file: written atomically, read with ``torch.load(..., weights_only=True)``, its
contents checked (a dict in our format whose ``model`` entry is a state dict of tensors).

Nothing here imports the models, so :mod:`unifiedctx.models.pretrained` reads checkpoints through
it without an import cycle; :mod:`unifiedctx.train.checkpoint` adds the architecture checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_open
from ..validation import check_file_path, check_module, check_path
from .finite import nonfinite_tensors

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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state) -> Path:
    """Save ``model``'s weights, its config and ``state`` (optimizer, epoch, history, ...) to ``path``.

    The file is written to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace``), so a crash leaves either the old or the new checkpoint, never half.

    Raises:
        ValueError: a tensor of the payload (weights, optimizer state, EMA, ...) holds a NaN or an
            infinity: a non-finite model is never saved, and ``path`` is left as it was; or
            ``path`` is a folder.
        TypeError: ``path`` is not a path, ``model`` not a module.
    """
    path = check_path("path", path, kind="file", must_exist=False, what="checkpoint")
    check_module("model", model)
    payload = {"format": FORMAT, "model_config": model_config(model), "model": model.state_dict(), **state}
    bad = nonfinite_tensors(payload)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"refusing to write {path}: {shown} {'is' if len(bad) == 1 else 'are'} not finite "
                         "(NaN or inf); a checkpoint must hold a good model")
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def check_map_location(name: str, value):
    """``value`` if ``torch.load`` can take it as ``map_location``: a device name (``"cpu"``,
    ``"cuda:0"``), a ``torch.device``, a dict of device names or a callable; otherwise a
    ``TypeError``/``ValueError`` naming ``name`` (not an error that blames the file)."""
    if isinstance(value, torch.device) or callable(value) or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a device name such as 'cpu', a torch.device, a dict or a callable, "
                        f"got {type(value).__name__} {value!r}")
    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {value!r}") from err
    return value


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict (``weights_only=True``); clear errors for a missing or foreign file,
    and for a ``map_location`` that names no device."""
    path = check_file_path("path", path, "checkpoint")
    check_map_location("map_location", map_location)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code in it, not a torch file at all
        raise ValueError(f"{path} is not a readable unifiedctx checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a unifiedctx checkpoint (no format {FORMAT!r})")
    check_weights_entry(path, state)
    return state


def check_weights_entry(path, state: dict, key: str = "model") -> dict:
    """``state[key]`` if it is a state dict (``{name: tensor}``); otherwise a ``ValueError`` naming
    the file, what it holds and what was expected."""
    if key not in state:
        held = ", ".join(map(str, state)) or "nothing"
        raise ValueError(f"{path} holds no {key!r} entry (it has: {held}); "
                         f"a unifiedctx checkpoint stores the weights under {key!r} as a state dict")
    weights = state[key]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        held = type(weights).__name__ if not isinstance(weights, dict) else "a dict with non-tensor values"
        raise ValueError(f"{path}: the {key!r} entry holds {held}, but a state dict (names -> tensors) "
                         "was expected")
    return weights


def load_weights_into(model: nn.Module, path, state: dict, *, ema: bool = False) -> nn.Module:
    """Load ``state``'s weights (its EMA weights with ``ema``) into ``model``, strictly; a mismatch is
    a ``ValueError`` naming the file and, where the stored config differs, both architectures."""
    if ema and state.get("ema") is None:
        raise ValueError(f"{path} has no EMA weights (it was trained without ema)")
    weights = check_weights_entry(path, state, "ema" if ema else "model")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:400]
        stored, current = state.get("model_config"), model_config(model)
        if isinstance(stored, dict) and isinstance(current, dict) and stored != current:
            diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(f"checkpoint {path} was made for {describe(stored)}, "
                             f"not for {describe(current)} "
                             f"(differs in: {', '.join(diff)}): {reason}") from err
        raise ValueError(f"checkpoint {path} does not fit the model: {reason}") from err
    return model
