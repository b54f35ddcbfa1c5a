"""``fit(..., watch=images)``: every epoch's affinities of a few probe images kept in the run folder, and
the live view fed while the run trains (``unifiedctx/train/watching.py``).

The principles under test: every stored epoch is the affinity that epoch's checkpoint gives (read
independently, from a fresh model loaded with ``weights_only=True``, to float16's rounding); watching
changes nothing of the training and an unwatched run writes no snapshot; a run stopped anywhere and
resumed stores, byte for byte, what the uninterrupted run stored; the budget refuses before a folder
is made and says what fits; a watched run stays watched; the live view gets the curves every
``max(1, steps // 4)`` steps and the maps of every epoch, the numbers of the run.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from misuse_helpers import raises_at_door

from unifiedctx import data as datasets
from unifiedctx.inspection.snapshots import SnapshotBudgetError, SnapshotStore, owns, plan, read_snapshots
from unifiedctx.models import mixing_weights, record_components
from unifiedctx.train import (
    EpochDone,
    StepDone,
    StopTraining,
    TrainingStarted,
    build_model,
    fit,
    load_checkpoint,
    read_checkpoint,
    train_or_load,
    watching,
)
from unifiedctx.train.rundir import RUN_FILES
from unifiedctx.widgets import LiveView

FLOAT16_REL, FLOAT16_TINY = 2.0 ** -11, 2.0 ** -24
RUN = {"batch_size": 16, "lr": 5e-3, "device": "cpu", "progress": False}  # 64 images: 4 steps an epoch
TIMING = ("epoch_time", "images_per_s", "time")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers in every run of this file
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texture():
    return datasets.load("texture", size=16, n_train=64, n_test=32, seed=2)


def probe_of(data, n=3, start=5):
    return data.normalize(data.test_x[start:start + n]).float()


def watched(data, out, name="container_light_nano", seed=3, epochs=3, **kwargs):
    model = build_model(name, data, seed=seed)
    history = fit(model, data, epochs=epochs, out=out, seed=seed, **RUN, **kwargs)
    return model, history


def snapshot_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if owns(p.name)}


def same_weights(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ what is stored
@pytest.mark.parametrize(("name", "seed"), [("container_light_nano", 3), ("deit_tiny_nano", 8)])
def test_every_stored_epoch_is_the_affinity_of_that_epochs_checkpoint(tmp_path, texture, name, seed):
    out, kept = tmp_path / "run", tmp_path / "checkpoints"
    kept.mkdir()
    probe = probe_of(texture)

    def keep(event):  # a checkpoint of every epoch, epoch 0 included
        if isinstance(event, TrainingStarted):
            torch.save(event.model.state_dict(), kept / "epoch0.pt")
        elif isinstance(event, EpochDone):
            shutil.copy(out / "last.pt", kept / f"epoch{event.epoch}.pt")

    watched(texture, out, name, seed, epochs=3, watch=probe, callback=keep)
    run = read_snapshots(out)
    assert run.epochs == [0, 1, 2, 3] and torch.equal(run.images, probe)
    moved = 0.0
    for epoch in run.epochs:
        path = kept / f"epoch{epoch}.pt"
        if epoch == 0:
            model = build_model(name, texture, seed=99)
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            model, _ = load_checkpoint(path)  # rebuilt from its config, read with weights_only=True
        want = record_components(model.eval(), probe)
        assert [la.name for la in run.layers] == list(want)
        for layer in run.layers:
            for component, _, _ in layer.components:
                stored = run.snapshots[epoch].maps[(layer.name, component)].astype(np.float64)
                reference = want[layer.name][component].double().numpy()
                np.testing.assert_allclose(stored, reference, rtol=FLOAT16_REL, atol=FLOAT16_TINY)
                first = run.snapshots[0].maps[(layer.name, component)].astype(np.float64)
                moved = max(moved, float(np.abs(stored - first).max()))
        assert run.mixing(epoch) == {k: dict(v) for k, v in mixing_weights(model).items()}
    assert moved > 1e-3, "training hardly moved the maps: an epoch mix-up would go unseen"
    # the last stored epoch is the run's last.pt
    last, _ = load_checkpoint(out / "last.pt")
    assert torch.equal(torch.load(kept / "epoch3.pt", weights_only=True)["model"]["head.weight"],
                       last.state_dict()["head.weight"])


def test_watching_changes_nothing_of_the_training_and_an_unwatched_run_writes_no_snapshot(tmp_path, texture):
    model_a, history_a = watched(texture, tmp_path / "watched", watch=probe_of(texture))
    model_b, history_b = watched(texture, tmp_path / "plain")
    assert same_weights(model_a.state_dict(), model_b.state_dict())
    strip = [{k: v for k, v in row.items() if k not in TIMING} for row in history_a]
    assert strip == [{k: v for k, v in row.items() if k not in TIMING} for row in history_b]
    a, b = read_checkpoint(tmp_path / "watched" / "last.pt"), read_checkpoint(tmp_path / "plain" / "last.pt")
    assert same_weights(a["model"], b["model"]) and a["step"] == b["step"]
    plain = sorted(p.name for p in (tmp_path / "plain").iterdir() if not p.name.startswith("."))
    assert plain == sorted(RUN_FILES)  # exactly the files an unwatched run always wrote
    names = sorted(p.name for p in (tmp_path / "watched").iterdir() if not p.name.startswith("."))
    assert [n for n in names if n not in RUN_FILES] == [
        "snapshots.e0000.npz", "snapshots.e0001.npz", "snapshots.e0002.npz", "snapshots.e0003.npz",
        "snapshots.json", "snapshots.probe.npz"]


# ------------------------------------------------------------------ resume: byte for byte
def stop_at(epoch: int, step: int | None = None):
    """A callback that stops the run after ``epoch`` (or at ``step`` of it)."""
    def callback(event):
        if step is None and isinstance(event, EpochDone) and event.epoch == epoch:
            raise StopTraining
        if step is not None and isinstance(event, StepDone) and (event.epoch, event.step) == (epoch, step):
            raise StopTraining
    return callback


@pytest.fixture(scope="module")
def straight(tmp_path_factory, texture):
    """The uninterrupted watched run (container_light_nano, seed 3, 3 epochs)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    watched(texture, out, watch=probe_of(texture))
    return out


