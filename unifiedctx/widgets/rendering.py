"""Pure numpy rendering for the affinity explorer: images and affinity maps as PNG bytes.

Nothing here knows about widgets, so every function is cheap to test and to time. The
explorer draws two pictures:

* the **input image** with the query cell outlined (``image_panel``), and
* the **affinity map(s)**: row ``q`` of ``A_m`` folded onto the ``H x W`` grid, upsampled
  (nearest) to the image and laid over it with alpha (``map_panel``), on one colour scale
  shared by all heads and stated by a colorbar (``colorbar_panel``); all heads at once are
  tiled into a grid, each tile labelled with its head.

Pictures are ``uint8`` arrays of shape ``(height, width, 3)``; ``png_bytes`` encodes them
with Pillow (fast, no matplotlib figure involved).
"""

from __future__ import annotations

import io
import math

import numpy as np

#: Outline colour of the query cell (RGB).
MARKER_RGB = (255, 40, 40)


def as_display_image(image) -> np.ndarray:
    """Turn one image into a float ``(h, w, 3)`` array in ``[0, 1]`` for display.

    ``image`` is a tensor or array ``(C, h, w)`` (channels first, as models take it) or
    ``(h, w)``; one channel is shown grey, three as RGB, any other count as the channel mean.
    Values are stretched to ``[0, 1]`` (images are often normalised), a constant image is grey.
    """
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"an image must have shape (C, H, W) or (H, W), got shape {arr.shape}")
    if arr.shape[0] == 3:
        arr = arr.transpose(1, 2, 0)
    else:
        arr = np.repeat(arr.mean(0)[..., None], 3, axis=2)
    lo, hi = float(arr.min()), float(arr.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("the image holds NaN or infinite values")
    if hi - lo < 1e-12:
        return np.full(arr.shape, 0.5, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def upsample(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes of ``array`` to ``size = (h, w)``."""
    rows = (np.arange(size[0]) * array.shape[0]) // size[0]
    cols = (np.arange(size[1]) * array.shape[1]) // size[1]
    return array[rows][:, cols]


def colormap_lut(name: str = "magma") -> np.ndarray:
    """A ``(256, 3)`` float lookup table of the matplotlib colormap ``name``."""
    from matplotlib import colormaps

    return colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def cell_box(query: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]):
    """Pixel box ``(top, left, bottom, right)`` (exclusive ends) of grid cell ``query``."""
    (r, c), (gh, gw), (h, w) = query, grid, size
    return (r * h) // gh, (c * w) // gw, ((r + 1) * h) // gh, ((c + 1) * w) // gw


def draw_box(picture: np.ndarray, box, rgb=MARKER_RGB, thickness: int = 2) -> np.ndarray:
    """Outline ``box = (top, left, bottom, right)`` on ``picture`` (``uint8``, in place)."""
    top, left, bottom, right = box
    t = max(1, min(thickness, (bottom - top) // 2 or 1, (right - left) // 2 or 1))
    colour = np.asarray(rgb, dtype=np.uint8)
    picture[top:top + t, left:right] = colour
    picture[bottom - t:bottom, left:right] = colour
    picture[top:bottom, left:left + t] = colour
    picture[top:bottom, right - t:right] = colour
    return picture


def to_uint8(picture: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` picture to ``uint8``."""
    return (np.clip(picture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_panel(image: np.ndarray, size: tuple[int, int], query, grid) -> np.ndarray:
    """The input image (float ``(h, w, 3)``) at ``size``, with the ``query`` cell outlined.

    The outline is red with a thin white ring inside it, visible on any image.
    """
    picture = to_uint8(upsample(image, size))
    top, left, bottom, right = cell_box(query, grid, size)
    if bottom - top >= 8 and right - left >= 8:
        draw_box(picture, (top + 2, left + 2, bottom - 2, right - 2), rgb=(255, 255, 255), thickness=1)
    return draw_box(picture, (top, left, bottom, right))


def overlay(image: np.ndarray, amap: np.ndarray, lut: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """Blend the map ``amap`` (float ``(h, w)`` in ``[0, 1]``: positions on the colormap) coloured
    by ``lut`` over ``image``. The image is shown grey so that the colours belong to the map alone.
    """
    grey = image.mean(axis=2, keepdims=True)
    colours = lut[np.clip(np.rint(amap * 255.0).astype(np.int32), 0, 255)]
    return (1.0 - alpha) * grey + alpha * colours


def label(picture: np.ndarray, text: str, xy=(3, 2), size: int = 12) -> np.ndarray:
    """Write ``text`` on ``picture`` (``uint8``, in place) in white on a dark box at ``xy``."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=(20, 20, 20))
    draw.text(xy, text, fill=(255, 255, 255), font=font)
    picture[...] = np.asarray(canvas)
    return picture


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def map_panel(image: np.ndarray, maps: np.ndarray, size: tuple[int, int], query, grid,
              lut: np.ndarray, alpha: float = 0.75, gap: int = 4, scale=None,
              heads: list[int] | None = None, unit: str = "head") -> np.ndarray:
    """Overlay each map of ``maps`` (``(M, H, W)``) on ``image`` and tile them (``uint8``).

    All tiles share one colour ``scale`` (a :class:`unifiedctx.viz.scales.Scale`; by default
    the one of these maps, :func:`~unifiedctx.viz.scales.maps_scale`): no per-head rescaling.
    Each tile is ``size`` pixels, outlines the query cell and, when several are shown, says
    which head it is (``heads``, default ``0..M-1``; ``unit`` names them: ``"head 3"``, or
    ``"channel 3"`` for a mixer with one affinity per channel). One map gives one tile, no tiling.
    """
    from ..viz.scales import maps_scale

    scale = scale or maps_scale(maps)
    heads = list(range(len(maps))) if heads is None else list(heads)
    small = upsample(image, size)
    tiles = []
    for m, amap in zip(heads, scale.normalise(maps)):
        tile = to_uint8(overlay(small, upsample(amap, size), lut, alpha))
        draw_box(tile, cell_box(query, grid, size), thickness=1)
        tiles.append(label(tile, f"{unit} {m}") if len(maps) > 1 else tile)
    return tile_grid(tiles, gap=gap)


def colorbar_panel(scale, lut: np.ndarray, height: int, width: int = 96, bar: int = 14) -> np.ndarray:
    """A vertical colorbar of ``scale`` as a ``uint8`` picture, ``height`` pixels tall.

    The bar runs from ``vmin`` (bottom) to ``vmax`` (top), labelled with both; the uniform
    level of softmax maps is a cyan line labelled ``1/N``.
    """
    height = max(int(height), 48)
    out = np.full((height, width, 3), 255, np.uint8)
    top, bottom = 8, height - 8
    t = np.linspace(1.0, 0.0, bottom - top)
    out[top:bottom, 2:2 + bar] = to_uint8(lut[np.rint(t * 255).astype(int)])[:, None, :]
    marks = [(scale.vmax, f"{scale.vmax:.3g}"), (scale.vmin, f"{scale.vmin:.3g}")]
    if scale.signed:
        marks.append((0.0, "0"))
    if scale.uniform is not None:
        marks.append((scale.uniform, f"1/{scale.keys}"))
    def at(value):
        return int(round(top + (1 - float(scale.normalise(value))) * (bottom - top - 1)))

    uniform_y = at(scale.uniform) if scale.uniform is not None else None
    for value, text in marks:
        y = at(value)
        if uniform_y is not None and not text.startswith("1/") and abs(y - uniform_y) < 12:
            continue  # a number this close to the uniform mark would collide with its label
        colour = (0, 200, 230) if text.startswith("1/") else (60, 60, 60)
        out[max(0, y - 1):y + 1, 2:2 + bar + 4] = colour
        label_text(out, text, (bar + 9, max(0, min(height - 12, y - 6))))
    return out


def label_text(picture: np.ndarray, text: str, xy, size: int = 11) -> np.ndarray:
    """Write dark ``text`` on ``picture`` (``uint8``, in place) at ``xy`` (no box)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(picture)
    ImageDraw.Draw(canvas).text(xy, text, fill=(30, 30, 30), font=_font(size))
    picture[...] = np.asarray(canvas)
    return picture


def beside(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two ``uint8`` pictures side by side on white, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    out = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out


def tile_grid(tiles: list[np.ndarray], ncols: int | None = None, gap: int = 4) -> np.ndarray:
    """Lay equal-sized ``uint8`` tiles out row by row on a white background."""
    if len(tiles) == 1:
        return tiles[0]
    ncols = ncols or math.ceil(math.sqrt(len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    th, tw = tiles[0].shape[:2]
    out = np.full((nrows * th + (nrows - 1) * gap, ncols * tw + (ncols - 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        out[r * (th + gap):r * (th + gap) + th, c * (tw + gap):c * (tw + gap) + tw] = tile
    return out


def head_tile_size(heads: int, panel: int, grid: tuple[int, int]) -> int:
    """Side in pixels of one tile when ``heads`` maps share a ``panel``-pixel square.

    Never smaller than the grid (one pixel per token) so that no token disappears.
    """
    ncols = math.ceil(math.sqrt(heads))
    return max(panel // ncols, max(grid))


def png_bytes(picture: np.ndarray) -> bytes:
    """Encode a ``uint8`` ``(h, w, 3)`` picture as PNG (Pillow, fast compression)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes back to a ``uint8`` ``(h, w, 3)`` array (what a widget shows)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
