"""What the training loop carries from step to step and epoch to epoch (:class:`RunState`), and how
it is written to the run folder after an epoch (:meth:`RunState.save`) and read back on resume
(:meth:`RunState.resume`).

``last.pt`` (every epoch) holds the weights, the optimizer, the EMA, the step, the history, the
task's modules and state and the run record; ``best.pt`` (when the task's ``best_metric`` beat
every earlier epoch) the same without optimizer and EMA; ``history.json``/``.csv`` the rows. Only
rank 0 writes; every rank knows the last good checkpoint (for the non-finite stops).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import distributed as D
from .checkpoint import resume_state, save_checkpoint
from .finite import LastGood
from .history import History
from .optim import ModelEma, WarmupCosine
from .run import Plan
from .tasks import Task


@dataclass
class RunState:
    """What the loop carries from step to step and epoch to epoch."""

    plan: Plan
    ctx: D.DistContext
    device: torch.device
    model: nn.Module
    net: nn.Module
    batches: object
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    ema: ModelEma | None
    record: dict
    info: dict
    callback: Callable | None
    history: History = field(default_factory=History)
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    last_good: LastGood = field(default_factory=LastGood)

    @property
    def task(self) -> Task:
        return self.plan.task

    def resume(self, last: Path) -> None:
        """Load the run's state from ``last`` (same model and settings, refused otherwise); an entry
        that does not fit this run is a ``ValueError`` naming the file and the entry."""
        state = resume_state(last, self.model, self.record)
        load_entry(last, "model", self.model.load_state_dict, state["model"])
        load_entry(last, "task_modules", self.task.modules().load_state_dict, state.get("task_modules") or {})
        load_entry(last, "task_state", self.task.load_state_dict, state.get("task_state") or {})
        load_entry(last, "optimizer", self.optimizer.load_state_dict, state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel choice follows this device, not the saved one
            group["fused"] = self.device.type == "cuda"
        if self.ema is not None:
            load_entry(last, "ema", self.ema.load_state_dict, state.get("ema"))
        self.history.extend(state["history"])
        self.epoch, self.step = state["epoch"], state["step"]
        metric = self.task.best_metric
        self.best = max((r[metric] for r in self.history if isinstance(r.get(metric), (int, float))),
                        default=-math.inf)
        self.last_good = LastGood(last, self.epoch, self.plan.out)

    def save(self, row: dict) -> None:
        """After epoch ``self.epoch`` (its ``row`` appended): ``last.pt``, ``best.pt`` when
        ``row`` is the best so far, the history files (rank 0); the last good checkpoint (all)."""
        out, task = self.plan.out, self.task
        if out is None:
            return
        if self.ctx.is_main:
            common = {"epoch": self.epoch, "epochs": self.plan.recipe.epochs, "recipe": self.record,
                      "history": list(self.history), "task_modules": task.modules().state_dict(),
                      "task_state": task.state_dict()}
            save_checkpoint(out / "last.pt", self.model, optimizer=self.optimizer.state_dict(),
                            ema=self.ema.state_dict() if self.ema else None, step=self.step, **common)
            if row[task.best_metric] > self.best:
                self.best = row[task.best_metric]
                save_checkpoint(out / "best.pt", self.model, **common)
            self.history.to_json(out / "history.json")
            self.history.to_csv(out / "history.csv")
        self.last_good = LastGood(out / "last.pt", self.epoch, out)


def load_entry(path: Path, entry: str, load: Callable, value) -> None:
    """``load(value)`` for the checkpoint entry ``entry`` of ``path``; what does not fit (a missing
    or unexpected key, a wrong shape, a wrong kind of value) is a ``ValueError`` naming both."""
    try:
        load(value)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"cannot resume from {path}: its {entry!r} entry does not fit this run "
                         f"({reason})") from err
