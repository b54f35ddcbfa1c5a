"""Affinity matrices and query maps: what one head of a token mixer looks at.

Every mixer aggregates context as ``Y = project(A @ V)`` with ``A`` of shape
``(B|1, M, N, N)`` (N = H*W tokens, in row-major order of the grid). Two views of ``A``:

* the **matrix** itself (:func:`plot_affinity_matrix`): row i is what token i takes from every
  token j; with row-major tokens, each block of W rows/columns is one image row, so a
  convolution shows up as a band of 3 diagonals blocks, attention as a dense matrix;
* the **query map** (:func:`query_maps`, :func:`plot_query_maps`): one row ``A[m, q, :]``
  folded back onto the H x W grid, i.e. where the query token q gathers its context from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import (
    check_bool,
    check_choice,
    check_finite,
    check_float,
    check_int_or_pair,
    check_positive_int,
    check_seed,
)
from ._common import (
    as_affinity,
    axes_grid,
    grid_of,
    image_array,
    new_axes,
    pick_heads,
    pick_index,
    query_index,
)
from .scales import (
    DIVERGING,
    MIN_FONTSIZE,
    QUERY_MARKER,
    SEQUENTIAL,
    Scale,
    add_colorbar,
    check_cmap,
    check_scale,
    maps_scale,
    scale_for,
)

SEQUENTIAL_CMAP = SEQUENTIAL  # kept names; the rule itself lives in viz.scales
DIVERGING_CMAP = DIVERGING


def _check_title(title) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__} {title!r}")


def _with_cmap(scale: Scale, cmap) -> Scale:
    """``scale`` with the caller's colormap, when one was asked for."""
    return scale if cmap is None else replace(scale, cmap=cmap)


