"""train_side_by_side: runs in worker processes, a line per epoch from each as it ends, and the runs are
what the caller then loads (the very weights of training them here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from unifiedctx import data
from unifiedctx.train import Recipe, read_checkpoint
from unifiedctx.train.parallel import Job, train_side_by_side
from unifiedctx.train.tasks.count import small_canvases


def jobs(folder: Path, epochs: int = 2) -> list[Job]:
    texture = data.load("texture", size=16, n_train=32, n_test=16)
    canvases = small_canvases(16, 8, size=16, seed=0)
    classify = Recipe(epochs=epochs, batch_size=16, lr=1e-2, seed=0)
    segment = Recipe(epochs=epochs, batch_size=8, lr=1e-2, seed=0, task="segment")
    return [Job("texture convnet", "convnet_nano", texture, folder / "convnet", classify),
            Job("canvas unet", "unet", canvases, folder / "unet", segment, {"base": 4, "depth": 2})]


def test_side_by_side_runs_report_every_epoch_and_are_what_the_caller_then_loads(tmp_path):
    lines = []
    done = train_side_by_side(jobs(tmp_path), workers=2, log=lines.append)
    for job in jobs(tmp_path):
        mine = [line for line in lines if line.startswith(job.name)]
        assert [re.search(r"epoch (\d)/2", line)[1] for line in mine[:-1]] == ["1", "2"], lines
        assert "ready after" in mine[-1]  # each epoch's line came before the run was done
        stamp = (Path(job.out) / "last.pt").stat().st_mtime_ns
        model, history = job.train_or_load()
        assert (Path(job.out) / "last.pt").stat().st_mtime_ns == stamp  # loaded, not trained again
        assert list(history) == list(done[job.name])
        again = Job(job.name, job.model, job.data, tmp_path / "here" / job.name, job.recipe,
                    job.model_options)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the worker: a reduction over two threads may round otherwise
        try:
            fresh_model, fresh = again.train_or_load()  # the same run trained in this process
        finally:
            torch.set_num_threads(threads)
        assert [r["train_loss"] for r in fresh] == [r["train_loss"] for r in history]
        for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()):
            assert torch.equal(a, b)


def test_each_epochs_line_is_shown_when_that_epoch_ends(tmp_path):
    """In this process (workers=1): when the line of epoch 1 is shown, epoch 2 has not been trained."""
    seen = []

    def log(line):
        match = re.search(r"epoch (\d)/3", line)
        if match:
            job = "convnet" if line.startswith("texture") else "unet"
            seen.append((int(match[1]), read_checkpoint(tmp_path / job / "last.pt")["epoch"]))

    train_side_by_side(jobs(tmp_path, epochs=3), workers=1, log=log)
    assert seen == [(1, 1), (2, 2), (3, 3)] * 2


def test_jobs_are_checked(tmp_path):
    with pytest.raises(TypeError, match="jobs must be a list of Job"):
        train_side_by_side("texture")
    twice = jobs(tmp_path)[:1] * 2
    with pytest.raises(ValueError, match="a name of its own"):
        train_side_by_side(twice)
    for workers, error in ((0, ValueError), ("2", TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="workers"):
            train_side_by_side(jobs(tmp_path), workers=workers)
    good = jobs(tmp_path)[0]
    fields = dict(name=good.name, model=good.model, data=good.data, out=good.out, recipe=good.recipe)
    for wrong, words in ((dict(recipe={"epochs": 1}), "recipe must be a unifiedctx.train.Recipe"),
                         (dict(name=3), "Job.name"), (dict(model=""), "Job.model"),
                         (dict(out=None), "out must be a folder"),
                         (dict(model_options=[1]), "model_options must be a dict")):
        with pytest.raises(TypeError, match=words):
            Job(**{**fields, **wrong})
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_worker_that_fails_stops_the_call_with_its_error(tmp_path):
    good, _ = jobs(tmp_path, epochs=1)
    bad = Job("typo", "convnet_nan", good.data, tmp_path / "typo", good.recipe)
    with pytest.raises(ValueError, match="model_name"):
        train_side_by_side([good, bad], workers=2, log=None)
    assert not (tmp_path / "typo").exists()
