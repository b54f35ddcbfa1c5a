"""The training loop: :func:`fit` and :func:`evaluate`. It names no task.

One optimizer step on a batch, with ``net = task.network(model)`` (the model and the task's own
modules, wrapped in DistributedDataParallel under ``torchrun``)::

    loss, sums = task.loss(net, batch)                  under autocast
    g = grad(loss); g <- g * min(1, clip / ||g||)       (optional clipping)
    theta <- AdamW(theta, g, lr(step))                  (decay on matrices only; see optim.py)
    task.after_step(model, step, total);  ema <- d ema + (1 - d) theta

Under DDP every rank computes ``loss`` on its shard of the global batch and the gradients are
averaged, so K ranks with batch b take the same step as one process with batch K b.

Exact resume: data order, augmentation and the global RNG (dropout, drop-path) are re-seeded from
``(seed, epoch)`` at the start of every epoch, the learning rate is a function of the step, and the
checkpoint holds the weights, the optimizer, the EMA and the task's state, so resuming after epoch k
replays the remaining epochs bit for bit on a CPU. Loss, gradient norm and weights are watched for
NaN/inf at every step (:mod:`finite`); nothing non-finite is saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..validation import check_bool, check_module, check_positive_int
from . import distributed as D
from .batches import derive_seed
from .checkpoint import model_config, resume_state, save_checkpoint
from .finite import DivergenceWatch, LastGood, TrainingDiverged, check_row, check_weights, grad_norm, max_abs
from .history import History, write_atomic
from .optim import ModelEma, WarmupCosine, make_optimizer
from .recipe import Recipe
from .run import PROGRESS, Plan, plan, resolve_amp, resolve_device
from .run import recipe_and_task as recipe_and_task
from .tasks import Task, autocast_context
from .tasks import create as create_task

#: Settings beside the recipe that change the trained weights; recorded and compared on resume too.
RUN_KEYS = ("amp", "channels_last", "compile", "task", "data")

__all__ = ["PROGRESS", "Recipe", "StopTraining", "TrainingDiverged", "evaluate", "fit", "resolve_amp",
           "resolve_device", "run_recipe"]


class StopTraining(Exception):
    """Raise it from a ``callback`` to end :func:`fit` early (after the current step or epoch);
    ``fit`` returns the history so far, and the last completed epoch's checkpoint is kept."""


# ---------------------------------------------------------------------------------- checks at the door
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
    """The model's dtype, channels and image size against the data's, by its config and one
    forward pass of a zero image in eval mode (RNG, mode and statistics untouched)."""
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


def _prepare(model: nn.Module, data, task: Task, device: torch.device, fmt=torch.contiguous_format) -> None:
    """Everything checked before a run folder is made: the data for the task, the model against
    the data (its images, then the task's own checks), the task's modules built."""
    task.check_data(data)
    model.to(device, memory_format=fmt)
    _check_model_takes_data(model, data, device)
    task.setup(model, data, device)
    task.modules().to(device)


# ---------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, data, batch_size: int = 256, device="auto", amp="auto",
             channels_last: bool = False, task: str | Task | None = None) -> dict:
    """Test-split metrics of ``model`` for ``task`` (one process, no smoothing or augmentation).

    Args:
        model: the trained network (classification: ``(B, C, H, W)`` -> ``(B, num_classes)`` logits).
        data: the data set the task takes (an ImageData, a FolderData, a SegmentationData).
        batch_size: images per forward pass.
        device, amp, channels_last: as in :func:`fit`.
        task: ``None``/``"classify"``, or the task the model was trained for (a name or a Task).

    Returns:
        classification: ``{"loss": mean CE, "acc": accuracy in [0, 1]}``; another task: its numeric
        test metrics (``segment``: test_loss, test_miou, test_pixel_acc; ``dino``: knn_acc, ...).
    """
    check_module("model", model)
    check_positive_int("batch_size", batch_size)
    check_bool("channels_last", channels_last)
    task = create_task(task)
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    _prepare(model, data, task, dev)
    # a training batch of 1: only the test batches are used, and any training split has one
    batches = task.batches(data, 1, dev, seed=0, augment=False, rank=0, world_size=1,
                           channels_last=channels_last)
    metrics = task.evaluate(model, batches, batch_size, amp_dtype, D.DistContext(), dev)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    public = getattr(task, "public_metrics", None)
    return public(metrics) if public is not None else metrics