def plot_affinity_matrix(A, grid=None, head: int = 0, batch: int = 0, ax=None, cmap=None,
                         title: str | None = None, colorbar: bool = True, row_lines: bool = True,
                         scale: Scale | None = None):
    """Draw the N x N affinity matrix ``A[batch, head]`` of one head.

    Row i, column j is the weight token i gives token j (``y_i = sum_j A_ij v_j``). Tokens are
    numbered row-major on the ``grid=(H, W)``, so thin lines every W tokens separate the image
    rows and the ticks name the grid row each block starts. Colours follow the library's one
    rule (:mod:`unifiedctx.viz.scales`): signed matrices (convolution kernels, MLP-Mixer
    weights) on the diverging colormap centred on 0, non-negative ones (attention, pooling) on
    the sequential one from 0; the colorbar of a row-stochastic matrix marks the uniform 1/N.

    Args:
        A: ``(B|1, M, N, N)``, ``(M, N, N)`` or ``(N, N)`` tensor or array.
        grid: ``(H, W)`` with H*W = N; ``None`` draws no row structure (a 1 x N sequence).
        head, batch: which head and which sample to draw.
        ax: an existing matplotlib axes to draw into; a new figure when ``None``.
        colorbar: draw the colorbar (pass ``False`` only when the caller states the scale).
        scale: a shared :class:`~unifiedctx.viz.scales.Scale` (default: this matrix's own).
        row_lines: draw the image-row separators (they are skipped when W = N).

    Returns:
        the matplotlib ``Figure``; the matrix is ``ax.images[0]``.
    """
    a = as_affinity(A)
    b = pick_index(batch, a.shape[0], "batch")
    m = pick_index(head, a.shape[1], "head")
    n = a.shape[2]
    if a.shape[3] != n:
        raise ValueError(f"A must be square over tokens (N, N), got {tuple(a.shape[-2:])}")
    h, w = grid_of(grid, n)
    check_cmap("cmap", cmap)
    check_scale("scale", scale)
    _check_title(title)
    check_bool("colorbar", colorbar)
    check_bool("row_lines", row_lines)
    check_finite(f"A[{b}, {m}]", a[b, m])
    values = a[b, m].numpy()
    fig, ax = new_axes(ax, figsize=(5, 4.4))
    scale = _with_cmap(scale or scale_for(values), cmap)
    ax.imshow(values, cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax, interpolation="nearest")
    if grid is not None and h > 1:
        if row_lines:
            for r in range(1, h):
                ax.axhline(r * w - 0.5, color="0.6", lw=0.4, alpha=0.8)
                ax.axvline(r * w - 0.5, color="0.6", lw=0.4, alpha=0.8)
        step = max(1, h // 8)
        rows = list(range(0, h, step))
        ax.set_xticks([r * w - 0.5 + w / 2 for r in rows], [str(r) for r in rows])
        ax.set_yticks([r * w - 0.5 + w / 2 for r in rows], [str(r) for r in rows])
        ax.set_xlabel("key token j (grid row)", fontsize=MIN_FONTSIZE + 1)
        ax.set_ylabel("query token i (grid row)", fontsize=MIN_FONTSIZE + 1)
    else:
        ax.set_xlabel("key token j", fontsize=MIN_FONTSIZE + 1)
        ax.set_ylabel("query token i", fontsize=MIN_FONTSIZE + 1)
    ax.tick_params(length=0, labelsize=MIN_FONTSIZE)
    ax.set_title(title if title is not None else f"affinity, head {m}", fontsize=10)
    if colorbar:
        add_colorbar(fig, scale, ax)
    return fig


def query_maps(A, grid, query, batch: int = 0) -> torch.Tensor:
    """Each head's affinity row of ``query``, folded back onto the grid: ``(M, H, W)``.

    ``maps[m] = A[batch, m, q, :].reshape(H, W)`` with ``q = y * W + x`` for ``query=(y, x)``
    (a flat token index is accepted too). Shapes: ``A`` is ``(B|1, M, N, N)``, ``(M, N, N)``
    or ``(N, N)`` with N = H*W. Returns a float64 CPU tensor.
    """
    a = as_affinity(A)
    b = pick_index(batch, a.shape[0], "batch")
    if grid is None:
        raise ValueError("query_maps needs grid=(H, W) to fold the N tokens onto")
    n = a.shape[2]
    h, w = grid_of(grid, n)
    if a.shape[3] != n:
        raise ValueError(f"A must be square over tokens (N, N), got {tuple(a.shape[-2:])}")
    q = query_index(query, (h, w))
    return a[b, :, q, :].reshape(a.shape[1], h, w).clone()


def upsample_maps(maps: torch.Tensor, size, mode: str = "nearest") -> torch.Tensor:
    """Resize ``(M, h, w)`` maps to ``size=(H, W)`` with ``F.interpolate`` (nearest or bilinear)."""
    check_choice("mode", mode, ("nearest", "bilinear"))
    if not isinstance(maps, torch.Tensor) or not maps.is_floating_point() or maps.dim() != 3:
        raise TypeError(f"maps must be a floating-point tensor (M, h, w), got "
                        f"{type(maps).__name__} {tuple(getattr(maps, 'shape', ()))}")
    size = check_int_or_pair("size", size)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[None], size=tuple(size), mode=mode, **kwargs)[0]


#: At most this many panels when :func:`plot_query_maps` draws "all heads" (``heads=None``): MLP-Mixer's
#: token MLP has one map per channel (32 in a nano preset), and 32 panels are too small to read.
MAX_PANELS = 16


