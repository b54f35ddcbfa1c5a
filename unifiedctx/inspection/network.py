"""``inspect_model(model, x)``: the affinity view of every layer of any network, in forward order.

One forward pass ``model(x)`` runs with temporary hooks on every module (always removed, even when
the forward fails). Each module that a family of :mod:`unifiedctx.inspection.families` reads gets an
:class:`AffinityView` built from the input it really received in that pass, with its grid (inferred
from the image size for token layers) and its prefix tokens (class / distillation tokens), so that::

    view.project(view.affinity @ view.values) == that module's own output

Modules inside a viewed module are covered by its view. Every other module that ran and has no view
(a strided conv, a norm, a per-token linear map, ...) is listed in ``result.skipped`` with the reason.

Nothing of the model changes: its train/eval mode stays as it is (use ``eval()`` for exact rebuilds:
dropout would differ between the pass and the view), its buffers (BatchNorm statistics) are put back,
and the global RNG state is restored.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .families import FAMILIES, Family, NoView, family_of
from .reader import check_door, forward_pass, select_layers
from .trace import MAX_PREFIX_TOKENS, prefix_candidates, tiling_grid
from .trace import prefix_and_grid as _prefix_and_grid
from .view import AffinityView, pair


class NetworkInspection(OrderedDict):
    """``{module name: AffinityView}`` in forward order, plus what could not be viewed.

    Attributes:
        skipped: ``{module name: reason}`` for the modules that ran without a view, in forward order.
        outputs: ``{module name: the output tensor the view rebuilds}``, from the same pass.
        image_size: ``(H, W)`` of the input.
        calls: ``{module name: how many times it ran}`` in that pass (a view is of a module's first call;
            ``layer_affinities`` reads every call of a module that ran more than once).
    """

    def __init__(self, image_size):
        super().__init__()
        self.skipped: OrderedDict[str, str] = OrderedDict()
        self.outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.image_size = image_size
        self.calls: dict[str, int] = {}

    def rebuild_errors(self) -> OrderedDict[str, float]:
        """``{name: ||project(A @ V) - output|| / ||output||}`` for every view (Frobenius norms)."""
        errors = OrderedDict()
        with torch.no_grad():
            for name, view in self.items():
                expected = self.outputs[name]
                got = view.output()
                got = got[0] if isinstance(got, tuple) else got
                scale = expected.norm().item()
                diff = (got - expected).norm().item()
                errors[name] = diff / scale if scale > 0 else diff
        return errors

    def affinities(self) -> OrderedDict[str, torch.Tensor]:
        """``{name: view.grid_affinity()}``: the token-to-token blocks ``(B|1, M, N, N)`` on each grid."""
        return OrderedDict((name, view.grid_affinity()) for name, view in self.items())

    def distances(self) -> OrderedDict[str, torch.Tensor]:
        """``{name: (M,)}`` mean affinity distance of every head, in input pixels
        (:func:`unifiedctx.viz.distance.affinity_distance` with each view's grid and pixel stride)."""
        from .distance import affinity_distance

        return OrderedDict((name, affinity_distance(v.grid_affinity(), v.grid, v.pixel_stride or 1.0))
                           for name, v in self.items() if v.grid is not None)


def _skip_reason(module: nn.Module) -> str:
    """Why a module that ran has no view (for the modules no family reads)."""
    if isinstance(module, nn.Linear):
        return "a per-token linear map (no token mixing)"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return "a normalisation (per-token or per-channel statistics, not a weighted sum of tokens)"
    if isinstance(module, (nn.Dropout, nn.Identity)) or type(module).__name__ in ("DropPath", "Identity"):
        return "identity / dropout (in eval mode)"
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool1d,
                           nn.AdaptiveMaxPool1d)):
        return (f"{type(module).__name__}: pools the grid to {module.output_size} (a summary of all tokens, "
                "as a classifier's pooling or a squeeze-and-excitation gate's input; no token-to-token map)")
    if not any(True for _ in module.parameters(recurse=False)) and not list(module.children()):
        return f"{type(module).__name__}: a per-element or reshaping layer (no token mixing)"
    return f"{type(module).__name__}: no affinity view (not a type inspect supports)"


