"""What a training run optimises and measures: the :class:`Task`, one file per task.

==============  ===============================  ======================================  ==============
task            a batch                          loss                                    best.pt by
==============  ===============================  ======================================  ==============
``classify``    ``(x, target, labels)``          cross-entropy (label smoothing, mixup)  ``test_acc``
``segment``     ``(x, mask)``                    per-pixel cross-entropy                 ``test_miou``
``dino``        ``(x, ...)`` (labels unused)     self-distillation over multi-crops      ``knn_acc``
``count``       ``(x, _, counts)``               cross-entropy over the digit counts     ``test_acc``
==============  ===============================  ======================================  ==============

``create(name, **options)`` builds a registered task; ``register(cls)`` adds one (a class with a
unique ``name``: a taken name is refused unless ``register(cls, replace=True)``). The tasks other
than ``classify`` are imported on first use (``LAZY``: one line per task), so ``import
unifiedctx.train`` stays light. ``docs/adding_a_task.md`` adds the fourth, ``count``.
"""

from __future__ import annotations

import importlib

from ...validation import check_bool, suggest
from .base import Task, TaskExample, autocast_context, checked_options, option_names
from .classify import Classify, ClassifyOptions, evaluate_classifier, output_classes

#: Registered task classes by name.
REGISTRY: dict[str, type[Task]] = {"classify": Classify}
#: Tasks that register themselves when their module is imported: name -> module.
LAZY = {
    "segment": "unifiedctx.train.tasks.segment",
    "dino": "unifiedctx.train.tasks.dino",
    "count": "unifiedctx.train.tasks.count",
}

__all__ = ["LAZY", "REGISTRY", "Classify", "ClassifyOptions", "Task", "TaskExample", "autocast_context",
           "available", "checked_options", "create", "evaluate_classifier", "option_names", "output_classes",
           "register", "task_class"]


def register(cls: type[Task] | None = None, *, replace: bool = False):
    """Add a :class:`Task` subclass to the registry under ``cls.name`` (usable as a decorator,
    ``@register`` or ``@register(replace=True)``).

    A name that is taken (``classify`` included) is refused with a ``ValueError`` naming the class
    that holds it, unless ``replace=True`` asks to replace that class. Registering the same class
    again (the same module and name, e.g. its module reloaded) is not a replacement.
    """
    check_bool("replace", replace)
    if cls is None:
        return lambda c: register(c, replace=replace)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register expects a Task subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{cls.__qualname__}.name must be a non-empty string (the task's registry key), "
                        f"got {name!r}")
    if name in LAZY and name not in REGISTRY and cls.__module__ != LAZY[name]:
        importlib.import_module(LAZY[name])  # the task that owns this name, so that it is seen as taken
    held = REGISTRY.get(name)
    same = held is not None and (held.__module__, held.__qualname__) == (cls.__module__, cls.__qualname__)
    if held is not None and not same and not replace:
        raise ValueError(f"task name {name!r} is taken by {held.__module__}.{held.__qualname__}: give "
                         f"{cls.__qualname__} another name, or pass replace=True to replace that task")
    REGISTRY[name] = cls
    return cls


def available() -> list[str]:
    """Names of every task, registered or importable."""
    return sorted({*REGISTRY, *LAZY})


def task_class(name) -> type[Task]:
    """The registered class of the task called ``name`` (importing its module on first use)."""
    if not isinstance(name, str):
        raise TypeError(f"task must be a task name ({', '.join(available())}) or a Task, "
                        f"got {type(name).__name__} {name!r}")
    if name not in REGISTRY and name in LAZY:
        importlib.import_module(LAZY[name])
    if name not in REGISTRY:
        names = available()
        raise ValueError(f"unknown task {name!r}; available: {', '.join(names)}.{suggest(name, names)}")
    return REGISTRY[name]


def create(task, **options) -> Task:
    """A :class:`Task` from a name (``"classify"``, ``"segment"``, ``"dino"``, ``"count"``) and its
    options; a Task instance is returned as it is (then ``options`` must be empty)."""
    if isinstance(task, Task):
        if options:
            raise TypeError(f"task options {sorted(options)} given with a Task instance; set them on it")
        return task
    cls = task_class("classify" if task is None else task)
    unknown = sorted(set(options) - set(option_names(cls)))
    if unknown:
        raise TypeError(f"task {cls.name!r} has no option {unknown[0]!r}; its options are: "
                        f"{', '.join(option_names(cls)) or 'none'}")
    return cls(**options)
