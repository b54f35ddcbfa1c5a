"""The one colour rule of the library: which colormap, which limits, and the uniform level.

Every picture of an affinity (matrix plots, query maps, the comparison figure, kernels, the
explorer and its static page) takes its colours from :func:`scale_for`::

    non-negative values (softmax, pooling)  ->  SEQUENTIAL, limits [0, max]
    signed values (conv kernels, MLP-Mixer weights, alpha-beta mixes, signed affinities)
                                            ->  DIVERGING, limits [-max|v|, +max|v|] (0 in the middle)

Signed or not is read from the data (any value below 0). When the maps are rows of a
row-stochastic affinity (every row non-negative and summing to 1: softmax attention, pooling),
the scale also carries the uniform level ``1/N``, which the colorbars mark: a head that
"peaks" at 0.03 on a grid whose uniform level is 0.016 is then seen for what it is.
All heads of a figure share one scale (one call of :func:`scale_for` over all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_finite

#: Colormap of non-negative quantities (softmax, pooling, |A|).
SEQUENTIAL = "magma"
#: Colormap of signed quantities, centred at 0 (red positive, blue negative, white zero).
DIVERGING = "RdBu_r"
#: Smallest tick-label size in points used by the library's figures.
MIN_FONTSIZE = 8
#: The colour of the query marker in every picture of the library: the figures' squares, the
#: explorer's outline (live and exported) and the texts that explain them. Neither colormap holds it
#: (magma runs black, purple, orange, pale yellow; RdBu_r blue, white, red), so it stands out on both.
QUERY_MARKER = "cyan"


@dataclass(frozen=True)
class Scale:
    """A colour scale: ``cmap`` over ``[vmin, vmax]``; ``uniform`` is 1/N for softmax-like maps."""

    cmap: str
    vmin: float
    vmax: float
    signed: bool
    uniform: float | None = None
    keys: int | None = None  # N, the number of tokens a row spreads over (for the "1/N" label)
    peak: float | None = None  # the largest |value| it was made for (vmax is 1 when that is 0)

    def describe(self) -> str:
        """One line that states the scale, e.g. ``"0 to 0.031 (magma); uniform 1/64 = 0.0156"``."""
        text = f"{self.vmin:.3g} to {self.vmax:.3g} ({self.cmap}"
        text += ", centred at 0)" if self.signed else ")"
        if self.uniform is not None:
            text += f"; uniform 1/{self.keys} = {self.uniform:.3g}"
        return text

    def normalise(self, values) -> np.ndarray:
        """``values`` mapped to ``[0, 1]`` on this scale (clipped), the position in the colormap."""
        span = self.vmax - self.vmin
        return np.clip((np.asarray(values, dtype=np.float64) - self.vmin) / span, 0.0, 1.0)


def check_cmap(name: str, cmap, none_ok: bool = True):
    """Return ``cmap`` if it is a matplotlib colormap or the name of a registered one (``None``
    too when ``none_ok``); an unknown name is our ``ValueError`` with close names suggested, not
    matplotlib's ``KeyError``."""
    from matplotlib import colormaps
    from matplotlib.colors import Colormap

    from ..validation import suggest

    if (cmap is None and none_ok) or isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"{name} must be a colormap name (like {SEQUENTIAL!r}) or a matplotlib Colormap, "
                        f"got {type(cmap).__name__} {cmap!r}")
    if cmap not in colormaps:
        raise ValueError(f"{name} must be the name of a matplotlib colormap, got {cmap!r}."
                         f"{suggest(cmap, list(colormaps))}")
    return cmap


def check_scale(name: str, scale) -> Scale | None:
    """Return ``scale`` if it is ``None`` or a :class:`Scale` with finite limits, ``vmin < vmax``."""
    if scale is None:
        return None
    if not isinstance(scale, Scale):
        raise TypeError(f"{name} must be a unifiedctx.viz.Scale (from scale_for) or None, "
                        f"got {type(scale).__name__}")
    if not (np.isfinite(scale.vmin) and np.isfinite(scale.vmax)) or not scale.vmin < scale.vmax:
        raise ValueError(f"{name} must have finite limits vmin < vmax, got {scale.vmin} to {scale.vmax}")
    return scale


def symmetric_limits(values) -> tuple[float, float]:
    """``(-v, v)`` with v the largest absolute value (1 if all are zero): a diverging scale."""
    v = float(np.nanmax(np.abs(np.asarray(values)))) if np.size(values) else 1.0
    v = v if v > 0 else 1.0
    return -v, v


