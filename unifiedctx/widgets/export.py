"""The explorer as ONE static HTML page: the same front end, the maps precomputed, no kernel.

:func:`write_html` (what ``AffinityExplorer.to_html(path)`` calls) embeds the explorer's own ES
module (``explorer.js``, its CSS) with ``page_model.js``, a stand-in for the kernel that answers
the module's requests from the page's data: every layer component of every model and image (and
every epoch of a training run's explorer) on each colour scale of ``scales`` (default: every one the
explorer offers), in the smallest form that holds every query's maps (:func:`~.explorer_payload.page_form`):
a small component whole, as the colour indices the live widget is sent
(:func:`~.explorer_payload.maps_entry`);
a kernel layer as its kernels, cut by the border as each class of queries sees them, which the page places at
the query (:func:`~.explorer_payload.stencil_entry`: ConvNeXt-T's 18 depthwise layers take a few hundred kB,
not 3.8 GB); a windowed attention as its windows (:func:`~.explorer_payload.windows_entry`); any other big
layer
as the rows of a lattice of queries. Then, for each mode of ``depth`` (default ``("rollout",)``), each layer's
through-depth maps (:func:`~.explorer_payload.depth_rows_entry`) for every query, or for as many as fit.

The page never exceeds ``max_mb`` (default 20 MB): what does not fit is left out, in that order of
sacrifice (through-depth maps for a coarser lattice of queries, then whole entries), and the page's note says
what it left out (as does a :class:`LeftOut` warning and the payload's ``left_out``); a request for what it
does not hold is answered with a message naming what it does hold. The page's note describes what it holds:
the through-depth views it offers, and no other. Buffers are gzip-compressed and base64-encoded inside one
JSON block; the browser inflates them with ``DecompressionStream`` (Chromium 80+, Firefox 113+, Safari
16.4+). A component that does not depend on the image (a static affinity) is stored once. The rollout is one
composition per layer and image for all its queries; the ERF costs one backward per query, which is why it
goes in only when asked for (``depth=("rollout", "ERF")``).

Safe to share: the DOM is built with ``textContent`` only, the JSON block escapes ``<``, ``>``,
``&``, U+2028 and U+2029 (so no string can close the ``<script>`` or open a comment), the title
is HTML-escaped, and a Content-Security-Policy allows only the page's own script and style (by
their SHA-256) and nothing else: no inline handler, no other script, no request.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import html
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..validation import check_choice, check_float, check_int
from . import explorer_payload as payload
from .explorer_data import DEPTH_MODES

HERE = Path(__file__).resolve().parent

#: Default size limit of the written page, in MB (10^6 bytes).
MAX_MB = 20.0
#: Room kept in a page for its note (what it holds and what it left out).
NOTE_ROOM = 8000

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


def page_note(explorer, modes, scales, left_out=()) -> str:
    """The page's note: how to use it, and what it holds (its colour scales, a run's epochs, the
    through-depth views it offers: never one it does not hold), and what it left out to stay within its
    size."""
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
    if left_out:
        parts.append("To stay within its size, this page leaves out: " + "; ".join(left_out) + ".")
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


#: Through-depth maps per layer a page tries, most first (None: every query; 0: none).
DEPTH_QUERIES = (None, 256, 144, 100, 64, 36, 16, 9, 4, 1)
#: What a page gives up, rung by rung, until it fits: ``(queries per layer of the through-depth maps, every
#: colour scale (else only the first), big whole layers kept for a lattice of queries)``: fewer through-depth
#: queries down to 16, then the colour scales but the first (with as many queries again as then fit), then
#: fewer queries still, then whole layers thinned to a lattice, then no through-depth maps.
LADDER = (tuple((q, True, False) for q in DEPTH_QUERIES if q is None or q >= 16)
          + tuple((q, False, False) for q in DEPTH_QUERIES) + ((1, False, True), (0, False, True)))
#: A layer whose maps are stored for a lattice of queries keeps at most this many of them.
LATTICE_QUERIES = 64


class LeftOut(UserWarning):
    """What an exported page left out to stay within its size (the page says it too)."""


def lattice_for(grid, most: int | None) -> list[int]:
    """The queries of ``grid`` on the finest lattice through its centre that has at most ``most`` of them
    (None: every query)."""
    h, w = grid
    if most is None:
        return list(range(h * w))
    step = 1
    while len(payload.lattice(grid, step)) > max(most, 1):
        step += 1
    return payload.lattice(grid, step)


def _names(items: list, most: int = 6) -> str:
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _size(entry: dict) -> int:
    """The bytes ``entry`` takes in the page's JSON."""
    return len(embed_json(entry)) + 1


