"""The typed specs: StageSpec (every per-stage setting) and Recipe (every result-deciding training
setting) check themselves, round-trip through JSON, read what older files wrote, and model
overrides merge into the stages' settings instead of replacing them."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from unifiedctx.models import (
    STAGE_DEFAULTS,
    STAGE_REQUIRED,
    Block,
    StageSpec,
    create_model,
    factory,
    from_config,
    normalize_config,
)
from unifiedctx.models.presets import PRESETS, preset
from unifiedctx.train import Recipe, load_checkpoint, save_checkpoint


def shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def stages_of(name: str) -> list[dict]:
    return copy.deepcopy(preset(name)["stages"])


# ------------------------------------------------------------------ StageSpec
def test_stage_schema_is_read_from_the_spec():
    names = [f.name for f in dataclasses.fields(StageSpec)]
    assert names == ["dim", "depth", "stride", "mixer", "mixer_options", "mlp_ratio", "embed_kernel",
                     "embed_norm", "embed_eps", "norm", "norm_eps", "pos_conv", "layer_scale"]
    assert STAGE_REQUIRED == ("dim", "depth", "stride", "mixer")
    assert list(STAGE_DEFAULTS) == names[4:] and STAGE_DEFAULTS["mlp_ratio"] == 4.0
    assert set(factory.STAGE_KEYS) == set(names) - {"dim", "depth"}
    assert all(f.metadata["help"] for f in dataclasses.fields(StageSpec))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_stage_round_trips_through_json(name):
    for i, stage in enumerate(PRESETS[name]["stages"]):
        spec = StageSpec.from_dict(stage, where=f"stages[{i}]")
        again = StageSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and again.to_dict() == spec.to_dict()


def test_model_config_stores_complete_stage_dicts():
    model = create_model("container_light_nano")
    assert [StageSpec.from_dict(s).to_dict() for s in model.config["stages"]] == model.config["stages"]
    assert set(model.config["stages"][0]) == set(StageSpec.keys())


def test_config_and_checkpoint_written_the_old_way_keep_loading(tmp_path):
    """A model.config whose stage dicts hold only what the preset gave (no defaults, ints where the
    spec stores floats), as configs were written before the spec, rebuilds the same network."""
    model = create_model("container_light_nano")
    old = {**copy.deepcopy(model.config), "stages": stages_of("container_light_nano")}
    assert "norm_eps" not in old["stages"][0] and old["stages"][0]["mlp_ratio"] == 8
    rebuilt = from_config(old)
    assert shapes(rebuilt) == shapes(model) and rebuilt.config == model.config
    path = tmp_path / "old.pt"
    save_checkpoint(path, model)
    state = torch.load(path, weights_only=True)
    state["model_config"] = old
    torch.save(state, path)
    loaded, _ = load_checkpoint(path)  # rebuilt from the old config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    loaded_into, _ = load_checkpoint(path, create_model("container_light_nano"))  # the same architecture
    assert shapes(loaded_into) == shapes(model)


def test_an_old_mixer_name_reads_as_the_registered_one():
    """Configs from before a registry rename (``mixer`` -> ``tokenmlp``) say the old name."""
    from unifiedctx import mixers

    model = create_model("mixer_s16_nano")
    for old_name, name in getattr(mixers, "ALIASES", {}).items():
        old = {**copy.deepcopy(model.config), "stages": stages_of("mixer_s16_nano")}
        old["stages"][0]["mixer"] = old_name
        assert from_config(old).config["stages"][0]["mixer"] == name
        assert normalize_config(old) == normalize_config(model.config)


@pytest.mark.parametrize("changes, error, words", [
    ({"dim": 0}, ValueError, r"dim must be positive, got 0"),
    ({"depth": 1.5}, TypeError, r"depth must be an int, got float 1.5"),
    ({"mixer": "dwcnv"}, ValueError, r"mixer must be .*got 'dwcnv'. Did you mean 'dwconv'"),
    ({"norm": "instance"}, ValueError, r"norm must be one of 'batch', 'layer', 'group', 'none'"),
    ({"pos_conv": "False"}, TypeError, r"pos_conv must be True or False, got str 'False'"),
    ({"mlp_ratio": float("nan")}, ValueError, r"mlp_ratio must be a finite number"),
    ({"mixer_options": {"window": 3}}, TypeError, r"mixer 'dwconv' has no option 'window'; its options are"),
    ({"mixer_options": [3]}, TypeError, r"mixer_options must be a dict"),
])
def test_stage_spec_names_the_bad_setting(changes, error, words):
    base = {"dim": 8, "depth": 1, "stride": 2, "mixer": "dwconv"}
    with pytest.raises(error, match=words):
        StageSpec(**{**base, **changes})


def test_stage_dict_errors_name_the_stage_and_the_key():
    with pytest.raises(ValueError, match=r"stages\[2\]\['dim'\]: dim must be positive"):
        StageSpec.from_dict({"dim": 0, "depth": 1, "stride": 2, "mixer": "dwconv"}, where="stages[2]")
    with pytest.raises(ValueError, match=r"missing \['mixer'\], unknown \['colour'\]"):
        StageSpec.from_dict({"dim": 8, "depth": 1, "stride": 2, "colour": "red"})
    with pytest.raises(TypeError, match="StageSpec has no setting 'dims'"):
        StageSpec(dim=8, depth=1, stride=2, mixer="dwconv").replace(dims=3)


def test_block_takes_the_spec_or_its_dict():
    spec = StageSpec(dim=8, depth=1, stride=1, mixer="container",
                     mixer_options={"heads": 2, "kernel_size": 3}, mlp_ratio=2, norm="batch", pos_conv=True,
                     layer_scale=0.3)
    torch.manual_seed(0)
    a = Block(spec)
    torch.manual_seed(0)
    b = Block(spec.to_dict())
    assert shapes(a) == shapes(b) and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                           b.state_dict().values()))
    assert a.pos is not None and a.scale1.gamma.shape == (8,) and a.mlp.fc1.out_channels == 16


# ------------------------------------------------------------------ overrides merge
def test_mixer_options_merge_into_each_stage():
    """The issue's first example: kernel_size=7 keeps proj=True on the dwconv stages and the
    Container stage's heads, exactly as if the preset had been written with kernel 7."""
    merged = create_model("container_light_nano", mixer_options={"kernel_size": 7})
    by_hand = stages_of("container_light_nano")
    for stage in by_hand:
        stage["mixer_options"]["kernel_size"] = 7
    assert [s["mixer_options"] for s in merged.config["stages"]] == [
        {"kernel_size": 7, "proj": True}] * 3 + [{"heads": 2, "kernel_size": 7}]
    assert shapes(merged) == shapes(create_model("container_light_nano", stages=by_hand))
    bare = [dict(s, mixer_options={"kernel_size": 7}) for s in by_hand]  # what the old override did
    assert shapes(merged) != shapes(create_model("container_light_nano", stages=bare))
    assert create_model("container_light_nano", kernel_size=7).config == merged.config  # the shortcut


