"""The recipe: every training setting that decides the result, its default and its check, in one place.

One run of :func:`unifiedctx.train.fit` optimises, per step ``t`` of ``T = epochs * steps_per_epoch``::

    lr(t) = lr * (t + 1) / W                          for t < W      (linear warm-up)
          = lr * (1 + cos(pi (t - W) / (T - W))) / 2  afterwards     (cosine decay to 0)
    W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))

with AdamW (``weight_decay``), batches of ``batch_size`` images (augmented where the data allows
it), the task's loss (classification: cross-entropy with ``label_smoothing``), optional mixup,
cutmix, gradient clipping and an EMA of the weights; all randomness derives from ``seed``.

:class:`Recipe` holds exactly these settings. ``fit``'s keywords, the CLI's ``train`` options
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

#: The task whose settings include ``label_smoothing`` (the Recipe field is its shortcut).
CLASSIFY = "classify"


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


def _optional_positive_int(name, value):
    return None if value is None else check_positive_int(name, value)


def _task_name(name, value) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a task name such as 'classify', 'segment' or 'dino', got {value!r}")
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
    lr: float = _setting(5e-3, help="AdamW peak learning rate (suits the _nano presets; notebook 04 trains "
                         "the _cifar ones with 2e-3 at batch 256)", check=_float(low=0, low_open=True))
    weight_decay: float = _setting(0.05, help="AdamW decoupled weight decay (not on norms and biases)",
                                   check=_float(low=0))
    warmup_epochs: float = _setting(1.0, help="linear warm-up length in epochs (fractional too; at most "
                                    "warmup_cap of the run), then cosine decay to 0", check=_float(low=0))
    warmup_cap: float = _setting(0.2, help="the warm-up is at most this fraction of all the run's steps",
                                 check=_float(low=0, high=1))
    label_smoothing: float = _setting(0.0, help="label smoothing eps of the classify task: q = (1 - eps) t "
                                      "+ eps / K", check=_float(low=0, high=1, high_open=True))
    clip_grad: float | None = _setting(None, help="clip the global gradient norm to this value",
                                       check=_float(low=0, low_open=True, none_ok=True))
    ema: float | None = _setting(None, help="decay of an EMA of the weights, e.g. 0.999",
                                 check=_float(low=0, high=1, low_open=True, high_open=True, none_ok=True))
    mixup: float = _setting(0.0, help="mixup Beta(a, a) parameter (0: off)", check=_float(low=0))
    cutmix: float = _setting(0.0, help="cutmix Beta(a, a) parameter (0: off)", check=_float(low=0))
    augment: bool = _setting(True, help="random crop and horizontal flip, each only where the dataset "
                             "allows it (data.crop_ok, data.flip_ok: CIFAR both; mnist5k and the "
                             "synthetic tasks none)", check=check_bool)
    seed: int = _setting(0, help="seed of the data order, augmentation and dropout (and of the weights "
                         "in the CLI)", check=lambda n, v: check_int(n, v, low=0))
    max_steps_per_epoch: int | None = _setting(None, help="cut every epoch short (smoke runs, benchmarks)",
                                               check=_optional_positive_int)
    task: str = _setting(CLASSIFY, help="what to train for: classify, segment, dino (unifiedctx.train."
                         "tasks)", check=_task_name)
    task_options: dict = _setting({}, help="options of the task, e.g. out_dim=1024 for dino",
                                  check=_json_dict, flag="--task-option")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        if self.task != CLASSIFY and self.label_smoothing:
            raise ValueError(f"label_smoothing is a setting of the classify task, not of {self.task!r}; "
                             "give that task's own options in task_options")
        if self.task == CLASSIFY and "label_smoothing" in self.task_options:
            raise ValueError("give label_smoothing once: as the recipe's label_smoothing, "
                             "not in task_options")

    # ------------------------------------------------------------------ derived
    def task_settings(self) -> dict:
        """The options the task is built with: ``task_options`` (+ ``label_smoothing`` for classify)."""
        if self.task == CLASSIFY:
            return {"label_smoothing": self.label_smoothing, **self.task_options}
        return dict(self.task_options)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """``W = min(round(warmup_epochs * steps_per_epoch), floor(warmup_cap * T))``."""
        total = self.epochs * steps_per_epoch
        return min(round(self.warmup_epochs * steps_per_epoch), math.floor(self.warmup_cap * total))

    def for_task(self, task) -> Recipe:
        """This recipe with ``task`` (a Task instance) as the task: its name and full settings."""
        settings = dict(task.settings())
        if task.name == CLASSIFY:
            smoothing = settings.pop("label_smoothing", 0.0)
            return self.replace(task=task.name, task_options=settings, label_smoothing=smoothing)
        return self.replace(task=task.name, task_options=settings, label_smoothing=0.0)

    # ------------------------------------------------------------------ building and JSON
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every setting's name, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls, recipe: Recipe | None = None, **settings) -> Recipe:
        """``recipe`` with ``settings`` replaced, or a new recipe from ``settings`` alone."""
        unknown = sorted(set(settings) - set(cls.keys()))
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
        """A copy with some settings changed (checked again); an unknown name is a ``TypeError``."""
        unknown = sorted(set(changes) - set(self.keys()))
        if unknown:
            raise TypeError(f"Recipe has no setting {unknown[0]!r}; "
                            f"its settings are: {', '.join(self.keys())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON: every setting, with the task as ``{"name", "settings"}`` (label smoothing
        inside classify's settings), as stored in ``config.json`` and checkpoints."""
        skip = ("label_smoothing", "task", "task_options")
        out = {k: getattr(self, k) for k in self.keys() if k not in skip}
        return json.loads(json.dumps({**out, "task": {"name": self.task, "settings": self.task_settings()}}))

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """The recipe that :meth:`to_dict` wrote; settings missing from an older file take their
        defaults, and a file from before tasks (``label_smoothing`` at the top) is read as classify.
        What the engine records beside the recipe (``world_size``, ``amp``, ``data``, ...) is left out."""
        if not isinstance(data, dict):
            raise TypeError(f"a stored recipe must be a dict, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k in cls.keys()}
        task = data.pop("task", None) or {"name": CLASSIFY, "settings": {}}
        settings = dict(task.get("settings") or {})
        name = task.get("name", CLASSIFY)
        if name == CLASSIFY:
            data["label_smoothing"] = settings.pop("label_smoothing", data.get("label_smoothing", 0.0))
        return cls.from_settings(**data, task=name, task_options=settings)


#: The fields of :class:`Recipe` (what the CLI generates its train options from).
RECIPE_FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Recipe)
