"""``AffinityView``: one module's ``values``, ``affinity`` and ``project`` on one input, and the
small checks every family of inspected layers shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..mixers.attention import softmax_affinity  # noqa: F401  (the one softmax affinity, re-exported)
from ..mixers.base import check_grid
from ..validation import check_float_image, check_int
from .records import ConvWindow


class _OnFirstUse:
    """A dataclass field given either as a tensor or as a function computing it, called on first access (a
    depthwise conv's dense ``(C, N, N)`` is only built when somebody asks for it)."""

    def __set_name__(self, owner, name):
        self.slot = f"_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.slot)  # no default: the field is required
        value = obj.__dict__[self.slot]
        if callable(value) and not isinstance(value, torch.Tensor):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclass
class AffinityView:
    """The affinity view of one module on one input: ``project(affinity @ values) == module(x)``.

    Attributes:
        values: ``(B, M, K, d)``.
        affinity: ``(B|1, M, N, K)``; K = N + ``extra_keys``.
        project: callable ``z (B, M, N, d) -> module output``.
        grid: ``(H, W)`` of the tokens on the image grid, or ``None`` for plain sequences.
        kind: ``"static"`` (independent of x), ``"dynamic"`` or ``"mixed"`` (a weighted sum of both).
        heads: M.
        module_type: the inspected module's class name.
        prefix_tokens: leading tokens that are not on the grid (class and distillation tokens).
        extra_keys: trailing keys that are not tokens (a constant-1 bias key, ``bias_k``...).
        components: for mixed views, the affinities by part (``{"dynamic", "static", "mixed"}``).
        pixel_stride: input pixels per grid step ``(sy, sx)`` when known (set by ``inspect_model``).
        notes: anything else worth knowing about the view (what ``project`` includes, ...).
        read_rows: ``queries -> (B|1, M, Q, K)``, rows of the affinity without the dense one (a static
            kernel placed at each query), or None: :meth:`rows` slices the affinity.
        window: for a static affinity that is a centred stride-1 window with one kernel per head (a
            convolution), that :class:`~unifiedctx.inspection.records.ConvWindow` (weight ``(M, 1, kh, kw)``):
            row q is head m's kernel placed at q (what the explorer draws without the ``(N, N)``); else None.

    ``affinity`` may be given as a function: it is then computed on first access (memory follows what is
    asked for; ``inspect_model`` of ConvNeXt-T at 224 builds no dense depthwise affinity).
    """

    values: torch.Tensor
    affinity: torch.Tensor = _OnFirstUse()
    project: Callable[[torch.Tensor], torch.Tensor]
    grid: tuple[int, int] | None
    kind: str
    heads: int
    module_type: str = ""
    prefix_tokens: int = 0
    extra_keys: int = 0
    components: dict | None = None
    pixel_stride: tuple[float, float] | None = None
    notes: dict = field(default_factory=dict)
    read_rows: Callable | None = field(default=None, repr=False)
    window: ConvWindow | None = field(default=None, repr=False)

    def rows(self, queries) -> torch.Tensor:
        """Rows ``queries`` (token indices, prefix tokens counted) of the affinity: ``(B|1, M, Q, K)``; for a
        static kernel, the kernel placed at each query, without building the dense ``(N, N)``."""
        q = torch.as_tensor(queries, dtype=torch.long).reshape(-1)
        if self.read_rows is not None:
            return self.read_rows(q)
        return self.affinity[..., q, :]

    def output(self) -> torch.Tensor:
        """The reference computation ``project(affinity @ values)`` (equals ``module(x)``)."""
        return self.project(self.affinity @ self.values)

    def grid_affinity(self) -> torch.Tensor:
        """The token-to-token block on the grid, ``(B|1, M, H*W, H*W)``, for plotting."""
        p, n = self.prefix_tokens, self.affinity.shape[-2]
        return self.affinity[..., p:, p:n]


def pair(v) -> tuple[int, int]:
    """``3 -> (3, 3)``; a pair stays a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


def check_image(x, module, channels: int | None = None) -> tuple[int, int]:
    """The ``(H, W)`` of an image input ``(B, C, H, W)`` for ``module``: a ``ValueError`` naming the
    module for another rank or (with ``channels``) another channel count, a ``TypeError`` for a
    dtype other than the module's parameters'."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x for {type(module).__name__} must be a (B, C, H, W) tensor, "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    check_float_image("x", x, like=module)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"x has {x.shape[1]} channels but this {type(module).__name__} takes {channels}")
    return (x.shape[2], x.shape[3])


def check_tokens(x, what: str) -> None:
    """A ``(B, N, C)`` token input, or a ``ValueError`` saying what ``what`` takes."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x for {what} must be (B, N, C) tokens, got {getattr(x, 'shape', x)}")


def check_window(module, kernel, padding, dilation=(1, 1)) -> None:
    """A centred window: odd kernel sides and ``same`` padding (``dilation * (k // 2)``)."""
    name = type(module).__name__
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"{name}.kernel_size must be odd so the window is centred, got {kernel}")
    want = (dilation[0] * (kernel[0] // 2), dilation[1] * (kernel[1] // 2))
    if padding == "same":
        padding = want
    elif padding == "valid":
        padding = (0, 0)
    if pair(padding) != want:
        raise ValueError(f"{name}.padding must be kernel_size // 2 = {want} ('same' padding), got {padding}")


def token_grid(grid, n_tokens: int, prefix_tokens: int):
    """``grid`` checked against the ``n_tokens - prefix_tokens`` tokens it must hold (``None`` stays)."""
    if grid is None:
        return None
    grid = check_grid(grid)
    if grid[0] * grid[1] != n_tokens - prefix_tokens:
        raise ValueError(f"grid={grid} holds {grid[0] * grid[1]} tokens but x has {n_tokens} tokens "
                         f"({prefix_tokens} prefix tokens)")
    return grid


def check_prefix(prefix_tokens) -> int:
    """A non-negative int number of prefix tokens (``TypeError`` for another kind, ``ValueError`` < 0)."""
    return check_int("prefix_tokens", prefix_tokens, low=0)