def test_a_new_mixer_keeps_only_the_options_it_takes():
    """The issue's second example: mixer='attention' drops dwconv's kernel_size and proj (attention
    takes neither) and keeps the Container stage's heads."""
    model = create_model("container_light_nano", mixer="attention")
    assert [(s["mixer"], s["mixer_options"]) for s in model.config["stages"]] == [
        ("attention", {})] * 3 + [("attention", {"heads": 2})]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    pooled = create_model("container_light_nano", mixer="pool")  # pool takes kernel_size: kept
    assert [s["mixer_options"] for s in pooled.config["stages"]] == [{"kernel_size": 5}] * 4
    gpsa = create_model("deit_tiny_nano", mixer="gpsa", mixer_options={"heads": 4})
    assert gpsa.config["stages"][0]["mixer_options"] == {"heads": 4}


def test_heads_shortcut_applies_where_a_stage_takes_heads():
    """The issue's third example: heads=4 changes the Container stage, not the dwconv stages."""
    model = create_model("container_light_nano", heads=4)
    assert [s["mixer_options"] for s in model.config["stages"]] == [
        {"kernel_size": 5, "proj": True}] * 3 + [{"heads": 4, "kernel_size": 5}]
    by_hand = stages_of("container_light_nano")
    by_hand[3]["mixer_options"]["heads"] = 4
    assert shapes(model) == shapes(create_model("container_light_nano", stages=by_hand))
    assert create_model("deit_tiny_nano", heads=4).config["stages"][0]["mixer_options"] == {"heads": 4}


@pytest.mark.parametrize("overrides, name", [
    ({"heads": 4}, "heads"),                              # no stage of the ConvNet takes heads
    ({"mixer_options": {"window": 3}}, "window"),
    ({"mixer": "attention", "kernel_size": 3}, "kernel_size"),  # attention takes no kernel_size
])
def test_an_option_no_stage_uses_is_a_type_error_naming_it(overrides, name):
    with pytest.raises(TypeError, match=rf"no stage can use the option '{name}'.*has no option '{name}'"):
        create_model("convnet_nano", **overrides)


def test_other_overrides_still_apply_to_every_stage():
    model = create_model("container_light_nano", norm="layer", depths=[1, 1, 1, 2], layer_scale=1e-6)
    assert all(s["norm"] == "layer" and s["layer_scale"] == 1e-6 for s in model.config["stages"])
    assert [s["depth"] for s in model.config["stages"]] == [1, 1, 1, 2]
    with pytest.raises(ValueError, match=r"stages\[0\]\['stride'\]"):
        create_model("convnet_nano", stride=0)


# ------------------------------------------------------------------ Recipe
def test_recipe_round_trips_through_json_in_the_stored_format():
    recipe = Recipe(epochs=3, lr=2e-3, task_options={"label_smoothing": 0.1, "mixup": 0.2}, ema=0.99, seed=4)
    stored = json.loads(json.dumps(recipe.to_dict()))
    assert stored["task"] == {"name": "classify",
                              "settings": {"label_smoothing": 0.1, "mixup": 0.2, "cutmix": 0.0}}
    assert "label_smoothing" not in stored and "mixup" not in stored  # the classify task's options
    assert Recipe.from_dict(stored) == recipe
    dino = Recipe(epochs=2, task="dino", task_options={"out_dim": 64})
    assert Recipe.from_dict(dino.to_dict()) == dino


