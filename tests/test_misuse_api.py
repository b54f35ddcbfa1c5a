"""Validate at the door: fit, evaluate, data.load and train_or_load reject non-finite or
out-of-range numbers, non-bool booleans, non-string names, wrong dtypes and a model that does not
match the data, with a TypeError/ValueError naming the argument, before any training step."""

from __future__ import annotations

import types

import pytest
import torch
from misuse_helpers import FAST, Tiny, bright, make
from torch import nn

from unifiedctx import data as datasets
from unifiedctx.data import ImageData
from unifiedctx.train import evaluate, fit, load_checkpoint, save_checkpoint, train_or_load

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"lr": NAN}, ValueError, "lr must be a finite number"),
    ({"lr": INF}, ValueError, "lr must be a finite number"),
    ({"weight_decay": NAN}, ValueError, "weight_decay must be a finite number"),
    ({"warmup_epochs": INF}, ValueError, "warmup_epochs must be a finite number"),
    ({"ema": NAN}, ValueError, "ema must be a finite number"),
    ({"ema": 1.0}, ValueError, "ema must be in (0, 1)"),
    ({"clip_grad": INF}, ValueError, "clip_grad must be a finite number"),
    ({"mixup": NAN}, ValueError, "mixup must be a finite number"),
    ({"cutmix": -1.0}, ValueError, "cutmix must be >= 0"),
    ({"label_smoothing": NAN}, ValueError, "label_smoothing must be a finite number"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"epochs": True}, TypeError, "epochs must be an int"),
    ({"batch_size": "16"}, TypeError, "batch_size must be an int"),
    ({"augment": "False"}, TypeError, "augment must be True or False, got str 'False'"),
    ({"channels_last": "False"}, TypeError, "channels_last must be True or False"),
    ({"resume": "False"}, TypeError, "resume must be True or False"),
    ({"progress": 1}, TypeError, "progress must be True, False or 'epoch'"),
    ({"compile": "False"}, ValueError, "compile must be 'auto'"),
    ({"save_rank_weights": "no"}, TypeError, "save_rank_weights must be True or False"),
    ({"allow_foreign": "yes"}, TypeError, "allow_foreign must be True or False"),
    ({"device": 0}, TypeError, "device must be"),
    ({"amp": 1}, TypeError, "amp must be"),
    ({"amp": "fp16"}, ValueError, "amp must be 'auto', 'bf16' or 'off'"),
    ({"out": 123}, TypeError, "out must be a folder path"),
    ({"out": ""}, ValueError, "out must name a folder"),
    ({"callback": "print"}, TypeError, "callback must be callable"),
    ({"run_info": "notes"}, TypeError, "run_info must be a dict"),
    ({"run_info": {"x": NAN}}, ValueError, "run_info must be JSON-serialisable"),
    ({"task": 3}, TypeError, "task must be a task name"),
    ({"task": "segmnt"}, ValueError, "unknown task 'segmnt'"),
    ({"max_steps_per_epoch": 0}, ValueError, "max_steps_per_epoch must be positive"),
    ({"eval_batch_size": -1}, ValueError, "eval_batch_size must be positive"),
])
def test_fit_rejects_bad_arguments_by_name(kwargs, error, words, tmp_path):
    steps = []
    args = {**FAST, "epochs": 1, "callback": lambda info: steps.append(info), **kwargs}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        fit(make(), bright(), **args)
    assert not steps  # refused at the door, not after training


class Flat(nn.Module):
    """A model that only takes 3x8x8 images (a flattening linear layer)."""

    def __init__(self):
        super().__init__()
        self.config = {"preset": "flat", "img_size": 8, "num_classes": 3}
        self.head = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.head(x.flatten(1))


def saved() -> str:
    """A checkpoint of a Tiny model in the current folder."""
    return str(save_checkpoint("tiny.pt", make(), epoch=1))


def empty_test_split() -> ImageData:
    d = bright()
    return ImageData("empty", d.train_x, d.train_y, d.test_x[:0], d.test_y[:0], d.classes, d.mean, d.std)


