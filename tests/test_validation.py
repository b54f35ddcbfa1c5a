"""unifiedctx.validation: every check accepts what it should and names the argument when it refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

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
