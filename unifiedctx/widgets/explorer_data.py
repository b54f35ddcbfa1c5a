"""The explorer's data: its images, its models' layer catalogues, and what it keeps to draw them (one budget).

Any network: one forward per (model, image) reads every layer through
:func:`~unifiedctx.inspection.layers.layer_affinities` (unifiedctx mixers through their contract; any other
network, timm's, Hugging Face's, torchvision's or a user's own, through ``inspect_model``); a module that runs
more than once in the forward gives one layer per call (``name#k``). Of each layer the explorer keeps the
smallest exact form of its affinity, a :class:`LayerSource`:

* :class:`StencilLayer`, a static layer whose affinity is one kernel per head placed at each query (a
  depthwise conv, a static mixer): its kernels ``(M, kh, kw)``, never the ``(M, N, N)`` (ConvNeXt-T's first
  stage would be 96 x 3136^2 numbers, 3.8 GB);
* :class:`WindowedLayer`, a windowed attention (Swin, MaxViT): its windows' own ``(nW, M, n, n)`` affinities
  and where their tokens sit on the grid (block-sparse);
* :class:`DenseLayer`, any other: its ``(M, N, N)`` per component (a ViT-B/16 attention: 12 x 196^2).

**Memory grows with what is shown.** A layer component is sent to the front end whole (every query's maps,
:data:`FORMS` ``"whole"``) only when its ``M N^2`` colour indices are small (:data:`WHOLE_BYTES`); otherwise
only the rows of the query shown (``"query"``, :meth:`ExplorerData.rows`). A layer's colour scale (shared by
every head and query) is computed from its rows in chunks; for a kernel from one query per border class,
which holds every row there is (exact).

**One budget.** Everything the explorer computes and keeps -- the layer sources of every image, the context
graph of an image (the through-depth view composes on it without running the model again) and the
through-depth maps -- lives in one least-recently-used store (:class:`Budget`) whose bytes (the arrays and
tensors it holds, :func:`held_bytes`) stay within ``cache_mb``. Only the item being used may exceed it alone,
and it is dropped as soon as another is used. What is not counted is plain data of a few numbers per layer
(the catalogue, the colour scales) and what the user gave (models, images). Reading leaves every model as it
was (``inspection.reader.untouched``: modes, statistics, RNG).

Through depth (:meth:`ExplorerData.depth`): one query's rollout up to a layer, or its effective receptive
field, as the plain dict of :func:`unifiedctx.context.rollout_maps` / :func:`~unifiedctx.context.erf_maps`
(``map`` ``(H_in, W_in)`` on the input pixels, summing to 1); :meth:`ExplorerData.depth_maps` gives several
queries' maps at once (the exported page).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..context import context_graph, erf_maps, rollout_graph, rollout_maps
from ..context.rollout import check_partial
from ..inspection.layers import LayerAffinity, layer_affinities, untouched
from ..inspection.torch_layers import kernel_rows
from ..viz.scales import Scale, merge_scales, scale_for

#: The order components are offered in: the paper's mixed affinity first, then its parts.
COMPONENT_ORDER = ("mixed", "dynamic", "static")
#: The through-depth views: none, the rollout up to the layer, the effective receptive field.
DEPTH_MODES = ("off", "rollout", "ERF")
#: The colour scales of the maps: one for every head and query of a layer component (for one image),
#: each map (one head's row for one query) its own, or (a training run's) one for the layer over every epoch.
SCALE_MODES = ("layer", "map", "fixed")
#: How the front end gets a layer component: ``"whole"``, every query's maps at once (``M N^2`` colour
#: indices, asked for once); ``"query"``, the rows of one query (``M N``), asked for when the query is shown.
FORMS = ("whole", "query")
#: A layer component is sent whole when its ``M N^2`` colour indices take at most this many bytes.
WHOLE_BYTES = 2 * 2**20
#: At most this many numbers in one chunk of a layer's rows, when they are streamed (its colour scale).
CHUNK = 2**22


def as_images(images) -> list[torch.Tensor]:
    """``images`` (a tensor ``(B, C, H, W)`` or ``(C, H, W)``, or a sequence of ``(C, H, W)``)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (B, C, H, W) or (C, H, W), got {tuple(images.shape)}")
        out = list(images)
    elif isinstance(images, (list, tuple)):
        out = [torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im for im in images]
    else:
        raise TypeError(f"images must be a tensor (B, C, H, W) or a list of (C, H, W) tensors, "
                        f"got {type(images).__name__}")
    if not out:
        raise ValueError("images is empty: give at least one image")
    for i, im in enumerate(out):
        if im.dim() != 3:
            raise ValueError(f"images[{i}] must have shape (C, H, W), got {tuple(im.shape)}")
    return [im.float() for im in out]


