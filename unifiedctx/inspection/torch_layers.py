"""PyTorch's own token mixers in the affinity view: ``Conv2d``, ``AvgPool2d``, ``MultiheadAttention``.

Conv and pooling affinities are built by the mixers' own builder
(:func:`unifiedctx.mixers.local.local_affinity`): a k x k window is a sum of shift matrices.

* ``Conv2d`` depthwise (groups = C): M = C heads, d = 1, ``A[c] = sum_o w[c, o] S_o``.
* ``Conv2d`` full (groups = 1), im2col: M = kh*kw shift matrices ``A[o] = S_o``, d = C_in, and the
  kernel lives in ``project``: ``y[:, c_out] = sum_o sum_c W[c_out, c, o] (S_o x)[:, c] + b``; grouped
  (1 < groups < C, ResNeXt, RegNet): the same, the sum over c only over ``c_out``'s group of input channels.
* ``AvgPool2d`` (stride 1, centred): M = 1, ``A = window / count`` (either count rule), optionally
  minus the identity (PoolFormer's ``pool(x) - x``).
* ``MultiheadAttention`` (self-attention): ``A_m = softmax(q_m k_m^T / sqrt(d))``, keys extended by
  ``bias_k`` and a zero key when the module has them (``extra_keys``).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..mixers.attention import softmax_affinity
from ..mixers.local import local_affinity
from .records import ConvWindow
from .view import AffinityView, check_image, check_window, pair, token_grid


def inspect_conv2d(module: nn.Conv2d, x) -> AffinityView:
    """The view of a stride-1, centred ``nn.Conv2d``: depthwise (banded, one head per channel) or full or
    grouped (im2col: kh*kw shift heads, the kernel in ``project``). Shapes: see the module docstring."""
    grid = check_image(x, module, channels=module.in_channels)
    cin, cout, groups = module.in_channels, module.out_channels, module.groups
    if pair(module.stride) != (1, 1):
        raise ValueError(f"Conv2d.stride must be 1 (a strided conv changes the grid), got {module.stride}")
    if module.padding_mode != "zeros":
        raise ValueError(f"Conv2d.padding_mode must be 'zeros', got {module.padding_mode!r}")
    kernel, dilation = pair(module.kernel_size), pair(module.dilation)
    check_window(module, kernel, module.padding, dilation)
    w, b = module.weight, module.bias
    n = grid[0] * grid[1]
    if groups == cin == cout and groups > 1 or (groups == 1 and cin == cout == 1):
        kernels = w.detach()[:, 0]
        a = lambda: local_affinity(kernels, grid, dilation).unsqueeze(0)  # noqa: E731  (on first use)
        values = rearrange(x, "b c h w -> b c (h w) 1")

        def project(z):
            y = rearrange(z, "b c (h w) 1 -> b c h w", h=grid[0])
            return y if b is None else y + b.view(1, -1, 1, 1)

        return AffinityView(values, a, project, grid, "static", cin, "Conv2d (depthwise)",
                            read_rows=partial(kernel_rows, kernels, grid, dilation),
                            window=centred_window(kernels, dilation))
    heads = kernel[0] * kernel[1]
    eye = torch.eye(heads, dtype=w.dtype, device=w.device).view(heads, *kernel)
    a = lambda: local_affinity(eye, grid, dilation).unsqueeze(0)  # noqa: E731  (on first use)
    values = rearrange(x, "b c h w -> b 1 (h w) c").expand(-1, heads, n, cin)
    # (kh*kw, C_in, C_out); grouped: block-diagonal, output group g reads input group g only
    per_group = rearrange(w, "(g o) c kh kw -> g (kh kw) c o", g=groups)
    same_group = torch.eye(groups, dtype=w.dtype, device=w.device)
    kernel_mat = rearrange(torch.einsum("gmco,gh->mgcho", per_group, same_group),
                           "m g c h o -> m (g c) (h o)")

    def project(z):
        y = torch.einsum("bmnc,mco->bno", z, kernel_mat)
        if b is not None:
            y = y + b
        return rearrange(y, "b (h w) o -> b o h w", h=grid[0])

    return AffinityView(values, a, project, grid, "static", heads,
                        "Conv2d (full, im2col)" if groups == 1 else "Conv2d (grouped, im2col)",
                        read_rows=partial(kernel_rows, eye, grid, dilation),
                        window=centred_window(eye, dilation))


def centred_window(kernels: torch.Tensor, dilation) -> ConvWindow:
    """Per-head kernels ``(M, kh, kw)`` (odd sides) as the centred stride-1 window whose affinity they are."""
    (kh, kw), (dy, dx) = kernels.shape[-2:], pair(dilation)
    return ConvWindow(kernels.detach()[:, None], (1, 1), (dy * (kh // 2), dx * (kw // 2)), (dy, dx))


def kernel_rows(kernels: torch.Tensor, grid, dilation, queries: torch.Tensor) -> torch.Tensor:
    """Rows ``queries`` of ``local_affinity(kernels, grid, dilation)`` without it: ``(1, M, Q, N)``, each the
    kernel ``(M, kh, kw)`` placed centred at its query (entries off the grid dropped, as zero padding
    does)."""
    heads, kh, kw = kernels.shape
    dy, dx = pair(dilation)
    h, w = grid
    qy, qx = queries // w, queries % w
    out = kernels.new_zeros(heads, len(queries), h * w)
    picks = torch.arange(len(queries), device=kernels.device)
    for ky in range(kh):
        ty = qy + (ky - kh // 2) * dy
        for kx in range(kw):
            tx = qx + (kx - kw // 2) * dx
            on = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
            out[:, picks[on], (ty * w + tx)[on]] = kernels[:, ky, kx].unsqueeze(1)
    return out.unsqueeze(0)


def pool_affinity(module: nn.AvgPool2d, grid, dtype, device) -> torch.Tensor:
    """``(N, N)`` affinity of a stride-1 centred average pool: the 0/1 window over its count."""
    kernel = pair(module.kernel_size)
    stride = pair(module.stride if module.stride is not None else module.kernel_size)
    if stride != (1, 1):
        raise ValueError(f"AvgPool2d.stride must be 1 (note: it defaults to kernel_size), "
                         f"got {module.stride}")
    check_window(module, kernel, module.padding)
    if getattr(module, "ceil_mode", False):
        raise ValueError("AvgPool2d.ceil_mode must be False")
    ones = torch.ones(1, *kernel, dtype=dtype, device=device)
    window = local_affinity(ones, grid)[0]
    if module.divisor_override:
        return window / module.divisor_override
    if module.count_include_pad:
        return window / (kernel[0] * kernel[1])
    return window / window.sum(1, keepdim=True)


def inspect_avgpool(module: nn.AvgPool2d, x, subtract_input: bool = False, name="AvgPool2d") -> AffinityView:
    """The view of a stride-1 ``nn.AvgPool2d`` (M = 1, d = C); ``subtract_input``: ``A - I``."""
    grid = check_image(x, module)
    a = pool_affinity(module, grid, x.dtype, x.device)
    if subtract_input:
        a = a - torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    values = rearrange(x, "b c h w -> b 1 (h w) c")
    project = lambda z: rearrange(z, "b 1 (h w) c -> b c h w", h=grid[0])
    return AffinityView(values, a[None, None], project, grid, "static", 1, name)


def inspect_mha(module: nn.MultiheadAttention, x, grid=None, prefix_tokens=0) -> AffinityView:
    """The view of ``nn.MultiheadAttention`` used as self-attention ``module(x, x, x)``.

    ``x`` is ``(B, N, E)`` (batch_first), ``(N, B, E)`` or unbatched ``(N, E)``; ``values`` are
    ``(B, M, K, d)`` and ``affinity`` ``(B, M, N, K)`` with K = N + ``extra_keys``.
    """
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
    a = softmax_affinity(q, k, scale=d**-0.5)

    def project(z):
        y = module.out_proj(rearrange(z, "b m n d -> b n (m d)"))
        if unbatched:
            return y[0]
        return y if module.batch_first else y.transpose(0, 1)

    grid = token_grid(grid, xb.shape[1], prefix_tokens)
    return AffinityView(v, a, project, grid, "dynamic", m, "MultiheadAttention", prefix_tokens, extra)