def _mixing_columns(model: nn.Module) -> dict:
    """``{"mixing": {layer: {name: value}}}`` for the mixers that have a knob (``{}`` if none)."""
    from unifiedctx.models import mixing_weights

    weights = mixing_weights(model)
    return {"mixing": {name: dict(w) for name, w in weights.items()}} if weights else {}


def run_recipe(data, recipe: Recipe | None = None, **fit_kwargs) -> dict:
    """The record that ``fit(model, data, recipe, **fit_kwargs)`` would store (and compare on resume)."""
    import os

    settings = {k: v for k, v in fit_kwargs.items() if k not in _FIT_RUN_ARGS}
    run = {k: v for k, v in fit_kwargs.items() if k in _FIT_RUN_ARGS and k != "task"}
    p = plan(recipe, fit_kwargs.get("task"), settings, run)
    return p.record(data, int(os.environ.get("WORLD_SIZE", "1")))


# ---------------------------------------------------------------------------------- fit
def fit(model: nn.Module, data, recipe: Recipe | None = None, *, task: str | Task | None = None,
        device="auto", amp="auto", compile: bool | str = False, channels_last: bool = False, out=None,
        resume: bool = False, progress: bool | str = True, eval_batch_size: int | None = None,
        callback: Callable[[dict], None] | None = None, run_info: dict | None = None,
        save_rank_weights: bool = False, allow_foreign: bool = False, **settings) -> History:
    """Train ``model`` on ``data`` by a :class:`Recipe` (AdamW, warm-up + cosine); return its History.

    ``fit(model, data, Recipe(epochs=4, lr=5e-3))`` and ``fit(model, data, epochs=4, lr=5e-3)`` are
    the same run; keywords given beside a recipe replace its settings, and an option of the task by
    its own name goes to the task (``fit(..., label_smoothing=0.1)``: classification's).

    Args:
        model: the network to train (classification: float ``(B, C, H, W)`` -> ``(B, num_classes)``).
            Should have a ``config`` dict (every ``create_model`` model does): it is stored in
            checkpoints and checked on resume.
        data: an ImageData (kept on the device, augmented there), a FolderData (DataLoaders), or
            what the task takes (a SegmentationData for ``segment``).
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
        unifiedctx.train.rundir.FolderInUse: another live process is training into ``out``.
    """
    run = {k: v for k, v in locals().items() if k in _FIT_RUN_ARGS and k != "task"}
    return fit_plan(model, data, plan(recipe, task, settings, run))


#: fit's keyword arguments that are not recipe settings.
_FIT_RUN_ARGS = ("task", "device", "amp", "compile", "channels_last", "out", "resume", "progress",
                 "eval_batch_size", "callback", "run_info", "save_rank_weights", "allow_foreign")


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


def fit_plan(model: nn.Module, data, p: Plan) -> History:
    """:func:`fit` of a resolved :class:`Plan`: check, claim the folder, resume, train."""
    check_module("model", model)
    ctx = D.setup(p.device.type)
    dev = torch.device("cuda", ctx.local_rank) if p.device.type == "cuda" and ctx.active else p.device
    state = None
    try:
        state = _start(model, data, p, ctx, dev)
        with _claim_folder(state):
            _train(state)
    except StopTraining:
        pass
    finally:
        D.cleanup(ctx)
    return state.history if state is not None else History()


def _start(model: nn.Module, data, p: Plan, ctx: D.DistContext, dev: torch.device) -> RunState:
    """Every check, then the network, batches, optimizer, schedule and EMA (nothing written yet)."""
    fmt = torch.channels_last if p.run["channels_last"] else torch.contiguous_format
    _prepare(model, data, p.task, dev, fmt)
    net = p.task.network(model)
    inside = {id(q) for q in net.parameters()}
    if any(id(q) not in inside for q in [*model.parameters(), *p.task.modules().parameters()]):
        raise ValueError(f"task {p.task.name!r}: network(model) must hold the model and every module of "
                         "modules() (they are what DDP wraps and the optimizer steps)")
    recipe = p.recipe
    batches = p.task.batches(data, recipe.batch_size, dev, seed=recipe.seed, augment=recipe.augment,
                             rank=ctx.rank, world_size=ctx.world_size, channels_last=p.run["channels_last"])
    spe = batches.steps_per_epoch
    if recipe.max_steps_per_epoch is not None:
        spe = min(spe, recipe.max_steps_per_epoch)
    if spe == 0:
        raise ValueError("the training split gives no full batch: lower batch_size or use more data")
    record = p.record(data, ctx.world_size)
    info = {"model": model_config(model), "recipe": record, "data": getattr(data, "name", None),
            "device": str(dev), "amp": str(p.amp_dtype), "compile": p.compile,
            "channels_last": p.run["channels_last"], "run": p.run["run_info"]}
    callback = p.run["callback"]
    if p.run["progress"] == "epoch" and ctx.is_main:
        callback = _epoch_lines(callback, recipe.epochs, p.task.best_metric)
    return RunState(p, ctx, dev, model, net, batches, spe,
                    make_optimizer(net, recipe.lr, recipe.weight_decay, dev),
                    WarmupCosine(recipe.lr, recipe.epochs * spe, recipe.warmup_steps(spe)),
                    ModelEma(model, recipe.ema) if recipe.ema else None, record, info, callback,
                    last_good=LastGood(out=p.out))


