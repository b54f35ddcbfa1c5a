"""The segment task: mIoU against a plain numpy count, seeded batches, fit learns, exact resume, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from unifiedctx import data
from unifiedctx.models.segment import Segmenter, create_segmenter
from unifiedctx.train import StepDone, build_model, fit, read_checkpoint, tasks
from unifiedctx.train import distributed as D
from unifiedctx.train.tasks.segment import (
    Segment,
    SegmentBatches,
    confusion_matrix,
    evaluate_segmenter,
    mean_iou,
)

FAST = {"batch_size": 8, "progress": False, "device": "cpu", "lr": 1e-2, "warmup_epochs": 0.5}


@pytest.fixture(scope="module")
def canvases():
    return data.load("mnist_canvas", size=64, n_train=32, n_test=8, digits=(1, 2), digit_size=(30, 40),
                     seed=1)


def numpy_miou(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Per class: |pred=k and truth=k| / |pred=k or truth=k|, averaged over classes with a union."""
    ious = []
    for k in range(num_classes):
        inter = np.logical_and(pred == k, truth == k).sum()
        union = np.logical_or(pred == k, truth == k).sum()
        if union > 0:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_miou_matches_a_plain_numpy_count():
    rng = np.random.default_rng(0)
    for trial in range(20):
        k = int(rng.integers(2, 8))
        truth = rng.integers(0, k - 1, (3, 9, 7))            # class k-1 never true ...
        pred = rng.integers(0, k, (3, 9, 7))
        if trial % 2:
            pred[pred == k - 1] = 0                           # ... and sometimes never predicted either
        conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(truth), k)
        assert conf.sum() == truth.size and conf[k - 1].sum() == 0
        assert abs(mean_iou(conf) - numpy_miou(pred, truth, k)) < 1e-12
    # a class predicted but absent from the truth counts with IoU 0
    conf = confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]), 3)
    assert abs(mean_iou(conf) - (1 + 0.5 + 0) / 3) < 1e-12


