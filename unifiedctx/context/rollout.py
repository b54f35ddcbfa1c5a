"""Rollout: the affinity composed through depth, from the input pixels to the tokens of a layer.

A network is read as a graph (:mod:`unifiedctx.context.extract`): token maps ``S`` (an attention, a mixer,
a conv or pooling window) and joins, where token paths meet in a sum (a residual ``x + f(x)``, a shortcut
beside its branch). The rollout to node L composes them along every path,

    R_node = S_node R_parent          R_join = sum_i w_i R_parent_i          R_input = I

so that row t of ``R_L`` ``(B, N_L, H_in * W_in)`` says how much token t of L takes, through every path,
from each input pixel (on a chain of residual blocks: ``R_L = (0.5 A_L + 0.5 I) ... (0.5 A_1 + 0.5 I)``).
Two rules (``signed``):

* **non-negative** (default; Abnar & Zuidema 2020, "attention rollout"): a token map is the heads'
  ``|A_m|`` combined by their mean or their max (``heads``), each row divided by its sum; a join weighs its
  paths equally, ``w_i = 1 / k``. A residual is therefore ``0.5 rownorm(|A|) + 0.5 I``: the paper's
  ``0.5 A + 0.5 I``
  for softmax attention, and the same weighting for every family (a conv, a pooling, a downsampling shortcut
  beside its branch). Rows of R sum to 1: a distribution of where the context comes from, with residual and
  branch weighted equally whatever their real scales (layer scale, a conv kernel's norm and the values'
  magnitudes are not seen).
* **signed** (``signed=True``): a token map is ``mean_m A_m``, a join the sum of its paths, each times the
  constant factors met on it (a layer scale's mean gamma, a constant, -1 for a subtraction, a 1 x 1
  single-channel conv), with no renormalisation: ``x + gamma f(x)`` gives ``I + gamma A``. For a network of
  linear, static, channel-free mixers (single-channel convs, pooling, MLP-Mixer's dense matrix) this is its
  exact linear map, the Jacobian d y / d x; for everything else it is the linear part of the token path.

Both ignore channel mixing: the channel MLP (a residual that mixes channels per token) adds nothing to the
token path, and so do the norms; a mixer's value and output projections are not seen either.
Patch embeddings and downsampling convs enter as their strided window: signed, the kernel
summed over input channels and averaged over output channels (the exact conv for one channel);
non-negative, ``|kernel|`` summed over input channels, combined over output channels like heads,
each row normalised to 1.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..validation import check_bool, check_choice, check_int, check_query
from .extract import ContextGraph, check_image, context_graph, unread_message
from .steps import ContextStep, check_heads, join_matrix


@dataclass
class Rollout:
    """The rollout to one layer.

    Attributes:
        maps: ``(B, N, H_in * W_in)``: row t is token t's context over the input pixels.
        grid: ``(h, w)``, the token grid of the layer (N = h * w).
        input_grid: ``(H_in, W_in)``.
        layers: the names of the steps composed, in order.
        heads, signed: the rule used.
        prefix_maps: ``(B, P, H_in * W_in)``: the same for the layer's P prefix tokens (class,
            distillation; ``P = 0`` without). Their rows sum to less than 1 (non-negative rule): the
            rest of their context comes from the prefix tokens' own parameters, which no pixel reaches.
        skipped: ``{module name: why}`` for the layers with parameters that the reader could not read.
    """

    maps: torch.Tensor
    grid: tuple[int, int]
    input_grid: tuple[int, int]
    layers: list[str]
    heads: str = "mean"
    signed: bool = False
    prefix_maps: torch.Tensor | None = None
    skipped: dict = field(default_factory=dict)

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

    def prefix_map(self, token: int = 0, index: int = 0) -> torch.Tensor:
        """Prefix token ``token``'s context (0: the class token) on the input grid, image ``index``."""
        count = 0 if self.prefix_maps is None else self.prefix_maps.shape[1]
        token = check_int("token", token)
        if not 0 <= token < count:
            raise ValueError(f"token must be a prefix token in [0, {count}) (this layer has {count}), "
                             f"got {token}")
        return self.prefix_maps[index, token].reshape(self.input_grid)


