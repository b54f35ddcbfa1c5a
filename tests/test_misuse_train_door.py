"""Every door of training refuses a wrong input itself, and a refused setting writes nothing.

One table per entry point (``fit``, ``train_or_load``, ``evaluate``, ``run_recipe``, ``Recipe``,
``Recipe.replace`` and ``RunOptions``, the checkpoint readers and writers, ``build_model``, the
pretrained-weights loader): for each argument the wrong inputs of its kind (:data:`KINDS` below and
:data:`misuse_helpers.KINDS`). Each must be a ``ValueError``/``TypeError`` (or our own
``FileNotFoundError``-like :class:`~unifiedctx.validation.PathNotFound`) whose message names the
argument and whose traceback ends inside ``unifiedctx`` (:func:`misuse_helpers.raises_at_door`);
for ``fit`` and ``train_or_load`` the run folder they were given must not exist afterwards.
"""

from __future__ import annotations

import math

import pytest
import torch
from misuse_helpers import FAST, WRONG, bright, make, raises_at_door

from unifiedctx import train
from unifiedctx.files import FORMAT
from unifiedctx.models import pretrained
from unifiedctx.train import (
    Recipe,
    RunOptions,
    build_model,
    evaluate,
    fit,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    train_or_load,
)
from unifiedctx.train.recipe import run_recipe

#: More wrong values than the shared table: ranges that only some settings have.
MORE = {
    "huge": 1e38,
    "above one": 1.5,
    "empty string": "",
    "dict": {"a": 1},
    "gpu": "gpu",
    "cuda index": "cuda:x",
    "int for device": 0,
    "fp16": "fp16",
    "string for flag": "yes",
}
VALUES = {**WRONG, **MORE}

#: The wrong values each kind of training argument must refuse.
KINDS = {
    "count": ("bool for int", "string for number", "float for int", "negative", "zero", "nan", "list"),
    "count?": ("bool for int", "string for number", "float for int", "negative", "zero", "nan", "list"),
    "seed": ("bool for int", "string for number", "float for int", "negative", "nan", "list"),
    "lr": ("bool for int", "string for number", "negative", "zero", "nan", "inf", "list", "huge"),
    "nonneg": ("bool for int", "string for number", "negative", "nan", "inf", "list"),
    "unit": ("bool for int", "string for number", "negative", "above one", "nan", "inf", "list"),
    "positive?": ("bool for int", "string for number", "negative", "zero", "nan", "inf", "list"),
    "open unit?": ("bool for int", "string for number", "negative", "zero", "one", "nan", "inf", "list"),
    "smoothing": ("bool for int", "string for number", "negative", "one", "nan", "inf", "list"),
    "flag": ("string for bool", "int for bool", "none"),
    "task": ("int for bool", "bool for int", "unknown name", "empty string", "list"),
    "options": ("string for number", "list", "int for bool"),
    "device": ("gpu", "cuda index", "int for device", "bool for int", "list", "empty string"),
    "amp": ("fp16", "int for bool", "float for int", "list"),
    "compile": ("string for bool", "int for bool", "none", "list"),
    "progress": ("int for bool", "zero", "string for flag", "none", "list"),
    "callback": ("unknown name", "int for bool", "list"),
    "run_info": ("unknown name", "list", "int for bool"),
    "path": ("int for bool", "bool for int", "none", "list", "empty string"),
    "out": ("int for bool", "bool for int", "list", "empty string"),
    "model": ("unknown name", "int for bool", "list"),
    "model?": ("unknown name", "int for bool", "list"),
    "data": ("unknown name", "int for bool", "none", "list"),
    "recipe": ("unknown name", "int for bool", "dict"),
    "model name": ("unknown name", "int for bool", "none", "list"),
    "images?": ("list", "int for bool", "bool for int", "unknown name", "nan"),
    "names?": ("int for bool", "bool for int", "list", "empty string"),
    "positive": ("bool for int", "string for number", "negative", "zero", "nan", "inf", "list", "none"),
}


