"""What watching a training run costs (issue 29): snapshot sizes per epoch and time beside an epoch.

Two tables, for each network of notebook 04 in the quick profile (mnist5k, batch 128, AdamW):

1. **The pieces.** One epoch run by hand -- the training steps ``fit`` takes and one evaluation of the
   test split, without its checkpoint, so the epoch time here is a lower bound and the share an upper
   bound -- and beside it, measured in the same process: one snapshot of every mixer layer for the probe
   images (``take_snapshot``), its storing into a run folder (``SnapshotStore.append``: float16,
   zip-deflated, atomic, manifest rewritten), and one push into a ``LiveView`` (the rows and scales it
   sends; the comm has no front end here, so the message is built but not carried). Sizes: the
   snapshot's float16 bytes (what the budget counts) and the epoch file on disk.
2. **fit itself, watching off and on** (``--fit``): the same run (``fit`` of ``--epochs`` epochs into a
   run folder, the profile's recipe and seed) with ``watch=None``, with ``watch=probe`` (snapshots
   stored) and with ``watch=probe, live=view`` (stored and pushed into a LiveView: curves every
   ``max(1, steps // 4)`` steps, maps every epoch and within one where they cost <= 1 %), interleaved
   (each repeat runs the three in a rotated order) on one thread. Medians of ``--repeat`` of the CPU
   seconds of the process (``time.process_time``: what the run itself spent, less sensitive than wall
   time to the other jobs of a shared machine) and the ratio to watching off; the wall time too.

Run with one thread (``OMP_NUM_THREADS=1``)::

    python bench/watch.py [--images 4] [--repeat 3] [--fit] [--epochs 4]

Prints markdown tables; timings are medians of ``--repeat`` runs and noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unifiedctx.data import load
from unifiedctx.inspection.snapshots import SnapshotStore, take_snapshot
from unifiedctx.profiles import make
from unifiedctx.train import build_model, fit
from unifiedctx.widgets import LiveView

FAMILIES = ("container_light", "container", "deit_tiny", "mixer_s16", "convnet")


def epoch_seconds(model, data, batch_size: int, lr: float) -> float:
    """One epoch, in seconds: training steps over the training split, then the test split evaluated."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for k in range(0, len(order), batch_size):
        index = order[k:k + batch_size]
        x, y = data.normalize(data.train_x[index]), data.train_y[index]
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for k in range(0, len(data.test_y), 256):
            model(data.normalize(data.test_x[k:k + 256]))
    return time.perf_counter() - started


#: The three ways fit runs in the second table: (label, fit keywords given the probe images).
MODES = (("off", lambda probe: {}),
         ("watch", lambda probe: {"watch": probe}),
         ("watch + live", lambda probe: {"watch": probe, "live": LiveView(probe)}))


def fit_costs(family: str, profile, data, probe, epochs: int, repeat: int) -> dict[str, tuple[float, float]]:
    """``{mode: (median CPU seconds, median wall seconds)}`` of ``fit`` of ``family`` for ``epochs``
    epochs in each of :data:`MODES`, interleaved (each repeat in a rotated order)."""
    recipe = profile.recipe.replace(epochs=epochs)
    times = {label: [] for label, _ in MODES}
    for r in range(repeat):
        for label, extra in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
            model = build_model(profile.model(family), data, seed=recipe.seed)
            with tempfile.TemporaryDirectory() as folder:
                cpu, wall = time.process_time(), time.perf_counter()
                fit(model, data, recipe, out=Path(folder) / "run", device="cpu", progress=False,
                    **extra(probe))
                times[label].append((time.process_time() - cpu, time.perf_counter() - wall))
    return {label: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
            for label, v in times.items()}


def fit_table(profile, data, probe, epochs: int, repeat: int) -> None:
    print(f"\nfit of {epochs} epochs into a run folder, watching off and on, interleaved; medians of "
          f"{repeat} (CPU s: the process's own time)\n")
    print("| network | off: CPU s (wall s) | watch: CPU s (wall s) | watch + live: CPU s (wall s) "
          "| watch / off | watch + live / off |")
    print("|---|---|---|---|---|---|")
    for family in FAMILIES:
        costs = fit_costs(family, profile, data, probe, epochs, repeat)
        (off, off_wall), (on, on_wall), (live, live_wall) = (costs[label] for label, _ in MODES)
        print(f"| {family} | {off:.2f} ({off_wall:.2f}) | {on:.2f} ({on_wall:.2f}) | {live:.2f} "
              f"({live_wall:.2f}) | {on / off:.3f} | {live / off:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="probe images")
    parser.add_argument("--repeat", type=int, default=3, help="times each step is measured")
    parser.add_argument("--fit", action="store_true", help="also time fit with watching off and on")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of each fit (--fit; default the profile's, what notebook 04 trains)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    profile = make("quick")
    data = load(profile.dataset, **profile.dataset_options)
    recipe = profile.recipe
    probe = data.normalize(data.test_x[:args.images]).float()
    print(f"quick profile: {profile.dataset}, {len(data.train_y)} training images, batch "
          f"{recipe.batch_size}; {args.images} probe images {tuple(probe.shape[1:])}; medians of "
          f"{args.repeat}\n")
    print("| network | layers | snapshot per epoch (float16) | on disk per epoch | epoch (s) | snapshot (ms) "
          "| store (ms) | live push (ms) | watching / epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        model = build_model(profile.model(family), data, seed=0)
        try:
            take_snapshot(model, probe)
        except ValueError as error:  # a network without token mixers (convnet: convolutions, read too)
            print(f"| {family} | - | {error} | | | | | | |")
            continue
        epoch = statistics.median(epoch_seconds(model, data, recipe.batch_size, recipe.lr)
                                  for _ in range(args.repeat))
        snaps, stores, pushes, disk = [], [], [], []
        with tempfile.TemporaryDirectory() as folder:
            first = take_snapshot(model, probe)
            store = SnapshotStore.create(Path(folder), probe, first)
            live = LiveView(probe)
            live.push(0, first)
            for k in range(1, args.repeat + 1):
                t = time.perf_counter()
                snapshot = take_snapshot(model, probe)
                snaps.append(time.perf_counter() - t)
                t = time.perf_counter()
                store.append(k, snapshot)
                stores.append(time.perf_counter() - t)
                t = time.perf_counter()
                live.push(k, snapshot, {"train_loss": 1.0 / k, "test_acc": 0.5})
                pushes.append(time.perf_counter() - t)
                disk.append((Path(folder) / f"snapshots.e{k:04d}.npz").stat().st_size)
        snap, put, push = (statistics.median(v) for v in (snaps, stores, pushes))
        print(f"| {family} ({profile.model(family)}) | {len(first.layers)} | {first.nbytes / 1e6:.2f} MB | "
              f"{statistics.median(disk) / 1e6:.3f} MB | {epoch:.2f} | {1e3 * snap:.0f} | {1e3 * put:.0f} | "
              f"{1e3 * push:.1f} | {100 * (snap + put + push) / epoch:.1f}% |", flush=True)
    if args.fit:
        fit_table(profile, data, probe, args.epochs or recipe.epochs, args.repeat)


if __name__ == "__main__":
    main()
