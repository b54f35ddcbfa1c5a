"""A run's settings resolved once: the :class:`Recipe`, the :class:`Task` and how it runs (:class:`Plan`).

``plan(recipe, task, settings, run)`` checks every argument of :func:`unifiedctx.train.fit` at
the door (``TypeError``/``ValueError`` naming it, through :mod:`unifiedctx.validation`) and
returns the frozen :class:`Plan` that ``fit`` and ``train_or_load`` both use: the recipe is built
once, the task once, the device, autocast dtype and compile switch once. :data:`FIT_ARGUMENTS`
documents fit's arguments (it becomes part of ``fit.__doc__``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..validation import check_bool, check_choice, check_positive_int
from .recipe import Recipe
from .tasks import Task

#: ``fit(progress=...)``: bars, nothing, or one compact line per epoch.
PROGRESS = (True, False, "epoch")
#: fit's keyword arguments beside the recipe, with their defaults.
RUN_DEFAULTS = {"device": "auto", "amp": "auto", "compile": False, "channels_last": False, "out": None,
                "resume": False, "progress": True, "eval_batch_size": None, "callback": None,
                "run_info": None,
                "save_rank_weights": False, "allow_foreign": False}
#: fit's keyword arguments that are not recipe settings.
FIT_RUN_ARGS = ("task", *RUN_DEFAULTS)


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


def check_run_args(a: dict) -> None:
    """fit's arguments beside the recipe, at the door: strict bools, strings from their lists, paths."""
    if a["eval_batch_size"] is not None:
        check_positive_int("eval_batch_size", a["eval_batch_size"])
    for name in ("channels_last", "resume", "save_rank_weights", "allow_foreign"):
        check_bool(name, a[name])
    if a["progress"] not in PROGRESS or not isinstance(a["progress"], (bool, str)):  # 1 == True: refused
        kind = TypeError if not isinstance(a["progress"], str) else ValueError
        raise kind(f"progress must be True, False or 'epoch', got {type(a['progress']).__name__} "
                   f"{a['progress']!r}")
    if not isinstance(a["compile"], bool):
        check_choice("compile", a["compile"], ("auto",))
    if a["out"] is not None and not isinstance(a["out"], (str, os.PathLike)):
        raise TypeError(f"out must be a folder path (str or os.PathLike) or None, "
                        f"got {type(a['out']).__name__}")
    if a["out"] is not None and not str(a["out"]).strip():
        raise ValueError("out must name a folder, got an empty path")
    if a["out"] is not None and Path(a["out"]).expanduser().is_file():
        raise NotADirectoryError(f"out must be a folder, but {a['out']} is a file")
    if a["callback"] is not None and not callable(a["callback"]):
        raise TypeError(f"callback must be callable or None, got {type(a['callback']).__name__}")
    if a["run_info"] is not None:
        if not isinstance(a["run_info"], dict):
            raise TypeError(f"run_info must be a dict or None, got {type(a['run_info']).__name__}")
        try:
            json.dumps(a["run_info"], allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"run_info must be JSON-serialisable (it goes into config.json): "
                             f"{err}") from None


def recipe_and_task(recipe: Recipe | None, task, settings: dict) -> tuple[Recipe, Task]:
    """The run's :class:`Recipe` (``recipe`` with the keyword ``settings``) and its Task.

    ``task`` is ``None`` (the recipe's), a task name, or a Task instance (its name and settings
    then go into the recipe; giving task options beside it is an error).
    """
    if isinstance(task, str):
        settings = {**settings, "task": task}
    elif task is not None and not isinstance(task, Task):
        raise TypeError(f"task must be a task name or a Task instance, got {type(task).__name__} {task!r}")
    if isinstance(task, Task):
        given = {k for k in settings if k not in Recipe.keys()} | ({"task_options"} & set(settings))
        if given:
            raise ValueError(f"{', '.join(sorted(given))}: settings of a task built by name; set them on "
                             f"the {type(task).__name__} instance instead")
        base = Recipe.from_settings(recipe, **settings)
        return base.for_task(task), task
    recipe = Recipe.from_settings(recipe, **settings)
    return recipe, recipe.build_task()


@dataclass(frozen=True)
class Plan:
    """Everything a run is decided by, resolved once (see the module docstring)."""

    recipe: Recipe
    task: Task
    device: torch.device
    amp_dtype: torch.dtype | None
    compile: bool
    run: dict = field(default_factory=dict)

    @property
    def out(self) -> Path | None:
        """The run folder (``~`` expanded), or ``None``."""
        return Path(self.run["out"]).expanduser() if self.run["out"] is not None else None

    def config(self, model, data, device: torch.device, record: dict) -> dict:
        """What ``config.json`` holds: the model's config, the run ``record``, the data's name, the
        device, amp, compile, memory format and the caller's ``run_info``."""
        from .checkpoint import model_config

        return {"model": model_config(model), "recipe": record, "data": getattr(data, "name", None),
                "device": str(device), "amp": str(self.amp_dtype), "compile": self.compile,
                "channels_last": self.run["channels_last"], "run": self.run["run_info"]}

    def record(self, data, world_size: int) -> dict:
        """What checkpoints and ``config.json`` store as the run's ``recipe`` and resume compares:
        the recipe, then the world size, amp, channels_last, compile and the data's identity."""
        from .checkpoint import data_identity

        amp = "bf16" if self.amp_dtype == torch.bfloat16 else "off"
        return self.recipe.to_dict() | {"world_size": world_size, "amp": amp,
                                        "channels_last": self.run["channels_last"], "compile": self.compile,
                                        "data": data_identity(data)}


