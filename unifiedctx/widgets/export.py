"""The explorer as ONE static HTML page: every map precomputed, no kernel, no network.

:func:`write_html` (what ``AffinityExplorer.to_html(path)`` calls) reads every layer, head,
component and query of every model and image from :class:`~.explorer_data.ExplorerData`,
quantises each component's ``(M, N, N)`` affinity to uint8 on its own colour scale (the same
:class:`~unifiedctx.viz.scales.Scale` the widget shows), compresses it (gzip) and embeds it as
base64 in a JSON block of the page, with the display images (uint8 RGB), the colormaps (256
RGB entries each) and the page's own CSS and JavaScript, all inline. The browser decompresses
with the standard ``DecompressionStream`` (every current browser; Chromium 80+, Firefox 113+,
Safari 16.4+) and draws with canvases; a click on the image moves the query, selectors pick
the model, image, layer, head and component, and the query is carried over to a new layer's or
model's grid as in the widget.

Quantisation (``u`` the stored byte, ``v = vmax``)::

    non-negative:  u = round(255 * a / v)              a = u / 255 * v
    signed:        u = 128 + round(127 * a / v)        a = (u - 128) / 127 * v   (0 is exact)

so a map is read back within ``v / 254`` of the float affinity. A component that does not
depend on the image (a static affinity) is stored once for all images.

Through depth: for each mode of ``depth`` (default ``("rollout",)``) every layer stores, per
image, every query's map on the input pixels (``(N, H_in, W_in)`` from
:meth:`~.explorer_data.ExplorerData.depth_rows`), each query quantised on its own scale
``[0, vmax_q]`` with ``vmax_q = max(peak_q, 1 / (H_in W_in))`` (the widget's
:func:`~.explorer_data.depth_scale`), the ``vmax_q`` listed beside. The rollout is one
composition per layer and image; the ERF costs one backward per query (``N`` per layer and
image), which is why it goes in only when asked for (``depth=("rollout", "ERF")``).
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import numpy as np

from ..viz.scales import DIVERGING, SEQUENTIAL, Scale
from . import rendering
from .explorer_data import DEPTH_MODES, ExplorerData
from .page import PAGE

#: Default size limit of the written page, in MB (10^6 bytes).
MAX_MB = 20.0


def quantise(a: np.ndarray, scale: Scale) -> np.ndarray:
    """``a`` as uint8 on ``scale`` (see the module docstring)."""
    v = max(abs(scale.vmin), abs(scale.vmax))
    if scale.signed:
        return (128 + np.rint(np.clip(a / v, -1, 1) * 127)).astype(np.uint8)
    return np.rint(np.clip(a / v, 0, 1) * 255).astype(np.uint8)


def dequantise(u: np.ndarray, scale: dict | Scale) -> np.ndarray:
    """The inverse of :func:`quantise` (float64), from a ``Scale`` or its exported dict."""
    get = scale.get if isinstance(scale, dict) else lambda k: getattr(scale, k)
    v = max(abs(get("vmin")), abs(get("vmax")))
    u = np.asarray(u, dtype=np.float64)
    return (u - 128) / 127 * v if get("signed") else u / 255 * v


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(gzip.compress(np.ascontiguousarray(array).tobytes(), 6, mtime=0)).decode()


def _scale_dict(scale: Scale) -> dict:
    return {"cmap": scale.cmap, "vmin": scale.vmin, "vmax": scale.vmax, "signed": scale.signed,
            "uniform": scale.uniform, "keys": scale.keys, "text": scale.describe()}


class TooLarge(ValueError):
    """The page would exceed its size limit."""


def quantise_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Through-depth maps ``(N, H_in, W_in)`` (non-negative) as uint8, each row on its own scale:
    ``u = round(255 * a / vmax_q)`` with ``vmax_q = max(peak_q, 1 / (H_in W_in))``. Returns
    ``(u, vmax)``; ``a = u / 255 * vmax_q`` reads a map back within ``vmax_q / 510``."""
    flat = rows.reshape(len(rows), -1)
    vmax = np.maximum(flat.max(axis=1), 1.0 / flat.shape[1])
    return np.rint(np.clip(flat / vmax[:, None], 0, 1) * 255).astype(np.uint8).reshape(rows.shape), vmax


def _check_depth(depth) -> tuple[str, ...]:
    modes = (depth,) if isinstance(depth, str) else tuple(depth or ())
    for mode in modes:
        if mode not in DEPTH_MODES[1:]:
            raise ValueError(f"depth must list through-depth views from {DEPTH_MODES[1:]} "
                             f"(or be empty), got {depth!r}")
    return modes