def after_epoch_2_lost_its_snapshot(out):
    SnapshotStore(out).truncate(1)  # stopped between the checkpoint of epoch 2 and its snapshot


def after_epoch_2_lost_its_checkpoint(out):
    shutil.copy(out / "epoch1.pt", out / "last.pt")  # the snapshot of epoch 2 stored, its checkpoint not
    (out / "epoch1.pt").unlink()


@pytest.mark.parametrize(("stop", "damage"), [
    (stop_at(1), None),                                    # stopped after epoch 1
    (stop_at(2, step=2), None),                            # in the middle of epoch 2
    (stop_at(1, step=1), None),                            # before the first checkpoint: a new run again
    (stop_at(2), after_epoch_2_lost_its_snapshot),
    (stop_at(2), after_epoch_2_lost_its_checkpoint),
], ids=["after-epoch-1", "mid-epoch-2", "before-first-checkpoint", "snapshot-lost", "checkpoint-lost"])
def test_a_stopped_run_resumed_stores_exactly_what_the_uninterrupted_run_did(tmp_path, texture, straight,
                                                                            stop, damage):
    out = tmp_path / "run"
    probe = probe_of(texture)

    def keep_epoch_1(event):
        if isinstance(event, EpochDone) and event.epoch == 1:
            shutil.copy(out / "last.pt", out / "epoch1.pt")

    watched(texture, out, watch=probe, callback=watching_chain(keep_epoch_1, stop))
    if damage is not None:
        damage(out)
    (out / "epoch1.pt").unlink(missing_ok=True)
    torch.manual_seed(1234)  # the resumed run owes nothing to this process's RNG
    watched(texture, out, seed=3, watch=probe.clone(), resume=True)
    assert snapshot_files(out) == snapshot_files(straight)
    weights = read_checkpoint(out / "last.pt")["model"]
    assert same_weights(weights, read_checkpoint(straight / "last.pt")["model"])


