"""The DINO loss with centring and sharpening, and its two schedules.

With student logits ``s_v`` for every crop ``v`` (2 global, L local; each ``(B, K)``) and teacher
logits ``t_g`` for the two global crops, centre ``c`` ``(1, K)``, temperatures ``tau_s``, ``tau_t``:

    P_t(g) = softmax((t_g - c) / tau_t)            centred, sharpened (tau_t < tau_s)
    log P_s(v) = log_softmax(s_v / tau_s)
    loss = 1 / #pairs  sum_{g in globals} sum_{v != g}  mean_b  - sum_k P_t(g)_bk log P_s(v)_bk

(``#pairs = 2 (2 + L) - 2``: a crop is never asked to predict itself). After each step the
centre follows the teacher's batch mean over both global crops (summed over DDP ranks),

    c <- m_c c + (1 - m_c) mean_{b, g} t_g[b]

(the mean over every row of every rank: the reference code divides the all-reduced sum by
``B * world_size``, the same number when the ranks' batches are equal, as DDP's shards are).

Centring keeps one prototype from winning every image; sharpening keeps the teacher from
spreading uniformly: together they prevent collapse. Schedules, as functions of the step ``s``
of ``S`` in total (so that a resumed run needs only the step):

    tau_t(s) = tau_0 + (tau_1 - tau_0) min(1, s / (w S))          linear warmup, then constant
    m(s) = 1 - (1 - m_0) (1 + cos(pi s / S)) / 2                  teacher EMA momentum, m_0 -> 1

The temperature warm-up is linear per STEP (the paper's code: per epoch); the momentum is per
step as in the paper's code. tests/test_dino_formulation.py holds all four against the paper.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import distributed as D


def teacher_temperature(
    step: int, total_steps: int, start: float = 0.04, end: float = 0.07, warmup: float = 0.3
) -> float:
    """``tau_t(s)``: linear from ``start`` to ``end`` over the first ``warmup`` fraction of the steps.

    Convention (DINO's reference code warms up per *epoch*: ``linspace(start, end, W)`` over the first
    ``W`` epochs, one value per epoch): ours is the same line evaluated per *step*, so a run of a few
    epochs still gets a gradual warm-up; at the first step of every epoch ``e`` it equals the
    reference's value when ``warmup = (W - 1) / epochs``. Step 0 is always ``start`` (also when
    ``total_steps`` is not known yet, 0, as in the task's first step); ``warmup = 0`` gives ``end``.
    """
    if warmup <= 0:
        return end
    ramp = warmup * total_steps
    t = min(1.0, step / ramp) if ramp > 0 else (0.0 if step <= 0 else 1.0)
    return start + (end - start) * t


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """``m(s) = 1 - (1 - m_0) (1 + cos(pi s / S)) / 2``: ``m_0`` at the start, 1 at the end.

    Per step, as in DINO's reference code (``cosine_scheduler(m_0, 1, epochs, steps_per_epoch)``
    indexed by the 0-based global step ``s`` just taken, ``S`` steps in all)."""
    t = min(1.0, step / max(total_steps, 1))
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * t)) / 2.0


def _full(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a half type (autocast); float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def world_context() -> D.DistContext:
    """This process's place in the process group (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return D.DistContext(dist.get_rank(), dist.get_world_size())
    return D.DistContext()


class DinoLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    Args:
        out_dim: ``K``, the head's output width.
        student_temp: ``tau_s`` (DINO: 0.1).
        center_momentum: ``m_c`` of the centre's moving average (DINO: 0.9).

    The centre is a buffer ``(1, K)``, zero at the start.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if not student_temp > 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp!r}")
        if not 0.0 <= center_momentum < 1.0:
            raise ValueError(f"center_momentum must be in [0, 1), got {center_momentum!r}")
        self.student_temp, self.center_momentum = float(student_temp), float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher: list[torch.Tensor], teacher_temp: float) -> list[torch.Tensor]:
        """``P_t(g) = softmax((t_g - c) / tau_t)`` for each global crop, ``(B, K)`` (float32 at least)."""
        return [F.softmax((_full(t) - self.center) / teacher_temp, dim=-1) for t in teacher]

    def forward(
        self, student: list[torch.Tensor], teacher: list[torch.Tensor], teacher_temp: float
    ) -> torch.Tensor:
        """The loss (0-d, float32 at least) for ``student`` logits of all crops (globals first) and
        ``teacher`` logits of the global crops, each ``(B, K)``."""
        if len(teacher) < 1 or len(student) < len(teacher):
            raise ValueError(
                f"need the teacher's global crops among the student's: got {len(teacher)} teacher "
                f"and {len(student)} student crops"
            )
        targets = self.teacher_probs(teacher, teacher_temp)
        log_probs = [F.log_softmax(_full(s) / self.student_temp, dim=-1) for s in student]
        total, pairs = log_probs[0].new_zeros(()), 0
        for g, target in enumerate(targets):
            for v, log_p in enumerate(log_probs):
                if v == g:
                    continue
                total = total + (-(target * log_p).sum(-1)).mean()
                pairs += 1
        return total / pairs

    @torch.no_grad()
    def update_center(self, teacher: list[torch.Tensor]) -> None:
        """``c <- m_c c + (1 - m_c) * (batch mean of the teacher's global-crop logits over all ranks)``."""
        logits = torch.cat([_full(t) for t in teacher])
        stats = torch.cat([logits.sum(0), logits.new_tensor([logits.shape[0]])]).double()
        D.all_reduce_sum(stats, world_context())
        batch_mean = (stats[:-1] / stats[-1]).to(self.center.dtype).view_as(self.center)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1.0 - self.center_momentum)