def rows_are_distributions(rows, atol: float = 1e-5) -> bool:
    """True when every row (last axis) of ``rows`` is non-negative and sums to 1 (softmax, pooling)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0 or (rows < 0).any():
        return False
    return bool(np.allclose(rows.sum(axis=-1), 1.0, atol=atol, rtol=0))


def scale_for(values, *, rows=None, signed: bool | None = None, atol: float = 1e-5) -> Scale:
    """The colour scale of ``values`` (any shape: one map, all heads' maps, a whole affinity).

    ``signed`` (default: read from the data, any value < 0) picks the diverging colormap with
    symmetric limits, else the sequential one with ``vmin = 0``. ``rows`` (default: ``values``
    itself) are the affinity rows the values come from, ``(..., N)``: when they are all
    distributions (:func:`rows_are_distributions`, row sums within ``atol`` of 1: looser for
    numbers stored at a lower precision, like a training run's float16 snapshots) the scale carries
    ``uniform = 1/N``.

    Values with a NaN or an infinity are refused (``ValueError`` saying how many): a colour
    scale over them would draw garbage as if it were data.
    """
    values = _finite_array("values", values)
    rows = values if rows is None else _finite_array("rows", rows)
    if signed is not None and not isinstance(signed, bool):
        raise TypeError(f"signed must be True, False or None, got {type(signed).__name__} {signed!r}")
    if signed is None:
        signed = bool((values < 0).any())
    keys = rows.shape[-1] if rows.ndim else None
    uniform = 1.0 / keys if keys and rows_are_distributions(rows, atol=atol) else None
    largest = float(np.abs(values).max()) if values.size else 0.0
    if signed:
        vmin, vmax = symmetric_limits(values)
        return Scale(DIVERGING, vmin, vmax, True, uniform, keys, largest)
    peak = float(np.nanmax(values)) if values.size else 0.0
    vmax = peak if peak > 0 else 1.0
    if uniform is not None:
        vmax = max(vmax, uniform)
    return Scale(SEQUENTIAL, 0.0, vmax, False, uniform, keys, largest)


def merge_scales(scales) -> Scale:
    """The scale of several scales' values taken together, exactly :func:`scale_for` of them all
    (without holding them all): signed when any is; the largest limit; the uniform level ``1/N``
    only when every one carries it (every row of every part a distribution over the same N).
    What a colour scale fixed over a training run's epochs is."""
    scales = list(scales)
    if not scales or not all(isinstance(s, Scale) for s in scales):
        raise TypeError("scales must be a non-empty sequence of Scale")
    signed = any(s.signed for s in scales)
    largest = max(s.peak if s.peak is not None else max(abs(s.vmin), abs(s.vmax)) for s in scales)
    keys = {s.keys for s in scales}
    key = scales[0].keys if len(keys) == 1 else None
    uniform = scales[0].uniform if len({s.uniform for s in scales}) == 1 and key is not None else None
    vmax = largest if largest > 0 else 1.0
    if signed:
        return Scale(DIVERGING, -vmax, vmax, True, uniform, key, largest)
    return Scale(SEQUENTIAL, 0.0, max(vmax, uniform or 0.0), False, uniform, key, largest)


def row_limits(values, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``values`` (its last axis: one map) on its own colour range, by the rule of
    :func:`scale_for` with the kind of the shared ``scale``: signed, ``-max|row|`` to ``+max|row|``;
    non-negative, ``0`` to the row's peak (at least the uniform level ``1/N`` when ``scale`` carries
    one, so a flat softmax row is not stretched into contrast). A row of zeros gets the range
    ``[0, 1]`` (``[-1, 1]`` signed). Returns ``(vmin, vmax)``, each ``values.shape[:-1]``, float64.

    This is what a per-map colour scale shows: every map fills the colormap, so a head that looks
    at a few tokens is seen even when another head of the layer peaks ten times higher.
    """
    values = _finite_array("values", values)
    if scale.signed:
        vmax = np.abs(values).max(axis=-1)
        vmax = np.where(vmax > 0, vmax, 1.0)
        return -vmax, vmax
    vmax = values.max(axis=-1)
    if scale.uniform is not None:
        vmax = np.maximum(vmax, scale.uniform)
    return np.zeros_like(vmax), np.where(vmax > 0, vmax, 1.0)


def _finite_array(name: str, values) -> np.ndarray:
    """``values`` as a float64 array, refused when it is not numeric or holds non-finite values."""
    try:
        out = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numbers (a tensor or an array), "
                        f"got {type(values).__name__}") from None
    check_finite(name, out)
    return out


def maps_scale(maps) -> Scale:
    """The shared scale of query maps ``(M, H, W)`` (each one row of an affinity, N = H*W)."""
    maps = _finite_array("maps", maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (M, H, W), got {maps.shape}")
    return scale_for(maps, rows=maps.reshape(len(maps), -1))


def mappable(scale: Scale):
    """A matplotlib ``ScalarMappable`` of ``scale`` (what a colorbar is drawn from)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(norm=Normalize(scale.vmin, scale.vmax), cmap=colormaps[scale.cmap])


def add_colorbar(fig, scale: Scale, ax, label: str | None = None, **kwargs):
    """Draw the colorbar of ``scale`` beside ``ax`` (an axes or a list of them) and return it.

    The uniform level of softmax-like maps is a cyan line across the bar with the tick label
    ``"uniform 1/N"``; regular ticks too close to it are dropped so no labels collide.
    """
    check_scale("scale", scale)
    if scale is None:
        raise TypeError("scale must be a unifiedctx.viz.Scale (from scale_for), got None")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string or None, got {type(label).__name__}")
    kwargs.setdefault("shrink", 0.85)
    bar = fig.colorbar(mappable(scale), ax=ax, **kwargs)
    bar.ax.tick_params(labelsize=MIN_FONTSIZE)
    if label:
        bar.set_label(label, fontsize=MIN_FONTSIZE)
    if scale.uniform is not None:
        span = scale.vmax - scale.vmin
        ticks = [t for t in bar.get_ticks()
                 if scale.vmin <= t <= scale.vmax and abs(t - scale.uniform) > 0.12 * span]
        labels = [f"{t:.3g}" for t in ticks] + [f"uniform 1/{scale.keys}"]
        bar.set_ticks([*ticks, scale.uniform], labels=labels)
        bar.ax.axhline(scale.uniform, color="cyan", lw=1.5)
    bar.scale = scale  # what the bar shows, for readers and tests
    return bar
