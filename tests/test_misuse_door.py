"""Every public door of data, models, mixers and viz refuses a wrong input itself.

One table: for each function and each argument, the wrong inputs of that argument's kind
(:data:`misuse_helpers.KINDS`: bool for int, string for number, negative, zero, NaN, out of
range, a folder for a file, ...). Each must give a ``ValueError``/``TypeError`` whose message
names the argument and whose traceback ends inside ``unifiedctx`` (our own check, never torch,
numpy, matplotlib or the standard library failing deeper down): :func:`raises_at_door`.
Other door tests follow the same pattern: a list of ``(function, argument, kind)`` rows.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from misuse_helpers import raises_at_door, wrong_values
from PIL import Image

from unifiedctx import data, mixers, models, viz
from unifiedctx.data import DatasetUnavailable

matplotlib.use("Agg")


def rows(table):
    """``pytest.param(call, argument, value)`` for every ``(name, call, argument, kind)`` row and
    every wrong value of that kind; ``call(argument, value)`` makes the call under test."""
    out = []
    for name, call, argument, kind in table:
        for label, value in wrong_values(kind):
            out.append(pytest.param(call, argument, value, id=f"{name}-{argument}-{label}"))
    return out


def option(loader_name, **fixed):
    """A call of ``data.load(loader_name, **fixed, <argument>=<value>)``."""
    return lambda argument, value: data.load(loader_name, **{**fixed, argument: value})


# ------------------------------------------------------------------ data.load, in-memory datasets
SMALL = {"n_train": 8, "n_test": 4}
DATA_TABLE = [
    ("load", lambda a, v: data.load(v), "name", "choice"),
    ("load", lambda a, v: data.load("mnist5k", **{a: v}), "download", "flag"),
    *[
        ("mnist5k", option("mnist5k"), arg, kind)
        for arg, kind in (("size", "size"), ("channels", "size"), ("n_test", "size"), ("seed", "seed"))
    ],
    *[
        ("texture", option("texture", **SMALL, size=16), arg, kind)
        for arg, kind in (
            ("n_train", "size"),
            ("n_test", "size"),
            ("channels", "size"),
            ("period", "size"),
            ("seed", "seed"),
        )
    ],
    ("texture", option("texture", **SMALL), "size", "size"),
    *[
        ("longrange", option("longrange", **SMALL, size=16), arg, kind)
        for arg, kind in (
            ("n_train", "size"),
            ("n_test", "size"),
            ("channels", "size"),
            ("seed", "seed"),
            ("min_distance", "number"),
            ("marks", "choice"),
        )
    ],
    ("longrange", option("longrange", **SMALL), "size", "size"),
    *[
        ("mnist_canvas", option("mnist_canvas", size=64, n_train=2, n_test=2), arg, kind)
        for arg, kind in (
            ("size", "size"),
            ("digits", "size"),
            ("n_train", "size"),
            ("n_test", "size"),
            ("seed", "seed"),
            ("digit_size", "size"),
            ("channels", "size"),
        )
    ],
    *[
        ("cifar10", option("cifar10", download=False), arg, kind)
        for arg, kind in (("label_type", "choice"), ("progress", "flag"))
    ],
    (
        "texture.subset",
        lambda a, v: data.load("texture", **SMALL, size=16).subset(**{a: v}),
        "n_train",
        "count",
    ),
    (
        "texture.subset",
        lambda a, v: data.load("texture", **SMALL, size=16).subset(n_train=2, **{a: v}),
        "seed",
        "seed",
    ),
    ("texture_images", lambda a, v: data.texture_images(**{"n": 4, a: v}), "n", "count"),
    ("texture_images", lambda a, v: data.texture_images(**{"n": 4, a: v}), "period", "count"),
    ("longrange_scenes", lambda a, v: data.longrange_scenes(**{"n": 4, "size": 16, a: v}), "n", "count"),
    (
        "longrange_scenes",
        lambda a, v: data.longrange_scenes(**{"n": 4, "size": 16, a: v}),
        "min_distance",
        "number",
    ),
    ("sample_photo", lambda a, v: data.sample_photo(**{a: v}), "name", "choice"),
    ("sample_photo", lambda a, v: data.sample_photo(**{a: v}), "size", "count"),
]


@pytest.mark.parametrize("call, argument, value", rows(DATA_TABLE))
def test_data_refuses_a_wrong_option_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


# ------------------------------------------------------------------ data.load, folder datasets
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny image folder (2 classes x 3 PNGs) and a segmentation folder (4 pairs)."""
    root = tmp_path_factory.mktemp("door")
    rng = np.random.default_rng(0)
    for label in ("ant", "bee"):
        (root / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                root / "images" / label / f"{i}.png"
            )
    seg = root / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(seg / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (6, 6), dtype=np.uint8), mode="L").save(seg / "masks" / f"{i}.png")
    (root / "a_file.txt").write_text("not a folder")
    return {"imagefolder": root / "images", "segfolder": seg, "file": root / "a_file.txt"}


