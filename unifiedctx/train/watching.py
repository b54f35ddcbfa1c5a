"""Watching a run learn: what ``fit(..., watch=images)`` keeps in the run folder and shows live.

``fit(model, data, recipe, out=folder, watch=probe, live=True)`` with ``probe`` a few images
``(B, C, H, W)`` as the model takes them (``data.normalize(data.test_x[:4])``):

* **before anything is written** (:meth:`RunWatch.plan`): the probe's shape is checked against the
  data's, one snapshot of every watched layer is taken of the initial weights (epoch 0) and
  ``epochs + 1`` of them must fit ``watch_budget_mb``
  (:class:`~unifiedctx.inspection.snapshots.SnapshotBudgetError` says how many images, layers or
  epochs would fit); a refused run makes no folder;
* **in the run folder** (rank 0 only), through the snapshot store
  (:mod:`unifiedctx.inspection.snapshots`: ``snapshots.json``, ``snapshots.probe.npz``,
  ``snapshots.e0000.npz``, ...): epoch 0 when training starts, epoch ``k`` after epoch ``k``, taken of
  the weights that ``last.pt`` holds at that epoch. A run resumed from its checkpoint after epoch ``k``
  keeps exactly the epochs ``0..k`` (the later ones are dropped, as their training is redone; an
  epoch ``k`` that a stop between the checkpoint and the snapshot lost is taken again of the
  checkpoint's weights), so its files equal the uninterrupted run's, byte for byte;
* **live** (``live=True``: a :class:`~unifiedctx.widgets.LiveView` shown in the cell; or a view of
  one's own): the stored epochs, then each epoch's snapshot and history row as it ends. Within an
  epoch the curves get a point every ``max(1, steps // ROWS_PER_EPOCH)`` steps (the mean loss of the
  steps since the last point, at the fractional epoch ``epoch - 1 + step / steps``), and at those
  points the maps too when the last maps are older than ``1 / MAP_SHARE`` times what taking and
  sending them cost: maps within an epoch take at most ``MAP_SHARE`` (1 %) of the training time, so
  they come every few steps where an epoch is long, and seldom or never where an epoch takes about
  ``1 / MAP_SHARE`` snapshots' time or less (then the maps come once an epoch).

Watching changes nothing of the training (a snapshot leaves the model, its BatchNorm statistics and
the random state as it found them), so a watched run trains the very weights an unwatched one does,
and an unwatched run writes exactly the files it always wrote. A run folder that holds snapshots
resumes only with ``watch`` (the same images): a watched run stays watched.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..inspection.snapshots import SnapshotBudgetError, SnapshotStore, plan, read_snapshots, take_snapshot
from .history import History

#: fit's names of what :func:`~unifiedctx.inspection.snapshots.plan` calls images, layers, budget_mb.
NAMES = {"images": "watch", "layers": "watch_layers", "budget_mb": "watch_budget_mb"}

#: The live view's curves get a point ROWS_PER_EPOCH times an epoch (every ``max(1, steps // 4)`` steps).
ROWS_PER_EPOCH = 4
#: The largest share of the training time that the live view's maps within an epoch may take.
MAP_SHARE = 0.01
#: The curve of the within-epoch points: the mean training loss of the steps since the last point.
RECENT_LOSS = "train_loss (recent steps)"


def probe_fits_data(images: torch.Tensor, shape: tuple[int, int, int] | None) -> None:
    """``images`` ``(B, C, H, W)`` must have the data's ``shape`` ``(C, H, W)`` where the data says it."""
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"watch holds images of shape {tuple(images.shape[1:])} (C, H, W), but the data's "
                         f"are {tuple(shape)}: watch images as the model takes them, e.g. "
                         "data.normalize(data.test_x[:4])")


