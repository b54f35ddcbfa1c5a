"""A run folder written by main before the training redesign (tests/fixtures/main_run, stopped after
epoch 1 of 2) still loads, is recognised as the same run, and resumes to the very weights that its
uninterrupted run ended with, bit for bit (CPU, one thread)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from unifiedctx import cli
from unifiedctx.train import load_checkpoint, read_checkpoint
from unifiedctx.train.recipe import Recipe

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ARGS = ["train", "--model", "container_light_nano", "--data", "texture", "--img-size", "16",
        "--data-option", "n_train=64", "--data-option", "n_test=32", "--batch-size", "16", "--epochs", "2",
        "--model-option", "drop_path=0.1", "--ema", "0.9", "--label-smoothing", "0.1", "--mixup", "0.2",
        "--device", "cpu", "--no-progress", "--seed", "3"]


def test_the_old_checkpoint_and_its_recipe_load():
    state = read_checkpoint(FIXTURES / "main_run" / "last.pt")
    assert state["recipe"]["mixup"] == 0.2  # the old shape: mixup in the shared recipe
    recipe = Recipe.from_dict(state["recipe"])
    assert recipe.task == "classify" and recipe.task_options == {"label_smoothing": 0.1, "mixup": 0.2,
                                                                  "cutmix": 0.0}
    model, _ = load_checkpoint(FIXTURES / "main_run" / "best.pt")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_the_old_run_resumes_to_the_weights_its_full_run_ended_with(tmp_path):
    run = tmp_path / "main_run"
    shutil.copytree(FIXTURES / "main_run", run)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main([*ARGS, "--out", str(run), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    expected = torch.load(FIXTURES / "expected_final.pt", weights_only=True)
    state = read_checkpoint(run / "last.pt")
    assert state["epoch"] == 2
    for key in ("model", "ema"):
        for name, tensor in expected[key].items():
            assert torch.equal(state[key][name], tensor), f"{key}: {name}"
    assert [r["test_loss"] for r in state["history"]] == expected["test_loss"]
