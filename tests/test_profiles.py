"""Profiles carry the recipes the notebooks train with; notebooks take their numbers from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

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
    smoothing = full.recipe.task_options["label_smoothing"]
    assert (full.recipe.epochs, full.recipe.lr, smoothing, full.recipe.augment) == (30, 2e-3, 0.1, True)


def test_an_unknown_profile_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="must be one of"):
        profiles.make("medium")
    monkeypatch.setenv(profiles.ENV_VAR, "QUICK")
    assert profiles.current().name == "quick"


@pytest.mark.parametrize("name", profiles.PROFILES)
def test_the_seed_reaches_every_recipe_and_the_cache(monkeypatch, name):
    """UNIFIEDCTX_SEED seeds every recipe of the profile and gives the runs a folder of their own."""
    monkeypatch.setenv(profiles.ENV_VAR, name)
    monkeypatch.delenv(profiles.SEED_VAR, raising=False)
    default = profiles.current()
    monkeypatch.setenv(profiles.SEED_VAR, " 3 ")
    seeded = profiles.current()
    assert (default.seed, seeded.seed) == (0, 3)
    recipes = [seeded.recipe, *seeded.synthetic_recipes.values(), *seeded.task_recipes.values()]
    assert {r.seed for r in recipes} == {3}
    assert {r.seed for r in [default.recipe, *default.task_recipes.values()]} == {0}
    assert seeded.cache_dir.name == "seed3" and default.cache_dir.name == "seed0"
    assert seeded.cache_dir.parent == default.cache_dir.parent and seeded.cache_dir.parent.name == name


@pytest.mark.parametrize("bad", ["-1", "one", "1.5"])
def test_a_bad_seed_is_refused_by_name(monkeypatch, bad):
    monkeypatch.setenv(profiles.SEED_VAR, bad)
    with pytest.raises(ValueError, match="UNIFIEDCTX_SEED must be an int >= 0"):
        profiles.current()
    with pytest.raises((TypeError, ValueError), match="seed"):
        profiles.make("quick", seed=True)


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


def test_the_dino_recipes_are_the_swept_point_and_the_gpu_recipe():
    # the quick point is bench/sweep_dino.py's (docs/sweep_dino.md): notebook 10 asserts its gains
    quick, full = profiles.make("quick").task_recipes["dino"], profiles.make("full").task_recipes["dino"]
    options = {"out_dim": 256, "local_crops": 2, "momentum": 0.99}
    assert quick == Recipe(epochs=3, batch_size=64, lr=5e-3, warmup_epochs=0.5, weight_decay=0.04,
                           augment=False, seed=0, task="dino", task_options=options)
    assert (full.epochs, full.batch_size, full.lr, full.warmup_epochs) == (100, 256, 1e-3, 10)
    dino = full.task_options
    assert [dino[k] for k in ("local_crops", "out_dim", "momentum", "teacher_temp")] == [6, 4096, 0.996, 0.07]
    for recipe in (quick, full):
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_notebook_10_takes_its_dino_recipe_from_the_profile():
    cells = json.loads((NOTEBOOKS / "10_learning_without_labels.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert any('recipe = profile.task_recipes["dino"]' in cell for cell in code)
    # the DINO cells (the brief supervised fallback, profile.recipe.replace(epochs=2), is not one)
    dino = "\n".join(c for c in code if "Dino(" in c or ("recipe" in c and "supervised" not in c))
    for setting in ("epochs", "batch_size", "lr", "local_crops", "momentum", "out_dim"):
        assert not re.search(rf"\b{setting}\s*=\s*[\d.]", dino), f"notebook 10 sets {setting} itself"


@pytest.mark.slow
def test_the_full_dino_recipe_builds_for_its_cifar_preset_and_trains():
    # no CIFAR-10 offline: 32 x 32 colour digits stand in for it (the same shapes). The cifar preset takes
    # the recipe's 16 x 16 local crops (set-up checks it); one step of its task options on a nano network
    from unifiedctx.data import load
    from unifiedctx.train import build_model, fit, tasks

    data = load("mnist5k", channels=3).subset(64, 32, seed=0)
    full = profiles.make("full").task_recipes["dino"]
    task = tasks.create(full.task, **full.task_options)
    task.setup(build_model("container_light_cifar", data, seed=0, task=task), data, torch.device("cpu"))
    assert task.multicrop.local_crops == 6 and task.head.last_layer.out_features == 4096
    recipe = full.replace(epochs=1, batch_size=16, max_steps_per_epoch=1)
    task = tasks.create(recipe.task, **recipe.task_options)
    model = build_model("container_light_nano", data, seed=0, task=task)
    history = fit(model, data, recipe, task=task, device="cpu", progress=False)
    assert 0.0 <= history[-1]["knn_acc"] <= 1.0 and history[-1]["teacher_entropy"] > 0


def test_notebook_04s_runs_are_reached_through_supervised_run(tmp_path):
    """Another notebook gets notebook 04's classifier through the profile: trained into cache_dir/04/<family>
    the first time, loaded from there after (the same weights, nothing trained again)."""
    import dataclasses

    from unifiedctx.data import load

    data = load("texture", size=16, n_train=32, n_test=16)
    profile = dataclasses.replace(profiles.make("quick"), cache_dir=tmp_path, device="cpu",
                                  recipe=Recipe(epochs=1, batch_size=16, seed=0))
    model, history = profile.supervised_run("convnet", data)
    last = tmp_path / "04" / "convnet" / "last.pt"
    assert last.exists() and len(history) == 1 and model.config["preset"] == "convnet_nano"
    stamp = last.stat().st_mtime_ns
    again, loaded = profile.supervised_run("convnet", data)
    assert last.stat().st_mtime_ns == stamp and list(loaded) == list(history)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
