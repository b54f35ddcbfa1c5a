"""Small models and data shared by the misuse tests (a plain module, not a test file)."""

from __future__ import annotations

import torch
from torch import nn

from unifiedctx.data.base import ImageData

FAST = {"batch_size": 16, "progress": False, "device": "cpu", "lr": 1e-2, "warmup_epochs": 0.5}


class Tiny(nn.Module):
    """conv 3x3 -> GELU -> GroupNorm -> mean pool -> linear."""

    def __init__(self, width=6, num_classes=3, in_chans=3):
        super().__init__()
        self.config = {"preset": "tiny", "width": width, "num_classes": num_classes, "in_chans": in_chans}
        self.body = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.GELU(), nn.GroupNorm(1, width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def make(seed=0, cls=Tiny, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kw)


def bright(n_train=128, n_test=48, size=8, seed=0, classes=3, channels=3) -> ImageData:
    """Class k = images of brightness around 40 + 80 k (8 steps per epoch at batch 16)."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randint(-30, 30, (n, channels, size, size), generator=gen)
        x = 40 + 80 * (y % 3).view(n, 1, 1, 1) + noise
        return x.clamp(0, 255).to(torch.uint8), y

    (tx, ty), (vx, vy) = split(n_train), split(n_test)
    return ImageData("bright", tx, ty, vx, vy, [f"c{i}" for i in range(classes)], (0.5,) * channels,
                     (0.3,) * channels)


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------ "raises at the door"
#: Wrong inputs every door is tried with (label -> value): the table the door tests share.
WRONG = {
    "bool for int": True,
    "string for number": "0.1",
    "float for int": 2.5,
    "negative": -3,
    "zero": 0,
    "nan": float("nan"),
    "inf": float("inf"),
    "none": None,
    "list": [1, 2, 3],
    "one": 1.0,
    "unknown name": "nonsense",
    "string for bool": "False",
    "int for bool": 1,
}

#: Which of :data:`WRONG` each kind of argument must refuse (a seed may be 0, a fraction not).
KINDS = {
    "count": ("bool for int", "string for number", "float for int", "negative", "zero", "nan", "list"),
    "count0": ("bool for int", "string for number", "float for int", "negative", "nan", "list"),
    "seed": ("bool for int", "string for number", "float for int", "negative", "nan", "list"),
    "fraction": ("bool for int", "string for number", "negative", "zero", "one", "nan", "inf", "list"),
    "number": ("bool for int", "string for number", "nan", "inf", "list"),
    "size": ("bool for int", "string for number", "float for int", "negative", "zero", "nan", "none"),
    "size?": ("bool for int", "string for number", "float for int", "negative", "zero", "nan"),
    "rate": ("bool for int", "string for number", "negative", "one", "nan", "inf", "list"),
    "choice": ("int for bool", "bool for int", "unknown name", "none"),
    "choice?": ("int for bool", "bool for int", "unknown name"),
    "text": ("int for bool", "bool for int", "list"),
    "flag": ("string for bool", "int for bool", "none"),
    "flag?": ("string for bool", "int for bool"),
}


def wrong_values(kind: str):
    """``[(label, value)]``: the wrong inputs of ``kind`` (see :data:`KINDS`)."""
    return [(label, WRONG[label]) for label in KINDS[kind]]


def _package_dir() -> str:
    import os

    import unifiedctx

    return os.path.dirname(os.path.abspath(unifiedctx.__file__)) + os.sep


def raises_at_door(argument: str, call, *args, errors=(ValueError, TypeError), **kwargs) -> BaseException:
    """Call ``call(*args, **kwargs)`` and return the error it raises, asserting that it is a
    ``ValueError`` or ``TypeError`` (or one of ``errors``), that its message names ``argument``,
    and that the traceback's last frame lies inside the ``unifiedctx`` package (our own check,
    not torch, numpy or the standard library failing deeper down)."""
    import os
    import traceback

    try:
        call(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - inspected below, re-raised if unexpected
        if not isinstance(err, errors):
            wanted = f"expected {errors} naming {argument!r}"
            raise AssertionError(f"{wanted}, got {type(err).__name__}: {err}") from err
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = os.path.abspath(last.filename)
        assert where.startswith(_package_dir()), (
            f"{type(err).__name__}({err}) was raised in {where}:{last.lineno}, not inside unifiedctx")
        assert argument in str(err), f"the message {str(err)!r} does not name {argument!r}"
        return err
    raise AssertionError(f"{getattr(call, '__name__', call)} accepted the wrong {argument!r} silently")
