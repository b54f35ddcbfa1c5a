"""The training loop: :func:`fit`, read top to bottom. It names no task.

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
NaN/inf at every step (:class:`DivergenceWatch`); nothing non-finite is saved.

Where a caller looks in: ``fit(..., callback=f)`` calls ``f(event)`` with a typed event at three
points: :class:`TrainingStarted` (the folder is claimed, a resumed run loaded, before the first
epoch it trains: ``event.epoch`` epochs are done), :class:`StepDone` (after every optimizer step)
and :class:`EpochDone` (after every epoch, its checkpoint written). Raising :class:`StopTraining`
ends the run there. ``fit(..., watch=images)`` is told of the same three points first (``watching.py``:
every mixer layer's affinities for the probe images kept in the run folder, epoch 0 and after every
epoch, and the live view); its budget is checked before the folder is claimed.

Around the loop, in the files a reader can name: the settings and the task resolved once
(``recipe.py``), checkpoints and resume (``checkpoint.py``), the run folder's safety
(``rundir.py``), the tasks (``tasks/``), the batches on the device (``batches.py``), AdamW with its
schedule and EMA (``optim.py``), DDP (``distributed.py``), the history (``history.py``), watching
(``watching.py``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import model_config, nonfinite_tensors, read_checkpoint, save_checkpoint
from ..inspection.snapshots import DEFAULT_BUDGET_MB
from ..validation import check_choice, check_module, check_positive_int, check_seed
from . import distributed as D
from . import tasks
from .batches import derive_seed
from .checkpoint import LastGood, RunState, load_checkpoint, recipe_differences
from .history import History, mixing_columns
from .optim import ModelEma, WarmupCosine, make_optimizer
from .recipe import Recipe, RunOptions, resolve, run_record
from .rundir import claim_folder, run_config, write_config
from .watching import RunWatch, check_cached, refuse_unwatched_resume


class StopTraining(Exception):
    """Raise it from a ``callback`` to end :func:`fit` early (after the current step or epoch);
    ``fit`` returns the history so far, and the last completed epoch's checkpoint is kept."""


@dataclass(frozen=True)
class TrainingStarted:
    """The run folder is claimed (and a resumed run loaded); the loop is about to train epoch
    ``epoch + 1`` of ``epochs``. ``out`` is the run folder (``None``: nothing is written)."""

    epoch: int
    epochs: int
    model: nn.Module
    out: Path | None


@dataclass(frozen=True)
class StepDone:
    """Optimizer step ``step`` of ``steps`` of epoch ``epoch`` (both 1-based) is done; ``global_step``
    steps in all. ``loss`` is the step's 0-d loss, detached (reading it syncs a GPU)."""

    epoch: int
    step: int
    steps: int
    global_step: int
    loss: torch.Tensor
    model: nn.Module


@dataclass(frozen=True)
class EpochDone:
    """Epoch ``epoch`` (1-based) is done: ``row`` is its history entry; its checkpoint is in ``out``."""

    epoch: int
    row: dict
    model: nn.Module
    out: Path | None


