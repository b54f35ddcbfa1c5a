"""The layer records of a whole network, in forward order: what rollout and the depth view compose.

:func:`read_records` runs the model once through the one reader
(:func:`~unifiedctx.inspection.reader.forward_pass`) and turns what ran into typed records
(:mod:`unifiedctx.inspection.records`):

* every module that a family of :mod:`~unifiedctx.inspection.families` views (a unifiedctx mixer,
  ``nn.MultiheadAttention``, timm's attention, Mixer, Pooling, Swin, ConViT layers) gives an
  :class:`AffinityRecord` on its own token grid, with its prefix (class / distillation) tokens;
* every convolution that mixes tokens (``nn.Conv2d`` but 1x1 stride 1), every strided pooling and
  Swin's ``PatchMerging`` gives a :class:`WindowRecord` (its window, from the weights);
* every block that describes its residual branches (:func:`residuals_of`: a module with a
  ``residuals()`` method, as unifiedctx's ``Block``, or one of timm's blocks in :data:`TIMM_BLOCKS`)
  groups the records of each branch into a :class:`ResidualRecord` with its layer scale and its
  shortcut.

Everything else is token-wise for context (norms, activations, per-token linear maps, channel MLPs)
and gives no record. Modules with parameters of a type nothing here reads are listed in
``skipped`` with the reason, so that nothing is passed over silently.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..mixers.base import AffinityMixer
from .families import NoView, family_of
from .network import prefix_candidates, view_of_call
from .reader import forward_pass, untouched
from .records import AffinityRecord, ConvWindow, Residual, ResidualRecord, TokenGrid, WindowRecord
from .view import pair

#: Module types that are token-wise for context: they give no record and no note.
TOKENWISE = (nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Identity,
             nn.Flatten, nn.Embedding)


def _gamma(module) -> torch.Tensor | None:
    """A layer scale's per-channel factors (timm ``LayerScale.gamma``, MetaFormer ``Scale.scale``,
    unifiedctx ``LayerScale.gamma``), or None for an identity."""
    if module is None or isinstance(module, nn.Identity):
        return None
    if isinstance(module, torch.Tensor):
        return module
    for attr in ("gamma", "scale"):
        value = getattr(module, attr, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


def swin_on_grid(block, affinity: torch.Tensor, grid) -> torch.Tensor:
    """Swin's window affinities ``(B * nW, M, n, n)`` laid out on the block's whole grid ``(B, M, N, N)``.

    A token at ``(y, x)`` sits, after the cyclic shift by ``(sy, sx)``, at ``y' = (y - sy) mod H``,
    ``x' = (x - sx) mod W``, in window ``(y' // wh, x' // ww)`` at place ``(y' mod wh, x' mod ww)``;
    ``A[i, j]`` is the window's entry for the two places when i and j share a window, else 0.
    """
    (h, w), (wh, ww), (sy, sx) = tuple(grid), tuple(block.window_size), tuple(block.shift_size)
    if h % wh or w % ww:
        raise NoView(f"the {h}x{w} grid is not a whole number of {wh}x{ww} windows (padded windows "
                     f"are not read)")
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ((ys - sy) % h).reshape(-1), ((xs - sx) % w).reshape(-1)
    window = (ys // wh) * (w // ww) + xs // ww
    place = (ys % wh) * ww + xs % ww
    per_image = rearrange(affinity, "(b nw) m i j -> b nw m i j", nw=(h // wh) * (w // ww))
    full = per_image[:, window[:, None], :, place[:, None], place[None, :]]  # (N, N, B, M)
    same = (window[:, None] == window[None, :]).to(affinity.dtype)
    return rearrange(full * same[:, :, None, None], "i j b m -> b m i j")


def _resnet(block) -> list[Residual]:
    return [Residual("", None, "downsample" if block.downsample is not None else None)]


#: timm's blocks: ``(module path, class name) -> block -> its residual branches``.
TIMM_BLOCKS = {
    ("timm.models.vision_transformer", "Block"):
        lambda b: [Residual("attn", _gamma(b.ls1)), Residual("mlp", _gamma(b.ls2))],
    ("timm.models.mlp_mixer", "MixerBlock"): lambda b: [Residual("")],
    ("timm.models.metaformer", "MetaFormerBlock"):
        lambda b: [Residual("token_mixer", _gamma(b.layer_scale1)), Residual("mlp", _gamma(b.layer_scale2))],
    ("timm.models.convnext", "ConvNeXtBlock"): lambda b: [Residual("", _gamma(b.gamma), "shortcut")],
    ("timm.models.resnet", "BasicBlock"): _resnet,
    ("timm.models.resnet", "Bottleneck"): _resnet,
    ("timm.models.swin_transformer", "SwinTransformerBlock"):
        lambda b: [Residual("attn", None, None, partial(swin_on_grid, b)), Residual("mlp")],
    ("timm.models.convit", "Block"): lambda b: [Residual("attn"), Residual("mlp")],
}


def residuals_of(module: nn.Module) -> list[Residual] | None:
    """The residual branches a block describes: its own ``residuals()`` (unifiedctx's ``Block``, or
    any module that defines it), or timm's blocks by exact type; None for anything else."""
    own = getattr(module, "residuals", None)
    if callable(own):
        return list(own())
    cls = type(module)
    describe = TIMM_BLOCKS.get((cls.__module__, cls.__name__))
    return None if describe is None else describe(module)


