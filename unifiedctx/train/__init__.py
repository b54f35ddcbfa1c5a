"""Training: :func:`fit` a model on a dataset for a task, :func:`evaluate` it, save and load checkpoints.

>>> from unifiedctx import data, train
>>> ds = data.load("mnist5k")                                          # doctest: +SKIP
>>> model = train.build_model("container_light_nano", ds, seed=0)      # doctest: +SKIP
>>> history = train.fit(model, ds, epochs=3, out="runs/demo")          # doctest: +SKIP
>>> history = train.fit(model, ds, train.Recipe(epochs=3, lr=2e-3))    # doctest: +SKIP
>>> history.best("test_acc")                                           # doctest: +SKIP

The files a reader can name: ``engine.py``, the loop (:func:`fit`, one page, top to bottom, with
:func:`evaluate`, :func:`build_model` and :func:`train_or_load` beside it); ``recipe.py``, what a
run is decided by (:class:`Recipe`, :class:`RunOptions`, the task resolved once, the run's record);
``checkpoint.py``, checkpoints and resume; ``rundir.py``, the run folder's safety; ``tasks/``, one
file per task (``docs/adding_a_task.md`` adds one); ``parallel.py``, several runs side by side in
worker processes. Beside them: small datasets on the device, augmented there (``batches.py``); AdamW
+ warmup/cosine + EMA (``optim.py``); DDP (``distributed.py``); the per-epoch record
(``history.py``); DINO's parts (``dino/``). The checkpoint file itself is :mod:`unifiedctx.files`.
"""

from __future__ import annotations

from ..files import read_checkpoint, save_checkpoint
from . import tasks
from .batches import (
    DeviceBatches,
    DeviceSplit,
    LoaderBatches,
    crop_flip,
    derive_seed,
    make_batches,
    mix_batch,
)
from .checkpoint import load_checkpoint
from .engine import (
    EpochDone,
    StepDone,
    StopTraining,
    TrainingDiverged,
    TrainingStarted,
    build_model,
    evaluate,
    fit,
    train_or_load,
)
from .history import History
from .optim import ModelEma, WarmupCosine, param_groups
from .recipe import Recipe, RunOptions, resolve_amp, resolve_device
from .tasks import Classify, Task
from .tasks.base import TaskExample

__all__ = [
    "Classify", "DeviceBatches", "DeviceSplit", "EpochDone", "History", "LoaderBatches", "ModelEma", "Recipe",
    "RunOptions", "StepDone", "StopTraining", "Task", "TaskExample", "TrainingDiverged", "TrainingStarted",
    "WarmupCosine", "build_model", "crop_flip", "derive_seed", "evaluate", "fit", "load_checkpoint",
    "make_batches", "mix_batch", "param_groups", "read_checkpoint", "resolve_amp", "resolve_device",
    "save_checkpoint", "tasks", "train_or_load",
]
