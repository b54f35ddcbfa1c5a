"""The engine is task-generic: a task says its loss, metric and data; fit does the rest."""

from __future__ import annotations

import pytest
import torch
from test_train_engine import FAST, Tiny, brightness_data
from torch import nn

from unifiedctx.train import Task, fit, read_checkpoint, tasks
from unifiedctx.train import distributed as D


class MeanBrightness(Task):
    """Regress each image's mean pixel value (in normalised units) with the model's first output."""

    name = "mean_brightness"
    best_metric = "test_neg_mse"

    def __init__(self):
        self.steps = 0

    def loss(self, model, batch):
        x = batch[0]
        err = model(x)[:, 0] - x.mean((1, 2, 3))
        return (err**2).mean(), {"sq": (err.detach() ** 2).sum(), "n": torch.tensor(float(len(x)))}

    def after_step(self, model, global_step, total_steps):
        self.steps += 1

    def train_metrics(self, sums):
        return {"train_mse": sums["sq"] / sums["n"]}

    @torch.no_grad()
    def evaluate(self, model, batches, batch_size, amp_dtype, ctx, device):
        sums = torch.zeros(2, dtype=torch.float64)
        for x, _ in batches.test_batches(batch_size):
            sums += torch.stack([((model(x)[:, 0] - x.mean((1, 2, 3))) ** 2).sum().double(),
                                 torch.tensor(float(len(x)), dtype=torch.float64)])
        D.all_reduce_sum(sums, ctx)
        return {"test_neg_mse": -(sums[0] / sums[1]).item()}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state.get("steps", 0)


def test_a_new_task_trains_checkpoints_and_picks_best_by_its_own_metric(tmp_path):
    data = brightness_data()
    torch.manual_seed(0)
    task = MeanBrightness()
    history = fit(Tiny(), data, epochs=3, task=task, out=tmp_path, **FAST)
    assert "test_acc" not in history[-1] and "train_mse" in history[-1]
    assert history[-1]["train_mse"] < history[0]["train_mse"]
    assert task.steps == 3 * (128 // 16)
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["task_state"] == {"steps": task.steps}
    assert state["recipe"]["task"] == {"name": "mean_brightness", "settings": {}}
    best = read_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == max(history, key=lambda r: r["test_neg_mse"])["epoch"]


def test_resume_refuses_another_task(tmp_path):
    data = brightness_data()
    fit(Tiny(), data, epochs=1, out=tmp_path, **FAST)
    with pytest.raises(ValueError, match="task"):
        fit(Tiny(), data, epochs=1, out=tmp_path, resume=True, task=MeanBrightness(), **FAST)


def test_classify_refuses_a_model_with_other_classes_before_the_first_step():
    data = brightness_data()  # 3 classes
    model = Tiny(num_classes=2)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="2 classes but the data has 3"):
        fit(model, data, epochs=1, **FAST)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_task_registry_names_and_errors():
    assert {"classify", "segment", "dino"} <= set(tasks.available())
    assert isinstance(tasks.create("classify"), tasks.Classify)
    with pytest.raises(ValueError, match="Did you mean 'classify'"):
        tasks.create("clasify")
    with pytest.raises(TypeError, match="task must be"):
        tasks.create(3)
    with pytest.raises(ValueError, match="label_smoothing"):
        tasks.create("classify", label_smoothing=1.5)
    with pytest.raises(TypeError, match="Task subclass"):
        tasks.register(nn.Linear)


@pytest.fixture
def registry(monkeypatch):
    """Every task imported, then a copy of the registry that the test may change (undone after it)."""
    for name in tasks.available():
        tasks.task_class(name)
    monkeypatch.setattr(tasks, "REGISTRY", dict(tasks.REGISTRY))