@contextlib.contextmanager
def _claim_folder(s: RunState):
    """Hold the run folder (rank 0) for the run; every rank stops when it may not be claimed."""
    from .rundir import RunFolder

    out, ctx = s.plan.out, s.ctx
    last = out / "last.pt" if out else None
    resuming = last is not None and last.exists()
    if resuming and not s.plan.run["resume"]:
        raise FileExistsError(f"{last} already exists: pass resume=True (--resume) to continue that run, "
                              "or choose another output folder")
    with contextlib.ExitStack() as stack:
        refused = None
        if out is not None and ctx.is_main:
            try:
                stack.enter_context(RunFolder(out, resuming=resuming, config=s.info,
                                              allow_foreign=s.plan.run["allow_foreign"]))
            except (OSError, RuntimeError) as err:
                refused = err
        flag = torch.tensor([float(refused is not None)], device=s.device)
        if D.all_reduce_sum(flag, ctx).item() > 0:
            raise refused if refused is not None else RuntimeError(
                f"the main process could not claim the run folder {out} (its error says why)")
        if resuming:
            _resume(s, last)
        if out is not None and ctx.is_main:
            write_atomic(out / "config.json", json.dumps(s.info, indent=1, default=str) + "\n")
        yield


def _resume(s: RunState, last: Path) -> None:
    """Load the run's state from ``last`` (same model and settings, refused otherwise)."""
    state = resume_state(last, s.model, s.record)
    s.model.load_state_dict(state["model"])
    s.task.modules().load_state_dict(state.get("task_modules") or {})
    s.task.load_state_dict(state.get("task_state") or {})
    s.optimizer.load_state_dict(state["optimizer"])
    for group in s.optimizer.param_groups:  # the kernel choice follows this device, not the saved one
        group["fused"] = s.device.type == "cuda"
    if s.ema is not None:
        s.ema.load_state_dict(state["ema"])
    s.history.extend(state["history"])
    s.epoch, s.step = state["epoch"], state["step"]
    metric = s.task.best_metric
    s.best = max((r[metric] for r in s.history if metric in r), default=-math.inf)
    s.last_good = LastGood(last, s.epoch, s.plan.out)


def _train(s: RunState) -> None:
    """The loop: every remaining epoch, then the per-rank weights if asked for."""
    net = s.net
    if s.ctx.active:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[s.device.index] if s.device.type == "cuda"
                                                  else None)
    if s.plan.compile:
        net = torch.compile(net)
    while s.epoch < s.plan.recipe.epochs:
        with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(s.plan.recipe.seed, s.epoch, 2))  # dropout / drop-path / task
            row = _train_epoch(s, net)
        _end_epoch(s, row)
    out = s.plan.out
    if s.plan.run["save_rank_weights"] and out is not None:
        save_checkpoint(out / f"rank{s.ctx.rank}.pt", s.model, rank=s.ctx.rank)