def plot_query_maps(A, grid, query, image=None, heads=None, batch: int = 0, mode: str = "nearest",
                    axes=None, ncols: int | None = None, alpha: float = 0.85, cmap=None,
                    title: str | None = None, scale: Scale | None = None, colorbar: bool = True):
    """Draw, for each head, where the query token gathers its context, over the input image.

    Each panel shows ``A[batch, m, q, :]`` folded onto the layer's ``grid`` (see
    :func:`query_maps`), upsampled to the image size when the layer is coarser (``mode``
    ``"nearest"`` keeps the tokens' blocks, ``"bilinear"`` smooths them), drawn over the image
    with an opacity of ``alpha * sqrt(|A| / max |A|)`` (tokens that get no weight leave the
    image visible), with the query's cell marked by a square of the library's query-marker colour
    (``scales.QUERY_MARKER``, cyan; the figure says so).

    All heads share one colour scale (:func:`unifiedctx.viz.scales.maps_scale`: no per-head
    rescaling), stated by one colorbar; when the maps are softmax (or pooling) rows, the
    colorbar marks the uniform level 1/N.

    Args:
        A: ``(B|1, M, N, N)`` affinity (or ``(M, N, N)`` / ``(N, N)``).
        grid: the layer's ``(H, W)`` token grid.
        query: ``(y, x)`` on that grid.
        image: the input ``(C, H_img, W_img)`` / ``(H_img, W_img)``; ``None`` draws maps alone.
        heads: which heads (default all, at most :data:`MAX_PANELS` of them: the first ones, and the
            title says how many were left out; name them to see others); axes: existing axes, one per head.
        scale: a scale shared with other panels (default: the one of these maps).
        colorbar: draw the colorbar (``False`` when the caller draws one for ``scale``).

    Returns:
        the ``Figure``; panel k's ``images[-1]`` holds the (upsampled) map of head ``heads[k]``.
    """
    maps = query_maps(A, grid, query, batch=batch)
    h, w = maps.shape[-2:]
    q = query_index(query, (h, w))
    qy, qx = divmod(q, w)
    chosen = pick_heads(heads, maps.shape[0])
    if not chosen:
        raise ValueError(f"heads must name at least one head, got {heads!r}")
    left_out = ""
    if heads is None and axes is None and len(chosen) > MAX_PANELS:
        left_out = f" (maps 0-{MAX_PANELS - 1} of {len(chosen)}: heads= picks others)"
        chosen = chosen[:MAX_PANELS]
    check_choice("mode", mode, ("nearest", "bilinear"))
    if ncols is not None:
        check_positive_int("ncols", ncols)
    alpha = check_float("alpha", alpha, low=0, high=1)
    check_cmap("cmap", cmap)
    check_scale("scale", scale)
    _check_title(title)
    check_bool("colorbar", colorbar)
    check_finite(f"the query maps of query {(qy, qx)}", maps[chosen])
    if image is not None and not isinstance(image, (torch.Tensor, np.ndarray)):
        raise TypeError(f"image must be a torch.Tensor, a numpy array or None, got {type(image).__name__}")
    if image is not None:
        check_finite("image", torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image))
    img = None if image is None else image_array(image)
    size = (h, w) if img is None else img.shape[:2]
    up = upsample_maps(maps[chosen], size, mode=mode).numpy()
    scale = _with_cmap(scale or maps_scale(maps[chosen].numpy()), cmap)
    fig, axs = axes_grid(len(chosen), axes=axes, ncols=ncols)
    sy, sx = size[0] / h, size[1] / w
    peak = max(abs(scale.vmin), abs(scale.vmax))
    for ax, m, amap in zip(axs, chosen, up):
        if img is not None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        # over an image, opacity grows with |A| so that tokens given no weight show the image
        opacity = alpha * np.sqrt(np.clip(np.abs(amap) / peak, 0, 1)) if img is not None else None
        ax.imshow(amap, cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax, alpha=opacity,
                  interpolation="nearest")
        ax.add_patch(_query_box(qy, qx, sy, sx))
        ax.set_title(f"head {m}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar:
        add_colorbar(fig, scale, axs, label=f"A[q, j] (query {(qy, qx)})")
    explain_query_marker(fig)
    if axes is None or title:
        fig.suptitle((title if title is not None else f"query {(qy, qx)} on grid {(h, w)}") + left_out,
                     fontsize=10)
    return fig


#: The caption that explains the query marker, once per figure (found by its gid).
MARKER_CAPTION = f"{QUERY_MARKER} square: the query token q; colour: A[q, j], the weight q gives token j"


def explain_query_marker(fig) -> None:
    """Say on ``fig`` (once) what the square of the query maps (:data:`QUERY_MARKER`) is."""
    if not any(t.get_gid() == "query-marker-caption" for t in fig.texts):
        # the figure's x label, not a free text: a constrained layout makes room for it below the panels
        # (a free text at the bottom edge is drawn over them); a figure that has its own keeps it
        if fig.get_supxlabel():
            fig.text(0.5, 0.0, MARKER_CAPTION, ha="center", va="bottom", fontsize=MIN_FONTSIZE,
                     gid="query-marker-caption")
        else:
            fig.supxlabel(MARKER_CAPTION, fontsize=MIN_FONTSIZE, gid="query-marker-caption")


def _query_box(qy, qx, sy, sx):
    from matplotlib.patches import Rectangle

    return Rectangle((qx * sx - 0.5, qy * sy - 0.5), sx, sy, fill=False, ec=QUERY_MARKER, lw=1.8,
                     label="query token")


# ------------------------------------------------------------------- the comparison figure

FAMILIES = {
    "dwconv": "depthwise conv\n(static, local)",
    "attention": "self-attention\n(dynamic, dense)",
    "tokenmlp": "MLP-Mixer\n(static, dense)",
    "container": "Container\n(α·attention + β·conv)",
}


def grid_features(image, dim: int, grid, seed: int = 0) -> torch.Tensor:
    """Token features ``(1, dim, H, W)`` of an image on a coarse grid (float64).

    The image is area-averaged to ``grid``; each token gets its 3 x 3 neighbourhood of
    intensities (per channel, zero padded) and its (y, x) position in [-1, 1], mapped to
    ``dim`` channels by a fixed random matrix (``seed``), then scaled to norm ``sqrt(dim)``.
    Similar-looking tokens thus get similar features, which is what makes attention's
    affinity content-dependent.
    """
    dim = check_positive_int("dim", dim)
    grid = check_int_or_pair("grid", grid)
    seed = check_seed("seed", seed)
    if not isinstance(image, (torch.Tensor, np.ndarray)):
        raise TypeError(f"image must be a torch.Tensor or a numpy array, got {type(image).__name__}")
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if not (t.is_floating_point() or t.dtype == torch.uint8):
        raise TypeError(f"image must hold float (or uint8) pixels, got dtype {t.dtype}")
    t = t.detach().to("cpu", torch.float64)
    check_finite("image", t)
    if t.dim() == 2:
        t = t[None]
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"image must be (H, W), (C, H, W) or (1, C, H, W), got {tuple(t.shape)}")
    h, w = grid
    small = F.adaptive_avg_pool2d(t[None], (h, w))
    small = (small - small.mean()) / (small.std() + 1e-8)
    patches = F.unfold(small, 3, padding=1).view(1, -1, h, w)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                            torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    feats = torch.cat([patches, 0.5 * ys[None, None], 0.5 * xs[None, None]], dim=1)
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(dim, feats.shape[1], generator=gen, dtype=torch.float64) / feats.shape[1] ** 0.5
    x = torch.einsum("dc,bchw->bdhw", proj, feats)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * dim**0.5


