"""The explorer as ONE static HTML page: the same front end, every map precomputed, no kernel.

:func:`write_html` (what ``AffinityExplorer.to_html(path)`` calls) embeds the explorer's own ES
module (``explorer.js``, its CSS) with ``page_model.js``, a stand-in for the kernel that answers
the module's requests from the page's data: every layer component of every model and image (and
every epoch of a training run's explorer) as the colour indices the live widget is sent
(:func:`~.explorer_payload.maps_entry`), on each colour scale of ``scales`` (default: every one the
explorer offers), and, for each mode of ``depth`` (default ``("rollout",)``), every query's
through-depth map (:func:`~.explorer_payload.depth_rows_entry`). The page's note describes what
it holds: the through-depth views it offers, and no other. A request for what the page does not
hold is answered with an error the page shows, as the kernel answers a bad request. Buffers are
gzip-compressed and base64-encoded inside one JSON block; the browser inflates them with
``DecompressionStream`` (Chromium 80+, Firefox 113+, Safari 16.4+). A component that does not
depend on the image (a static affinity) is stored once. The rollout is one composition per layer
and image; the ERF costs one backward per query, which is why it goes in only when asked for
(``depth=("rollout", "ERF")``).

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

from ..validation import check_choice, check_float, check_int
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
<p class="ucx-note">{note}</p>
<script type="application/json" id="ucx-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

#: The page's note, a sentence per thing the page holds (see :func:`page_note`).
NOTE_QUERY = ("Click on the image (or focus it and use the arrow keys) to choose the query token, outlined "
              "in {marker}. Each tile is one head's row of the affinity A for that token, folded onto the "
              "layer's grid and laid over the image.")
NOTE_SCALES = {
    "layer": "'one per layer': every tile of a layer shares one colour scale (the colorbar); for softmax "
             "maps the marked level is the uniform 1/N.",
    "map": "'one per map': each tile on its own scale, written over it (tiles are then not comparable by "
           "colour, but a head that looks at a few tokens is seen).",
    "fixed": "'fixed over epochs': one scale for the layer over every epoch, so what changes is seen.",
}
NOTE_EPOCHS = ("The maps were recorded while the network trained, at epochs {epochs}: move the epoch slider "
               "(or press play) and the query, layer and head stay where they are.")
NOTE_DEPTH = {
    "rollout": "rollout, the affinities up to this layer composed with their residuals",
    "ERF": "the effective receptive field |dy/dx| of this layer's output",
}


def page_note(explorer, modes, scales) -> str:
    """The page's note: how to use it, and what it holds (its colour scales, a run's epochs, the
    through-depth views it offers: never one it does not hold)."""
    from ..viz.scales import QUERY_MARKER
    from .explorer_state import compact_epochs

    parts = [NOTE_QUERY.format(marker=QUERY_MARKER)]
    parts.append("Colour scale: " + " ".join(NOTE_SCALES[m] for m in scales))
    if explorer.epochs:
        parts.append(NOTE_EPOCHS.format(epochs=compact_epochs(explorer.epochs)))
    if modes:
        views = "; ".join(NOTE_DEPTH[m] for m in modes)
        parts.append(f"'Through depth' adds the same query's context on the input pixels, on its own scale: "
                     f"{views}.")
    parts.append("Every map was computed in Python and stored in this page.")
    return " ".join(parts)


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


def _check_scales(scales, offered) -> tuple[str, ...]:
    if scales is None:
        return tuple(offered)
    picked = (scales,) if isinstance(scales, str) else scales
    if not isinstance(picked, (list, tuple)) or not picked:
        raise TypeError(f"scales must be a list of colour scales from {tuple(offered)}, got {scales!r}")
    return tuple(check_choice(f"scales[{k}]", m, offered) for k, m in enumerate(picked))


def payload_of(explorer, *, images=None, max_mb: float = MAX_MB, depth=("rollout",), scales=None) -> dict:
    """The page's data: the front end's traits, the pictures and colormaps, and every answer it may
    ask for (see the module docstring); over ``max_mb`` it is refused with :class:`TooLarge`."""
    data = explorer.data
    modes = _check_depth(depth)
    missing = [m for m in modes if m not in data.depth_modes]
    if missing:
        raise ValueError(f"depth={depth!r}: this explorer offers no {', '.join(missing)} view "
                         f"({getattr(data, 'no_depth_reason', 'not offered')}); pass depth=()")
    scales = _check_scales(scales, data.scale_modes)
    picks = _check_images(images, len(data.images))
    limit, used = int(max_mb * 1e6), 0

    def count(text: str) -> str:
        nonlocal used
        used += len(text)
        if used > limit:
            raise TooLarge(f"the explorer page would be over {max_mb:g} MB (max_mb) with {len(picks)} "
                           f"images, {len(data.models)} models, {len(scales)} colour scales"
                           + (f" and {len(data.epochs)} epochs" if data.epochs else "") +
                           "; pass fewer images (images=[0, 1]), fewer models, depth=() (no through-depth "
                           "maps), fewer scales (scales=['layer']) or a larger max_mb")
        return text

    start = explorer.view_state()
    start["depth"] = start["depth"] if start["depth"] in modes else "off"
    start["scale_mode"] = start["scale_mode"] if start["scale_mode"] in scales else scales[0]
    start["image_index"] = picks.index(start["image_index"]) if start["image_index"] in picks else 0
    setup = {**explorer.setup, "n_images": len(picks), "depth_modes": ["off", *modes],
             "scale_modes": list(scales)}
    epochs = list(data.epochs) or [None]
    size = explorer.setup["h"] * explorer.setup["w"] * 3
    pictures = b"".join(explorer.pictures[i * size:(i + 1) * size] for i in picks)
    maps, through = {}, {}
    for model, cat in explorer.catalog["models"].items():
        maps[model], through[model] = {}, {}
        for layer in cat["layers"]:
            name = layer["name"]
            maps[model][name] = {}
            for comp in layer["components"]:
                # [scale][epoch][image] -> entry; an epoch's key is its number ("null": no epochs)
                maps[model][name][comp["name"]] = {scale: {
                    json.dumps(epoch): [
                        _maps_entry(explorer, (model, i, name, comp["name"]), scale, epoch, count)
                        for i in (picks[:1] if comp["shared"] else picks)]
                    for epoch in epochs} for scale in scales}
            through[model][name] = {mode: _depth_entries(data, model, name, mode, picks, count)
                                    for mode in modes}
    return {"traits": {"setup": setup, "catalog": explorer.catalog, "shown": start},
            "pictures": count(base64.b64encode(pictures).decode()),
            "luts": base64.b64encode(explorer.luts).decode(), "maps": maps, "depth": through}


def _maps_entry(explorer, where, scale, epoch, count) -> dict:
    meta, buffer = payload.maps_entry(explorer.data, *where, explorer.cmap, scale, epoch)
    return {"meta": meta, "data": count(_pack(buffer))}


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
               depth=None, scales=None) -> Path:
    """Write ``explorer``'s static page to ``path`` (atomically) and return the path.

    See :func:`payload_of` for ``images``, ``max_mb``, ``depth`` (default ``("rollout",)``; ``()``
    for a training run's explorer, which holds no models) and ``scales``; the page is one file
    with nothing fetched from anywhere (inline CSS, script and data; no ``<link>``, no ``src=``).
    """
    from ..files import write_atomic

    path = _check_path(path)
    max_mb = check_float("max_mb", max_mb, low=0.0, low_open=True)
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__} {title!r}")
    if depth is None:
        depth = ("rollout",) if "rollout" in explorer.data.depth_modes else ()
    body = payload_of(explorer, images=images, max_mb=max_mb, depth=depth, scales=scales)
    script, css = page_script(), (HERE / "explorer.css").read_text() + "\n" + PAGE_CSS
    csp = (f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(css)}; "
           "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
    offered = body["traits"]["setup"]
    note = page_note(explorer, offered["depth_modes"][1:], offered["scale_modes"])
    page = PAGE.format(csp=csp, title=html.escape(title), css=css, data=embed_json(body), script=script,
                       note=html.escape(note))
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