def fit(model: nn.Module, data, recipe: Recipe | None = None, *, task: str | tasks.Task | None = None,
        device="auto", amp="auto", compile: bool | str = False, channels_last: bool = False, out=None,
        resume: bool = False, progress: bool | str = True, eval_batch_size: int | None = None,
        callback: Callable | None = None, run_info: dict | None = None, save_rank_weights: bool = False,
        allow_foreign: bool = False, watch: torch.Tensor | None = None, watch_layers=None,
        watch_budget_mb: float = DEFAULT_BUDGET_MB, live=False, **settings) -> History:
    """Train ``model`` on ``data`` by a :class:`Recipe` (AdamW, warm-up + cosine); return its History.

    ``fit(model, data, Recipe(epochs=4, lr=5e-3))`` and ``fit(model, data, epochs=4, lr=5e-3)`` are
    the same run; keywords given beside a recipe replace its settings, and an option of the task by
    its own name goes to the task (``fit(..., label_smoothing=0.1)``: classification's).

    Args:
        model: the network to train (classification: float ``(B, C, H, W)`` -> ``(B, num_classes)``).
            Should have a ``config`` dict (every ``create_model`` model does): it is stored in
            checkpoints and checked on resume.
        data: an ImageData (kept on the device, augmented there), a FolderData (DataLoaders), or
            what the task takes (its ``check_data`` says what that is).
        recipe: the settings that decide the result (``None``: from the keywords).
        **settings: any :class:`Recipe` setting by name (its defaults, help and checks are there):
            ``epochs`` (required without a recipe), ``batch_size``, ``lr``, ``weight_decay``,
            ``warmup_epochs``, ``warmup_cap``, ``clip_grad``, ``ema``, ``augment``, ``seed``,
            ``max_steps_per_epoch``, ``task``, ``task_options``; or an option of the task by its own
            name (``label_smoothing=0.1``).
        task: what to optimise and measure (:mod:`unifiedctx.train.tasks`): a name (the recipe's
            ``task``) or a Task instance (its name and ``settings()`` are what the run records).
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
        callback: called with :class:`TrainingStarted`, then :class:`StepDone` after every optimizer
            step and :class:`EpochDone` after every epoch (its checkpoint written); raising
            :class:`StopTraining` ends the run.
        run_info: extra JSON-serialisable facts stored in ``out/config.json``.
        save_rank_weights: every rank writes its final weights to ``out/rank{r}.pt`` (DDP checks).
        allow_foreign: train into an ``out`` that holds files other than this run's own (a run
            owns its folder: otherwise such a folder is a ``FileExistsError``; see ``rundir.py``).
        watch: a few probe images ``(B, C, H, W)`` as the model takes them: every mixer layer's
            affinities for them are stored in ``out`` at epoch 0 (before the first step) and after
            every epoch (``AffinityExplorer.from_run(out)`` scrubs them; see ``watching.py``).
            Watching changes nothing of the training. A run folder that holds snapshots resumes
            only with ``watch`` (the same images).
        watch_layers: the layers to watch (module names or ``fnmatch`` patterns; ``None``: every
            layer with an affinity).
        watch_budget_mb: the largest size of the snapshots (uncompressed, every epoch and the probe
            images), checked before anything is written: a ``ValueError`` says what would fit.
        live: ``True`` shows a :class:`~unifiedctx.widgets.LiveView` of the watched images in the
            notebook, updated while the cell trains (curves every ``max(1, steps // 4)`` steps, the
            maps after every epoch, and within an epoch where that costs at most 1 % of the time);
            a LiveView of your own is updated instead (display it yourself). Needs ``watch``.

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
    check_module("model", model)
    recipe, task = resolve(recipe, task, settings)  # the one Task of this run
    run = RunOptions(device=device, amp=amp, compile=compile, channels_last=channels_last, out=out,
                     resume=resume, progress=progress, eval_batch_size=eval_batch_size, callback=callback,
                     run_info=run_info, save_rank_weights=save_rank_weights, allow_foreign=allow_foreign,
                     watch=watch, watch_layers=watch_layers, watch_budget_mb=watch_budget_mb, live=live)
    ctx = D.setup(run.torch_device.type)  # one process, or this rank of torchrun's
    cuda_rank = run.torch_device.type == "cuda" and ctx.active
    device = torch.device("cuda", ctx.local_rank) if cuda_rank else run.torch_device
    history = History()
    try:
        # 1. Everything is checked before a file is written: the data, the model against it, the task.
        prepare(model, data, task, device, run.memory_format)
        net = task.network(model)
        check_network(task, model, net)
        batches = task.batches(data, recipe.batch_size, device, seed=recipe.seed, augment=recipe.augment,
                               rank=ctx.rank, world_size=ctx.world_size, channels_last=run.channels_last)
        steps = min(batches.steps_per_epoch, recipe.max_steps_per_epoch or batches.steps_per_epoch)
        if steps == 0:
            raise ValueError("the training split gives no full batch: lower batch_size or use more data")
        state = RunState(model, task, net, batches, steps,
                         optimizer=make_optimizer(net, recipe.lr, recipe.weight_decay, device),
                         schedule=WarmupCosine(recipe.lr, recipe.epochs * steps, recipe.warmup_steps(steps)),
                         ema=ModelEma(model, recipe.ema) if recipe.ema else None, history=history,
                         last_good=LastGood(out=run.folder))
        record = run_record(recipe, task, run, data, ctx.world_size)
        config = run_config(model, data, record, run, device)
        # watching: the probe checked, epoch 0's snapshot taken and the budget checked now
        watcher = None if run.watch is None else RunWatch.plan(model, data_shape(data), run, recipe.epochs,
                                                                 history, ctx.is_main)

        # 2. The run folder: ours and locked while we train; a resumed run continues from its last.pt.
        with claim_folder(run.folder, ctx, device, config, resume=run.resume,
                          allow_foreign=run.allow_foreign) as last:
            if last is not None:
                state.resume(last, record, device)
            if watcher is None:
                refuse_unwatched_resume(run.folder, state.epoch, recipe.epochs)
            write_config(run.folder, ctx, config)

            # 3. The epochs: train, evaluate, record, checkpoint.
            trained = net
            if ctx.active:
                ranks_device = [device.index] if cuda_rank else None
                trained = nn.parallel.DistributedDataParallel(net, device_ids=ranks_device)
            if run.compiled:
                trained = torch.compile(trained)
            if watcher is not None:
                watcher.started(state.epoch, model, run.folder)  # the snapshots begin, or resume exactly
            if run.callback is not None:
                run.callback(TrainingStarted(state.epoch, recipe.epochs, model, run.folder))
            while state.epoch < recipe.epochs:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(derive_seed(recipe.seed, state.epoch, 2))  # dropout, drop-path, task
                    row, speed = train_one_epoch(state, trained, recipe, run, ctx, device, watcher)
                weights = {"model": model.state_dict(), "task_modules": task.modules().state_dict(),
                           "ema": state.ema.state_dict() if state.ema else None}
                check_weights(weights, state.epoch, state.last_good)
                test_batch = run.eval_batch_size or 2 * recipe.batch_size
                row |= task.evaluate(model, batches, test_batch, run.amp_dtype, ctx, device)
                if state.ema is not None:
                    ema_row = task.evaluate(state.ema.module, batches, test_batch, run.amp_dtype, ctx, device)
                    row |= {f"ema_{k}": v for k, v in ema_row.items()}
                seconds = (history[-1]["time"] if history else 0.0) + speed["epoch_time"]
                row |= {**speed, "time": seconds, **mixing_columns(model)}
                check_row(row, state.epoch, state.last_good)
                history.append(row)
                state.epoch += 1
                state.save(run.folder, recipe.epochs, record, ctx.is_main)
                D.barrier(ctx)
                if run.progress == "epoch" and ctx.is_main:
                    print(epoch_line(row, recipe.epochs, task.best_metric, model_label(model)), flush=True)
                if watcher is not None:
                    watcher.epoch_done(state.epoch, row, model)  # its snapshot stored and shown
                if run.callback is not None:
                    run.callback(EpochDone(state.epoch, row, model, run.folder))
            if run.save_rank_weights and run.folder is not None:
                save_checkpoint(run.folder / f"rank{ctx.rank}.pt", model, rank=ctx.rank)
    except StopTraining:
        pass
    finally:
        D.cleanup(ctx)
    return history


def train_one_epoch(state: RunState, net: nn.Module, recipe: Recipe, run: RunOptions, ctx: D.DistContext,
                    device: torch.device, watcher: RunWatch | None = None) -> tuple[dict, dict]:
    """One epoch of optimizer steps on ``net`` (``state.net``, or its DDP/compiled wrapper); the
    ``watcher`` (``fit(..., watch=...)``) and the caller's callback hear of every step.

    Returns the epoch's training columns (``epoch``, ``train_loss``, the task's training metrics, summed
    over the ranks) and its speed (``lr`` at its last step, ``images_per_s``, ``epoch_time``)."""
    task, model, spe = state.task, state.model, state.steps_per_epoch
    state.net.train()
    params = [p for p in state.net.parameters() if p.requires_grad]
    bar = StepBar(run.progress is True and ctx.is_main, spe,
                  f"{model_label(model)} epoch {state.epoch + 1}/{recipe.epochs}")
    log_every = 1 if device.type == "cpu" else 25  # a host sync per step costs nothing on a CPU
    watch = DivergenceWatch(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    seen, t0, lr = 0, time.perf_counter(), 0.0
    for i, batch in enumerate(state.batches.epoch(state.epoch, spe)):
        lr = state.schedule.apply(state.optimizer, state.step)
        with tasks.autocast_context(device, run.amp_dtype):
            loss, step_sums = task.loss(net, batch)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = recipe.clip_grad
        norm = nn.utils.clip_grad_norm_(params, clip) if clip is not None else grad_norm(params)
        state.optimizer.step()
        task.after_step(model, state.step, recipe.epochs * spe)
        if state.ema is not None:
            state.ema.update(model)
        state.step += 1

        watch.observe(i, loss=loss, grad_norm=norm, weight_max=max_abs(params))
        loss_sum += loss.detach().double()
        for key, value in step_sums.items():
            sums[key] = sums[key] + value.detach().double() if key in sums else value.detach().double()
        seen += batch[0].shape[0] * ctx.world_size
        if (i + 1) % log_every == 0 or i + 1 == spe:
            watch.check(ctx, state.epoch, lr, state.last_good)  # the epoch's last step included
            if bar.show:
                bar.update(i + 1, float(loss_sum) / (i + 1), seen,
                           task.train_metrics({k: float(v) for k, v in sums.items()}))
        if watcher is not None:
            watcher.step(state.epoch + 1, i + 1, spe, loss.detach(), model)  # the live view's curves
        if run.callback is not None:
            run.callback(StepDone(state.epoch + 1, i + 1, spe, state.step, loss.detach(), model))
    watch.check(ctx, state.epoch, lr, state.last_good)  # also when a callback ended the epoch early
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    bar.close()
    epoch_time = time.perf_counter() - t0
    keys = sorted(sums)
    reduced = D.all_reduce_sum(torch.stack([loss_sum, *(sums[k] for k in keys)]), ctx)
    row = {"epoch": state.epoch + 1, "train_loss": reduced[0].item() / (spe * ctx.world_size),
           **task.train_metrics(dict(zip(keys, reduced[1:].tolist())))}
    return row, {"lr": lr, "images_per_s": seen / max(epoch_time, 1e-9), "epoch_time": epoch_time}


# ---------------------------------------------------------------------------------- around fit
def evaluate(model: nn.Module, data, batch_size: int = 256, device="auto", amp="auto",
             channels_last: bool = False, task: str | tasks.Task | None = None) -> dict:
    """Test-split metrics of ``model`` for ``task`` (one process, no smoothing or augmentation).

    Args:
        model: the trained network (classification: ``(B, C, H, W)`` -> ``(B, num_classes)`` logits).
        data: the data set the task takes (an ImageData, a FolderData, a SegmentationData).
        batch_size: images per forward pass.
        device, amp, channels_last: as in :func:`fit`.
        task: the task the model was trained for (a name or a Task; ``None``: classification).

    Returns:
        the numeric test metrics of ``task.evaluate`` (the history's test columns), or what the
        task's ``public_metrics`` makes of them (classification: ``{"loss": mean CE, "acc": in [0, 1]}``).
    """
    check_module("model", model)
    check_positive_int("batch_size", batch_size)
    run = RunOptions(device=device, amp=amp, channels_last=channels_last)
    task = tasks.create(task)
    prepare(model, data, task, run.torch_device)
    # a training batch of 1: only the test batches are used, and any training split has one
    batches = task.batches(data, 1, run.torch_device, seed=0, augment=False, rank=0, world_size=1,
                           channels_last=run.channels_last)
    metrics = task.evaluate(model, batches, batch_size, run.amp_dtype, D.DistContext(), run.torch_device)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    public = getattr(task, "public_metrics", None)
    return public(metrics) if public is not None else metrics


#: What :func:`build_model` reads from a data set to size a model.
SIZING = ("num_classes", "image_size", "channels")


def build_model(model_name: str, data, seed: int = 0, *, task: str | tasks.Task | None = None,
                **overrides) -> nn.Module:
    """The one way to build a model for a data set: ``model_name`` as ``task`` trains it, sized for
    ``data``, its weights drawn from ``torch.manual_seed(seed)`` (the global RNG is left as it was).

    The task says what it builds (:meth:`Task.build`: ``create_model``; segment: a Segmenter, or
    the U-Net as ``"unet"``) and how a data set sizes it (:meth:`Task.model_options`: its classes,
    image size and channels; count: ``max_count + 1`` outputs; dino: no classifier);
    ``overrides`` replace or add builder arguments (``drop_path=0.1``; segment: ``width=32``).

    Args:
        model_name: a preset the task builds (``Task.presets()``: :func:`unifiedctx.models.list_models`).
        data: a data set of :func:`unifiedctx.data.load` (``num_classes``, ``image_size``, ``channels``).
        seed: the seed of the initial weights, in ``[0, 2**63 - 1]``.
        task: a task name or a Task (``None``: classification).
    """
    task = tasks.create(task)
    check_choice("model_name", model_name, task.presets())
    missing = [a for a in SIZING if not hasattr(data, a)]
    if missing:
        shown = f"{type(data).__name__} {data!r}"[:120]
        raise TypeError(f"data must be a data set from unifiedctx.data.load (ImageData, FolderData, "
                        f"SegmentationData) with {', '.join(SIZING)}; got {shown}, which has no "
                        f"{', '.join(missing)}")
    check_seed("seed", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.build(model_name, **{**task.model_options(data), **overrides})


def train_or_load(model_name: str, data, out, recipe: Recipe | None = None, *,
                  model_options: dict | None = None, **fit_kwargs) -> tuple[nn.Module, History]:
    """Return ``(model, history)`` for ``model_name`` trained on ``data`` by ``recipe``.

    If ``out/last.pt`` holds this very run (same architecture, and the same recipe: every
    setting that changes the result, ``amp``, memory format, compile, the task and the data's
    name, options and fingerprint) with all ``recipe.epochs`` epochs done, the model is rebuilt
    from it and nothing is trained; otherwise the run starts (or resumes exactly, from the last
    completed epoch). A checkpoint in ``out`` made for another architecture or with other
    settings is a ``ValueError`` that lists the differences.

    Args:
        model_name: a preset of :func:`build_model` (the task's).
        data: the dataset (ImageData, FolderData, SegmentationData).
        out: the run's folder.
        recipe: a :class:`Recipe`; recipe settings may also (or instead) be given as keywords.
        model_options: extra model arguments (``num_classes``, ``img_size`` and ``in_chans`` come
            from ``data``; see :func:`build_model`).
        **fit_kwargs: recipe settings (``epochs=...``), ``task=`` and the other arguments of :func:`fit`.
    """
    if model_options is not None and not isinstance(model_options, dict):
        raise TypeError(f"model_options must be a dict or None, got {type(model_options).__name__}")
    if not isinstance(out, (str, os.PathLike)) or isinstance(out, bool):
        raise TypeError(f"out must be a folder path (str or os.PathLike), got {type(out).__name__} {out!r}")
    run_kwargs = {k: v for k, v in fit_kwargs.items()
                  if k in RunOptions.keys() and k not in ("out", "resume")}
    settings = {k: v for k, v in fit_kwargs.items() if k not in RunOptions.keys() and k != "task"}
    recipe, task = resolve(recipe, fit_kwargs.get("task"), settings)  # the one Task of the run
    run = RunOptions(**run_kwargs, out=out, resume=True)
    model = build_model(model_name, data, recipe.seed, task=task, **(model_options or {}))
    last = run.folder / "last.pt"
    if last.exists():
        state = read_checkpoint(last)
        if state.get("epoch", 0) >= recipe.epochs and state.get("epochs") == recipe.epochs:
            wanted = run_record(recipe, task, run, data, int(os.environ.get("WORLD_SIZE", "1")))
            diff = recipe_differences(state.get("recipe") or {}, wanted, "in the cached run")
            if diff:
                raise ValueError(f"the cached run in {out} was trained with other settings "
                                 f"({'; '.join(diff)}): use the same settings, or another folder "
                                 "(or delete it) to train anew")
            if run.watch is not None:
                check_cached(run.folder, run.watch, recipe.epochs)
            model, state = load_checkpoint(last, model)
            return model, History(state["history"])
    return model, fit(model, data, recipe, task=task, out=out, resume=True, **run_kwargs)


# ------------------------------------------------------------------------------ before anything is written
def data_shape(data) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the data's images, or ``None`` when the data does not say."""
    x = getattr(data, "train_x", None)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return tuple(int(n) for n in x.shape[1:])
    channels, size = getattr(data, "channels", None), getattr(data, "image_size", None)
    if isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2:
        return channels, int(size[0]), int(size[1])
    return None


@torch.no_grad()
def check_model_takes_data(model: nn.Module, data, device: torch.device) -> None:
    """The model's dtype, channels and image size against the data's, by its config and one
    forward pass of a zero image ``(1, C, H, W)`` in eval mode (RNG, mode and statistics untouched)."""
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if floats and floats[0] != torch.float32:
        raise TypeError(f"the model's parameters are {floats[0]}, but fit feeds it float32 images "
                        "(autocast does the rest): call model.float() first")
    shape = data_shape(data)
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


def prepare(model: nn.Module, data, task: tasks.Task, device: torch.device,
            fmt=torch.contiguous_format) -> None:
    """Everything checked before a run folder is made, in order: ``task.check_data(data)``; the model
    to the device; the model against the data's images (:func:`check_model_takes_data`);
    ``task.setup(model, data, device)`` (the task's own checks, its modules built); those modules to
    the device."""
    task.check_data(data)
    model.to(device, memory_format=fmt)
    check_model_takes_data(model, data, device)
    task.setup(model, data, device)
    task.modules().to(device)


def check_network(task: tasks.Task, model: nn.Module, net: nn.Module) -> None:
    """``net = task.network(model)`` must hold every parameter of the model and of ``task.modules()``
    (they are what DDP wraps and the optimizer steps); ``ValueError`` otherwise."""
    inside = {id(q) for q in net.parameters()}
    if any(id(q) not in inside for q in [*model.parameters(), *task.modules().parameters()]):
        raise ValueError(f"task {task.name!r}: network(model) must hold the model and every module of "
                         "modules() (they are what DDP wraps and the optimizer steps)")


# ---------------------------------------------------------------------------------- what a run shows
def model_label(model: nn.Module) -> str:
    """The name a run's progress lines give its model: the preset it was built from
    (``container_light_nano``; a segmenter: ``container_light_nano segmenter``; ``unet``), else its class."""
    config = model_config(model) or {}
    backbone = config.get("backbone")
    if isinstance(backbone, dict) and isinstance(backbone.get("preset"), str):
        return f"{backbone['preset']} segmenter"
    if isinstance(config.get("preset"), str):
        return config["preset"]
    return "unet" if set(config) == {"unet"} else type(model).__name__


def epoch_line(row: dict, epochs: int, metric: str, label: str | None = None) -> str:
    """``fit(progress="epoch")``: one compact line per epoch, led by the model's ``label`` (so a line
    says which run it is about while that run is still going), then the epoch, loss, the task's metric
    and seconds: ``container_light_nano  epoch 1/4  train_loss 1.2345  test_acc 0.6120  3.1s``."""
    lead = f"{label}  " if label else ""
    return (f"{lead}epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
            f"{metric} {row.get(metric, float('nan')):.4f}  {row['epoch_time']:.1f}s")


class StepBar:
    """``fit(progress=True)``: a tqdm bar over the ``steps`` of one epoch (disabled unless ``show``)."""

    def __init__(self, show: bool, steps: int, desc: str):
        from tqdm.auto import tqdm

        self.show, self.t0 = show, time.perf_counter()
        self.bar = tqdm(total=steps, desc=desc, disable=not show, dynamic_ncols=True)

    def update(self, done: int, mean_loss: float, seen: int, metrics: dict[str, float]) -> None:
        """``done`` steps taken, ``seen`` images so far (all ranks), the task's training metrics."""
        if not self.show:
            return
        self.bar.update(done - self.bar.n)
        rate = seen / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{rate:.0f}", refresh=False,
                             **{k.removeprefix("train_"): f"{v:.3f}" for k, v in metrics.items()})

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------- non-finite means stop
class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; nothing non-finite was saved,
    and the message names the epoch, the step and the last good checkpoint (or says there is none)."""


def max_abs(tensors) -> torch.Tensor:
    """``max_t ||t||_inf`` as a 0-d float32 tensor on the tensors' device (NaN if any is NaN)."""
    tensors = [t.detach() for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros(())
    return torch.stack([n.float() for n in torch._foreach_norm(tensors, float("inf"))]).max()


def grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the gradients of ``params`` (0-d; zero when none has a gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, 2.0)


class DivergenceWatch:
    """Device-side record of the first non-finite loss, gradient norm or weight of an epoch.

    Every step feeds ``loss``, ``||g||_2`` and ``max_p ||p||_inf`` without a host sync; :meth:`check`
    (at the logging points, the epoch's last step included) brings the first bad one to the host and
    raises :class:`TrainingDiverged` naming the epoch, the step and the last good checkpoint."""

    WHAT = {1: "the loss", 2: "the gradient norm", 3: "the largest weight"}

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.int64, device=device)  # step index (0-based)
        self.what = torch.zeros((), dtype=torch.int64, device=device)
        self.value = torch.zeros((), dtype=torch.float64, device=device)
        self.device = device

    def observe(self, step: int, *, loss: torch.Tensor, grad_norm: torch.Tensor,
                weight_max: torch.Tensor) -> None:
        """Record step ``step`` (0-based in the epoch): no host sync."""
        for code, value in ((1, loss), (2, grad_norm), (3, weight_max)):
            value = value.detach().to(self.device, torch.float64).reshape(())
            new = ~torch.isfinite(value) & (self.first < 0)
            self.first = torch.where(new, step, self.first)
            self.what = torch.where(new, code, self.what)
            self.value = torch.where(new, value, self.value)

    def check(self, ctx: D.DistContext, epoch: int, lr: float, last_good: LastGood) -> None:
        """Raise :class:`TrainingDiverged` if any step (on any rank) so far was non-finite."""
        flag = (self.first >= 0).to(torch.float64).reshape(1)
        D.all_reduce_sum(flag, ctx)  # every rank stops at the same check
        if flag.item() == 0:
            return
        first = int(self.first)
        if first < 0:
            raise TrainingDiverged(f"training diverged on another process in epoch {epoch + 1} "
                                   f"(lr {lr:.3g}); training stopped and {last_good.describe()}.")
        what, value = self.WHAT[int(self.what)], float(self.value)
        raise TrainingDiverged(f"{what} became {value} at epoch {epoch + 1}, step {first + 1} (lr {lr:.3g}); "
                               f"training stopped and {last_good.describe()}. "
                               "Try a lower lr, clip_grad=1.0 or a longer warmup.")


def check_row(row: dict, epoch: int, last_good: LastGood) -> None:
    """Raise :class:`TrainingDiverged` when a loss column of the epoch's history row is not finite."""
    bad = {k: v for k, v in row.items() if "loss" in k and isinstance(v, float) and not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise TrainingDiverged(f"{shown} after epoch {epoch + 1}: the model gives non-finite outputs; "
                               f"training stopped and {last_good.describe()}.")


def check_weights(state: dict, epoch: int, last_good: LastGood) -> None:
    """Raise :class:`TrainingDiverged` when a tensor of ``state`` (weights, EMA, ...) is not finite:
    checked before anything is saved, once per epoch."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainingDiverged(f"{shown} became non-finite in epoch {epoch + 1}; training stopped, nothing "
                               f"was saved, and {last_good.describe()}.")