def cases(table):
    """``pytest.param(call, argument, value)`` for each ``(entry, argument, kind)`` row."""
    out = []
    for entry, call, argument, kind in table:
        for label in KINDS[kind]:
            out.append(pytest.param(call, argument, VALUES[label], id=f"{entry}-{argument}-{label}"))
    return out


# ------------------------------------------------------------------ the recipe and fit's own keywords
RECIPE_ARGS = [
    ("epochs", "count"),
    ("batch_size", "count"),
    ("lr", "lr"),
    ("weight_decay", "nonneg"),
    ("warmup_epochs", "nonneg"),
    ("warmup_cap", "unit"),
    ("clip_grad", "positive?"),
    ("ema", "open unit?"),
    ("augment", "flag"),
    ("seed", "seed"),
    ("max_steps_per_epoch", "count?"),
    ("task", "task"),
    ("task_options", "options"),
    ("label_smoothing", "smoothing"),
    ("mixup", "nonneg"),
    ("cutmix", "nonneg"),
]
RUN_ARGS = [
    ("device", "device"),
    ("amp", "amp"),
    ("compile", "compile"),
    ("channels_last", "flag"),
    ("resume", "flag"),
    ("progress", "progress"),
    ("eval_batch_size", "count?"),
    ("callback", "callback"),
    ("run_info", "run_info"),
    ("save_rank_weights", "flag"),
    ("allow_foreign", "flag"),
    ("watch", "images?"),
    ("watch_layers", "names?"),
    ("watch_budget_mb", "positive"),
    ("live", "flag"),
    ("out", "out"),
]


def _fit(argument, value, folder):
    settings = {**FAST, "epochs": 1, "out": folder, argument: value}
    return fit(make(), bright(), **settings)


#: The settings of RECIPE_ARGS that are options of the classify task: in a Recipe, they are task_options.
TASK_OPTIONS = ("label_smoothing", "mixup", "cutmix")


def recipe_field(argument, value) -> dict:
    """``{argument: value}`` as a Recipe takes it (a task's option inside ``task_options``)."""
    return {"task_options": {argument: value}} if argument in TASK_OPTIONS else {argument: value}


def _fit_recipe(argument, value, folder):
    """The same setting given as a field of a Recipe (built inside the call)."""
    recipe = Recipe(**{"epochs": 1, **recipe_field(argument, value)})
    return fit(make(), bright(), recipe, out=folder, progress=False)


def _train_or_load(argument, value, folder):
    settings = {**FAST, "epochs": 1, argument: value}
    return train_or_load("convnet_nano", bright(size=16), settings.pop("out", folder), **settings)


FIT_TABLE = [
    *[("fit", _fit, a, k) for a, k in RECIPE_ARGS + RUN_ARGS],
    *[("fit(Recipe)", _fit_recipe, a, k) for a, k in RECIPE_ARGS],
    *[
        ("train_or_load", _train_or_load, a, k)
        for a, k in RECIPE_ARGS + RUN_ARGS
        if a not in ("resume", "out")
    ],
    ("train_or_load", _train_or_load, "out", "path"),  # a cached run needs a folder: None is refused too
    ("fit", lambda a, v, f: fit(v, bright(), epochs=1, out=f, **FAST), "model", "model"),
    ("fit", lambda a, v, f: fit(make(), v, epochs=1, out=f, **FAST), "data", "data"),
    ("fit", lambda a, v, f: fit(make(), bright(), v, out=f, **FAST), "recipe", "recipe"),
    (
        "train_or_load",
        lambda a, v, f: train_or_load(v, bright(size=16), f, epochs=1, **FAST),
        "model_name",
        "model name",
    ),
    (
        "train_or_load",
        lambda a, v, f: train_or_load("convnet_nano", bright(size=16), f, epochs=1, model_options=v, **FAST),
        "model_options",
        "options",
    ),
]