def watching_chain(*callbacks):
    def callback(event):
        for c in callbacks:
            c(event)
    return callback


def test_a_watched_run_stays_watched_and_resumes_only_with_its_own_images_and_layers(tmp_path, texture):
    out = tmp_path / "run"
    probe = probe_of(texture)
    watched(texture, out, watch=probe, callback=stop_at(1))
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    err = raises_at_door("watch", watched, texture, out, resume=True)
    assert "snapshots.probe.npz" in str(err)
    with pytest.raises(ValueError, match="not the probe images"):
        watched(texture, out, watch=probe_of(texture, start=0), resume=True)
    with pytest.raises(ValueError, match="watch_layers"):
        watched(texture, out, watch=probe, watch_layers="stages.3.*", resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    # an unwatched run cannot start watching half way: its first epochs are lost
    plain = tmp_path / "plain"
    watched(texture, plain, callback=stop_at(1))
    with pytest.raises(ValueError, match="not watched from its start"):
        watched(texture, plain, watch=probe, resume=True)
    assert not any(owns(p.name) for p in plain.iterdir())
    # a finished watched run may be loaded without watch (nothing is trained)
    watched(texture, out, watch=probe, resume=True)
    model, history = train_or_load("container_light_nano", texture, out, epochs=3, seed=3, **RUN)
    assert len(history) == 3


# ------------------------------------------------------------------ the budget, before anything
def test_the_budget_refuses_before_a_folder_is_made_and_says_what_fits(tmp_path, texture):
    probe = probe_of(texture, n=4)
    out = tmp_path / "run"
    per_epoch = plan(build_model("deit_tiny_nano", texture, seed=1), probe, 1, budget_mb=1e3).first.nbytes
    budget = (3 * per_epoch + probe.numel() * 4 + 1) / 1e6  # epoch 0 and 2 more
    with pytest.raises(SnapshotBudgetError) as info:
        watched(texture, out, "deit_tiny_nano", seed=1, epochs=5, watch=probe, watch_budget_mb=budget)
    text = str(info.value)
    assert "watch_budget_mb=" in text and "2 epochs with these images and layers" in text
    assert "for 5 epochs" in text and "watch_layers=" in text and "watch[:" in text
    assert not out.exists()
    # what it said fits, fits
    watched(texture, out, "deit_tiny_nano", seed=1, epochs=2, watch=probe, watch_budget_mb=budget)
    assert read_snapshots(out).epochs == [0, 1, 2]


def test_watch_layers_chooses_the_layers_kept(tmp_path, texture):
    out = tmp_path / "run"
    watched(texture, out, epochs=1, watch=probe_of(texture), watch_layers=["stages.3.*"])
    assert [la.name for la in read_snapshots(out).layers] == ["stages.3.blocks.0.mixer"]


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"watch": [[0.0]]}, "watch"),
    ({"watch": torch.zeros(2, 3, 16, 16, dtype=torch.uint8)}, "watch"),
    ({"watch": torch.zeros(3, 16, 16)}, "watch"),
    ({"watch": torch.zeros(0, 3, 16, 16)}, "watch"),
    ({"watch": torch.full((1, 3, 16, 16), float("nan"))}, "watch"),
    ({"watch": torch.zeros(2, 1, 16, 16)}, "watch"),             # not the data's channels
    ({"watch": torch.zeros(2, 3, 12, 12)}, "watch"),             # not the data's size
    ({"watch": torch.zeros(2, 3, 16, 16), "watch_layers": 3}, "watch_layers"),
    ({"watch": torch.zeros(2, 3, 16, 16), "watch_layers": []}, "watch_layers"),
    ({"watch": torch.zeros(2, 3, 16, 16), "watch_layers": ["nothing.*"]}, "watch_layers"),
    ({"watch": torch.zeros(2, 3, 16, 16), "watch_budget_mb": 0}, "watch_budget_mb"),
    ({"watch": torch.zeros(2, 3, 16, 16), "watch_budget_mb": "64"}, "watch_budget_mb"),
    ({"watch": torch.zeros(2, 3, 16, 16), "live": "yes"}, "live"),
    ({"watch": torch.zeros(2, 3, 16, 16), "live": 1}, "live"),
    ({"watch": torch.zeros(2, 3, 16, 16), "live": LiveView(torch.zeros(3, 3, 16, 16))}, "live"),
    ({"live": True}, "live"),
    ({"watch_layers": "stages.*"}, "watch_layers"),
    ({"watch": torch.zeros(2, 3, 16, 16), "out": None}, "out"),
])
def test_a_wrong_watch_is_refused_at_the_door_before_a_folder_is_made(tmp_path, texture, kwargs, argument):
    out = tmp_path / "run"
    model = build_model("container_light_nano", texture, seed=0)
    raises_at_door(argument, fit, model, texture, **{"epochs": 1, "out": out, **RUN, **kwargs})
    assert not out.exists()


