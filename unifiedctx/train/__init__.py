"""Training: :func:`fit` a model on a dataset for a task, :func:`evaluate` it, save and load checkpoints.

>>> from unifiedctx import data, models, train
>>> ds = data.load("mnist5k")                                          # doctest: +SKIP
>>> model = models.create_model("container_light_nano", num_classes=10, img_size=32)  # doctest: +SKIP
>>> history = train.fit(model, ds, epochs=3, out="runs/demo")          # doctest: +SKIP
>>> history = train.fit(model, ds, train.Recipe(epochs=3, lr=2e-3))    # doctest: +SKIP
>>> history.best("test_acc")                                           # doctest: +SKIP

A task owns its training (``tasks/``: base, classify, segment, dino, count; one file each, and
``docs/adding_a_task.md`` adds one); the engine is one loop that names no task (``engine.py``:
``fit`` and the loop), around the run state with its save and resume (``state.py``); the model and
data checks (``checks.py``); claiming the run folder and its ``config.json`` (``claim.py``); the
progress bar and epoch lines (``progress.py``); ``evaluate`` (``evaluation.py``); the settings every
task shares (``recipe.py``), resolved once per run with the task and the device (``run.py``); the
doors of the helpers around ``fit`` (``doors.py``); small datasets on the device, augmented there
(``batches.py``); AdamW + warmup/cosine + EMA (``optim.py``); DDP (``distributed.py``); atomic
checkpoints, the run record and the resume check (``checkpoint.py``, ``checkpoint_file.py``); the
per-epoch record (``history.py``); cached runs for notebooks (``cache.py``); non-finite stops
(``finite.py``); a run owns its folder (``rundir.py``).
"""

from __future__ import annotations

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
from .cache import build_model, train_or_load
from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from .engine import StopTraining, TrainingDiverged, evaluate, fit
from .history import History
from .optim import ModelEma, WarmupCosine, param_groups
from .recipe import Recipe
from .run import resolve_amp, resolve_device
from .tasks import Classify, Task
from .tasks.base import TaskExample

__all__ = [
    "Classify", "DeviceBatches", "DeviceSplit", "History", "LoaderBatches", "ModelEma", "Recipe",
    "StopTraining",
    "Task", "TaskExample", "TrainingDiverged", "WarmupCosine",
    "build_model", "crop_flip", "derive_seed", "evaluate", "fit", "load_checkpoint", "make_batches",
    "mix_batch", "param_groups", "read_checkpoint", "resolve_amp", "resolve_device", "save_checkpoint",
    "tasks", "train_or_load",
]
