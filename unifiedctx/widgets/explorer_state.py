"""The explorer's state, in one place: what is shown, the rules that keep it valid, its errors.

:class:`ExplorerState` holds ``model_name``, ``image_index``, ``layer``, ``head`` (``-1``: all
heads, the grid view mode), ``component``, ``query``, ``depth`` (the through-depth view beside
the layer's own map: ``"off"``, ``"rollout"`` or ``"ERF"``), ``scale_mode`` (the colour scale:
``"layer"``, one for every head and query of the layer; ``"map"``, each map its own; in a training
run also ``"fixed"``, one for the layer over every epoch) and ``epoch`` (a training run's epoch;
``None`` for models) as traitlets, checks every value given to them, and applies the rules between
them:

* a new layer or a new model keeps the query on the same place of the image (rescaled to the
  new grid), and falls back to all heads or to another component where the old one is missing;
* changes made inside ``with state.batch():`` are reported once, when the block ends.

It reads the models' layers only through :meth:`ExplorerData.info` / ``catalogue`` (plain
data). Listeners registered with :meth:`on_change` get the name of what changed.

Bad values are clear errors: a ``ValueError`` (also a ``traitlets.TraitError``) naming the
trait, e.g. ``state.query = (99, 99)`` or ``state.layer = "nope"``.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable
from contextlib import contextmanager

import traitlets

from .explorer_data import COMPONENT_ORDER, DEPTH_MODES, ExplorerData, LayerInfo, default_layer

FIELDS = ("model_name", "image_index", "layer", "head", "component", "query", "depth", "scale_mode", "epoch")


class ExplorerValueError(traitlets.TraitError, ValueError):
    """A value the explorer cannot show (a query outside the grid, a layer that does not exist)."""


class ExplorerTypeError(traitlets.TraitError, TypeError):
    """A value of the wrong type for one of the explorer's traits."""


#: The kind of value each field takes (checked before traitlets sees it, so a wrong type is our
#: ``ExplorerTypeError`` naming the field, never a bare ``TraitError``).
TEXT_FIELDS = ("model_name", "layer", "component", "depth", "scale_mode")
INT_FIELDS = ("image_index", "head")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_field(name: str, value):
    """``value`` if it has the type of field ``name`` (str, int or a pair of ints; bool is not an
    int), else an :class:`ExplorerTypeError` that names the field, what it got and what it takes."""
    if name in TEXT_FIELDS and not isinstance(value, str):
        raise ExplorerTypeError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    if name in INT_FIELDS:
        if not _is_int(value):
            raise ExplorerTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        return int(value)
    if name == "epoch":
        if value is not None and not _is_int(value):
            raise ExplorerTypeError(f"epoch must be an int (an epoch of the run), got {type(value).__name__} "
                                    f"{value!r}")
        return None if value is None else int(value)
    if name == "query":
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ExplorerTypeError(f"query must be a pair (row, col), got {value!r}")
        if not all(_is_int(v) for v in value):
            raise ExplorerTypeError(f"query must be a pair of ints (row, col), got {value!r}")
        return int(value[0]), int(value[1])
    return value