def payload(data: ExplorerData, display: list[np.ndarray], *, start: dict, alpha: float = 0.75,
            panel: int = 256, images=None, max_mb: float = MAX_MB, title: str = "Affinity explorer",
            depth=("rollout",)) -> dict:
    """The data of the page: models, images, colormaps, every layer's quantised maps and, for
    each mode in ``depth``, every query's through-depth map (see the module docstring).

    ``images`` (indices, default all) picks which images go in; a page over ``max_mb`` is
    refused with a :class:`TooLarge` error (a ``ValueError``) that says how big it would be and
    what to pass instead.
    """
    modes = _check_depth(depth)
    picks = list(range(len(data.images))) if images is None else [int(i) for i in images]
    if not picks or any(not 0 <= i < len(data.images) for i in picks):
        raise ValueError(f"images must be indices in 0..{len(data.images) - 1}, got {images!r}")
    limit, used = int(max_mb * 1e6), 0

    def count(text: str) -> str:
        nonlocal used
        used += len(text)
        if used > limit:
            raise TooLarge(f"the explorer page would be over {max_mb:g} MB (max_mb) with {len(picks)} "
                           f"images and {len(data.models)} models; pass fewer images (images=[0, 1]), "
                           f"fewer models, depth=() (no through-depth maps), or a larger max_mb")
        return text

    pictures = [rendering.to_uint8(display[i]) for i in picks]
    h, w = pictures[0].shape[:2]
    rgb = [count(base64.b64encode(p.tobytes()).decode()) for p in pictures]
    luts = {name: base64.b64encode(rendering.to_uint8(rendering.colormap_lut(name)).tobytes()).decode()
            for name in (SEQUENTIAL, DIVERGING)}
    out = {"title": title, "panel": int(panel), "alpha": float(alpha), "models": list(data.models),
           "images": {"h": h, "w": w, "rgb": rgb}, "luts": luts, "layers": {}, "depth_modes": list(modes),
           "depth_cmap": SEQUENTIAL}
    start = dict(start)
    if start.get("depth", "off") not in modes:
        start["depth"] = "off"
    start["image_index"] = picks.index(start["image_index"]) if start["image_index"] in picks else 0
    start["query"] = list(start["query"])
    out["start"] = start
    for model in data.models:
        layers = []
        for layer, info in data.catalogue(model).items():
            info = data.info(model, layer)
            components = []
            for component, heads in info.heads.items():
                shared = info.image_independent(component)
                entries = []
                for i in picks[:1] if shared else picks:
                    scale = data.scale(model, i, layer, component)
                    u = quantise(data.affinity(model, i, layer, component), scale)
                    entries.append({"scale": _scale_dict(scale), "data": count(_pack(u))})
                components.append({"name": component, "heads": int(heads), "shared": shared, "maps": entries})
            through = {}
            for mode in modes:
                try:
                    quantised = [quantise_rows(data.depth_rows(model, i, layer, mode)) for i in picks]
                except (TypeError, ValueError):  # a model the rollout cannot read: the page says so
                    continue
                entries = [{"vmax": vmax.tolist(), "data": count(_pack(u))} for u, vmax in quantised]
                through[mode] = {"input": list(quantised[0][0].shape[1:]), "maps": entries}
            layers.append({"name": layer, "kind": info.kind, "grid": list(info.grid),
                           "description": info.description, "unit": info.head_unit,
                           "components": components, "depth": through})
        out["layers"][model] = layers
    return out


def write_html(data: ExplorerData, display: list[np.ndarray], path, *, start: dict, alpha: float = 0.75,
               panel: int = 256, images=None, max_mb: float = MAX_MB,
               title: str = "Affinity explorer", depth=("rollout",)) -> Path:
    """Write the explorer's static page to ``path`` (atomically) and return the path.

    See :func:`payload` for ``images``, ``max_mb`` and ``depth``; the page is one file, with nothing
    fetched from anywhere (inline CSS, JavaScript and data; no ``<link>``, no ``src=``).
    """
    from ..train.history import write_atomic

    body = payload(data, display, start=start, alpha=alpha, panel=panel, images=images, max_mb=max_mb,
                   title=title, depth=depth)
    blob = json.dumps(body, separators=(",", ":")).replace("</", "<\\/")
    page = PAGE.replace("{{TITLE}}", title.replace("<", "&lt;")).replace("{{DATA}}", blob)
    if len(page) > max_mb * 1e6:
        raise TooLarge(f"the explorer page would be {len(page) / 1e6:.1f} MB, over max_mb={max_mb:g}")
    path = Path(path)
    write_atomic(path, page)
    return path


def read_payload(path) -> dict:
    """The embedded data of a page written by :func:`write_html` (for tests and tools)."""
    text = Path(path).read_text()
    start = text.index('<script type="application/json" id="ucx-data">') + len(
        '<script type="application/json" id="ucx-data">')
    return json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))


def unpack_depth(entry: dict, shape) -> np.ndarray:
    """One exported through-depth entry back to its ``(N, H_in, W_in)`` float maps."""
    raw = gzip.decompress(base64.b64decode(entry["data"]))
    u = np.frombuffer(raw, np.uint8).reshape(len(entry["vmax"]), *shape).astype(np.float64)
    return u / 255 * np.asarray(entry["vmax"])[:, None, None]


def unpack(entry: dict, heads: int, n: int) -> np.ndarray:
    """One exported component entry back to its ``(M, N, N)`` float affinity."""
    raw = gzip.decompress(base64.b64decode(entry["data"]))
    return dequantise(np.frombuffer(raw, np.uint8).reshape(heads, n, n), entry["scale"])