FOLDER_TABLE = [
    *[
        ("imagefolder", arg, kind)
        for arg, kind in (
            ("image_size", "size"),
            ("val_fraction", "fraction"),
            ("split_seed", "seed"),
            ("num_workers", "count0"),
        )
    ],
    *[
        ("segfolder", arg, kind)
        for arg, kind in (
            ("channels", "size"),
            ("num_classes", "count"),
            ("val_fraction", "fraction"),
            ("seed", "seed"),
            ("image_size", "count"),
            ("ignore_index", "count0"),
        )
    ],
]


@pytest.mark.parametrize(
    "dataset, argument, value",
    [
        pytest.param(dataset, argument, value, id=f"{dataset}-{argument}-{label}")
        for dataset, argument, kind in FOLDER_TABLE
        for label, value in wrong_values(kind)
    ],
)
def test_folder_datasets_refuse_a_wrong_option_before_reading(folders, dataset, argument, value):
    raises_at_door(argument, data.load, dataset, path=folders[dataset], **{argument: value})


@pytest.mark.parametrize("dataset", ["imagefolder", "segfolder"])
@pytest.mark.parametrize("what", ["file", "missing", "int", "bool"])
def test_a_folder_dataset_names_a_path_that_is_not_a_folder(folders, dataset, what):
    path = {"file": folders["file"], "missing": folders["file"].parent / "nowhere", "int": 5, "bool": True}[
        what
    ]
    err = raises_at_door("path", data.load, dataset, path=path)
    if what == "file":
        assert "is a file" in str(err) and "must be a folder" in str(err)


def test_a_file_given_as_the_cache_root_is_named(folders):
    err = raises_at_door("root", data.load, "cifar10", root=folders["file"], download=False)
    assert str(folders["file"]) in str(err) and "is a file" in str(err)


def test_the_cifar_archive_path_being_a_folder_says_what_was_found_and_expected(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").mkdir()
    for download in (False, True):
        with pytest.raises(
            DatasetUnavailable,
            match=r"cifar-10-binary\.tar\.gz is a folder, but that path is "
            r"where the archive file cifar-10-binary\.tar\.gz is expected",
        ):
            data.load("cifar10", root=tmp_path, download=download)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]  # nothing written


def test_the_cifar_cache_folder_being_a_file_is_named(tmp_path):
    (tmp_path / "cifar-10-batches-bin").write_text("oops")
    with pytest.raises(DatasetUnavailable, match=r"cifar-10-batches-bin is a file, but that path is where"):
        data.load("cifar10", root=tmp_path, download=False)


@pytest.mark.parametrize("loader", ["train_loader", "test_loader"])
@pytest.mark.parametrize("label, value", wrong_values("count"))
def test_a_folder_loader_refuses_a_wrong_batch_size(folders, loader, label, value):
    ds = data.load("imagefolder", path=folders["imagefolder"], image_size=8, val_fraction=0.4, num_workers=0)
    raises_at_door("batch_size", getattr(ds, loader), value)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("rank", -1),
        ("rank", 2),
        ("rank", True),
        ("world_size", 0),
        ("world_size", "2"),
        ("shuffle", "no"),
        ("seed", -1),
    ],
)
def test_the_training_loader_names_its_sharding_arguments(folders, argument, value):
    ds = data.load("imagefolder", path=folders["imagefolder"], image_size=8, val_fraction=0.4, num_workers=0)
    raises_at_door(argument, ds.train_loader, 2, **{"world_size": 2, argument: value})


# ------------------------------------------------------------------ models
def create(**fixed):
    return lambda argument, value: models.create_model("convnet_nano", **{**fixed, argument: value})


