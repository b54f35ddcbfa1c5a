"""The explorer's inputs made ready for the front end, and the checks at its door.

The front end draws from bytes: the images as uint8 RGB (:func:`display_image`), and the
colormaps as 256 uint8 RGB entries each (:func:`lut_bytes`), the query marker's colour as RGB
(:func:`marker_rgb`). A colormap name is checked against
matplotlib's (:func:`check_cmap`), a model's weights must be finite (:func:`check_finite_model`).
:class:`FrontEnd` is the one ES module both widgets run (the explorer and the live view) with the state
they share with it.
"""

from __future__ import annotations

from pathlib import Path

import anywidget
import numpy as np
import torch
import traitlets
from torch import nn

from ..validation import check_choice
from ..viz.scales import DIVERGING, QUERY_MARKER, SEQUENTIAL

HERE = Path(__file__).resolve().parent


class FrontEnd(anywidget.AnyWidget):
    """The front end (``explorer.js``, ``explorer.css``) and the state every widget that runs it syncs:
    ``setup`` (sizes, colour scales, marker), ``pictures`` (the images as uint8 RGB), ``luts`` (the
    colormaps), ``catalog`` (models and layers) and ``shown`` (what is drawn)."""

    _esm = HERE / "explorer.js"
    _css = HERE / "explorer.css"
    setup = traitlets.Dict().tag(sync=True)
    pictures = traitlets.Bytes(b"").tag(sync=True)
    luts = traitlets.Bytes(b"").tag(sync=True)
    catalog = traitlets.Dict().tag(sync=True)
    shown = traitlets.Dict().tag(sync=True)


def display_image(image) -> np.ndarray:
    """One image, ``(C, h, w)`` (channels first, as models take it) or ``(h, w)``, as uint8
    ``(h, w, 3)``: one channel grey, three RGB, any other count the channel mean; values
    stretched to ``[0, 255]`` (images are often normalised); a constant image is mid-grey."""
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"an image must have shape (C, H, W) or (H, W), got shape {arr.shape}")
    arr = arr.transpose(1, 2, 0) if arr.shape[0] == 3 else np.repeat(arr.mean(0)[..., None], 3, axis=2)
    if not np.isfinite(arr).all():
        raise ValueError("images holds NaN or infinite values: the explorer cannot show them")
    lo, hi = float(arr.min()), float(arr.max())
    unit = np.full(arr.shape, 0.5) if hi - lo < 1e-12 else (arr - lo) / (hi - lo)
    return (unit * 255.0 + 0.5).astype(np.uint8)


def check_cmap(cmap) -> str | None:
    """``None`` (the library's colormaps) or the name of a matplotlib colormap."""
    if cmap is None:
        return None
    from matplotlib import colormaps

    return check_choice("cmap", cmap, sorted(colormaps))


def lut_bytes(cmap: str | None = None) -> tuple[bytes, list[str]]:
    """The colormaps the front end may need (the library's two and ``cmap``), 256 uint8 RGB each,
    concatenated, with their names in that order."""
    from matplotlib import colormaps

    names = list(dict.fromkeys([SEQUENTIAL, DIVERGING] + ([cmap] if cmap else [])))
    tables = [colormaps[n](np.linspace(0.0, 1.0, 256))[:, :3] for n in names]
    return b"".join((np.clip(t, 0, 1) * 255.0 + 0.5).astype(np.uint8).tobytes() for t in tables), names


def marker_rgb() -> list[int]:
    """The library's query-marker colour (:data:`~unifiedctx.viz.scales.QUERY_MARKER`) as uint8 RGB:
    the outline the front end draws around the query cell."""
    from matplotlib.colors import to_rgb

    return [int(round(255 * c)) for c in to_rgb(QUERY_MARKER)]


def check_finite_model(name: str, model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite weight or buffer (its maps would be meaningless)."""
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for key, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"model {name!r} has {bad} non-finite values (NaN or inf) in its {kind} "
                                 f"{key!r}: the explorer refuses to draw its maps (a diverged run? load "
                                 f"a checkpoint saved before it diverged)")
