"""Training snapshots (``unifiedctx.inspection.snapshots``): what a watched run keeps of its affinities.

A tiny run is trained here by hand: a nano model, a few steps per "epoch", a snapshot and a
checkpoint (``torch.save`` of the weights) after each. The principle under test: every stored epoch
equals the affinities that the weights of that epoch give (read independently with
``record_components`` from a fresh model loaded with ``weights_only=True``), to float16's rounding;
a resumed run stores exactly what the uninterrupted one did; the budget refuses before anything is
written and says what fits; every file is checked when read back, a bad one named.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unifiedctx.inspection import snapshots as snap
from unifiedctx.inspection.snapshots import (
    SnapshotBudgetError,
    SnapshotFileError,
    SnapshotStore,
    owns,
    plan,
    read_snapshots,
    take_snapshot,
)
from unifiedctx.models import create_model, mixing_weights, record_components

FLOAT16_REL = 2.0 ** -11  # float16 keeps 11 significant bits
FLOAT16_TINY = 2.0 ** -24  # its smallest step (subnormals)


def batches(seed: int, steps: int, size: int = 32):
    """Seeded random images and labels: the "data set" of a tiny run."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.rand(8, 3, size, size, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def train_epoch(model, optimizer, seed: int, steps: int = 3) -> None:
    model.train()
    for x, y in batches(seed, steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def tiny_run(name: str, folder, probe, epochs: int, seed: int, *, start=None, stop=None):
    """Train ``name`` for ``epochs`` epochs, storing a snapshot and the weights after each; returns
    the model. ``start`` (a checkpoint path and its epoch) resumes; ``stop`` ends early."""
    torch.manual_seed(seed)
    model = create_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first_epoch = 1
    if start is None:
        SnapshotStore.create(folder, probe, plan(model, probe, epochs=epochs, budget_mb=64).first)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, folder / "epoch0.pt")
    else:
        path, done = start
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        SnapshotStore(folder).resume(probe, done)
        first_epoch = done + 1
    for epoch in range(first_epoch, (stop or epochs) + 1):
        train_epoch(model, optimizer, seed=1000 * seed + epoch)
        SnapshotStore(folder).append(epoch, take_snapshot(model, probe))
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   folder / f"epoch{epoch}.pt")
    return model


@pytest.fixture(scope="module")
def probe():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(("name", "seed"), [("container_light_nano", 3), ("deit_tiny_nano", 11)])
def test_every_epoch_equals_the_affinities_of_its_weights(tmp_path, probe, name, seed):
    tiny_run(name, tmp_path, probe, epochs=3, seed=seed)
    run = read_snapshots(tmp_path)
    assert run.epochs == [0, 1, 2, 3] and torch.equal(run.images, probe)
    moved, size = 0.0, 0.0
    for epoch in run.epochs:
        model = create_model(name)
        model.load_state_dict(torch.load(tmp_path / f"epoch{epoch}.pt", weights_only=True)["model"])
        want = record_components(model.eval(), probe)
        assert [la.name for la in run.layers] == list(want)
        for layer in run.layers:
            for component, heads, shared in layer.components:
                stored = run.snapshots[epoch].maps[(layer.name, component)].astype(np.float64)
                reference = want[layer.name][component].double().numpy()
                assert stored.shape == reference.shape and stored.shape[1] == heads
                assert shared == (reference.shape[0] == 1)
                np.testing.assert_allclose(stored, reference, rtol=FLOAT16_REL, atol=FLOAT16_TINY)
        assert run.mixing(epoch) == {k: dict(v) for k, v in mixing_weights(model).items()}
        if epoch:
            first = run.snapshots[0].maps[(run.layers[-1].name, run.layers[-1].components[0][0])]
            last = run.snapshots[epoch].maps[(run.layers[-1].name, run.layers[-1].components[0][0])]
            moved = max(moved, float(np.abs(first.astype(np.float64) - last).max()))
            size = max(size, float(np.abs(first.astype(np.float64)).max()))
    # the maps moved by far more than the tolerance: were the epochs mixed up, the test would see it
    assert moved > 20 * (FLOAT16_REL * size + FLOAT16_TINY), "training hardly changed the maps"


