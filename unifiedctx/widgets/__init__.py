"""Interactive widgets for Jupyter: explore where each layer and head takes context from.

:class:`AffinityExplorer` shows the affinity maps of a model (or several) on your images:
click on the image (or focus it and use the arrow keys) to pick the query token, and choose the
layer, the head (or all heads as a grid) and, for mixed layers (Container, GPSA), the component
(``mixed``, ``dynamic``, ``static``), and a through-depth view. Its front end is one anywidget ES
module (``explorer.js``) that draws in the browser from data the kernel computed;
``explorer.to_html(path)`` writes the same front end, with every map precomputed, as one
self-contained static page. ``AffinityExplorer.from_run(run_folder)`` opens a training run's
snapshots (:mod:`unifiedctx.inspection.snapshots`) with an epoch slider, and :class:`LiveView` shows a
run as it trains (the curves so far, the mixing weights, the probe images' maps growing epoch by
epoch), drawn by the same front end.
"""

from __future__ import annotations

from .explorer import AffinityExplorer, ExplorerTypeError, ExplorerValueError
from .live import LiveView

__all__ = ["AffinityExplorer", "ExplorerTypeError", "ExplorerValueError", "LiveView"]
