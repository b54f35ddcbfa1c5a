"""``inspect(module, x)``: the affinity view of token mixers that unifiedctx did not build.

Given a module and an input, :func:`inspect` returns an :class:`AffinityView` with

* ``values``   ``V`` of shape ``(B, M, K, d)``  (K keys: usually the N tokens),
* ``affinity`` ``A`` of shape ``(B|1, M, N, K)``,
* ``project``  a callable with ``view.project(view.affinity @ view.values) == module(x)``,

so that the module's own output is rebuilt from its affinity (in its own output format).
Supported modules and their views:

==========================================  =====================================================
module                                      view
==========================================  =====================================================
unifiedctx mixers (``AffinityMixer``)       their own ``values`` / ``affinity`` / ``project``
``nn.Conv2d`` depthwise (groups = C)        M = C heads, d = 1, A[c] = banded kernel matrix
``nn.Conv2d`` full (groups = 1)             im2col: M = kh*kw shift matrices, d = C_in,
                                            the kernel lives in ``project``
``nn.AvgPool2d`` (stride 1, pad k//2)       M = 1, A = window / count (either count rule)
``nn.MultiheadAttention`` (self-attention)  M = num_heads, A = softmax(q k^T / sqrt(d))
timm ``Attention`` (ViT, fused or not)      A recomputed from ``qkv`` (+ q_norm / k_norm)
timm ``MixerBlock``                         the token MLP as an input-gated affinity (below);
                                            ``project`` adds the residual and channel MLP
timm ``Pooling`` (PoolFormer)               A = window / count - I
==========================================  =====================================================

MLP-Mixer's token MLP, per channel c with u = norm1(x)[:, c] (N tokens)::

    y = W2 act(W1 u + b1) + b2,    act(h) = h * g(h)   (GELU: g = Phi, the normal CDF)
      = W2 diag(g(h)) (W1 u + b1) + b2
      = [W2 diag(g(h)) W1 | W2 diag(g(h)) b1] [u; 1] + b2

so with the values augmented by one constant key, ``V[c] = [u; 1]`` (K = N + 1, d = 1), the
affinity ``A[c] = W2 diag(g(h)) [W1 | b1]`` of shape ``(N, N + 1)`` is exact: the last column
(``view.extra_keys == 1``) is the input-dependent share of the first-layer bias.
``view.grid_affinity()`` drops such extra keys (and leading prefix tokens like a class token).

Dropout and drop-path must be off (``module.eval()``) for the rebuild to be exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .mixers.base import AffinityMixer, check_grid
from .mixers.dense import gelu_gate
from .mixers.local import local_affinity

SUPPORTED = (
    "unifiedctx AffinityMixer",
    "torch.nn.Conv2d (depthwise or groups=1; stride 1, odd kernel, padding k//2, zeros)",
    "torch.nn.AvgPool2d (stride 1, odd kernel, padding k//2)",
    "torch.nn.MultiheadAttention (self-attention)",
    "timm Attention (ViT)",
    "timm MixerBlock",
    "timm Pooling (PoolFormer)",
)


@dataclass
class AffinityView:
    """The affinity view of one module on one input: ``project(affinity @ values) == module(x)``.

    Attributes:
        values: ``(B, M, K, d)``.
        affinity: ``(B|1, M, N, K)``; K = N + ``extra_keys``.
        project: callable ``z (B, M, N, d) -> module output``.
        grid: ``(H, W)`` of the tokens on the image grid, or ``None`` for plain sequences.
        kind: ``"static"`` (independent of x) or ``"dynamic"``.
        heads: M.
        module_type: the inspected module's class name.
        prefix_tokens: leading tokens that are not on the grid (a class token, say).
        extra_keys: trailing keys that are not tokens (a constant-1 bias key, ``bias_k``...).
    """

    values: torch.Tensor
    affinity: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]
    grid: tuple[int, int] | None
    kind: str
    heads: int
    module_type: str = ""
    prefix_tokens: int = 0
    extra_keys: int = 0
    notes: dict = field(default_factory=dict)

    def output(self) -> torch.Tensor:
        """The reference computation ``project(affinity @ values)`` (equals ``module(x)``)."""
        return self.project(self.affinity @ self.values)

    def grid_affinity(self) -> torch.Tensor:
        """The token-to-token block on the grid, ``(B|1, M, H*W, H*W)``, for plotting."""
        p, n = self.prefix_tokens, self.affinity.shape[-2]
        return self.affinity[..., p:, p:n]


# ------------------------------------------------------------------------------ helpers

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _check_image(x, module) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x for {type(module).__name__} must be a (B, C, H, W) tensor, "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    return (x.shape[2], x.shape[3])


def _check_window(module, kernel, padding, dilation=(1, 1)):
    name = type(module).__name__
    if any(k % 2 == 0 for k in kernel):
        raise ValueError(f"{name}.kernel_size must be odd so the window is centred, got {kernel}")
    want = (dilation[0] * (kernel[0] // 2), dilation[1] * (kernel[1] // 2))
    if padding == "same":
        padding = want
    elif padding == "valid":
        padding = (0, 0)
    if _pair(padding) != want:
        raise ValueError(f"{name}.padding must be kernel_size // 2 = {want} ('same' padding), got {padding}")


# ------------------------------------------------------------------------------ conv / pool

def _inspect_conv2d(module: nn.Conv2d, x) -> AffinityView:
    grid = _check_image(x, module)
    cin, cout, groups = module.in_channels, module.out_channels, module.groups
    if _pair(module.stride) != (1, 1):
        raise ValueError(f"Conv2d.stride must be 1 (a strided conv changes the grid), got {module.stride}")
    if module.padding_mode != "zeros":
        raise ValueError(f"Conv2d.padding_mode must be 'zeros', got {module.padding_mode!r}")
    kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
    _check_window(module, kernel, module.padding, dilation)
    w, b = module.weight, module.bias
    n = grid[0] * grid[1]
    if groups == cin == cout and groups > 1 or (groups == 1 and cin == cout == 1):
        a = local_affinity(w[:, 0], grid, dilation).unsqueeze(0)
        values = rearrange(x, "b c h w -> b c (h w) 1")

        def project(z):
            y = rearrange(z, "b c (h w) 1 -> b c h w", h=grid[0])
            return y if b is None else y + b.view(1, -1, 1, 1)

        return AffinityView(values, a, project, grid, "static", cin, "Conv2d (depthwise)")
    if groups != 1:
        raise ValueError(f"Conv2d.groups must be 1 (full conv) or in_channels == out_channels "
                         f"(depthwise), got groups={groups}, in_channels={cin}, out_channels={cout}")
    heads = kernel[0] * kernel[1]
    eye = torch.eye(heads, dtype=w.dtype, device=w.device).view(heads, *kernel)
    a = local_affinity(eye, grid, dilation).unsqueeze(0)
    values = rearrange(x, "b c h w -> b 1 (h w) c").expand(-1, heads, n, cin)
    kernel_mat = rearrange(w, "o c kh kw -> (kh kw) c o")

    def project(z):
        y = torch.einsum("bmnc,mco->bno", z, kernel_mat)
        if b is not None:
            y = y + b
        return rearrange(y, "b (h w) o -> b o h w", h=grid[0])

    return AffinityView(values, a, project, grid, "static", heads, "Conv2d (full, im2col)")


def _pool_affinity(module: nn.AvgPool2d, grid, dtype, device) -> torch.Tensor:
    kernel = _pair(module.kernel_size)
    stride = _pair(module.stride if module.stride is not None else module.kernel_size)
    if stride != (1, 1):
        raise ValueError(f"AvgPool2d.stride must be 1 (note: it defaults to kernel_size), "
                         f"got {module.stride}")
    _check_window(module, kernel, module.padding)
    ones = torch.ones(1, *kernel, dtype=dtype, device=device)
    window = local_affinity(ones, grid)[0]
    if module.divisor_override:
        return window / module.divisor_override
    if module.count_include_pad:
        return window / (kernel[0] * kernel[1])
    return window / window.sum(1, keepdim=True)


def _inspect_avgpool(module: nn.AvgPool2d, x, subtract_input: bool = False, name="AvgPool2d") -> AffinityView:
    grid = _check_image(x, module)
    a = _pool_affinity(module, grid, x.dtype, x.device)
    if subtract_input:
        a = a - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    values = rearrange(x, "b c h w -> b 1 (h w) c")
    project = lambda z: rearrange(z, "b 1 (h w) c -> b c h w", h=grid[0])
    return AffinityView(values, a[None, None], project, grid, "static", 1, name)


# ------------------------------------------------------------------------------ attention

def _token_grid(grid, n_tokens: int, prefix_tokens: int):
    if grid is None:
        return None
    grid = check_grid(grid)
    if grid[0] * grid[1] != n_tokens - prefix_tokens:
        raise ValueError(f"grid={grid} holds {grid[0] * grid[1]} tokens but x has {n_tokens} tokens "
                         f"({prefix_tokens} prefix tokens)")
    return grid


def _softmax_affinity(q, k, scale):
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)


def _inspect_mha(module: nn.MultiheadAttention, x, grid, prefix_tokens) -> AffinityView:
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3) or x.shape[-1] != module.embed_dim:
        raise ValueError(f"x for MultiheadAttention must be (B, N, E) (batch_first), (N, B, E) or (N, E) "
                         f"with E = embed_dim = {module.embed_dim}, got {getattr(x, 'shape', x)}")
    unbatched = x.dim() == 2
    xb = x[None] if unbatched else (x if module.batch_first else x.transpose(0, 1))
    e, m = module.embed_dim, module.num_heads
    d = e // m
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    bq, bk, bv = (None,) * 3 if module.in_proj_bias is None else module.in_proj_bias.chunk(3)
    heads = lambda t: rearrange(t, "b n (m d) -> b m n d", m=m)
    q, k, v = (heads(F.linear(xb, w_, b_)) for w_, b_ in ((wq, bq), (wk, bk), (wv, bv)))
    extra = 0
    if module.bias_k is not None:
        bsz = xb.shape[0]
        k = torch.cat([k, heads(module.bias_k.view(1, 1, e).expand(bsz, 1, e))], dim=2)
        v = torch.cat([v, heads(module.bias_v.view(1, 1, e).expand(bsz, 1, e))], dim=2)
        extra += 1
    if module.add_zero_attn:
        k = F.pad(k, (0, 0, 0, 1))
        v = F.pad(v, (0, 0, 0, 1))
        extra += 1
    a = _softmax_affinity(q, k, d**-0.5)

    def project(z):
        y = module.out_proj(rearrange(z, "b m n d -> b n (m d)"))
        if unbatched:
            return y[0]
        return y if module.batch_first else y.transpose(0, 1)

    grid = _token_grid(grid, xb.shape[1], prefix_tokens)
    return AffinityView(v, a, project, grid, "dynamic", m, "MultiheadAttention", prefix_tokens, extra)


def _inspect_timm_attention(module, x, grid, prefix_tokens) -> AffinityView:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x for timm Attention must be (B, N, C) tokens, got {getattr(x, 'shape', x)}")
    bsz, n, _ = x.shape
    m, d = module.num_heads, module.head_dim
    qkv = module.qkv(x).reshape(bsz, n, 3, m, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    a = _softmax_affinity(q, k, module.scale)
    gate_layer = getattr(module, "gate", None)
    gate = gate_layer(x).sigmoid() if isinstance(gate_layer, nn.Module) else None
    norm = getattr(module, "norm", nn.Identity())

    def project(z):
        y = norm(rearrange(z, "b m n d -> b n (m d)"))
        if gate is not None:
            y = y * gate
        return module.proj_drop(module.proj(y))

    grid = _token_grid(grid, n, prefix_tokens)
    return AffinityView(v, a, project, grid, "dynamic", m, "timm Attention", prefix_tokens)


def activation_gate(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g`` with ``act(h) = h * g(h)`` for the activations an MLP-Mixer uses (GELU, ReLU, SiLU...)."""
    name = type(act).__name__
    approximate = getattr(act, "approximate", "none")
    if name == "GELUTanh" or (name == "GELU" and approximate == "tanh"):
        return lambda h: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    if name == "GELU":
        return gelu_gate
    if name == "QuickGELU":
        return lambda h: torch.sigmoid(1.702 * h)
    if name in ("SiLU", "Swish"):
        return torch.sigmoid
    if name == "ReLU":
        return lambda h: (h > 0).to(h.dtype)
    if name == "Identity":
        return torch.ones_like
    raise ValueError(f"cannot write the activation {name} as act(h) = h * g(h); "
                     f"supported: GELU (erf or tanh), QuickGELU, SiLU, ReLU, Identity")