def test_a_resumed_run_stores_exactly_what_the_uninterrupted_one_did(tmp_path, probe):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    tiny_run("container_light_nano", straight, probe, epochs=4, seed=5)
    tiny_run("container_light_nano", resumed, probe, epochs=4, seed=5, stop=3)  # killed after epoch 3 ...
    (resumed / "epoch3.pt").unlink()                                            # ... before its checkpoint
    tiny_run("container_light_nano", resumed, probe, epochs=4, seed=5, start=(resumed / "epoch2.pt", 2))
    a, b = read_snapshots(straight), read_snapshots(resumed)
    assert a.epochs == b.epochs == [0, 1, 2, 3, 4]
    for epoch in a.epochs:
        assert a.snapshots[epoch].maps.keys() == b.snapshots[epoch].maps.keys()
        for key, value in a.snapshots[epoch].maps.items():
            assert np.array_equal(value, b.snapshots[epoch].maps[key]), (epoch, key)
        assert a.mixing(epoch) == b.mixing(epoch)
    # and file for file, byte for byte (the same arrays make the same bytes)
    assert [e["sha256"] for e in SnapshotStore(straight).manifest()["epochs"]] == [
        e["sha256"] for e in SnapshotStore(resumed).manifest()["epochs"]]


def test_resume_refuses_other_images_and_an_epoch_it_does_not_hold(tmp_path, probe):
    tiny_run("deit_tiny_nano", tmp_path, probe, epochs=2, seed=0)
    store = SnapshotStore(tmp_path)
    with pytest.raises(ValueError, match="not the probe images"):
        store.resume(probe + 1e-3, 1)
    with pytest.raises(ValueError, match="epoch 7 is not stored"):
        store.resume(probe, 7)
    assert store.epochs == [0, 1, 2]
    store.resume(probe, 1)
    assert store.epochs == [0, 1] and not (tmp_path / "snapshots.e0002.npz").exists()
    with pytest.raises(ValueError, match="epoch 1 is already stored"):
        store.append(1, take_snapshot(create_model("deit_tiny_nano"), probe))
    with pytest.raises(ValueError, match="layers"):
        store.append(2, take_snapshot(create_model("container_light_nano"), probe))
    with pytest.raises(FileExistsError, match="already holds snapshots"):
        SnapshotStore.create(tmp_path, probe, take_snapshot(create_model("deit_tiny_nano"), probe))


def test_the_budget_is_checked_before_anything_is_written_and_says_what_fits(tmp_path, probe):
    torch.manual_seed(0)
    model = create_model("container_light_nano")
    one = take_snapshot(model, probe)
    per_epoch, probe_bytes = one.nbytes, probe.numel() * 4
    assert per_epoch == sum(a.nbytes for a in one.maps.values()) and per_epoch > 0
    budget = 4 * per_epoch + probe_bytes + 1  # epoch 0 and exactly 3 more fit
    with pytest.raises(SnapshotBudgetError) as info:
        plan(model, probe, epochs=10, budget_mb=budget / 1e6)
    text = str(info.value)
    assert isinstance(info.value, ValueError) and "3 epochs with these images and layers" in text
    assert f"{per_epoch / 1e6:.3g} MB per epoch" in text and "budget_mb" in text
    assert re.search(r"(\d of the 3 images|no number of images) for 10 epochs", text)
    assert re.search(r"\d of the 4 layers for 10 epochs \(layers=\[", text)
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert plan(model, probe, epochs=3, budget_mb=budget / 1e6).total_bytes == 4 * per_epoch + probe_bytes
    with pytest.raises(SnapshotBudgetError):
        plan(model, probe, epochs=4, budget_mb=budget / 1e6)
    # the images that fit: shared (static) parts once, the others per image
    shared = per_epoch - 3 * one.image_bytes()
    fits_two = 11 * (shared + 2 * one.image_bytes()) + 2 * probe_bytes // 3
    with pytest.raises(SnapshotBudgetError, match="2 of the 3 images for 10 epochs"):
        plan(model, probe, epochs=10, budget_mb=(fits_two + 1) / 1e6)