def storage_key(t: torch.Tensor) -> tuple:
    storage = t.untyped_storage()
    return ("t", storage.data_ptr(), storage.nbytes())


def held_bytes(value, seen: set | None = None) -> int:
    """The bytes of the numpy arrays and torch tensors ``value`` holds (through dataclasses, dicts, lists and
    tuples), each storage counted once and whole (a view holds all of its base); storages already in ``seen``
    (a model's own parameters, say) are not counted."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = storage_key(value)
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(value, np.ndarray):
        base = value
        while isinstance(base.base, np.ndarray):
            base = base.base
        key = ("a", id(base))
        if key in seen:
            return 0
        seen.add(key)
        return base.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(held_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    return 0


class Budget:
    """One least-recently-used store, bounded by the bytes of what it holds (:func:`held_bytes`).

    ``put`` keeps a value as the most recently used and drops the least recently used ones until the total is
    within ``limit`` (the value just put stays, even alone over the limit: it is being used); ``offer`` keeps
    a value only if it fits without dropping anything (what one read gave besides what was asked for)."""

    def __init__(self, limit: int, shared=()):
        self.limit = int(limit)
        self.items: OrderedDict = OrderedDict()
        self.sizes: dict = {}
        self.used = 0
        self.shared = frozenset(storage_key(t) for t in shared)  # not ours: the models' parameters, buffers

    def size(self, value) -> int:
        return held_bytes(value, set(self.shared))

    def __contains__(self, key) -> bool:
        return key in self.items

    def get(self, key):
        """The value under ``key`` (now the most recently used), or None."""
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key]

    def _drop(self, key) -> None:
        del self.items[key]
        self.used -= self.sizes.pop(key)

    def put(self, key, value):
        if key in self.items:
            self._drop(key)
        self.items[key], self.sizes[key] = value, self.size(value)
        self.used += self.sizes[key]
        while self.used > self.limit and len(self.items) > 1:
            self._drop(next(iter(self.items)))
        return value

    def room(self) -> int:
        """The bytes that can still be kept without dropping anything."""
        return self.limit - self.used

    def offer(self, key, value) -> None:
        size = self.size(value)
        if key not in self.items and self.used + size <= self.limit:
            self.items[key], self.sizes[key] = value, size
            self.used += self.sizes[key]
            self.items.move_to_end(key, last=False)  # kept, but first out


# ---------------------------------------------------------------------------------------------- layer sources
@dataclass
class DenseLayer:
    """A layer's affinity by component, each ``(M, N, N)`` float32 on its grid (``N = H W``)."""

    components: dict

    def heads(self) -> dict[str, int]:
        return {c: int(a.shape[0]) for c, a in self.components.items()}

    def rows(self, component: str, queries: np.ndarray) -> np.ndarray:
        """``(M, Q, N)``: rows ``queries`` of ``component``."""
        return self.components[component][:, queries]

    def probes(self, n: int) -> np.ndarray:
        """Queries whose rows hold every row the layer has, as far as a colour scale can tell: all of them."""
        return np.arange(n)