def _inspect_timm_mixer_block(module, x, grid, prefix_tokens) -> AffinityView:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x for timm MixerBlock must be (B, N, C) tokens, got {getattr(x, 'shape', x)}")
    mlp = module.mlp_tokens
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise ValueError("MixerBlock.mlp_tokens.norm must be Identity: a norm inside the token MLP "
                         "is not an affinity")
    g = activation_gate(mlp.act)
    u = rearrange(module.norm1(x), "b n c -> b c n")  # (B, C, N)
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    gate = g(mlp.fc1(u))  # (B, C, hidden)
    if b1 is not None:
        w1 = torch.cat([w1, b1[:, None]], dim=1)  # (hidden, N + 1): the constant-1 key
        u = torch.cat([u, torch.ones_like(u[..., :1])], dim=-1)
    a = torch.einsum("nk,bck,kj->bcnj", w2, gate, w1)
    values = u.unsqueeze(-1)

    def project(z):
        t = rearrange(z, "b c n 1 -> b n c")
        if b2 is not None:
            t = t + b2.view(1, -1, 1)
        y = x + module.drop_path(mlp.drop2(t))
        return y + module.drop_path(module.mlp_channels(module.norm2(y)))

    grid = _token_grid(grid, x.shape[1], prefix_tokens)
    view = AffinityView(values, a, project, grid, "dynamic", x.shape[2], "timm MixerBlock", prefix_tokens,
                        int(b1 is not None))
    view.notes["project"] = "adds the block's residual and its channel MLP: the output is the whole block's"
    return view