def test_recipe_reads_what_older_checkpoints_stored():
    before_tasks = {"epochs": 3, "batch_size": 16, "world_size": 1, "lr": 1e-2, "weight_decay": 0.05,
                    "warmup_epochs": 0.5, "label_smoothing": 0.1, "clip_grad": None, "ema": None,
                    "mixup": 0.0, "cutmix": 0.0, "augment": True, "seed": 0, "max_steps_per_epoch": None}
    recipe = Recipe.from_dict(before_tasks)
    assert recipe.task_options["label_smoothing"] == 0.1 and recipe.lr == 1e-2 and recipe.task == "classify"
    with_run = {**recipe.to_dict(), "world_size": 2, "amp": "off", "data": {"name": "x"}}
    assert Recipe.from_dict(with_run) == recipe  # the run's records beside the recipe are left out


@pytest.mark.parametrize("changes, error, words", [
    ({"epochs": 0}, ValueError, "epochs must be positive, got 0"),
    ({"lr": 0}, ValueError, "lr must be > 0, got 0"),
    ({"ema": 1.0}, ValueError, r"ema must be in \(0, 1\), got 1"),
    ({"warmup_cap": 1.5}, ValueError, r"warmup_cap must be in \[0, 1\]"),
    ({"augment": "no"}, TypeError, "augment must be True or False"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"task_options": {"f": object()}}, TypeError, "task_options must be JSON-serialisable"),
    ({"task": "dino", "task_options": {"label_smoothing": 0.1}}, TypeError,
     "task 'dino' has no option 'label_smoothing'"),
    ({"task_options": {"label_smoothing": 1.5}}, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ({"task_options": {"out_dim": 3}}, TypeError, "task 'classify' has no option 'out_dim'"),
    ({"lr": 1e38}, ValueError, "lr must be <= 10"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
    ({"lr": "0.1"}, TypeError, "lr must be a float, got str"),
])
def test_recipe_names_the_bad_setting(changes, error, words):
    with pytest.raises(error, match=words):
        Recipe(**{"epochs": 2, **changes})


def test_a_task_option_by_its_own_name_is_a_keyword_of_fit_not_a_field_of_the_recipe():
    """Recipe is a plain frozen dataclass: its fields and nothing else. fit's keywords (and
    Recipe.from_settings) route a task's option given by its own name into task_options."""
    with pytest.raises(TypeError, match="label_smoothing"):
        Recipe(epochs=2, label_smoothing=0.1)
    with pytest.raises(AttributeError):
        Recipe(epochs=2).label_smoothing  # noqa: B018
    routed = Recipe.from_settings(epochs=2, label_smoothing=0.1)
    assert routed == Recipe(epochs=2, task_options={"label_smoothing": 0.1})
    assert Recipe.from_settings(routed, mixup=0.2).task_options == {"label_smoothing": 0.1, "mixup": 0.2,
                                                                     "cutmix": 0.0}
    with pytest.raises(ValueError, match="label_smoothing is a setting of the classify task, not of 'dino'"):
        Recipe.from_settings(epochs=2, task="dino", label_smoothing=0.1)
    with pytest.raises(ValueError, match="give label_smoothing once"):
        Recipe.from_settings(epochs=2, task_options={"label_smoothing": 0.1}, label_smoothing=0.2)
    with pytest.raises(TypeError, match=r"label_smoothing is an option of the classify task: task_options="):
        Recipe(epochs=2).replace(label_smoothing=0.1)


def test_recipe_replace_and_from_settings():
    recipe = Recipe(epochs=2)
    assert recipe.replace(lr=1e-2).lr == 1e-2 and recipe.lr == Recipe(epochs=9).lr  # frozen, copied
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.lr = 1.0
    with pytest.raises(TypeError, match="Recipe has no setting 'learning_rate'"):
        recipe.replace(learning_rate=1e-2)
    with pytest.raises(TypeError, match="unknown training setting 'epoch'"):
        Recipe.from_settings(epoch=2)
    with pytest.raises(TypeError, match="needs epochs"):
        Recipe.from_settings(lr=1e-3)
    assert Recipe.from_settings(recipe, seed=3) == recipe.replace(seed=3)


def test_warmup_is_capped_to_a_fraction_of_the_run():
    """W = min(round(warmup_epochs * steps), floor(warmup_cap * T))."""
    assert Recipe(epochs=4, warmup_epochs=1).warmup_steps(31) == 24          # 31 asked, 20 % of 124
    assert Recipe(epochs=4, warmup_epochs=0.5).warmup_steps(31) == 16        # under the cap: as asked
    assert Recipe(epochs=4, warmup_epochs=1, warmup_cap=1.0).warmup_steps(31) == 31
    assert Recipe(epochs=1, warmup_epochs=5, warmup_cap=0.0).warmup_steps(10) == 0