def comparison_mixers(dim: int, grid, seed: int = 0, heads: int = 2, kernel_size: int = 3) -> dict:
    """The four mixers of :func:`comparison_figure`: ``{family: mixer}``, float64, eval mode.

    Each is built by the registry (``unifiedctx.mixers.create``) from ``torch.manual_seed(seed)``
    with its own initialisation, so Container's attention half is the attention mixer's (same
    seed, same parameter order). So that Container is literally ``alpha * attention + beta *
    conv`` of the panels beside it, its static kernel is the depthwise conv's: loaded with
    ``load_state_dict`` into the entry of its own state dict that holds its
    ``static_kernels()`` (no submodule is named). The global RNG is left as it was.
    """
    from ..mixers import create

    dim, grid = check_positive_int("dim", dim), check_int_or_pair("grid", grid)
    seed = check_seed("seed", seed)
    options = {"dwconv": {"kernel_size": kernel_size}, "attention": {"heads": heads},
               "tokenmlp": {"grid": tuple(grid)},
               "container": {"heads": heads, "kernel_size": kernel_size}}
    out = {}
    with torch.random.fork_rng(devices=[]):
        for name, opts in options.items():
            torch.manual_seed(seed)
            out[name] = create(_registry_name(name), dim=dim, **opts).double().eval()
    load_static_kernels(out["container"], out["dwconv"].static_kernels())
    return out


def load_static_kernels(mixer, kernels: torch.Tensor) -> None:
    """Make ``kernels`` ``(C, kh, kw)`` the learned static kernel of ``mixer``.

    Through the contract only: the entry of ``mixer.state_dict()`` whose storage holds
    ``mixer.static_kernels()`` is replaced and the dict loaded back (``load_state_dict``).
    """
    own = mixer.static_kernels()
    if own is None:
        raise ValueError(f"{type(mixer).__name__} has no static kernel (static_kernels() is None)")
    if tuple(kernels.shape) != tuple(own.shape):
        raise ValueError(f"kernels must have shape {tuple(own.shape)}, got {tuple(kernels.shape)}")
    state = mixer.state_dict()
    ptr = own.untyped_storage().data_ptr()
    (key,) = [k for k, v in state.items() if v.untyped_storage().data_ptr() == ptr]
    state[key] = kernels.detach().reshape(state[key].shape).to(state[key])
    mixer.load_state_dict(state)