MODEL_TABLE = [
    ("create_model", lambda a, v: models.create_model(v), "name", "choice"),
    *[
        ("create_model", create(), arg, kind)
        for arg, kind in (
            ("num_classes", "count0"),
            ("img_size", "size?"),
            ("in_chans", "size"),
            ("pretrained", "flag"),
            ("ema", "flag"),
            ("drop_path", "rate"),
            ("dropout", "rate"),
            ("init", "choice"),
            ("abs_pos_embed", "flag"),
            ("kernel_size", "size"),
            ("mlp_ratio", "number"),
            ("norm", "choice"),
            ("layer_scale", "number"),
            ("pos_conv", "flag"),
            ("embed_kernel", "size?"),
            ("final_norm", "choice"),
            ("final_eps", "number"),
        )
    ],
    ("create_model", lambda a, v: models.create_model("deit_tiny_nano", **{a: v}), "heads", "size"),
    ("create_model", lambda a, v: models.create_model("convnet_nano", mixer=v), "mixer", "choice?"),
    ("create_model", lambda a, v: models.create_model("convnet_nano", dims=[8, 16, 24, v]), "dim", "size"),
    ("create_model", lambda a, v: models.create_model("convnet_nano", depths=[1, v, 1, 1]), "depth", "size"),
    (
        "StageSpec",
        lambda a, v: models.StageSpec(**{"dim": 8, "depth": 1, "stride": 2, "mixer": "dwconv", a: v}),
        "stride",
        "size",
    ),
    ("list_models", lambda a, v: models.list_models(v), "pattern", "text"),
    (
        "count_macs",
        lambda a, v: models.count_macs(models.create_model("convnet_nano"), **{a: v}),
        "batch",
        "size",
    ),
    (
        "count_macs",
        lambda a, v: models.count_macs(models.create_model("convnet_nano"), **{a: v}),
        "img_size",
        "size?",
    ),
    (
        "count_params",
        lambda a, v: models.count_params(models.create_model("convnet_nano"), **{a: v}),
        "trainable_only",
        "flag",
    ),
    (
        "reset_classifier",
        lambda a, v: models.create_model("convnet_nano").reset_classifier(v),
        "num_classes",
        "count0",
    ),
]


@pytest.mark.parametrize("call, argument, value", rows(MODEL_TABLE))
def test_models_refuse_a_wrong_option_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((1, 3, 32, 32), np.float32),
        torch.zeros(1, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(3, 32, 32),
        torch.zeros(1, 5, 32, 32),
        torch.zeros(1, 3, 30, 30),
        torch.zeros(1, 3, 32, 32, dtype=torch.float64),
    ],
    ids=["numpy", "uint8", "rank 3", "5 channels", "30x30", "float64"],
)
def test_a_model_refuses_a_wrong_input_at_the_door(x):
    model = models.create_model("convnet_nano")
    raises_at_door("x", model, x)
    raises_at_door("x", model.features, x)


@pytest.mark.parametrize(
    "config", [5, {}, {"preset": "convnet_nano", "stages": 5}], ids=["int", "empty", "stages int"]
)
def test_from_config_refuses_what_is_not_a_config(config):
    raises_at_door(
        "config" if not isinstance(config, dict) or not config else "stages", models.from_config, config
    )


