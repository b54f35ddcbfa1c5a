"""The explorer as ONE static HTML page: the same front end, every map precomputed, no kernel.

:func:`write_html` (what ``AffinityExplorer.to_html(path)`` calls) embeds the explorer's own ES
module (``explorer.js``, its CSS) with ``page_model.js``, a stand-in for the kernel that answers
the module's requests from the page's data: every layer component of every model and image as
the colour indices the live widget is sent (:func:`~.explorer_payload.maps_entry`), and, for each
mode of ``depth`` (default ``("rollout",)``), every query's through-depth map
(:func:`~.explorer_payload.depth_rows_entry`). Buffers are gzip-compressed and base64-encoded
inside one JSON block; the browser inflates them with ``DecompressionStream`` (Chromium 80+,
Firefox 113+, Safari 16.4+). A component that does not depend on the image (a static affinity)
is stored once. The rollout is one composition per layer and image; the ERF costs one backward
per query, which is why it goes in only when asked for (``depth=("rollout", "ERF")``).

Safe to share: the DOM is built with ``textContent`` only, the JSON block escapes ``<``, ``>``,
``&``, U+2028 and U+2029 (so no string can close the ``<script>`` or open a comment), the title
is HTML-escaped, and a Content-Security-Policy allows only the page's own script and style (by
their SHA-256) and nothing else: no inline handler, no other script, no request.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import json
import os
from pathlib import Path

import numpy as np

from ..validation import check_float, check_int
from . import explorer_payload as payload
from .explorer_data import DEPTH_MODES

HERE = Path(__file__).resolve().parent

#: Default size limit of the written page, in MB (10^6 bytes).
MAX_MB = 20.0

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1 class="ucx-title">{title}</h1>
<div id="ucx-root"></div>
<p class="ucx-note">Click on the image (or focus it and use the arrow keys) to choose the query token,
outlined in red. Each tile is one head's row of the affinity A for that token, folded onto the layer's
grid and laid over the image; all tiles share one colour scale (the colorbar), and for softmax maps the
cyan mark is the uniform level 1/N. "Through depth" adds the same query's context on the input pixels
with every layer up to this one taken into account (rollout: the affinities composed with their
residuals; ERF: |dy/dx|), on its own scale. Every map was computed in Python and stored in this page.</p>
<script type="application/json" id="ucx-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

PAGE_CSS = "body { margin: 16px; } .ucx-title { font: 600 18px system-ui, sans-serif; margin: 0 0 8px 0; } " \
           ".ucx-note { font: 12px system-ui, sans-serif; color: #555; max-width: 900px; }"


class TooLarge(ValueError):
    """The page would exceed its size limit."""


def embed_json(value) -> str:
    """``value`` as JSON that is safe inside ``<script type="application/json">``: no ``<``,
    ``>`` or ``&`` (so no ``</script>``, no ``<!--``), no U+2028/U+2029 (ASCII only)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_script() -> str:
    """The page's one script: the front end (``explorer.js`` without its ``export``) and the
    stand-in model (``page_model.js``) that renders it into ``#ucx-root``."""
    module = (HERE / "explorer.js").read_text()
    export = "export default { render };"
    if module.rstrip().splitlines()[-1] != export:
        raise RuntimeError(f"explorer.js must end with {export!r}")
    script = module.rstrip()[: -len(export)] + (HERE / "page_model.js").read_text()
    if "</script" in script.lower() or "<!--" in script:
        raise RuntimeError("the page's script must not contain '</script' or '<!--'")
    return script


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _pack(buffer: bytes) -> str:
    return base64.b64encode(gzip.compress(buffer, 6, mtime=0)).decode() if buffer else ""


def _check_depth(depth) -> tuple[str, ...]:
    modes = (depth,) if isinstance(depth, str) else tuple(depth or ())
    for mode in modes:
        if mode not in DEPTH_MODES[1:]:
            raise ValueError(f"depth must list through-depth views from {DEPTH_MODES[1:]} "
                             f"(or be empty), got {depth!r}")
    return modes


def _check_images(images, n: int) -> list[int]:
    if images is None:
        return list(range(n))
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise TypeError(f"images must be a list of image indices in 0..{n - 1}, got {images!r}")
    picks = [check_int(f"images[{k}]", i) for k, i in enumerate(images)]  # bool or float: TypeError
    if not picks or not all(0 <= i < n for i in picks):
        raise ValueError(f"images must be indices in 0..{n - 1}, got {images!r}")
    return picks


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__} {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a folder; give the HTML file to write, "
                         f"e.g. {str(path / 'explorer.html')!r}")
    for folder in path.parents:  # a missing folder is made; one that is a file cannot be
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"path {str(path)!r}: {str(folder)!r} is a file, not a folder")
            break
    return path


