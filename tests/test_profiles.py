"""Profiles carry the recipes the notebooks train with; notebooks take their numbers from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from unifiedctx import profiles
from unifiedctx.train import Recipe

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_every_profile_carries_checked_recipes(name):
    profile = profiles.make(name)
    assert isinstance(profile.recipe, Recipe) and set(profile.synthetic_recipes) == {"texture", "longrange"}
    assert all(isinstance(r, Recipe) and not r.augment for r in profile.synthetic_recipes.values())
    assert (profile.epochs, profile.batch_size) == (profile.recipe.epochs, profile.recipe.batch_size)
    assert Recipe.from_dict(json.loads(json.dumps(profile.recipe.to_dict()))) == profile.recipe


def test_the_quick_recipes_are_the_numbers_the_notebooks_asserted_with():
    quick = profiles.make("quick")
    assert quick.recipe == Recipe(epochs=4, batch_size=128, lr=5e-3, warmup_epochs=0.5, augment=False,
                                  weight_decay=0.05, seed=0)
    probe = Recipe(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.05, augment=False, seed=0)
    assert quick.synthetic_recipes == {"texture": probe, "longrange": probe.replace(epochs=8)}
    full = profiles.make("full")
    assert (full.recipe.epochs, full.recipe.lr, full.recipe.label_smoothing, full.recipe.augment) == (
        30, 2e-3, 0.1, True)


def test_an_unknown_profile_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="must be one of"):
        profiles.make("medium")
    monkeypatch.setenv(profiles.ENV_VAR, "QUICK")
    assert profiles.current().name == "quick"


@pytest.mark.parametrize("notebook", ["03_inductive_bias", "04_training", "05_looking_inside"])
def test_training_notebooks_take_their_numbers_from_the_profile(notebook):
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert re.search(r"profile\.(synthetic_)?recipes?\b", code)
    for setting in ("epochs", "batch_size", "lr", "warmup_epochs"):
        assert not re.search(rf"\b{setting}\s*=\s*[\d.]", code), f"{notebook} sets {setting} itself"


def test_training_is_never_silent_in_either_profile():
    from unifiedctx.profiles import make

    assert make("quick").progress == "epoch" and make("full").progress is True


def test_the_segment_recipes_are_the_sweeps_chosen_points():
    # docs/sweep_segment.md: 2048 canvases x 8 epochs at batch 16, lr 2e-2 gave container_light mIoU 0.380
    quick = profiles.make("quick").task_recipes["segment"]
    assert quick == Recipe(epochs=8, batch_size=16, lr=2e-2, warmup_epochs=0.3, weight_decay=0.05, seed=0,
                           task="segment")
    assert quick.task_options == {"flip": False}          # a flipped digit is not a digit
    full = profiles.make("full").task_recipes["segment"]
    assert (full.task, full.epochs, full.batch_size, full.lr) == ("segment", 40, 32, 1e-2)
