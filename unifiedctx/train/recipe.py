"""What a run is decided by, resolved once: the :class:`Recipe`, the :class:`RunOptions` and the task.

One run of :func:`unifiedctx.train.fit` optimises, per step ``t`` of ``T = epochs * steps_per_epoch``::

    lr(t) = lr * (t + 1) / W                          for t < W      (linear warm-up)
          = lr * (1 + cos(pi (t - W) / (T - W))) / 2  afterwards     (cosine decay to 0)
    W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))

with AdamW (``weight_decay``), batches of ``batch_size`` images (augmented where the data allows
it), the task's loss, optional gradient clipping and an EMA of the weights; all randomness derives
from ``seed``.

* :class:`Recipe`: every setting that decides the result, each a typed field with its default, its
  help and its check: what every task shares, plus the task's name and options (``task_options``,
  checked by the task's own ``Options`` without building a task). ``fit``'s keywords, the CLI's
  ``train`` options (:func:`unifiedctx.cli.add_recipe_options` reads :data:`RECIPE_FIELDS`), the
  stored ``config.json``/checkpoint record and the resume check all come from it.
* :class:`RunOptions`: how a run is executed (device, amp, compile, output folder, progress, ...),
  each a typed field checked when it is made, resolved once (the device, the autocast dtype).
* :func:`resolve`: ``fit``'s recipe, keywords and ``task=`` into one Recipe and **one** Task.
* :func:`run_record`: what a run stores as its ``recipe`` and what resume compares.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path

import torch

from ..inspection.snapshots import DEFAULT_BUDGET_MB
from ..validation import (
    check_bool,
    check_choice,
    check_finite,
    check_float,
    check_float_image,
    check_int,
    check_positive_int,
)
from . import tasks

#: The task of a recipe that names none (and of every run stored before tasks existed).
DEFAULT_TASK = "classify"
#: The largest peak learning rate a recipe accepts: above it AdamW's steps are meaningless.
MAX_LR = 10.0
#: Settings that older runs stored in the shared recipe; they are options of the classify task now.
MOVED_TO_TASK = ("label_smoothing", "mixup", "cutmix")


def _setting(default=MISSING, *, help: str, check, flag: str | None = None):
    """A recipe field: default, one-line help, ``check(name, value) -> value``, and optionally the
    CLI flag (default ``--name-with-dashes``)."""
    meta = {"help": help, "check": check, "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def _float(low=None, high=None, low_open=False, high_open=False, none_ok=False):
    return lambda name, value: check_float(name, value, low=low, high=high, low_open=low_open,
                                           high_open=high_open, none_ok=none_ok)


def _learning_rate(name, value) -> float:
    """A positive, finite float of at most :data:`MAX_LR`."""
    value = check_float(name, value, low=0, low_open=True)
    if value > MAX_LR:
        raise ValueError(f"{name} must be <= {MAX_LR:g}, got {value:g}: an AdamW step moves each weight by "
                         "about lr, so a larger one cannot train (typical values are 1e-4 to 1e-2)")
    return value


def _optional_positive_int(name, value):
    return None if value is None else check_positive_int(name, value)


def _task_name(name, value) -> str:
    """A registered task's name (``tasks.available()``); an unknown one is refused with close names."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a task name ({', '.join(tasks.available())}), got {value!r}")
    tasks.task_class(value)  # ValueError: unknown task 'segmnt'; available: ... Did you mean 'segment'?
    return value


def _json_dict(name, value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of option name -> value, "
                        f"got {type(value).__name__} {value!r}")
    try:
        return json.loads(json.dumps(value))
    except TypeError as err:
        raise TypeError(f"{name} must be JSON-serialisable (it is stored with the run): {err}") from None