# ------------------------------------------------------------------ the cache
def test_train_or_load_watches_and_loads_a_watched_run(tmp_path, texture):
    out, probe = tmp_path / "run", probe_of(texture)
    kwargs = {"epochs": 2, "seed": 3, "watch": probe, **RUN}
    model, history = train_or_load("container_light_nano", texture, out, **kwargs)
    files = snapshot_files(out)
    assert read_snapshots(out).epochs == [0, 1, 2] and len(history) == 2
    again, loaded = train_or_load("container_light_nano", texture, out, **kwargs)  # loaded: nothing trained
    assert snapshot_files(out) == files and same_weights(model.state_dict(), again.state_dict())
    with pytest.raises(ValueError, match="watched other images"):
        train_or_load("container_light_nano", texture, out, **{**kwargs, "watch": probe_of(texture, start=0)})
    plain = tmp_path / "plain"
    train_or_load("container_light_nano", texture, plain, epochs=2, seed=3, **RUN)
    with pytest.raises(ValueError, match="trained without watch"):
        train_or_load("container_light_nano", texture, plain, **kwargs)


# ------------------------------------------------------------------ live
def test_the_live_view_gets_the_curves_every_quarter_epoch_and_the_maps_of_every_epoch(tmp_path, texture,
                                                                                       monkeypatch):
    monkeypatch.setattr(watching, "MAP_SHARE", 1e-12)  # maps within an epoch never pay: epochs only
    probe = probe_of(texture)
    view = LiveView(probe, query=(1, 1))
    losses = {}

    def record(event):
        if isinstance(event, StepDone):
            losses[(event.epoch, event.step)] = float(event.loss)

    out = tmp_path / "run"
    _, history = watched(texture, out, epochs=2, watch=probe, live=view, callback=record)
    assert view.epochs == [0.0, 1.0, 2.0]
    panels = {p["title"]: {s["name"]: s for s in p["series"]} for p in view.curves["panels"]}
    recent = panels["loss"][watching.RECENT_LOSS]
    # 4 steps an epoch: a point every max(1, 4 // 4) = 1 step, the epoch's last step aside (its row comes)
    assert recent["x"] == [0.25, 0.5, 0.75, 1.25, 1.5, 1.75]
    assert recent["y"] == [losses[(e, s)] for e in (1, 2) for s in (1, 2, 3)]
    assert panels["loss"]["train_loss"]["y"] == history.column("train_loss")
    assert panels["scores"]["test_acc"]["x"] == [1.0, 2.0]
    stored = read_snapshots(out)
    layer, component = view.shown["layer"], view.shown["component"]
    assert (layer, component) == ("stages.3.blocks.0.mixer", "mixed")  # on a 2 x 2 grid: query (1, 1) is 3
    for k, epoch in enumerate(view.epochs):
        want = stored.snapshots[int(epoch)].maps[(layer, component)][:, :, 3].astype(np.float32)
        np.testing.assert_array_equal(view.maps()[k].reshape(want.shape), want)
    alpha = panels["mixing weights"]["stages.3.blocks.0.mixer alpha"]
    assert alpha["y"] == [stored.mixing(e)["stages.3.blocks.0.mixer"]["alpha"] for e in (0, 1, 2)]