# ------------------------------------------------------------------ mixers
MIXER_TABLE = [
    ("create", lambda a, v: mixers.create(v, dim=8), "mixer", "choice"),
    *[
        (name, lambda a, v, n=name, e=extra: mixers.create(n, **{"dim": 8, **e, a: v}), "dim", "size")
        for name, extra in (("dwconv", {}), ("attention", {"heads": 2}), ("tokenmlp", {"grid": 4}))
    ],
    ("dwconv", lambda a, v: mixers.create("dwconv", dim=8, **{a: v}), "kernel_size", "size"),
    ("dwconv", lambda a, v: mixers.create("dwconv", dim=8, **{a: v}), "proj", "flag"),
    ("conv", lambda a, v: mixers.create("conv", dim=8, **{a: v}), "bias", "flag"),
    ("pool", lambda a, v: mixers.create("pool", dim=8, **{a: v}), "subtract_input", "flag"),
    ("attention", lambda a, v: mixers.create("attention", dim=8, **{a: v}), "heads", "size"),
    ("attention", lambda a, v: mixers.create("attention", dim=8, heads=2, **{a: v}), "qkv_bias", "flag"),
    ("container", lambda a, v: mixers.create("container", dim=8, heads=2, **{a: v}), "mixing", "choice"),
    ("relattn", lambda a, v: mixers.create("relattn", dim=8, heads=2, **{a: v}), "max_distance", "size"),
    ("window", lambda a, v: mixers.create("window", dim=8, heads=2, **{a: v}), "window_size", "size"),
    ("gpsa", lambda a, v: mixers.create("gpsa", dim=8, heads=2, **{a: v}), "locality_strength", "number"),
    ("tokenmlp", lambda a, v: mixers.create("tokenmlp", dim=8, **{a: v}), "grid", "size"),
    ("tokenmlp", lambda a, v: mixers.create("tokenmlp", dim=8, grid=4, **{a: v}), "hidden", "count"),
]


@pytest.mark.parametrize("call, argument, value", rows(MIXER_TABLE))
def test_mixers_refuse_a_wrong_option_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


@pytest.mark.parametrize("name", mixers.available())
@pytest.mark.parametrize("door", ["forward", "affinity", "values", "reference"])
def test_every_mixer_door_refuses_a_wrong_input(name, door):
    mixer = mixers.create(name, **mixers.REGISTRY[name].example_options((4, 4))[0])
    for x in (
        np.zeros((1, mixer.dim, 4, 4)),
        torch.zeros(1, mixer.dim, 4, 4, dtype=torch.uint8),
        torch.zeros(mixer.dim, 4, 4),
        torch.zeros(1, mixer.dim + 1, 4, 4),
        "x",
    ):
        raises_at_door("x", getattr(mixer, door), x)


# ------------------------------------------------------------------ viz
A = torch.softmax(torch.randn(1, 2, 16, 16, dtype=torch.float64), -1)
HISTORY = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}]
VIZ_TABLE = [
    (
        "plot_affinity_matrix",
        lambda a, v: viz.plot_affinity_matrix(A, grid=(4, 4), **{a: v}),
        "head",
        "count0",
    ),
    (
        "plot_affinity_matrix",
        lambda a, v: viz.plot_affinity_matrix(A, grid=(4, 4), **{a: v}),
        "batch",
        "count0",
    ),
    (
        "plot_affinity_matrix",
        lambda a, v: viz.plot_affinity_matrix(A, grid=(4, 4), **{a: v}),
        "cmap",
        "choice?",
    ),
    (
        "plot_affinity_matrix",
        lambda a, v: viz.plot_affinity_matrix(A, grid=(4, 4), **{a: v}),
        "colorbar",
        "flag",
    ),
    ("plot_affinity_matrix", lambda a, v: viz.plot_affinity_matrix(A, grid=v), "grid", "size?"),
    ("plot_query_maps", lambda a, v: viz.plot_query_maps(A, (4, 4), (1, 1), **{a: v}), "alpha", "number"),
    ("plot_query_maps", lambda a, v: viz.plot_query_maps(A, (4, 4), (1, 1), **{a: v}), "mode", "choice"),
    ("plot_query_maps", lambda a, v: viz.plot_query_maps(A, (4, 4), (1, 1), **{a: v}), "cmap", "choice?"),
    ("plot_query_maps", lambda a, v: viz.plot_query_maps(A, (4, 4), (1, 1), **{a: v}), "ncols", "count"),
    ("plot_query_maps", lambda a, v: viz.plot_query_maps(A, (4, 4), v), "query", "count0"),
    ("query_maps", lambda a, v: viz.query_maps(A, (4, 4), (0, 0), **{a: v}), "batch", "count0"),
    ("upsample_maps", lambda a, v: viz.upsample_maps(torch.rand(2, 4, 4), v), "size", "size"),
    ("upsample_maps", lambda a, v: viz.upsample_maps(torch.rand(2, 4, 4), 8, mode=v), "mode", "choice"),
    (
        "grid_features",
        lambda a, v: viz.grid_features(torch.rand(3, 16, 16), **{"dim": 8, "grid": 4, a: v}),
        "dim",
        "size",
    ),
    (
        "grid_features",
        lambda a, v: viz.grid_features(torch.rand(3, 16, 16), **{"dim": 8, "grid": 4, a: v}),
        "grid",
        "size",
    ),
    (
        "grid_features",
        lambda a, v: viz.grid_features(torch.rand(3, 16, 16), **{"dim": 8, "grid": 4, a: v}),
        "seed",
        "seed",
    ),
    ("comparison_mixers", lambda a, v: viz.comparison_mixers(**{"dim": 8, "grid": 4, a: v}), "heads", "size"),
    (
        "comparison_mixers",
        lambda a, v: viz.comparison_mixers(**{"dim": 8, "grid": 4, a: v}),
        "kernel_size",
        "size",
    ),
    ("learning_curves", lambda a, v: viz.learning_curves({"run": HISTORY}, metric=v), "metric", "count"),
    ("metric_label", lambda a, v: viz.metric_label(v), "key", "text"),
    (
        "static_kernels",
        lambda a, v: viz.static_kernels(models.create_model("convnet_nano"), **{a: v}),
        "all_depthwise",
        "flag",
    ),
    (
        "plot_static_kernels",
        lambda a, v: viz.plot_static_kernels(torch.randn(4, 3, 3), **{a: v}),
        "channels",
        "size",
    ),
    (
        "plot_static_kernels",
        lambda a, v: viz.plot_static_kernels(torch.randn(4, 3, 3), **{a: v}),
        "cmap",
        "choice",
    ),
    (
        "plot_static_kernels",
        lambda a, v: viz.plot_static_kernels(torch.randn(4, 3, 3), **{a: v}),
        "limits",
        "number",
    ),
    ("kernel_limits", lambda a, v: viz.kernel_limits(torch.randn(4, 3, 3), **{a: v}), "channels", "count"),
    ("scale_for", lambda a, v: viz.scale_for(np.ones(3), **{a: v}), "signed", "flag?"),
]


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.mark.parametrize("call, argument, value", rows(VIZ_TABLE))
def test_viz_refuses_a_wrong_option_at_the_door(call, argument, value):
    raises_at_door(argument, call, argument, value)


