"""Bad input fails early at the public API with a ValueError or TypeError that names the argument.

Each ``match`` pins both the argument's name and what was expected (or what was received), so a
vague message, or an error raised deep inside PyTorch instead, fails the test.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from unifiedctx.mixers import available, create

OPTIONS = {"heads": 2, "kernel_size": 3, "grid": (4, 4), "window_size": 2}


def make(name: str, dim: int = 6):
    """A mixer ``name`` for ``dim`` channels that accepts a 4 x 4 grid (window mixer: windows of 2)."""
    opts = dict(OPTIONS)
    if name != "window":
        opts.pop("window_size")
    return create(name, dim=dim, **opts)


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("shape", [(6, 4, 4), (1, 6, 16), (1, 1, 6, 4, 4)], ids=["rank3", "rank3b", "rank5"])
def test_wrong_rank_is_a_value_error_naming_x(name, shape):
    """An input that is not rank 4 is rejected by forward, values and affinity, naming x and (B, C, H, W)."""
    mixer = make(name)
    x = torch.randn(shape)
    for method in (mixer, mixer.values, mixer.affinity):
        with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\).*rank 4"):
            method(x)


@pytest.mark.parametrize("name", available())
def test_channels_not_dim_is_a_value_error(name):
    """x with 5 channels for a mixer built with dim=6: the message gives both numbers."""
    mixer = make(name)
    with pytest.raises(ValueError, match=r"x has 5 channels.*dim=6"):
        mixer(torch.randn(1, 5, 4, 4))


@pytest.mark.parametrize("name", available())
def test_integer_tensor_is_a_type_error(name):
    """An integer image is refused (not silently cast) with the dtype in the message."""
    mixer = make(name)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor.*torch\.int64"):
        mixer(torch.randint(0, 5, (1, 6, 4, 4)))


@pytest.mark.parametrize("name", available())
def test_non_tensor_is_a_type_error(name):
    """A NumPy array is not a tensor: the message says what x must be."""
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor.*ndarray"):
        make(name)(np.zeros((1, 6, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("name", ["attention", "container", "window", "relattn", "gpsa"])
def test_dim_not_divisible_by_heads(name):
    """dim=6 with heads=4 is a ValueError naming dim and heads."""
    with pytest.raises(ValueError, match=r"dim=6 must be divisible by heads=4"):
        create(name, dim=6, heads=4)


@pytest.mark.parametrize("name", ["attention", "container", "gpsa"])
@pytest.mark.parametrize(("heads", "error", "pattern"), [
    (0, ValueError, r"heads must be positive, got 0"),
    (2.0, TypeError, r"heads must be an int, got float"),
    (True, TypeError, r"heads must be an int, got bool"),
])
def test_heads_must_be_a_positive_int(name, heads, error, pattern):
    """heads=0, 2.0 or True are refused with the name and the value."""
    with pytest.raises(error, match=pattern):
        create(name, dim=6, heads=heads)


@pytest.mark.parametrize("name", ["dwconv", "conv", "pool", "container"])
@pytest.mark.parametrize("k", [2, 4])
def test_even_kernel_size(name, k):
    """An even kernel has no centre token: a ValueError naming kernel_size and 'odd'."""
    with pytest.raises(ValueError, match=rf"kernel_size must be odd.*got {k}"):
        create(name, dim=6, heads=2, kernel_size=k)


@pytest.mark.parametrize("hidden", [None, 5])
@pytest.mark.parametrize("grid", [(4, 5), (5, 4), (2, 8)])
def test_mixer_on_a_grid_it_was_not_built_for(hidden, grid):
    """A token-mixing layer for 4 x 4 refuses a 4 x 5 (or same-N 2 x 8) input and names both grids."""
    mixer = create("tokenmlp", dim=6, grid=(4, 4), hidden=hidden)
    x = torch.randn(1, 6, *grid)
    for method in (mixer, mixer.values, mixer.affinity):
        pattern = re.escape("built for grid=(4, 4)") + r".*" + re.escape(str(grid))
        with pytest.raises(ValueError, match=pattern):
            method(x)


def test_mixer_without_grid():
    """``mixer`` needs grid=(H, W): the message names grid and says why."""
    with pytest.raises(ValueError, match=r"needs grid=\(H, W\)"):
        create("tokenmlp", dim=6)


@pytest.mark.parametrize(("grid", "error", "pattern"), [
    ("4x4", TypeError, r"grid must be an int or a pair \(H, W\)"),
    ((4, 4, 4), TypeError, r"grid must be an int or a pair \(H, W\)"),
    ((0, 4), ValueError, r"grid\[0\] \(H\) must be positive"),
])
def test_mixer_with_a_malformed_grid(grid, error, pattern):
    """A grid that is not an int or a positive (H, W) pair is refused by name."""
    with pytest.raises(error, match=pattern):
        create("tokenmlp", dim=6, grid=grid)


def test_unknown_mixer_lists_the_existing_names():
    """``create`` with an unknown name lists every registered mixer and suggests a close one."""
    with pytest.raises(ValueError, match=r"^mixer must be one of .*, got 'dwconvv'") as info:
        create("dwconvv", dim=6)
    message = str(info.value)
    for name in available():
        assert name in message
    assert "Did you mean 'dwconv'" in message


@pytest.mark.parametrize(("name", "accepted"), [
    ("dwconv", "kernel_size, proj, bias"),
    ("pool", "kernel_size, subtract_input"),
    ("attention", "heads, qkv_bias"),
])
def test_unknown_option_in_create(name, accepted):
    """An option the mixer does not take is a TypeError naming it and listing the options it does take."""
    pattern = rf"mixer '{name}' has no option 'colour'; its options are: {accepted}"
    with pytest.raises(TypeError, match=pattern):
        create(name, dim=6, colour="red")


@pytest.mark.parametrize("name", available())
def test_shared_options_are_ignored_where_meaningless(name):
    """heads / kernel_size / grid are accepted by every mixer (a builder passes them to all)."""
    mixer = make(name)
    x = torch.randn(1, 6, 4, 4)
    assert mixer(x).shape == x.shape


def test_container_mixing_must_be_known():
    """Container's mixing option names itself and the two valid choices."""
    with pytest.raises(ValueError, match=r"mixing must be 'sigmoid' or 'independent', got 'softmax'"):
        create("container", dim=6, heads=2, mixing="softmax")