def plan(recipe: Recipe | None, task, settings: dict, run: dict) -> Plan:
    """Check and resolve fit's arguments: ``run`` holds the keywords of :data:`RUN_DEFAULTS`."""
    unknown = sorted(set(run) - set(RUN_DEFAULTS))
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    run = {**RUN_DEFAULTS, **run}
    recipe, task = recipe_and_task(recipe, task, settings)
    check_run_args(run)
    dev = resolve_device(run["device"])
    compile_on = run["compile"] is True or (run["compile"] == "auto" and dev.type == "cuda")
    return Plan(recipe, task, dev, resolve_amp(run["amp"], dev), compile_on, run)


def split_fit_kwargs(kwargs: dict, drop: tuple[str, ...] = ("task",)) -> tuple[dict, dict]:
    """``(recipe settings, run arguments)`` of fit's keywords; the run arguments without ``drop``."""
    settings = {k: v for k, v in kwargs.items() if k not in FIT_RUN_ARGS}
    return settings, {k: v for k, v in kwargs.items() if k in FIT_RUN_ARGS and k not in drop}


def run_recipe(data, recipe: Recipe | None = None, **fit_kwargs) -> dict:
    """The record that ``fit(model, data, recipe, **fit_kwargs)`` would store (and compare on resume)."""
    settings, run = split_fit_kwargs(fit_kwargs)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return plan(recipe, fit_kwargs.get("task"), settings, run).record(data, world_size)


def recipe_doc() -> str:
    """The :class:`Recipe` settings as docstring lines (``name (default): help``)."""
    from dataclasses import MISSING, fields

    lines = []
    for f in fields(Recipe):
        required = f.default is MISSING and f.default_factory is MISSING
        value = f.default if f.default is not MISSING else None if required else f.default_factory()
        default = "required" if required else repr(value)
        lines.append(f"            ``{f.name}`` ({default}): {f.metadata['help']}.")
    return "\n".join(lines)


#: The Args, Returns and Raises of :func:`unifiedctx.train.fit` (``{recipe_settings}``: :func:`recipe_doc`).
FIT_ARGUMENTS = """
    Args:
        model: the network to train (classification: float ``(B, C, H, W)`` -> ``(B, num_classes)``).
            Should have a ``config`` dict (every ``create_model`` model does): it is stored in
            checkpoints and checked on resume.
        data: an ImageData (kept on the device, augmented there), a FolderData (DataLoaders), or
            what the task takes (its ``check_data`` says what that is).
        recipe: the settings that decide the result (``None``: from the keywords).
        **settings: any :class:`Recipe` setting by name (``epochs`` is required without a recipe):
{recipe_settings}
        task: what to optimise and measure (:mod:`unifiedctx.train.tasks`): a name (the recipe's
            ``task``) or a Task instance (its name and ``settings()`` go into the recipe).
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: ``"auto"`` (bf16 autocast on CUDA, off on CPU), ``"bf16"`` or ``"off"``.
        compile: ``torch.compile`` the model; ``"auto"`` compiles on CUDA only.
        channels_last: model and batches in ``channels_last`` memory format.
        out: folder for ``last.pt`` (every epoch), ``best.pt``, ``history.json``/``.csv`` and
            ``config.json``; ``None`` writes nothing.
        resume: continue from ``out/last.pt`` if it exists (same settings required); without it an
            existing ``out/last.pt`` is a ``FileExistsError``.
        progress: ``True``: tqdm bars (rank 0 only) with loss, the task's metrics and images/s;
            ``False``: nothing; ``"epoch"``: one line per epoch (epoch, train loss, the task's metric, time).
        eval_batch_size: test batch size (default ``2 * batch_size``).
        callback: called after every optimizer step with a dict ``event="step"``, ``epoch``
            (1-based), ``step`` (1-based in the epoch), ``global_step``, ``loss`` (a 0-d tensor),
            ``model``; and after every epoch (checkpoint written) with ``event="epoch"``, ``epoch``,
            ``row`` (the history entry), ``model``. Raising :class:`StopTraining` ends the run.
        run_info: extra JSON-serialisable facts stored in ``out/config.json``.
        save_rank_weights: every rank writes its final weights to ``out/rank{r}.pt`` (DDP checks).
        allow_foreign: train into an ``out`` that holds files other than this run's own (a run
            owns its folder: otherwise such a folder is a ``FileExistsError``; see ``rundir.py``).

    Returns:
        :class:`History`, one dict per epoch (see :mod:`unifiedctx.train.history`).

    Every setting that changes the result (the recipe, ``amp``, ``channels_last``, ``compile``,
    the task and the data's name, options and fingerprint) is recorded in ``config.json`` and the
    checkpoints; resuming with any other is a ``ValueError`` listing the differences. Every
    argument, the data and the model are checked before anything is written.

    Raises:
        TrainingDiverged: the loss, the gradient norm, the weights or the test loss became NaN or
            infinite (checked at every step, the last included; on CUDA without a sync per step):
            the epoch, the step and the last good checkpoint are named; nothing non-finite is saved.
        FileExistsError: ``out`` holds another run's or a person's files (see ``allow_foreign``).
        unifiedctx.files.FolderInUse: another live process is training into ``out``.
"""
