"""Non-finite means stop: the checks behind :class:`TrainingDiverged`.

Every optimizer step feeds three numbers to a :class:`DivergenceWatch` without a host sync
(on CUDA the checks stay on the device until a logging point)::

    loss                                     the step's loss (0-d)
    ||g||_2 = sqrt(sum_p ||grad p||^2)       the global gradient norm (the one clipping uses)
    max_p ||p||_inf                          the largest weight magnitude after the step

The watch keeps, on the device, the first step at which one of them was NaN or infinite, which
one, and its value; :meth:`DivergenceWatch.check` (at the logging points, the epoch's last step
included, and before anything is saved) brings that to the host, and raises
:class:`TrainingDiverged` naming the epoch, the step and the last good checkpoint.
:func:`nonfinite_tensors` lists the non-finite tensors of a nested state (the last line of
defence of :func:`unifiedctx.train.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from ..files import nonfinite_tensors  # noqa: F401  (the checks below and their users)
from . import distributed as D

WHAT = {1: "the loss", 2: "the gradient norm", 3: "the largest weight"}


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; nothing non-finite was saved,
    and the message names the epoch, the step and the last good checkpoint (or says there is none)."""


def max_abs(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``max_t ||t||_inf`` as a 0-d float32 tensor on the tensors' device (NaN if any is NaN)."""
    tensors = [t.detach() for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros(())
    return torch.stack([n.float() for n in torch._foreach_norm(tensors, float("inf"))]).max()


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients of ``params`` (0-d; zero when none has a gradient)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, 2.0)


class LastGood:
    """The checkpoint a diverged run leaves as its last good one: ``path`` after ``epoch`` epochs."""

    def __init__(self, path: Path | None = None, epoch: int = 0, out: Path | None = None):
        self.path, self.epoch, self.out = path, epoch, out

    def describe(self) -> str:
        if self.path is not None:
            return f"the last good checkpoint {self.path} (epoch {self.epoch}) is unchanged"
        if self.out is None:
            return "no checkpoint exists (out=None writes none)"
        return f"no good checkpoint exists in {self.out} (no epoch was completed)"


class DivergenceWatch:
    """Device-side record of the first non-finite loss, gradient norm or weight of an epoch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=self.device)  # step index (0-based)
        self.what = torch.zeros((), dtype=torch.int64, device=self.device)
        self.value = torch.zeros((), dtype=torch.float64, device=self.device)

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
                                   f"(lr {lr:.3g}); "
                                   f"training stopped and {last_good.describe()}.")
        what, value = WHAT[int(self.what)], float(self.value)
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