@pytest.mark.parametrize("dim", [0, -3])
def test_dim_must_be_positive(dim):
    """dim <= 0 is a ValueError naming dim."""
    with pytest.raises(ValueError, match=rf"dim must be positive, got {dim}"):
        create("dwconv", dim=dim)


def test_project_before_any_input_needs_a_grid():
    """``project`` with no grid and no input seen yet asks for grid=(H, W)."""
    mixer = create("attention", dim=6, heads=2)
    with pytest.raises(ValueError, match=r"project needs grid=\(H, W\)"):
        mixer.project(torch.randn(1, 2, 16, 3))


def test_project_with_the_wrong_number_of_tokens():
    """``project`` refuses z whose token count does not fill the grid, naming both counts."""
    mixer = create("attention", dim=6, heads=2)
    with pytest.raises(ValueError, match=r"z has 16 tokens but grid \(4, 5\) holds 20"):
        mixer.project(torch.randn(1, 2, 16, 3), grid=(4, 5))


@pytest.mark.parametrize(("name", "option"), [
    ("dwconv", "proj"), ("dwconv", "bias"), ("conv", "bias"), ("pool", "subtract_input"),
    ("attention", "qkv_bias"), ("container", "qkv_bias"), ("window", "qkv_bias"), ("gpsa", "qkv_bias"),
])
def test_switches_are_strict_bools(name, option):
    """A switch given as the string "False" (truthy!) is a TypeError naming it, never silently True."""
    with pytest.raises(TypeError, match=rf"^{option} must be True or False, got str 'False'$"):
        create(name, dim=6, heads=2, **{option: "False"})


@pytest.mark.parametrize(("value", "error", "pattern"), [
    (float("nan"), ValueError, r"locality_strength must be a finite number, got nan"),
    ("1.0", TypeError, r"locality_strength must be a float, got str '1\.0'"),
])
def test_gpsa_locality_strength_is_a_finite_float(value, error, pattern):
    with pytest.raises(error, match=pattern):
        create("gpsa", dim=6, heads=2, locality_strength=value)


def test_window_size_must_be_a_positive_int():
    with pytest.raises(ValueError, match=r"window_size must be positive, got 0"):
        create("window", dim=6, heads=2, window_size=0)


def test_input_dtype_must_match_the_mixer():
    """A float32 image into a float64 mixer is a TypeError naming both dtypes (not a matmul error)."""
    mixer = create("attention", dim=6, heads=2).double()
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32 but .* torch\.float64"):
        mixer(torch.randn(1, 6, 4, 4))


def test_uint8_image_says_how_to_convert():
    with pytest.raises(TypeError, match=r"x is a uint8 image.*x\.float\(\) / 255"):
        create("dwconv", dim=6)(torch.zeros(1, 6, 4, 4, dtype=torch.uint8))