def payload_of(explorer, *, images=None, max_mb: float = MAX_MB, depth=("rollout",), scales=None,
               room: int | None = None) -> dict:
    """The page's data: the front end's traits, the pictures and colormaps, and every answer it may
    ask for (see the module docstring), within ``room`` bytes of data (default ``max_mb`` MB).

    Every layer component (the layer shown first) is stored in its compact form
    (:func:`~.explorer_payload.page_form`: whole, a kernel layer's kernels, a windowed attention's windows, or
    another big layer's rows on a lattice of queries), and every layer's through-depth maps for every query.
    When that does not fit, the page gives up, in the order of :data:`LADDER`, what it can best do without:
    through-depth maps for fewer queries per layer (the finest lattice through the centre with at most 256,
    144, ... 16 of them), the colour scales but the first (then again as many queries as fit, down to 1), big
    whole layers for a lattice of queries, the through-depth maps; then entries one by one, as they come.
    ``left_out`` says in words what is
    not stored (the page shows it); only a page that cannot hold even its pictures is refused
    (:class:`TooLarge`)."""
    data = explorer.data
    modes = _check_depth(depth)
    missing = [m for m in modes if m not in data.depth_modes]
    if missing:
        raise ValueError(f"depth={depth!r}: this explorer offers no {', '.join(missing)} view "
                         f"({getattr(data, 'no_depth_reason', 'not offered')}); pass depth=()")
    scales = _check_scales(scales, data.scale_modes)
    picks = _check_images(images, len(data.images))
    limit = int(max_mb * 1e6) if room is None else room
    setup = {**explorer.setup, "n_images": len(picks), "depth_modes": ["off", *modes],
             "scale_modes": list(scales)}
    size = explorer.setup["h"] * explorer.setup["w"] * 3
    pictures = base64.b64encode(b"".join(explorer.pictures[i * size:(i + 1) * size] for i in picks)).decode()
    used = len(pictures) + len(embed_json(explorer.catalog)) + len(embed_json(setup)) + 2 * len(explorer.luts)
    if used > limit:
        raise TooLarge(f"the explorer page would be over {max_mb:g} MB (max_mb) with only its front end and "
                       f"the pictures of {len(picks)} images and the catalogue of {len(data.models)} models; "
                       f"pass fewer images (images=[0, 1]), fewer models or a larger max_mb")

    first = explorer.view_state()
    order = [(model, la["name"]) for model, cat in explorer.catalog["models"].items() for la in cat["layers"]]
    order.sort(key=lambda ml: (ml != (first["model_name"], first["layer"]), ml[0] != first["model_name"]))
    entries = _map_entries(explorer, order, scales, picks)
    centres, refused = _centre_depths(explorer, modes, order, picks)
    grids = {(model, name): tuple(data.info(model, name).grid) for model, name in order}

    def estimate(rung) -> int:
        most, every_scale, thin = rung
        total = sum(_thinned(e)[1] if thin and e["thin"] else e["size"] for e in entries
                    if every_scale or e["scale"] == scales[0])
        if most != 0:  # an entry's meta once, its data and its per-query numbers per query
            total += sum(fixed + per_query * len(lattice_for(grids[key[1:3]], most))
                         for key, (fixed, per_query) in centres.items())
        return int(total * 1.02)

    rung = next((r for r in LADDER if estimate(r) <= limit - used), LADDER[-1])
    most, every_scale, thin = rung
    kept = list(scales) if every_scale else list(scales[:1])
    left_out, gone, thinned = [], [], []
    if not every_scale and len(scales) > 1:
        left_out.append(f"the colour scales {', '.join(repr(m) for m in scales[1:])} (this page offers "
                        f"{kept[0]!r} only)")
        setup["scale_modes"] = kept

    def fits(entry: dict) -> bool:
        nonlocal used
        if used + _size(entry) > limit:
            return False
        used += _size(entry)
        return True

    maps, failed, stored_forms = {}, set(), {}
    for e in entries:
        model, name, comp, scale, epoch, i = e["where"]
        by_epoch = maps.setdefault(model, {}).setdefault(name, {}).setdefault(comp, {}).setdefault(scale, {})
        stored = by_epoch.setdefault(json.dumps(epoch), [])
        if scale not in kept or e["where"][:5] in failed:
            continue
        entry = e["entry"]
        if thin and e["thin"]:
            entry = _thinned(e)[0]
            thinned.append(f"{name} ({entry['meta']['held']})")
        stored_forms[e["where"][:3]] = entry["meta"].get("form", "whole")
        if fits(entry):
            stored.append(entry)
        else:  # the page's list is one entry per image: one that does not fit leaves the others out too
            gone.append(f"{name} ({comp}, {scale} scale, image {i})")
            failed.add(e["where"][:5])
            stored.clear()
    partial = sorted({f"{e['where'][1]} ({e['entry']['meta']['held']})" for e in entries
                      if e["entry"]["meta"].get("form") == "lattice" and e["scale"] in kept
                      and len(e["entry"]["meta"]["queries"]) < e["grid"][0] * e["grid"][1]})
    if partial:
        left_out.append(f"the maps of layers that are neither small, nor kernels, nor windowed, for a "
                        f"lattice of queries only: {_names(partial)}")
    if thinned:
        left_out.append(f"the maps of big layers for a lattice of queries only: "
                        f"{_names(sorted(set(thinned)))}")
    if gone:
        left_out.append(f"the maps of {_names(gone)}: they do not fit (ask the explorer in Python for those)")
    through = {model: {name: {} for m, name in order if m == model} for model in maps}
    for mode in modes:
        _store_depth(explorer, mode, order, picks, through, fits, most, centres, refused, left_out)
    start = dict(first)
    start["depth"] = start["depth"] if start["depth"] in modes else "off"
    start["scale_mode"] = start["scale_mode"] if start["scale_mode"] in kept else kept[0]
    start["image_index"] = picks.index(start["image_index"]) if start["image_index"] in picks else 0
    catalog = copy.deepcopy(explorer.catalog)  # the page asks by query for what it stores by query
    for model, cat in catalog["models"].items():
        for layer in cat["layers"]:
            for comp in layer["components"]:
                if stored_forms.get((model, layer["name"], comp["name"]), "whole") != "whole":
                    comp["form"] = "query"
    return {"traits": {"setup": setup, "catalog": catalog, "shown": start}, "pictures": pictures,
            "luts": base64.b64encode(explorer.luts).decode(), "maps": maps, "depth": through,
            "left_out": left_out}