@dataclass(frozen=True)
class Recipe:
    """The settings of one training run that decide its result (see the module docstring).

    Every field is checked when the recipe is made (``TypeError``/``ValueError`` naming it).
    ``Recipe(epochs=4, lr=5e-3)``; ``recipe.replace(lr=1e-3)``; ``Recipe.from_dict(recipe.to_dict())``.
    """

    epochs: int = _setting(help="passes over the training split", check=check_positive_int)
    batch_size: int = _setting(128, help="images per step per process (under DDP the global batch is "
                               "batch_size x world_size)", check=check_positive_int)
    lr: float = _setting(5e-3, help="AdamW peak learning rate, in (0, 10] (5e-3 suits the _nano presets; "
                         "notebook 04 trains the _cifar ones with 2e-3 at batch 256)",
                         check=_learning_rate)
    weight_decay: float = _setting(0.05, help="AdamW decoupled weight decay (not on norms and biases)",
                                   check=_float(low=0))
    warmup_epochs: float = _setting(1.0, help="linear warm-up length in epochs (fractional too; at most "
                                    "warmup_cap of the run), then cosine decay to 0", check=_float(low=0))
    warmup_cap: float = _setting(0.2, help="the warm-up is at most this fraction of all the run's steps",
                                 check=_float(low=0, high=1))
    clip_grad: float | None = _setting(None, help="clip the global gradient norm to this value",
                                       check=_float(low=0, low_open=True, none_ok=True))
    ema: float | None = _setting(None, help="decay of an EMA of the weights, e.g. 0.999",
                                 check=_float(low=0, high=1, low_open=True, high_open=True, none_ok=True))
    augment: bool = _setting(True, help="random crop and horizontal flip, each only where the dataset "
                             "allows it (data.crop_ok, data.flip_ok: CIFAR both; mnist5k and the "
                             "synthetic tasks none)", check=check_bool)
    seed: int = _setting(0, help="seed of the data order, augmentation and dropout (and of the weights "
                         "in the CLI)", check=lambda n, v: check_int(n, v, low=0))
    max_steps_per_epoch: int | None = _setting(None, help="cut every epoch short (smoke runs, benchmarks)",
                                               check=_optional_positive_int)
    task: str = _setting(DEFAULT_TASK, help="what to train for: classify, segment, dino (unifiedctx.train."
                         "tasks)", check=_task_name)
    task_options: dict = _setting({}, help="options of the task, e.g. label_smoothing=0.1 or mixup=0.2 for "
                                  "classify, out_dim=1024 for dino", check=_json_dict, flag="--task-option")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        # the task's options, checked by its Options (no task is built), defaults filled in
        object.__setattr__(self, "task_options", tasks.checked_options(tasks.task_class(self.task),
                                                                       self.task_options))

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """``W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))``."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_epochs * steps_per_epoch), math.floor(self.warmup_cap * total))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every setting's name, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> Recipe:
        """A copy with some settings changed (checked again); another ``task`` starts from its own
        default options unless ``task_options`` are given too."""
        unknown = sorted(set(changes) - set(self.keys()))
        if unknown:
            raise TypeError(f"Recipe has no setting {unknown[0]!r}; a Recipe has: {', '.join(self.keys())}"
                            f"{_as_task_option(unknown[0], changes.get('task', self.task))}")
        if changes.get("task", self.task) != self.task and "task_options" not in changes:
            changes["task_options"] = {}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_settings(cls, recipe: Recipe | None = None, **settings) -> Recipe:
        """``recipe`` with ``settings`` replaced, or a new recipe from ``settings`` alone: what
        ``fit(model, data, recipe, **settings)`` trains with. A task's option given by its own name
        (``label_smoothing=0.1``) goes into ``task_options``."""
        if recipe is not None and not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__} {recipe!r}"[:200])
        task = settings.get("task", recipe.task if recipe is not None else DEFAULT_TASK)
        options = {k: settings.pop(k) for k in list(settings) if k not in cls.keys()}
        for key in options:
            owners = [t for t in tasks.available() if key in tasks.option_names(tasks.task_class(t))]
            if not isinstance(task, str) or key not in tasks.option_names(tasks.task_class(task)):
                if owners:
                    raise ValueError(f"{key} is a setting of the {owners[0]} task, not of {task!r}; give "
                                     "that task's own options in task_options")
                raise TypeError(f"unknown training setting {key!r}; a Recipe has: {', '.join(cls.keys())}")
            if key in settings.get("task_options", {}) and settings["task_options"][key] != options[key]:
                raise ValueError(f"give {key} once: as {key}={options[key]!r} or in task_options, not both")
        if options:
            base = settings.get("task_options")
            if base is None:
                base = recipe.task_options if recipe is not None and task == recipe.task else {}
            settings["task_options"] = {**(base if isinstance(base, dict) else {}), **options}
        if recipe is None:
            if "epochs" not in settings:
                raise TypeError("the run needs epochs=... (or a Recipe)")
            return cls(**settings)
        return recipe.replace(**settings)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """Plain JSON: every setting, with the task as ``{"name", "settings"}`` (label smoothing
        inside classify's settings), as stored in ``config.json`` and checkpoints."""
        shared = {k: getattr(self, k) for k in self.keys() if k not in ("task", "task_options")}
        return json.loads(json.dumps({**shared, "task": {"name": self.task, "settings": self.task_options}}))

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """The recipe that :meth:`to_dict` wrote, also from older files (:func:`upgrade_record`):
        settings missing there take their defaults. What the engine records beside the recipe
        (``world_size``, ``amp``, ``data``, ...) is left out."""
        if not isinstance(data, dict):
            raise TypeError(f"a stored recipe must be a dict, got {type(data).__name__}")
        data = upgrade_record(data)
        task = data["task"]
        shared = {k: v for k, v in data.items() if k in cls.keys() and k != "task"}
        return cls.from_settings(**shared, task=task["name"], task_options=dict(task.get("settings") or {}))


def _as_task_option(key: str, task) -> str:
    """A hint for a Recipe keyword that is a task's option: where it goes instead."""
    owners = [t for t in tasks.available() if key in tasks.option_names(tasks.task_class(t))]
    if not owners:
        return ""
    return f" ({key} is an option of the {owners[0]} task: task_options={{{key!r}: ...}})"


def upgrade_record(stored: dict) -> dict:
    """A stored recipe record in today's shape: the task as ``{"name", "settings"}`` (a record from
    before tasks is a classify run), and label smoothing, mixup and cutmix, which older records kept
    in the shared recipe, inside classify's settings (dropped when 0 for another task); a
    registered task's settings with its defaults filled in (:func:`tasks.checked_options`)."""
    stored = dict(stored)
    task = stored.pop("task", None) or {"name": DEFAULT_TASK, "settings": {}}
    task = {"name": task.get("name", DEFAULT_TASK), "settings": dict(task.get("settings") or {})}
    options = _option_names(task["name"])
    for key in MOVED_TO_TASK:
        if key in stored:
            value = stored.pop(key)
            if key in options:
                task["settings"].setdefault(key, value)
            elif value:
                raise ValueError(f"the stored recipe has {key}={value!r}, which task {task['name']!r} "
                                 "does not take")
    if task["name"] in tasks.available():
        task["settings"] = tasks.checked_options(tasks.task_class(task["name"]), task["settings"])
    return {**stored, "task": task}


def _option_names(task: str) -> tuple[str, ...]:
    return tasks.option_names(tasks.task_class(task)) if task in tasks.available() else ()


#: The fields of :class:`Recipe` (what the CLI generates its train options from).
RECIPE_FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Recipe)


