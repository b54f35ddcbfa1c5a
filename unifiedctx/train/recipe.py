"""The recipe: every training setting that decides the result, its default and its check, in one place.

One run of :func:`unifiedctx.train.fit` optimises, per step ``t`` of ``T = epochs * steps_per_epoch``::

    lr(t) = lr * (t + 1) / W                          for t < W      (linear warm-up)
          = lr * (1 + cos(pi (t - W) / (T - W))) / 2  afterwards     (cosine decay to 0)
    W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))

with AdamW (``weight_decay``), batches of ``batch_size`` images (augmented where the data allows
it), the task's loss, optional gradient clipping and an EMA of the weights; all randomness derives
from ``seed``.

:class:`Recipe` holds exactly what every task shares, plus the task's name and its options
(``task_options``: classification's label smoothing, mixup and cutmix live there, as options of
the ``classify`` task). A task's option may be given by its own name as a shortcut:
``Recipe(epochs=3, label_smoothing=0.1)`` is ``Recipe(epochs=3, task_options={"label_smoothing": 0.1})``,
and ``recipe.label_smoothing`` reads it back. ``fit``'s keywords, the CLI's ``train`` options
(:func:`unifiedctx.cli.add_recipe_options` reads ``RECIPE_FIELDS``: type, default, help), the stored
``config.json``/checkpoint ``recipe`` and the resume check all come from it. How a run is
executed (device, amp, compile, output folder, progress) is not part of it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import MISSING, dataclass, field

from ..validation import check_bool, check_float, check_int, check_positive_int
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
    if value not in _INSTANCE_TASKS:  # a task given as an instance need not be registered
        tasks.task_class(value)  # ValueError: unknown task 'segmnt'; available: ... Did you mean 'segment'?
    return value


#: Names of the Task instances that recipes were made for (:meth:`Recipe.for_task`): known tasks
#: too, although no registry lists them.
_INSTANCE_TASKS: set[str] = set()


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
        if self.task in tasks.available():  # a task known by name: its options checked, defaults filled
            object.__setattr__(self, "task_options", dict(self.build_task().settings()))

    def __getattr__(self, name: str):
        """A task option by its own name (``recipe.label_smoothing``), default included."""
        if name.startswith("_") or name not in _option_names(self.task):
            raise AttributeError(f"Recipe has no setting {name!r} (task {self.task!r})")
        return self.task_options.get(name, _option_default(self.task, name))

    # ------------------------------------------------------------------ derived
    def build_task(self):
        """The :class:`~unifiedctx.train.tasks.Task` this recipe names, built with its options."""
        return tasks.create(self.task, **self.task_options)

    def task_settings(self) -> dict:
        """The options the task is built with (``task_options``)."""
        return dict(self.task_options)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """``W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))``."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_epochs * steps_per_epoch), math.floor(self.warmup_cap * total))

    def for_task(self, task) -> Recipe:
        """This recipe with ``task`` (a Task instance) as the task: its name and full settings."""
        _INSTANCE_TASKS.add(task.name)
        return self.replace(task=task.name, task_options=dict(task.settings()))

    # ------------------------------------------------------------------ building and JSON
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every setting's name, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls, recipe: Recipe | None = None, **settings) -> Recipe:
        """``recipe`` with ``settings`` replaced, or a new recipe from ``settings`` alone (a task's
        option by its own name goes into ``task_options``)."""
        options = {name for t in tasks.available() for name in _option_names(t)}
        unknown = sorted(set(settings) - set(cls.keys()) - options)
        if unknown:
            raise TypeError(f"unknown training setting {unknown[0]!r}; a Recipe has: {', '.join(cls.keys())}")
        if recipe is None:
            if "epochs" not in settings:
                raise TypeError("the run needs epochs=... (or a Recipe)")
            return cls(**settings)
        if not isinstance(recipe, Recipe):
            raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
        return recipe.replace(**settings)

    def replace(self, **changes) -> Recipe:
        """A copy with some settings changed (checked again). A task's option by its own name
        goes into ``task_options``; another task (``task=...``) starts from its own defaults."""
        task = changes.get("task", self.task)
        if task != self.task and "task_options" not in changes:
            changes["task_options"] = {}
        current = {k: getattr(self, k) for k in self.keys()}
        if "task_options" not in changes:  # shortcuts replace this recipe's options of the same name
            shortcuts = {k: changes.pop(k) for k in list(changes) if k in _option_names(task)}
            changes["task_options"] = {**current["task_options"], **shortcuts}
        return type(self)(**{**current, **changes})

    def to_dict(self) -> dict:
        """Plain JSON: every setting, with the task as ``{"name", "settings"}`` (label smoothing
        inside classify's settings), as stored in ``config.json`` and checkpoints."""
        skip = ("task", "task_options")
        out = {k: getattr(self, k) for k in self.keys() if k not in skip}
        return json.loads(json.dumps({**out, "task": {"name": self.task, "settings": self.task_settings()}}))

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


def upgrade_record(stored: dict) -> dict:
    """A stored recipe record in today's shape: the task as ``{"name", "settings"}`` (a record from
    before tasks is a classify run), and label smoothing, mixup and cutmix, which older records kept
    in the shared recipe, inside classify's settings (dropped when 0 for another task)."""
    stored = dict(stored)
    task = stored.pop("task", None) or {"name": DEFAULT_TASK, "settings": {}}
    task = {"name": task.get("name", DEFAULT_TASK), "settings": dict(task.get("settings") or {})}
    for key in MOVED_TO_TASK:
        if key in stored:
            value = stored.pop(key)
            if key in _option_names(task["name"]):
                task["settings"].setdefault(key, value)
            elif value:
                raise ValueError(f"the stored recipe has {key}={value!r}, which task {task['name']!r} "
                                 "does not take")
    if task["name"] in tasks.available():
        task["settings"] = dict(tasks.create(task["name"], **task["settings"]).settings())
    return {**stored, "task": task}


def _option_names(task: str) -> tuple[str, ...]:
    return tasks.option_names(tasks.task_class(task)) if task in tasks.available() else ()


def _option_default(task: str, name: str):
    import inspect

    return inspect.signature(tasks.task_class(task).__init__).parameters[name].default


_dataclass_init = Recipe.__init__


def _recipe_init(self, *args, **settings) -> None:
    """The dataclass's ``__init__``, with a task's options accepted by their own names."""
    names = Recipe.keys()
    extra = {k: settings.pop(k) for k in list(settings) if k not in names}
    if extra:
        task = settings.get("task", DEFAULT_TASK)
        options = dict(settings.get("task_options") or {})
        for key, value in extra.items():
            if key not in _option_names(task):
                owners = [t for t in tasks.available() if key in _option_names(t)]
                if owners:
                    raise ValueError(f"{key} is a setting of the {owners[0]} task, not of {task!r}; give "
                                     "that task's own options in task_options")
                raise TypeError(f"Recipe has no setting {key!r}; a Recipe has: {', '.join(names)} "
                                f"(and the options of task {task!r}: "
                                f"{', '.join(_option_names(task)) or 'none'})")
            if key in options and options[key] != value:
                raise ValueError(f"give {key} once: as {key}={value!r} or in task_options, not both")
            options[key] = value
        settings["task_options"] = options
    _dataclass_init(self, *args, **settings)


Recipe.__init__ = _recipe_init


#: The fields of :class:`Recipe` (what the CLI generates its train options from).
RECIPE_FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Recipe)