def test_within_a_long_epoch_the_live_view_gets_the_maps_too(tmp_path, texture, monkeypatch):
    monkeypatch.setattr(watching, "MAP_SHARE", 1e12)  # maps always pay: every point brings them
    data = datasets.load("texture", size=16, n_train=256, n_test=16, seed=2)  # 16 steps: a point every 4
    probe = probe_of(data)
    view = LiveView(probe)
    watched(data, None, epochs=1, watch=probe, live=view)  # out=None: shown, not stored
    assert view.epochs == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_resumed_run_shows_its_stored_epochs_first(tmp_path, texture):
    out, probe = tmp_path / "run", probe_of(texture)
    watched(texture, out, watch=probe, callback=stop_at(2))
    view = LiveView(probe)
    watched(texture, out, watch=probe, live=view, resume=True)
    assert [e for e in view.epochs if e == int(e)] == [0.0, 1.0, 2.0, 3.0]
    panels = {p["title"]: {s["name"]: s for s in p["series"]} for p in view.curves["panels"]}
    assert panels["scores"]["test_acc"]["x"] == [1.0, 2.0, 3.0]


# ------------------------------------------------------------------ the command line
def test_the_command_line_watches_the_first_test_images(tmp_path, capsys):
    from unifiedctx.cli import main

    out = tmp_path / "run"
    args = ["train", "--model", "deit_tiny_nano", "--data", "texture", "--img-size", "16", "--data-option",
            "n_train=32", "--data-option", "n_test=16", "--batch-size", "16", "--device", "cpu",
            "--no-progress", "--epochs", "2", "--out", str(out)]
    assert main([*args, "--watch", "3"]) == 0
    run = read_snapshots(out)
    data = datasets.load("texture", size=16, n_train=32, n_test=16)
    assert run.epochs == [0, 1, 2] and torch.equal(run.images, data.normalize(data.test_x[:3]).float())
    capsys.readouterr()
    for bad, words in ((["--watch", "0"], "--watch"), (["--watch", "3", "--watch-budget-mb", "0.001"],
                                                       "watch_budget_mb"),
                       (["--watch", "17"], "--watch 17: the test split of texture has 16 images"),
                       (["--watch-budget-mb", "5"], "give --watch too")):
        with pytest.raises(SystemExit) as exc:
            main([*args[:-1], str(tmp_path / "refused"), *bad])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and words in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------ the course's runs
def test_notebook_04s_runs_are_watched_and_reached_through_the_profile(tmp_path):
    """Notebook 04 trains with ``watch=profile.probe_images(data)``; other notebooks load those runs and
    their snapshots through the profile, which watches the very same images (nothing trained again)."""
    import dataclasses

    from unifiedctx import profiles
    from unifiedctx.train import Recipe

    data = datasets.load("texture", size=16, n_train=32, n_test=16)
    profile = dataclasses.replace(profiles.make("quick", seed=3), cache_dir=tmp_path, device="cpu",
                                  recipe=Recipe(epochs=2, batch_size=16, seed=3))
    probe = profile.probe_images(data)
    assert probe.shape == (profile.watch_images, 3, 16, 16)
    assert torch.equal(probe, profile.probe_images(data))
    assert not torch.equal(dataclasses.replace(profile, seed=4).probe_images(data), probe)  # by the seed
    folder = profile.supervised_folder("convnet")
    train_or_load(profile.model("convnet"), data, folder, profile.recipe, watch=probe,  # as notebook 04 does
                  watch_budget_mb=profile.watch_budget_mb, device="cpu", progress="epoch")
    stamp = (folder / "last.pt").stat().st_mtime_ns
    run = profile.supervised_snapshots("convnet", data)
    assert (folder / "last.pt").stat().st_mtime_ns == stamp  # loaded, not trained again
    assert run.epochs == [0, 1, 2] and torch.equal(run.images, probe)


def test_live_true_shows_a_view_of_its_own(texture, capsys):
    probe = probe_of(texture)
    watched(texture, None, epochs=1, watch=probe, live=True)  # out=None: shown, nothing written
    assert "LiveView" in capsys.readouterr().out  # IPython's display, outside a notebook: the view's repr
