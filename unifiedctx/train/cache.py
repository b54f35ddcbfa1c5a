"""``train_or_load``: :func:`fit` plus a cache check (a finished run in ``out`` is loaded, not retrained)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..validation import check_choice
from .checkpoint import load_checkpoint, read_checkpoint, recipe_differences
from .doors import check_build_model
from .engine import _FIT_RUN_ARGS, fit
from .history import History
from .recipe import Recipe
from .run import plan
from .tasks import model_for_data


def build_model(model_name: str, data, seed: int = 0, **overrides) -> nn.Module:
    """``create_model(model_name)`` sized for ``data`` (classes, channels, image size), initialised
    from ``torch.manual_seed(seed)`` (:func:`unifiedctx.train.tasks.model_for_data`)."""
    check_build_model(model_name, data, seed)
    return model_for_data(model_name, data, seed, **overrides)


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
        model_name: a preset of :func:`unifiedctx.models.create_model`.
        data: the dataset (ImageData, FolderData, SegmentationData).
        out: the run's folder.
        recipe: a :class:`Recipe`; recipe settings may also (or instead) be given as keywords.
        model_options: extra model arguments (``num_classes``, ``img_size`` and ``in_chans`` come
            from ``data``); the model is built by the task (:meth:`Task.build_model`).
        **fit_kwargs: recipe settings (``epochs=...``) and the other arguments of :func:`fit`.
    """
    from unifiedctx.models import list_models

    check_choice("model_name", model_name, list_models())
    if model_options is not None and not isinstance(model_options, dict):
        raise TypeError(f"model_options must be a dict or None, got {type(model_options).__name__}")
    if not isinstance(out, (str, os.PathLike)) or isinstance(out, bool):
        raise TypeError(f"out must be a folder path (str or os.PathLike), got {type(out).__name__} {out!r}")
    settings = {k: v for k, v in fit_kwargs.items() if k not in _FIT_RUN_ARGS}
    run = {k: v for k, v in fit_kwargs.items() if k in _FIT_RUN_ARGS and k not in ("task", "resume")}
    p = plan(recipe, fit_kwargs.get("task"), settings, {**run, "out": out, "resume": True})
    model = p.task.build_model(model_name, data, p.recipe.seed, **(model_options or {}))
    last = Path(out).expanduser() / "last.pt"
    if last.exists():
        state = read_checkpoint(last)
        if state.get("epoch", 0) >= p.recipe.epochs and state.get("epochs") == p.recipe.epochs:
            wanted = p.record(data, int(os.environ.get("WORLD_SIZE", "1")))
            diff = recipe_differences(state.get("recipe", {}), wanted, "in the cached run")
            if diff:
                raise ValueError(f"the cached run in {out} was trained with other settings "
                                 f"({'; '.join(diff)}): use the same settings, or another folder "
                                 "(or delete it) to train anew")
            model, state = load_checkpoint(last, model)
            return model, History(state["history"])
    return model, fit(model, data, p.recipe, task=p.task, **p.run)  # the plan's recipe and task as they are