def _is_patch_merging(module) -> bool:
    cls = type(module)
    return cls.__module__ == "timm.models.swin_transformer" and cls.__name__ == "PatchMerging"


def _conv_window(conv: nn.Conv2d, grid) -> ConvWindow:
    if conv.padding_mode != "zeros":
        raise NoView(f"padding_mode={conv.padding_mode!r}: rollout reads zero-padded convolutions only")
    kernel, dilation = pair(conv.kernel_size), pair(conv.dilation)
    if conv.padding == "valid":
        padding = (0, 0)
    elif conv.padding == "same":
        padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    else:
        padding = pair(conv.padding)
    return ConvWindow(conv.weight.detach(), pair(conv.stride), padding, dilation)


def _pool_window(pool, channels_dtype) -> ConvWindow:
    kernel = pair(pool.kernel_size)
    stride = pair(pool.stride if pool.stride is not None else pool.kernel_size)
    dilation = pair(getattr(pool, "dilation", 1))
    if getattr(pool, "ceil_mode", False):
        raise NoView("ceil_mode=True: the window's grid is not read")
    weight = torch.full((1, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), dtype=channels_dtype)
    return ConvWindow(weight, stride, pair(pool.padding), dilation)


def _merging_window(module) -> ConvWindow:
    """timm ``PatchMerging``: a 2x2 stride-2 window; the reduction's weight over the four places
    (concatenated in the order (dx, dy), as timm's reshape does) as its kernel."""
    weight = module.reduction.weight.detach()  # (out, 4 C)
    per_place = rearrange(weight, "o (dx dy c) -> o c dy dx", dx=2, dy=2)
    return ConvWindow(per_place, (2, 2), (0, 0), (1, 1))


def window_of(module: nn.Module, shape, pointwise: bool = True, dtype=None) -> ConvWindow | None:
    """The window of a module that moves context between tokens by a fixed window, or None.

    ``nn.Conv2d``, ``nn.AvgPool2d`` / ``nn.MaxPool2d`` with a stride (a max is read as the uniform
    window it picks from), timm's ``PatchMerging``. ``pointwise=False`` leaves out 1x1 stride-1
    convolutions (token-wise: inside a block's channel MLP they are no token map).
    """
    if isinstance(module, nn.Conv2d):
        if not pointwise and pair(module.kernel_size) == (1, 1) and pair(module.stride) == (1, 1):
            return None
        return _conv_window(module, shape[-2:])
    if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        stride = pair(module.stride if module.stride is not None else module.kernel_size)
        if isinstance(module, nn.AvgPool2d) and stride == (1, 1):
            return None  # a stride-1 average pool is a mixer with an exact view
        return _pool_window(module, dtype or torch.get_default_dtype())
    if _is_patch_merging(module):
        return _merging_window(module)
    return None