def _map_entries(explorer, order, scales, picks) -> list[dict]:
    """Every layer component's entry in its page form (:func:`_stored`), for every colour scale, epoch and
    image (a component the same for every image: once), in ``order``: ``{"where", "scale", "entry", "size",
    "thin"}`` (``thin``: a whole layer of more than :data:`LATTICE_QUERIES` queries, which a tight page keeps
    for a lattice of them)."""
    data = explorer.data
    out = []
    for model, name in order:
        layer = next(la for la in explorer.catalog["models"][model]["layers"] if la["name"] == name)
        n = layer["grid"][0] * layer["grid"][1]
        for comp in layer["components"]:
            form = payload.page_form(data, model, name, comp["name"])
            for scale in scales:
                for epoch in list(data.epochs) or [None]:
                    for i in (picks[:1] if comp["shared"] else picks):
                        where = (model, name, comp["name"], scale, epoch, i)
                        meta, buffer = _stored(explorer, form, (model, i, name, comp["name"]), scale, epoch)
                        entry = {"meta": meta, "data": _pack(buffer)}
                        out.append({"where": where, "scale": scale, "entry": entry, "size": _size(entry),
                                    "thin": form == "whole" and n > LATTICE_QUERIES and data.epochs == (),
                                    "explorer": explorer, "grid": tuple(layer["grid"])})
    return out


def _thinned(e: dict) -> tuple[dict, int]:
    """A whole entry kept for a lattice of queries instead, and its size (computed once)."""
    if "thinned" not in e:
        model, name, comp, scale, epoch, i = e["where"]
        explorer = e["explorer"]
        meta, buffer = payload.lattice_entry(explorer.data, model, i, name, comp,
                                             lattice_for(e["grid"], LATTICE_QUERIES), explorer.cmap, scale)
        entry = {"meta": meta, "data": _pack(buffer)}
        e["thinned"] = (entry, _size(entry))
    return e["thinned"]


def _stored(explorer, form: str, where, scale: str, epoch) -> tuple[dict, bytes]:
    """One layer component's entry in the page's form (see :func:`~.explorer_payload.page_form`)."""
    data, cmap = explorer.data, explorer.cmap
    model, image, name, component = where
    if form == "whole":
        return payload.maps_entry(data, *where, cmap, scale, epoch)
    if form == "stencil":
        return payload.stencil_entry(data, model, name, component, cmap, scale)
    if form == "windows":
        return payload.windows_entry(data, model, image, name, component, cmap, scale)
    grid = data.info(model, name).grid
    return payload.lattice_entry(data, model, image, name, component, lattice_for(grid, LATTICE_QUERIES),
                                 cmap, scale)


