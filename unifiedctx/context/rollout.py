"""Rollout: the affinity composed through depth, from the input pixels to the tokens of a layer.

With one matrix S_l per token map (see :mod:`unifiedctx.context.steps`), the rollout to layer L is

    R_L = S_L @ S_{L-1} @ ... @ S_1          (B, N_L, H_in * W_in)

Row t of R_L says how much token t of layer L takes, through every path, from each input pixel.
Two rules build S_l (``signed``):

* **non-negative** (default; Abnar & Zuidema 2020, "attention rollout"): the heads' ``|A_m|``
  are combined by their mean or their max (``heads``), the residual adds I, and each row is
  divided by its sum: ``S = rownorm(|A| + I)``. For softmax attention with the mean over heads
  this is the paper's ``0.5 A + 0.5 I``. Rows of R sum to 1: a distribution of where the
  context comes from, with residual and branch weighted equally whatever their real scales
  (layer scale, a conv kernel's norm and the values' magnitudes are not seen).
* **signed** (``signed=True``): ``S = I + gamma * mean_m A_m`` with no renormalisation (gamma:
  the block's layer scale, 1 without one). For a stack of linear, static, channel-free mixers
  (single-channel convs, pooling, MLP-Mixer's dense matrix) this is the network's exact linear
  map, the Jacobian d y / d x; for everything else it is the linear part of the token path.

Both ignore channel mixing: the channel MLP (a residual that mixes channels per token) gives I,
and so do the norms; a mixer's value and output projections are not seen either.
Patch embeddings and downsampling convs enter as their strided window: signed, the kernel
summed over input channels and averaged over output channels (the exact conv for one channel);
non-negative, ``|kernel|`` summed over input channels, combined over output channels like heads,
each row normalised to 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .extract import check_image, context_steps
from .steps import ContextStep, check_heads


@dataclass
class Rollout:
    """The rollout to one layer.

    Attributes:
        maps: ``(B, N, H_in * W_in)``: row t is token t's context over the input pixels.
        grid: ``(h, w)``, the token grid of the layer (N = h * w).
        input_grid: ``(H_in, W_in)``.
        layers: the names of the steps composed, in order.
        heads, signed: the rule used.
    """

    maps: torch.Tensor
    grid: tuple[int, int]
    input_grid: tuple[int, int]
    layers: list[str]
    heads: str = "mean"
    signed: bool = False

    @property
    def layer(self) -> str:
        """The last layer composed."""
        return self.layers[-1]

    @property
    def stride(self) -> tuple[float, float]:
        """Input pixels per token along H and W."""
        return (self.input_grid[0] / self.grid[0], self.input_grid[1] / self.grid[1])

    def map(self, query=None, index: int = 0) -> torch.Tensor:
        """Token ``query``'s context on the input grid ``(H_in, W_in)`` for image ``index``."""
        t = query_index(query, self.grid)
        return self.maps[index, t].reshape(self.input_grid)


