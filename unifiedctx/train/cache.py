"""``train_or_load``: train a preset once by a recipe, then load it from its folder (notebook caching)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, read_checkpoint
from .engine import fit, recipe_differences, run_recipe
from .history import History
from .recipe import Recipe


def build_model(model_name: str, data, seed: int = 0, **overrides) -> nn.Module:
    """``create_model(model_name)`` sized for ``data`` (classes, channels, image size), initialised
    from ``torch.manual_seed(seed)`` so the same seed gives the same starting weights."""
    from unifiedctx.models import create_model

    size = data.image_size
    img_size = size[0] if isinstance(size, (tuple, list)) and size[0] == size[1] else size
    opts = {"num_classes": data.num_classes, "img_size": img_size, "in_chans": data.channels} | overrides
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model_name, **opts)


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
        data: the dataset (ImageData or FolderData).
        out: the run's folder.
        recipe: a :class:`Recipe`; recipe settings may also (or instead) be given as keywords.
        model_options: extra ``create_model`` arguments (``num_classes``, ``img_size`` and
            ``in_chans`` come from ``data``).
        **fit_kwargs: recipe settings (``epochs=...``) and the other arguments of :func:`fit`.
    """
    from .engine import recipe_and_task

    if model_options is not None and not isinstance(model_options, dict):
        raise TypeError(f"model_options must be a dict or None, got {type(model_options).__name__}")
    settings = {k: v for k, v in fit_kwargs.items() if k in Recipe.keys()}
    run = {k: v for k, v in fit_kwargs.items() if k not in settings and k != "resume"}
    recipe, _ = recipe_and_task(recipe, run.get("task"), settings)
    model = build_model(model_name, data, recipe.seed, **(model_options or {}))
    last = Path(out) / "last.pt"
    if last.exists():
        state = read_checkpoint(last)
        if state.get("epoch", 0) >= recipe.epochs and state.get("epochs") == recipe.epochs:
            wanted = run_recipe(data, recipe, **run)
            diff = recipe_differences(state.get("recipe", {}), wanted, "in the cached run")
            if diff:
                raise ValueError(f"the cached run in {out} was trained with other settings "
                                 f"({'; '.join(diff)}): use the same settings, or another folder "
                                 "(or delete it) to train anew")
            model, state = load_checkpoint(last, model)
            return model, History(state["history"])
    history = fit(model, data, recipe, out=out, resume=True, **run)
    return model, history