def _train_epoch(s: RunState, net: nn.Module) -> dict:
    """One epoch of steps; the row's training columns (loss, the task's sums, lr, time)."""
    from tqdm.auto import tqdm

    task, recipe, dev, ctx, spe = s.task, s.plan.recipe, s.device, s.ctx, s.steps_per_epoch
    s.net.train()
    params = [q for q in s.net.parameters() if q.requires_grad]
    show = s.plan.run["progress"] is True and ctx.is_main
    bar = tqdm(total=spe, desc=f"epoch {s.epoch + 1}/{recipe.epochs}", disable=not show, dynamic_ncols=True)
    log_every = 1 if dev.type == "cpu" else 25
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    sums: dict[str, torch.Tensor] = {}
    watch = DivergenceWatch(dev)
    seen, t0, lr = 0, time.perf_counter(), 0.0
    for i, batch in enumerate(s.batches.epoch(s.epoch, spe)):
        lr = s.schedule.apply(s.optimizer, s.step)
        with autocast_context(dev, s.plan.amp_dtype):
            loss, step_sums = task.loss(net, batch)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = recipe.clip_grad
        norm = nn.utils.clip_grad_norm_(params, clip) if clip is not None else grad_norm(params)
        s.optimizer.step()
        task.after_step(s.model, s.step, recipe.epochs * spe)
        if s.ema is not None:
            s.ema.update(s.model)
        s.step += 1
        watch.observe(i, loss=loss, grad_norm=norm, weight_max=max_abs(params))
        loss_sum += loss.detach().double()
        for key, value in step_sums.items():
            sums[key] = sums[key] + value.detach().double() if key in sums else value.detach().double()
        seen += batch[0].shape[0] * ctx.world_size
        if (i + 1) % log_every == 0 or i + 1 == spe:
            watch.check(ctx, s.epoch, lr, s.last_good)  # the epoch's last step included
            if show:
                shown = task.train_metrics({k: float(v) for k, v in sums.items()})
                bar.update((i + 1) - bar.n)
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{float(loss_sum) / (i + 1):.3f}", img_s=f"{rate:.0f}", refresh=False,
                                **{k.removeprefix("train_"): f"{v:.3f}" for k, v in shown.items()})
        if s.callback is not None:
            s.callback({"event": "step", "epoch": s.epoch + 1, "step": i + 1, "global_step": s.step,
                        "loss": loss.detach(), "model": s.model})
    watch.check(ctx, s.epoch, lr, s.last_good)  # also when a callback ended the epoch early
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    bar.close()
    epoch_time = time.perf_counter() - t0
    keys = sorted(sums)
    reduced = D.all_reduce_sum(torch.stack([loss_sum, *(sums[k] for k in keys)]), ctx)
    return {"epoch": s.epoch + 1, "train_loss": reduced[0].item() / (spe * ctx.world_size),
            **task.train_metrics(dict(zip(keys, reduced[1:].tolist()))), "lr": lr,
            "images_per_s": seen / max(epoch_time, 1e-9), "epoch_time": epoch_time}


def _end_epoch(s: RunState, row: dict) -> None:
    """Check, evaluate, record and checkpoint the epoch just trained."""
    task, ctx, dev, out = s.task, s.ctx, s.device, s.plan.out
    check_weights({"model": s.model.state_dict(), "task_modules": task.modules().state_dict(),
                   "ema": s.ema.state_dict() if s.ema else None}, s.epoch, s.last_good)
    eval_bs = s.plan.run["eval_batch_size"] or 2 * s.plan.recipe.batch_size
    evaluate_ = task.evaluate
    train_cols = {k: row.pop(k) for k in ("lr", "images_per_s", "epoch_time")}
    row |= evaluate_(s.model, s.batches, eval_bs, s.plan.amp_dtype, ctx, dev)
    if s.ema is not None:
        row |= {f"ema_{k}": v for k, v in evaluate_(s.ema.module, s.batches, eval_bs, s.plan.amp_dtype, ctx,
                                                    dev).items()}
    train_time = (s.history[-1]["time"] if s.history else 0.0) + train_cols["epoch_time"]
    row |= {**train_cols, "time": train_time, **_mixing_columns(s.model)}
    check_row(row, s.epoch, s.last_good)
    s.history.append(row)
    s.epoch += 1
    if out is not None and ctx.is_main:
        common = {"epoch": s.epoch, "epochs": s.plan.recipe.epochs, "recipe": s.record,
                  "history": list(s.history), "task_modules": task.modules().state_dict(),
                  "task_state": task.state_dict()}
        save_checkpoint(out / "last.pt", s.model, optimizer=s.optimizer.state_dict(),
                        ema=s.ema.state_dict() if s.ema else None, step=s.step, **common)
        if row[task.best_metric] > s.best:
            s.best = row[task.best_metric]
            save_checkpoint(out / "best.pt", s.model, **common)
        s.history.to_json(out / "history.json")
        s.history.to_csv(out / "history.csv")
        s.last_good = LastGood(out / "last.pt", s.epoch, out)
    elif out is not None:
        s.last_good = LastGood(out / "last.pt", s.epoch, out)
    D.barrier(ctx)
    if s.callback is not None:
        s.callback({"event": "epoch", "epoch": s.epoch, "row": row, "model": s.model})
