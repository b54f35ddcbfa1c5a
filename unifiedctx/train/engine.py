"""The training loop: :func:`fit` and :func:`evaluate`.

One optimizer step on a batch ``x`` ``(b, C, H, W)`` with targets ``t`` (labels, or soft targets
under mixup/cutmix) and label smoothing ``eps`` over ``K`` classes::

    q = (1 - eps) t + eps / K                          (t one-hot for plain labels)
    loss = mean_i  - sum_k q_ik log softmax(model(x))_ik
    g = grad(loss); g <- g * min(1, clip / ||g||)       (optional clipping)
    theta <- AdamW(theta, g, lr(step))                  (decay on matrices only; see optim.py)

Under DistributedDataParallel every rank computes ``loss`` on its shard of the global batch and the
gradients are averaged, so K ranks with batch b take the same step as one process with batch K b.

Exact resume: data order, augmentation and the global RNG (dropout, drop-path) are re-seeded from
``(seed, epoch)`` at the start of every epoch, the learning rate is a function of the step, and the
checkpoint holds the weights, the optimizer and the EMA, so resuming after epoch k replays the
remaining epochs bit for bit on a CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from unifiedctx.validation import check_bool, check_choice, check_positive_int

from . import distributed as D
from .batches import DeviceBatches, derive_seed, make_batches
from .checkpoint import check_config, model_config, read_checkpoint, save_checkpoint
from .finite import (
    DivergenceWatch,
    LastGood,
    TrainingDiverged,
    check_row,
    check_weights,
    grad_norm,
    max_abs,
    nonfinite_tensors,
)
from .history import History, write_atomic
from .optim import ModelEma, WarmupCosine, make_optimizer
from .recipe import Recipe
from .rundir import RunFolder
from .tasks import Classify, Task, autocast_context, evaluate_classifier
from .tasks import create as create_task

#: Settings beside the recipe that change the trained weights; recorded and compared on resume too.
RUN_KEYS = ("amp", "channels_last", "compile", "task", "data")

__all__ = ["Recipe", "StopTraining", "TrainingDiverged", "evaluate", "fit", "resolve_amp", "resolve_device",
           "run_recipe"]
#: ``fit(progress=...)``: bars, nothing, or one compact line per epoch.
PROGRESS = (True, False, "epoch")


class StopTraining(Exception):
    """Raise it from a ``callback`` to end :func:`fit` early (after the current step or epoch);
    ``fit`` returns the history so far, and the last completed epoch's checkpoint is kept."""


# ---------------------------------------------------------------------------------- settings
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


def _check_run_args(a: dict) -> None:
    """The arguments of :func:`fit` beside the recipe (which checks itself), checked at the door
    (``TypeError``/``ValueError`` naming them): strict bools, strings from their lists, paths."""
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
    then go into the recipe; giving task options or label smoothing beside it is an error).
    """
    if isinstance(task, str):
        settings = {**settings, "task": task}
    elif task is not None and not isinstance(task, Task):
        raise TypeError(f"task must be a task name or a Task instance, got {type(task).__name__}")
    recipe = Recipe.from_settings(recipe, **settings)
    if isinstance(task, Task):
        if (recipe.label_smoothing or recipe.task_options) and \
                recipe.for_task(task).task_settings() != recipe.task_settings():
            raise ValueError("label_smoothing and task_options are settings of a task built by name; "
                             f"set them on the {type(task).__name__} instance instead")
        return recipe.for_task(task), task
    built = create_task(recipe.task, **recipe.task_settings())
    return recipe.for_task(built), built


def _epoch_lines(callback, epochs: int, metric: str):
    """``callback`` that also prints one compact line per epoch: loss, the task's metric, time."""
    def report(info: dict) -> None:
        if info["event"] == "epoch":
            row = info["row"]
            print(f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
                  f"{metric} {row.get(metric, float('nan')):.4f}  {row['epoch_time']:.1f}s", flush=True)
        if callback is not None:
            callback(info)
    return report