@pytest.mark.parametrize(("argument", "value", "error"), [
    ("epochs", 0, ValueError), ("epochs", 2.0, TypeError), ("epochs", True, TypeError),
    ("budget_mb", 0, ValueError), ("budget_mb", "64", TypeError), ("budget_mb", float("nan"), ValueError),
    ("images", torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError),
    ("images", torch.rand(3, 32, 32), ValueError),
    ("model", "deit", TypeError),
])
def test_plan_refuses_at_the_door(probe, argument, value, error):
    kwargs = {"model": create_model("deit_tiny_nano"), "images": probe, "epochs": 3, "budget_mb": 64,
              argument: value}
    with pytest.raises(error, match=argument):
        plan(**kwargs)


def test_a_snapshot_leaves_the_model_as_it_found_it(probe):
    torch.manual_seed(1)
    model = create_model("container_light_nano").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    take_snapshot(model, probe)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert torch.equal(torch.get_rng_state(), rng)


def test_any_network_with_a_token_mixer_can_be_watched(probe):
    """Not only ours: a user's own network (a depthwise conv between two plain layers)."""
    class Mine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.head = torch.nn.Linear(8, 10)

        def forward(self, x):
            y = self.stem(x)
            return self.head((y + self.dw(y)).mean((2, 3)))

    torch.manual_seed(0)
    model = Mine()
    taken = take_snapshot(model, probe)
    assert [(la.name, la.grid) for la in taken.layers] == [("dw", (8, 8))]
    want = record_components(model.eval(), probe)["dw"]["static"]
    np.testing.assert_allclose(taken.maps[("dw", "static")].astype(np.float64), want.double().numpy(),
                               rtol=FLOAT16_REL, atol=FLOAT16_TINY)


def test_the_folder_owns_exactly_its_names():
    for name in ("snapshots.json", "snapshots.probe.npz", "snapshots.e0000.npz", "snapshots.e12345.npz"):
        assert owns(name)
    for name in ("snapshots.e12.npz", "snapshots.json.tmp", ".snapshots.json.x.tmp",
                 "snapshots.e0001.npz.bak", "mysnapshots.json", "snapshots/e0001.npz", "snapshots.e0001.npy",
                 "last.pt", None):
        assert not owns(name)


# ------------------------------------------------------------------ reading back: every entry checked
@pytest.fixture
def run_folder(tmp_path, probe):
    tiny_run("container_light_nano", tmp_path, probe, epochs=2, seed=2)
    return tmp_path


def rewrite_manifest(folder, change):
    manifest = json.loads((folder / snap.MANIFEST).read_text())
    change(manifest)
    (folder / snap.MANIFEST).write_text(json.dumps(manifest))


def rewrite_epoch(folder, epoch: int, change):
    """Replace an epoch file's arrays (``change(dict)``) and record the new file's SHA-256, so that
    only the check of the arrays themselves can catch what was changed."""
    name = snap.EPOCH_FILE.format(epoch=epoch)
    with np.load(folder / name) as found:
        arrays = {k: found[k] for k in found.files}
    change(arrays)
    np.savez_compressed(folder / name, **arrays)
    rewrite_manifest(folder, lambda m: m["epochs"][epoch].update(sha256=snap._sha256(folder / name)))