# ---------------------------------------------------------------------------------- the task, once
def resolve(recipe: Recipe | None, task, settings: dict) -> tuple[Recipe, tasks.Task]:
    """The run's :class:`Recipe` (``recipe`` with the keyword ``settings``) and its one Task.

    ``task`` is ``None`` (the recipe's ``task`` and ``task_options``), a task name (it replaces the
    recipe's), or a Task instance, used as it is: its name and ``settings()`` are what the run
    records, and task options given beside it are refused (set them on the instance).
    """
    if task is not None and not isinstance(task, (str, tasks.Task)):
        raise TypeError(f"task must be a task name or a Task instance, got {type(task).__name__} {task!r}")
    if isinstance(task, str):
        settings = {**settings, "task": task}
    if isinstance(task, tasks.Task):
        given = {k for k in settings if k not in Recipe.keys()} | ({"task", "task_options"} & set(settings))
        if given:
            raise ValueError(f"{', '.join(sorted(given))}: settings of a task built by name; set them on "
                             f"the {type(task).__name__} instance instead")
        return Recipe.from_settings(recipe, **settings), task
    recipe = Recipe.from_settings(recipe, **settings)
    return recipe, tasks.create(recipe.task, **recipe.task_options)


# ---------------------------------------------------------------------------------- how a run runs
#: ``fit(progress=...)``: bars, nothing, or one compact line per epoch.
PROGRESS = (True, False, "epoch")


