"""The contract between a task and the engine: :class:`Task`.

A task is the unit that owns its training. :func:`unifiedctx.train.build_model` asks it what model to
build for a data set, and the engine (:func:`unifiedctx.train.fit`) calls, per run::

    task.check_data(data)                      before anything is written (ValueError/TypeError)
    task.setup(model, data, device)            check the model against the data, build extra modules
    net = task.network(model)                  what is optimised and wrapped in DDP (model + modules())
    batches = task.batches(data, b, device, seed=, augment=, rank=, world_size=, channels_last=)
    for every step:  loss, sums = task.loss(net_or_ddp(net), batch);  backward;  AdamW step
                     task.after_step(model, global_step, total_steps)
    every epoch:     task.train_metrics(all-reduced sums) | task.evaluate(model, batches, ...)

and checkpoints ``model``, ``task.modules()`` and ``task.state_dict()``. ``best.pt`` is picked by
``task.best_metric`` (larger is better). Nothing in the engine names a task.

A task's options are one frozen dataclass, ``Options``, whose fields check themselves when it is
made: ``Task(**options)`` holds ``task.options``, ``settings()`` is its JSON (stored with the run,
compared on resume), and a :class:`~unifiedctx.train.Recipe` checks ``task_options`` against it
without building a task (:func:`checked_options`).

Required: ``name``, ``best_metric``, :meth:`Task.loss`, :meth:`Task.evaluate`. Optional (each has a
default): ``Options``, ``check_data``, ``setup``, ``modules``, ``network``, ``batches``, the model
(``presets``, ``model_options``, ``build``), ``after_step``, ``train_metrics``,
``state_dict``/``load_state_dict`` and :meth:`Task.example`, the tiny run (a :class:`TaskExample`)
that ``tests/test_task_contract.py`` puts every registered task through: fit, kill and resume,
evaluate, two gloo ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from .. import distributed as D
from ..batches import make_batches


def autocast_context(device: torch.device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype`` on ``device``'s type, or a no-op context."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()


def _split_sizes(data) -> tuple[int | None, int | None]:
    """``(train, test)`` sizes of a tensor data set (``None`` for a split the data does not hold)."""
    sizes = []
    for split in ("train", "test"):
        x = getattr(data, f"{split}_x", None)
        sizes.append(int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else None)
    return sizes[0], sizes[1]


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none."""


@dataclass(frozen=True)
class TaskExample:
    """A tiny run of a task, for tests: ``fit(build_model(preset, data, seed, task=task, **model_options),
    data, task=create(name, **options), epochs=2, device="cpu", **recipe)``.

    Attributes:
        preset: a :func:`unifiedctx.models.create_model` preset.
        data: the data set (tiny: a few dozen images of 16 px, one or two steps per epoch).
        options: the task's options.
        model_options: extra arguments of the model's builder (``drop_path=0.0``, ...).
        recipe: recipe settings besides ``epochs`` (``batch_size`` is per rank).
        ddp_matches_single: two ranks of ``batch_size`` take the very steps of one process with
            ``2 * batch_size`` (up to float rounding). False where a rank draws randomness or
            statistics of its own shard (DINO's multi-crops, a BatchNorm in the head).
        state_metrics: history columns measured on the task's training state rather than the
            model (DINO's teacher), which ``evaluate`` on a loaded checkpoint cannot reproduce.
    """

    preset: str
    data: object
    options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    ddp_matches_single: bool = True
    state_metrics: tuple[str, ...] = ()


def as_json(options) -> dict:
    """An options dataclass as plain JSON (tuples become lists): what a run records."""
    return json.loads(json.dumps(dataclasses.asdict(options)))


class Task(ABC):
    """Base class of a training task (see the module docstring for the order of the calls).

    Subclasses set ``name`` and ``best_metric``, implement :meth:`loss` and :meth:`evaluate`, declare
    their options as ``Options`` (a frozen dataclass that checks its fields) and override what
    differs. A subclass with state of its own calls ``super().__init__(**options)`` first.
    """

    name: ClassVar[str] = "task"
    best_metric: ClassVar[str] = "test_acc"
    #: The task's options (a frozen dataclass; its fields are the keyword arguments of the task).
    Options: ClassVar[type] = NoOptions
    #: Options that the command line offers as flags of their own: ``{option: help}`` (float values).
    flags: ClassVar[dict[str, str]] = {}

    def __init__(self, **options):
        self.options = self.Options(**options)

    def settings(self) -> dict:
        """The options as plain JSON, stored with the run and compared on resume:
        ``type(task)(**task.settings())`` is the same task."""
        options = getattr(self, "options", None)
        return as_json(options) if dataclasses.is_dataclass(options) else {}

    @classmethod
    def example(cls) -> TaskExample | None:
        """A tiny run of this task for the contract test (:class:`TaskExample`); ``None`` by
        default, and then the contract test fails for this task until it declares one."""
        return None

    # ------------------------------------------------------------------ the model it trains
    def presets(self) -> list[str]:
        """The model names :meth:`build` takes (the presets of :func:`unifiedctx.models.list_models`)."""
        from unifiedctx.models import list_models

        return list_models()

    def model_options(self, data) -> dict:
        """What sizes a model for ``data``: its classes, image size (an int when square) and channels."""
        size = tuple(data.image_size)
        return {"num_classes": data.num_classes, "img_size": size[0] if size[0] == size[1] else size,
                "in_chans": data.channels}

    def build(self, preset: str, **options) -> nn.Module:
        """The model this task trains: :func:`unifiedctx.models.create_model` (segment: a Segmenter).
        Called by :func:`unifiedctx.train.build_model`, which sizes it for the data and seeds it."""
        from unifiedctx.models import create_model

        return create_model(preset, **options)

    # ------------------------------------------------------------------ the run
    def check_data(self, data) -> None:
        """Refuse data this task cannot train on, before any run folder is made: by default, a
        tensor data set with an empty training or test split."""
        n_train, n_test = _split_sizes(data)
        if n_train == 0 or n_test == 0:
            raise ValueError(f"data must have training and test images, got {n_train} and {n_test} "
                             f"(task {self.name!r} trains on one split and measures on the other)")

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Check ``model`` against ``data`` and build model-dependent state (nothing by default)."""
        return None  # optional hook: nothing by default

    def modules(self) -> nn.ModuleDict:
        """Trainable modules besides the model (none by default), checkpointed as ``task_modules``."""
        return nn.ModuleDict()

    def network(self, model: nn.Module) -> nn.Module:
        """The module the engine optimises and wraps in DDP: ``model`` and every module of
        :meth:`modules` (by default the model itself). :meth:`loss` gets it (or its DDP wrapper)."""
        return model

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


def option_names(cls: type[Task]) -> tuple[str, ...]:
    """The options of a task class: the fields of its ``Options``."""
    return tuple(f.name for f in dataclasses.fields(cls.Options))


def checked_options(cls: type[Task], options: dict) -> dict:
    """``options`` of the task class ``cls`` checked by its ``Options`` (each field's own check, a
    ``TypeError``/``ValueError`` naming it; an unknown name is a ``TypeError`` listing the options)
    and returned in full, defaults filled in, as plain JSON. No task is built."""
    unknown = sorted(set(options) - set(option_names(cls)))
    if unknown:
        raise TypeError(f"task {cls.name!r} has no option {unknown[0]!r}; its options are: "
                        f"{', '.join(option_names(cls)) or 'none'}")
    return as_json(cls.Options(**options))