# ------------------------------------------------------------------------------ dispatch

def _timm_class(path: str, name: str):
    import importlib

    try:
        return getattr(importlib.import_module(path), name)
    except (ImportError, AttributeError):
        return None


def _timm_kind(module) -> str | None:
    mod_path = type(module).__module__
    if not mod_path.startswith("timm."):
        return None
    for kind, places in {
        "attention": [("timm.layers.attention", "Attention"),
                      ("timm.models.vision_transformer", "Attention")],
        "mixer_block": [("timm.models.mlp_mixer", "MixerBlock")],
        "pooling": [("timm.models.metaformer", "Pooling"), ("timm.models.poolformer", "Pooling")],
    }.items():
        for path, name in places:
            cls = _timm_class(path, name)
            if cls is not None and type(module) is cls:
                return kind
    return None


def inspect(module: nn.Module, x: torch.Tensor, grid=None, prefix_tokens: int = 0) -> AffinityView:
    """The affinity view of ``module`` on input ``x``: ``view.project(view.affinity @ view.values)``
    equals ``module(x)``.

    Args:
        module: one of the supported modules (see the module docstring); put it in ``eval()``.
        x: its input: ``(B, C, H, W)`` for convolutions, pooling and unifiedctx mixers;
            ``(B, N, C)`` (or ``(N, B, C)`` when ``batch_first=False``, or unbatched ``(N, C)``)
            tokens for ``nn.MultiheadAttention``; ``(B, N, C)`` for timm Attention / MixerBlock.
        grid: for token modules, the ``(H, W)`` grid the tokens come from (optional; it is
            ``None`` in the view when not given). Image modules take the grid from ``x``.
        prefix_tokens: leading tokens of a sequence that are not on the grid (a class token).

    Returns:
        an :class:`AffinityView` with ``values (B, M, K, d)``, ``affinity (B|1, M, N, K)``,
        ``project``, ``grid``, ``kind`` and ``heads``.

    Raises:
        TypeError: for a module type it does not support (the message lists the supported ones).
        ValueError: for a supported type with unsupported settings (stride, padding, groups...),
            naming the attribute.
    """
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise ValueError(f"prefix_tokens must be a non-negative int, got {prefix_tokens!r}")
    if isinstance(module, AffinityMixer):
        g = module.check_input(x)
        return AffinityView(module.values(x), module.affinity(x), partial(module.project, grid=g), g,
                            module.kind, module.heads, type(module).__name__)
    if isinstance(module, nn.Conv2d):
        return _inspect_conv2d(module, x)
    if isinstance(module, nn.AvgPool2d):
        return _inspect_avgpool(module, x)
    if isinstance(module, nn.MultiheadAttention):
        return _inspect_mha(module, x, grid, prefix_tokens)
    kind = _timm_kind(module)
    if kind == "attention":
        return _inspect_timm_attention(module, x, grid, prefix_tokens)
    if kind == "mixer_block":
        return _inspect_timm_mixer_block(module, x, grid, prefix_tokens)
    if kind == "pooling":
        if not isinstance(getattr(module, "pool", None), nn.AvgPool2d):
            raise ValueError("timm Pooling.pool must be an nn.AvgPool2d")
        return _inspect_avgpool(module.pool, x, subtract_input=True, name="timm Pooling")
    raise TypeError(f"inspect does not support {type(module).__module__}.{type(module).__name__}; "
                    f"supported: {'; '.join(SUPPORTED)}")


__all__ = ["SUPPORTED", "AffinityView", "activation_gate", "inspect"]
