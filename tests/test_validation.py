"""unifiedctx.validation: every check accepts what it should and names the argument when it refuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unifiedctx import validation as V
from unifiedctx.validation import (
    check_bool,
    check_choice,
    check_float,
    check_float_image,
    check_int,
    check_int_or_pair,
    check_positive_int,
    suggest,
)


# ------------------------------------------------------------------ ints
@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts_and_returns_a_plain_int(value):
    out = check_positive_int("heads", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(("value", "error", "pattern"), [
    (0, ValueError, r"^heads must be positive, got 0$"),
    (-2, ValueError, r"^heads must be positive, got -2$"),
    (2.0, TypeError, r"^heads must be an int, got float 2\.0$"),
    (True, TypeError, r"^heads must be an int, got bool True$"),
    ("4", TypeError, r"^heads must be an int, got str '4'$"),
    (None, TypeError, r"^heads must be an int, got NoneType None$"),
])
def test_positive_int_refuses_by_name(value, error, pattern):
    with pytest.raises(error, match=pattern):
        check_positive_int("heads", value)


def test_positive_int_odd():
    assert check_positive_int("kernel_size", 5, odd=True) == 5
    with pytest.raises(ValueError, match=r"^kernel_size must be odd .*got 4$"):
        check_positive_int("kernel_size", 4, odd=True)


def test_check_int_bounds():
    assert check_int("workers", 0, low=0) == 0
    with pytest.raises(ValueError, match=r"^workers must be >= 0, got -1$"):
        check_int("workers", -1, low=0)
    with pytest.raises(ValueError, match=r"^depth must be <= 3, got 4$"):
        check_int("depth", 4, high=3)
    with pytest.raises(TypeError, match=r"^depth must be an int, got bool False$"):
        check_int("depth", False)


@pytest.mark.parametrize(("value", "expected"), [(4, (4, 4)), ((4, 5), (4, 5)), ([3, 2], (3, 2))])
def test_int_or_pair_normalises(value, expected):
    out = check_int_or_pair("grid", value)
    assert out == expected and isinstance(out, tuple)


@pytest.mark.parametrize(("value", "error", "pattern"), [
    ("4x4", TypeError, r"^grid must be an int or a pair \(H, W\), got str '4x4'$"),
    ((4, 4, 4), TypeError, r"^grid must be an int or a pair \(H, W\)"),
    (True, TypeError, r"^grid must be an int or a pair \(H, W\), got bool True$"),
    ((0, 4), ValueError, r"^grid\[0\] \(H\) must be positive, got 0$"),
    ((4, 2.5), TypeError, r"^grid\[1\] \(W\) must be an int, got float 2\.5$"),
    (-1, ValueError, r"^grid\[0\] \(H\) must be positive, got -1$"),
])
def test_int_or_pair_refuses_by_name(value, error, pattern):
    with pytest.raises(error, match=pattern):
        check_int_or_pair("grid", value)


# ------------------------------------------------------------------ floats
@pytest.mark.parametrize(("value", "kwargs"), [
    (0.5, {}), (0, {"low": 0}), (1, {"low": 0, "high": 1}), (np.float32(0.25), {"high": 1}),
    (0.999, {"low": 0, "high": 1, "high_open": True}),
])
def test_float_accepts_and_returns_a_float(value, kwargs):
    out = check_float("drop_path", value, **kwargs)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize(("value", "kwargs", "error", "pattern"), [
    (1.5, {"low": 0, "high": 1, "high_open": True}, ValueError, r"^drop_path must be in \[0, 1\), got 1\.5$"),
    (1.0, {"low": 0, "high": 1, "high_open": True}, ValueError, r"^drop_path must be in \[0, 1\), got 1$"),
    (0.0, {"low": 0, "low_open": True}, ValueError, r"^drop_path must be > 0, got 0$"),
    (-1, {"low": 0}, ValueError, r"^drop_path must be >= 0, got -1$"),
    (2, {"high": 1}, ValueError, r"^drop_path must be <= 1, got 2$"),
    (math.nan, {}, ValueError, r"^drop_path must be a finite number, got nan$"),
    (math.inf, {}, ValueError, r"^drop_path must be a finite number, got inf$"),
    (True, {}, TypeError, r"^drop_path must be a float, got bool True$"),
    ("0.1", {}, TypeError, r"^drop_path must be a float, got str '0\.1'$"),
    (None, {}, TypeError, r"^drop_path must be a float, got NoneType None$"),
])
def test_float_refuses_by_name(value, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        check_float("drop_path", value, **kwargs)


def test_float_none_ok():
    assert check_float("clip", None, none_ok=True) is None
    with pytest.raises(TypeError, match=r"^clip must be a float or None, got str 'x'$"):
        check_float("clip", "x", none_ok=True)


# ------------------------------------------------------------------ bools
def test_bool_is_strict():
    assert check_bool("proj", True) is True and check_bool("proj", False) is False
    for value, shown in [("False", "str 'False'"), (0, "int 0"), (None, "NoneType None")]:
        with pytest.raises(TypeError, match=rf"^proj must be True or False, got {shown}$"):
            check_bool("proj", value)


# ------------------------------------------------------------------ choices
def test_choice_accepts_a_listed_string():
    assert check_choice("mixing", "sigmoid", ("sigmoid", "independent")) == "sigmoid"


def test_choice_with_two_options_and_a_suggestion():
    with pytest.raises(ValueError) as info:
        check_choice("mixing", "sigmoud", ["sigmoid", "independent"])
    assert str(info.value) == ("mixing must be 'sigmoid' or 'independent', got 'sigmoud'. "
                               "Did you mean 'sigmoid'?")


def test_choice_with_many_options_lists_them_all():
    with pytest.raises(ValueError) as info:
        check_choice("norm", "zzz", ["batch", "layer", "group"])
    assert str(info.value) == "norm must be one of 'batch', 'layer', 'group', got 'zzz'."


def test_choice_refuses_a_non_string():
    with pytest.raises(TypeError, match=r"^mixer must be a string, 'a' or 'b'; got int 3$"):
        check_choice("mixer", 3, ["a", "b"])


def test_suggest():
    assert suggest("dwconvv", ["dwconv", "conv", "pool"]) == " Did you mean 'dwconv', 'conv'?"
    assert suggest("zzzz", ["dwconv", "pool"]) == ""


# ------------------------------------------------------------------ images
def test_float_image_returns_the_tensor_itself():
    x = torch.randn(2, 3, 4, 5)
    assert check_float_image("x", x) is x
    assert check_float_image("x", x, like=nn.Conv2d(3, 3, 1)) is x
    assert check_float_image("x", x, like=nn.Identity()) is x  # nothing to compare with


def test_uint8_image_says_how_to_convert():
    with pytest.raises(TypeError, match=r"^images is a uint8 image; .*images\.float\(\) / 255"):
        check_float_image("images", torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


@pytest.mark.parametrize(("x", "error", "pattern"), [
    (np.zeros((1, 3, 4, 4)), TypeError, r"^x must be a torch\.Tensor of shape \(B, C, H, W\), got ndarray$"),
    (torch.zeros(1, 3, 4, 4, dtype=torch.int64), TypeError,
     r"^x must be a floating-point tensor, got dtype torch\.int64$"),
    (torch.zeros(3, 4, 4), ValueError,
     r"^x must have shape \(B, C, H, W\) \(rank 4\), got shape \(3, 4, 4\)$"),
])
def test_float_image_refuses_by_name(x, error, pattern):
    with pytest.raises(error, match=pattern):
        check_float_image("x", x)


def test_float_image_dtype_must_match_like():
    model = nn.Linear(3, 3).double()
    pattern = r"^x has dtype torch\.float32 but the parameters it meets are torch\.float64"
    with pytest.raises(TypeError, match=pattern):
        check_float_image("x", torch.zeros(1, 3, 2, 2), like=model)
    with pytest.raises(TypeError, match=r"torch\.float16 but .* torch\.float32"):
        check_float_image("x", torch.zeros(1, 3, 2, 2, dtype=torch.float16), like=torch.zeros(1))
    with pytest.raises(TypeError, match=r"^like must be a torch\.nn\.Module or a torch\.Tensor, got str$"):
        check_float_image("x", torch.zeros(1, 3, 2, 2), like="model")


def test_float_image_dtype_check_yields_to_autocast():
    """Under autocast (which casts by itself) a bfloat16 activation meets float32 weights legitimately."""
    x = torch.zeros(1, 3, 2, 2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert check_float_image("x", x, like=nn.Linear(3, 3)) is x
    with pytest.raises(TypeError, match="bfloat16"):
        check_float_image("x", x, like=nn.Linear(3, 3))


# ------------------------------------------------------------------ the helpers of the later passes
NAN, INF = math.nan, math.inf


def refused(call, error, *words):
    """``call()`` raises ``error`` whose message holds every one of ``words``."""
    with pytest.raises(error) as err:
        call()
    for w in words:
        assert w in str(err.value), str(err.value)
    return err.value


@pytest.mark.parametrize("value, expected", [(0, 0), (7, 7), (np.int64(5), 5), (2 ** 63 - 1, 2 ** 63 - 1)])
def test_seed_accepts_the_seeds_torch_takes(value, expected):
    got = V.check_seed("seed", value)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value, error, words", [
    (True, TypeError, ("seed must be an int", "bool")), ("a", TypeError, ("seed must be an int", "'a'")),
    (1.5, TypeError, ("seed must be an int",)), (NAN, TypeError, ("seed must be an int",)),
    (-1, ValueError, ("seed must be >= 0", "-1")), (2 ** 63, ValueError, ("seed must be <=",)),
    (None, TypeError, ("seed",)),
])
def test_seed_refuses_by_name(value, error, words):
    refused(lambda: V.check_seed("seed", value), error, *words)


@pytest.mark.parametrize("value, kwargs, expected", [
    (0.1, {}, 0.1), (0.999, {}, 0.999), (1, {"one_ok": True}, 1.0), (0, {"zero_ok": True}, 0.0),
    (np.float32(0.5), {}, 0.5),
])
def test_fraction_accepts_shares(value, kwargs, expected):
    got = V.check_fraction("val_fraction", value, **kwargs)
    assert got == pytest.approx(expected, abs=0) and type(got) is float


@pytest.mark.parametrize("value, error, words", [
    ("0.1", TypeError, ("val_fraction must be a float", "str '0.1'")), (True, TypeError, ("bool",)),
    (0, ValueError, ("val_fraction must be in (0, 1)", "got 0")), (1, ValueError, ("in (0, 1)", "got 1")),
    (-0.1, ValueError, ("in (0, 1)",)), (NAN, ValueError, ("finite",)), (INF, ValueError, ("finite",)),
])
def test_fraction_refuses_by_name(value, error, words):
    refused(lambda: V.check_fraction("val_fraction", value), error, *words)


def test_int_choice():
    assert V.check_int_choice("channels", 3, (1, 3)) == 3
    assert type(V.check_int_choice("channels", np.int64(1), (1, 3))) is int
    refused(lambda: V.check_int_choice("channels", 2, (1, 3)), ValueError, "channels must be 1 or 3, got 2")
    refused(lambda: V.check_int_choice("k", 4, (1, 2, 3)), ValueError, "k must be one of 1, 2, 3, got 4")
    refused(lambda: V.check_int_choice("channels", True, (1, 3)), TypeError, "channels must be an int",
            "bool")
    refused(lambda: V.check_int_choice("channels", "3", (1, 3)), TypeError, "channels must be an int")
    refused(lambda: V.check_int_choice("channels", 3.0, (1, 3)), TypeError, "channels must be an int")


def test_int_range():
    assert V.check_int_range("digits", 2, 1, 9) == (2, 2)
    assert V.check_int_range("digits", (1, 4), 1, 9) == (1, 4)
    assert V.check_int_range("digits", [3, 3], 1, 9) == (3, 3)
    refused(lambda: V.check_int_range("digits", (4, 1), 1, 9), ValueError, "min <= max", "(4, 1)")
    refused(lambda: V.check_int_range("digits", 0, 1, 9), ValueError, "digits[0] (min) must be >= 1")
    refused(lambda: V.check_int_range("digits", (1, 10), 1, 9), ValueError, "digits[1] (max) must be <= 9")
    refused(lambda: V.check_int_range("digits", True, 1, 9), TypeError, "digits must be an int or a pair")
    refused(lambda: V.check_int_range("digits", (1, 2, 3), 1, 9), TypeError,
            "digits must be an int or a pair")
    refused(lambda: V.check_int_range("digits", (1, "2"), 1, 9), TypeError, "digits[1] (max) must be an int")
    refused(lambda: V.check_int_range("digits", (1.5, 2), 1, 9), TypeError, "digits[0] (min) must be an int")


def test_optional_positive_int():
    assert V.check_optional_positive_int("limit", None) is None
    assert V.check_optional_positive_int("limit", 3) == 3
    refused(lambda: V.check_optional_positive_int("limit", 0), ValueError, "limit must be positive")
    refused(lambda: V.check_optional_positive_int("limit", False), TypeError, "limit must be an int")


def test_module():
    m = nn.Linear(2, 2)
    assert V.check_module("model", m) is m
    refused(lambda: V.check_module("model", "resnet"), TypeError, "model must be a torch.nn.Module", "str")
    refused(lambda: V.check_module("model", nn.Linear), TypeError, "model must be a torch.nn.Module")
    assert len(str(refused(lambda: V.check_module("model", "x" * 1000), TypeError))) < 300  # kept short


@pytest.mark.parametrize("query, expected", [(None, 2 * 5 + 2), (0, 0), (19, 19), (np.int64(3), 3),
                                             ((1, 2), 1 * 5 + 2), ([3, 4], 19), ((np.int64(0), 1), 1)])
def test_query_on_a_4_by_5_grid(query, expected):
    assert V.check_query("query", query, (4, 5)) == expected


@pytest.mark.parametrize("query, error, words", [
    (20, ValueError, ("query=20 is outside the grid (4, 5)", "[0, 20)")), (-1, ValueError, ("outside",)),
    ((4, 0), ValueError, ("query=(4, 0) is outside the grid", "0 <= row < 4")),
    ((0, -1), ValueError, ("outside",)), (True, TypeError, ("query must be",)), (1.5, TypeError, ("query",)),
    ("centre", TypeError, ("query",)), ((1, 2, 3), TypeError, ("query",)),
    ((1.0, 2), TypeError, ("query must be a (row, col) pair of ints",)),
    ((True, 0), TypeError, ("pair of ints",)),
])
def test_query_refuses_by_name(query, error, words):
    refused(lambda: V.check_query("query", query, (4, 5)), error, *words)


def test_layer_name():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    assert V.check_layer_name("layer", "1.0", model) == "1.0"
    assert V.check_layer_name("layer", "", model) == ""  # the model itself
    refused(lambda: V.check_layer_name("layer", "1.1", model), ValueError, "layer='1.1' is not a module",
            "Did you mean")
    refused(lambda: V.check_layer_name("layer", 0, model), TypeError, "layer must be a module name (str)")


def test_path_kinds_and_what_is_found(tmp_path):
    f = tmp_path / "a.pt"
    f.write_bytes(b"x")
    assert V.check_path("path", str(f)) == f and isinstance(V.check_path("path", f), Path)
    assert V.check_path("root", tmp_path, kind="folder") == tmp_path
    assert V.check_path("out", tmp_path / "new", kind="folder", must_exist=False) == tmp_path / "new"
    home = V.check_path("root", "~", kind="folder")
    assert home == Path.home()
    refused(lambda: V.check_path("path", tmp_path), ValueError, "path must be a file",
            f"{tmp_path} is a folder")
    refused(lambda: V.check_path("path", tmp_path, what="checkpoint"), ValueError,
            "path must be a checkpoint file", "is a folder")
    refused(lambda: V.check_path("root", f, kind="folder"), ValueError, "root must be a folder",
            f"{f} is a file")
    missing = refused(lambda: V.check_path("path", tmp_path / "no.pt", what="checkpoint"), V.PathNotFound,
                      "no checkpoint at", "path is not a file", "nothing exists")
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, ValueError)
    for value in (3, True, None, [str(f)]):
        refused(lambda v=value: V.check_path("path", v), TypeError, "path must be a path to a file")
    for value in ("", "  "):
        refused(lambda v=value: V.check_path("root", v, kind="folder"), ValueError, "root", "empty path")
    refused(lambda: V.check_path("path", f, kind="link"), ValueError, "kind must be 'file' or 'folder'")


def test_file_path_is_check_path_for_a_file(tmp_path):
    f = tmp_path / "a.pt"
    f.write_bytes(b"x")
    assert V.check_file_path("path", f, "checkpoint") == f
    for value in (tmp_path, tmp_path / "none.pt", 5, ""):
        with pytest.raises((TypeError, ValueError)) as ours:
            V.check_file_path("path", value, "checkpoint")
        with pytest.raises((TypeError, ValueError)) as theirs:
            V.check_path("path", value, kind="file", what="checkpoint")
        assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("values", [torch.zeros(3), np.arange(4.0), [1.0, 2.0], torch.arange(3),
                                    np.array([1, 2], dtype=np.int64), torch.tensor(5.0)])
def test_finite_returns_finite_values_unchanged(values):
    assert V.check_finite("maps", values) is values


@pytest.mark.parametrize("values, words", [
    (torch.tensor([1.0, NAN, 2.0]), ("maps holds 1 non-finite values of 3", "1 NaN, 0 infinite")),
    (np.array([[INF, -INF], [0.0, NAN]]), ("3 non-finite values of 4", "1 NaN, 2 infinite")),
    ([NAN], ("1 non-finite values of 1",)),
    (torch.tensor([NAN], dtype=torch.float16), ("1 NaN",)),
])
def test_finite_refuses_nan_and_inf_saying_how_many(values, words):
    refused(lambda: V.check_finite("maps", values), ValueError, *words, "nothing is drawn")
