"""Interactive widgets for Jupyter: explore where each layer and head takes context from.

:class:`AffinityExplorer` shows the affinity maps of a model (or several) on your images:
click on the image (or move the query sliders) to pick the query token, and choose the
layer, the head (or all heads as a grid) and, for mixed layers (Container, GPSA), the
component (``mixed``, ``dynamic``, ``static``). It runs in JupyterLab 4 offline: the pictures
are PNGs in widgets, and the clickable image is a tiny inline ``anywidget`` module.
``explorer.to_html(path)`` writes the same explorer as one self-contained static page.
"""

from __future__ import annotations

from .explorer import AffinityExplorer, ExplorerTypeError, ExplorerValueError

__all__ = ["AffinityExplorer", "ClickableImage", "ExplorerTypeError", "ExplorerValueError"]


def __getattr__(name: str):
    if name == "ClickableImage":  # needs anywidget; imported only when asked for
        from .clickimage import ClickableImage

        return ClickableImage
    raise AttributeError(f"module 'unifiedctx.widgets' has no attribute {name!r}")
