"""The training loop: :func:`fit`. It names no task.

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

Around the loop, each in a module of its own: the arguments and their docs (``run.py``), the model
and data checks (``checks.py``), the folder claim (``claim.py``), the progress bars
(``progress.py``), :func:`evaluate` (``evaluation.py``), the run state with its saving and
resuming (``state.py``); each re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from ..validation import check_module
from . import distributed as D
from .batches import derive_seed
from .checkpoint import save_checkpoint
from .checks import check_model_takes_data as _check_model_takes_data  # noqa: F401  (its old import path)
from .checks import check_network, prepare
from .claim import claim_folder, write_config
from .evaluation import evaluate
from .finite import DivergenceWatch, LastGood, TrainingDiverged, check_row, check_weights, grad_norm, max_abs
from .history import History
from .optim import ModelEma, WarmupCosine, make_optimizer
from .progress import StepBar, epoch_lines
from .recipe import Recipe
from .run import FIT_ARGUMENTS, PROGRESS, Plan, plan, recipe_doc, resolve_amp, resolve_device, run_recipe
from .run import FIT_RUN_ARGS as _FIT_RUN_ARGS
from .run import recipe_and_task as recipe_and_task
from .state import RunState
from .tasks import Task, autocast_context

#: Settings beside the recipe that change the trained weights; recorded and compared on resume too.
RUN_KEYS = ("amp", "channels_last", "compile", "task", "data")

__all__ = ["PROGRESS", "Recipe", "StopTraining", "TrainingDiverged", "evaluate", "fit", "resolve_amp",
           "resolve_device", "run_recipe"]


class StopTraining(Exception):
    """Raise it from a ``callback`` to end :func:`fit` early (after the current step or epoch);
    ``fit`` returns the history so far, and the last completed epoch's checkpoint is kept."""


def fit(model: nn.Module, data, recipe: Recipe | None = None, *, task: str | Task | None = None,
        device="auto", amp="auto", compile: bool | str = False, channels_last: bool = False, out=None,
        resume: bool = False, progress: bool | str = True, eval_batch_size: int | None = None,
        callback: Callable[[dict], None] | None = None, run_info: dict | None = None,
        save_rank_weights: bool = False, allow_foreign: bool = False, **settings) -> History:
    """Train ``model`` on ``data`` by a :class:`Recipe` (AdamW, warm-up + cosine); return its History.

    ``fit(model, data, Recipe(epochs=4, lr=5e-3))`` and ``fit(model, data, epochs=4, lr=5e-3)`` are
    the same run; keywords given beside a recipe replace its settings, and an option of the task by
    its own name goes to the task (``fit(..., label_smoothing=0.1)``: classification's).
    {arguments}"""
    run = {k: v for k, v in locals().items() if k in _FIT_RUN_ARGS and k != "task"}
    return fit_plan(model, data, plan(recipe, task, settings, run))


if fit.__doc__:  # (python -OO strips docstrings); the arguments are documented in run.py
    fit.__doc__ = fit.__doc__.replace("{arguments}", FIT_ARGUMENTS.replace("{recipe_settings}", recipe_doc()))


def _mixing_columns(model: nn.Module) -> dict:
    """``{"mixing": {layer: {name: value}}}`` for the mixers that have a knob (``{}`` if none)."""
    from unifiedctx.models import mixing_weights

    weights = mixing_weights(model)
    return {"mixing": {name: dict(w) for name, w in weights.items()}} if weights else {}


def fit_plan(model: nn.Module, data, p: Plan) -> History:
    """:func:`fit` of a resolved :class:`Plan`: check, claim the folder, resume, train."""
    check_module("model", model)
    ctx = D.setup(p.device.type)
    dev = torch.device("cuda", ctx.local_rank) if p.device.type == "cuda" and ctx.active else p.device
    state = None
    try:
        state = _start(model, data, p, ctx, dev)
        with claim_folder(p.out, ctx, dev, state.info, resume=p.run["resume"],
                          allow_foreign=p.run["allow_foreign"]) as last:
            if last is not None:
                state.resume(last)
            write_config(p.out, ctx, state.info)
            _train(state)
    except StopTraining:
        pass
    finally:
        D.cleanup(ctx)
    return state.history if state is not None else History()