BAD = [
    (lambda f: (f / "snapshots.e0001.npz").unlink(), ["snapshots.e0001.npz", "epoch 1", "missing"]),
    (lambda f: (f / "snapshots.e0002.npz").write_bytes(b"not a zip"), ["snapshots.e0002.npz", "SHA-256"]),
    (lambda f: (f / snap.MANIFEST).write_text("{"), ["snapshots.json", "not valid JSON"]),
    (lambda f: (f / snap.MANIFEST).write_text("[1, 2]"), ["snapshots.json", "JSON object", "list"]),
    (lambda f: rewrite_manifest(f, lambda m: m.update(version=9)), ["snapshots.json", "version"]),
    (lambda f: rewrite_manifest(f, lambda m: m["epochs"][1].update(epoch="one")),
     ["epochs[1]['epoch']", "an int"]),
    (lambda f: rewrite_manifest(f, lambda m: m["epochs"][1].update(epoch=-3)), ["epochs[1]['epoch']", "-3"]),
    (lambda f: rewrite_manifest(f, lambda m: m["epochs"][2].update(file="../last.pt")),
     ["epochs[2]['file']", "snapshots.e0002.npz", "../last.pt"]),
    (lambda f: rewrite_manifest(f, lambda m: m["epochs"].reverse()), ["epochs[0]['epoch']", "start at 0"]),
    (lambda f: rewrite_manifest(f, lambda m: m["epochs"][0]["mixing"].update(x={"alpha": "big"})),
     ["epochs[0]['mixing']['x']['alpha']", "number"]),
    (lambda f: rewrite_manifest(f, lambda m: m["layers"][1].update(grid=[8])),
     ["layers[1]['grid']", "[h, w]"]),
    (lambda f: rewrite_manifest(f, lambda m: m["layers"][3]["components"][0].update(heads=0)),
     ["layers[3]['components'][0]['heads']", "positive"]),
    (lambda f: rewrite_manifest(f, lambda m: m["layers"].append(m["layers"][0])), ["layers[4]", "repeats"]),
    (lambda f: rewrite_manifest(f, lambda m: m["probe"].update(shape=[3, 3, 32])),
     ["'probe'", "[B, C, H, W]"]),
    (lambda f: rewrite_manifest(f, lambda m: m.update(epochs=[])), ["lists no epoch"]),
    (lambda f: rewrite_epoch(f, 1, lambda a: a.update({"L3.mixed": a["L3.mixed"][:, :, :15]})),
     ["snapshots.e0001.npz", "epoch 1", "'L3.mixed'", "stages.3.blocks.0.mixer", "(3, 2, 16, 16)"]),
    (lambda f: rewrite_epoch(f, 2, lambda a: a.update({"L0.static": a["L0.static"].astype(np.float32)})),
     ["snapshots.e0002.npz", "'L0.static'", "float16", "float32"]),
    (lambda f: rewrite_epoch(f, 0, lambda a: a.pop("L3.dynamic")),
     ["snapshots.e0000.npz", "'L3.dynamic'", "missing"]),
    (lambda f: rewrite_epoch(f, 0, lambda a: a.update(extra=np.zeros(1))), ["snapshots.e0000.npz", "extra"]),
    (lambda f: (f / snap.PROBE).unlink(), ["snapshots.probe.npz", "missing"]),
    (lambda f: (f / snap.MANIFEST).unlink(), ["snapshots.json is missing"]),
]


@pytest.mark.parametrize(("damage", "words"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_entry_is_named_with_its_file(run_folder, damage, words):
    damage(run_folder)
    with pytest.raises(SnapshotFileError) as info:
        read_snapshots(run_folder)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_reading_refuses_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(TypeError, match="folder"):
        read_snapshots(3)
    with pytest.raises(ValueError, match="snapshots.json is missing"):
        read_snapshots(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        read_snapshots(tmp_path / "f")


def test_the_public_api_is_covered():
    covered = {"LayerEntry", "Snapshot", "SnapshotBudgetError", "SnapshotFileError", "SnapshotPlan",
               "SnapshotRun", "SnapshotStore", "check_budget", "owns", "plan", "read_snapshots",
               "take_snapshot", "DEFAULT_BUDGET_MB"}
    assert set(snap.__all__) == covered


def test_an_affinity_beyond_float16_is_refused_naming_its_layer(probe):
    """float16 holds up to 65504: a larger (finite) affinity would be stored as infinity, so it is refused."""
    torch.manual_seed(0)
    model = create_model("container_light_nano")
    with torch.no_grad():
        model.stages[0].blocks[0].mixer.conv.weight.mul_(1e6)  # a depthwise kernel of a diverged run
    beyond = r"'stages.0.blocks.0.mixer' \(static\) has affinities up to .*float16"
    with pytest.raises(ValueError, match=beyond):
        take_snapshot(model, probe)
    with torch.no_grad():
        model.stages[0].blocks[0].mixer.conv.weight.div_(1e6 / 6e4)  # 6e4 * a weight < 1: stored as it is
    taken = take_snapshot(model, probe)
    assert np.isfinite(taken.maps[("stages.0.blocks.0.mixer", "static")]).all()
