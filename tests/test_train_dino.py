"""The DINO task in the engine: registration, set-up checks, the teacher, no collapse, the loss
falls, exact resume, the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_engine import Crash, _stop_at

from unifiedctx import cli
from unifiedctx.data import load
from unifiedctx.train import build_model, fit, read_checkpoint, tasks
from unifiedctx.train.tasks.dino import Dino

FAST = {"batch_size": 32, "progress": False, "device": "cpu", "lr": 2e-3, "warmup_epochs": 0.5}
SMALL = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "local_crops": 2}


@pytest.fixture(scope="module")
def digits():
    return load("mnist5k", channels=3).subset(384, 160, seed=0)


def model_for(task, data, name="deit_tiny_nano", seed=0):
    return build_model(name, data, seed=seed, task=task)


def test_dino_is_registered_and_builds_classifier_free_models(digits):
    task = tasks.create("dino", out_dim=32)
    assert isinstance(task, Dino) and task.best_metric == "knn_acc"
    model = model_for(task, digits)
    assert model.num_classes == 0 and model(digits.normalize(digits.test_x[:2])).shape == (
        2,
        model.num_features,
    )


def test_setup_builds_head_teacher_and_decides_augmentation_from_the_data(digits):
    task = Dino(**SMALL)
    model = build_model("deit_tiny_nano", digits, num_classes=10, task=task)  # a classifier is dropped
    task.setup(model, digits, torch.device("cpu"))
    assert model.num_classes == 0 and task.head.in_dim == model.num_features
    assert task.multicrop.flip is False and task.multicrop.jitter == 0.0  # grey digits in 3 channels
    assert all(not p.requires_grad for p in task.teacher.parameters())
    for a, b in zip(task.teacher["backbone"].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert list(task.modules()) == ["head"]
    colour = digits.subset(64, 16)
    colour.train_x = colour.train_x.clone()
    colour.train_x[:, 0] //= 2  # no longer grey
    other = Dino(**SMALL)
    other.setup(build_model("deit_tiny_nano", colour, task=other), colour, torch.device("cpu"))
    assert other.multicrop.flip is True and other.multicrop.jitter == pytest.approx(0.4)


def test_settings_rebuild_the_same_task_before_and_after_setup(digits):
    task = Dino(**SMALL, flip=None, momentum=0.95, global_scale=(0.6, 1.0))
    before = task.settings()
    task.setup(model_for(task, digits), digits, torch.device("cpu"))
    assert task.settings() == before and Dino(**before).settings() == before
    assert before["flip"] is None and before["global_scale"] == [0.6, 1.0]


def test_setup_refuses_models_and_data_it_cannot_train(digits):
    task = Dino(**SMALL)
    grey1 = load("mnist5k", channels=1).subset(64, 16)
    with pytest.raises(ValueError, match="3 channels but the data has 1"):
        task.setup(model_for(task, digits), grey1, torch.device("cpu"))
    mixer = build_model("mixer_s16_nano", digits, task=task)  # one affinity for the 32 x 32 grid only
    with pytest.raises(ValueError, match="16x16 local crops.*local_crops=0"):
        task.setup(mixer, digits, torch.device("cpu"))
    Dino(**{**SMALL, "local_crops": 0}).setup(mixer, digits, torch.device("cpu"))  # globals only: fine
    with pytest.raises(TypeError, match="ImageData"):
        task.setup(model_for(task, digits), object(), torch.device("cpu"))
    with pytest.raises(ValueError, match="mixup is a setting of the classify task, not of 'dino'"):
        fit(model_for(task, digits), digits, epochs=1, task="dino", mixup=0.2)  # refused at the door
    with pytest.raises(ValueError, match="out_dim"):
        Dino(out_dim=0)
    with pytest.raises(ValueError, match="momentum"):
        Dino(momentum=1.5)
    with pytest.raises(RuntimeError, match="setup"):
        Dino().modules()


def test_teacher_is_an_ema_of_the_student_and_gets_no_gradient(digits):
    task = Dino(**SMALL, momentum=0.9)
    model = model_for(task, digits)
    task.setup(model, digits, torch.device("cpu"))
    batch = next(iter(task.batches(digits, 32, "cpu").epoch(0)))
    loss, _ = task.loss(model, batch)
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        for p in [*model.parameters(), *task.head.parameters()]:
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in task.teacher.parameters()]
    student = [*model.parameters(), *task.head.parameters()]
    task.after_step(model, 3, 10)
    m = 1 - 0.1 * (1 + math.cos(math.pi * 3 / 10)) / 2
    for t, t0, s in zip(task.teacher.parameters(), before, student):
        torch.testing.assert_close(t, m * t0 + (1 - m) * s, atol=1e-6, rtol=1e-6)
    assert task.step == 4 and task.total_steps == 10


def teacher_outputs(task, data):
    x = data.normalize(data.test_x)
    with torch.no_grad():
        return task.criterion.teacher_probs(task.teacher_logits([x]), task.current_teacher_temp())[0]


def test_no_collapse_and_the_loss_falls_on_digits(digits):
    # (the k-NN gain needs the whole mnist5k bank and more steps: notebook 10 asserts it)
    task = Dino(**{**SMALL, "out_dim": 128})
    model = model_for(task, digits, "container_light_nano")
    hist = fit(model, digits, task=task, epochs=3, **{**FAST, "batch_size": 64})
    probs = teacher_outputs(task, digits)  # (160, K)
    mean = probs.mean(0)
    mean_entropy = -(mean * mean.log()).sum().item()
    per_image = -(probs * probs.clamp_min(1e-30).log()).sum(1).mean().item()
    log_k = math.log(128)
    assert mean_entropy > 0.5 * log_k  # not one prototype for every image
    assert per_image < mean_entropy - 0.5  # images get different, sharper distributions
    assert probs.argmax(1).unique().numel() >= 10 and probs.std(0).max() > 0.05
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.05
    for key in ("knn_acc", "teacher_knn_acc", "teacher_entropy", "teacher_mean_entropy"):
        assert key in hist[-1] and 0 <= hist[-1][key] < math.inf


def test_resume_after_a_crash_is_exact(tmp_path, digits):
    recipe = dict(epochs=3, seed=2, max_steps_per_epoch=3, **FAST)
    opts = {**SMALL, "teacher_temp": 0.07, "freeze_last_layer": 0.3}  # the schedules must resume too
    full_task = Dino(**opts)
    full = model_for(full_task, digits)
    hist_full = fit(full, digits, task=full_task, out=tmp_path / "full", **recipe)
    with pytest.raises(Crash):
        fit(
            model_for(Dino(**opts), digits),
            digits,
            task=Dino(**opts),
            out=tmp_path / "cut",
            callback=_stop_at(2, 2),
            **recipe,
        )
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    task = Dino(**opts)
    resumed = model_for(task, digits, seed=5)  # other weights: all must come from the checkpoint
    hist = fit(resumed, digits, task=task, out=tmp_path / "cut", resume=True, **recipe)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["task_modules"]:
        assert torch.equal(a["task_modules"][key], b["task_modules"][key]), key
    for key in a["task_state"]["teacher"]:
        assert torch.equal(a["task_state"]["teacher"][key], b["task_state"]["teacher"][key]), key
    assert torch.equal(a["task_state"]["center"], b["task_state"]["center"])
    assert a["task_state"]["step"] == b["task_state"]["step"] == 9
    timing = ("images_per_s", "epoch_time", "time")
    strip = lambda h: [{k: v for k, v in row.items() if k not in timing} for row in h]
    assert strip(hist) == strip(hist_full)
    with pytest.raises(ValueError, match="out_dim"):  # other task settings: refused
        fit(
            model_for(Dino(**{**opts, "out_dim": 32}), digits),
            digits,
            task=Dino(**{**opts, "out_dim": 32}),
            out=tmp_path / "cut",
            resume=True,
            **{**recipe, "epochs": 4},
        )


def test_the_last_layer_is_frozen_for_its_fraction_of_the_steps(digits):
    task = Dino(**SMALL, freeze_last_layer=0.5)
    model = model_for(task, digits)
    task.setup(model, digits, torch.device("cpu"))
    v = task.head.last_layer.parametrizations.weight.original1
    batch = next(iter(task.batches(digits, 32, "cpu").epoch(0)))
    task.step, task.total_steps = 4, 10
    task.loss(model, batch)[0].backward()
    assert torch.count_nonzero(v.grad) == 0
    v.grad = None
    task.step = 5
    task.loss(model, batch)[0].backward()
    assert torch.count_nonzero(v.grad) > 0


def test_cli_trains_dino(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--task",
        "dino",
        "--model",
        "deit_tiny_nano",
        "--data",
        "mnist5k",
        "--data-option",
        "channels=3",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "2",
        "--task-option",
        "out_dim=32",
        "--task-option",
        "local_crops=1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    state = read_checkpoint(out / "last.pt")
    assert state["recipe"]["task"]["name"] == "dino" and state["recipe"]["task"]["settings"]["out_dim"] == 32
    assert "knn_acc" in state["history"][-1] and state["model_config"]["num_classes"] == 0


@pytest.mark.slow
def test_two_gloo_ranks_train_dino_to_identical_weights(tmp_path):
    # the head sits outside DDP (the engine averages its gradients) and the centre is all-reduced:
    # both ranks must end with the same backbone, and rank 0's checkpoint holds it
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_ddp import free_port

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "unifiedctx",
        "train",
        "--task",
        "dino",
        "--model",
        "deit_tiny_nano",
        "--data",
        "mnist5k",
        "--data-option",
        "channels=3",
        "--limit-train",
        "128",
        "--limit-test",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--max-steps-per-epoch",
        "3",
        "--task-option",
        "out_dim=32",
        "--task-option",
        "local_crops=2",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        "--save-rank-weights",
    ]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r0, r1 = read_checkpoint(out / "rank0.pt")["model"], read_checkpoint(out / "rank1.pt")["model"]
    last = read_checkpoint(out / "last.pt")
    assert last["recipe"]["world_size"] == 2 and last["step"] == 6
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"ranks differ in {name}"
        assert torch.equal(last["model"][name], r0[name])
    assert "knn_acc" in last["history"][-1] and "center" in last["task_state"]


def test_the_run_cache_takes_a_dino_instance_and_builds_its_model(tmp_path, digits):
    from unifiedctx.train import train_or_load

    recipe = dict(epochs=1, max_steps_per_epoch=2, **FAST)
    model, history = train_or_load("deit_tiny_nano", digits, tmp_path, task=Dino(**SMALL), **recipe)
    assert "knn_acc" in history[-1] and model.num_classes == 0  # the task built the classifier-free model
    again, cached = train_or_load("deit_tiny_nano", digits, tmp_path, task=Dino(**SMALL), **recipe)
    assert cached == history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="other settings"):
        train_or_load("deit_tiny_nano", digits, tmp_path, task=Dino(**{**SMALL, "out_dim": 32}), **recipe)
