"""A PNG image widget that reports where it was clicked, for JupyterLab 4 offline.

``ipywidgets.Image`` has no click events. :class:`ClickableImage` is a tiny
`anywidget <https://anywidget.dev>`_ widget: its front end is the ES module below, shipped
inline (no CDN, no require.js; anywidget's JupyterLab extension is prebuilt and loads the
module from a blob URL). It shows ``value`` (PNG bytes) in an ``<img>`` and, on a click,
sets ``last_click = {"x", "y", "n"}``: the clicked point in the PNG's own pixels (whatever
size the browser draws it at) and a click counter, so that two clicks on one spot both count.

Python code reacts with ``widget.on_click(callback)``; ``widget.click(x, y)`` does from
Python exactly what a click in the browser does (tests use it).
"""

from __future__ import annotations

from collections.abc import Callable

import anywidget
import traitlets

_ESM = r"""
function render({ model, el }) {
  const img = document.createElement("img");
  img.className = "ucx-clickable-img";
  img.draggable = false;
  img.style.cursor = "crosshair";
  img.style.imageRendering = "pixelated";
  img.style.maxWidth = "100%";
  let url = null;
  const show = () => {
    const data = model.get("value");
    const next = URL.createObjectURL(new Blob([data], { type: "image/" + model.get("format") }));
    img.src = next;
    if (url) URL.revokeObjectURL(url);
    url = next;
    const width = model.get("display_width");
    img.style.width = width > 0 ? width + "px" : "";
  };
  const onClick = (event) => {
    const rect = img.getBoundingClientRect();
    if (!rect.width || !rect.height) return;
    const x = (event.clientX - rect.left) * img.naturalWidth / rect.width;
    const y = (event.clientY - rect.top) * img.naturalHeight / rect.height;
    const n = ((model.get("last_click") || {}).n || 0) + 1;
    model.set("last_click", { x: x, y: y, n: n });
    model.save_changes();
  };
  show();
  model.on("change:value", show);
  model.on("change:display_width", show);
  img.addEventListener("click", onClick);
  el.classList.add("ucx-clickable-image");
  el.appendChild(img);
  return () => {
    model.off("change:value", show);
    model.off("change:display_width", show);
    img.removeEventListener("click", onClick);
    if (url) URL.revokeObjectURL(url);
  };
}
export default { render };
"""


class ClickableImage(anywidget.AnyWidget):
    """An image (PNG bytes in ``value``) that reports clicks in its own pixel coordinates.

    Traits (synced with the browser): ``value`` (bytes), ``format`` (``"png"``),
    ``display_width`` (CSS pixels, 0 = natural size), ``last_click``
    (``{"x": float, "y": float, "n": int}``, set by the browser).
    """

    _esm = _ESM
    value = traitlets.Bytes(b"").tag(sync=True)
    format = traitlets.Unicode("png").tag(sync=True)
    display_width = traitlets.Int(0).tag(sync=True)
    last_click = traitlets.Dict({}).tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._click_callbacks: list[Callable[[float, float], None]] = []
        self.observe(self._on_last_click, names="last_click")

    def on_click(self, callback: Callable[[float, float], None], remove: bool = False) -> None:
        """Call ``callback(x, y)`` (pixels of the PNG) on each click; ``remove=True`` undoes it."""
        if remove:
            self._click_callbacks.remove(callback)
        else:
            self._click_callbacks.append(callback)

    def click(self, x: float, y: float) -> None:
        """Click at pixel ``(x, y)`` of the PNG from Python, as the browser would."""
        n = int(self.last_click.get("n", 0)) + 1
        self.last_click = {"x": float(x), "y": float(y), "n": n}

    def _on_last_click(self, change) -> None:
        click = change["new"] or {}
        if "x" not in click or "y" not in click:
            return
        for callback in list(self._click_callbacks):
            callback(float(click["x"]), float(click["y"]))