@pytest.mark.parametrize("taken", ["classify", "segment", "dino", "count"])
def test_register_refuses_a_taken_name_unless_asked_to_replace(taken, registry):
    holder = tasks.task_class(taken)

    class Impostor(MeanBrightness):
        name = taken

    words = rf"task name '{taken}' is taken by .*{holder.__qualname__}.*replace=True"
    with pytest.raises(ValueError, match=words):
        tasks.register(Impostor)
    with pytest.raises(ValueError, match="is taken"):
        tasks.register()(Impostor)  # the decorator's form
    assert tasks.task_class(taken) is holder  # nothing replaced
    assert tasks.register(holder) is holder  # the same class again is no replacement
    assert tasks.register(Impostor, replace=True) is Impostor and tasks.task_class(taken) is Impostor
    with pytest.raises(TypeError, match="replace must be True or False"):
        tasks.register(Impostor, replace="yes")


def test_register_takes_a_free_name_and_refuses_a_nameless_task(registry):

    @tasks.register
    class Brightness(MeanBrightness):
        name = "brightness_regression"

    assert tasks.task_class("brightness_regression") is Brightness

    class Nameless(MeanBrightness):
        name = ""

    with pytest.raises(TypeError, match="name must be a non-empty string"):
        tasks.register(Nameless)


def test_the_name_of_a_task_not_imported_yet_is_taken_too():
    """``count`` is imported on first use; registering another ``count`` first must not take its name."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, pytest; from unifiedctx.train import tasks, Task\n"
            "assert 'unifiedctx.train.tasks.count' not in sys.modules\n"
            "Other = type('Other', (tasks.Classify,), {'name': 'count'})\n"
            "with pytest.raises(ValueError, match='taken by unifiedctx.train.tasks.count.Count'):\n"
            "    tasks.register(Other)\n"
            "assert tasks.task_class('count').__module__ == 'unifiedctx.train.tasks.count'\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr


@pytest.fixture
def built(monkeypatch):
    """The tasks built while the test runs (every built-in task runs Task.__init__)."""
    made = []
    init = Task.__init__

    def counting_init(self, **options):
        made.append(type(self).__name__)
        init(self, **options)

    monkeypatch.setattr(Task, "__init__", counting_init)
    return made


def test_one_run_builds_its_task_once(built, tmp_path, capsys):
    """fit, train_or_load and the command line's train each build exactly one Task, and the run records
    that one (the Recipe checks task options without building a task)."""
    from unifiedctx import cli, data
    from unifiedctx.train import Recipe, build_model, train_or_load

    ds = data.load("texture", size=16, n_train=32, n_test=16)
    model = build_model("convnet_nano", ds, seed=0)
    built.clear()
    fit(model, ds, epochs=1, batch_size=16, label_smoothing=0.1, device="cpu", progress=False)
    assert built == ["Classify"]
    built.clear()
    recipe = Recipe(epochs=1, batch_size=16, task="count", task_options={"max_count": 3})
    assert built == []  # a recipe names its task and checks its options: it builds none
    built.clear()
    train_or_load("convnet_nano", data.load("texture", size=16, n_train=32, n_test=16), tmp_path / "cached",
                  recipe.replace(task="classify"), device="cpu", progress=False)
    assert built == ["Classify"]
    built.clear()
    assert cli.main(["train", "--model", "convnet_nano", "--data", "texture", "--img-size", "16",
                     "--data-option", "n_train=32", "--data-option", "n_test=16", "--epochs", "1",
                     "--batch-size", "16", "--label-smoothing", "0.1", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "cli")]) == 0
    assert built == ["Classify"]


def test_from_fit_to_the_first_backward_a_reader_passes_fit_and_train_one_epoch(monkeypatch):
    """The loop is one page: at the first loss.backward() the library's frames are fit, then
    train_one_epoch, both in train/engine.py (no plan, no run state, no inner _train hop)."""
    import inspect

    from unifiedctx import data
    from unifiedctx.train import build_model

    stacks = []
    backward = torch.Tensor.backward

    def recording_backward(self, *args, **kwargs):
        if not stacks:
            stacks.append([(f.filename.rsplit("/", 1)[-1], f.function) for f in inspect.stack()[1:]
                           if "/unifiedctx/" in f.filename])
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", recording_backward)
    ds = data.load("texture", size=16, n_train=32, n_test=16)
    fit(build_model("convnet_nano", ds), ds, epochs=1, batch_size=16, device="cpu", progress=False)
    assert stacks == [[("engine.py", "train_one_epoch"), ("engine.py", "fit")]]
