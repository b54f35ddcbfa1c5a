"""Checkpoints and resume: what a run saves after every epoch, and how it continues from it exactly.

The file itself (atomic writes, ``torch.load(..., weights_only=True)``, every entry checked) is
:mod:`unifiedctx.files`. Here: :func:`load_checkpoint` (into a model, refused for another
architecture), and :class:`RunState`, what the training loop carries from step to step and epoch to
epoch, with :meth:`RunState.save` and :meth:`RunState.resume`:

* ``last.pt`` (every epoch): the weights, the optimizer, the EMA, the epoch and step counts, the
  history, the task's modules and state, and the run record (:func:`~unifiedctx.train.recipe.run_record`);
* ``best.pt`` (when the task's ``best_metric`` beat every earlier epoch): the same without optimizer
  and EMA; ``history.json``/``.csv``: the rows.

Only rank 0 writes; every rank knows the last good checkpoint (:class:`LastGood`, named when a run
diverges). Resume refuses a checkpoint of another architecture, of other settings
(:func:`recipe_differences` lists them), with non-finite weights, or whose entries do not fit the run
(each named with the file).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..files import (
    check_resumable,
    describe,
    load_weights_into,
    model_config,
    nonfinite_tensors,
    read_checkpoint,
    save_checkpoint,
)
from ..validation import check_bool
from .history import History
from .optim import ModelEma, WarmupCosine
from .recipe import upgrade_record
from .tasks import Task


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


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *, ema: bool = False,
                    map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint into ``model`` (or into a model rebuilt from its stored config).

    Args:
        path: the ``.pt`` file.
        model: a model of the same architecture; ``None`` rebuilds it with
            :func:`unifiedctx.models.from_config`.
        ema: load the EMA weights instead of the raw ones (``ValueError`` if there are none).
        map_location: where tensors are loaded (default CPU).

    Returns:
        ``(model, state)`` where ``state`` is the whole checkpoint dict.

    Raises:
        ValueError: the checkpoint was made for another architecture (both are named), or one of
            its entries is not what it must hold (the file and the entry are named).
    """
    check_bool("ema", ema)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    state = read_checkpoint(path, map_location)
    if model is None:
        if state.get("model_config") is None:
            raise ValueError(f"{path} stores no model config: pass the model to load it into")
        from unifiedctx.models import from_config

        model = from_config(state["model_config"])
    else:
        check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    load_weights_into(model, path, state, ema=ema)
    return model, state


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


class LastGood:
    """The checkpoint a diverged run leaves as its last good one: ``path`` after ``epoch`` epochs."""

    def __init__(self, path: Path | None = None, epoch: int = 0, out: Path | None = None):
        self.path, self.epoch, self.out = path, epoch, out

    def describe(self) -> str:
        if self.path is not None:
            return f"the last good checkpoint {self.path} (epoch {self.epoch}) is unchanged"
        if self.out is None:
            return "no checkpoint exists (out=None writes none)"
        return f"no good checkpoint exists in {self.out} (no epoch was completed)"


@dataclass
class RunState:
    """What the training loop carries from step to step and epoch to epoch, and what ``last.pt`` keeps.

    Attributes:
        model: the network being trained; task: the run's one Task.
        net: ``task.network(model)``, the module the optimizer steps (wrapped in DDP under torchrun).
        batches: ``task.batches(...)``; steps_per_epoch: the optimizer steps of one epoch.
        optimizer, schedule, ema: AdamW, the warm-up + cosine learning rate, the EMA (or ``None``).
        history: one row per completed epoch; epoch, step: epochs and optimizer steps done;
        best: the best ``task.best_metric`` so far (``best.pt``); last_good: see :class:`LastGood`.
    """

    model: nn.Module
    task: Task
    net: nn.Module
    batches: object
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    ema: ModelEma | None
    history: History = field(default_factory=History)
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    last_good: LastGood = field(default_factory=LastGood)

    def save(self, out: Path | None, epochs: int, record: dict, is_main: bool) -> None:
        """After an epoch (its row appended to the history): ``last.pt``, ``best.pt`` when that row
        is the best so far, the history files (rank 0); the last good checkpoint (every rank)."""
        if out is None:
            return
        if is_main:
            row, metric = self.history[-1], self.task.best_metric
            common = {"epoch": self.epoch, "epochs": epochs, "recipe": record, "history": list(self.history),
                      "task_modules": self.task.modules().state_dict(), "task_state": self.task.state_dict()}
            save_checkpoint(out / "last.pt", self.model, optimizer=self.optimizer.state_dict(),
                            ema=self.ema.state_dict() if self.ema else None, step=self.step, **common)
            if row[metric] > self.best:
                self.best = row[metric]
                save_checkpoint(out / "best.pt", self.model, **common)
            self.history.to_json(out / "history.json")
            self.history.to_csv(out / "history.csv")
        self.last_good = LastGood(out / "last.pt", self.epoch, out)

    def resume(self, path: Path, record: dict, device: torch.device) -> None:
        """Load the run's state from ``path`` (its ``last.pt``): the same architecture, the same
        settings (``record``), a full training state and finite weights, or a ``ValueError`` naming
        the file and what differs; an entry that does not fit this run is named with the file."""
        state = check_resumable(path, read_checkpoint(path))
        check_config(state.get("model_config"), model_config(self.model), f"checkpoint {path}")
        diff = recipe_differences(state.get("recipe") or {}, record)
        if diff:
            raise ValueError(f"cannot resume {path} exactly with other settings ({'; '.join(diff)}); "
                             "use the same settings or another output folder")
        bad = nonfinite_tensors({"model": state.get("model"), "ema": state.get("ema")})
        if bad:
            raise ValueError(f"cannot resume {path}: {', '.join(bad[:3])} hold NaN or inf "
                             "(not a good checkpoint)")
        load_entry(path, "model", self.model.load_state_dict, state["model"])
        load_entry(path, "task_modules", self.task.modules().load_state_dict, state.get("task_modules") or {})
        load_entry(path, "task_state", self.task.load_state_dict, state.get("task_state") or {})
        load_entry(path, "optimizer", self.optimizer.load_state_dict, state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel choice follows this device, not the saved one
            group["fused"] = device.type == "cuda"
        if self.ema is not None:
            load_entry(path, "ema", self.ema.load_state_dict, state.get("ema"))
        self.history.extend(state["history"])
        self.epoch, self.step = state["epoch"], state["step"]
        metric = self.task.best_metric
        self.best = max((r[metric] for r in self.history if isinstance(r.get(metric), (int, float))),
                        default=-math.inf)
        self.last_good = LastGood(path, self.epoch, path.parent)


def load_entry(path: Path, entry: str, load: Callable, value) -> None:
    """``load(value)`` for the checkpoint entry ``entry`` of ``path``; what does not fit (a missing
    or unexpected key, a wrong shape, a wrong kind of value) is a ``ValueError`` naming both."""
    try:
        load(value)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"cannot resume from {path}: its {entry!r} entry does not fit this run "
                         f"({reason})") from err