def query_index(query, grid: tuple[int, int]) -> int:
    """``(row, col)`` or a flat index (None: the centre token) -> the flat token index: the one rule,
    :func:`unifiedctx.validation.check_query`."""
    return check_query("query", query, grid)


def layer_names(steps: Sequence[ContextStep]) -> list[str]:
    """The names ``upto`` accepts: every step and every module that contains steps."""
    names = []
    for step in steps:
        for name in step.names():
            parts = name.split(".")
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
    inside = [i for i, s in enumerate(steps)
              if any(n == upto or n.startswith(upto + ".") for n in s.names())]
    if not inside:
        names = layer_names(steps)
        close = difflib.get_close_matches(upto, names, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"upto={upto!r} is not a layer of this model.{hint} Layers: "
                         f"{', '.join(s.name for s in steps)}")
    return inside[-1]


def _tensor_of(step: ContextStep) -> torch.Tensor:
    """A tensor of the step (its affinity or window weight, or its branch's first), for dtype and device."""
    if step.affinity is not None:
        return step.affinity
    if step.window is not None:
        return step.window.weight
    return _tensor_of(step.branch[0])


def _matrices(steps: Sequence[ContextStep], input_grid, heads: str, signed: bool, dense: bool = True):
    """``(step, [join, ..., matrix])`` per step: the join of prefix tokens it needs, then its matrix
    (``dense=False``: the step itself in the matrix's place, for :meth:`ContextStep.right`)."""
    expected, prefix = tuple(input_grid), 0
    for step in steps:
        if tuple(step.grid_in) != expected:
            raise ValueError(f"step {step.name!r} reads a {step.grid_in} grid but the previous one "
                             f"gave {expected}")
        s = step.matrix(heads, bool(signed)) if dense else step
        mats = [s]
        if step.prefix_in != prefix:
            like = _tensor_of(step)
            mats.insert(0, join_matrix(expected, prefix, step.prefix_in, like.dtype, like.device))
        expected, prefix = tuple(step.grid_out), step.prefix_out
        yield step, mats


def compose(steps: Sequence[ContextStep], input_grid, heads: str = "mean",
            signed: bool = False) -> Iterator[tuple[ContextStep, torch.Tensor]]:
    """Yield ``(step, R)`` after every step: R ``(B|1, N_step, H_in * W_in)`` (see the module docstring;
    N counts the step's prefix tokens first)."""
    check_heads(heads)
    r = None
    for step, mats in _matrices(steps, input_grid, heads, signed):
        for s in mats:
            r = s if r is None else s @ r
        yield step, r


def rollout_steps(steps: Sequence[ContextStep], input_grid, upto: str | None = None, heads: str = "mean",
                  signed: bool = False) -> Rollout:
    """The rollout of an explicit list of steps (any model; see :func:`rollout`).

    The product is taken from the last step down (:func:`~unifiedctx.context.steps.product`), so
    its cost is ``sum_l N_upto N_l N_(l-1)``, not ``sum_l N_l N_(l-1) H_in W_in``.
    """
    check_heads(heads)
    last = resolve_upto(steps, upto)
    ops = [(step, joins[:-1]) for step, joins in _matrices(steps[: last + 1], input_grid, heads, signed,
                                                            dense=False)]
    (step, joins), r = ops[-1], ops[-1][0].matrix(heads, bool(signed))
    for j in reversed(joins):
        r = r @ j
    for earlier, joins in reversed(ops[:-1]):
        r = earlier.right(r, heads, bool(signed))
        for j in reversed(joins):
            r = r @ j
    step = steps[last]
    names = [s.name for s in steps[: last + 1]]
    p = step.prefix_out
    return Rollout(r[:, p:], tuple(step.grid_out), tuple(input_grid), names, heads, bool(signed), r[:, :p])


