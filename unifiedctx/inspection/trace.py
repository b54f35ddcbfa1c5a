"""The forward pass as a graph of token maps, read while it happens: nothing that mixes tokens goes unseen.

:func:`trace` runs ``model(x)`` once through the one reader
(:func:`~unifiedctx.inspection.reader.forward_pass`)
with a :class:`torch.overrides.TorchFunctionMode` that sees every torch call. Each call is attributed to the
module running it (the innermost one, with its call number: a module called twice gives two steps), and
every tensor on the token path carries a label: the node of the graph it comes from, and (for the signed
rule) the scalar factor it was multiplied by since. Three kinds of node come out of one pass::

    AffinityRecord  attention, read where it happens: at F.scaled_dot_product_attention (Q, K, the scale,
                    the mask or position bias: A = softmax(Q K^T s + mask)), at a softmax whose result
                    multiplies the values (eager attention), or at F.multi_head_attention_forward;
                    a unifiedctx mixer through its contract
    WindowRecord    F.conv2d / avg_pool2d / max_pool2d over the grid (k > 1 or a stride), patch merging
    JoinRecord      an add (or subtract) of two tensors that come from different nodes: a residual
                    (x + f(x)), a downsampling shortcut beside its branch, any parallel branches

So residuals and parallel branches come from the forward itself, not from a table of block classes.
Anything that mixes tokens and is not read is named in ``Trace.unread`` (module, class, what and why):
a matmul that contracts over the tokens with no softmax (a linear attention), a linear map over the
token axis, a softmax whose use is not a matmul with the values, interpolation, unfold, padding or a roll
that moves tokens outside a windowed block, a windowed attention whose window layout is not known.

Adapters, only where a network needs one: windowed attention (Swin of timm, torchvision and Hugging
Face, MaxViT) is laid out on the grid by the window size / shift its block declares; ConViT's GPSA
(a mix of two softmaxes), timm's MixerBlock token MLP and the patch-merging layers (a 2x2 window made of
slices and a linear map) are read by their own view. Everything else goes one generic way.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from ..mixers.base import AffinityMixer
from .attention_call import (
    _MHA_ARGS,
    _SDPA_ARGS,
    MATMULS,
    PASS_PROBS,
    AttentionCall,
    mha_affinity,
    softmax_of,
)
from .reader import mixer_affinity
from .records import AffinityRecord, ConvWindow, JoinRecord, TokenGrid, WindowRecord
from .view import check_prefix, pair
from .windows import (
    Windows,
    find_ancestor,
    grid_places,
    is_maxvit_partition,
    is_patch_merging,
    is_windowed,
    merging_window,
    plain_int,
    static_window,
    window_layout,
    window_places,
)

#: Prefix-token counts tried, in order, when a token sequence is not a whole grid.
MAX_PREFIX_TOKENS = 8

ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
SUBS = {"sub", "sub_", "__sub__", "__rsub__", "__isub__", "subtract", "rsub"}
MULS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
DIVS = {"div", "div_", "__truediv__", "__itruediv__", "true_divide", "divide"}
REDUCTIONS = {"mean", "sum", "amax", "max", "nanmean", "logsumexp"}
#: Calls that move tokens on the grid; read only inside a windowed block (Swin's shift and padding).
MOVES = {"roll": "a roll of the tokens", "pad": "padding of the grid",
         "interpolate": "an interpolation between tokens", "upsample": "an interpolation between tokens",
         "unfold": "an unfold (im2col) of the tokens", "fold": "a fold of the tokens",
         "grid_sample": "a resampling of the grid", "pixel_shuffle": "a pixel shuffle",
         "pixel_unshuffle": "a pixel unshuffle", "conv1d": "a 1-d convolution over tokens",
         "conv3d": "a 3-d convolution", "conv_transpose2d": "a transposed convolution",
         "avg_pool1d": "a 1-d pooling over tokens", "max_pool1d": "a 1-d pooling over tokens",
         "adaptive_max_pool2d": "an adaptive pooling", "lp_pool2d": "a power-average pooling"}


def tiling_grid(n: int, image_size) -> tuple[int, int] | None:
    """The ``(h, w)`` grid of ``n`` tokens that tiles ``image_size`` with one square stride, or None."""
    big_h, big_w = image_size
    if n <= 0:
        return None
    stride = math.sqrt(big_h * big_w / n)
    h, w = max(1, round(big_h / stride)), max(1, round(big_w / stride))
    return (h, w) if h * w == n else None


def prefix_and_grid(n: int, image_size, candidates) -> tuple[int, tuple[int, int]] | None:
    """``(prefix, grid)``: the first prefix-token count of ``candidates`` that leaves a tiling grid."""
    for p in candidates:
        grid = tiling_grid(n - p, image_size)
        if grid is not None:
            return p, grid
    return None


def prefix_candidates(model: nn.Module, prefix_tokens: int | None) -> list[int]:
    """The prefix-token counts to try for a token layer: ``[prefix_tokens]`` when given, else
    ``model.num_prefix_tokens`` (timm) first, then 0 .. :data:`MAX_PREFIX_TOKENS`."""
    if prefix_tokens is not None:
        return [check_prefix(prefix_tokens)]
    own = getattr(model, "num_prefix_tokens", None)
    own = [own] if isinstance(own, int) and not isinstance(own, bool) and own >= 0 else []
    return own + list(range(MAX_PREFIX_TOKENS + 1))


def is_token_count(n: int, tokens: TokenGrid) -> bool:
    """``n`` is the number of tokens on ``tokens``' grid, with up to :data:`MAX_PREFIX_TOKENS` prefix
    tokens."""
    grid = tokens.grid[0] * tokens.grid[1]
    return grid > 1 and 0 <= n - grid <= max(MAX_PREFIX_TOKENS, tokens.prefix)


@dataclass(frozen=True)
class Label:
    """Where a tensor on the token path comes from: ``node`` (an index of ``Trace.nodes``), times ``scale``
    (the scalar factors met since: a layer scale's mean, a constant; used by the signed rule)."""

    node: int
    scale: float = 1.0


@dataclass
class TraceNode:
    """One node of the graph: ``record`` (None for the input image), read from ``parents`` (node indices)
    whose tensors came with ``scales`` (signed factors) and ``prefixes`` (their prefix-token counts)."""

    index: int
    record: object
    parents: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    prefixes: tuple[int, ...] = ()
    tokens_out: TokenGrid | None = None


@dataclass
class Trace:
    """One pass read as a graph (see the module docstring).

    Attributes:
        nodes: in the order they happened; ``nodes[0]`` is the input image.
        unread: ``{module name: why}`` for the token mixing that was seen and not read (never silent).
        calls: ``{module name: how many times it ran}``.
        attention: every attention call seen, in order (the inspection views use it).
        image: ``(H, W)`` of the input.
        unread_at: ``{module name: k}``: its mixing was missed when ``nodes`` held ``k`` nodes, so it can
            reach node ``i`` only if ``k <= i`` (a map read before it does not depend on it).
    """

    nodes: list
    unread: OrderedDict
    calls: dict
    attention: list
    image: tuple
    unread_at: dict = field(default_factory=dict)


def _module_call_name(name: str, call: int, total: int) -> str:
    """``name`` for a module called once; ``name#k`` for its call k (0-based) when it ran more than once."""
    return name if total <= 1 else f"{name}#{call}"


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _is_convit_gpsa(module) -> bool:
    cls = type(module)
    return cls.__module__.startswith("timm.") and cls.__name__ == "GPSA"


def _is_timm_mixer_tokens(name: str, module, parent) -> bool:
    cls = type(parent) if parent is not None else None
    return cls is not None and cls.__module__.startswith("timm.") and cls.__name__ == "MixerBlock" and \
        name.endswith(".mlp_tokens")


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
              "divisor_override")
_MAXPOOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _bind(names, args, kwargs) -> dict:
    return dict(zip(names, args)) | dict(kwargs)


class Watcher(TorchFunctionMode):
    """The mode and module hooks of one traced pass (see the module docstring). ``enter`` / ``leave`` are
    the reader's module hooks; ``__torch_function__`` sees every torch call in between."""

    def __init__(self, model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None,
                 keep_values: bool = False):
        super().__init__()
        self.model = model
        self.image = tuple(int(s) for s in x.shape[-2:])
        self.batch = int(x.shape[0])
        self.candidates = prefix_candidates(model, prefix_tokens)
        self.keep_values = keep_values
        self.lookup = dict(model.named_modules())
        self.parents = {name: self.lookup[name.rsplit(".", 1)[0]] if "." in name else
                        (model if name else None)
                        for name in self.lookup}
        self.constants = WeakIdKeyDictionary()
        for t in (*model.parameters(), *model.buffers()):
            self.constants[t] = True
        self.labels = WeakIdKeyDictionary()
        self.probs = WeakIdKeyDictionary()  # softmax results waiting for their matmul with the values
        self.labels[x] = Label(0)
        self.nodes: list[TraceNode] = [TraceNode(0, None, tokens_out=TokenGrid(self.image))]
        self.unread: OrderedDict[str, str] = OrderedDict()
        self.calls: dict[str, int] = {}
        self.stack: list[tuple[str, nn.Module, int]] = []
        self.covering: tuple[str, nn.Module, int, tuple] | None = None
        self.attention: list[AttentionCall] = []
        self.node_calls: list[tuple[str, int]] = [("", 0)]
        self.pending: list[tuple[str, str]] = []  # softmaxes over tokens not (yet) used by a matmul
        self.unread_at: dict[str, int] = {}  # module -> how many nodes there were when its mixing was missed
        self._block_inputs: dict[str, torch.Tensor] = {}
        self.frames: list[dict] = []  # per running module call with keep_values: its arguments (a rerun)

    # ---- where we are ----------------------------------------------------------------------------
    def here(self) -> tuple[str, int]:
        """The innermost module running now and its call number."""
        if not self.stack:
            return "", 0
        name, _, call = self.stack[-1]
        return name, call

    def describe(self, name: str) -> str:
        module = self.lookup.get(name, self.model)
        return f"{name or '<model>'} ({type(module).__name__})"

    def miss(self, what: str) -> None:
        """Name one piece of token mixing that is not read, at the module running it."""
        name, _ = self.here()
        cls = type(self.lookup.get(name, self.model)).__name__
        self.unread.setdefault(name, f"{cls}: {what}")
        self.unread_at.setdefault(name, len(self.nodes))

    def add_node(self, record, parents, scales, prefixes, tokens_out) -> int:
        index = len(self.nodes)
        self.nodes.append(TraceNode(index, record, tuple(parents), tuple(scales), tuple(prefixes),
                                    tokens_out))
        self.node_calls.append(self.here())
        return index

    def layout(self, t: torch.Tensor) -> TokenGrid | None:
        label = self.labels.get(t)
        return None if label is None else self.nodes[label.node].tokens_out

    def token_prefix(self, t: torch.Tensor, tokens: TokenGrid) -> int:
        """The prefix tokens ``t`` holds: its token count minus the grid's, for a ``(B, n, C)`` tensor."""
        if t.dim() == 3:
            return max(0, int(t.shape[1]) - tokens.grid[0] * tokens.grid[1])
        return tokens.prefix if t.dim() != 4 else 0

    # ---- module hooks ----------------------------------------------------------------------------
    def enter(self, name: str, module: nn.Module, args, kwargs) -> None:
        call = self.calls.get(name, 0)
        self.calls[name] = call + 1
        self.stack.append((name, module, call))
        frame = {"args": args, "kwargs": kwargs, "counts": {}, "entries": []} if self.keep_values else {}
        self.frames.append(frame)
        if type(module).__name__ == "MixerBlock" and args and isinstance(args[0], torch.Tensor):
            self._block_inputs[name] = args[0]
        if self.covering is None and self._adapter(name, module) is not None:
            first = next(_tensors((args, kwargs)), None)
            self.covering = (name, module, call, first)

    def leave(self, name: str, module: nn.Module, args, kwargs, output) -> None:
        if self.stack and self.stack[-1][0] == name:
            self.stack.pop()
            frame = self.frames.pop()
            for entry in frame.get("entries", ()):
                entry.output = output
        if self.covering is not None and self.covering[0] == name:
            _, _, call, first = self.covering
            try:  # still covering: what the adapter computes is not the model's token mixing
                self._adapted(name, module, call, first, output)
            finally:
                self.covering = None

    def _adapter(self, name, module):
        if isinstance(module, AffinityMixer) or is_patch_merging(module) or _is_convit_gpsa(module):
            return module
        if _is_timm_mixer_tokens(name, module, self.parents.get(name)):
            return module
        return None

    def _adapted(self, name, module, call, x, output) -> None:
        """The node of a module read by its own view (the calls inside it are covered)."""
        label = self.labels.get(x) if isinstance(x, torch.Tensor) else None
        out = next(_tensors(output), None)
        if label is None or out is None:
            return
        parent = self.nodes[label.node].tokens_out
        self.stack.append((name, module, call))  # the node is named after this call
        try:
            record, tokens_in, tokens_out = self._adapter_record(name, module, x, parent)
        except _NoRead as err:
            self.miss(str(err))
            self.stack.pop()
            return
        node = self.add_node(record, [label.node], [label.scale], [tokens_in.prefix], tokens_out)
        self.stack.pop()
        for t in _tensors(output):
            self.labels[t] = Label(node)

    def _adapter_record(self, name, module, x, parent):
        from .families import _gpsa_view
        from .timm_mixer import inspect_timm_mixer_block

        here = self.call_name(name)
        if is_patch_merging(module):
            grid = (int(x.shape[1]), int(x.shape[2])) if x.dim() == 4 else parent.grid
            window = merging_window(module)
            return (WindowRecord(here, TokenGrid(grid), TokenGrid(window.out_grid(grid)), window,
                                 type(module).__name__), TokenGrid(grid), TokenGrid(window.out_grid(grid)))
        if isinstance(module, AffinityMixer):
            xi = x.detach()
            grid = tuple(int(s) for s in xi.shape[-2:])
            window = static_window(module)
            if window is not None:
                return WindowRecord(here, TokenGrid(grid), TokenGrid(grid), window, type(module).__name__), \
                    TokenGrid(grid), TokenGrid(grid)
            return AffinityRecord(here, TokenGrid(grid), type(module).__name__,
                                  partial(mixer_affinity, module, xi)), TokenGrid(grid), TokenGrid(grid)
        if _is_convit_gpsa(module):
            xi = x.detach()
            view = _gpsa_view(module, xi)
            read = view.affinity.detach
            return AffinityRecord(here, TokenGrid(view.grid), "ConViT GPSA", read), \
                TokenGrid(view.grid), TokenGrid(view.grid)
        # timm MixerBlock's token MLP: the block's view, read from the block's input
        block = self.parents[name]
        block_input = self._block_inputs.get(name.rsplit(".", 1)[0])
        if block_input is None:
            raise _NoRead("the MixerBlock's input was not seen")
        n = int(block_input.shape[1])
        found = prefix_and_grid(n, self.image, self.candidates)
        if found is None:
            raise _NoRead(f"its {n} tokens are no grid of the {self.image} input")
        prefix, grid = found
        view = inspect_timm_mixer_block(block, block_input.detach(), grid=grid, prefix_tokens=prefix)
        tokens = TokenGrid(grid, prefix)
        return AffinityRecord(here, tokens, "timm MixerBlock",
                              lambda: view.affinity[..., :view.affinity.shape[-2]].detach()), tokens, tokens

    def call_name(self, name: str) -> str:
        """Set after the pass: see :func:`trace` (the ``#k`` of a module called more than once)."""
        call = next((c for n, _, c in reversed(self.stack) if n == name), 0)
        return f"{name}\x00{call}"

    # ---- torch calls -----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.covering is not None:
            return out
        fname = getattr(func, "__name__", "")
        try:
            self.see(fname, args, kwargs, out)
        except _NoRead as err:
            self.miss(str(err))
        except Exception as err:  # noqa: BLE001  (the user's forward goes on; the failure is named)
            self.miss(f"{fname} could not be read ({type(err).__name__}: {err})")
        return out

    def see(self, fname, args, kwargs, out) -> None:
        inputs = [t for t in _tensors((args, kwargs))]
        labelled = [(t, self.labels[t]) for t in inputs if t in self.labels]
        outputs = [t for t in _tensors(out)]
        if not labelled:
            if inputs and all(t in self.constants for t in inputs):
                for t in outputs:
                    self.constants[t] = True
            if fname in PASS_PROBS or fname in ("to", "mul", "div"):
                self._pass_probs(inputs, outputs, fname)
            return
        if fname == "scaled_dot_product_attention":
            return self._sdpa(_bind(_SDPA_ARGS, args, kwargs), out)
        if fname == "multi_head_attention_forward":
            return self._mha(_bind(_MHA_ARGS, args, kwargs), out)
        if fname == "softmax" or fname == "_softmax":
            return self._softmax(args, kwargs, out, labelled)
        if fname in MATMULS:
            return self._matmul(fname, args, kwargs, out, labelled)
        if fname == "conv2d":
            return self._conv(_bind(_CONV_ARGS, args, kwargs), out, labelled)
        if fname in ("avg_pool2d", "max_pool2d", "max_pool2d_with_indices"):
            names = _POOL_ARGS if fname == "avg_pool2d" else _MAXPOOL_ARGS
            return self._pool(_bind(names, args, kwargs), out, labelled, fname)
        if fname in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            size = pair(_bind(("input", "output_size"), args, kwargs)["output_size"])
            if size == (1, 1):
                return  # a global pool: the grid ends here (what follows is no token path)
            raise _NoRead(f"an adaptive pooling to {size} (its windows are not read)")
        if fname in MOVES:
            if self._in_windowed_block():
                return self._same(labelled, outputs, fname, args)
            raise _NoRead(f"{MOVES[fname]} ({fname}): tokens moved in a way the reader does not follow")
        if fname in REDUCTIONS and self._over_all_tokens(args, kwargs):
            return  # a mean (or sum, max) over every token: the grid ends here
        if fname == "linear":
            self._linear_over_tokens(args, labelled)
            weight = _bind(("input", "weight", "bias"), args, kwargs)["weight"]
            if args[0] in self.labels:
                return self._channel_map(weight, self.labels[args[0]], out)
        if fname in ("__setitem__", "copy_", "index_put_", "index_copy_") and args and \
                isinstance(args[0], torch.Tensor) and args[0] not in self.labels:
            self.labels[args[0]] = labelled[0][1]  # a buffer filled with tokens carries them
            return
        nodes = {label.node for _, label in labelled}
        if len(nodes) > 1 and (fname in ADDS or fname in SUBS or fname in ("cat", "stack")):
            return self._join(fname, args, labelled, outputs)
        if len(nodes) > 1:
            names = ", ".join(self.nodes[n].record.name.split("\x00")[0] or "<input>" for n in sorted(nodes))
            raise _NoRead(f"{fname} combines tensors of different token paths ({names}) in a way the reader "
                          f"does not compose (only sums join paths)")
        return self._same(labelled, outputs, fname, args)

    def _same(self, labelled, outputs, fname, args) -> None:
        """A call that keeps the token path: the output carries its input's node; constant factors are
        multiplied into the scale (signed rule)."""
        label = labelled[0][1]
        scale = label.scale
        if fname in MULS or fname in DIVS or fname in ("neg", "__neg__"):
            other = [a for a in args if not (isinstance(a, torch.Tensor) and a in self.labels)]
            factor = 1.0
            for a in other:
                if isinstance(a, (int, float)) and not isinstance(a, bool):
                    factor *= float(a)
                elif isinstance(a, torch.Tensor) and a in self.constants and a.is_floating_point():
                    factor *= float(a.detach().double().mean())
                else:
                    factor = None
                    break
            if fname in ("neg", "__neg__"):
                factor = -1.0
            if factor is not None:
                if fname in DIVS:
                    scale = scale / factor if factor else scale
                else:
                    scale = scale * factor
        for t in outputs:
            self.labels[t] = Label(label.node, scale)
        self._pass_probs([t for t, _ in labelled], outputs, fname)

    def _pass_probs(self, inputs, outputs, fname) -> None:
        if fname not in PASS_PROBS and fname not in MULS and fname != "to":
            return
        src = next((t for t in inputs if t in self.probs), None)
        if src is None:
            return
        for t in outputs:
            if t.shape == src.shape:
                self.probs[t] = self.probs[src]

    def _in_windowed_block(self) -> bool:
        return find_ancestor(self.stack, lambda m: is_windowed(m) or is_maxvit_partition(m)) is not None

    def token_axes(self, t: torch.Tensor) -> set[int]:
        """The axes of ``t`` that run over its tokens (empty when it cannot be told): the grid's two axes of
        an image ``(B, C, H, W)`` or a channels-last ``(B, H, W, C)``; the token axis of a sequence
        ``(B, n, C)`` / ``(B, M, n, d)`` or of a transposed one ``(B, C, n)``."""
        tokens = self.layout(t)
        if tokens is None or t.dim() < 2:
            return set()
        grid, shape = tuple(tokens.grid), tuple(int(s) for s in t.shape)
        if t.dim() == 4 and grid[0] * grid[1] > 1:
            first, last = shape[1:3] == grid, shape[2:4] == grid
            if first != last:
                return {1, 2} if first else {2, 3}
        hits = {i for i in range(1, t.dim()) if is_token_count(shape[i], tokens)}
        return hits if len(hits) == 1 else set()

    def _over_all_tokens(self, args, kwargs) -> bool:
        x = args[0]
        call = _bind(("input", "dim"), args, kwargs)
        dims = call.get("dim")
        axes = self.token_axes(x) if isinstance(x, torch.Tensor) else set()
        if dims is None or not axes:
            return False
        dims = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
        return axes <= dims

    def _linear_over_tokens(self, args, labelled) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is not None and x.dim() - 1 in self.token_axes(x):
            raise _NoRead(f"a linear map over the token axis ({int(x.shape[-1])} tokens: a token MLP)")

    # ---- attention -------------------------------------------------------------------------------
    def _attention_layout(self, a: torch.Tensor, v_label: Label):
        """``(tokens, windows)`` of an attention ``a (Bq, M, n, n)``: the grid and prefix its tokens are on,
        and the window layout when its batch holds the windows of every image."""
        bq, n = int(a.shape[0]), int(a.shape[-1])
        parent = self.nodes[v_label.node].tokens_out
        if bq == self.batch:
            found = prefix_and_grid(n, self.image, self.candidates)
            if found is None:
                raise _NoRead(f"an attention over {n} tokens that are no grid of the {self.image[0]}x"
                              f"{self.image[1]} input (after up to {MAX_PREFIX_TOKENS} prefix tokens)")
            prefix, grid = found
            return TokenGrid(grid, prefix), None
        grid = parent.grid
        if bq % self.batch or parent.prefix:
            raise _NoRead(f"an attention over {bq} sequences of {n} tokens for {self.batch} images: not one "
                          f"grid, and no windowed block declares its layout")
        count = bq // self.batch
        found = find_ancestor(self.stack, is_windowed)
        maxvit = find_ancestor(self.stack, is_maxvit_partition)
        if found is not None:
            window, shift = window_layout(found[1], grid)
            if grid[0] % window[0] or grid[1] % window[1]:
                raise _NoRead(f"the {grid[0]}x{grid[1]} grid is not a whole number of "
                              f"{window[0]}x{window[1]} "
                              f"windows (padded windows are not read)")
            places = window_places(grid, window, shift)
        elif maxvit is not None:
            block = maxvit[1]
            p = pair(plain_int(block.p))
            if grid[0] % p[0] or grid[1] % p[1]:
                raise _NoRead(f"the {grid} grid is not a whole number of {p} partitions")
            if block.partition_type == "window":  # p x p windows
                places = window_places(grid, p, (0, 0))
            else:  # a p x p grid of windows, each of g x g tokens spread over the whole grid
                places = grid_places(grid, pair(plain_int(block.g)))
        else:
            raise _NoRead(f"an attention over {bq} windows of {n} tokens for {self.batch} images, and no "
                          f"block above it declares window_size / shift_size (its layout on the grid is not "
                          f"known)")
        if count * n != grid[0] * grid[1]:
            raise _NoRead(f"{count} windows of {n} tokens do not cover the {grid} grid")
        return TokenGrid(grid), Windows(places[0], places[1], count)

    def _attention_node(self, a: torch.Tensor, v: torch.Tensor, out, function: str) -> None:
        v_label = self.labels.get(v)
        name, call = self.here()
        if v_label is None:  # values from no token path (a constant): no context moves
            return
        entry = AttentionCall(name, a.detach(), v.detach() if self.keep_values else None, None, function)
        frame = self.frames[-1] if self.keep_values and self.frames and self.covering is None else None
        if frame is not None:
            entry.call = (self.lookup.get(name, self.model), frame["args"], frame["kwargs"])
            entry.index = frame["counts"].get(function, 0)  # counted even when it is not read below
            entry.out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            frame["counts"][function] = entry.index + 1
        # tokens on no known grid: _NoRead, and the call is named in ``unread``, not kept as an attention
        tokens, windows = self._attention_layout(a, v_label)
        entry.windows = windows
        entry.tokens = tokens
        if frame is not None:
            frame["entries"].append(entry)
        self.attention.append(entry)
        detached = a.detach()
        read = (lambda: windows.on_grid(detached)) if windows is not None else (lambda: detached)
        record = AffinityRecord(self.call_name(name), tokens,
                                type(self.lookup.get(name, self.model)).__name__,
                                read, None if windows is None else (windows, detached))
        entry.node = self.add_node(record, [v_label.node], [v_label.scale], [tokens.prefix], tokens)
        for t in _tensors(out):
            self.labels[t] = Label(entry.node)

    def _sdpa(self, call: dict, out) -> None:
        q, k, v = call["query"], call["key"], call["value"]
        if q.shape[-2] != k.shape[-2]:
            raise _NoRead("a cross-attention (queries and keys of different lengths)")
        a = softmax_of(q, k, call.get("scale"), call.get("attn_mask"), bool(call.get("is_causal")),
                       bool(call.get("enable_gqa")))
        if a.dim() == 3:
            a = a[:, None]
        self._attention_node(a, v, out, "scaled_dot_product_attention")

    def _mha(self, call: dict, out) -> None:
        query, key, value = call["query"], call["key"], call["value"]
        if not (query is key is value) and not (torch.equal(query, key) and torch.equal(key, value)):
            raise _NoRead("a cross-attention (query, key and value are not one tensor)")
        a, v, extra = mha_affinity(call)
        a = a[..., : a.shape[-2]] if extra else a
        value_label = self.labels.get(value)
        if value_label is None:
            return
        # the values of the tokens: v without the extra keys; batch-first order (B, M, n, d)
        self._attention_node(a, value, out, "multi_head_attention_forward") if extra == 0 else \
            self._attention_node(a, value, out, "multi_head_attention_forward (extra keys dropped)")

    def _softmax(self, args, kwargs, out, labelled) -> None:
        call = _bind(("input", "dim"), args, kwargs)
        x, dim = call["input"], call.get("dim")
        if dim is None or x.dim() < 2:
            return self._same(labelled, [out], "softmax", args)
        dim = dim % x.dim()
        if dim == x.dim() - 1 and x.shape[-1] == x.shape[-2]:
            self.probs[out] = (self.here(), x)
            self.pending.append(self.here())
            self.unread_at.setdefault(self.here()[0], len(self.nodes))  # if its result never meets values
            return  # scores over tokens: they reach the token path only through the matmul with the values
        tokens = self.layout(x)
        if tokens is not None and x.shape[dim] == tokens.tokens and tokens.tokens > 1:
            raise _NoRead(f"a softmax over the {tokens.tokens} tokens whose result is not an attention's A "
                          f"(no square scores)")
        self._same(labelled, [out], "softmax", args)

    def _matmul(self, fname, args, kwargs, out, labelled) -> None:
        if fname == "einsum":
            return self._einsum(args, out, labelled)
        a, b = args[0], args[1]
        if isinstance(a, torch.Tensor) and a in self.probs and isinstance(b, torch.Tensor):
            if b not in self.labels:
                return  # values from no token path
            where, _ = self.probs[a]
            if where in self.pending:
                self.pending.remove(where)
            # (Bq, M, n, n): heads on the third axis from the end; leading axes (MaxViT's windows) folded
            p = a.reshape(-1, *a.shape[-3:]) if a.dim() >= 4 else a[:, None]
            v = b.reshape(-1, *b.shape[-3:]) if b.dim() >= 4 else b[:, None]
            self.labels[v] = self.labels[b]
            return self._attention_node(p, v, out, "softmax @ values")
        self._token_matmul(a, b, labelled)
        return self._same(labelled, [out], fname, args) if len({lb.node for _, lb in labelled}) == 1 else \
            self._join_or_miss(fname, labelled, [out])

    def _einsum(self, args, out, labelled) -> None:
        equation, operands = args[0], args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
        probs = [t for t in operands if isinstance(t, torch.Tensor) and t in self.probs]
        if len(operands) == 2 and probs and probs[0] is operands[0]:
            ins, result = equation.replace(" ", "").split("->")
            left, right = ins.split(",")
            if left[-1] == right[-2] and result[-2] == left[-2] and result[-1] == right[-1]:
                return self._matmul("matmul", operands, {}, out, labelled)
        tokens = [self.layout(t) for t in operands if isinstance(t, torch.Tensor) and t in self.labels]
        ins = equation.replace(" ", "").split("->")[0].split(",")
        if len(ins) == 2 and all(isinstance(t, torch.Tensor) for t in operands):
            summed = (set(ins[0]) & set(ins[1])) - set(equation.split("->")[-1] if "->" in equation else "")
            sizes = {ch: int(operands[0].shape[i]) for i, ch in enumerate(ins[0]) if ch != "."}
            layout = tokens[0] if tokens else None
            out_square = out.dim() >= 2 and out.shape[-1] == out.shape[-2]
            hits = [sizes[ch] for ch in summed if ch in sizes and layout is not None and
                    is_token_count(sizes[ch], layout)]
            if hits and not out_square and not any(t in self.constants for t in operands):
                raise _NoRead(f"an einsum '{equation}' that sums over the {hits[0]} tokens with no softmax "
                              f"(not "
                              f"an attention the reader reads: a linear attention?)")
        return self._same(labelled, [out], "einsum", args)

    def _token_matmul(self, a, b, labelled) -> None:
        """A product that sums over the tokens and is not softmax @ values (a linear attention's ``K^T V``, a
        learned matrix over a grid axis)."""
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
            return
        tokens = self.layout(a) or self.layout(b)
        square = int(a.shape[-2]) == int(b.shape[-1])
        if square and tokens is not None and is_token_count(int(a.shape[-2]), tokens):
            return  # (n, n) over the tokens: q k^T, scores that a softmax turns into an attention
        over = (a in self.labels and a.dim() - 1 in self.token_axes(a)) or \
            (b in self.labels and b.dim() - 2 in self.token_axes(b))
        if over:
            raise _NoRead(f"a matmul that sums over the {int(a.shape[-1])} tokens with no softmax before it "
                          f"(not "
                          f"an attention the reader reads: a linear attention, a learned token matrix?)")

    def _join_or_miss(self, fname, labelled, outputs):
        raise _NoRead(f"{fname} of tensors from different token paths (not a sum): not composed")

    # ---- windows ---------------------------------------------------------------------------------
    def _conv(self, call: dict, out, labelled) -> None:
        x, weight = call["input"], call["weight"]
        label = self.labels.get(x)
        if label is None:
            return
        kernel = tuple(weight.shape[-2:])
        stride = pair(call.get("stride", 1))
        if kernel == (1, 1) and stride == (1, 1):  # a per-token channel map
            return self._channel_map(weight, label, out)
        padding = call.get("padding", 0)
        dilation = pair(call.get("dilation", 1))
        if padding == "same":
            padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        elif padding == "valid":
            padding = (0, 0)
        window = ConvWindow(weight.detach(), stride, pair(padding), dilation)
        self._window_node(x, window, out, label, "Conv2d")

    def _channel_map(self, weight, label, out) -> None:
        """A per-token channel map (a linear layer, a 1x1 conv): channel mixing is not seen by the rules, so
        it keeps the path; one channel to one channel is a plain factor, which the signed rule carries (it is
        then exact on single-channel networks)."""
        factor = float(weight.detach().double().reshape(-1)[0]) if weight.numel() == 1 else 1.0
        for t in _tensors(out):
            self.labels[t] = Label(label.node, label.scale * factor)

    def _pool(self, call: dict, out, labelled, fname) -> None:
        x = call["input"]
        label = self.labels.get(x)
        if call.get("ceil_mode"):
            raise _NoRead(f"{fname} with ceil_mode=True (its last windows are not read)")
        kernel = pair(call["kernel_size"])
        stride = pair(call.get("stride") or call["kernel_size"])
        padding = pair(call.get("padding", 0))
        weight = torch.full((1, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=x.dtype, device=x.device)
        window = ConvWindow(weight, stride, padding, pair(call.get("dilation", 1) or 1))
        if fname == "avg_pool2d" and stride == (1, 1) and padding != (0, 0) and (
                call.get("count_include_pad") is False or call.get("divisor_override")):
            return self._exact_pool(x, window, call, out, label)  # border rows divide by their own count
        self._window_node(x, window, out, label, "AvgPool2d" if fname == "avg_pool2d" else "MaxPool2d")

    def _exact_pool(self, x, window, call, out, label) -> None:
        """A stride-1 average pool whose border windows divide by what they hold: its exact ``(N, N)``."""
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        ones = window.matrix(torch.ones(window.weight.shape[-2:], dtype=x.dtype, device=x.device), grid)
        divisor = call.get("divisor_override")
        a = ones / divisor if divisor else ones / ones.sum(-1, keepdim=True)
        name, _ = self.here()
        record = AffinityRecord(self.call_name(name), TokenGrid(grid),
                                type(self.lookup.get(name, self.model)).__name__, lambda: a[None, None])
        node = self.add_node(record, [label.node], [label.scale], [0], TokenGrid(grid))
        self.labels[out] = Label(node)

    def _window_node(self, x, window, out, label, kind) -> None:
        if x.dim() != 4:
            raise _NoRead(f"a {kind} on a {tuple(x.shape)} tensor (not (B, C, H, W))")
        parent = self.nodes[label.node].tokens_out
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        if parent is not None and grid != tuple(parent.grid):
            raise _NoRead(f"a {kind} on a {grid} grid but its tokens came on {tuple(parent.grid)} (a "
                          f"padding or "
                          f"crop between them is not read)")
        name, _ = self.here()
        module = self.lookup.get(name, self.model)
        record = WindowRecord(self.call_name(name), TokenGrid(grid), TokenGrid(window.out_grid(grid)), window,
                              type(module).__name__)
        node = self.add_node(record, [label.node], [label.scale], [parent.prefix if parent else 0],
                             record.tokens_out)
        outputs = out if isinstance(out, tuple) else (out,)
        self.labels[outputs[0]] = Label(node)

    # ---- joins -----------------------------------------------------------------------------------
    def _join(self, fname, args, labelled, outputs) -> None:
        """Tensors of different token paths summed: a :class:`JoinRecord` (``x + f(x)``, a shortcut beside
        its branch). Subtraction gives the second one the factor -1 (signed rule)."""
        sign = -1.0 if fname in SUBS else 1.0
        firsts = {}
        for i, (t, label) in enumerate(labelled):
            firsts.setdefault(label.node, (t, label, i))
        layouts = []
        for t, label, _ in firsts.values():
            tokens = self.nodes[label.node].tokens_out
            layouts.append((tuple(tokens.grid), self.token_prefix(t, tokens)))
        grids = {g for g, _ in layouts}
        if len(grids) > 1:
            raise _NoRead(f"{fname} of token paths on different grids {sorted(grids)}: not composed")
        prefixes = {p for _, p in layouts}
        if len(prefixes) > 1:
            raise _NoRead(f"{fname} of token paths with different prefix tokens {sorted(prefixes)}")
        parents, scales = [], []
        for _, label, i in firsts.values():
            parents.append(label.node)
            scales.append(label.scale * (sign if (fname in SUBS and i > 0) else 1.0))
        name, _ = self.here()
        tokens = TokenGrid(layouts[0][0], layouts[0][1])
        record = JoinRecord(self.call_name(name), tokens, type(self.lookup.get(name, self.model)).__name__,
                            tuple(scales))
        node = self.add_node(record, parents, scales, [tokens.prefix] * len(parents), tokens)
        for t in outputs:
            self.labels[t] = Label(node)


class _NoRead(Exception):
    """Token mixing that is seen and not read (the message says what and why)."""


def trace(model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None, keep_values: bool = False,
          guard: bool = True) -> Trace:
    """Run ``model(x)`` once and read it as a graph of token maps (see the module docstring).

    The model is left as it was (the one reader's guard: modes, buffers, ``requires_grad``, the RNG; the
    hooks are removed and the mode exits even when the forward fails). ``keep_values`` keeps each
    attention call's ``V`` (``inspect_model`` rebuilds outputs from it)."""
    from .reader import forward_pass

    watcher = Watcher(model, x, prefix_tokens, keep_values)
    with torch.no_grad():
        forward_pass(model, x, watcher=watcher, guard=guard)
    for entry in watcher.pending:  # a softmax over square scores whose result met no values
        name = entry[0]
        cls = type(watcher.lookup.get(name, model)).__name__
        watcher.unread.setdefault(name, f"{cls}: a softmax over square scores whose result did not multiply "
                                        f"the values in a matmul (its use is not read)")
    result = Trace(watcher.nodes, watcher.unread, watcher.calls, watcher.attention, watcher.image,
                   {name: watcher.unread_at.get(name, 0) for name in watcher.unread})
    for node in result.nodes[1:]:
        name, call = node.record.name.split("\x00")
        node.record.name = _module_call_name(name, int(call), watcher.calls.get(name, 1))
        if not node.record.name:
            node.record.name = "<model>"
    return result


__all__ = ["AttentionCall", "Label", "MAX_PREFIX_TOKENS", "Trace", "TraceNode", "Watcher", "Windows",
           "prefix_and_grid", "prefix_candidates", "softmax_of", "tiling_grid", "trace", "window_layout"]