def _suggest(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def compact_epochs(epochs) -> str:
    """``[0, 1, 2, 3, 5]`` as ``"0..3, 5"``: a run's stored epochs in a message."""
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(str(e) if e == start else f"{start}..{e}")
            start = None
    return ", ".join(parts)


def carry_query(query: tuple[int, int], old_grid, new_grid) -> tuple[int, int]:
    """``query`` on ``old_grid`` moved to the cell of ``new_grid`` over the same image place."""
    row, col = query
    if old_grid is not None and tuple(old_grid) != tuple(new_grid):
        (oh, ow), (nh, nw) = old_grid, new_grid
        row, col = int((row + 0.5) * nh / oh), int((col + 0.5) * nw / ow)
    h, w = new_grid
    return min(max(row, 0), h - 1), min(max(col, 0), w - 1)


class ExplorerState(traitlets.HasTraits):
    """What the explorer shows; see the module docstring for the rules and the errors."""

    model_name = traitlets.Unicode()
    image_index = traitlets.Int(0)
    layer = traitlets.Unicode()
    head = traitlets.Int(-1)
    component = traitlets.Unicode("mixed")
    query = traitlets.Tuple((0, 0))
    depth = traitlets.Unicode("off")
    scale_mode = traitlets.Unicode("layer")
    epoch = traitlets.Int(None, allow_none=True)

    def __init__(self, data: ExplorerData, *, model_name: str, image_index: int = 0,
                 layer: str | None = None, head: int = -1, component: str | None = None, query=None,
                 depth: str = "off", scale_mode: str | None = None, epoch: int | None = None):
        super().__init__()
        self._data = data
        self._listeners: list[Callable[[str], None]] = []
        self._depth, self._changed, self._ready = 0, "", False
        with self.batch():
            self.model_name = model_name
            self.image_index = image_index
            self.layer = layer if layer is not None else default_layer(data.catalogue(model_name))
            if component is not None:
                self.component = component
            if head != -1:
                self.head = head
            self.query = query if query is not None else self.centre()
            self.depth = depth
            self.scale_mode = scale_mode if scale_mode is not None else data.scale_modes[0]
            self.epoch = epoch if epoch is not None or not data.epochs else data.epochs[-1]
        self._ready = True

    def __setattr__(self, name, value):
        if name in FIELDS:
            value = check_field(name, value)
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ reading
    @property
    def info(self) -> LayerInfo:
        """The current layer's :class:`LayerInfo` (kind, grid, heads per component)."""
        return self._data.info(self.model_name, self.layer)

    @property
    def grid(self) -> tuple[int, int]:
        return self.info.grid

    @property
    def heads(self) -> int:
        """M of the current layer and component."""
        return self.info.heads[self.component]

    @property
    def view_mode(self) -> str:
        """``"all heads"`` (a grid of tiles, ``head == -1``) or ``"one head"``."""
        return "all heads" if self.head == -1 else "one head"

    @property
    def shown_heads(self) -> list[int]:
        return list(range(self.heads)) if self.head == -1 else [self.head]

    def centre(self) -> tuple[int, int]:
        h, w = self.grid
        return h // 2, w // 2

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    # ------------------------------------------------------------------ changing
    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(what)`` after each change (once per batch, with its first change)."""
        self._listeners.append(callback)

    @contextmanager
    def batch(self):
        """Group changes: listeners hear of them once, when the outermost batch ends."""
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
        if self._depth == 0 and self._changed and self._ready:
            what, self._changed = self._changed, ""
            for callback in list(self._listeners):
                callback(what)

    def update(self, **values) -> None:
        """Set several fields at once, in dependency order (``query`` read on the new layer)."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown explorer fields {sorted(unknown)}; fields are {', '.join(FIELDS)}")
        with self.batch():
            for name in FIELDS:
                if values.get(name) is not None:
                    setattr(self, name, values[name])

    def _mark(self, what: str) -> None:
        with self.batch():
            self._changed = self._changed or what

    def _fit(self, old_grid) -> None:
        """Make component, head and query valid on the current layer (query carried over)."""
        info = self.info
        if self.component not in info.components:
            self.component = info.components[0]
        if self.head >= info.heads[self.component]:
            self.head = -1
        self.query = carry_query(self.query, old_grid, info.grid)

    # ------------------------------------------------------------------ rules
    @traitlets.observe("model_name")
    def _on_model(self, change):
        with self.batch():
            if self.layer:
                before = self._data.catalogue(change["old"]).get(self.layer) if change["old"] else None
                query = self.query
                catalogue = self._data.catalogue(self.model_name)
                if self.layer not in catalogue:
                    self.layer = default_layer(catalogue)
                self._fit(None)
                self.query = carry_query(query, before.grid if before is not None else None, self.grid)
            self._mark("model_name")

    @traitlets.observe("layer")
    def _on_layer(self, change):
        with self.batch():
            catalogue = self._data.catalogue(self.model_name)
            old = catalogue.get(change["old"]) if change["old"] else None
            self._fit(old.grid if old is not None and change["old"] != change["new"] else None)
            self._mark("layer")

    @traitlets.observe("component")
    def _on_component(self, change):
        with self.batch():
            if self.layer and self.head >= self.info.heads.get(self.component, 0):
                self.head = -1
            self._mark("component")

    @traitlets.observe("image_index", "head", "query", "depth", "scale_mode", "epoch")
    def _on_simple(self, change):
        self._mark(change["name"])

    # ------------------------------------------------------------------ checks
    @traitlets.validate("model_name")
    def _valid_model_name(self, proposal):
        name = proposal["value"]
        models = self._data.models
        if name not in models:
            raise ExplorerValueError(f"model_name {name!r} is not one of the models: "
                                     f"{', '.join(map(repr, models))}.{_suggest(name, models)}")
        return name

    @traitlets.validate("image_index")
    def _valid_image_index(self, proposal):
        i, n = proposal["value"], len(self._data.images)
        if not 0 <= i < n:
            raise ExplorerValueError(f"image_index {i} is out of range: there are {n} images (0..{n - 1})")
        return i

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        name = proposal["value"]
        catalogue = self._data.catalogue(self.model_name)
        if name not in catalogue:
            raise ExplorerValueError(f"layer {name!r} does not exist in model {self.model_name!r}; its "
                                     f"layers are: {', '.join(catalogue)}.{_suggest(name, catalogue)}")
        return name

    @traitlets.validate("component")
    def _valid_component(self, proposal):
        comp = proposal["value"]
        if not self.layer:
            return comp
        available = self.info.components
        if comp not in available:
            known = "" if comp in COMPONENT_ORDER else f" (components are {', '.join(COMPONENT_ORDER)})"
            raise ExplorerValueError(f"component {comp!r} is not available in layer {self.layer!r}, "
                                     f"which has: {', '.join(available)}{known}")
        return comp

    @traitlets.validate("head")
    def _valid_head(self, proposal):
        head = proposal["value"]
        if not self.layer:
            return head
        heads = self.info.heads
        m = heads.get(self.component, next(iter(heads.values())))
        if not -1 <= head < m:
            raise ExplorerValueError(f"head {head} is out of range: layer {self.layer!r} has {m} heads "
                                     f"(0..{m - 1}, or -1 for all heads as a grid)")
        return head

    @traitlets.validate("depth")
    def _valid_depth(self, proposal):
        mode, offered = proposal["value"], self._data.depth_modes
        known = {m.lower(): m for m in offered}
        if mode.lower() not in known:
            why = (f" ({self._data.no_depth_reason})" if mode.lower() in {m.lower() for m in DEPTH_MODES}
                   and hasattr(self._data, "no_depth_reason") else _suggest(mode, offered))
            raise ExplorerValueError(f"depth {mode!r} is not a through-depth view this explorer offers; "
                                     f"choose one of {', '.join(map(repr, offered))}.{why}")
        return known[mode.lower()]

    @traitlets.validate("scale_mode")
    def _valid_scale_mode(self, proposal):
        mode, modes = proposal["value"], self._data.scale_modes
        if mode not in modes:
            hint = (" ('fixed', one scale over every epoch, is for a training run: AffinityExplorer.from_run)"
                    if mode == "fixed" else _suggest(mode, modes))
            raise ExplorerValueError(f"scale_mode {mode!r} is not offered here; choose one of "
                                     f"{', '.join(map(repr, modes))}.{hint}")
        return mode

    @traitlets.validate("epoch")
    def _valid_epoch(self, proposal):
        epoch, epochs = proposal["value"], self._data.epochs
        if not epochs and epoch is not None:
            raise ExplorerValueError(f"epoch {epoch}: this explorer shows models as they are now, it has "
                                     "no epochs (a training run's snapshots have: AffinityExplorer.from_run)")
        if epochs and epoch not in epochs:
            raise ExplorerValueError(f"epoch {epoch} is not stored in this run; its epochs are "
                                     f"{compact_epochs(epochs)}")
        return epoch

    @traitlets.validate("query")
    def _valid_query(self, proposal):
        value = proposal["value"]
        if len(value) != 2:
            raise ExplorerTypeError(f"query must be a pair (row, col), got {value!r}")
        try:
            row, col = (int(v.__index__()) for v in value)
        except (AttributeError, TypeError):
            raise ExplorerTypeError(f"query must be a pair of ints (row, col), got {value!r}") from None
        if not self.layer:
            return row, col
        h, w = self.grid
        if not (0 <= row < h and 0 <= col < w):
            raise ExplorerValueError(f"query {(row, col)} is outside the {h}x{w} grid of layer "
                                     f"{self.layer!r} (rows 0..{h - 1}, cols 0..{w - 1})")
        return row, col