class RunWatch:
    """The watching of one :func:`~unifiedctx.train.fit`, told of the loop's three points before the
    caller's ``callback`` is: training starts (:meth:`started`), a step is done (:meth:`step`), an
    epoch is done (:meth:`epoch_done`); see the module docstring. Made by :meth:`plan` before the run
    folder is claimed; on every rank but 0 (``active=False``) it does nothing."""

    def __init__(self, images: torch.Tensor, first, layers, live, history: History, active: bool):
        self.images, self.first, self.layers, self.history = images, first, layers, history
        self.live_option, self.active = live, active
        self.store: SnapshotStore | None = None
        self.view = None
        self.recent, self.recent_steps = 0.0, 0
        self.map_cost, self.last_map = 0.0, 0.0

    @classmethod
    def plan(cls, model: nn.Module, shape, run, epochs: int, history: History, is_main: bool) -> RunWatch:
        """Check the probe (``run.watch``) against the data's image ``shape`` ``(C, H, W)`` (or ``None``)
        and the budget (``run.watch_budget_mb``, ``run.watch_layers``) by one snapshot of the initial
        weights, before anything is written. Every rank checks (the same numbers: every rank refuses
        alike); only rank 0 writes and shows. ``history``: the run's, read when a resumed run's view opens."""
        images = run.watch.detach()
        probe_fits_data(images, shape)
        try:
            budget = plan(model, images, epochs, budget_mb=run.watch_budget_mb, layers=run.watch_layers,
                          names=NAMES)
        except SnapshotBudgetError:
            raise
        except (RuntimeError, ValueError) as err:  # the model's own forward refused the probe, or no layer
            reason = " ".join(str(err).split())[:300]
            raise ValueError(f"watch: the first snapshot (epoch 0) of the images {tuple(images.shape)} "
                             f"(watch_layers={run.watch_layers!r}) cannot be taken: {reason}") from err
        return cls(images.cpu().float(), budget.first, run.watch_layers, run.live, history, is_main)

    # ------------------------------------------------------------------ the loop's three points
    def started(self, epoch: int, model: nn.Module, out: Path | None) -> None:
        """The run folder is claimed and ``epoch`` epochs are done (the checkpoint's weights loaded):
        the snapshots begin (epoch 0) or become the uninterrupted run's at ``epoch``; the view opens."""
        if not self.active:
            return
        if out is not None and epoch == 0:  # a new run (or one stopped before its first checkpoint)
            self.store = SnapshotStore.restart(out, self.images, self.first)
        elif out is not None:
            if not (out / "snapshots.json").exists():
                raise ValueError(f"cannot watch the run in {out} from epoch {epoch}: it was not watched from "
                                 f"its start (it holds no snapshots), so epochs 0..{epoch} are lost. Resume "
                                 "it without watch, or train a new run with watch in another folder")
            self.store = self.resume_store(out, epoch, model)
        self.open_view(epoch, model)

    def resume_store(self, out: Path, epoch: int, model: nn.Module) -> SnapshotStore:
        """The snapshots of a run resumed from its checkpoint after ``epoch``, made exactly the
        uninterrupted run's at ``epoch``: the same probe images and layers, the epochs after ``epoch``
        dropped, an epoch ``epoch`` lost between its checkpoint and its snapshot taken again (of the
        checkpoint's weights, now loaded: the same numbers)."""
        store = SnapshotStore(out)
        manifest = store.manifest()
        if manifest["layers"] != [la.as_json() for la in self.first.layers]:
            stored = [la["name"] for la in manifest["layers"]]
            raise ValueError(f"the snapshots in {out} watch other layers ({', '.join(stored)}) than "
                             f"watch_layers={self.layers!r} gives: resume with the run's own watch_layers")
        stored = [e["epoch"] for e in manifest["epochs"]]
        if epoch in stored:
            store.resume(self.images, epoch)
        elif stored and stored[-1] == epoch - 1:
            store.resume(self.images, epoch - 1)
            store.append(epoch, take_snapshot(model, self.images, layers=self.layers))
        else:
            raise ValueError(f"the snapshots in {out} stop at epoch {stored[-1] if stored else None} but its "
                             f"checkpoint is at epoch {epoch}: the epochs between were trained without watch "
                             "and are lost. Resume it without watch, or train a new run with watch")
        return store

    def open_view(self, epoch: int, model: nn.Module) -> None:
        """``live=True``: a LiveView displayed now; a view of the caller's is used as it is. It is
        given what the run holds so far (every stored epoch and its history row)."""
        if self.live_option is False:
            return
        if self.live_option is True:
            from IPython.display import display

            from ..widgets.live import LiveView

            self.view = LiveView(self.images)
            display(self.view)
        else:
            self.view = self.live_option
        started = time.perf_counter()
        if self.store is not None:
            run = self.store.read()
            for e in run.epochs:
                self.view.push(e, run.snapshots[e], self.history[e - 1] if e > 0 else None)
        else:
            self.view.push(epoch, self.first if epoch == 0 else take_snapshot(model, self.images,
                                                                               layers=self.layers))
        self.last_map = time.perf_counter()
        self.map_cost = self.last_map - started

    def step(self, epoch: int, step: int, steps: int, loss: torch.Tensor, model: nn.Module) -> None:
        """Step ``step`` of ``steps`` of epoch ``epoch`` (1-based) is done, its ``loss`` detached. Every
        ``max(1, steps // ROWS_PER_EPOCH)`` steps (the epoch's last aside: its row comes) the view gets a
        point of the curves, and the maps when they cost at most ``MAP_SHARE`` of the time since the
        last ones."""
        if self.view is None:
            return
        self.recent = self.recent + loss  # a tensor: read once a point (no host sync per step)
        self.recent_steps += 1
        every = max(1, steps // ROWS_PER_EPOCH)
        if step % every or step == steps:
            return
        at = epoch - 1 + step / steps
        row = {RECENT_LOSS: float(self.recent) / self.recent_steps}
        self.recent, self.recent_steps = 0.0, 0
        now = time.perf_counter()
        if now - self.last_map < self.map_cost / MAP_SHARE:
            self.view.push(at, row=row)
            return
        self.view.push(at, take_snapshot(model, self.images, layers=self.layers), row)
        self.last_map = time.perf_counter()
        self.map_cost = self.last_map - now

    def epoch_done(self, epoch: int, row: dict, model: nn.Module) -> None:
        """After epoch ``epoch`` (its checkpoint written): its snapshot into the store and the view."""
        if self.store is None and self.view is None:
            return
        started = time.perf_counter()
        snapshot = take_snapshot(model, self.images, layers=self.layers)
        taken = time.perf_counter() - started
        if self.store is not None:
            self.store.append(epoch, snapshot)
        if self.view is not None:
            started = time.perf_counter()
            self.view.push(epoch, snapshot, row)
            self.recent, self.recent_steps = 0.0, 0
            self.last_map = time.perf_counter()
            self.map_cost = taken + self.last_map - started  # what the maps cost the view (not the store)


def refuse_unwatched_resume(out: Path | None, epoch: int, epochs: int) -> None:
    """A watched run (its folder holds snapshots) resumed without ``watch`` would leave its snapshots
    behind its checkpoint: refused (``ValueError``) while epochs remain to train."""
    if out is not None and epoch < epochs and (out / "snapshots.json").exists():
        raise ValueError(f"the run in {out} is watched (it holds snapshots.json): resume it with watch= its "
                         f"probe images (stored in {out / 'snapshots.probe.npz'}), so that every epoch is "
                         "recorded")


def check_cached(out: Path, images: torch.Tensor, epochs: int) -> None:
    """A finished run that ``train_or_load`` loads instead of training, asked to be watched: its
    snapshots must hold ``images`` and every epoch ``0..epochs`` (``ValueError`` otherwise)."""
    if not (out / "snapshots.json").exists():
        raise ValueError(f"the cached run in {out} was trained without watch: its affinities over the "
                         "epochs were not recorded. Delete the folder (or use another) to train it again "
                         "with watch, or load it without watch")
    run = read_snapshots(out)
    images = images.detach().cpu().float()
    if tuple(run.images.shape) != tuple(images.shape) or not torch.equal(run.images, images):
        raise ValueError(f"the cached run in {out} watched other images ({tuple(run.images.shape)} in "
                         "snapshots.probe.npz) than watch: use the same images, or another folder")
    if run.epochs != list(range(epochs + 1)):
        raise ValueError(f"the cached run in {out} stores the snapshots of epochs {run.epochs}, not "
                         f"0..{epochs}")