class FixedLogits(nn.Module):
    """Returns logits stored per test image (looked up by the image's first pixel value)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.calls = 0

    def forward(self, x):
        out = self.logits[self.calls:self.calls + len(x)]
        self.calls += len(x)
        return out


def test_evaluation_matches_numpy_over_batches(canvases):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 11, 64, 64, generator=gen, dtype=torch.float64)
    truth = canvases.test_masks.long()
    right = torch.nn.functional.one_hot(truth, 11).permute(0, 3, 1, 2)
    logits += 4.0 * right * (torch.rand(8, 1, 64, 64, generator=gen) < 0.7)  # about 70 % of pixels right
    batches = SegmentBatches(canvases, 4, "cpu")
    result = evaluate_segmenter(FixedLogits(logits), batches.test_batches(3), 11, None, D.DistContext(),
                                torch.device("cpu"))
    pred = logits.argmax(1).numpy()
    assert abs(result["test_miou"] - numpy_miou(pred, truth.numpy(), 11)) < 1e-12
    assert abs(result["test_pixel_acc"] - (pred == truth.numpy()).mean()) < 1e-12
    logp = torch.log_softmax(logits.float(), 1).double()
    expected_loss = -logp.gather(1, truth.unsqueeze(1)).mean().item()
    assert abs(result["test_loss"] - expected_loss) < 1e-6


def test_batches_are_seeded_aligned_and_flip_image_and_mask_together(canvases):
    a = list(SegmentBatches(canvases, 8, "cpu", seed=4).epoch(1))
    b = list(SegmentBatches(canvases, 8, "cpu", seed=4).epoch(1))
    c = list(SegmentBatches(canvases, 8, "cpu", seed=5).epoch(1))
    assert all(torch.equal(x1, x2) and torch.equal(m1, m2) for (x1, m1), (x2, m2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    batches = SegmentBatches(canvases, 8, "cpu", seed=4, flip=True)
    flipped_any = False
    for x, mask in batches.epoch(0):
        assert mask.dtype == torch.int64 and mask.shape == (8, 64, 64)
        raw = (x[:, :1] * canvases.std[0] + canvases.mean[0]) * 255
        for img, m in zip(raw.round().to(torch.uint8)[:, 0], mask):
            hits = [k for k in range(32) if torch.equal(canvases.train_x[k, 0], img)]
            flips = [k for k in range(32) if torch.equal(canvases.train_x[k, 0].flip(-1), img)]
            k, is_flipped = (hits[0], False) if hits else (flips[0], True)
            flipped_any |= is_flipped
            truth = canvases.train_masks[k].long()
            assert torch.equal(m, truth.flip(-1) if is_flipped else truth)
    assert flipped_any


def test_two_ranks_see_what_one_process_sees(canvases):
    one = list(SegmentBatches(canvases, 8, "cpu", seed=2).epoch(0))
    ranks = [list(SegmentBatches(canvases, 4, "cpu", seed=2, rank=r, world_size=2).epoch(0)) for r in (0, 1)]
    for step, (x, mask) in enumerate(one):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), mask)


def make_model(task: Segment, ds, preset="container_light_nano", seed=0, **kw):
    return build_model(preset, ds, seed, task=task, **kw)


def test_fit_segment_reduces_the_loss_and_keeps_best_by_miou(canvases, tmp_path):
    task = tasks.create("segment")
    model = make_model(task, canvases)
    history = fit(model, canvases, epochs=3, task="segment", out=tmp_path, **FAST)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    for column in ("train_pixel_acc", "test_miou", "test_pixel_acc", "test_loss"):
        assert 0 <= history[-1][column] and all(column in row for row in history)
    assert "test_acc" not in history[-1]
    best = max(history, key=lambda r: r["test_miou"])
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == best["epoch"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["recipe"]["task"] == {"name": "segment", "settings": {"flip": False}}


class Crash(Exception):
    pass


def test_resume_at_an_epoch_boundary_is_exact_bit_for_bit(canvases, tmp_path):
    recipe = dict(epochs=3, ema=0.9, clip_grad=1.0, seed=3, **FAST)
    task = Segment(flip=True)
    full = make_model(task, canvases, drop_path=0.1)
    fit(full, canvases, task=task, out=tmp_path / "full", **recipe)

    def crash(event):
        if isinstance(event, StepDone) and event.epoch == 2 and event.step == 2:
            raise Crash

    with pytest.raises(Crash):
        fit(make_model(task, canvases, drop_path=0.1), canvases, task=Segment(flip=True),
            out=tmp_path / "cut", callback=crash, **recipe)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = make_model(task, canvases, seed=9, drop_path=0.1)  # other weights: all must come from the file
    fit(resumed, canvases, task=Segment(flip=True), out=tmp_path / "cut", resume=True, **recipe)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    rows = [read_checkpoint(tmp_path / run / "last.pt")["history"] for run in ("full", "cut")]
    timing = ("images_per_s", "epoch_time", "time")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[0]] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows[1]]
    with pytest.raises(ValueError, match="flip"):  # another task setting cannot resume that run
        fit(make_model(task, canvases, drop_path=0.1), canvases, task=Segment(flip=False),
            out=tmp_path / "cut", resume=True, **{**recipe, "epochs": 4})


def test_setup_refuses_a_model_that_does_not_fit_the_data(canvases):
    task = Segment()
    with pytest.raises(ValueError, match=r"predicts 5 classes per pixel but mnist_canvas has 11"):
        five = create_segmenter("convnet_nano", 5, img_size=64, in_chans=1)
        task.setup(five, canvases, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"takes 3 input channels but mnist_canvas's images have 1"):
        task.setup(make_model(task, canvases, in_chans=3), canvases, torch.device("cpu"))
    bound = make_model(task, canvases, preset="mixer_s16_nano", img_size=32)
    with pytest.raises(ValueError, match=r"images are 64x64, which the model cannot take.*img_size=\(32,"):
        task.setup(bound, canvases, torch.device("cpu"))
    odd = data.load("mnist_canvas", size=68, n_train=8, n_test=2)
    with pytest.raises(ValueError, match=r"images are 68x68.*stride 8"):
        task.setup(make_model(task, canvases), odd, torch.device("cpu"))

    class PerImage(nn.Module):  # a classifier: one score per class, not per pixel
        def forward(self, x):
            return torch.zeros(len(x), 11)

    with pytest.raises(ValueError, match=r"one score per class and pixel"):
        task.setup(PerImage(), canvases, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a dataset with masks"):
        task.setup(make_model(task, canvases), data.load("mnist5k", size=64), torch.device("cpu"))
    with pytest.raises(ValueError, match="mixup"):
        fit(make_model(task, canvases), canvases, epochs=1, task="segment", mixup=0.2, **FAST)
    with pytest.raises(TypeError, match="flip"):
        Segment(flip="yes")


def test_the_command_line_trains_a_segmenter(tmp_path, capsys):
    from unifiedctx.cli import main

    args = ["train", "--model", "convnet_nano", "--data", "mnist_canvas", "--img-size", "64",
            "--data-option", "n_train=16", "--data-option", "n_test=4", "--epochs", "1", "--batch-size", "8",
            "--task", "segment", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "test_miou" in capsys.readouterr().out
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["model_config"]["segmenter"] == {"num_classes": 11, "width": 32}
    assert state["recipe"]["task"]["name"] == "segment"
    # eval rebuilds the segmenter from its config, reads the data from config.json and measures mIoU
    assert main(["eval", "--checkpoint", str(tmp_path / "last.pt"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["task"] == "segment"
    assert result["test_miou"] == pytest.approx(state["history"][-1]["test_miou"], abs=1e-9)


@pytest.mark.slow
def test_two_gloo_ranks_train_the_segmenter_one_process_trains(tmp_path):
    """DDP: each rank cuts its half of the global batch and the confusion matrix is summed over ranks, so
    2 ranks of batch 4 end where 1 process of batch 8 ends (deit_tiny_nano and the head's GroupNorm do not
    depend on the batch)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from unifiedctx.cli import main

    root = Path(__file__).resolve().parents[1]
    common = ["train", "--model", "deit_tiny_nano", "--data", "mnist_canvas", "--img-size", "64",
              "--data-option", "n_train=32", "--data-option", "n_test=6", "--epochs", "2",
              "--task", "segment", "--lr", "3e-3", "--device", "cpu", "--no-progress", "--seed", "1"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--master_addr",
           "127.0.0.1", "--master_port", str(port), "-m", "unifiedctx", *common, "--batch-size", "4",
           "--out", str(tmp_path / "ddp"), "--save-rank-weights"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert main([*common, "--batch-size", "8", "--out", str(tmp_path / "single")]) == 0

    r0 = read_checkpoint(tmp_path / "ddp" / "rank0.pt")["model"]
    r1 = read_checkpoint(tmp_path / "ddp" / "rank1.pt")["model"]
    single = read_checkpoint(tmp_path / "single" / "last.pt")
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp["step"] == single["step"] == 8
    for name, w in single["model"].items():
        assert torch.equal(r0[name], r1[name]), name
        torch.testing.assert_close(r0[name], w, atol=2e-5, rtol=1e-4, msg=f"DDP vs one process: {name}")
    # the test metrics come from the summed confusion matrix: the same pixels counted once
    assert ddp["history"][-1]["test_miou"] == pytest.approx(single["history"][-1]["test_miou"], abs=1e-3)


def test_train_or_load_trains_a_segmenter_once_then_loads_and_refuses_other_settings(canvases, tmp_path):
    from unifiedctx.train import train_or_load

    recipe = dict(epochs=1, seed=2, task=Segment(), **FAST)
    model, history = train_or_load("convnet_nano", canvases, tmp_path, **recipe)
    assert isinstance(model, Segmenter)  # the task built the model
    stamp = (tmp_path / "last.pt").stat().st_mtime_ns
    again, cached = train_or_load("convnet_nano", canvases, tmp_path, **recipe)
    assert (tmp_path / "last.pt").stat().st_mtime_ns == stamp  # loaded, not trained again
    assert list(cached) == list(history)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="lr"):
        train_or_load("convnet_nano", canvases, tmp_path, **{**recipe, "lr": 0.5})
