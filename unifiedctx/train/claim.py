"""Claiming the run folder for :func:`~unifiedctx.train.fit`, on every rank at once.

Rank 0 claims ``out`` (:class:`~unifiedctx.train.rundir.RunFolder`: the lock, the foreign-file
check); the outcome is all-reduced, so when the claim fails every rank stops (rank 0 with the
claim's own error). An existing ``out/last.pt`` without ``resume=True`` is a ``FileExistsError``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ..files import write_atomic
from . import distributed as D


@contextlib.contextmanager
def claim_folder(out: Path | None, ctx: D.DistContext, device: torch.device, config: dict, *, resume: bool,
                 allow_foreign: bool):
    """Hold ``out`` (rank 0) while the block runs; yields ``out/last.pt`` when the run resumes
    from it, else ``None``. ``out=None`` claims nothing."""
    from .rundir import RunFolder

    last = out / "last.pt" if out else None
    resuming = last is not None and last.exists()
    if resuming and not resume:
        raise FileExistsError(f"{last} already exists: pass resume=True (--resume) to continue that run, "
                              "or choose another output folder")
    with contextlib.ExitStack() as stack:
        refused = None
        if out is not None and ctx.is_main:
            try:
                stack.enter_context(RunFolder(out, resuming=resuming, config=config,
                                              allow_foreign=allow_foreign))
            except (OSError, RuntimeError) as err:
                refused = err
        flag = torch.tensor([float(refused is not None)], device=device)
        if D.all_reduce_sum(flag, ctx).item() > 0:
            raise refused if refused is not None else RuntimeError(
                f"the main process could not claim the run folder {out} (its error says why)")
        yield last if resuming else None


def write_config(out: Path | None, ctx: D.DistContext, config: dict) -> None:
    """``out/config.json`` (rank 0, atomically): the run's model, recipe, device and facts."""
    if out is not None and ctx.is_main:
        write_atomic(out / "config.json", json.dumps(config, indent=1, default=str) + "\n")