def _registry_name(family: str) -> str:
    """``tokenmlp`` is registered under its new name after issue 9, ``mixer`` before."""
    from ..mixers import REGISTRY

    return family if family in REGISTRY or family != "tokenmlp" else "mixer"


@torch.no_grad()
def comparison_affinities(image, dim: int = 16, grid=(8, 8), seed: int = 0, heads: int = 2,
                          kernel_size: int = 3) -> dict[str, torch.Tensor]:
    """Head-0 affinities ``{family: (N, N)}`` of the four families for one image (float64).

    Each is the mixer's ``components(x)`` entry of its own kind (``"mixed"`` for Container:
    ``alpha * A_attention + beta * mean_c A_dwconv[c]`` over the channels of head 0).
    """
    x = grid_features(image, dim, grid, seed=seed)
    mixers = comparison_mixers(dim, grid, seed=seed, heads=heads, kernel_size=kernel_size)
    return {name: mod.components(x)[mod.kind][0, 0].detach().clone() for name, mod in mixers.items()}


def comparison_figure(image, dim: int = 16, grid=(8, 8), query=None, seed: int = 0,
                      heads: int = 2, kernel_size: int = 3, mode: str = "nearest"):
    """The paper's comparison, computed: conv, attention, MLP-Mixer and Container side by side.

    For one input image (a digit or an RGB photo), each family's mixer (built by
    ``unifiedctx.mixers.create`` with seeded initial weights on a ``grid`` of tokens with
    ``dim`` channels, see :func:`comparison_mixers` and :func:`grid_features`) gives an
    affinity ``A`` (head 0 shown). Top row: the N x N matrix (banded for the convolution, dense
    for the others; input-dependent only for attention and Container). Bottom row: the query's
    row of ``A`` folded onto the grid and laid over the image. Each column has one colour scale
    (its colorbar, shared by the matrix and the map; 1/N marked for the softmax). ``query=(y,
    x)`` on the grid defaults to the token with the brightest average intensity.

    Returns:
        the ``Figure`` (2 rows x 4 columns; the matrices are ``fig.axes[0:4]``'s images).
    """
    grid = check_int_or_pair("grid", grid)
    check_choice("mode", mode, ("nearest", "bilinear"))
    if query is not None:
        query_index(query, grid)
    affs = comparison_affinities(image, dim=dim, grid=grid, seed=seed, heads=heads,
                                 kernel_size=kernel_size)
    if query is None:
        t = torch.as_tensor(image_array(image))
        t = t.mean(-1) if t.dim() == 3 else t
        small = F.adaptive_avg_pool2d(t[None, None], grid)[0, 0]
        query = divmod(int(small.argmax()), grid[1])
    fig, axes = axes_grid(8, ncols=4, size=2.9)
    for col, (name, a) in enumerate(affs.items()):
        scale = scale_for(a.numpy())
        plot_affinity_matrix(a, grid=grid, ax=axes[col], title=FAMILIES[name], colorbar=False, scale=scale)
        plot_query_maps(a, grid, query, image=image, axes=[axes[4 + col]], mode=mode, title="",
                        scale=scale, colorbar=False)
        axes[col].set_xlabel("key j (grid row)", fontsize=MIN_FONTSIZE)
        axes[col].set_ylabel("query i (grid row)" if col == 0 else "", fontsize=MIN_FONTSIZE)
        axes[4 + col].set_title(f"query {tuple(query)}: A[q, :]", fontsize=MIN_FONTSIZE + 1)
        add_colorbar(fig, scale, [axes[col], axes[4 + col]], shrink=0.7)
    fig.suptitle(f"One operator, four affinities: head 0 on a {grid[0]}x{grid[1]} grid, {dim} channels, "
                 "seeded initial weights", fontsize=11)
    return fig