def query_index(query, grid: tuple[int, int]) -> int:
    """``(row, col)`` or a flat index (None: the centre token) -> the flat token index."""
    h, w = grid
    if query is None:
        return (h // 2) * w + w // 2
    if isinstance(query, int) and not isinstance(query, bool):
        if not 0 <= query < h * w:
            raise ValueError(f"query must be a token index in [0, {h * w}) or (row, col) on the grid "
                             f"{grid}, got {query}")
        return query
    ok = isinstance(query, (tuple, list)) and len(query) == 2 and all(
        isinstance(q, int) and not isinstance(q, bool) for q in query)
    if not ok or not (0 <= query[0] < h and 0 <= query[1] < w):
        raise ValueError(f"query must be (row, col) inside the grid {grid} or a token index, got {query!r}")
    return query[0] * w + query[1]


def layer_names(steps: Sequence[ContextStep]) -> list[str]:
    """The names ``upto`` accepts: every step and every module that contains steps."""
    names = []
    for step in steps:
        parts = step.name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in names:
                names.append(prefix)
    return names


def resolve_upto(steps: Sequence[ContextStep], upto) -> int:
    """The index of the last step inside ``upto`` (None: the last step)."""
    if not steps:
        raise ValueError("this model has no token maps to roll out")
    if upto is None:
        return len(steps) - 1
    if not isinstance(upto, str):
        raise TypeError(f"upto must be a layer name (str) or None, got {type(upto).__name__}")
    inside = [i for i, s in enumerate(steps) if s.name == upto or s.name.startswith(upto + ".")]
    if not inside:
        names = layer_names(steps)
        close = difflib.get_close_matches(upto, names, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"upto={upto!r} is not a layer of this model.{hint} Layers: "
                         f"{', '.join(s.name for s in steps)}")
    return inside[-1]


def compose(steps: Sequence[ContextStep], input_grid, heads: str = "mean",
            signed: bool = False) -> Iterator[tuple[ContextStep, torch.Tensor]]:
    """Yield ``(step, R)`` after every step: R ``(B|1, N_step, H_in * W_in)`` (see the module docstring)."""
    check_heads(heads)
    expected, r = tuple(input_grid), None
    for step in steps:
        if tuple(step.grid_in) != expected:
            raise ValueError(f"step {step.name!r} reads a {step.grid_in} grid but the previous one "
                             f"gave {expected}")
        s = step.matrix(heads, bool(signed))
        r = s if r is None else s @ r
        expected = tuple(step.grid_out)
        yield step, r


def rollout_steps(steps: Sequence[ContextStep], input_grid, upto: str | None = None, heads: str = "mean",
                  signed: bool = False) -> Rollout:
    """The rollout of an explicit list of steps (any model; see :func:`rollout`)."""
    last = resolve_upto(steps, upto)
    *_, (step, r) = compose(steps[: last + 1], input_grid, heads, signed)
    names = [s.name for s in steps[: last + 1]]
    return Rollout(r, tuple(step.grid_out), tuple(input_grid), names, heads, bool(signed))


def rollout(model: nn.Module, x: torch.Tensor, upto: str | None = None, heads: str = "mean",
            signed: bool = False) -> Rollout:
    """The composed affinity from the input pixels to the tokens of layer ``upto``.

    ``R = S_upto @ ... @ S_1`` of shape ``(B, N_upto, H_in * W_in)``, with one ``S_l`` per token
    map (residual mixers ``A + I``, Container-Light's positional conv ``A_pos + I``, patch
    embeddings their strided window; the channel MLP and the norms give I). See the module
    docstring for the two rules.

    Args:
        model: a unifiedctx ``ContextNet`` (any preset) or an ``nn.Sequential`` of unifiedctx
            mixers and ``nn.Conv2d`` layers (no residuals: each layer is ``A x``).
        x: ``(B, C, H, W)`` float images of the model's dtype.
        upto: a layer name: a step (``"stages.3.blocks.0.mixer"``) or a module holding steps
            (``"stages.2"``: up to its last step). Default: the last layer.
        heads: ``"mean"`` or ``"max"``: how the heads' ``|A_m|`` are combined (signed: always the mean).
            The heads are each mixer's M: attention heads, the channels of a depthwise conv or of
            Container's per-channel affinity, the output channels of a patch embedding.
        signed: the signed rule (exact for linear static mixers) instead of the non-negative one.

    Returns:
        :class:`Rollout` with ``maps`` ``(B, N_upto, H_in * W_in)`` (an expanded view when no layer
        depends on x), ``grid``, ``input_grid``, ``layers``.

    Every mixer's dense ``(B|1, M, N, N)`` affinity is built, and R holds ``N_upto x H_in W_in``
    numbers per image: meant for the small grids of the ``_nano`` and ``_cifar`` presets.
    """
    check_heads(heads)
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be True or False, got {signed!r}")
    input_grid = check_image(x, model)
    steps = context_steps(model, x)
    resolve_upto(steps, upto)  # a bad name fails before any matrix is built
    out = rollout_steps(steps, input_grid, upto, heads, signed)
    out.maps = out.maps.expand(x.shape[0], -1, -1)  # static models give one map for the batch
    return out


def token_centres(grid, input_grid, dtype=torch.float64) -> torch.Tensor:
    """``(N, 2)``: the centre of every token of ``grid`` in input pixel coordinates (row, col)."""
    sy, sx = input_grid[0] / grid[0], input_grid[1] / grid[1]
    ys = (torch.arange(grid[0], dtype=dtype) + 0.5) * sy - 0.5
    xs = (torch.arange(grid[1], dtype=dtype) + 0.5) * sx - 0.5
    return torch.cartesian_prod(ys, xs)


def mean_distance(maps: torch.Tensor, grid, input_grid) -> float:
    """Mean over tokens (and images) of ``sum_j w_tj ||p_j - c_t||`` with ``w_t = |R_t| / sum |R_t|``:
    how far, in input pixels, a token's context lies from its own centre ``c_t``."""
    centres = token_centres(grid, input_grid)
    pixels = token_centres(input_grid, input_grid)
    dist = torch.cdist(centres, pixels).to(maps.dtype)  # (N, P)
    w = maps.abs()
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return float((w * dist).sum(-1).mean())


def context_distance(model: nn.Module, x: torch.Tensor, heads: str = "mean", signed: bool = False,
                     every: str = "block") -> dict[str, float]:
    """Layer -> the mean distance (input pixels) of its rolled-out context (:func:`mean_distance`).

    ``every="block"`` reports each block (``stages.s.blocks.b``, after its last residual step) and
    each non-residual layer (a patch embedding, a layer of an ``nn.Sequential``); ``every="step"``
    reports every step.
    """
    if every not in ("block", "step"):
        raise ValueError(f"every must be 'block' or 'step', got {every!r}")
    input_grid = check_image(x, model)
    steps = context_steps(model, x)
    out = {}
    for step, r in compose(steps, input_grid, heads, signed):
        name = step.name.rsplit(".", 1)[0] if every == "block" and step.residual else step.name
        out[name] = mean_distance(r, step.grid_out, input_grid)
    return out
