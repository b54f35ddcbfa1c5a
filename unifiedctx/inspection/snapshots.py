"""Training snapshots: every mixer layer's affinities for a few probe images, epoch after epoch.

A network learns where to look: attention starts nearly uniform and has to *find* the locality a
convolution has from the start, Container's alpha leaves 50/50. To see it, a run keeps, for a few
probe images ``(B, C, H, W)``, the affinity of every mixer layer (every component the explorer
shows: Container's ``mixed``, ``dynamic`` and ``static``; one per layer elsewhere) and the mixing
weights (alpha / beta) of every mixed layer, before the first step (epoch 0) and after every epoch::

    from unifiedctx.inspection.snapshots import SnapshotStore, plan

    budget = plan(model, probe, epochs=10, budget_mb=64)   # measures epoch 0; refuses what cannot fit
    store = SnapshotStore.create(run_folder, probe, budget.first)       # epoch 0, before any step
    for epoch in range(1, 11):
        train_one_epoch(...)
        store.append(epoch, take_snapshot(model, probe))
    # a resumed run (its checkpoint after epoch k): SnapshotStore(run_folder).resume(probe, k)

    AffinityExplorer.from_run(run_folder)                   # the explorer with an epoch slider

**Format.** A run folder holds exactly these names (:func:`owns` says which names are ours):

* ``snapshots.json`` -- the manifest: ``{"format": "unifiedctx-snapshots", "version": 1, "dtype":
  "float16", "probe": {"file", "shape", "sha256"}, "layers": [{"name", "kind", "grid": [h, w],
  "description", "head_unit", "components": [{"name", "heads", "shared"}]}], "epochs": [{"epoch",
  "file", "sha256", "bytes", "mixing": {layer: {knob: value}}}]}``;
* ``snapshots.probe.npz`` -- the probe images, float32 ``(B, C, H, W)`` (array ``images``);
* ``snapshots.e0000.npz``, ``snapshots.e0001.npz``, ... -- one per epoch: array ``L<i>.<component>``
  is layer ``i``'s component, float16 ``(B, M, N, N)``, or ``(1, M, N, N)`` when ``shared`` (the
  same for every image: a static affinity).

Every file is written atomically (a temporary file renamed over the name) and the manifest last, so
a killed run leaves the previous epoch's consistent state; reading (:func:`read_snapshots`) checks
every entry of the manifest and every file against it (its SHA-256, its arrays' names, dtypes and
shapes) and names the file and the entry that is wrong. Files are read with
``numpy.load(allow_pickle=False)``: nothing in them is executed.

**Why float16.** The snapshots are the only record of an epoch's affinities once training moved on,
and what is read from them is numbers as well as pictures: an attention row's mass, the mean
attention distance over epochs, the colour scale fixed across epochs. float16 keeps every entry to a
relative ``2**-11`` (5e-4) of its value, small weights included (its step shrinks with the value,
down to 6e-8), where a uint8 colour index keeps only ``1/255`` of a scale's range: a softmax row
over 256 tokens (weights near 1/256 = 0.004) on a scale to 0.5 would keep 2 bits. It costs twice the
bytes of uint8 before compression; the arrays that compress are deflated in the files (local
affinities, a convolution's banded matrix, shrink 10 to 50 times; dense ones are stored as they
are). The budget (:func:`plan`, :func:`check_budget`) counts the uncompressed bytes, a bound known
before training.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_open, write_atomic
from ..validation import check_float, check_float_image, check_int, check_module, check_path
from .layers import layer_affinities
from .reader import untouched

__all__ = [
    "DEFAULT_BUDGET_MB", "LayerEntry", "Snapshot", "SnapshotBudgetError", "SnapshotFileError", "SnapshotPlan",
    "SnapshotRun", "SnapshotStore", "check_budget", "owns", "plan", "read_snapshots", "take_snapshot",
]

FORMAT, VERSION, DTYPE = "unifiedctx-snapshots", 1, "float16"
MANIFEST = "snapshots.json"
PROBE = "snapshots.probe.npz"
EPOCH_FILE = "snapshots.e{epoch:04d}.npz"
_OURS = re.compile(r"snapshots\.(json|probe\.npz|e\d{4,}\.npz)")
#: The default size budget of a run's snapshots (uncompressed), in MB (10^6 bytes).
DEFAULT_BUDGET_MB = 256.0
#: The largest magnitude float16 holds.
FLOAT16_MAX = float(np.finfo(np.float16).max)


def owns(name: str) -> bool:
    """True for exactly the file names the snapshots of a run write into its folder (a run folder
    asks this before it calls a file its own): ``snapshots.json``, ``snapshots.probe.npz`` and
    ``snapshots.e<epoch, 4 digits or more>.npz``."""
    return isinstance(name, str) and bool(_OURS.fullmatch(name))


class SnapshotBudgetError(ValueError):
    """The snapshots would not fit in their budget; the message says what would."""


class SnapshotFileError(ValueError):
    """A snapshot file (or an entry of the manifest) is not what the manifest says: named in the message."""


# ------------------------------------------------------------------ one snapshot, in memory
@dataclass(frozen=True)
class LayerEntry:
    """One watched layer: its module ``name``, its mixer's ``kind``, token ``grid`` ``(h, w)``, the
    mixer's words for its affinity (``description``) and for one of its M affinities
    (``head_unit``), and its ``components``: ``(name, heads M, shared)`` in the order the layer gives
    them (``shared``: the same for every image, stored once)."""

    name: str
    kind: str
    grid: tuple[int, int]
    description: str
    head_unit: str
    components: tuple[tuple[str, int, bool], ...]

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "grid": list(self.grid),
                "description": self.description, "head_unit": self.head_unit,
                "components": [{"name": c, "heads": m, "shared": s} for c, m, s in self.components]}

    def shape(self, component: str, images: int) -> tuple[int, int, int, int]:
        """The stored shape of ``component``: ``(B or 1, M, N, N)``."""
        (_, m, shared), n = next(c for c in self.components if c[0] == component), self.grid[0] * self.grid[1]
        return (1 if shared else images, m, n, n)


@dataclass
class Snapshot:
    """Every watched layer's affinities for the probe images at one moment of training.

    ``layers`` in forward order; ``maps[(layer, component)]`` float16 ``(B or 1, M, N, N)`` (row
    ``q`` of head ``m`` for image ``b``: how much token ``q`` takes from every token); ``mixing``
    ``{layer: {knob: value}}`` (``mixing_weights``: Container's alpha / beta, GPSA's per-head gates);
    ``images`` B.
    """

    layers: tuple[LayerEntry, ...]
    maps: dict[tuple[str, str], np.ndarray]
    mixing: dict[str, dict]
    images: int

    @property
    def nbytes(self) -> int:
        """The affinities' size in bytes, uncompressed (what the budget counts)."""
        return sum(a.nbytes for a in self.maps.values())

    def layer_bytes(self) -> OrderedDict[str, int]:
        """Bytes per layer (all its components), in forward order."""
        return OrderedDict((la.name, sum(self.maps[(la.name, c)].nbytes for c, _, _ in la.components))
                           for la in self.layers)

    def image_bytes(self) -> int:
        """Bytes that grow with each probe image (the components that are not ``shared``)."""
        return sum(self.maps[(la.name, c)][:1].nbytes
                   for la in self.layers for c, _, s in la.components if not s)