def static_window(mixer: AffinityMixer) -> ConvWindow | None:
    """A static mixer's affinity as the window it is, through the contract: a ``kind == "static"``
    mixer whose ``static_kernels()`` ``(M, kh, kw)`` gives one kernel per head has
    ``affinity = local_affinity(static_kernels(), grid)``, the centred stride-1 window of those kernels
    (a depthwise convolution). None for every other mixer (their dense affinity is asked for)."""
    if mixer.kind != "static":
        return None
    kernels = mixer.static_kernels()
    if kernels is None or kernels.dim() != 3 or kernels.shape[0] != mixer.heads:
        return None
    kh, kw = kernels.shape[-2:]
    return ConvWindow(kernels.detach()[:, None], (1, 1), (kh // 2, kw // 2), (1, 1))


def _window_grid(module, shape) -> tuple[int, int]:
    return (shape[1], shape[2]) if _is_patch_merging(module) else (shape[-2], shape[-1])


@torch.no_grad()
def mixer_affinity(mixer: AffinityMixer, x: torch.Tensor) -> torch.Tensor:
    """``mixer.affinity(x)``, asked through the contract inside the guard: ``(B|1, M, N, N)``."""
    with untouched(mixer):
        return mixer.affinity(x).detach()


def _view_affinity(view) -> torch.Tensor:
    n = view.affinity.shape[-2]
    return view.affinity[..., :n].detach()  # extra keys (a bias key) are no tokens


class _Walk:
    """The leaf records of one pass, before residual grouping."""

    def __init__(self, model, x, prefix_tokens, max_tokens):
        self.lookup = dict(model.named_modules())
        self.families = {name: family_of(m) for name, m in self.lookup.items()}

        def keep(name, module):
            return self.families[name] is not None and not isinstance(module, nn.Conv2d)

        with torch.no_grad():
            self.seen = forward_pass(model, x, keep)
        self.image = tuple(x.shape[-2:])
        self.batch = x.shape[0]
        self.dtype = x.dtype
        self.candidates = prefix_candidates(model, prefix_tokens)
        self.max_tokens = max_tokens
        self.records: list = []
        self.skipped: OrderedDict[str, str] = OrderedDict()
        self.blocks = [n for n, m in self.lookup.items() if residuals_of(m) is not None]

    def run(self):
        covered: list[str] = []
        for name in self.seen.order:
            if any(c == "" or name.startswith(c + ".") for c in covered):
                continue
            module = self.lookup[name]
            try:
                record = self.record(name, module)
            except NoView as err:
                self.skipped[name] = str(err)
                covered.append(name)
                continue
            if record is not None:
                self.records.append(record)
                covered.append(name)
            elif self._unread(module):
                self.skipped[name] = (f"{type(module).__name__}: a layer with parameters that rollout "
                                      f"does not read")
        return self

    def _unread(self, module) -> bool:
        if isinstance(module, TOKENWISE) or list(module.children()) or residuals_of(module) is not None:
            return False
        if isinstance(module, nn.Conv2d):
            return False  # 1x1 stride 1: token-wise
        own = list(module.parameters(recurse=False))
        return bool(own) and any(p.dim() > 1 for p in own)  # per-channel vectors (scales) mix no tokens

    def record(self, name, module):
        shape = self.seen.shapes.get(name)
        in_block = any(_inside(name, b) and name != b for b in self.blocks)
        window = (window_of(module, shape, not in_block, self.dtype)
                  if shape is not None and len(shape) == 4 else None)
        if window is not None:
            grid = _window_grid(module, shape)
            return WindowRecord(name, TokenGrid(grid), TokenGrid(window.out_grid(grid)), window,
                                type(module).__name__)
        if isinstance(module, AffinityMixer) and name in self.seen.inputs:
            x = next(iter(self.seen.inputs[name].values()))
            window = static_window(module)
            if window is not None:  # its affinity is exactly this window: no dense (M, N, N) needed
                grid = tuple(x.shape[-2:])
                return WindowRecord(name, TokenGrid(grid), TokenGrid(grid), window, type(module).__name__)
            return AffinityRecord(name, TokenGrid(tuple(x.shape[-2:])), type(module).__name__,
                                  partial(mixer_affinity, module, x))
        family = self.families[name]
        if family is None or name not in self.seen.inputs:
            return None
        view = view_of_call(family, module, self.seen.inputs[name], self.image, self.batch, self.candidates,
                            self.max_tokens)
        grid = view.grid if view.grid is not None else (1, view.affinity.shape[-2])
        return AffinityRecord(name, TokenGrid(tuple(grid), view.prefix_tokens), view.module_type,
                              partial(_view_affinity, view))


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _on_grid(record: AffinityRecord, residual: Residual, grid) -> AffinityRecord:
    return AffinityRecord(record.name, TokenGrid(tuple(grid)), record.module_type,
                          lambda: residual.on_grid(record.affinity, grid))


def _group(walk: _Walk, model: nn.Module) -> list:
    """Replace the records of every residual branch by one :class:`ResidualRecord`."""
    records = walk.records
    for block_name in walk.seen.order:
        block = walk.lookup[block_name]
        residuals = residuals_of(block)
        if not residuals:
            continue
        shape = walk.seen.shapes.get(block_name)
        for residual in residuals:
            branch = f"{block_name}.{residual.branch}" if residual.branch else block_name
            short = f"{block_name}.{residual.shortcut}" if residual.shortcut else None
            inner = [r for r in records if _inside(r.name, branch) and not (short and _inside(r.name, short))]
            if not inner:
                continue  # a token-wise branch (a channel MLP): the identity for context
            shortcut = [r for r in records if short and _inside(r.name, short)]
            first = min(records.index(r) for r in inner + shortcut)
            gone = {id(r) for r in inner + shortcut}
            if residual.on_grid is not None and shape is not None:
                grid = (shape[1], shape[2])  # the block's (B, H, W, C) input
                inner = [_on_grid(r, residual, grid) if isinstance(r, AffinityRecord) else r for r in inner]
            grouped = ResidualRecord(branch, residual, inner, shortcut)
            records = [r for r in records[:first] if id(r) not in gone] + [grouped] + \
                      [r for r in records[first:] if id(r) not in gone]
    return records


def read_records(model: nn.Module, x: torch.Tensor, prefix_tokens: int | None = None,
                 max_tokens: int | None = None) -> tuple[list, OrderedDict]:
    """``(records, skipped)``: the typed records of ``model`` on ``x`` in forward order (see the module
    docstring) and ``{module name: why it has no record}`` for the layers with parameters that
    could not be read. The model is left as it was."""
    walk = _Walk(model, x, prefix_tokens, max_tokens).run()
    return _group(walk, model), walk.skipped


__all__ = ["TIMM_BLOCKS", "TOKENWISE", "mixer_affinity", "read_records", "residuals_of", "static_window",
           "swin_on_grid", "window_of"]
