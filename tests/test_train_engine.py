"""fit / evaluate / checkpoints: learning, run folder, exact resume, refusal, NaN, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from unifiedctx.data.base import ImageData
from unifiedctx.train import (
    EpochDone,
    History,
    StepDone,
    TrainingDiverged,
    evaluate,
    fit,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

FAST = {"batch_size": 16, "progress": False, "device": "cpu", "lr": 1e-2, "warmup_epochs": 0.5}


class Tiny(nn.Module):
    """conv 3x3 -> GELU -> GroupNorm -> dropout -> mean pool -> linear: a few hundred parameters."""

    def __init__(self, width=6, num_classes=3, in_chans=3, dropout=0.0):
        super().__init__()
        self.config = {"preset": "tiny", "width": width, "num_classes": num_classes, "dropout": dropout}
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.GELU(), nn.GroupNorm(1, width),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def brightness_data(n_train=128, n_test=48, size=8, seed=0) -> ImageData:
    """Class k = images of brightness around 40 + 80 k, plus noise: easy, but must be learned."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, 3, (n,), generator=gen)
        x = 40 + 80 * y.view(n, 1, 1, 1) + torch.randint(-30, 30, (n, 3, size, size), generator=gen)
        return x.clamp(0, 255).to(torch.uint8), y

    (tx, ty), (vx, vy) = split(n_train), split(n_test)
    return ImageData("bright", tx, ty, vx, vy, ["dark", "mid", "light"], (0.5,) * 3, (0.3,) * 3)


def make(seed=0, **kw) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(**kw)


def test_fit_learns_and_writes_the_run_folder(tmp_path):
    data = brightness_data()
    model = make()
    before = evaluate(model, data, device="cpu")["acc"]
    hist = fit(model, data, epochs=4, out=tmp_path, **FAST)
    assert isinstance(hist, History) and len(hist) == 4 and hist.column("epoch") == [1, 2, 3, 4]
    assert hist[-1]["test_acc"] >= 0.9 > before
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "epoch_time",
                "time"):
        assert key in hist[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt", "config.json", "history.csv", "history.json", "last.pt"]
    assert json.loads((tmp_path / "history.json").read_text()) == list(hist)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == model.config
    again, state = load_checkpoint(tmp_path / "last.pt", make(seed=9))
    assert state["epoch"] == 4 and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                                          model.state_dict().values()))
    assert evaluate(again, data, device="cpu") == pytest.approx(
        {"loss": hist[-1]["test_loss"], "acc": hist[-1]["test_acc"]})


def test_evaluate_is_mean_cross_entropy_and_accuracy():
    data = brightness_data(n_test=50)
    model = make().eval()
    with torch.no_grad():
        logits = model(data.normalize(data.test_x))
    want_loss = nn.functional.cross_entropy(logits, data.test_y).item()
    want_acc = (logits.argmax(1) == data.test_y).float().mean().item()
    got = evaluate(model, data, batch_size=7, device="cpu")
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5) and got["acc"] == pytest.approx(want_acc)


class Crash(Exception):
    pass


def _stop_at(epoch, step):
    def callback(event):
        if isinstance(event, StepDone) and event.epoch == epoch and event.step == step:
            raise Crash

    return callback