def rollout_graph(graph: ContextGraph, upto: str | None = None, heads: str = "mean", signed: bool = False,
                  rows=None) -> Rollout:
    """The rollout of a :class:`~unifiedctx.context.extract.ContextGraph` to node ``upto`` (see
    :func:`rollout`).

    Computed backwards from ``upto``, as autograd would: the rows ``T`` of the target (the identity, or only
    ``rows``: token indices, prefix tokens counted) are carried to every node they reach, ``T @ S`` through a
    token map (a window as its transposed convolution, a windowed attention window by window) and split over
    the paths of a join (equal shares, or the signed factors), until they reach the input image. The cost is
    ``sum_l R N_l N_(l-1)`` with R the rows asked for.
    """
    check_heads(heads)
    last = graph.resolve(upto)
    nodes = graph.nodes
    target = nodes[last].tokens
    n_out = target.tokens
    eye = torch.eye(n_out, dtype=graph.dtype)
    start = eye if rows is None else eye[torch.as_tensor(rows, dtype=torch.long).reshape(-1)]
    carried = {last: start[None]}
    for index in range(last, 0, -1):
        t = carried.pop(index, None)
        if t is None:
            continue
        node = nodes[index]
        if node.kind == "map":
            t = node.step.right(t, heads, bool(signed))
            shares = [(node.parents[0], (node.scales[0] if signed else 1.0) * t, node.prefixes[0])]
        else:
            weight = 1.0 / len(node.parents)
            shares = [(p, (s if signed else weight) * t, prefix)
                      for p, s, prefix in zip(node.parents, node.scales, node.prefixes)]
        for parent, share, prefix in shares:
            have = nodes[parent].tokens
            if have.prefix != prefix:  # prefix tokens joined (or left) between the parent and this node
                share = share @ join_matrix(have.grid, have.prefix, prefix, share.dtype, share.device)
            carried[parent] = share if parent not in carried else carried[parent] + share
    r = carried.get(0)
    if r is None:  # the target is reached from no pixel
        r = torch.zeros(1, (n_out if rows is None else len(eye[rows].reshape(-1, n_out))),
                        graph.input_grid[0] * graph.input_grid[1], dtype=graph.dtype)
    p = target.prefix if rows is None else 0
    names = [n.name for n in nodes[1:last + 1]]
    return Rollout(r[:, p:], tuple(target.grid), tuple(graph.input_grid), names, heads, bool(signed),
                   r[:, :p])


def check_partial(graph: ContextGraph, model: nn.Module, partial, what: str, upto: str | None = None) -> None:
    """Refuse (a ``ValueError`` naming each module, its class and why) a graph with token mixing the reader
    did not read, unless ``partial`` is True. With ``upto`` (a layer of the graph) only the mixing that can
    reach that layer counts: what runs after it (a classifier's attention pooling) leaves its map whole."""
    check_bool("partial", partial)
    unread = graph.unread_upto(None if upto is None else graph.resolve(upto))
    if unread and not partial:
        raise ValueError(unread_message(model, unread, what))