def _centre_depths(explorer, modes, order, picks) -> tuple[dict, dict]:
    """``({(mode, model, layer, image): (bytes of its through-depth entry without maps, bytes per query,
    from a
    few queries')}, {(mode, model, layer): why that layer has no through-depth view})``: what sets how many
    queries per layer fit (a layer after token mixing the reader could not read has none; those before
    it do)."""
    data, sizes, refused = explorer.data, {}, {}
    for mode in modes:
        for model, name in order:
            grid = tuple(data.info(model, name).grid)
            for i in picks:
                if (mode, model, name) in refused:
                    break
                probe = lattice_for(grid, 4)  # a few queries: what one costs, on average
                try:
                    maps, layers = data.depth_maps(model, i, name, probe, mode)
                except (TypeError, ValueError) as error:  # a layer the context code cannot compose
                    refused[(mode, model, name)] = str(error)
                    break
                entry = _depth_entry(mode, maps, layers, probe, grid)
                fixed = _size({"meta": {**entry["meta"], "vmax": [], "uniform_at": [], "queries": []},
                               "data": ""})
                sizes[(mode, model, name, i)] = (fixed, (_size(entry) - fixed) / len(probe))
    return sizes, refused


def _store_depth(explorer, mode, order, picks, through, fits, most, centres, refused, left_out) -> None:
    """The through-depth maps of every layer for ``most`` queries per layer (None: every query, 0: none) into
    ``through[model][layer][mode]`` (a list per image); an entry that does not fit is left out, and said."""
    data = explorer.data
    gone = []
    for model, name in order:
        entries = through[model][name][mode] = []
        if (mode, model, name) in refused:
            why = f"{mode} unavailable for this layer: {refused[(mode, model, name)]}"
            meta = {"kind": "depth", "mode": mode, "warning": why, "fields": [["depth", [why]]]}
            entries.append({"meta": meta, "data": ""})
            continue
        if most == 0:
            continue
        grid = tuple(data.info(model, name).grid)
        queries = lattice_for(grid, most)
        for i in picks:
            entry = _depth_entry(mode, *data.depth_maps(model, i, name, queries, mode), queries, grid)
            if not fits(entry):  # the page answers a request for it with what it holds
                gone.append(f"{name} (image {i})")
                entries.clear()
                break
            entries.append(entry)
    if most == 0 and any(key[0] == mode for key in centres):
        left_out.append(f"the {mode} maps (the explorer in Python computes them)")
    elif most is not None and most != 0:
        left_out.append(f"the {mode} maps but for at most {most} {'query' if most == 1 else 'queries'} per "
                        f"layer, on a lattice of rows and columns through the centre (other queries say "
                        f"which are held)")
    if gone:
        left_out.append(f"the {mode} maps of {_names(gone)}: they do not fit")


def _depth_entry(mode: str, maps, layers: int, queries: list[int], grid) -> dict:
    """One layer's through-depth maps for one image as the page stores them (every query, or ``queries``)."""
    every = len(queries) == grid[0] * grid[1]
    held = "" if every else payload.lattice_words(grid, queries)
    meta, buffer = payload.depth_rows_entry(mode, layers, maps, None if every else queries, held)
    return {"meta": meta, "data": _pack(buffer)}


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
    script, css = page_script(), (HERE / "explorer.css").read_text() + "\n" + PAGE_CSS
    frame = len(PAGE) + len(script) + len(css) + len(title) * 6 + NOTE_ROOM
    body = payload_of(explorer, images=images, max_mb=max_mb, depth=depth, scales=scales,
                      room=int(max_mb * 1e6) - frame)
    csp = (f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(css)}; "
           "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
    offered = body["traits"]["setup"]
    note = page_note(explorer, offered["depth_modes"][1:], offered["scale_modes"], body["left_out"])
    page = PAGE.format(csp=csp, title=html.escape(title), css=css, data=embed_json(body), script=script,
                       note=html.escape(note))
    if len(page) > max_mb * 1e6:
        raise TooLarge(f"the explorer page would be {len(page) / 1e6:.1f} MB, over max_mb={max_mb:g}")
    write_atomic(path, page)
    if body["left_out"]:
        warnings.warn(f"{path.name}: to stay within max_mb={max_mb:g} MB, " + "; ".join(body["left_out"]),
                      LeftOut, stacklevel=3)
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
