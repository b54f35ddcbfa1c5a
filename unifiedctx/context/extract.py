"""The context graph of any model, read from one forward pass: one :class:`GraphNode` per token map.

The nodes come from the one reader's trace (:func:`unifiedctx.inspection.trace.trace`), for unifiedctx's
networks and foreign ones alike, in the order they happened:

* a token mixer (an attention read at its call, a unifiedctx mixer asked for its own affinity) is ``A x``;
* a convolution, a strided pooling or a patch merging is its window (patch embeddings, downsampling,
  depthwise and plain convs);
* a join is where token paths meet in a sum: a residual ``x + f(x)``, a shortcut beside its branch (ResNet's
  downsample), any parallel branches. It is found in the forward itself, not from a table of blocks.

A channel MLP, norms and activations are token-wise: no node. Prefix tokens (class, distillation, registers)
are carried: a node's N counts them, and the rollout joins them where they enter the sequence. Token mixing
the reader saw and did not read is in ``ContextGraph.unread``: :func:`~unifiedctx.context.rollout` refuses
such a network by name unless asked for a partial map.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..inspection.reader import check_model
from ..inspection.records import AffinityRecord, JoinRecord, TokenGrid, WindowRecord
from ..inspection.trace import trace
from ..validation import check_finite, check_float_image, check_int
from .steps import ContextStep


def check_image(x, model: nn.Module) -> tuple[int, int]:
    """``x`` must be a float ``(B, C, H, W)`` tensor of the model's dtype; returns ``(H, W)``."""
    check_model(model)
    check_float_image("x", x)
    check_finite("x", x)
    param = next(model.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {param.dtype}: "
                        f"use x.to({param.dtype}) or model.to({x.dtype})")
    if callable(getattr(model, "check_input", None)):
        model.check_input(x)
    return tuple(x.shape[-2:])


@dataclass
class GraphNode:
    """One node of the context graph.

    Attributes:
        name: the module call that made it (``"blocks.3.attn"``; ``"shared#1"`` for the second call of a
            module called more than once); a join carries the name of the module where the sum happened.
        kind: ``"map"`` (a token map: ``step``) or ``"join"`` (a sum of ``parents``).
        step: the token map as a :class:`ContextStep` (non-residual), None for a join.
        parents: node indices it reads (0: the input image).
        scales: each parent's factor in the signed rule (a layer scale's mean, -1 for a subtraction).
        prefixes: the prefix tokens of each parent's tensor as this node read it.
        tokens: the tokens it gives (``TokenGrid``: grid and prefix tokens).
        module_type: the class that ran it.
    """

    name: str
    kind: str
    step: ContextStep | None
    parents: tuple
    scales: tuple
    prefixes: tuple
    tokens: TokenGrid
    module_type: str = ""


@dataclass
class ContextGraph:
    """The context graph of one pass: ``nodes[0]`` is the input image; ``unread`` names the token mixing
    that was seen and not read (``{module: why}``); ``dtype``: what the rollout accumulates in (float64,
    whatever the model's dtype, so that one query's row and the whole map agree to the last digits)."""

    nodes: list
    input_grid: tuple
    unread: OrderedDict = field(default_factory=OrderedDict)
    dtype: torch.dtype = torch.float64
    unread_at: dict = field(default_factory=dict)  # module -> nodes there were when it was missed

    def unread_upto(self, last: int | None = None) -> OrderedDict:
        """The unread token mixing that can reach node ``last`` (None: the whole graph): what was missed
        before that node was made (a pooling head's attention after the encoder cannot reach the
        encoder's layers)."""
        if last is None:
            return OrderedDict(self.unread)
        return OrderedDict((name, why) for name, why in self.unread.items()
                           if self.unread_at.get(name, 0) <= last)

    def names(self) -> list[str]:
        """The node names, in order (the input image excluded)."""
        return [n.name for n in self.nodes[1:]]

    def maps(self) -> list[GraphNode]:
        """The token maps (the joins left out), in order."""
        return [n for n in self.nodes[1:] if n.kind == "map"]

    def resolve(self, upto) -> int:
        """The index of the last node inside ``upto`` (a node's name, or a module holding nodes; None: the
        last node). A ``ValueError`` lists the layers and close names for a name that is none."""
        if len(self.nodes) < 2:
            raise ValueError("this model has no token maps to roll out")
        if upto is None:
            return len(self.nodes) - 1
        if not isinstance(upto, str):
            raise TypeError(f"upto must be a layer name (str) or None, got {type(upto).__name__}")
        calls = sorted({n.name for n in self.nodes[1:] if n.name.startswith(upto + "#")}, key=_call_number)
        if calls:  # a module called several times: which call is meant must be said (as the ERF asks)
            raise ValueError(f"upto={upto!r} runs {len(calls)} times in model(x) (weight sharing, a loop): "
                             f"name the call, {', '.join(repr(c) for c in calls)}")
        inside = [i for i, n in enumerate(self.nodes) if i and _inside(n.name, upto)]
        if not inside:
            names = layer_names(self.names())
            close = difflib.get_close_matches(upto, names, n=4, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"upto={upto!r} is not a layer of this model.{hint} Layers: "
                             f"{', '.join(self.names())}")
        return inside[-1]