@dataclass
class StencilLayer:
    """A static layer whose affinity is a centred stride-1 window, one kernel per head: row ``q`` of head m is
    ``kernels[m]`` placed at ``q`` (dilated by ``dilation``), taps off the grid dropped (zero padding)."""

    component: str
    grid: tuple
    kernels: np.ndarray  # (M, kh, kw) float32
    dilation: tuple

    def heads(self) -> dict[str, int]:
        return {self.component: int(self.kernels.shape[0])}

    def rows(self, component: str, queries: np.ndarray) -> np.ndarray:
        found = kernel_rows(torch.from_numpy(self.kernels), self.grid, self.dilation,
                            torch.as_tensor(queries, dtype=torch.long))
        return found[0].numpy()

    def offsets(self) -> list[tuple[int, int]]:
        """The taps' offsets ``(dy, dx)`` from the query, in kernel order (row-major)."""
        kh, kw = self.kernels.shape[-2:]
        dy, dx = self.dilation
        return [((ky - kh // 2) * dy, (kx - kw // 2) * dx) for ky in range(kh) for kx in range(kw)]

    def classes(self) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        """Queries whose kernels are cut the same way by the grid's border hold the same values at the same
        offsets: ``(class of each row (H,), class of each column (W,), a representative row per row class,
        a representative column per column class)``."""
        kh, kw = self.kernels.shape[-2:]
        dy, dx = self.dilation
        found = []
        for size, k, d in ((self.grid[0], kh, dy), (self.grid[1], kw, dx)):
            keys, ids, reps = {}, [], []
            for p in range(size):
                key = tuple(0 <= p + (t - k // 2) * d < size for t in range(k))
                if key not in keys:
                    keys[key] = len(reps)
                    reps.append(p)
                ids.append(keys[key])
            found.append((np.asarray(ids), reps))
        (cy, ry), (cx, rx) = found
        return cy, cx, ry, rx

    def probes(self, n: int) -> np.ndarray:
        """One query per border class: their rows hold every value any row holds, as often (a colour scale of
        them is the scale of all rows)."""
        _, _, ry, rx = self.classes()
        return np.asarray([r * self.grid[1] + c for r in ry for c in rx])


@dataclass
class WindowedLayer:
    """A windowed attention on its block's grid: ``local`` ``(nW, M, n, n)`` its windows' own affinities,
    ``window`` / ``place`` ``(N,)`` the window and the place in it of each grid token; tokens of different
    windows do not meet (0)."""

    component: str
    local: np.ndarray  # (nW, M, n, n) float32
    window: np.ndarray  # (N,) int64
    place: np.ndarray  # (N,) int64

    def heads(self) -> dict[str, int]:
        return {self.component: int(self.local.shape[1])}

    def rows(self, component: str, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        w_q, p_q = self.window[queries], self.place[queries]
        picked = self.local[w_q[:, None], :, p_q[:, None], self.place[None, :]]  # (Q, N, M)
        same = w_q[:, None] == self.window[None, :]
        return np.ascontiguousarray((picked * same[..., None]).transpose(2, 0, 1))

    def probes(self, n: int) -> np.ndarray:
        return np.arange(n)


LayerSource = DenseLayer | StencilLayer | WindowedLayer


def _array(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy that owns its memory (a view would hold its whole base)."""
    return np.array(t.detach().float().cpu().numpy(), dtype=np.float32, copy=True)


def source_of(record: LayerAffinity) -> LayerSource:
    """The smallest exact form of one layer's affinity (see the module docstring), from one image's record."""
    if record.window is not None:  # a static layer of one component: its kernels
        kernels = record.window.weight[:, 0]
        return StencilLayer(record.kind, tuple(record.grid), _array(kernels), tuple(record.window.dilation))
    if record.windows is not None:
        layout, local = record.windows
        return WindowedLayer(record.kind, _array(local), layout.window.numpy().copy(),
                             layout.place.numpy().copy())
    parts = record.components
    ordered = sorted(parts, key=lambda c: COMPONENT_ORDER.index(c) if c in COMPONENT_ORDER else 99)
    return DenseLayer(OrderedDict((c, _array(parts[c][0])) for c in ordered))


# ---------------------------------------------------------------------------------------------- the data
@dataclass
class LayerInfo:
    """What the explorer shows of one layer: its mixer's ``kind``, its token ``grid``, ``heads`` per component
    (in :data:`COMPONENT_ORDER`), the mixer's own words for its affinity (``description``, from
    ``describe()``) and for one of its M affinities (``head_unit``: ``"head"`` or ``"channel"``), and how the
    front end gets each component (``forms``: :data:`FORMS`; ``"whole"`` where not given)."""

    kind: str
    grid: tuple[int, int]
    heads: dict[str, int] = field(default_factory=dict)
    description: str = ""
    head_unit: str = "head"
    forms: dict[str, str] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    @property
    def components(self) -> list[str]:
        return list(self.heads)

    def image_independent(self, component: str) -> bool:
        """True when the component's affinity is the same for every image (a static one)."""
        return component == "static" or self.kind == "static"

    def form(self, component: str) -> str:
        return self.forms.get(component, "whole")


class ExplorerData:
    """The affinities of named models on a list of images, computed when first asked for, kept within one
    budget (see the module docstring).

    ``models`` is ``{name: nn.Module}``, ``images`` a list of ``(C, H, W)`` tensors (see :func:`as_images`)
    and
    ``cache_mb`` the budget of everything kept, in MiB (:meth:`held_bytes` says how much is held now).
    """

    #: A model is read as it is now: no epochs (a training run's snapshots have them: ``RunData``).
    epochs: tuple[int, ...] = ()
    #: The colour scales it offers (:data:`SCALE_MODES` but ``"fixed"``, which needs epochs).
    scale_modes = ("layer", "map")
    #: The through-depth views it offers (every one: it has the models).
    depth_modes = DEPTH_MODES

    def __init__(self, models: dict[str, nn.Module], images: list[torch.Tensor], cache_mb: float = 512):
        self.models = models
        self.images = images
        self.cache = Budget(int(cache_mb * 2**20), shared=[t for m in models.values()
                                                           for t in (*m.parameters(), *m.buffers())])
        self._catalogues: dict[str, OrderedDict] = {}  # model -> layer -> LayerInfo (plain data)
        self._scales: dict = {}  # (model, image, layer, component) -> Scale (plain data)

    def held_bytes(self) -> int:
        """The bytes of the arrays and tensors the explorer keeps now (layer sources, context graphs,
        through-depth maps): never more than ``cache_mb`` but for the one item in use."""
        return self.cache.used

    def image_batch(self, model_name: str, index: int) -> torch.Tensor:
        """Image ``index`` as a batch of one ``(1, C, H, W)``, on the model's device and dtype."""
        x = self.images[index].unsqueeze(0)
        try:
            return x.to(next(self.models[model_name].parameters()))
        except StopIteration:
            return x

    # ------------------------------------------------------------------ reading
    def _read(self, model_name: str, index: int) -> OrderedDict[str, LayerAffinity]:
        """``{layer: LayerAffinity}`` of one model for one image, in forward order: the layers with a token
        grid (one forward pass; nothing of it is kept but the sources made from it)."""
        model = self.models[model_name]
        with untouched(model, eval_mode=True):
            found = layer_affinities(model, self.image_batch(model_name, index))
        return OrderedDict((r.name, r) for r in found if r.grid is not None)

    def _key(self, model_name: str, index: int, layer: str) -> tuple:
        info = self.catalogue(model_name)[layer]
        shared = info.kind == "static"  # a static layer is the same for every image: kept once
        return ("layer", model_name, None if shared else index, layer)

    def source(self, model_name: str, index: int, layer: str) -> LayerSource:
        """The :class:`LayerSource` of one layer for one image (kept within the budget; read again, one
        forward
        pass, when it was dropped; the other layers that pass gives are kept only where they fit)."""
        key = self._key(model_name, index, layer)
        found = self.cache.get(key)
        if found is not None:
            return found
        records = self._read(model_name, index)
        wanted = self.cache.put(key, source_of(records.pop(layer)))
        for name, record in records.items():
            other = self._key(model_name, index, name)
            if other not in self.cache and self.cache.room() >= self._dense_bytes(model_name, name):
                self.cache.offer(other, source_of(record))
        return wanted

    def _dense_bytes(self, model_name: str, layer: str) -> int:
        """What a layer's source would take at most (its components dense, float32): a read keeps the
        layers it
        was not asked for only where they fit, and does not compute the others."""
        info = self.catalogue(model_name)[layer]
        n = info.grid[0] * info.grid[1]
        return sum(4 * m * n * n for c, m in info.heads.items()) if info.kind != "static" else 0

    def catalogue(self, model_name: str) -> OrderedDict:
        """``layer -> LayerInfo`` of a model (its viewable layers, in forward order; every call of a module
        that runs more than once), from one forward of image 0 (whose sources are kept where they fit)."""
        if model_name not in self._catalogues:
            try:
                records = self._read(model_name, 0)
            except ValueError as err:
                raise ValueError(f"model {model_name!r} has no layer to explore: {err}") from None
            if not records:
                raise ValueError(f"model {model_name!r} has no layer on a token grid to explore")
            catalogue, sources = OrderedDict(), {}
            for name, record in records.items():
                source = sources[name] = source_of(record)
                heads = source.heads()
                n = record.grid[0] * record.grid[1]
                catalogue[name] = LayerInfo(
                    record.kind, tuple(int(g) for g in record.grid), heads, record.description,
                    record.head_unit,
                    {c: "whole" if m * n * n <= WHOLE_BYTES else "query" for c, m in heads.items()},
                    {k: v for k, v in record.notes.items() if isinstance(v, str)})
            self._catalogues[model_name] = catalogue
            for name, source in sources.items():
                self.cache.offer(self._key(model_name, 0, name), source)
        return self._catalogues[model_name]

    def info(self, model_name: str, layer: str) -> LayerInfo:
        """The :class:`LayerInfo` of one layer (components, heads, forms)."""
        return self.catalogue(model_name)[layer]

    # ------------------------------------------------------------------ affinities
    def rows(self, model_name: str, index: int, layer: str, component: str, query, epoch: None = None
             ) -> np.ndarray:
        """Row ``query`` (``(row, col)`` on the layer's grid) of every head of one component, ``(M, N)``
        float32: the maps of that query, without the layer's ``(M, N, N)``."""
        _no_epoch(epoch)
        w = self.info(model_name, layer).grid[1]
        q = int(query[0]) * w + int(query[1])
        return self.source(model_name, index, layer).rows(component, np.asarray([q]))[:, 0]

    def affinity(self, model_name: str, index: int, layer: str, component: str,
                 epoch: None = None) -> np.ndarray:
        """One component's ``(M, N, N)`` affinity (float32), every query's rows. For a layer whose form is
        ``"query"`` this builds what the explorer never holds: use :meth:`rows`."""
        _no_epoch(epoch)
        source = self.source(model_name, index, layer)
        if isinstance(source, DenseLayer):
            return source.components[component]
        h, w = self.info(model_name, layer).grid
        return source.rows(component, np.arange(h * w))

    def scale(self, model_name: str, index: int, layer: str, component: str, epoch: None = None) -> Scale:
        """The colour scale of one component, shared by all its heads and queries (kept: a few numbers):
        :func:`~unifiedctx.viz.scales.scale_for` of its rows, taken in chunks (a kernel: one query of each
        border class, whose rows hold every value any row holds)."""
        _no_epoch(epoch)
        key = (model_name, index, layer, component)
        if key not in self._scales:
            source = self.source(model_name, index, layer)
            if isinstance(source, DenseLayer):
                self._scales[key] = scale_for(source.components[component])
            else:
                info = self.info(model_name, layer)
                n = info.grid[0] * info.grid[1]
                probes, step = source.probes(n), max(1, CHUNK // (info.heads[component] * n))
                self._scales[key] = merge_scales(scale_for(source.rows(component, probes[i:i + step]))
                                                 for i in range(0, len(probes), step))
        return self._scales[key]

    # ------------------------------------------------------------------ through depth
    def graph(self, model_name: str, index: int):
        """The :func:`~unifiedctx.context.context_graph` of one model on one image (kept within the
        budget)."""
        key = ("graph", model_name, index)
        found = self.cache.get(key)
        if found is None:
            model = self.models[model_name]
            with untouched(model, eval_mode=True):
                found = self.cache.put(key, context_graph(model, self.image_batch(model_name, index)))
        return found

    def depth(self, model_name: str, index: int, layer: str, query, mode: str) -> dict:
        """Token ``query`` of ``layer`` through depth, as plain data (kept within the budget).

        ``mode="rollout"``: :func:`~unifiedctx.context.rollout_maps` up to ``layer`` (every
        affinity before it composed, each residual sum as ``0.5 A + 0.5 I``; a network with token mixing
        the reader could not read is refused, naming the module), composed on the image's kept context graph;
        ``mode="ERF"``: :func:`~unifiedctx.context.erf_maps` of the layer's output (``|d y_query / d x|``, one
        backward). Either way ``map`` is ``(H_in, W_in)`` float64 on the input pixels, summing to 1.
        """
        if mode not in DEPTH_MODES[1:]:
            raise ValueError(f"mode must be one of {DEPTH_MODES[1:]}, got {mode!r}")
        query = (int(query[0]), int(query[1]))
        key = ("depth", model_name, index, layer, query, mode)
        found = self.cache.get(key)
        if found is not None:
            return found
        model, x = self.models[model_name], self.image_batch(model_name, index)
        if mode == "rollout":
            graph = self.graph(model_name, index)
            with untouched(model, eval_mode=True):
                data = rollout_maps(model, x, layer, query=query, graph=graph)
        else:
            with untouched(model, eval_mode=True):
                data = erf_maps(model, x, layer, query=query)
        return self.cache.put(key, data)

    def depth_maps(self, model_name: str, index: int, layer: str, queries, mode: str
                   ) -> tuple[np.ndarray, int]:
        """The through-depth maps of several queries (flat indices ``row * W + col`` on the layer's grid) at
        once: ``((Q, H_in, W_in) float64, how many layers they compose)``. The rollout carries the queries'
        rows back through the image's context graph together (the rows of :func:`rollout_maps`); the ERF is
        one
        backward per query. Nothing of it is kept."""
        queries = [int(q) for q in queries]
        model, x = self.models[model_name], self.image_batch(model_name, index)
        size = tuple(x.shape[-2:])
        if mode != "rollout":
            w = self.info(model_name, layer).grid[1]
            maps = [self.depth(model_name, index, layer, divmod(q, w), mode)["map"] for q in queries]
            return np.stack(maps).reshape(len(queries), *size), 1
        graph = self.graph(model_name, index)
        check_partial(graph, model, False, "the rollout", layer)
        prefix = graph.nodes[graph.resolve(layer)].tokens.prefix
        r = rollout_graph(graph, layer, rows=[prefix + q for q in queries])
        return r.maps[0].detach().double().cpu().numpy().reshape(len(queries), *size), len(r.layers)


def _no_epoch(epoch) -> None:
    if epoch is not None:
        raise ValueError(f"epoch={epoch!r}: these models are read as they are now, there are no epochs "
                         "(a training run's snapshots have them: AffinityExplorer.from_run)")


def depth_scale(data: dict) -> Scale:
    """The colour scale of one through-depth map (the library's one rule,
    :func:`~unifiedctx.viz.scales.scale_for`): ``0`` to its peak, with the uniform level
    ``1 / (H_in W_in)`` marked (the map is a distribution over the input pixels)."""
    m = np.asarray(data["map"], dtype=np.float64)
    return scale_for(m, rows=m.reshape(1, -1))


def default_layer(catalogue: OrderedDict) -> str:
    """The first layer of ``catalogue`` that has a mixed affinity, else its first layer."""
    for name, info in catalogue.items():
        if info.kind == "mixed":
            return name
    return next(iter(catalogue))