def _token_context(family: Family, module, x, image_size, prefix_candidates):
    """``(grid, prefix_tokens, n_tokens)`` of a token layer's input, or NoView."""
    if family.layout == "seq_first":
        batched = x.dim() == 3
        n = x.shape[1] if (batched and module.batch_first) else x.shape[0]
    else:
        n = x.shape[1]
    found = _prefix_and_grid(n, image_size, prefix_candidates)
    if found is None:
        raise NoView(f"its {n} tokens are no grid that tiles the {image_size[0]}x{image_size[1]} input "
                     f"(after up to {MAX_PREFIX_TOKENS} prefix tokens); pass prefix_tokens=")
    prefix, grid = found
    return grid, prefix, n


def view_of_call(family: Family, module, call, image_size, batch, prefix_candidates, max_tokens):
    x, extra = family.call_input(module, call)
    if not isinstance(x, torch.Tensor):
        raise NoView(f"its input is a {type(x).__name__}, not a tensor")
    grid, prefix = None, 0
    if family.layout == "image":
        if x.dim() != 4:
            raise NoView(f"its input has shape {tuple(x.shape)}, not (B, C, H, W)")
        n = x.shape[2] * x.shape[3]
    elif family.layout == "own_grid":
        n = x.shape[1] if x.dim() == 3 else 0
    else:
        grid, prefix, n = _token_context(family, module, x, image_size, prefix_candidates)
    if max_tokens is not None and n > max_tokens:
        raise NoView(f"{n} tokens > max_tokens={max_tokens} (its N x N affinity would be too big)")
    try:
        view = family.inspect(module, x, grid=grid, prefix_tokens=prefix, **extra)
    except ValueError as err:  # a supported type with settings that have no view (stride 2, ...)
        raise NoView(str(err)) from None
    if family.layout == "image":
        whole = (x.shape[2], x.shape[3])
    elif family.layout == "own_grid":  # Swin: B * nW windows of n tokens; GPSA: one square grid
        whole = tiling_grid(x.shape[0] // batch * n, image_size) if x.shape[0] % batch == 0 else None
    else:
        whole = grid
    view.pixel_stride = (image_size[0] / whole[0], image_size[1] / whole[1]) if whole else None
    return view


@torch.no_grad()
def inspect_model(model: nn.Module, x: torch.Tensor, layers=None, max_tokens: int | None = None,
                  prefix_tokens: int | None = None) -> NetworkInspection:
    """The affinity view of every layer of ``model`` that has one, for one forward pass ``model(x)``.

    Args:
        model: any ``nn.Module`` (unifiedctx's, timm's, plain PyTorch); ``eval()`` it first for views
            that rebuild its outputs exactly (its mode is not changed here).
        x: the model's input, an image batch ``(B, C, H, W)``.
        layers: which modules to view: ``None`` (all), module names or ``fnmatch`` patterns
            (``"blocks.*.attn"``), or a callable ``(name, module) -> bool``.
        max_tokens: layers whose input has more tokens are skipped (their dense N x N affinity would
            not fit: a depthwise conv on 56 x 56 tokens with 96 channels is 3.8 GB in float32).
        prefix_tokens: the class / distillation tokens in front of every token sequence; default:
            ``model.num_prefix_tokens`` (timm) if it makes the rest a grid, else the smallest count
            that does.

    Returns:
        a :class:`NetworkInspection`: ``{module name: AffinityView}`` in the order the modules were
        called, with ``.skipped`` (``{name: reason}``), ``.outputs`` and ``.rebuild_errors()``.

    Raises:
        TypeError / ValueError: ``model`` is not a module, ``x`` not an image batch, a bad option.
    """
    check_door(model, x, max_tokens=max_tokens, prefix_tokens=prefix_tokens)
    select = select_layers(layers)
    image_size = pair(tuple(x.shape[-2:]))
    candidates = prefix_candidates(model, prefix_tokens)
    result = NetworkInspection(image_size)
    lookup = dict(model.named_modules())
    families = {name: family_of(module) for name, module in lookup.items()}
    seen = forward_pass(model, x, lambda name, module: families[name] is not None and select(name, module))
    order, calls = seen.order, seen.calls
    result.calls = dict(calls)
    captured = {name: (call, seen.outputs[name])
                for name, call in seen.inputs.items() if name in seen.outputs}
    # views are built after the pass, outermost first, so nothing inside a viewed module is built
    viewed: list[str] = []
    for name in order:
        if any(v == "" or name.startswith(v + ".") for v in viewed):
            continue  # inside a viewed module: its view covers it
        module = lookup[name]
        if name in captured:
            call, output = captured.pop(name)
            family = families[name]
            try:
                view = view_of_call(family, module, call, image_size, x.shape[0], candidates, max_tokens)
            except NoView as err:
                result.skipped[name] = str(err)
                continue
            if calls[name] > 1:
                view.notes["calls"] = f"called {calls[name]} times; the view is of the first call"
            viewed.append(name)
            result[name] = view
            result.outputs[name] = family.output(output)
        elif not list(module.children()) and select(name, module):
            result.skipped[name] = _skip_reason(module)
    _read_at_the_call(model, x, result, viewed, select, max_tokens, prefix_tokens, lookup)
    return result


def _read_at_the_call(model, x, result, viewed, select, max_tokens, prefix_tokens, lookup) -> None:
    """Attention no family reads, read where it happens (the one reader's trace: SDPA or softmax @ values,
    with its scale, mask and position bias), and every token mixing the trace could not read named in
    ``skipped``: ``inspect_model`` is never silent about a network's attention."""
    from .trace import trace

    found = trace(model, x, prefix_tokens, keep_values=True)
    for name, why in found.unread.items():
        if select(name, lookup.get(name, model)):
            result.skipped[name] = f"token mixing not read: {why}"
    several = set()  # modules with more than one attention call in one module call: no single view
    for entry in found.attention:
        name = entry.module
        if entry.call is None or entry.values is None or name in several or \
                any(v == "" or name.startswith(v + ".") for v in viewed) or \
                not select(name, lookup.get(name, model)):
            continue
        if entry.index > 0:
            several.add(name)
            result.pop(name, None)
            result.skipped[name] = "more than one attention call in one module call: no single view"
            continue
        if name in result:
            continue  # a later call of a module that ran several times (the view is of its first call)
        n = entry.affinity.shape[-1]
        if max_tokens is not None and n > max_tokens:
            result.skipped[name] = f"{n} tokens > max_tokens={max_tokens} (its N x N affinity: too big)"
            continue
        view = attention_view(entry, x, type(lookup.get(name, model)).__name__)
        if result.calls.get(name, 1) > 1:
            view.notes["calls"] = f"called {result.calls[name]} times; the view is of the first call"
        result[name] = view
        output = entry.output
        result.outputs[name] = output[0] if isinstance(output, tuple) else output
        result.skipped.pop(name, None)


def attention_view(entry, x: torch.Tensor, module_type: str) -> AffinityView:
    """The view of one attention call read by the trace (an ``AttentionCall`` kept with its values): its
    ``A`` on its tokens, rebuilt by rerunning the module with the attention's result replaced by ``A @ V``;
    a windowed attention's view keeps its ``(B * nW, M, n, n)`` windows and their layout (``notes``)."""
    tokens, windowed = entry.tokens, entry.windows is not None
    view = AffinityView(entry.values, entry.affinity, entry.substituted, None if windowed else tokens.grid,
                        "dynamic", int(entry.affinity.shape[1]), module_type,
                        0 if windowed else tokens.prefix)
    view.pixel_stride = (x.shape[-2] / tokens.grid[0], x.shape[-1] / tokens.grid[1])
    view.notes["read at"] = entry.function
    if windowed:
        view.notes["windows"] = "the batch axis holds B * nW windows; laid out on the grid by the block"
        view.notes["layout"] = entry.windows
    return view


__all__ = ["FAMILIES", "NetworkInspection", "attention_view", "inspect_model", "tiling_grid"]