def _call_number(name: str) -> int:
    number = name.rpartition("#")[2]
    return int(number) if number.isdigit() else 0


def _inside(name: str, upto: str) -> bool:
    return name == upto or name.startswith(upto + ".") or name.startswith(upto + "#") or upto == "<model>"


def layer_names(names) -> list[str]:
    """The names ``upto`` accepts: every node and every module that contains nodes."""
    out = []
    for name in names:
        parts = name.split("#")[0].split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in out:
                out.append(prefix)
        if name not in out:
            out.append(name)
    return out


def step_of(record) -> ContextStep:
    """The :class:`ContextStep` of one token-map record (:mod:`unifiedctx.inspection.records`)."""
    if isinstance(record, AffinityRecord):
        t = record.tokens
        if record.windows is not None:  # block-sparse: the windows' own affinities, never the dense (N, N)
            return ContextStep(record.name, t.grid, t.grid, windows=record.windows)
        return ContextStep(record.name, t.grid, t.grid, affinity=record.affinity, prefix_in=t.prefix,
                           prefix_out=t.prefix)
    if isinstance(record, WindowRecord):
        return ContextStep(record.name, record.tokens_in.grid, record.tokens_out.grid, window=record.window)
    raise TypeError(f"not a token-map record: {type(record).__name__}")


def context_graph(model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None) -> ContextGraph:
    """The :class:`ContextGraph` of ``model`` on input ``x`` (see the module docstring).

    ``model`` is any network: unifiedctx's, a plain PyTorch stack, timm's, Hugging Face's, torchvision's, a
    user's own. Affinities are those of the inputs the layers received in one ``model(x)``; ``prefix_tokens``
    as in :func:`unifiedctx.inspect_model`. The model is left as it was.
    """
    check_image(x, model)
    if prefix_tokens is not None:
        check_int("prefix_tokens", prefix_tokens, low=0)
    found = trace(model, x, prefix_tokens)
    nodes = [GraphNode("<input>", "input", None, (), (), (), found.nodes[0].tokens_out)]
    for node in found.nodes[1:]:
        record = node.record
        if isinstance(record, JoinRecord):
            nodes.append(GraphNode(record.name, "join", None, node.parents, node.scales, node.prefixes,
                                   record.tokens, record.module_type))
        else:
            nodes.append(GraphNode(record.name, "map", step_of(record), node.parents, node.scales,
                                   node.prefixes,
                                   node.tokens_out, record.module_type))
    return ContextGraph(nodes, tuple(x.shape[-2:]), found.unread, unread_at=found.unread_at)


def unread_message(model: nn.Module, unread: dict, what: str, most: int = 6) -> str:
    """The refusal of a network whose token mixing was not all read: each module, its class, and why."""
    items = [f"{name or '<model>'}: {why}" for name, why in list(unread.items())[:most]]
    if len(unread) > most:
        items.append(f"... and {len(unread) - most} more")
    return (f"{what} of {type(model).__name__} would leave out token mixing the reader could not read: "
            f"{'; '.join(items)}. Pass partial=True for the map of what was read.")


__all__ = ["ContextGraph", "GraphNode", "check_image", "context_graph", "layer_names", "step_of",
           "unread_message"]