def _start(model: nn.Module, data, p: Plan, ctx: D.DistContext, dev: torch.device) -> RunState:
    """Every check, then the network, batches, optimizer, schedule and EMA (nothing written yet)."""
    fmt = torch.channels_last if p.run["channels_last"] else torch.contiguous_format
    prepare(model, data, p.task, dev, fmt)
    net = p.task.network(model)
    check_network(p.task, model, net)
    recipe = p.recipe
    batches = p.task.batches(data, recipe.batch_size, dev, seed=recipe.seed, augment=recipe.augment,
                             rank=ctx.rank, world_size=ctx.world_size, channels_last=p.run["channels_last"])
    spe = batches.steps_per_epoch
    if recipe.max_steps_per_epoch is not None:
        spe = min(spe, recipe.max_steps_per_epoch)
    if spe == 0:
        raise ValueError("the training split gives no full batch: lower batch_size or use more data")
    record = p.record(data, ctx.world_size)
    callback = p.run["callback"]
    if p.run["progress"] == "epoch" and ctx.is_main:
        callback = epoch_lines(callback, recipe.epochs, p.task.best_metric)
    return RunState(p, ctx, dev, model, net, batches, spe,
                    make_optimizer(net, recipe.lr, recipe.weight_decay, dev),
                    WarmupCosine(recipe.lr, recipe.epochs * spe, recipe.warmup_steps(spe)),
                    ModelEma(model, recipe.ema) if recipe.ema else None, record,
                    p.config(model, data, dev, record), callback, last_good=LastGood(out=p.out))


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
    if s.plan.run["save_rank_weights"] and s.plan.out is not None:
        save_checkpoint(s.plan.out / f"rank{s.ctx.rank}.pt", s.model, rank=s.ctx.rank)


def _train_epoch(s: RunState, net: nn.Module) -> dict:
    """One epoch of steps; the row's training columns (loss, the task's sums, lr, time)."""
    task, recipe, dev, ctx, spe = s.task, s.plan.recipe, s.device, s.ctx, s.steps_per_epoch
    s.net.train()
    params = [q for q in s.net.parameters() if q.requires_grad]
    bar = StepBar(s.plan.run["progress"] is True and ctx.is_main, spe, f"epoch {s.epoch + 1}/{recipe.epochs}")
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
            if bar.show:
                bar.update(i + 1, float(loss_sum) / (i + 1), seen,
                           task.train_metrics({k: float(v) for k, v in sums.items()}))
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
    task, ctx, dev = s.task, s.ctx, s.device
    check_weights({"model": s.model.state_dict(), "task_modules": task.modules().state_dict(),
                   "ema": s.ema.state_dict() if s.ema else None}, s.epoch, s.last_good)
    eval_bs = s.plan.run["eval_batch_size"] or 2 * s.plan.recipe.batch_size
    train_cols = {k: row.pop(k) for k in ("lr", "images_per_s", "epoch_time")}
    row |= task.evaluate(s.model, s.batches, eval_bs, s.plan.amp_dtype, ctx, dev)
    if s.ema is not None:
        ema_row = task.evaluate(s.ema.module, s.batches, eval_bs, s.plan.amp_dtype, ctx, dev)
        row |= {f"ema_{k}": v for k, v in ema_row.items()}
    train_time = (s.history[-1]["time"] if s.history else 0.0) + train_cols["epoch_time"]
    row |= {**train_cols, "time": train_time, **_mixing_columns(s.model)}
    check_row(row, s.epoch, s.last_good)
    s.history.append(row)
    s.epoch += 1
    s.save(row)
    D.barrier(ctx)
    if s.callback is not None:
        s.callback({"event": "epoch", "epoch": s.epoch, "row": row, "model": s.model})
