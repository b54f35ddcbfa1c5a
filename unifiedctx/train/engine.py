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

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from . import distributed as D
from .batches import DeviceBatches, derive_seed, make_batches
from .checkpoint import check_config, model_config, read_checkpoint, save_checkpoint
from .history import History, write_atomic
from .optim import ModelEma, WarmupCosine, make_optimizer
from .tasks import Task, autocast_context, evaluate_classifier
from .tasks import create as create_task

#: fit settings that decide the trained weights; a resumed run must use the same ones.
RECIPE_KEYS = ("epochs", "batch_size", "world_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing",
               "clip_grad", "ema", "mixup", "cutmix", "augment", "seed", "max_steps_per_epoch")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class StopTraining(Exception):
    """Raise it from a ``callback`` to end :func:`fit` early (after the current step or epoch);
    ``fit`` returns the history so far, and the last completed epoch's checkpoint is kept."""


# ---------------------------------------------------------------------------------- settings
def resolve_device(device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA, but torch sees no GPU (use 'cpu' or 'auto')")
    return dev


def resolve_amp(amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``"auto"`` -> bfloat16 on CUDA, none on CPU; ``"bf16"``; ``"off"``."""
    if amp in ("auto", None) and device.type == "cuda":
        return torch.bfloat16
    if amp in ("auto", None, "off", False, "fp32"):
        return None
    if amp in ("bf16", "bfloat16", True):
        return torch.bfloat16
    raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")


def _check(name: str, value, kind: type | tuple, *, low=None, high=None, low_open=False, none_ok=False):
    if value is None and none_ok:
        return
    ok_types = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        names = " or ".join(t.__name__ for t in ok_types) + (" or None" if none_ok else "")
        raise TypeError(f"{name} must be {names}, got {type(value).__name__} {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"{name} must be < {high}, got {value}")


def _check_fit_args(a: dict) -> None:
    num = (int, float)
    _check("epochs", a["epochs"], int, low=0, low_open=True)
    _check("batch_size", a["batch_size"], int, low=0, low_open=True)
    _check("lr", a["lr"], num, low=0, low_open=True)
    _check("weight_decay", a["weight_decay"], num, low=0)
    _check("warmup_epochs", a["warmup_epochs"], num, low=0)
    _check("label_smoothing", a["label_smoothing"], num, low=0, high=1)
    _check("clip_grad", a["clip_grad"], num, low=0, low_open=True, none_ok=True)
    _check("ema", a["ema"], float, low=0, high=1, low_open=True, none_ok=True)
    _check("mixup", a["mixup"], num, low=0)
    _check("cutmix", a["cutmix"], num, low=0)
    _check("seed", a["seed"], int, low=0)
    _check("max_steps_per_epoch", a["max_steps_per_epoch"], int, low=0, low_open=True, none_ok=True)
    _check("eval_batch_size", a["eval_batch_size"], int, low=0, low_open=True, none_ok=True)


# ---------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, data, batch_size: int = 256, device="auto", amp="auto",
             channels_last: bool = False) -> dict:
    """Test-split loss (mean cross-entropy, no smoothing) and accuracy (fraction in [0, 1]).

    Args:
        model: maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits.
        data: an ImageData (test images normalised with ``data.mean``/``data.std``) or a FolderData.
        batch_size: images per forward pass.
        device, amp, channels_last: as in :func:`fit`.

    Returns:
        ``{"loss": float, "acc": float}``.
    """
    _check("batch_size", batch_size, int, low=0, low_open=True)
    dev = resolve_device(device)
    model.to(dev)
    opts = {"channels_last": channels_last}
    if hasattr(data, "train_x"):
        batches = DeviceBatches(data, 1, dev, augment=False, train=False, **opts)
    else:
        batches = make_batches(data, batch_size, dev, **opts)
    amp_dtype = resolve_amp(amp, dev)
    result = evaluate_classifier(model, batches.test_batches(batch_size), amp_dtype, D.DistContext(), dev)
    return {"loss": result["test_loss"], "acc": result["test_acc"]}


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


# ---------------------------------------------------------------------------------- fit
def _resume_state(path: Path, model: nn.Module, recipe: dict) -> dict:
    state = read_checkpoint(path)
    check_config(state.get("model_config"), model_config(model), f"checkpoint {path}")
    stored = state.get("recipe", {})
    stored = {"task": {"name": "classify", "settings": {"label_smoothing": stored.get("label_smoothing")}},
              **stored}  # checkpoints from before tasks were classification runs
    diff = [f"{k}: {stored.get(k)!r} in the checkpoint, {recipe[k]!r} now" for k in recipe
            if stored.get(k) != recipe[k]]
    if diff:
        raise ValueError(f"cannot resume {path} exactly with other settings ({'; '.join(diff)}); "
                         "use the same settings or another output folder")
    return state


def fit(model: nn.Module, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
        weight_decay: float = 0.05, warmup_epochs: float = 1, label_smoothing: float = 0.0,
        clip_grad: float | None = None, ema: float | None = None, mixup: float = 0.0, cutmix: float = 0.0,
        augment: bool = True, task: str | Task | None = None, device="auto", amp="auto",
        compile: bool | str = False,
        channels_last: bool = False, out=None, resume: bool = False, seed: int = 0, progress: bool = True,
        eval_batch_size: int | None = None, max_steps_per_epoch: int | None = None,
        callback: Callable[[dict], None] | None = None, run_info: dict | None = None,
        save_rank_weights: bool = False) -> History:
    """Train ``model`` on ``data`` with AdamW and a warmup + cosine schedule; return its History.

    Args:
        model: maps float ``(B, C, H, W)`` to ``(B, num_classes)`` logits. Should have a ``config``
            dict (every ``create_model`` model does): it is stored in checkpoints and checked on resume.
        data: an ImageData (kept on the device, augmented there) or a FolderData (DataLoaders).
        epochs: passes over the training split (each drops its last partial global batch).
        batch_size: images per step *per process*; under DDP the global batch is
            ``batch_size * world_size``.
        lr, weight_decay: AdamW peak learning rate and decoupled weight decay (none on norms, biases).
        warmup_epochs: linear warmup length (may be fractional), then cosine decay to 0.
        label_smoothing: ``eps`` in ``q = (1 - eps) t + eps / K``.
        clip_grad: clip the global gradient norm to this value (``None``: no clipping).
        ema: decay of an exponential moving average of the weights (``None``: off); its test
            metrics are logged as ``ema_test_loss``/``ema_test_acc``.
        mixup, cutmix: Beta(a, a) parameters for mixup / cutmix (0: off).
        augment: random crop with padding and horizontal flip (ImageData only).
        task: what to optimise and measure (:mod:`unifiedctx.train.tasks`): ``None`` or
            ``"classify"`` (with ``label_smoothing``), ``"segment"``, ``"dino"``, or a Task instance.
        device: ``"auto"`` (CUDA if present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: ``"auto"`` (bf16 autocast on CUDA, off on CPU), ``"bf16"`` or ``"off"``.
        compile: ``torch.compile`` the model; ``"auto"`` compiles on CUDA only.
        channels_last: model and batches in ``channels_last`` memory format.
        out: folder for ``last.pt`` (every epoch), ``best.pt``, ``history.json``/``.csv`` and
            ``config.json``; ``None`` writes nothing.
        resume: continue from ``out/last.pt`` if it exists (same settings required); without it an
            existing ``out/last.pt`` is a ``FileExistsError``.
        seed: data order, augmentation, dropout: all derive from ``(seed, epoch, step)``.
        progress: tqdm bars (rank 0 only) with loss, accuracy and images/s.
        eval_batch_size: test batch size (default ``2 * batch_size``).
        max_steps_per_epoch: cut each epoch short (smoke runs, benchmarks).
        callback: called after every optimizer step with a dict ``event="step"``, ``epoch``
            (1-based), ``step`` (1-based in the epoch), ``global_step``, ``loss`` (a 0-d tensor),
            ``model``; and after every epoch (checkpoint written) with ``event="epoch"``, ``epoch``,
            ``row`` (the history entry), ``model``. Raising :class:`StopTraining` ends the run.
        run_info: extra JSON-serialisable facts stored in ``out/config.json``.
        save_rank_weights: every rank writes its final weights to ``out/rank{r}.pt`` (DDP checks).

    Returns:
        :class:`History`, one dict per epoch (see :mod:`unifiedctx.train.history`).

    Raises:
        TrainingDiverged: the loss became NaN or infinite (epoch and step named); ``out/last.pt``
            still holds the last completed epoch.
    """
    args = dict(locals())
    _check_fit_args(args)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if task is None or task == "classify":
        args["task"] = create_task("classify", label_smoothing=label_smoothing)
    else:
        if label_smoothing:
            raise ValueError("label_smoothing is a classification setting; give it to the task instead")
        args["task"] = create_task(task)
    dev = resolve_device(device)
    ctx = D.setup(dev.type)
    history = History()
    try:
        return _fit(model, data, args, dev, ctx, history)
    except StopTraining:
        return history
    finally:
        D.cleanup(ctx)


def _fit(model: nn.Module, data, a: dict, dev: torch.device, ctx: D.DistContext, history: History) -> History:
    if dev.type == "cuda" and ctx.active:
        dev = torch.device("cuda", ctx.local_rank)
    task: Task = a["task"]
    amp_dtype = resolve_amp(a["amp"], dev)
    compile_on = a["compile"] is True or (a["compile"] == "auto" and dev.type == "cuda")
    fmt = torch.channels_last if a["channels_last"] else torch.contiguous_format
    model.to(dev, memory_format=fmt)
    task.setup(model, data, dev)
    extra = task.modules().to(dev)
    batches = task.batches(data, a["batch_size"], dev, seed=a["seed"], augment=a["augment"], mixup=a["mixup"],
                           cutmix=a["cutmix"], rank=ctx.rank, world_size=ctx.world_size,
                           channels_last=a["channels_last"])
    spe = batches.steps_per_epoch
    if a["max_steps_per_epoch"] is not None:
        spe = min(spe, a["max_steps_per_epoch"])
    epochs = a["epochs"]
    schedule = WarmupCosine(a["lr"], epochs * spe, round(a["warmup_epochs"] * spe))
    optimizer = make_optimizer(nn.ModuleList([model, extra]), a["lr"], a["weight_decay"], dev)
    ema = ModelEma(model, a["ema"]) if a["ema"] else None
    recipe = ({k: a[k] for k in RECIPE_KEYS if k not in ("world_size", "label_smoothing")}
              | {"world_size": ctx.world_size, "task": {"name": task.name, "settings": task.settings()}})

    out = Path(a["out"]) if a["out"] is not None else None
    start_epoch, global_step = 0, 0
    last = out / "last.pt" if out else None
    if last is not None and last.exists():
        if not a["resume"]:
            raise FileExistsError(f"{last} already exists: pass resume=True (--resume) to continue that run, "
                                  "or choose another output folder")
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
    if out is not None and ctx.is_main:
        info = {"model": model_config(model), "recipe": recipe, "data": getattr(data, "name", None),
                "device": str(dev), "amp": str(amp_dtype), "compile": compile_on,
                "channels_last": a["channels_last"], "run": a["run_info"]}
        write_atomic(out / "config.json", json.dumps(info, indent=1, default=str) + "\n")

    train_model = model
    if ctx.active:
        ids = [dev.index] if dev.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_on:
        train_model = torch.compile(train_model)
    extra_params = [p for p in extra.parameters() if p.requires_grad]
    eval_bs = a["eval_batch_size"] or 2 * a["batch_size"]
    log_every = 1 if dev.type == "cpu" else 25
    show = a["progress"] and ctx.is_main
    train_time = history[-1]["time"] if history else 0.0
    metric = task.best_metric
    best = max((r[metric] for r in history if metric in r), default=-math.inf)

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
            chunk: list[torch.Tensor] = []
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
                    nn.utils.clip_grad_norm_([*model.parameters(), *extra_params], a["clip_grad"])
                optimizer.step()
                task.after_step(model, global_step, epochs * spe)
                if ema is not None:
                    ema.update(model)
                global_step += 1
                chunk.append(loss.detach())
                for key, value in step_sums.items():
                    value = value.detach().double()
                    sums[key] = sums[key] + value if key in sums else value
                seen += batch[0].shape[0] * ctx.world_size
                if (step + 1) % log_every == 0 or step + 1 == spe:
                    loss_sum += _check_chunk(chunk, ctx, epoch, step, lr_now, last, dev)
                    chunk = []
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
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            epoch_time = time.perf_counter() - t0
        train_time += epoch_time
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


def _check_chunk(chunk: list[torch.Tensor], ctx: D.DistContext, epoch: int, step: int, lr: float,
                 last: Path | None, dev: torch.device) -> float:
    """Sum of the recent step losses; raise :class:`TrainingDiverged` if any was NaN or infinite."""
    losses = torch.stack(chunk).double()
    total = losses.sum().reshape(1)
    D.all_reduce_sum(total, ctx)  # a NaN on any rank makes every rank stop at the same step
    if math.isfinite(total.item()):
        return float(losses.sum())
    bad = (~torch.isfinite(losses)).nonzero()
    first = step + 1 - len(chunk) + (int(bad[0]) if len(bad) else 0)
    value = float(losses[first - (step + 1 - len(chunk))]) if len(bad) else float("nan")
    kept = (f"the last good checkpoint {last} (epoch {epoch}) is unchanged" if last is not None and epoch > 0
            else "no checkpoint was written")
    raise TrainingDiverged(f"the loss became {value} at epoch {epoch + 1}, step {first + 1} (lr {lr:.3g}); "
                           f"training stopped and {kept}. Try a lower lr, clip_grad=1.0 or a longer warmup.")
