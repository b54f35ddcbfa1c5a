"""Interactive widgets for Jupyter: explore where each layer and head takes context from.

:class:`AffinityExplorer` shows the affinity maps of a model (or several) on your images:
click on the image (or focus it and use the arrow keys) to pick the query token, and choose the
layer, the head (or all heads as a grid) and, for mixed layers (Container, GPSA), the component
(``mixed``, ``dynamic``, ``static``), and a through-depth view. Its front end is one anywidget ES
module (``explorer.js``) that draws in the browser from data the kernel computed;
``explorer.to_html(path)`` writes the same front end, with every map precomputed, as one
self-contained static page.
"""

from __future__ import annotations

from .explorer import AffinityExplorer, ExplorerTypeError, ExplorerValueError

__all__ = ["AffinityExplorer", "ExplorerTypeError", "ExplorerValueError"]
