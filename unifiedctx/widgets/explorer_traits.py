"""The explorer's errors, and the checks of the values given to its traits.

Bad values are clear errors: a ``ValueError`` (also a ``traitlets.TraitError``) naming the
trait, e.g. ``explorer.query = (99, 99)`` or ``explorer.layer = "nope"``.
"""

from __future__ import annotations

import difflib

import traitlets

from .explorer_data import COMPONENT_ORDER


class ExplorerValueError(traitlets.TraitError, ValueError):
    """A value the explorer cannot show (a query outside the grid, a layer that does not exist)."""


class ExplorerTypeError(traitlets.TraitError, TypeError):
    """A value of the wrong type for one of the explorer's traits."""


def _suggest(value, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


class ExplorerValidation(traitlets.HasTraits):
    """Validators of :class:`AffinityExplorer`'s traits (a mixin: the traits live there).

    They read the explorer's ``_models``, ``_images``, ``_layout()``, ``_info(layer)``,
    ``_heads_of(layer, component)`` and ``grid``. Component, head and query are not checked
    before a layer is set (the explorer sets them right after, in ``__init__``).
    """

    @traitlets.validate("model_name")
    def _valid_model_name(self, proposal):
        name = proposal["value"]
        if name not in self._models:
            raise ExplorerValueError(f"model_name {name!r} is not one of the models: "
                                     f"{', '.join(map(repr, self._models))}.{_suggest(name, self._models)}")
        return name

    @traitlets.validate("image_index")
    def _valid_image_index(self, proposal):
        i = proposal["value"]
        if not 0 <= i < len(self._images):
            raise ExplorerValueError(f"image_index {i} is out of range: there are {len(self._images)} "
                                     f"images (0..{len(self._images) - 1})")
        return i

    @traitlets.validate("layer")
    def _valid_layer(self, proposal):
        name = proposal["value"]
        layout = self._layout()
        if name not in layout:
            raise ExplorerValueError(f"layer {name!r} does not exist in model {self.model_name!r}; its "
                                     f"layers are: {', '.join(layout)}.{_suggest(name, layout)}")
        return name

    @traitlets.validate("component")
    def _valid_component(self, proposal):
        comp = proposal["value"]
        if not self.layer:
            return comp
        available = self._info(self.layer)["components"]
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
        m = self._heads_of(self.layer, self.component)
        if not -1 <= head < m:
            raise ExplorerValueError(f"head {head} is out of range: layer {self.layer!r} has {m} heads "
                                     f"(0..{m - 1}, or -1 for all heads as a grid)")
        return head

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