def take_snapshot(model: nn.Module, images: torch.Tensor, layers=None) -> Snapshot:
    """Every mixer layer's affinities of ``model`` for ``images`` ``(B, C, H, W)``, as a :class:`Snapshot`.

    Read through the library's one reader (``layer_affinities``: unifiedctx mixers through their
    contract, any other network through ``inspect_model``) in eval mode, then left as it was found
    (modes, BatchNorm statistics, ``requires_grad``, the random state): a snapshot taken in the
    middle of training changes nothing of it. ``layers``: module names or ``fnmatch`` patterns to
    watch (default every layer with an affinity view). A value beyond float16's range (65504) is a
    ``ValueError`` naming the layer (it would be stored as infinity).
    """

    check_module("model", model)
    check_float_image("images", images)
    parameter = next(model.parameters(), None)
    x = images.to(parameter) if parameter is not None else images
    with untouched(model, eval_mode=True), torch.no_grad():
        records = [r for r in layer_affinities(model, x, layers=layers) if r.grid is not None]
        entries, maps, mixing = [], {}, {}
        for record in records:
            parts = record.components
            comps = []
            for name, a in parts.items():
                half = a.detach().to("cpu", torch.float16)  # rounded to nearest, as IEEE 754 says
                if bool(torch.isinf(half).any()):  # an infinity: was a finite value beyond float16's range?
                    finite = a.detach().float()[torch.isfinite(a.detach())]
                    if finite.numel() and float(finite.abs().max()) > FLOAT16_MAX:
                        peak = float(finite.abs().max())
                        raise ValueError(f"layer {record.name!r} ({name}) has affinities up to {peak:.3g}, "
                                         f"beyond float16's {FLOAT16_MAX:g}: they cannot be stored (has the "
                                         "model diverged?)")
                shared = a.shape[0] == 1 and len(images) > 1
                maps[(record.name, name)] = half.numpy()
                comps.append((name, int(a.shape[1]), shared))
            entries.append(LayerEntry(record.name, record.kind, tuple(int(g) for g in record.grid),
                                      record.description, record.head_unit, tuple(comps)))
            if record.mixing_weights:
                mixing[record.name] = dict(record.mixing_weights)
    if not entries:
        raise ValueError(f"model {type(model).__name__} has no layer with an affinity on a token grid to "
                         "watch")
    return Snapshot(tuple(entries), maps, mixing, len(images))


