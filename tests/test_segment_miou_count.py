"""Our mIoU agrees with an independent confusion-matrix count of the same predictions.

The predictions are recomputed here from the trained model (our own normalisation and argmax), the
confusion matrix is counted with ``numpy.bincount`` and the IoU per class taken from it:

    C[t, k] = #{pixels p counted : truth_p = t, pred_p = k}           (pixels labelled ignore_index skipped)
    IoU_k   = C[k, k] / (sum_t C[t, k] + sum_j C[k, j] - C[k, k])     classes with an empty union left out

and compared with what ``evaluate_segmenter`` and the ``segment`` task (the history of ``fit``) report.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from unifiedctx import data
from unifiedctx.models.unet import UNet
from unifiedctx.train import distributed as D
from unifiedctx.train import fit
from unifiedctx.train.tasks.segment import Segment, SegmentBatches, evaluate_segmenter

IGNORE = 255
RECIPE = dict(epochs=2, batch_size=8, lr=2e-2, warmup_epochs=0.5, seed=0, progress=False, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine two threads stall each other (8x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def canvases():
    return data.load("mnist_canvas", size=64, n_train=32, n_test=8, digits=(2, 3), digit_size=(30, 40),
                     seed=2)


def with_ignored_pixels(d, seed: int = 0):
    """The same canvases with a random tenth of every mask (train and test) set to 255 = ignore."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for split in ("train", "test"):
        m = getattr(d, f"{split}_masks").clone()
        m[torch.rand(m.shape, generator=gen) < 0.1] = IGNORE
        masks[f"{split}_masks"] = m
    return dataclasses.replace(d, ignore_index=IGNORE, **masks)


def predictions(model: nn.Module, d) -> np.ndarray:
    """int64 ``(N, H, W)``: argmax of the model's logits on the test canvases, normalised here."""
    mean = torch.tensor(d.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(d.std, dtype=torch.float32).view(1, -1, 1, 1)
    model.eval()
    with torch.no_grad():
        return torch.cat([model((x.float() / 255.0 - mean) / std).argmax(1)
                          for x in d.test_x.split(4)]).numpy()


def count(pred: np.ndarray, truth: np.ndarray, k: int, ignore: int | None) -> tuple[np.ndarray, dict]:
    """numpy confusion ``(k, k)`` and ``{class: IoU}`` for the classes whose union is non-empty."""
    pred, truth = pred.reshape(-1).astype(np.int64), truth.reshape(-1).astype(np.int64)
    if ignore is not None:
        keep = truth != ignore
        pred, truth = pred[keep], truth[keep]
    conf = np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)
    ious = {}
    for c in range(k):
        tp, fp, fn = conf[c, c], conf[:, c].sum() - conf[c, c], conf[c, :].sum() - conf[c, c]
        if tp + fp + fn > 0:
            ious[c] = tp / (tp + fp + fn)
    return conf, ious


def trained(d, seed: int = 0):
    """A U-Net trained two epochs on ``d`` by the segment task, and its history."""
    torch.manual_seed(seed)
    model = UNet(d.num_classes, in_chans=d.channels, base=4, depth=2)
    history = fit(model, d, task=Segment(), **RECIPE)
    return model, history


def ours(model, d):
    return evaluate_segmenter(model, SegmentBatches(d, 8, "cpu").test_batches(3), d.num_classes, None,
                              D.DistContext(), torch.device("cpu"), ignore_index=d.ignore_index)


@pytest.mark.parametrize("ignore", [False, True], ids=["every-pixel", "ignore-255"])
def test_miou_equals_an_independent_count_of_the_trained_models_predictions(canvases, ignore):
    d = with_ignored_pixels(canvases) if ignore else canvases
    model, history = trained(d)
    pred = predictions(model, d)
    truth = d.test_masks.numpy()
    conf, ious = count(pred, truth, d.num_classes, d.ignore_index)
    assert len(set(np.unique(pred))) > 1, "a model predicting one class would make the test weak"
    expected = float(np.mean(list(ious.values())))
    result = ours(model, d)
    np.testing.assert_array_equal(result["confusion"].numpy(), conf)
    assert abs(result["test_miou"] - expected) < 1e-12
    assert abs(history[-1]["test_miou"] - expected) < 1e-12          # what the task reported
    assert abs(result["test_pixel_acc"] - np.trace(conf) / conf.sum()) < 1e-12
    if ignore:
        assert conf.sum() == int((truth != IGNORE).sum()) < truth.size   # ignored pixels count nowhere
        # counting the ignored pixels as background would give another number: the skip matters
        _, as_bg = count(pred, np.where(truth == IGNORE, 0, truth), d.num_classes, None)
        assert abs(float(np.mean(list(as_bg.values()))) - expected) > 1e-6


class InkIsThree(nn.Module):
    """Predicts class 3 (digit 2) where the first channel is above 0 (normalised ink), else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 11, *x.shape[2:])
        logits[:, 3] = (x[:, 0] > 0).float()
        logits[:, 0] = 0.5
        return logits


def test_classes_neither_present_nor_predicted_are_left_out(canvases):
    d = with_ignored_pixels(canvases, seed=1)
    test_masks = d.test_masks.clone()
    test_masks[test_masks == 6] = IGNORE                             # digit 5: neither counted nor predicted
    d = dataclasses.replace(d, test_masks=test_masks)
    model = InkIsThree()
    pred = predictions(model, d)
    truth = d.test_masks.numpy()
    conf, ious = count(pred, truth, d.num_classes, IGNORE)
    present = set(np.unique(truth[truth != IGNORE]).tolist()) | {0, 3}
    assert set(ious) == present and 6 not in present                # class 6 left out
    if 3 not in np.unique(truth):
        assert ious[3] == 0.0                                        # predicted, absent: IoU 0, kept
    result = ours(model, d)
    np.testing.assert_array_equal(result["confusion"].numpy(), conf)
    assert abs(result["test_miou"] - float(np.mean(list(ious.values())))) < 1e-12
    # the mean over all 11 classes (absent ones as 0) is a different, wrong number
    assert abs(result["test_miou"] - sum(ious.values()) / d.num_classes) > 1e-3