def nan_at(t, index):
    t = t.clone()
    t[index] = float("nan")
    return t


@pytest.mark.parametrize(
    "view",
    [
        lambda: viz.plot_affinity_matrix(nan_at(A, (0, 0, 3, 3)), grid=(4, 4)),
        lambda: viz.plot_query_maps(nan_at(A, (0, 1, 5, 2)), (4, 4), (1, 1)),
        lambda: viz.plot_query_maps(A, (4, 4), (1, 1), image=nan_at(torch.rand(3, 8, 8), (0, 1, 1))),
        lambda: viz.comparison_figure(nan_at(torch.rand(3, 16, 16), (0, 2, 2)), dim=8, grid=(4, 4)),
        lambda: viz.plot_static_kernels(nan_at(torch.randn(4, 3, 3), (1, 1, 1))),
        lambda: viz.plot_mixing_weights({"stage": {"alpha": float("nan"), "beta": 0.5}}),
        lambda: viz.plot_mixing_history(
            [{"epoch": 1, "mixing": {"s": {"alpha": 0.5, "beta": float("inf")}}}]
        ),
        lambda: viz.learning_curves({"run": [*HISTORY, {"epoch": 3, "test_acc": float("nan")}]}),
        lambda: viz.scale_for(np.array([0.1, np.inf])),
        lambda: viz.maps_scale(nan_at(torch.rand(2, 4, 4), (1, 0, 0))),
    ],
    ids=[
        "matrix",
        "query maps",
        "image",
        "comparison",
        "kernels",
        "mixing weights",
        "mixing history",
        "learning curves",
        "scale_for",
        "maps_scale",
    ],
)
def test_a_view_of_non_finite_numbers_says_so_instead_of_drawing(view):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    with pytest.raises(ValueError, match=r"non-finite|not a finite|finite number") as info:
        view()
    assert info.traceback[-1].path.as_posix().rsplit("/", 2)[-2] in ("viz", "unifiedctx")
    assert plt.get_fignums() == before  # nothing was drawn


def test_a_model_with_nan_weights_draws_no_kernels():
    model = models.create_model("convnet_nano")
    with torch.no_grad():
        next(m for m in model.mixers()).conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        viz.plot_static_kernels(model)
