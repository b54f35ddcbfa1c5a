"""``train_or_load``: train a preset once by a recipe, then load it from its folder (notebook caching)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, read_checkpoint
from .engine import fit, recipe_differences
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

    If ``out/last.pt`` holds a finished run of the same recipe (every setting it recorded), the
    model is rebuilt from it and nothing is trained; otherwise the run starts (or resumes exactly,
    from the last completed epoch). A checkpoint in ``out`` made for another architecture or
    another recipe is a ``ValueError`` that lists the differences.

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

    settings = {k: v for k, v in fit_kwargs.items() if k in Recipe.keys()}
    run = {k: v for k, v in fit_kwargs.items() if k not in settings and k != "resume"}
    recipe, _ = recipe_and_task(recipe, run.get("task"), settings)
    model = build_model(model_name, data, recipe.seed, **(model_options or {}))
    last = Path(out) / "last.pt"
    if last.exists():
        state = read_checkpoint(last)
        stored, wanted = state.get("recipe") or {}, recipe.to_dict()
        recorded = {k: v for k, v in wanted.items() if k in stored and k != "epochs"}  # fit judges epochs
        diff = recipe_differences(stored, recorded)
        if diff:
            raise ValueError(f"{last} was trained by another recipe ({'; '.join(diff)}); use the same "
                             "settings or another output folder")
        if state.get("epoch", 0) >= recipe.epochs and state.get("epochs") == recipe.epochs:
            model, state = load_checkpoint(last, model)
            return model, History(state["history"])
    history = fit(model, data, recipe, out=out, resume=True, **run)
    return model, history
