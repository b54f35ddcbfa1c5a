"""Every setting that changes the result is recorded and compared: resume and the notebooks' run
cache refuse another amp, memory format, compile, task, data (same shape, other contents) or recipe,
with the list of differences."""

from __future__ import annotations

import json

import pytest
import torch
from misuse_helpers import FAST, bright, make

from unifiedctx import data as datasets
from unifiedctx.train import engine, fit, read_checkpoint, train_or_load


@pytest.fixture
def run(tmp_path):
    fit(make(), bright(), epochs=1, out=tmp_path, **FAST)
    return tmp_path


@pytest.mark.parametrize("change, words", [
    ({"amp": "bf16"}, "amp: 'off' in the checkpoint, 'bf16' now"),
    ({"channels_last": True}, "channels_last: False in the checkpoint, True now"),
    ({"compile": True}, "compile: False in the checkpoint, True now"),
    ({"label_smoothing": 0.1}, "task.settings"),
    ({"augment": False}, "augment: True in the checkpoint, False now"),
])
def test_resume_with_another_setting_is_refused(run, change, words):
    with pytest.raises(ValueError, match="cannot resume") as err:
        fit(make(), bright(), epochs=1, out=run, resume=True, **{**FAST, **change})
    assert words in str(err.value)


def test_resume_on_other_data_of_the_same_shape_is_refused(run):
    other = bright(seed=1)  # same sizes, classes, mean and std; other images
    assert other.train_x.shape == bright().train_x.shape
    only = r"\(data\.fingerprint: '[0-9a-f]+' in the checkpoint, '[0-9a-f]+' now\)"  # the one difference
    with pytest.raises(ValueError, match=only):
        fit(make(), other, epochs=1, out=run, resume=True, **FAST)


def test_the_record_holds_every_setting(run):
    recipe = json.loads((run / "config.json").read_text())["recipe"]
    assert recipe["amp"] == "off" and recipe["channels_last"] is False and recipe["compile"] is False
    assert recipe["task"] == {"name": "classify",
                              "settings": {"label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0}}
    assert recipe["data"]["name"] == "bright" and recipe["data"]["fingerprint"] == bright().fingerprint()
    assert read_checkpoint(run / "last.pt")["recipe"] == recipe


def test_the_fingerprint_sees_contents_not_only_shapes():
    a = bright()
    assert a.fingerprint() == bright().fingerprint()
    b = bright()
    b.train_x[7, 1, 3, 2] += 1  # one pixel, likely outside the strided sample: the sum sees it
    assert b.fingerprint() != a.fingerprint()
    c = bright()
    c.test_y[0] = (c.test_y[0] + 1) % 3
    assert c.fingerprint() != a.fingerprint()
    assert a.subset(64).fingerprint() != a.fingerprint()


def test_load_records_the_options():
    ds = datasets.load("texture", n_train=8, n_test=4, size=16)
    assert ds.options == {"n_train": 8, "n_test": 4, "size": 16}


OPTS = {"epochs": 1, "batch_size": 16, "progress": False, "device": "cpu"}


def test_the_run_cache_refuses_a_run_trained_with_another_lr(tmp_path, monkeypatch):
    ds = datasets.load("texture", n_train=32, n_test=16, size=16)
    train_or_load("deit_tiny_nano", ds, tmp_path, **OPTS, lr=1e-3)

    def no_training(*a, **k):
        raise AssertionError("train_or_load trained again")

    monkeypatch.setattr(engine, "fit", no_training)
    words = r"cached run .* other settings \(lr: 0\.001 in the cached run, 0\.01 now"
    with pytest.raises(ValueError, match=words):
        train_or_load("deit_tiny_nano", ds, tmp_path, **OPTS, lr=1e-2)
    other = datasets.load("texture", n_train=32, n_test=16, size=16, seed=1)
    with pytest.raises(ValueError, match=r"data\.options: .*data\.fingerprint"):
        train_or_load("deit_tiny_nano", other, tmp_path, **OPTS, lr=1e-3)
    model, hist = train_or_load("deit_tiny_nano", ds, tmp_path, **OPTS, lr=1e-3)  # the same: loaded
    assert len(hist) == 1 and torch.isfinite(next(model.parameters())).all()