@pytest.mark.parametrize("call, argument, value", cases(FIT_TABLE))
def test_fit_and_train_or_load_refuse_at_the_door_and_write_nothing(call, argument, value, tmp_path):
    folder = tmp_path / "run"
    raises_at_door(argument, call, argument, value, folder)
    assert not folder.exists(), f"a run folder was made for a refused {argument}={value!r}"


def test_out_that_is_a_file_is_refused_and_the_file_kept(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for call in (
        lambda: fit(make(), bright(), epochs=1, out=notes, **FAST),
        lambda: train_or_load("convnet_nano", bright(size=16), notes, epochs=1, **FAST),
    ):
        raises_at_door("out", call, errors=(ValueError, TypeError, NotADirectoryError))
    assert notes.read_text() == "keep me"


@pytest.mark.parametrize(
    "changes",
    [
        {"task_options": {"bogus": 1}},
        {"task_options": {"label_smoothing": "0.1"}},
        {"task_options": {"mixup": math.nan}},
        {"task": "segment", "mixup": 0.2},
    ],
)
def test_a_wrong_task_option_is_refused_before_a_folder_is_made(changes, tmp_path):
    folder = tmp_path / "run"
    name = next(iter(changes.get("task_options", {"mixup": 0})))
    raises_at_door(name, fit, make(), bright(), epochs=1, out=folder, **FAST, **changes)
    assert not folder.exists()


def test_a_class_count_that_does_not_match_the_data_is_refused_before_a_folder_is_made(tmp_path):
    folder = tmp_path / "run"
    err = raises_at_door("classes", fit, make(num_classes=2), bright(), epochs=1, out=folder, **FAST)
    assert "2 classes" in str(err) and "3" in str(err)
    assert not folder.exists()


# ------------------------------------------------------------------ Recipe, Recipe.replace, run_recipe
RECIPE_TABLE = [
    *[("Recipe", lambda a, v: Recipe(**{"epochs": 2, **recipe_field(a, v)}), a, k) for a, k in RECIPE_ARGS],
    *[("Recipe.replace", lambda a, v: Recipe(epochs=2).replace(**recipe_field(a, v)), a, k)
      for a, k in RECIPE_ARGS],
    *[("RunOptions", lambda a, v: RunOptions(**{a: v}), a, k) for a, k in RUN_ARGS if a != "out"],
    ("RunOptions", lambda a, v: RunOptions(out=v), "out", "out"),
    ("run_recipe", lambda a, v: run_recipe(bright(), v), "recipe", "recipe"),
    *[
        ("run_recipe", lambda a, v: run_recipe(bright(), Recipe(epochs=1), **{a: v}), a, k)
        for a, k in RUN_ARGS
        if a not in ("out", "callback", "resume")
    ],
]


@pytest.mark.parametrize("call, argument, value", cases(RECIPE_TABLE))
def test_the_recipe_refuses_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


@pytest.mark.parametrize(
    "stored, argument",
    [
        (5, "recipe"),
        ({"epochs": "3"}, "epochs"),
        ({"epochs": 3, "lr": math.inf}, "lr"),
        ({"epochs": 3, "task": {"name": "segmnt"}}, "task"),
    ],
)
def test_a_stored_recipe_that_is_wrong_is_refused_by_name(stored, argument):
    raises_at_door(argument, Recipe.from_dict, stored)


def test_an_unknown_setting_is_refused_naming_it():
    for call in (
        lambda: Recipe(epochs=1).replace(lrr=0.1),
        lambda: fit(make(), bright(), epochs=1, lerning_rate=0.1, **FAST),
        lambda: train_or_load("convnet_nano", bright(size=16), "run", epochs=1, lerning_rate=0.1, **FAST),
    ):
        raises_at_door("r", call)  # the message names the unknown keyword, checked below
    # Recipe is a plain dataclass: Python itself refuses an unknown field, naming it
    with pytest.raises(TypeError, match="unexpected keyword argument 'learning_rate'"):
        Recipe(epochs=1, learning_rate=0.1)


# ------------------------------------------------------------------ evaluate
EVAL_TABLE = [
    ("evaluate", lambda a, v: evaluate(v, bright(), device="cpu"), "model", "model"),
    ("evaluate", lambda a, v: evaluate(make(), v, device="cpu"), "data", "data"),
    ("evaluate", lambda a, v: evaluate(make(), bright(), batch_size=v, device="cpu"), "batch_size", "count"),
    ("evaluate", lambda a, v: evaluate(make(), bright(), device=v), "device", "device"),
    ("evaluate", lambda a, v: evaluate(make(), bright(), device="cpu", amp=v), "amp", "amp"),
    (
        "evaluate",
        lambda a, v: evaluate(make(), bright(), device="cpu", channels_last=v),
        "channels_last",
        "flag",
    ),
    ("evaluate", lambda a, v: evaluate(make(), bright(), device="cpu", task=v), "task", "task"),
]


@pytest.mark.parametrize("call, argument, value", cases(EVAL_TABLE))
def test_evaluate_refuses_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


def test_evaluating_a_model_with_too_few_classes_names_both_counts():
    err = raises_at_door("classes", evaluate, make(num_classes=2), bright(classes=4), device="cpu")
    assert "2" in str(err) and "4" in str(err)


# ------------------------------------------------------------------ checkpoints
@pytest.fixture
def files(tmp_path):
    """Paths of good and bad checkpoint files (and of a folder and of nothing)."""
    good = save_checkpoint(tmp_path / "good.pt", make(), epoch=1)
    torch.save({"format": FORMAT, "model": 5}, tmp_path / "model5.pt")
    torch.save({"format": FORMAT, "epoch": 3}, tmp_path / "nomodel.pt")
    torch.save({"format": FORMAT, "model": {"w": "not a tensor"}}, tmp_path / "strings.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"model": make().state_dict()}, tmp_path / "foreign.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "folder").mkdir()
    return {
        "good": good,
        **{name: tmp_path / f"{name}.pt" for name in ("model5", "nomodel", "strings", "list", "foreign")},
        "text": tmp_path / "notes.txt",
        "folder": tmp_path / "folder",
        "missing": tmp_path / "nothing.pt",
    }


#: file -> what the message must say beside the path (a regular expression)
BAD_FILES = {
    "model5": "holds int",
    "nomodel": "no 'model' entry",
    "strings": "non-tensor",
    "list": "not a unifiedctx checkpoint|holds a list",
    "foreign": "not a unifiedctx checkpoint|no counterpart",
    "text": "not a readable|cannot be read",
    "folder": "is a folder",
    "missing": "nothing exists",
}
READERS = {
    "read_checkpoint": lambda p: read_checkpoint(p),
    "load_checkpoint": lambda p: load_checkpoint(p, make()),
    "load_checkpoint(rebuild)": lambda p: load_checkpoint(p),
    "pretrained.load_weights": lambda p: pretrained.load_weights(make(), p),
}
def reader_cases():
    out = []
    for reader in READERS:
        for which in BAD_FILES:
            out.append(pytest.param(which, reader, id=f"{reader}-{which}"))
    return out


@pytest.mark.parametrize("which, reader", reader_cases())
def test_a_file_that_is_not_a_checkpoint_is_named_with_what_it_holds(files, which, reader):
    import re

    path = files[which]
    err = raises_at_door(str(path), READERS[reader], path)
    assert re.search(BAD_FILES[which], str(err)), str(err)
    if which in ("folder", "missing"):
        assert "path" in str(err)  # the argument is named too


@pytest.mark.parametrize(
    "reader",
    [
        "read_checkpoint",
        "load_checkpoint",
        "save_checkpoint",
        "pretrained.read_weights_file",
    ],
)
@pytest.mark.parametrize("label", [k for k in KINDS["path"] if k != "empty string"])
def test_a_path_that_is_not_a_path_is_a_type_error(reader, label):
    value = VALUES[label]
    call = {
        "read_checkpoint": lambda: read_checkpoint(value),
        "load_checkpoint": lambda: load_checkpoint(value),
        "save_checkpoint": lambda: save_checkpoint(value, make()),
        "pretrained.read_weights_file": lambda: pretrained.read_weights_file(value),
    }[reader]
    assert isinstance(raises_at_door("path", call), TypeError)


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for call in (
        lambda: read_checkpoint(""),
        lambda: load_checkpoint(" "),
        lambda: save_checkpoint("", make()),
    ):
        assert "empty path" in str(raises_at_door("path", call))
    assert list(tmp_path.iterdir()) == []


def test_the_other_checkpoint_arguments_are_checked(files, tmp_path):
    good = files["good"]
    for label in ("string for bool", "int for bool", "none"):
        raises_at_door("ema", load_checkpoint, good, make(), ema=VALUES[label])
        raises_at_door("ema", pretrained.load_weights, make(), good, ema=VALUES[label])
    for label in KINDS["model?"]:
        raises_at_door("model", load_checkpoint, good, VALUES[label])
        raises_at_door("model", save_checkpoint, tmp_path / "x.pt", VALUES[label])
    err = raises_at_door("ema", load_checkpoint, good, make(), ema=True)
    assert "no EMA" in str(err)
    for place in ("gpu", 5, [1]):
        raises_at_door("map_location", read_checkpoint, good, place)
    raises_at_door("path", save_checkpoint, files["folder"], make())
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("label", KINDS["model?"])
def test_pretrained_load_weights_checks_its_model(files, label):
    raises_at_door("model", pretrained.load_weights, VALUES[label], files["good"])


def test_a_weights_only_file_given_to_resume_says_how_to_start_from_it(tmp_path):
    folder = tmp_path / "run"
    save_checkpoint(folder / "last.pt", make())  # what a best.pt holds: weights, no optimizer, no epoch
    before = sorted(p.name for p in folder.iterdir())
    err = raises_at_door(
        "resume", fit, make(), bright(), epochs=1, out=folder, resume=True, allow_foreign=True, **FAST
    )
    assert (
        "weights only" in str(err) and "load_checkpoint" in str(err) and str(folder / "last.pt") in str(err)
    )
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == before


# ------------------------------------------------------------------ the entries of a run's last.pt
#: (entry, wrong value, whether read_checkpoint itself refuses it): every entry that reading a checkpoint
#: and resuming a run read, each with a value of the wrong kind; ``"recipe.task"`` is the task inside the
#: stored recipe; ``None`` removes the entry (a weights-only file has none of the run's entries, so only
#: resume refuses their absence), and some values are well-formed but do not fit the run (only resume).
BAD_ENTRIES = [
    ("epoch", "one", True), ("epoch", -3, True), ("epoch", 1.5, True), ("epoch", True, True),
    ("epoch", 9, True), ("epoch", None, False),
    ("epochs", 0, True), ("epochs", "2", True),
    ("step", -1, True), ("step", "8", True), ("step", None, False),
    ("history", [1, 2], True), ("history", "rows", True), ("history", [{"epoch": 2, "test_acc": 0.5}], True),
    ("history", [{"epoch": 1, "test_acc": "high"}], True), ("history", [], True), ("history", None, False),
    ("optimizer", {"state": 3}, True), ("optimizer", [1], True),
    ("optimizer", {"state": {}, "param_groups": []}, False),
    ("ema", {"w": "not a tensor"}, True), ("ema", 5, True), ("ema", None, False),
    ("task_modules", 5, True), ("task_state", [1], True),
    ("recipe", 5, True), ("recipe", None, False), ("recipe.task", "classify", True),
    ("recipe.task", {"name": 3}, True),
    ("model_config", [1], True),
    ("model", {"body.0.weight": torch.zeros(2)}, False),
]


@pytest.mark.parametrize("entry, value, by_reader",
                         [pytest.param(*row, id=f"{row[0]}={row[1]!r}"[:40]) for row in BAD_ENTRIES])
def test_a_wrong_entry_of_last_pt_is_named_with_its_file_and_nothing_is_written(entry, value, by_reader,
                                                                               tmp_path):
    out = tmp_path / "run"
    fit(make(), bright(), epochs=1, out=out, ema=0.9, **FAST)
    last = out / "last.pt"
    state = torch.load(last, weights_only=True)
    if entry == "recipe.task":
        state["recipe"]["task"] = value
    elif value is None:
        del state[entry]
    else:
        state[entry] = value
    torch.save(state, last)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    name = entry.split(".")[-1]
    err = raises_at_door(name, fit, make(), bright(), epochs=1, out=out, ema=0.9, resume=True, **FAST)
    assert str(last) in str(err), str(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    if by_reader:
        assert str(last) in str(raises_at_door(name, read_checkpoint, last))


def test_a_history_file_that_is_not_a_history_is_named(tmp_path):
    for text, words in (("[half", "not valid JSON"), ('{"epoch": 1}', "list of per-epoch dicts"),
                        ('[{"epoch": 1, "test_acc": "high"}]', "test_acc"), ('[{"epoch": 2}]', "epoch 1")):
        path = tmp_path / "history.json"
        path.write_text(text)
        err = raises_at_door(str(path), train.History.from_json, path)
        assert words in str(err), str(err)


# ------------------------------------------------------------------ build_model
BUILD_TABLE = [
    ("build_model", lambda a, v: build_model(v, bright(size=16)), "model_name", "model name"),
    ("build_model", lambda a, v: build_model("convnet_nano", v), "data", "data"),
    ("build_model", lambda a, v: build_model("convnet_nano", bright(size=16), seed=v), "seed", "seed"),
    ("build_model", lambda a, v: build_model("convnet_nano", bright(size=16), task=v), "task", "task"),
]


@pytest.mark.parametrize("call, argument, value", cases(BUILD_TABLE))
def test_build_model_refuses_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


def test_build_model_takes_what_a_task_builds_and_refuses_what_it_does_not():
    data = bright(size=16)
    assert build_model("convnet_nano", data, seed=3).num_classes == 3
    assert build_model("convnet_nano", data, seed=2**63 - 1, task="dino").num_classes == 0
    err = raises_at_door("data", build_model, "convnet_nano", object())
    assert "num_classes, image_size, channels" in str(err)
    err = raises_at_door("model_name", build_model, "unet", data)  # the U-Net is the segment task's only
    assert "unet" in str(err)


def test_the_public_training_api_is_covered_by_these_tables():
    """A new public function of unifiedctx.train must get a row here (or be listed as not a door)."""
    covered = {
        "fit",
        "train_or_load",
        "evaluate",
        "Recipe",
        "RunOptions",
        "load_checkpoint",
        "read_checkpoint",
        "save_checkpoint",
        "build_model",
    }
    not_doors = {
        "Classify",
        "DeviceBatches",
        "DeviceSplit",
        "EpochDone",
        "History",
        "LoaderBatches",
        "ModelEma",
        "StepDone",
        "StopTraining",
        "Task",
        "TaskExample",
        "TrainingDiverged",
        "TrainingStarted",
        "WarmupCosine",
        "crop_flip",
        "derive_seed",
        "make_batches",
        "mix_batch",
        "param_groups",
        "resolve_amp",
        "resolve_device",
        "tasks",
    }
    assert set(train.__all__) == covered | not_doors
