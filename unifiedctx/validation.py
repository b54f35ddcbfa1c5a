"""The small argument checks that every public function of the library shares.

Each check returns the value it accepted (normalised where that helps: a pair for an int, a float
for an int) and otherwise raises a ``TypeError`` (wrong kind of value) or a ``ValueError`` (right
kind, wrong value) whose message starts with the argument's name and says what was expected::

    check_positive_int("heads", 0)            # ValueError: heads must be positive, got 0
    check_int_or_pair("grid", (4, 5))         # (4, 5)
    check_float("drop_path", 1.5, low=0, high=1, high_open=True)
                                              # ValueError: drop_path must be in [0, 1), got 1.5
    check_bool("proj", "False")               # TypeError: proj must be True or False, got str 'False'
    check_choice("mixing", "sigmoud", ("sigmoid", "independent"))
                                              # ValueError: ... got 'sigmoud'. Did you mean 'sigmoid'?
    check_float_image("x", torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
                                              # TypeError: x is a uint8 image; ... x.float() / 255

Nothing here imports from the rest of the package, so every module may use it.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "check_bool", "check_choice", "check_float", "check_float_image", "check_int",
    "check_int_or_pair", "check_positive_int", "suggest",
    "check_finite", "check_fraction", "check_int_choice", "check_int_range", "check_path", "check_seed",
    "PathNotFound",
]


def _describe(value) -> str:
    """``"<type> <repr>"``, e.g. ``"float 2.0"``: what an error says it received."""
    return f"{type(value).__name__} {value!r}"


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int with ``low <= value <= high`` (bounds optional).

    ``bool`` is refused (``True`` is not a count). ``numpy`` integers are accepted and returned
    as ``int``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_positive_int(name: str, value, *, odd: bool = False) -> int:
    """Return ``value`` if it is a positive int (odd when ``odd``): ``value >= 1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    value = int(value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if odd and value % 2 == 0:
        raise ValueError(f"{name} must be odd so the window is centred on its token, got {value}")
    return value


def check_int_or_pair(name: str, value) -> tuple[int, int]:
    """``k -> (k, k)``; ``(a, b) -> (a, b)``: a positive int or a pair of them, as a tuple.

    Used for grids ``(H, W)``, kernel sizes ``(kh, kw)``, image sizes. The entries are checked
    as ``name[0] (H)`` and ``name[1] (W)``.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise TypeError(f"{name} must be an int or a pair (H, W), got {_describe(value)}")
    return (check_positive_int(f"{name}[0] (H)", value[0]), check_positive_int(f"{name}[1] (W)", value[1]))


def check_float(name: str, value, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, none_ok: bool = False) -> float | None:
    """Return ``value`` as a finite ``float`` in the range ``[low, high]`` (ends optional).

    ``low_open`` / ``high_open`` exclude that end (``(low, high]`` etc.). Ints are accepted,
    bools and strings are refused, NaN and infinities are a ``ValueError``. With ``none_ok``,
    ``None`` is returned as it is.
    """
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        expected = "a float or None" if none_ok else "a float"
        raise TypeError(f"{name} must be {expected}, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            wanted = f"{'>' if low_open else '>='} {low:g}"
        else:
            wanted = f"{'<' if high_open else '<='} {high:g}"
        raise ValueError(f"{name} must be {wanted}, got {value:g}")
    return value


def check_bool(name: str, value) -> bool:
    """Return ``value`` if it is exactly ``True`` or ``False``.

    Strict: ``1``, ``"False"`` or ``None`` are a ``TypeError`` (``bool("False")`` is True, so
    converting would silently do the opposite of what was meant).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return value


def suggest(value, choices: Iterable) -> str:
    """``" Did you mean 'a', 'b'?"`` for the choices close to ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.5)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def _alternatives(choices: list[str]) -> str:
    quoted = [repr(c) for c in choices]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return f"one of {', '.join(quoted)}"


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of the strings ``choices``; suggest close ones if not.

    A non-string is a ``TypeError``; an unknown string a ``ValueError`` like
    ``mixing must be 'sigmoid' or 'independent', got 'sigmoud'. Did you mean 'sigmoid'?``.
    """
    choices = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, {_alternatives(choices)}; got {_describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be {_alternatives(choices)}, got {value!r}.{suggest(value, choices)}")
    return value


def _reference_dtype(like) -> torch.dtype | None:
    """The dtype an input must have to meet ``like``: a tensor's, or a module's first float
    parameter (or buffer); ``None`` when there is nothing to compare with."""
    if isinstance(like, torch.Tensor):
        return like.dtype
    if isinstance(like, nn.Module):
        for t in (*like.parameters(), *like.buffers()):
            if t.is_floating_point():
                return t.dtype
        return None
    raise TypeError(f"like must be a torch.nn.Module or a torch.Tensor, got {type(like).__name__}")


def check_float_image(name: str, x, like=None) -> torch.Tensor:
    """Return ``x`` if it is a floating-point image batch ``(B, C, H, W)``.

    * not a tensor (a NumPy array, a PIL image): ``TypeError`` saying what is expected;
    * ``uint8`` (an image as loaded from disk): ``TypeError`` saying how to convert it;
    * any other non-float dtype: ``TypeError`` naming the dtype;
    * not rank 4: ``ValueError`` with the shape received;
    * with ``like=`` a module or a tensor, a dtype other than its (parameters') dtype is a
      ``TypeError`` naming both dtypes (skipped while autocast is on for ``x``'s device, which
      casts on its own).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dtype == torch.uint8:
        raise TypeError(f"{name} is a uint8 image; it must be a floating-point tensor: convert it "
                        f"with {name}.float() / 255 (then normalise it as the model expects)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W) (rank 4), got shape {tuple(x.shape)}")
    if like is not None:
        wanted = _reference_dtype(like)
        if wanted is not None and x.dtype != wanted and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"{name} has dtype {x.dtype} but the parameters it meets are {wanted}; "
                            f"convert one of them (e.g. {name}.to({wanted}))")
    return x


def check_file_path(name: str, value, what: str = "file"):
    """Return ``value`` as a ``pathlib.Path`` naming an existing file: ``check_path(name, value,
    kind="file", what=what)`` (kept for its callers; see :func:`check_path`)."""
    return check_path(name, value, kind="file", what=what)


def check_module(name: str, value) -> nn.Module:
    """Return ``value`` if it is a ``torch.nn.Module`` (``TypeError`` naming what it is otherwise)."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {_describe(value)[:200]}")
    return value


def check_query(name: str, query, grid) -> int:
    """The one rule for a token query on a ``grid = (H, W)``: the flat token index ``y * W + x``.

    ``None`` is the centre token ``(H // 2, W // 2)``; an int (numpy ints too, not ``bool``) is a flat
    index in ``[0, H * W)``; a ``(y, x)`` pair of ints is a place on the grid. Another kind of value is
    a ``TypeError``, a place or index off the grid a ``ValueError``, both naming ``name`` and the grid.
    """
    h, w = grid
    if query is None:
        return (h // 2) * w + w // 2
    if isinstance(query, numbers.Integral) and not isinstance(query, bool):
        if not 0 <= int(query) < h * w:
            raise ValueError(f"{name}={int(query)} is outside the grid {tuple(grid)}: a token index must be "
                             f"in [0, {h * w}), or give (row, col)")
        return int(query)
    if not (isinstance(query, (tuple, list)) and len(query) == 2):
        raise TypeError(f"{name} must be None (the centre), a (row, col) pair of ints or a token index, "
                        f"got {_describe(query)}")
    y, x = query
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (y, x)):
        raise TypeError(f"{name} must be a (row, col) pair of ints, got {_describe(query)}")
    if not (0 <= y < h and 0 <= x < w):
        raise ValueError(f"{name}={tuple(query)} is outside the grid {tuple(grid)}: need 0 <= row < {h} "
                         f"and 0 <= col < {w}")
    return int(y) * w + int(x)


def check_optional_positive_int(name: str, value) -> int | None:
    """``None``, or ``value`` checked by :func:`check_positive_int`."""
    return None if value is None else check_positive_int(name, value)


def check_layer_name(name: str, value, model: nn.Module) -> str:
    """``value`` if it names a module of ``model`` (``model.named_modules()``); else a ``TypeError``
    (not a string) or a ``ValueError`` listing close names."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a module name (str), got {_describe(value)}")
    names = [n for n, _ in model.named_modules()]
    if value not in names:
        hint = suggest(value, [n for n in names if n])
        raise ValueError(f"{name}={value!r} is not a module of this model.{hint} "
                         f"(names as in model.named_modules())")
    return value


# ------------------------------------------------------------------ helpers of the third misuse pass
SEED_MAX = 2 ** 63 - 1


def check_seed(name: str, value) -> int:
    """Return ``value`` if it is an int in ``[0, 2**63 - 1]``, a seed ``torch.Generator.manual_seed``
    takes (``"a"``, ``1.5``, ``True`` or ``-1`` are refused here, not deep inside torch)."""
    return check_int(name, value, low=0, high=SEED_MAX)


def check_fraction(name: str, value, *, zero_ok: bool = False, one_ok: bool = False) -> float:
    """Return ``value`` as a float in the open interval ``(0, 1)``: a share of a whole that must
    leave something on both sides (a test split of a dataset, say). ``zero_ok`` / ``one_ok``
    close that end. The string ``"0.1"``, a bool and NaN are refused."""
    return check_float(name, value, low=0, high=1, low_open=not zero_ok, high_open=not one_ok)


def check_int_choice(name: str, value, choices: Iterable[int]) -> int:
    """Return ``value`` if it is an int (not a bool) among ``choices``, e.g. ``channels`` in (1, 3)."""
    choices = tuple(choices)
    value = check_int(name, value)
    if value not in choices:
        listed = ", ".join(map(str, choices))
        wanted = " or ".join(map(str, choices)) if len(choices) <= 2 else f"one of {listed}"
        raise ValueError(f"{name} must be {wanted}, got {value}")
    return value


def check_int_range(name: str, value, low: int, high: int) -> tuple[int, int]:
    """``k -> (k, k)``; ``(a, b) -> (a, b)``: an int or a pair ``(min, max)`` of ints with
    ``low <= min <= max <= high``, as a tuple (a count drawn uniformly from the range)."""
    pair = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"{name} must be an int or a pair (min, max) of ints, got {_describe(value)}")
    lo = check_int(f"{name}[0] (min)", pair[0], low=low, high=high)
    hi = check_int(f"{name}[1] (max)", pair[1], low=low, high=high)
    if lo > hi:
        raise ValueError(f"{name} must be a pair (min, max) with min <= max, got {tuple(pair)}")
    return lo, hi


class PathNotFound(FileNotFoundError, ValueError):
    """A path given to the library does not exist: both a ``FileNotFoundError`` and the
    ``ValueError`` every other bad argument is."""


def check_path(name: str, value, *, kind: str = "file", must_exist: bool = True, what: str | None = None):
    """Return ``value`` as a :class:`pathlib.Path` (``~`` expanded) naming a ``kind`` (``"file"``
    or ``"folder"``); ``what`` says what the file or folder is for the messages (``"checkpoint"``).

    Not a ``str`` / ``os.PathLike`` (an int, a bool, None): ``TypeError``. An empty string:
    ``ValueError``. A path that holds the other kind of thing (a folder given for a file, say):
    ``ValueError`` saying what was found and what is expected. With ``must_exist``, a path that
    does not exist is a :class:`PathNotFound` (a ``FileNotFoundError`` and a ``ValueError``)::

        check_path("path", "runs/a", kind="file", what="checkpoint")
        # ValueError: path must be a checkpoint file, but runs/a is a folder
    """
    import os
    from pathlib import Path

    check_choice("kind", kind, ("file", "folder"))
    what = kind if what is None else what
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path to a {what} (str or os.PathLike), got {_describe(value)}")
    if not os.fspath(value).strip():
        raise ValueError(f"{name} must be a path to a {what}, got an empty path")
    path = Path(value).expanduser()
    thing = kind if what == kind else f"{what} {kind}"
    if path.is_dir() and kind == "file":
        raise ValueError(f"{name} must be a {thing}, but {path} is a folder")
    if path.exists() and not path.is_dir() and kind == "folder":
        raise ValueError(f"{name} must be a {thing}, but {path} is a file")
    if must_exist and not path.exists():
        raise PathNotFound(f"no {what} at {path}: {name} is not a {kind} (nothing exists at that path)")
    return path


def check_finite(name: str, values):
    """Refuse (``ValueError``) a tensor or array that holds NaN or an infinity, saying how many
    and of how many entries: a view never draws non-finite numbers as if they were data.
    Returns ``values`` unchanged when all are finite (or when they are not floating point)."""
    import numpy as np

    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
    if not (t.is_floating_point() or t.is_complex()):
        return values
    bad = ~torch.isfinite(t.detach())
    if bool(bad.any()):
        nan = int(torch.isnan(t.detach()).sum())
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite values of {t.numel()} ({nan} NaN, "
                         f"{int(bad.sum()) - nan} infinite): nothing is drawn; look for a diverged model "
                         "or a NaN input")
    return values
