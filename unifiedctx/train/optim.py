"""AdamW without weight decay on norms and biases, a warmup + cosine learning rate, and EMA weights.

Learning rate at optimizer step s (0-based) of S total, with W warmup steps and peak ``lr``::

    lr(s) = lr * (s + 1) / W                                    s < W
    lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi (s - W) / (S - W))) / 2   otherwise

The schedule is a pure function of the step, so a resumed run needs only the step count.

EMA (exponential moving average of the weights, decay d) after every step::

    theta_ema <- d * theta_ema + (1 - d) * theta          buffers (BatchNorm statistics) copied
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices and kernels (``ndim >= 2``), none on norm
    weights, biases and scalar gates (``ndim <= 1``)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999) over :func:`param_groups`; the fused kernel on CUDA."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), fused=fused)


class WarmupCosine:
    """Linear warmup for ``warmup_steps`` then cosine decay to ``min_lr`` at ``total_steps``."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.lr, self.total, self.min_lr = lr, total_steps, min_lr
        self.warmup = min(max(0, warmup_steps), total_steps)

    def __call__(self, step: int) -> float:
        """The learning rate for 0-based optimizer step ``step``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step``; return it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


class ModelEma:
    """An exponential moving average of a model's weights (a frozen copy, ``.module``)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``theta_ema <- d theta_ema + (1 - d) theta``; buffers are copied."""
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for eb, b in zip(self.module.buffers(), model.buffers()):
            eb.copy_(b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