# ------------------------------------------------------------------ the budget, before training
@dataclass(frozen=True)
class SnapshotPlan:
    """What watching a run costs: one snapshot measured (``first``, epoch 0), kept for ``epochs``
    more epochs (``epochs + 1`` snapshots in all) within ``budget_bytes``."""

    first: Snapshot
    epochs: int
    budget_bytes: int
    probe_bytes: int

    @property
    def bytes_per_epoch(self) -> int:
        return self.first.nbytes

    @property
    def total_bytes(self) -> int:
        """Every snapshot (epoch 0 to ``epochs``) and the probe images, uncompressed."""
        return (self.epochs + 1) * self.bytes_per_epoch + self.probe_bytes


def _mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB"


#: The arguments the budget's messages name, as :func:`plan` calls them (``fit`` names its own:
#: ``watch``, ``watch_layers``, ``watch_budget_mb``).
NAMES = {"images": "images", "layers": "layers", "budget_mb": "budget_mb"}


def _what_fits(snapshot: Snapshot, epochs: int, budget: int, probe_bytes: int, names: dict) -> list[str]:
    """The ways to fit: fewer epochs, fewer images, fewer layers (each stated as a number)."""
    per_epoch, b = snapshot.nbytes, snapshot.images
    ways = []
    most_epochs = (budget - probe_bytes) // per_epoch - 1 if per_epoch else epochs
    ways.append(f"{max(most_epochs, 0)} epochs with these images and layers" if most_epochs >= 1 else
                "not even one epoch after epoch 0 with these images and layers")
    per_image, probe_per_image = snapshot.image_bytes(), probe_bytes // max(b, 1)
    shared = per_epoch - b * per_image
    images = max((k for k in range(1, b) if (epochs + 1) * (shared + k * per_image) + k * probe_per_image
                  <= budget), default=0)
    ways.append(f"{images} of the {b} images for {epochs} epochs ({names['images']}[:{images}])"
                if images else f"no number of images for {epochs} epochs")
    sizes = snapshot.layer_bytes()
    room, kept = (budget - probe_bytes) // (epochs + 1), []
    for name, size in sorted(sizes.items(), key=lambda kv: kv[1]):
        if size > room:
            break
        room -= size
        kept.append(name)
    largest = ", ".join(f"{n} {_mb(s)}" for n, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
    chosen = (f"{names['layers']}={[n for n in sizes if n in kept]}" if 0 < len(kept) <= 6 else
              f"the smallest, {names['layers']}=[...]")
    ways.append(f"{len(kept)} of the {len(sizes)} layers for {epochs} epochs ({chosen}; the largest per "
                f"epoch: {largest})")
    return ways


def check_budget(snapshot: Snapshot, epochs: int, budget_mb: float = DEFAULT_BUDGET_MB,
                 probe_bytes: int = 0, *, names: dict | None = None) -> None:
    """Refuse (:class:`SnapshotBudgetError`) snapshots that would not fit: ``epochs + 1`` copies of
    ``snapshot`` (epoch 0 and every epoch after) and the probe images (``probe_bytes``) over
    ``budget_mb``. The message says how many epochs, images or layers would fit, naming the
    arguments as ``names`` gives them (:data:`NAMES` by default)."""
    names = {**NAMES, **(names or {})}
    epochs = check_int("epochs", epochs, low=1)
    budget = int(check_float(names["budget_mb"], budget_mb, low=0, low_open=True) * 1e6)
    need = (epochs + 1) * snapshot.nbytes + probe_bytes
    if need > budget:
        ways = _what_fits(snapshot, epochs, budget, probe_bytes, names)
        raise SnapshotBudgetError(
            f"the snapshots of {snapshot.images} images x {len(snapshot.layers)} layers x {epochs + 1} "
            f"epochs (0..{epochs}) need {_mb(need)} ({_mb(snapshot.nbytes)} per epoch, uncompressed), over "
            f"{names['budget_mb']}={budget_mb:g}. What fits in {budget_mb:g} MB: " + "; or ".join(ways) +
            f". Or raise {names['budget_mb']}.")


def plan(model: nn.Module, images: torch.Tensor, epochs: int, *, budget_mb: float = DEFAULT_BUDGET_MB,
         layers=None, names: dict | None = None) -> SnapshotPlan:
    """Measure one snapshot of ``model`` for ``images`` (epoch 0, before any step) and check that
    ``epochs`` more fit in ``budget_mb`` (:func:`check_budget`), before anything is trained or
    written. Returns the :class:`SnapshotPlan`; its ``first`` is the epoch-0 snapshot to store.
    ``names``: what the caller calls ``images``, ``layers`` and ``budget_mb`` (for the messages)."""
    names = {**NAMES, **(names or {})}
    check_module("model", model)
    check_float_image(names["images"], images)
    epochs = check_int("epochs", epochs, low=1)
    check_float(names["budget_mb"], budget_mb, low=0, low_open=True)
    first = take_snapshot(model, images, layers=layers)
    probe_bytes = images.numel() * 4
    check_budget(first, epochs, budget_mb, probe_bytes, names=names)
    return SnapshotPlan(first, epochs, int(budget_mb * 1e6), probe_bytes)


# ------------------------------------------------------------------ files
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _deflates(data: bytes) -> bool:
    """Whether deflating an array pays: two samples of its bytes (its start and its middle, 64 kB
    each) shrink by more than a fifth. A local affinity (a convolution's banded matrix) is mostly
    zeros and shrinks 10 to 50 times; a dense one (a token MLP's, attention's) hardly shrinks, and
    deflating it would only cost time (three times the live view's push, for MLP-Mixer)."""
    sample = data[:1 << 16] + data[len(data) // 2:len(data) // 2 + (1 << 16)]
    return len(zlib.compress(sample, 1)) < 0.8 * len(sample)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """``arrays`` into ``path`` atomically, as an ``.npz`` (a zip of ``.npy`` files, what
    ``numpy.load`` reads) with each array deflated (level 1) where that pays (:func:`_deflates`),
    stored as it is otherwise, every entry dated 1980 so the same arrays make the same bytes.
    Returns the file's SHA-256."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", allowZip64=True) as archive:
        for name, array in arrays.items():
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
            data = entry.getvalue()
            how = zipfile.ZIP_DEFLATED if _deflates(data) else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=how, compresslevel=1)
    return _sha256(path)


def _arrays(snapshot: Snapshot) -> dict[str, np.ndarray]:
    return {f"L{i}.{c}": snapshot.maps[(la.name, c)] for i, la in enumerate(snapshot.layers)
            for c, _, _ in la.components}


def _load_npz(path: Path, what: str, sha256: str) -> dict[str, np.ndarray]:
    """Every array of ``path`` (checked against its SHA-256), or :class:`SnapshotFileError` naming it."""
    if not path.is_file():
        raise SnapshotFileError(f"{path.name} ({what}) is missing from {path.parent}")
    if _sha256(path) != sha256:
        raise SnapshotFileError(f"{path.name} ({what}) in {path.parent} is not the file the manifest "
                                f"{MANIFEST} recorded (its SHA-256 differs): changed or damaged")
    try:
        with np.load(path, allow_pickle=False) as found:
            return {name: found[name] for name in found.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise SnapshotFileError(f"{path.name} ({what}) in {path.parent} cannot be read: {error}") from None


# ------------------------------------------------------------------ reading back
@dataclass
class SnapshotRun:
    """A run's snapshots, read and checked: the probe ``images`` float32 ``(B, C, H, W)``, the
    watched ``layers`` (:class:`LayerEntry`, forward order), the stored ``epochs`` and, per epoch,
    its ``maps`` (``{(layer, component): float16 (B or 1, M, N, N)}``) and ``mixing`` weights."""

    folder: Path
    images: torch.Tensor
    layers: tuple[LayerEntry, ...]
    epochs: list[int]
    snapshots: dict[int, Snapshot] = field(repr=False)

    def layer(self, name: str) -> LayerEntry:
        return next(la for la in self.layers if la.name == name)

    def affinity(self, epoch: int, layer: str, component: str, image: int = 0) -> np.ndarray:
        """Image ``image``'s ``(M, N, N)`` affinity of one layer component at ``epoch`` (float32; a
        shared component is the same for every image)."""
        a = self.snapshots[epoch].maps[(layer, component)]
        return a[0 if a.shape[0] == 1 else image].astype(np.float32)

    def mixing(self, epoch: int) -> dict[str, dict]:
        """``{layer: {knob: value}}`` at ``epoch`` (Container's alpha and beta, GPSA's gates)."""
        return self.snapshots[epoch].mixing


def _entry_error(folder: Path, where: str, problem: str) -> SnapshotFileError:
    return SnapshotFileError(f"{MANIFEST} in {folder}: {where} {problem}")


def _expect(folder: Path, where: str, value, kind, what: str):
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise _entry_error(folder, where, f"must be {what}, got {type(value).__name__} {str(value)[:60]}")
    return value


def _read_layers(folder: Path, entries) -> tuple[LayerEntry, ...]:
    _expect(folder, "'layers'", entries, list, "a list of layers")
    layers, seen = [], set()
    for i, e in enumerate(entries):
        where = f"layers[{i}]"
        _expect(folder, where, e, dict, "a dict")
        for key in ("name", "kind", "description", "head_unit"):
            _expect(folder, f"{where}['{key}']", e.get(key), str, "a string")
        grid = e.get("grid")
        if not (isinstance(grid, list) and len(grid) == 2 and all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
            raise _entry_error(folder, f"{where}['grid']", f"must be [h, w] of positive ints, got {grid!r}")
        comps = _expect(folder, f"{where}['components']", e.get("components"), list, "a list of components")
        checked = []
        for k, c in enumerate(comps):
            cw = f"{where}['components'][{k}]"
            _expect(folder, cw, c, dict, "a dict")
            name = _expect(folder, f"{cw}['name']", c.get("name"), str, "a string")
            heads = _expect(folder, f"{cw}['heads']", c.get("heads"), int, "a positive int")
            shared = _expect(folder, f"{cw}['shared']", c.get("shared"), bool, "true or false")
            if heads < 1:
                raise _entry_error(folder, f"{cw}['heads']", f"must be a positive int, got {heads}")
            checked.append((name, heads, shared))
        if not checked or e["name"] in seen:
            raise _entry_error(folder, where, "has no component" if not checked else
                               f"repeats the layer {e['name']!r}")
        seen.add(e["name"])
        layers.append(LayerEntry(e["name"], e["kind"], (grid[0], grid[1]), e["description"], e["head_unit"],
                                 tuple(checked)))
    if not layers:
        raise _entry_error(folder, "'layers'", "is empty")
    return tuple(layers)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise SnapshotFileError(f"no snapshots in {folder}: {MANIFEST} is missing (was the run watched?)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SnapshotFileError(f"{MANIFEST} in {folder} is not valid JSON: {error}") from None
    _expect(folder, "the manifest", manifest, dict, "a JSON object")
    if (manifest.get("format"), manifest.get("version"), manifest.get("dtype")) != (FORMAT, VERSION, DTYPE):
        raise _entry_error(folder, "'format'/'version'/'dtype'",
                           f"must be {FORMAT!r} / {VERSION} / {DTYPE!r}, got {manifest.get('format')!r} / "
                           f"{manifest.get('version')!r} / {manifest.get('dtype')!r}")
    probe = _expect(folder, "'probe'", manifest.get("probe"), dict, "a dict")
    shape = probe.get("shape")
    if probe.get("file") != PROBE or not (isinstance(shape, list) and len(shape) == 4 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise _entry_error(folder, "'probe'", f"must name {PROBE!r} with a shape [B, C, H, W], got {probe!r}")
    _expect(folder, "'probe'['sha256']", probe.get("sha256"), str, "a SHA-256 (hex)")
    _expect(folder, "'epochs'", manifest.get("epochs"), list, "a list of epochs")
    return manifest


def _check_epoch_entry(folder: Path, i: int, entry, previous: int | None) -> int:
    where = f"epochs[{i}]"
    _expect(folder, where, entry, dict, "a dict")
    epoch = _expect(folder, f"{where}['epoch']", entry.get("epoch"), int, "an int")
    if epoch < 0 or (previous is None and epoch != 0) or (previous is not None and epoch <= previous):
        raise _entry_error(folder, f"{where}['epoch']", f"is {epoch}: epochs must start at 0 and increase "
                           f"(the one before is {previous})")
    if entry.get("file") != EPOCH_FILE.format(epoch=epoch):
        raise _entry_error(folder, f"{where}['file']", f"must be {EPOCH_FILE.format(epoch=epoch)!r}, got "
                           f"{entry.get('file')!r}")
    _expect(folder, f"{where}['sha256']", entry.get("sha256"), str, "a SHA-256 (hex)")
    mixing = _expect(folder, f"{where}['mixing']", entry.get("mixing"), dict, "a dict {layer: {knob: value}}")
    for layer, knobs in mixing.items():
        _expect(folder, f"{where}['mixing'][{layer!r}]", knobs, dict, "a dict {knob: value}")
        for knob, value in knobs.items():
            values = value if isinstance(value, list) else [value]
            if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                       for v in values):
                raise _entry_error(folder, f"{where}['mixing'][{layer!r}][{knob!r}]", "must be a number "
                                   f"(null: not finite) or a list of them, got {str(value)[:60]}")
    return epoch


def read_snapshots(folder) -> SnapshotRun:
    """A run folder's snapshots, every entry checked (see the module docstring): the manifest's
    entries and types, every file's SHA-256, every array's name, dtype (float16) and shape. A bad
    entry is a :class:`SnapshotFileError` (a ``ValueError``) naming the file and the entry."""
    folder = check_path("folder", folder, kind="folder", what="run")
    manifest = _read_manifest(folder)
    layers = _read_layers(folder, manifest.get("layers"))
    probe = manifest["probe"]
    found = _load_npz(folder / PROBE, "the probe images", probe["sha256"])
    images = found.get("images")
    if images is None or images.dtype != np.float32 or list(images.shape) != probe["shape"] or set(found) != {
            "images"}:
        raise SnapshotFileError(f"{PROBE} in {folder} must hold one float32 array 'images' of shape "
                                f"{tuple(probe['shape'])}, got "
                                + ", ".join(f"{k} {v.dtype} {v.shape}" for k, v in found.items()))
    b = probe["shape"][0]
    snapshots, previous = {}, None
    for i, entry in enumerate(manifest["epochs"]):
        epoch = previous = _check_epoch_entry(folder, i, entry, previous)
        arrays = _load_npz(folder / entry["file"], f"epoch {epoch}", entry["sha256"])
        maps, expected = {}, set()
        for k, layer in enumerate(layers):
            for c, _, _ in layer.components:
                key, shape = f"L{k}.{c}", layer.shape(c, b)
                expected.add(key)
                a = arrays.get(key)
                if a is None or a.dtype != np.float16 or a.shape != shape:
                    got = "missing" if a is None else f"{a.dtype} {a.shape}"
                    raise SnapshotFileError(f"{entry['file']} (epoch {epoch}) in {folder}: array {key!r} "
                                            f"(layer {layer.name!r}, {c}) must be float16 {shape}, got {got}")
                maps[(layer.name, c)] = a
        extra = sorted(set(arrays) - expected)
        if extra:
            raise SnapshotFileError(f"{entry['file']} (epoch {epoch}) in {folder} holds arrays the manifest "
                                    f"does not list: {', '.join(extra[:5])}")
        snapshots[epoch] = Snapshot(layers, maps, entry["mixing"], b)
    if not snapshots:
        raise SnapshotFileError(f"{MANIFEST} in {folder} lists no epoch: nothing was recorded")
    return SnapshotRun(folder, torch.from_numpy(images), layers, list(snapshots), snapshots)


# ------------------------------------------------------------------ writing, epoch after epoch
class SnapshotStore:
    """The snapshots of one run folder, written epoch after epoch (see the module docstring).

    ``SnapshotStore.create(folder, images, first)`` starts them with epoch 0; :meth:`append` adds the
    next epoch; :meth:`resume` makes a resumed run's store exactly what the uninterrupted run's
    would be at its checkpoint (the epochs after it are dropped, as their training is redone).
    """

    def __init__(self, folder):
        self.folder = check_path("folder", folder, kind="folder", what="run")

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        """True when the folder holds snapshots (a manifest)."""
        return self.path.is_file()

    @classmethod
    def create(cls, folder, images: torch.Tensor, first: Snapshot) -> SnapshotStore:
        """Start the snapshots of a run in ``folder`` (made if missing): the probe ``images`` and
        ``first`` as epoch 0. Refuses a folder that already holds snapshots (resume them instead)."""
        check_path("folder", folder, kind="folder", must_exist=False, what="run")
        Path(folder).expanduser().mkdir(parents=True, exist_ok=True)
        store = cls(folder)
        if store.exists():
            raise FileExistsError(f"{store.path} exists: this folder already holds snapshots; resume them "
                                  f"(SnapshotStore(folder).resume(images, epoch)) or use a new folder")
        images = _check_probe(images, first)
        sha = _write_npz(store.folder / PROBE, {"images": images.detach().cpu().float().numpy()})
        manifest = {"format": FORMAT, "version": VERSION, "dtype": DTYPE,
                    "probe": {"file": PROBE, "shape": list(images.shape), "sha256": sha},
                    "layers": [la.as_json() for la in first.layers], "epochs": []}
        store._write(manifest, 0, first)
        return store

    @classmethod
    def restart(cls, folder, images: torch.Tensor, first: Snapshot) -> SnapshotStore:
        """Start the snapshots of a run again from its first step (a run stopped before its first
        checkpoint and started anew): the stored ones are dropped (the manifest first, then the
        files it owns, :func:`owns`), then :meth:`create`."""
        store = cls(folder)
        _check_probe(images, first)
        if store.exists():
            files = [e.get("file") for e in store.manifest()["epochs"]]
            store.path.unlink()
            for name in [*files, PROBE]:
                if owns(name):
                    (store.folder / name).unlink(missing_ok=True)
        return cls.create(folder, images, first)

    def manifest(self) -> dict:
        """The manifest as stored (its entries checked)."""
        manifest = _read_manifest(self.folder)
        _read_layers(self.folder, manifest.get("layers"))
        previous = None
        for i, entry in enumerate(manifest["epochs"]):
            previous = _check_epoch_entry(self.folder, i, entry, previous)
        return manifest

    @property
    def epochs(self) -> list[int]:
        """The stored epochs."""
        return [e["epoch"] for e in self.manifest()["epochs"]]

    def append(self, epoch: int, snapshot: Snapshot) -> None:
        """Store ``snapshot`` as ``epoch``, the next one after the last stored: its file first, then
        the manifest (so a run killed between the two still reads as it was)."""
        manifest = self.manifest()
        epoch = check_int("epoch", epoch, low=1)
        last = manifest["epochs"][-1]["epoch"] if manifest["epochs"] else -1
        if epoch <= last:
            raise ValueError(f"epoch {epoch} is already stored (the last stored is {last}); a resumed run "
                             f"first drops the epochs after its checkpoint: SnapshotStore.resume")
        if [la.as_json() for la in snapshot.layers] != manifest["layers"]:
            raise ValueError("snapshot's layers (names, grids, components, heads) are not those of the "
                             f"stored snapshots in {self.folder}: watch one model and its layers every epoch")
        if snapshot.images != manifest["probe"]["shape"][0]:
            raise ValueError(f"snapshot has {snapshot.images} images, the stored ones "
                             f"{manifest['probe']['shape'][0]}")
        self._write(manifest, epoch, snapshot)

    def _write(self, manifest: dict, epoch: int, snapshot: Snapshot) -> None:
        name = EPOCH_FILE.format(epoch=epoch)
        sha = _write_npz(self.folder / name, _arrays(snapshot))
        manifest["epochs"].append({"epoch": epoch, "file": name, "sha256": sha, "bytes": snapshot.nbytes,
                                   "mixing": _plain(snapshot.mixing)})
        write_atomic(self.path, json.dumps(manifest, indent=1))

    def truncate(self, epoch: int) -> None:
        """Keep the epochs up to ``epoch`` (which must be stored) and drop the others: the manifest
        first, then their files."""
        manifest = self.manifest()
        epoch = check_int("epoch", epoch, low=0)
        stored = [e["epoch"] for e in manifest["epochs"]]
        if epoch not in stored:
            raise ValueError(f"epoch {epoch} is not stored in {self.folder} (stored: {stored}); the "
                             "snapshots cannot be resumed from it")
        dropped = [e["file"] for e in manifest["epochs"] if e["epoch"] > epoch]
        manifest["epochs"] = [e for e in manifest["epochs"] if e["epoch"] <= epoch]
        write_atomic(self.path, json.dumps(manifest, indent=1))
        for name in dropped:
            if owns(name):
                (self.folder / name).unlink(missing_ok=True)

    def resume(self, images: torch.Tensor, epoch: int) -> None:
        """Prepare the store of a run resumed from its checkpoint after ``epoch``: the probe images
        must be the stored ones (exactly), and the epochs after ``epoch`` are dropped, so the
        resumed run appends ``epoch + 1``, ... exactly as the uninterrupted one did."""
        check_float_image("images", images)
        run_images = read_snapshots(self.folder).images
        if tuple(images.shape) != tuple(run_images.shape) or not torch.equal(
                images.detach().cpu().float(), run_images):
            raise ValueError(f"images are not the probe images stored in {self.folder / PROBE} "
                             f"({tuple(run_images.shape)}): a resumed run watches the same images")
        self.truncate(epoch)

    def read(self) -> SnapshotRun:
        """Every stored snapshot, checked (:func:`read_snapshots`)."""
        return read_snapshots(self.folder)


def _check_probe(images, first: Snapshot) -> torch.Tensor:
    check_float_image("images", images)
    if not isinstance(first, Snapshot):
        raise TypeError("first must be a Snapshot (take_snapshot, or plan(...).first), got "
                        f"{type(first).__name__}")
    if len(images) != first.images:
        raise ValueError(f"images has {len(images)} images but the snapshot was taken of {first.images}")
    return images


def _plain(value):
    """Mixing weights as JSON numbers (finite ones; NaN or inf become null: JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    value = float(value)
    return value if math.isfinite(value) else None