def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, "
                        f"got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no GPU (use 'cpu' or 'auto')")
    return dev


def resolve_amp(amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``"auto"`` -> bfloat16 on CUDA, none on CPU; ``"bf16"``; ``"off"``."""
    if not isinstance(amp, (str, bool, type(None))):
        raise TypeError(f"amp must be 'auto', 'bf16' or 'off', got {type(amp).__name__} {amp!r}")
    if amp in ("auto", None) and device.type == "cuda":
        return torch.bfloat16
    if amp in ("auto", None, "off", False, "fp32"):
        return None
    if amp in ("bf16", "bfloat16", True):
        return torch.bfloat16
    raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")


def _out(name, value) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a folder path (str or os.PathLike) or None, "
                        f"got {type(value).__name__}")
    if not str(value).strip():
        raise ValueError(f"{name} must name a folder, got an empty path")
    folder = Path(value).expanduser()
    if folder.is_file():
        raise NotADirectoryError(f"{name} must be a folder, but {value} is a file")
    return folder


def _progress(name, value):
    if value not in PROGRESS or not isinstance(value, (bool, str)):  # 1 == True: refused
        kind = TypeError if not isinstance(value, str) else ValueError
        raise kind(f"{name} must be True, False or 'epoch', got {type(value).__name__} {value!r}")
    return value


def _compile(name, value):
    return value if isinstance(value, bool) else check_choice(name, value, ("auto",))


def _callback(name, value):
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    return value


def _run_info(name, value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable (it goes into config.json): {err}") from None
    return value


def _watch(name, value):
    """``None`` or the probe images: a float tensor ``(B, C, H, W)``, B >= 1, every value finite."""
    if value is None:
        return None
    check_float_image(name, value)
    if len(value) == 0:
        raise ValueError(f"{name} holds no image: give a few probe images (B, C, H, W), B >= 1")
    check_finite(name, value)
    return value


def _watch_layers(name, value):
    """``None`` (every layer with an affinity), a module name or ``fnmatch`` pattern, or a list of them."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n.strip()
                                                                   for n in names):
        raise TypeError(f"{name} must be None, a layer name (or fnmatch pattern) or a non-empty list of "
                        f"them, got {type(value).__name__} {str(value)[:60]}")
    return tuple(names)


def _live(name, value):
    """``True``/``False``, or a :class:`~unifiedctx.widgets.LiveView` of the caller's."""
    if isinstance(value, bool):
        return value
    from ..widgets.live import LiveView  # anywidget only when a view of one's own is given

    if not isinstance(value, LiveView):
        raise TypeError(f"{name} must be True, False or a unifiedctx.widgets.LiveView, got "
                        f"{type(value).__name__} {str(value)[:60]}")
    return value


