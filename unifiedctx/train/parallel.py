"""Several trainings side by side, each in a worker process of its own, with their progress as it happens.

A :class:`Job` is one cached run: ``train_or_load(job.model, job.data, job.out, job.recipe, ...)``.
:func:`train_side_by_side` trains a list of them in ``workers`` spawned processes of one torch thread
each (two small runs on a two-core CPU take about the time of the longer one), and prints a line
per epoch from each worker as that epoch ends (the workers send their lines to this process, which
prints them; a worker's own output would not reach a notebook). Each finished run is in its
``out`` folder, so ``job.train_or_load()`` here then loads it instead of training it again::

    jobs = [Job("light", "container_light_nano", data, "runs/light", recipe),
            Job("unet", "unet", data, "runs/unet", recipe, {"base": 8, "depth": 2})]
    train_side_by_side(jobs, workers=2)       # light  epoch 1/8  train_loss 1.2345  test_miou ...
    model, history = jobs[0].train_or_load()  # loaded from runs/light, not trained again
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from ..validation import check_optional_positive_int
from . import tasks
from .engine import EpochDone, epoch_line, train_or_load
from .history import History
from .recipe import Recipe


@dataclass(frozen=True)
class Job:
    """One cached run of :func:`train_side_by_side`.

    Attributes:
        name: a label for its progress lines.
        model: a preset of :func:`~unifiedctx.train.build_model` for the recipe's task.
        data: the data set (sent to the worker whole: keep it small).
        out: the run's folder (the cache: a finished run there is loaded).
        recipe: the :class:`~unifiedctx.train.Recipe` (its task included).
        model_options: extra arguments of the model's builder (segment: ``width``; U-Net: ``base``).
        device: where it trains.
    """

    name: str
    model: str
    data: object
    out: str | os.PathLike
    recipe: Recipe
    model_options: dict = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self):
        """Each field checked when the job is made (in this process, before any worker starts)."""
        for field_name in ("name", "model", "device"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"Job.{field_name} must be a non-empty string, got {type(value).__name__} "
                                f"{value!r}")
        if not isinstance(self.out, (str, os.PathLike)):
            raise TypeError(f"Job {self.name!r}: out must be a folder (str or os.PathLike), got "
                            f"{type(self.out).__name__}")
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"Job {self.name!r}: recipe must be a unifiedctx.train.Recipe, got "
                            f"{type(self.recipe).__name__} (Recipe(**options) makes one)")
        if not isinstance(self.model_options, dict):
            raise TypeError(f"Job {self.name!r}: model_options must be a dict, got "
                            f"{type(self.model_options).__name__}")

    def train_or_load(self, progress: bool | str = False, callback: Callable | None = None):
        """``(model, history)``: this run trained here, or loaded from ``out`` when it is there."""
        return train_or_load(self.model, self.data, self.out, self.recipe, model_options=self.model_options,
                             device=self.device, progress=progress, callback=callback)


#: In a worker process: the queue it sends its progress lines and its result to (set when it starts).
_LINES: queue.Queue | None = None


def _start_worker(lines) -> None:
    global _LINES
    _LINES = lines
    torch.set_num_threads(1)


def _run_in_worker(job: Job) -> None:
    _run(job, _LINES)


def _run(job: Job, lines) -> None:
    """Train or load ``job``: a line per epoch into ``lines`` as that epoch ends, then its history and
    times (all through the one queue, in order)."""
    metric = tasks.task_class(job.recipe.task).best_metric

    def report(event) -> None:
        if isinstance(event, EpochDone):
            lines.put(f"{job.name:20s} {epoch_line(event.row, job.recipe.epochs, metric)}")

    start, cpu_start = time.perf_counter(), time.process_time()
    _, history = job.train_or_load(callback=report)
    lines.put({"name": job.name, "history": list(history), "seconds": time.perf_counter() - start,
                "cpu_s": time.process_time() - cpu_start})


def train_side_by_side(jobs: list[Job], workers: int | None = None, log: Callable[[str], None] | None = print
                       ) -> dict[str, History]:
    """Train (or load) every job, ``workers`` at a time in spawned processes of one torch thread each
    (default: one per CPU core, at most 2 and at most one per job; ``1`` runs them here, one after
    the other). ``log`` gets a line per epoch of each run as it ends, and one when a run is ready
    (``None``: silent). Returns ``{job.name: its History}``; the runs are in their ``out`` folders."""
    if not isinstance(jobs, (list, tuple)) or not all(isinstance(job, Job) for job in jobs):
        raise TypeError(f"jobs must be a list of Job, got {type(jobs).__name__}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"every job needs a name of its own, got {names}")
    workers = check_optional_positive_int("workers", workers)
    workers = max(1, min(workers or min(os.cpu_count() or 1, 2), len(jobs)))
    say = log or (lambda line: None)
    done: dict[str, History] = {}
    if workers == 1:  # here, one after the other: each line shown as it is sent
        here = SimpleNamespace(put=lambda item: _show(item, say, done))
        for job in jobs:
            _run(job, here)
        return {name: done[name] for name in names}
    context = multiprocessing.get_context("spawn")
    lines = context.Queue()
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(lines,))
    with pool:
        futures = [pool.submit(_run_in_worker, job) for job in jobs]
        while len(done) < len(jobs):
            _read(lines, say, done)
            failed = [f for f in futures if f.done() and f.exception() is not None]
            if failed:
                raise failed[0].exception()
    return {name: done[name] for name in names}


def _read(lines, say, done: dict) -> None:
    """Show what the workers sent so far (waiting up to 0.2 s for the first item)."""
    try:
        _show(lines.get(timeout=0.2), say, done)
        while True:
            _show(lines.get_nowait(), say, done)
    except queue.Empty:
        return


def _show(item, say, done: dict) -> None:
    """A progress line is shown; a finished run's summary is shown and kept in ``done``."""
    if isinstance(item, dict):
        say(f"{item['name']:20s} ready after {item['seconds']:.1f} s ({item['cpu_s']:.1f} s of CPU)")
        done[item["name"]] = History(item["history"])
    else:
        say(item)