def rollout(model: nn.Module, x: torch.Tensor, upto: str | None = None, heads: str = "mean",
            signed: bool = False, prefix_tokens: int | None = None, partial: bool = False) -> Rollout:
    """The composed affinity from the input pixels to the tokens of layer ``upto``.

    ``R = S_upto ... S_1`` of shape ``(B, N_upto, H_in * W_in)``, composed over the context graph of one
    forward pass (:func:`~unifiedctx.context.extract.context_graph`): every token map (attention read at its
    call, a mixer's affinity, a conv or pooling window) and every join where token paths meet in a sum
    (a residual, a shortcut beside its branch). See the module docstring for the two rules.

    Args:
        model: any network: unifiedctx's, a plain PyTorch stack, timm's, Hugging Face's, torchvision's, a
            user's own. ``eval()`` it for exact affinities (its mode is not changed here).
        x: ``(B, C, H, W)`` float images of the model's dtype.
        upto: a node's name (a module call: ``"blocks.3.attn"``, ``"shared#1"`` for the second call of a
            module called twice), or a module holding nodes (``"blocks.3"``, ``"stages.2"``: up to its last
            node, the block's residual sum included). Default: the last node.
        heads: ``"mean"`` or ``"max"``: how the heads' ``|A_m|`` are combined (signed: always the mean).
        signed: the signed rule (exact for linear static mixers) instead of the non-negative one.
        prefix_tokens: class / distillation tokens of token layers (default: found as ``inspect_model``).
        partial: compose what was read even when some token mixing was not (the unread modules are in
            ``Rollout.skipped``). Without it a map that unread mixing can reach is refused by name: with
            ``upto=None`` any (the whole network), with a layer the mixing that ran before it (a
            classifier's attention pooling after the encoder leaves the encoder's layers whole).

    Returns:
        :class:`Rollout` with ``maps`` ``(B, N_upto, H_in * W_in)``, ``prefix_maps``, ``grid``,
        ``input_grid``,
        ``layers`` (every node composed, joins included) and ``skipped`` (the token mixing not read).

    Raises:
        ValueError: a module that runs before ``upto`` (any module, for the whole network) mixes tokens in
            a way the reader does not read (a linear attention, a token MLP of an unknown class, ...),
            naming it and its class, unless ``partial=True``.
    """
    check_heads(heads)
    check_bool("signed", signed)
    check_bool("partial", partial)
    check_image(x, model)
    if upto is not None and not isinstance(upto, str):
        raise TypeError(f"upto must be a layer name (str) or None, got {type(upto).__name__} {upto!r}")
    graph = context_graph(model, x, prefix_tokens)
    if len(graph.nodes) < 2:
        check_partial(graph, model, partial, "the rollout")
        raise ValueError(f"{type(model).__name__} has no layer that moves context between tokens (no "
                         f"attention, "
                         f"mixer, convolution or pooling over the grid)")
    last = graph.resolve(upto)  # a bad name fails before any matrix is built; None: the whole network
    check_partial(graph, model, partial, "the rollout", upto)
    out = rollout_graph(graph, upto, heads, signed)
    out.maps = out.maps.expand(x.shape[0], -1, -1)  # static models give one map for the batch
    out.prefix_maps = out.prefix_maps.expand(x.shape[0], -1, -1)
    out.skipped = dict(graph.unread_upto(None if upto is None else last))  # the whole network: all of it
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
                     every: str = "block", partial: bool = False) -> dict[str, float]:
    """Layer -> the mean distance (input pixels) of its rolled-out context (:func:`mean_distance`).

    ``every="block"`` reports each block (the module where a residual sum happens, after it) and each token
    map outside a residual; ``every="step"`` reports every node. The graph is composed forwards once
    (``R_node = S R_parent``, a join the mean of its parents, or their signed sum). ``partial`` as in
    :func:`rollout`.
    """
    check_choice("every", every, ("block", "step"))
    input_grid = check_image(x, model)
    graph = context_graph(model, x)
    check_partial(graph, model, partial, "context_distance")
    out = {}
    for node, r in compose_graph(graph, heads, signed):
        if every == "block" and node.kind == "map" and any(
                later.kind == "join" and node.name.startswith(later.name + ".") for later in graph.nodes):
            continue
        out[node.name] = mean_distance(r[:, node.tokens.prefix:], node.tokens.grid, input_grid)
    return out


def compose_graph(graph: ContextGraph, heads: str = "mean", signed: bool = False):
    """Yield ``(node, R)`` for every node, forwards: R ``(B|1, N_node, H_in * W_in)`` (prefix tokens first).
    Each R is kept only while a later node still reads it."""
    check_heads(heads)
    nodes = graph.nodes
    last_use = {}
    for node in nodes[1:]:
        for p in node.parents:
            last_use[p] = nodes.index(node)
    size = graph.input_grid[0] * graph.input_grid[1]
    kept = {0: torch.eye(size, dtype=graph.dtype)[None]}
    for index, node in enumerate(nodes[1:], start=1):
        parts = []
        for parent, scale, prefix in zip(node.parents, node.scales, node.prefixes):
            r = kept[parent]
            have = nodes[parent].tokens
            if have.prefix != prefix:
                r = join_matrix(have.grid, have.prefix, prefix, r.dtype, r.device) @ r
            parts.append((scale if signed else 1.0) * r)
        if node.kind == "map":
            r = node.step.matrix(heads, bool(signed)).to(parts[0].dtype) @ parts[0]
        else:
            r = sum(parts) if signed else sum(parts) / len(parts)
        kept[index] = r
        for parent in node.parents:
            if last_use.get(parent) == index:
                kept.pop(parent, None)
        yield node, r
