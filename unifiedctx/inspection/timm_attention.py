"""timm's attention layers in the affinity view: ViT/DeiT ``Attention``, Swin's ``WindowAttention``,
ConViT's ``GPSA`` and ``MHSA``. Every affinity here is a softmax over keys (rows sum to 1)::

    ViT / DeiT   A_m = softmax(q_m k_m^T * scale [+ attn_mask])          prefix tokens: class (+ distillation)
    Swin         A_m = softmax(q_m k_m^T * scale + B_m[rel. offset] [+ shift mask])   on one window
    ConViT GPSA  A_m = (1 - g_m) softmax(q_m k_m^T * scale) + g_m softmax(r W_pos^T)_m,
                 r_ij = (dx, dy, dx^2 + dy^2),  g_m = sigmoid(gating_param_m)       (mixed)

``values`` are the heads of ``v`` ``(B, M, N, d)``; ``project`` merges the heads and applies the
layer's own output projection (and its norm / gate where it has them).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from ..mixers.attention import softmax_affinity
from ..mixers.local import token_offsets
from .view import AffinityView, check_tokens, token_grid


def _heads(t: torch.Tensor, n_parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``(B, N, parts*M*d) -> parts x (B, M, N, d)``."""
    return rearrange(t, "b n (p m d) -> p b m n d", p=n_parts, m=heads).unbind(0)


def inspect_timm_attention(module, x, grid=None, prefix_tokens=0, attn_mask=None,
                           is_causal: bool = False) -> AffinityView:
    """ViT/DeiT ``timm.layers.Attention`` (fused or not; q/k norms, scale norm and gate included).

    ``x``: ``(B, N, C)`` with ``prefix_tokens`` class/distillation tokens first; ``attn_mask`` the
    additive or boolean mask the layer was called with. ``affinity`` ``(B, M, N, N)``.
    """
    check_tokens(x, "timm Attention")
    bsz, n, _ = x.shape
    m = module.num_heads
    q, k, v = _heads(module.qkv(x), 3, m)
    q, k = module.q_norm(q), module.k_norm(k)
    if is_causal:
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        attn_mask = causal if attn_mask is None else attn_mask & causal
    a = softmax_affinity(q, k, attn_mask, scale=module.scale)
    gate_layer = getattr(module, "gate", None)
    gate = gate_layer(x).sigmoid() if isinstance(gate_layer, torch.nn.Module) else None
    norm = getattr(module, "norm", torch.nn.Identity())

    def project(z):
        y = norm(rearrange(z, "b m n d -> b n (m d)"))
        if gate is not None:
            y = y * gate
        return module.proj_drop(module.proj(y))

    grid = token_grid(grid, n, prefix_tokens)
    return AffinityView(v, a, project, grid, "dynamic", m, "timm Attention", prefix_tokens)


def inspect_convit_mhsa(module, x, grid=None, prefix_tokens=0) -> AffinityView:
    """ConViT's plain ``MHSA`` (its late, non-local layers, after the class token joins)."""
    check_tokens(x, "ConViT MHSA")
    q, k, v = _heads(module.qkv(x), 3, module.num_heads)
    a = softmax_affinity(q, k, scale=module.scale)
    project = lambda z: module.proj_drop(module.proj(rearrange(z, "b m n d -> b n (m d)")))
    grid = token_grid(grid, x.shape[1], prefix_tokens)
    return AffinityView(v, a, project, grid, "dynamic", module.num_heads, "ConViT MHSA", prefix_tokens)


def inspect_swin_window_attention(module, x, mask=None) -> AffinityView:
    """Swin's ``WindowAttention`` on the windows it is given.

    ``x``: ``(B * nW, N, C)``, N = Wh*Ww tokens of each window (the batch axis holds every window of
    every image, image-major); ``mask``: the shifted-window mask ``(nW, N, N)`` (0 / -100) or None.
    ``affinity`` ``(B * nW, M, N, N)``; ``grid`` is the window ``(Wh, Ww)``.
    """
    check_tokens(x, "Swin WindowAttention")
    windows, n, _ = x.shape
    if n != module.window_area:
        raise ValueError(f"x has {n} tokens per window but the window {module.window_size} holds "
                         f"{module.window_area}")
    m = module.num_heads
    q, k, v = _heads(module.qkv(x), 3, m)
    table = module.relative_position_bias_table  # ((2Wh-1)(2Ww-1), M)
    bias = rearrange(table[module.relative_position_index.reshape(-1)], "(n j) m -> 1 m n j", n=n)
    if mask is not None:
        per_image = mask.shape[0]
        if windows % per_image:
            raise ValueError(f"mask has {per_image} windows, which do not divide the {windows} windows of x")
        bias = bias + mask.repeat(windows // per_image, 1, 1).unsqueeze(1)
    a = softmax_affinity(q, k, bias, scale=module.scale)
    project = lambda z: module.proj_drop(module.proj(rearrange(z, "b m n d -> b n (m d)")))
    view = AffinityView(v, a, project, tuple(module.window_size), "dynamic", m, "Swin WindowAttention")
    view.notes["windows"] = "the batch axis holds B * nW windows; the grid is one window"
    view.notes["shifted"] = mask is not None
    return view


def gpsa_positional_affinity(pos_proj, grid, dtype, device) -> torch.Tensor:
    """``softmax_j(r_ij W_pos^T + b)``: ``(1, M, N, N)`` with ``r_ij = (dx, dy, dx^2 + dy^2)`` the offset
    from token i to token j (:func:`unifiedctx.mixers.local.token_offsets`)."""
    dy, dx = (t.to(dtype) for t in token_offsets(grid, device))
    r = torch.stack([dx, dy, dx**2 + dy**2], dim=-1)  # (N, N, 3)
    return rearrange(pos_proj(r), "n j m -> 1 m n j").softmax(dim=-1)


def inspect_convit_gpsa(module, x, grid=None) -> AffinityView:
    """ConViT's gated positional self-attention ``GPSA`` (square grid, no prefix tokens)::

        A_m = normalise_rows((1 - g_m) softmax(q k^T * scale) + g_m softmax(r W_pos^T)_m)

    (the row normalisation is the layer's own; the rows already sum to 1 up to rounding).
    """
    check_tokens(x, "ConViT GPSA")
    bsz, n, c = x.shape
    side = math.isqrt(n)
    if grid is None:
        if side * side != n:
            raise ValueError(f"ConViT GPSA works on a square grid, but x has {n} tokens")
        grid = (side, side)
    grid = token_grid(grid, n, 0)
    m = module.num_heads
    q, k = _heads(module.qk(x), 2, m)
    (v,) = _heads(module.v(x), 1, m)
    dynamic = softmax_affinity(q, k, scale=module.scale)
    static = gpsa_positional_affinity(module.pos_proj, grid, x.dtype, x.device)
    g = torch.sigmoid(module.gating_param).view(1, -1, 1, 1)
    mixed = (1 - g) * dynamic + g * static
    mixed = mixed / mixed.sum(-1, keepdim=True)
    project = lambda z: module.proj_drop(module.proj(rearrange(z, "b m n d -> b n (m d)")))
    return AffinityView(v, mixed, project, grid, "mixed", m, "ConViT GPSA",
                        components={"dynamic": dynamic, "static": static, "mixed": mixed})