def _option(default, check):
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed: every argument of :func:`~unifiedctx.train.fit` beside the recipe and
    the task, each checked when the options are made (``TypeError``/``ValueError`` naming it), then
    resolved once: :attr:`torch_device`, :attr:`amp_dtype`, :attr:`compiled`, :attr:`folder`.
    ``amp``, ``channels_last`` and ``compile`` change the trained weights, so the run records them;
    watching (``watch``, ``watch_layers``, ``watch_budget_mb``, ``live``: see
    :mod:`unifiedctx.train.watching`) changes nothing of them, so it is not recorded."""

    device: str | torch.device = _option("auto", lambda n, v: v)
    amp: str | bool | None = _option("auto", lambda n, v: v)
    compile: bool | str = _option(False, _compile)
    channels_last: bool = _option(False, check_bool)
    out: str | os.PathLike | None = _option(None, lambda n, v: v)
    resume: bool = _option(False, check_bool)
    progress: bool | str = _option(True, _progress)
    eval_batch_size: int | None = _option(None, lambda n, v: None if v is None else check_positive_int(n, v))
    callback: Callable | None = _option(None, _callback)
    run_info: dict | None = _option(None, _run_info)
    save_rank_weights: bool = _option(False, check_bool)
    allow_foreign: bool = _option(False, check_bool)
    watch: torch.Tensor | None = _option(None, _watch)
    watch_layers: tuple[str, ...] | None = _option(None, _watch_layers)
    watch_budget_mb: float = _option(DEFAULT_BUDGET_MB, lambda n, v: check_float(n, v, low=0, low_open=True))
    live: bool | object = _option(False, _live)
    # resolved once, from the fields above
    torch_device: torch.device = field(init=False, repr=False)
    amp_dtype: torch.dtype | None = field(init=False, repr=False)
    compiled: bool = field(init=False, repr=False)
    folder: Path | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.init:
                object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        device = resolve_device(self.device)
        object.__setattr__(self, "torch_device", device)
        object.__setattr__(self, "amp_dtype", resolve_amp(self.amp, device))
        object.__setattr__(self, "compiled", self.compile is True or (self.compile == "auto"
                                                                       and device.type == "cuda"))
        object.__setattr__(self, "folder", _out("out", self.out))
        if self.watch is None and (self.live is not False or self.watch_layers is not None):
            given = "live" if self.live is not False else "watch_layers"
            raise ValueError(f"{given} needs watch=images: the probe images (B, C, H, W) whose affinities "
                             "are recorded and shown")
        if self.watch is not None and self.folder is None and self.live is False:
            raise ValueError("watch stores its snapshots in the run folder: pass out=folder (or live=True to "
                             "only see them while the run trains)")
        if not isinstance(self.live, bool) and len(self.live.images) != len(self.watch):
            raise ValueError(f"live is a LiveView of {len(self.live.images)} images, but watch has "
                             f"{len(self.watch)}: make the view with the watched images")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keyword arguments of ``fit`` that these options hold."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


# ---------------------------------------------------------------------------------- the run's record
def data_identity(data) -> dict:
    """What the data is, for the record: ``{"name", "options", "fingerprint"}`` (the fingerprint
    hashes the sizes and a strided sample of the contents; see ``ImageData.fingerprint``)."""
    fingerprint = getattr(data, "fingerprint", None)
    return {"name": getattr(data, "name", None), "options": getattr(data, "options", None),
            "fingerprint": fingerprint() if callable(fingerprint) else None}


def run_record(recipe: Recipe, task: tasks.Task, run: RunOptions, data, world_size: int) -> dict:
    """What checkpoints and ``config.json`` store as the run's ``recipe`` and resume compares: the
    recipe's shared settings, the task (``{"name", "settings"}`` of the Task itself), then the world
    size, amp, channels_last, compile and the data's identity."""
    amp = "bf16" if run.amp_dtype == torch.bfloat16 else "off"
    return {**recipe.to_dict(), "task": {"name": task.name, "settings": task.settings()},
            "world_size": world_size, "amp": amp, "channels_last": run.channels_last,
            "compile": run.compiled, "data": data_identity(data)}


def run_recipe(data, recipe: Recipe | None = None, **fit_kwargs) -> dict:
    """The record that ``fit(model, data, recipe, **fit_kwargs)`` would store (and compare on resume)."""
    run = RunOptions(**{k: v for k, v in fit_kwargs.items() if k in RunOptions.keys()})
    settings = {k: v for k, v in fit_kwargs.items() if k not in RunOptions.keys() and k != "task"}
    recipe, task = resolve(recipe, fit_kwargs.get("task"), settings)
    return run_record(recipe, task, run, data, int(os.environ.get("WORLD_SIZE", "1")))