def payload_of(explorer, *, images=None, max_mb: float = MAX_MB, depth=("rollout",)) -> dict:
    """The page's data: the front end's traits, the pictures and colormaps, and every answer it may
    ask for (see the module docstring); over ``max_mb`` it is refused with :class:`TooLarge`."""
    data = explorer.data
    modes = _check_depth(depth)
    picks = _check_images(images, len(data.images))
    limit, used = int(max_mb * 1e6), 0

    def count(text: str) -> str:
        nonlocal used
        used += len(text)
        if used > limit:
            raise TooLarge(f"the explorer page would be over {max_mb:g} MB (max_mb) with {len(picks)} "
                           f"images and {len(data.models)} models; pass fewer images (images=[0, 1]), "
                           f"fewer models, depth=() (no through-depth maps), or a larger max_mb")
        return text

    start = explorer.view_state()
    start["depth"] = start["depth"] if start["depth"] in modes else "off"
    start["image_index"] = picks.index(start["image_index"]) if start["image_index"] in picks else 0
    setup = {**explorer.setup, "n_images": len(picks), "depth_modes": ["off", *modes]}
    size = explorer.setup["h"] * explorer.setup["w"] * 3
    pictures = b"".join(explorer.pictures[i * size:(i + 1) * size] for i in picks)
    maps, through = {}, {}
    for model, cat in explorer.catalog["models"].items():
        maps[model], through[model] = {}, {}
        for layer in cat["layers"]:
            name = layer["name"]
            maps[model][name] = {}
            for comp in layer["components"]:
                entries = []
                for i in picks[:1] if comp["shared"] else picks:
                    meta, buffer = payload.maps_entry(data, model, i, name, comp["name"], explorer.cmap)
                    entries.append({"meta": meta, "data": count(_pack(buffer))})
                maps[model][name][comp["name"]] = entries
            through[model][name] = {mode: _depth_entries(data, model, name, mode, picks, count)
                                    for mode in modes}
    return {"traits": {"setup": setup, "catalog": explorer.catalog, "shown": start},
            "pictures": count(base64.b64encode(pictures).decode()),
            "luts": base64.b64encode(explorer.luts).decode(), "maps": maps, "depth": through}


def _depth_entries(data, model: str, layer: str, mode: str, picks: list[int], count) -> list[dict]:
    entries = []
    for i in picks:
        try:
            rows = data.depth_rows(model, i, layer, mode)
        except (TypeError, ValueError) as error:  # a model the context code cannot read: the page says so
            meta = {"kind": "depth", "mode": mode, "warning": f"{mode} unavailable for this model: {error}",
                    "fields": [["depth", [f"{mode} unavailable for this model: {error}"]]]}
            return [{"meta": meta, "data": ""}]
        meta, buffer = payload.depth_rows_entry(mode, data.depth_steps(model, i, layer, mode), rows)
        entries.append({"meta": meta, "data": count(_pack(buffer))})
    return entries


def write_html(explorer, path, *, images=None, max_mb: float = MAX_MB, title: str = "Affinity explorer",
               depth=("rollout",)) -> Path:
    """Write ``explorer``'s static page to ``path`` (atomically) and return the path.

    See :func:`payload_of` for ``images``, ``max_mb`` and ``depth``; the page is one file with
    nothing fetched from anywhere (inline CSS, script and data; no ``<link>``, no ``src=``).
    """
    from ..files import write_atomic

    path = _check_path(path)
    max_mb = check_float("max_mb", max_mb, low=0.0, low_open=True)
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__} {title!r}")
    body = payload_of(explorer, images=images, max_mb=max_mb, depth=depth)
    script, css = page_script(), (HERE / "explorer.css").read_text() + "\n" + PAGE_CSS
    csp = (f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(css)}; "
           "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
    page = PAGE.format(csp=csp, title=html.escape(title), css=css, data=embed_json(body), script=script)
    if len(page) > max_mb * 1e6:
        raise TooLarge(f"the explorer page would be {len(page) / 1e6:.1f} MB, over max_mb={max_mb:g}")
    write_atomic(path, page)
    return path


def export_for_site(explorer, folder) -> Path:
    """Write ``explorer``'s page into ``folder`` under the first free name ``explorer-<k>.html``
    (never over another page) and return its path: what a displayed explorer does while the
    course executes for the static site (:mod:`unifiedctx.site`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = 1
    while (folder / f"explorer-{k}.html").exists():
        k += 1
    return write_html(explorer, folder / f"explorer-{k}.html")


def read_payload(path) -> dict:
    """The embedded data of a page written by :func:`write_html` (for tests and tools)."""
    text = Path(path).read_text()
    marker = '<script type="application/json" id="ucx-data">'
    start = text.index(marker) + len(marker)
    return json.loads(text[start:text.index("</script>", start)])


def unpack(entry: dict) -> np.ndarray:
    """One stored entry's buffer back to its bytes (uint8, flat)."""
    return np.frombuffer(gzip.decompress(base64.b64decode(entry["data"])), np.uint8) if entry["data"] else \
        np.zeros(0, np.uint8)