def fake_data(**changes):
    d = bright()
    fields = {k: getattr(d, k) for k in ("train_x", "train_y", "test_x", "test_y", "mean", "std")}
    return types.SimpleNamespace(**{**fields, "num_classes": 3, "channels": 3, "image_size": (8, 8),
                                    "name": "fake", **changes})


@pytest.mark.parametrize("model, data, error, words", [
    (lambda: make(num_classes=2), lambda: bright(), ValueError, "the model has 2 classes but the data has 3"),
    (lambda: make(in_chans=1), lambda: bright(), ValueError, "takes 1-channel images but the data has 3"),
    (lambda: Flat(), lambda: bright(size=16), ValueError,
     r"cannot take the data's 3x16x16 images .*img_size=8"),
    (lambda: make().double(), lambda: bright(), TypeError, r"parameters are torch.float64.*model.float\(\)"),
    (lambda: make(), lambda: fake_data(train_x=bright().train_x.float() / 255), TypeError,
     r"data.train_x must be a uint8 tensor"),
    (lambda: make(), lambda: fake_data(train_y=bright().train_y.int()), TypeError,
     "data.train_y must be an int64"),
    (lambda: make(), lambda: fake_data(test_y=bright().test_y + 3), ValueError,
     r"data.test_y has labels in \[3, 5\]"),
    (lambda: make(), lambda: empty_test_split(), ValueError, "must have training and test images"),
])
def test_fit_checks_the_model_against_the_data_before_the_first_step(model, data, error, words):
    steps = []
    with pytest.raises(error, match=words):
        fit(model(), data(), epochs=1, callback=steps.append, **FAST)
    assert not steps


@pytest.mark.parametrize("call, error, words", [
    (lambda: evaluate(make().double(), bright(), device="cpu"), TypeError, "parameters are torch.float64"),
    (lambda: evaluate(make(), bright(), device="cpu", channels_last="yes"), TypeError,
     "channels_last must be True or False"),
    (lambda: evaluate(make(), bright(), batch_size=0, device="cpu"), ValueError,
     "batch_size must be positive"),
    (lambda: evaluate("model", bright(), device="cpu"), TypeError, "model must be a torch.nn.Module"),
    (lambda: evaluate(make(in_chans=1), bright(), device="cpu"), ValueError, "takes 1-channel images"),
    (lambda: evaluate(make(), bright(), device="cpu", amp=0.5), TypeError, "amp must be"),
    (lambda: datasets.load("cifar10", download="False"), TypeError, "download must be True or False"),
    (lambda: datasets.load("cifar10", root=5), TypeError, "root must be a path to a folder"),
    (lambda: datasets.load(5), TypeError, "name must be a str"),
    (lambda: datasets.load("texture", n_train=1.5), TypeError, "n_train must be an int"),
    (lambda: datasets.load("mnist5k", channels="3"), TypeError, "channels must be an int"),
    (lambda: bright().subset(True), TypeError, "n_train must be an int"),
    (lambda: train_or_load("convnet_nano", bright(), "x", model_options="depth=2", epochs=1),
     TypeError, "model_options must be a dict"),
    (lambda: train_or_load("convnet_nano", bright(), "x"), TypeError, "needs epochs"),
    (lambda: evaluate(make(), fake_data(test_y=bright().test_y - 1), device="cpu"), ValueError,
     r"data.test_y has labels in \[-1, 1\]"),
    (lambda: load_checkpoint(saved(), make(), ema="False"), TypeError, "ema must be True or False"),
    (lambda: load_checkpoint(saved(), "tiny"), TypeError, "model must be a torch.nn.Module or None"),
    (lambda: load_checkpoint(3), TypeError, "path must be a path to a checkpoint"),
])
def test_the_other_doors_reject_bad_arguments_by_name(call, error, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=words):
        call()


def test_the_model_check_leaves_the_random_state_and_the_mode_as_they_were():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model = Tiny()
    torch.manual_seed(5)
    from unifiedctx.train.engine import check_model_takes_data

    check_model_takes_data(model, bright(), torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected) and model.training