def test_resume_after_a_crash_gives_the_same_weights_bit_for_bit(tmp_path):
    data = brightness_data()
    recipe = dict(epochs=3, ema=0.9, mixup=0.4, label_smoothing=0.1, clip_grad=1.0, seed=3, **FAST)
    full = make(dropout=0.2)
    hist_full = fit(full, data, out=tmp_path / "full", **recipe)

    with pytest.raises(Crash):
        fit(make(dropout=0.2), data, out=tmp_path / "cut", callback=_stop_at(2, 3), **recipe)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = make(seed=123, dropout=0.2)  # other initial weights: everything must come from the checkpoint
    hist = fit(resumed, data, out=tmp_path / "cut", resume=True, **recipe)

    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    ema_a = read_checkpoint(tmp_path / "full" / "last.pt")["ema"]
    ema_b = read_checkpoint(tmp_path / "cut" / "last.pt")["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    timing = ("images_per_s", "epoch_time", "time")
    strip = lambda h: [{k: v for k, v in row.items() if k not in timing} for row in h]
    assert strip(hist) == strip(hist_full)


def test_a_run_with_another_seed_differs(tmp_path):
    data = brightness_data()
    a, b = make(), make()
    fit(a, data, epochs=1, seed=0, **FAST)
    fit(b, data, epochs=1, seed=1, **FAST)
    assert not torch.equal(a.head.weight, b.head.weight)


def test_checkpoint_for_another_architecture_is_refused(tmp_path):
    data = brightness_data()
    fit(make(width=6), data, epochs=1, out=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"made for tiny\(.*width=6.*not for tiny\(.*width=8"):
        load_checkpoint(tmp_path / "last.pt", make(width=8))
    with pytest.raises(ValueError, match="width=8"):
        fit(make(width=8), data, epochs=2, out=tmp_path, resume=True, **FAST)


def test_resume_with_other_settings_or_without_resume_is_refused(tmp_path):
    data = brightness_data()
    fit(make(), data, epochs=1, out=tmp_path, **FAST)
    with pytest.raises(ValueError, match="lr: 0.01 in the checkpoint, 0.5 now"):
        fit(make(), data, epochs=1, out=tmp_path, resume=True, **{**FAST, "lr": 0.5})
    with pytest.raises(FileExistsError, match="resume=True"):
        fit(make(), data, epochs=1, out=tmp_path, **FAST)


class NaNAfter(Tiny):
    """Tiny, but every output is NaN from the ``n``-th training forward pass on."""

    def __init__(self, n):
        super().__init__()
        self.calls, self.n = 0, n

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    data = brightness_data()  # 8 steps per epoch: call 11 is epoch 2, step 3
    torch.manual_seed(0)
    model = NaNAfter(11)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 3.*last\.pt \(epoch 1\)"):
        fit(model, data, epochs=3, out=tmp_path, **FAST)
    state = read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = make()
    path = save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make(seed=1), epoch=2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_uses_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "unifiedctx-checkpoint/1", "model": {}, "payload": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable unifiedctx checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a unifiedctx checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("kwargs, error, words", [
    ({"epochs": 0}, ValueError, "epochs must be positive, got 0"),
    ({"epochs": 2.5}, TypeError, "epochs must be an int, got float 2.5"),
    ({"batch_size": 0}, ValueError, "batch_size must be positive, got 0"),
    ({"lr": -1.0}, ValueError, "lr must be > 0"),
    ({"label_smoothing": 1.0}, ValueError, r"label_smoothing must be in \[0, 1\), got 1"),
    ({"ema": 0.5, "clip_grad": 0}, ValueError, "clip_grad must be > 0"),
    ({"amp": "fp8"}, ValueError, "amp must be"),
    ({"device": "tpu9"}, ValueError, "device must be"),
])
def test_bad_arguments_are_named(kwargs, error, words):
    args = {**FAST, "epochs": 1, **kwargs}
    with pytest.raises(error, match=words):
        fit(make(), brightness_data(), **args)


def test_bad_data_and_model_types():
    with pytest.raises(TypeError, match="data must be an ImageData"):
        fit(make(), [1, 2, 3], epochs=1, **FAST)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fit("convnet", brightness_data(), epochs=1, **FAST)


def test_stop_training_from_a_callback_ends_the_run_after_that_epoch(tmp_path):
    from unifiedctx.train import StopTraining

    events = []

    def stop_after_two(event):
        events.append((type(event).__name__, event.epoch))
        if isinstance(event, EpochDone) and event.row["epoch"] == 2:
            raise StopTraining

    hist = fit(make(), brightness_data(), epochs=5, out=tmp_path, callback=stop_after_two, **FAST)
    assert len(hist) == 2 and read_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    assert events[0] == ("TrainingStarted", 0) and events.count(("StepDone", 1)) == 8
    assert events[9] == ("EpochDone", 1) and events[-1] == ("EpochDone", 2)


def test_train_or_load_trains_once_then_loads(tmp_path, monkeypatch):
    from unifiedctx import data as datasets
    from unifiedctx.train import engine

    ds = datasets.load("texture", n_train=32, n_test=16, size=16)
    opts = {"epochs": 1, "batch_size": 16, "progress": False, "device": "cpu"}
    model, hist = engine.train_or_load("deit_tiny_nano", ds, tmp_path, **opts)
    assert len(hist) == 1 and model.config["preset"] == "deit_tiny_nano"

    def no_training(*a, **k):
        raise AssertionError("train_or_load trained again")

    monkeypatch.setattr(engine, "fit", no_training)
    again, hist2 = engine.train_or_load("deit_tiny_nano", ds, tmp_path, **opts)
    assert hist2 == hist
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(AssertionError, match="trained again"):  # more epochs asked: it must train (resume)
        engine.train_or_load("deit_tiny_nano", ds, tmp_path, **{**opts, "epochs": 2})
    rebuilt, _ = load_checkpoint(tmp_path / "last.pt")  # no model given: rebuilt from model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()))


# ------------------------------------------------------------------ the recipe
def _strip(history):
    timing = ("images_per_s", "epoch_time", "time")
    return [{k: v for k, v in row.items() if k not in timing} for row in history]


def test_fit_takes_a_recipe_or_the_same_keywords(tmp_path):
    from unifiedctx.train import Recipe

    data = brightness_data()
    run = {k: FAST[k] for k in ("progress", "device")}
    settings = dict(epochs=2, batch_size=16, lr=1e-2, warmup_epochs=0.5, seed=2)
    recipe = Recipe(**settings, task_options={"label_smoothing": 0.1})
    by_keywords = fit(make(), data, out=tmp_path / "a", **run, **settings, label_smoothing=0.1)
    by_recipe = fit(make(), data, recipe, out=tmp_path / "b", **run)
    mixed = fit(make(), data, recipe.replace(lr=0.5), lr=1e-2, **run)  # keywords replace
    assert _strip(by_keywords) == _strip(by_recipe) == _strip(mixed)
    stored = read_checkpoint(tmp_path / "b" / "last.pt")["recipe"]
    assert Recipe.from_dict(stored) == recipe
    assert json.loads((tmp_path / "a" / "config.json").read_text())["recipe"]["task"] == {
        "name": "classify", "settings": {"label_smoothing": 0.1, "mixup": 0.0, "cutmix": 0.0}}
    with pytest.raises(TypeError, match="unknown training setting 'learning_rate'"):
        fit(make(), data, epochs=1, learning_rate=0.1, **run)
    with pytest.raises(TypeError, match="needs epochs"):
        fit(make(), data, **run)


def test_fit_documents_every_recipe_setting():
    from unifiedctx.train import Recipe

    for name in Recipe.keys():
        assert f"``{name}``" in fit.__doc__, name


def test_resume_lists_every_difference_of_the_recipe(tmp_path):
    data = brightness_data()
    with pytest.raises(Crash):
        fit(make(), data, epochs=2, out=tmp_path, callback=_stop_at(2, 1), **FAST)
    with pytest.raises(ValueError) as err:
        fit(make(), data, epochs=2, out=tmp_path, resume=True, **{**FAST, "lr": 0.5, "seed": 4, "mixup": 0.2})
    message = str(err.value)
    for words in ("lr: 0.01 in the checkpoint, 0.5 now", "seed: 0 in the checkpoint, 4 now",
                  "mixup: 0.0 in the checkpoint, 0.2 now"):
        assert words in message


def test_the_warmup_is_capped_to_a_fifth_of_the_run():
    from unifiedctx.train import WarmupCosine

    data = brightness_data()  # 128 images, batch 16: 8 steps per epoch, 16 in all
    hist = fit(make(), data, epochs=2, **{**FAST, "warmup_epochs": 2.0})
    capped = WarmupCosine(FAST["lr"], 16, 3)   # floor(0.2 * 16) = 3 warm-up steps, not 16
    assert hist[0]["lr"] == pytest.approx(capped(7), rel=1e-12) and hist[0]["lr"] != WarmupCosine(
        FAST["lr"], 16, 16)(7)
    uncapped = fit(make(), data, epochs=2, **{**FAST, "warmup_epochs": 2.0, "warmup_cap": 1.0})
    assert uncapped[0]["lr"] == pytest.approx(WarmupCosine(FAST["lr"], 16, 16)(7), rel=1e-12)


def test_progress_epoch_prints_one_line_per_epoch(capsys):
    fit(make(), brightness_data(), epochs=2, **{**FAST, "progress": "epoch"})
    lines = capsys.readouterr().out.splitlines()
    # each line says which model it is about (its config's preset), then the epoch
    assert [line.split()[:3] for line in lines] == [["tiny", "epoch", "1/2"], ["tiny", "epoch", "2/2"]]
    assert all(" train_loss " in line and " test_acc " in line for line in lines)
    with pytest.raises(ValueError, match="progress must be True, False or 'epoch', got str 'bars'"):
        fit(make(), brightness_data(), epochs=1, **{**FAST, "progress": "bars"})


def _indexed_data(crop_ok: bool, flip_ok: bool, n: int = 32, size: int = 8) -> ImageData:
    """n random images, label i for image i (so a batch says which images it holds)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    y = torch.arange(n)
    return ImageData("indexed", x, y, x[:4], y[:4], [str(i) for i in range(n)], (0.5,) * 3, (0.25,) * 3,
                     crop_ok=crop_ok, flip_ok=flip_ok)


@pytest.mark.parametrize("crop_ok, flip_ok", [(False, False), (False, True), (True, False), (True, True)])
def test_augmentation_follows_what_the_data_allows(crop_ok, flip_ok):
    from unifiedctx.train import DeviceBatches

    data = _indexed_data(crop_ok, flip_ok)
    batches = DeviceBatches(data, 32, "cpu", augment=True, seed=1)
    x, _, labels = next(batches.epoch(0))
    images = data.train_x[labels]
    plain = [torch.equal(a, b) for a, b in zip(x, batches.normalize(images))]
    mirrored = [torch.equal(a, b) for a, b in zip(x, batches.normalize(images.flip(-1)))]
    assert any(mirrored) == flip_ok                       # some image flipped only where flips are ok
    assert all(p or m for p, m in zip(plain, mirrored)) == (not crop_ok)  # shifted only where crops are ok


def test_datasets_declare_their_augmentation():
    from unifiedctx import data as datasets

    assert (datasets.load("mnist5k").crop_ok, datasets.load("mnist5k").flip_ok) == (False, False)
    small = {"n_train": 8, "n_test": 4, "size": 16}
    for name in ("texture", "longrange"):
        ds = datasets.load(name, **small)
        assert not ds.crop_ok and not ds.flip_ok and not ds.subset(4, 2).flip_ok  # kept by subset()
    assert brightness_data().crop_ok and brightness_data().flip_ok  # natural images: both by default


def test_the_loops_events_come_at_their_points_typed(tmp_path):
    """TrainingStarted once, after the folder is claimed and a resumed run loaded (epochs done so far);
    StepDone after every optimizer step; EpochDone after the epoch's checkpoint is written."""
    from unifiedctx.train import StopTraining, TrainingStarted

    data, seen = brightness_data(), []

    def look(event):
        if isinstance(event, TrainingStarted):
            seen.append(("start", event.epoch, event.epochs, event.out))
        elif isinstance(event, StepDone):
            assert event.loss.dim() == 0 and not event.loss.requires_grad and event.steps == 8
            seen.append(("step", event.epoch, event.step, event.global_step))
        else:
            assert isinstance(event, EpochDone) and event.row["epoch"] == event.epoch
            assert read_checkpoint(event.out / "last.pt")["epoch"] == event.epoch  # already written
            seen.append(("epoch", event.epoch))
            if event.epoch == 1:
                raise StopTraining

    fit(make(), data, epochs=2, out=tmp_path, callback=look, **FAST)
    fit(make(), data, epochs=2, out=tmp_path, callback=look, resume=True, **FAST)
    starts = [s for s in seen if s[0] == "start"]
    assert starts == [("start", 0, 2, tmp_path), ("start", 1, 2, tmp_path)]
    steps = [s for s in seen if s[0] == "step"]
    assert [s[3] for s in steps] == list(range(1, 17)) and steps[8] == ("step", 2, 1, 9)
    assert [s for s in seen if s[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]


def test_progress_lines_name_the_model_they_are_about(capsys):
    from unifiedctx.data import load
    from unifiedctx.train import build_model
    from unifiedctx.train.engine import model_label

    data = brightness_data()
    fit(build_model("deit_tiny_nano", data, task="classify"), data, epochs=1, **{**FAST, "progress": "epoch"})
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:3] == ["deit_tiny_nano", "epoch", "1/1"]
    canvas = load("mnist_canvas", size=64, n_train=8, n_test=4, digits=(1, 1))
    assert model_label(build_model("container_light_nano", canvas, task="segment")) == \
        "container_light_nano segmenter"
    assert model_label(build_model("unet", canvas, task="segment", base=4, depth=1)) == "unet"
    assert model_label(make()) == "tiny"
    assert model_label(nn.Sequential(nn.Flatten(), nn.Linear(3, 3))) == "Sequential"   # no config: its class