def _check_data(data) -> None:
    """The tensors of an ImageData-like ``data``: uint8 images, int64 labels in range, a test split."""
    if not hasattr(data, "train_x"):
        return
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x", None), getattr(data, f"{split}_y", None)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise TypeError(f"data.{split}_x must be a uint8 tensor (N, C, H, W) of images in [0, 255], got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}; "
                            "build an ImageData (float images in [0, 1]: (x * 255).round().to(torch.uint8))")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise TypeError(f"data.{split}_y must be an int64 tensor ({x.shape[0]},), got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        k = getattr(data, "num_classes", None)
        if isinstance(k, int) and len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(f"data.{split}_y has labels in [{int(y.min())}, {int(y.max())}] but the data "
                             f"has {k} classes (labels must be in [0, {k - 1}])")
    if data.train_x.shape[0] == 0 or data.test_x.shape[0] == 0:
        raise ValueError(f"data must have training and test images, got {data.train_x.shape[0]} and "
                         f"{data.test_x.shape[0]}")


def _data_shape(data) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the data's images, or ``None`` when the data does not say."""
    x = getattr(data, "train_x", None)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return tuple(int(n) for n in x.shape[1:])
    channels, size = getattr(data, "channels", None), getattr(data, "image_size", None)
    if isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2:
        return channels, int(size[0]), int(size[1])
    return None


@torch.no_grad()
def _check_model_takes_data(model: nn.Module, data, device: torch.device) -> None:
    """Before the first step: the model's dtype, channels and image size against the data's, by its
    config and one forward pass of a zero image in eval mode (RNG, mode and statistics untouched)."""
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if floats and floats[0] != torch.float32:
        raise TypeError(f"the model's parameters are {floats[0]}, but fit feeds it float32 images "
                        "(autocast does the rest): call model.float() first")
    shape = _data_shape(data)
    if shape is None:
        return
    config = model_config(model) or {}
    chans = config.get("in_chans")
    if isinstance(chans, int) and chans != shape[0]:
        raise ValueError(f"the model takes {chans}-channel images but the data has {shape[0]} channels: "
                         f"build it with in_chans={shape[0]} (or load the data with channels={chans})")
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model(torch.zeros(1, *shape, device=device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        built = f" (it was built for img_size={config['img_size']!r})" if "img_size" in config else ""
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"the model cannot take the data's {shape[0]}x{shape[1]}x{shape[2]} images{built}: "
                         f"{reason}") from err
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, data, batch_size: int = 256, device="auto", amp="auto",
             channels_last: bool = False, task: str | Task | None = None) -> dict:
    """Test-split metrics of ``model``: for classification the loss (mean cross-entropy, no
    smoothing) and accuracy (fraction in [0, 1]); for another task, its own test metrics.

    Args:
        model: maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits (classification).
        data: an ImageData (test images normalised with ``data.mean``/``data.std``) or a FolderData.
        batch_size: images per forward pass.
        device, amp, channels_last: as in :func:`fit`.
        task: ``None``/``"classify"``, or the task the model was trained for (a name or a Task):
            its ``evaluate`` gives the metrics (``segment``: test_loss, test_miou, test_pixel_acc;
            ``dino``: k-NN accuracy).

    Returns:
        ``{"loss": float, "acc": float}`` for classification, else the task's numeric metrics.
    """
    if task is not None and task != "classify" and not isinstance(task, Classify):
        return _evaluate_task(model, data, batch_size, device, amp, channels_last, create_task(task))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("batch_size", batch_size)
    check_bool("channels_last", channels_last)
    _check_data(data)
    dev = resolve_device(device)
    model.to(dev)
    _check_model_takes_data(model, data, dev)
    opts = {"channels_last": channels_last}
    if hasattr(data, "train_x"):
        batches = DeviceBatches(data, 1, dev, augment=False, train=False, **opts)
    else:
        batches = make_batches(data, batch_size, dev, **opts)
    amp_dtype = resolve_amp(amp, dev)
    result = evaluate_classifier(model, batches.test_batches(batch_size), amp_dtype, D.DistContext(), dev)
    return {"loss": result["test_loss"], "acc": result["test_acc"]}


def _evaluate_task(model, data, batch_size, device, amp, channels_last, task: Task) -> dict:
    """``task.evaluate`` on the test split, one process: its numeric metrics only."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int("batch_size", batch_size)
    check_bool("channels_last", channels_last)
    dev = resolve_device(device)
    model.to(dev)
    task.setup(model, data, dev)
    # a training batch of 1: only the test batches are used, and any training split has one
    batches = task.batches(data, 1, dev, seed=0, augment=False, mixup=0.0, cutmix=0.0, rank=0,
                           world_size=1, channels_last=channels_last)
    metrics = task.evaluate(model, batches, batch_size, resolve_amp(amp, dev), D.DistContext(), dev)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _mixing_columns(model: nn.Module) -> dict:
    """``{"mixing": {layer: {name: value}}}`` for the mixers that have a knob (``{}`` if none).

    The weights are the mixers' own ``mixing_weights()`` as plain numbers (Container's alpha and
    beta, GPSA's per-head gate), kept nested; only ``History.to_csv`` flattens them.
    """
    try:
        from unifiedctx.models import mixing_weights
    except ImportError:
        return {}
    weights = mixing_weights(model)
    return {"mixing": {name: dict(w) for name, w in weights.items()}} if weights else {}


# ---------------------------------------------------------------------------------- settings record
def data_identity(data) -> dict:
    """What the data is, for the record: ``{"name", "options", "fingerprint"}`` (the fingerprint
    hashes the sizes and a strided sample of the contents; see ``ImageData.fingerprint``)."""
    fingerprint = getattr(data, "fingerprint", None)
    return {"name": getattr(data, "name", None), "options": getattr(data, "options", None),
            "fingerprint": fingerprint() if callable(fingerprint) else None}


def _recipe(a: dict, task: Task, world_size: int, amp_dtype, compile_on: bool, data) -> dict:
    """Every setting that changes the trained weights (stored in checkpoints and config.json,
    compared on resume and by :func:`unifiedctx.train.train_or_load`): the :class:`Recipe`, then
    the world size, amp, channels_last, compile and the data's identity."""
    amp = "bf16" if amp_dtype == torch.bfloat16 else "off"
    return a["recipe"].to_dict() | {"world_size": world_size, "amp": amp, "channels_last": a["channels_last"],
                                    "compile": compile_on, "data": data_identity(data)}


def _compile_on(compile_arg, dev: torch.device) -> bool:
    return compile_arg is True or (compile_arg == "auto" and dev.type == "cuda")


def run_recipe(data, recipe: Recipe | None = None, **fit_kwargs) -> dict:
    """The recipe that ``fit(model, data, recipe, **fit_kwargs)`` would record (and compare on resume)."""
    known = {k: p.default for k, p in inspect.signature(fit).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
    run = {**known, **{k: v for k, v in fit_kwargs.items() if k in known}}
    settings = {k: v for k, v in fit_kwargs.items() if k not in known}
    recipe, task = recipe_and_task(recipe, run.pop("task"), settings)
    _check_run_args(run)
    dev = resolve_device(run["device"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    amp_dtype, compile_on = resolve_amp(run["amp"], dev), _compile_on(run["compile"], dev)
    return _recipe({**run, "recipe": recipe}, task, world_size, amp_dtype, compile_on, data)


def recipe_differences(stored: dict, wanted: dict, where: str = "in the checkpoint") -> list[str]:
    """``"key: A in the checkpoint, B now"`` for every setting in which two recipes differ."""
    stored = {"task": {"name": "classify", "settings": {"label_smoothing": stored.get("label_smoothing")}},
              **stored}  # checkpoints from before tasks were classification runs
    diff = []
    for key in wanted:
        old, new = stored.get(key, "(not recorded)"), wanted[key]
        if isinstance(old, dict) and isinstance(new, dict):
            diff += [f"{key}.{k}: {old.get(k, '(not recorded)')!r} {where}, {new[k]!r} now"
                     for k in new if old.get(k, "(not recorded)") != new[k]]
        elif old != new:
            diff.append(f"{key}: {old!r} {where}, {new!r} now")
    return diff


# ---------------------------------------------------------------------------------- fit
def _resume_state(path: Path, model: nn.Module, recipe: dict) -> dict:
    state = read_checkpoint(path)
    check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    diff = recipe_differences(state.get("recipe", {}), recipe)
    if diff:
        raise ValueError(f"cannot resume {path} exactly with other settings ({'; '.join(diff)}); "
                         "use the same settings or another output folder")
    bad = nonfinite_tensors({"model": state.get("model"), "ema": state.get("ema")})
    if bad:
        raise ValueError(f"cannot resume {path}: {', '.join(bad[:3])} hold NaN or inf "
                         "(not a good checkpoint)")
    return state


def fit(model: nn.Module, data, recipe: Recipe | None = None, *, task: str | Task | None = None,
        device="auto", amp="auto", compile: bool | str = False, channels_last: bool = False, out=None,
        resume: bool = False, progress: bool | str = True, eval_batch_size: int | None = None,
        callback: Callable[[dict], None] | None = None, run_info: dict | None = None,
        save_rank_weights: bool = False, allow_foreign: bool = False, **settings) -> History:
    """Train ``model`` on ``data`` by a :class:`Recipe` (AdamW, warm-up + cosine); return its History.

    ``fit(model, data, Recipe(epochs=4, lr=5e-3))`` and ``fit(model, data, epochs=4, lr=5e-3)`` are
    the same run; keywords given beside a recipe replace its settings.

    Args:
        model: maps float ``(B, C, H, W)`` to ``(B, num_classes)`` logits. Should have a ``config``
            dict (every ``create_model`` model does): it is stored in checkpoints and checked on resume.
        data: an ImageData (kept on the device, augmented there) or a FolderData (DataLoaders).
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
        progress: ``True``: tqdm bars (rank 0 only) with loss, accuracy and images/s; ``False``:
            nothing; ``"epoch"``: one line per epoch (epoch, train loss, the task's metric, time).
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
    checkpoints; resuming with any other is a ``ValueError`` listing the differences.

    Raises:
        TrainingDiverged: the loss, the gradient norm, the weights or the test loss became NaN or
            infinite (checked at every step, the last included; on CUDA without a sync per step):
            the epoch, the step and the last good checkpoint are named; nothing non-finite is saved.
        FileExistsError: ``out`` holds another run's or a person's files (see ``allow_foreign``).
        unifiedctx.train.rundir.FolderInUse: another live process is training into ``out``.
    """
    run = {k: v for k, v in locals().items() if k not in ("model", "data", "recipe", "task", "settings")}
    recipe, task = recipe_and_task(recipe, task, settings)
    _check_run_args(run)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = {**{k: getattr(recipe, k) for k in Recipe.keys()}, **run, "task": task, "recipe": recipe}
    dev = resolve_device(device)
    ctx = D.setup(dev.type)
    if progress == "epoch":
        args["progress"] = False
        if ctx.is_main:
            args["callback"] = _epoch_lines(callback, recipe.epochs, task.best_metric)
    history = History()
    try:
        return _fit(model, data, args, dev, ctx, history)
    except StopTraining:
        return history
    finally:
        D.cleanup(ctx)


def _recipe_doc() -> str:
    """The :class:`Recipe` settings as docstring lines (``name (default): help``)."""
    from dataclasses import MISSING, fields

    lines = []
    for f in fields(Recipe):
        required = f.default is MISSING and f.default_factory is MISSING
        value = f.default if f.default is not MISSING else None if required else f.default_factory()
        default = "required" if required else repr(value)
        lines.append(f"            ``{f.name}`` ({default}): {f.metadata['help']}.")
    return "\n".join(lines)


if fit.__doc__:  # (python -OO strips docstrings)
    fit.__doc__ = fit.__doc__.replace("{recipe_settings}", _recipe_doc())


def _fit(model: nn.Module, data, a: dict, dev: torch.device, ctx: D.DistContext, history: History) -> History:
    if dev.type == "cuda" and ctx.active:
        dev = torch.device("cuda", ctx.local_rank)
    task: Task = a["task"]
    amp_dtype = resolve_amp(a["amp"], dev)
    compile_on = _compile_on(a["compile"], dev)
    fmt = torch.channels_last if a["channels_last"] else torch.contiguous_format
    if task.name == "classify":
        _check_data(data)
    model.to(dev, memory_format=fmt)
    _check_model_takes_data(model, data, dev)
    task.setup(model, data, dev)
    extra = task.modules().to(dev)
    batches = task.batches(data, a["batch_size"], dev, seed=a["seed"], augment=a["augment"], mixup=a["mixup"],
                           cutmix=a["cutmix"], rank=ctx.rank, world_size=ctx.world_size,
                           channels_last=a["channels_last"])
    spe = batches.steps_per_epoch
    if a["max_steps_per_epoch"] is not None:
        spe = min(spe, a["max_steps_per_epoch"])
    epochs = a["epochs"]
    schedule = WarmupCosine(a["lr"], epochs * spe, a["recipe"].warmup_steps(spe))
    optimizer = make_optimizer(nn.ModuleList([model, extra]), a["lr"], a["weight_decay"], dev)
    ema = ModelEma(model, a["ema"]) if a["ema"] else None
    recipe = _recipe(a, task, ctx.world_size, amp_dtype, compile_on, data)

    out = Path(a["out"]).expanduser() if a["out"] is not None else None  # "~/runs/x" means the home folder
    last = out / "last.pt" if out else None
    resuming = last is not None and last.exists()
    if resuming and not a["resume"]:
        raise FileExistsError(f"{last} already exists: pass resume=True (--resume) to continue that run, "
                              "or choose another output folder")
    info = {"model": model_config(model), "recipe": recipe, "data": getattr(data, "name", None),
            "device": str(dev), "amp": str(amp_dtype), "compile": compile_on,
            "channels_last": a["channels_last"], "run": a["run_info"]}
    with contextlib.ExitStack() as stack:
        refused = None
        if out is not None and ctx.is_main:  # the folder is ours (locked) until the run ends
            try:
                stack.enter_context(RunFolder(out, resuming=resuming, config=info,
                                              allow_foreign=a["allow_foreign"]))
            except (OSError, RuntimeError) as err:
                refused = err
        flag = torch.tensor([float(refused is not None)], device=dev)
        if D.all_reduce_sum(flag, ctx).item() > 0:  # every rank stops when the main one may not write
            raise refused if refused is not None else RuntimeError(
                f"the main process could not claim the run folder {out} (its error says why)")
        return _train(model, extra, task, batches, optimizer, schedule, ema, a, recipe, info, history, spe,
                      out, last, resuming, amp_dtype, compile_on, dev, ctx)


def _train(model, extra, task, batches, optimizer, schedule, ema, a, recipe, info, history, spe, out, last,
           resuming, amp_dtype, compile_on, dev, ctx) -> History:
    """The loop of :func:`fit` (the run folder, if any, is claimed)."""
    epochs = a["epochs"]
    start_epoch, global_step = 0, 0
    last_good = LastGood(out=out)
    if resuming:
        state = _resume_state(last, model, recipe)
        model.load_state_dict(state["model"])
        extra.load_state_dict(state.get("task_modules") or {})
        task.load_state_dict(state.get("task_state") or {})
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the kernel choice follows this device, not the saved one
            group["fused"] = dev.type == "cuda"
        if ema is not None:
            ema.load_state_dict(state["ema"])
        history.extend(state["history"])
        start_epoch, global_step = state["epoch"], state["step"]
        last_good = LastGood(last, start_epoch, out)
    if out is not None and ctx.is_main:
        write_atomic(out / "config.json", json.dumps(info, indent=1, default=str) + "\n")

    train_model = model
    if ctx.active:
        ids = [dev.index] if dev.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_on:
        train_model = torch.compile(train_model)
    extra_params = [p for p in extra.parameters() if p.requires_grad]
    all_params = [*model.parameters(), *extra_params]
    eval_bs = a["eval_batch_size"] or 2 * a["batch_size"]
    log_every = 1 if dev.type == "cpu" else 25
    show = a["progress"] and ctx.is_main
    train_time = history[-1]["time"] if history else 0.0
    metric = task.best_metric
    best = max((r[metric] for r in history if metric in r), default=-math.inf)
    watch = DivergenceWatch(dev)

    from tqdm.auto import tqdm

    for epoch in range(start_epoch, epochs):
        rng_devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(derive_seed(a["seed"], epoch, 2))  # dropout / drop-path / task randomness
            model.train()
            extra.train()
            bar = tqdm(total=spe, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=True,
                       dynamic_ncols=True)
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            sums: dict[str, torch.Tensor] = {}
            watch.reset()
            seen, t0 = 0, time.perf_counter()
            for step, batch in enumerate(batches.epoch(epoch, spe)):
                lr_now = schedule.apply(optimizer, global_step)
                with autocast_context(dev, amp_dtype):
                    loss, step_sums = task.loss(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ctx.active and extra_params:  # the task's own modules sit outside DDP
                    _average_gradients(extra_params, ctx)
                if a["clip_grad"] is not None:
                    norm = nn.utils.clip_grad_norm_(all_params, a["clip_grad"])
                else:
                    norm = grad_norm(all_params)
                optimizer.step()
                task.after_step(model, global_step, epochs * spe)
                if ema is not None:
                    ema.update(model)
                global_step += 1
                watch.observe(step, loss=loss, grad_norm=norm, weight_max=max_abs(all_params))
                loss_sum += loss.detach().double()
                for key, value in step_sums.items():
                    value = value.detach().double()
                    sums[key] = sums[key] + value if key in sums else value
                seen += batch[0].shape[0] * ctx.world_size
                if (step + 1) % log_every == 0 or step + 1 == spe:
                    watch.check(ctx, epoch, lr_now, last_good)  # the epoch's last step included
                    if show:
                        bar.update((step + 1) - bar.n)
                        rate = seen / max(time.perf_counter() - t0, 1e-9)
                        shown = task.train_metrics({k: float(v) for k, v in sums.items()})
                        bar.set_postfix(loss=f"{float(loss_sum) / (step + 1):.3f}",
                                        **{k.removeprefix("train_"): f"{v:.3f}" for k, v in shown.items()},
                                        img_s=f"{rate:.0f}", refresh=False)
                if a["callback"] is not None:
                    a["callback"]({"event": "step", "epoch": epoch + 1, "step": step + 1,
                                   "global_step": global_step, "loss": loss.detach(), "model": model})
            watch.check(ctx, epoch, lr_now, last_good)  # also when a callback ended the epoch early
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        check_weights({"model": model.state_dict(), "task_modules": extra.state_dict(),
                       "ema": ema.state_dict() if ema else None}, epoch, last_good)
        keys = sorted(sums)
        reduced = torch.stack([loss_sum, *(sums[k] for k in keys)])
        D.all_reduce_sum(reduced, ctx)
        totals = dict(zip(keys, reduced[1:].tolist()))
        row = {"epoch": epoch + 1, "train_loss": reduced[0].item() / (spe * ctx.world_size),
               **task.train_metrics(totals), **task.evaluate(model, batches, eval_bs, amp_dtype, ctx, dev)}
        if ema is not None:
            ema_test = task.evaluate(ema.module, batches, eval_bs, amp_dtype, ctx, dev)
            row |= {f"ema_{k}": v for k, v in ema_test.items()}
        row |= {"lr": lr_now, "images_per_s": seen / max(epoch_time, 1e-9), "epoch_time": epoch_time,
                "time": train_time, **_mixing_columns(model)}
        check_row(row, epoch, last_good)
        history.append(row)
        shown = {k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", metric)}
        bar.set_postfix(**shown, img_s=f"{row['images_per_s']:.0f}")
        bar.close()
        if out is not None and ctx.is_main:
            task_state = {"task_modules": extra.state_dict(), "task_state": task.state_dict()}
            state = {"optimizer": optimizer.state_dict(), "ema": ema.state_dict() if ema else None,
                     "epoch": epoch + 1, "epochs": epochs, "step": global_step, "recipe": recipe,
                     "history": list(history), **task_state}
            save_checkpoint(last, model, **state)
            if row[metric] > best:
                best = row[metric]
                save_checkpoint(out / "best.pt", model, epoch=epoch + 1, epochs=epochs, recipe=recipe,
                                history=list(history), **task_state)
            history.to_json(out / "history.json")
            history.to_csv(out / "history.csv")
        last_good = LastGood(last, epoch + 1, out) if out is not None else last_good
        D.barrier(ctx)
        if a["callback"] is not None:
            a["callback"]({"event": "epoch", "epoch": epoch + 1, "row": row, "model": model})
    if a["save_rank_weights"] and out is not None:
        save_checkpoint(out / f"rank{ctx.rank}.pt", model, rank=ctx.rank)
    return history


def _average_gradients(params: list[torch.Tensor], ctx: D.DistContext) -> None:
    """Average the gradients of ``params`` over the ranks (what DDP does for the model)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    D.all_reduce_sum(flat, ctx)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()
