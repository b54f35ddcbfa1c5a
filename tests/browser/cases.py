"""The explorers the browser tests open, built the same way in the test process and in the
JupyterLab kernel (seeded), so the test can compute what the browser must draw."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer

START_LAYER = "stages.1.blocks.0.mixer"  # container_nano: a mixed (Container) layer on 8x8


def seeded(name: str, seed: int) -> torch.nn.Module:
    """A preset with seeded random weights (nudged, so no map is flat by initialisation)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def smooth_images(n: int = 2, size: int = 32) -> torch.Tensor:
    """Seeded smooth images (4x4 noise upsampled), so the query marker stands out."""
    noise = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def live_explorer() -> AffinityExplorer:
    """Two nano models (a Container and a DeiT) on two images: every control has a choice."""
    models = {"container": seeded("container_nano", 0), "deit": seeded("deit_tiny_nano", 1)}
    return AffinityExplorer(models, smooth_images(), layer=START_LAYER, head=0, query=(0, 0))


def probe_images(n: int = 3) -> torch.Tensor:
    """The probe images of the watched runs: smooth, seeded."""
    return smooth_images(n)


def watched_run(folder, name: str = "container_light_nano", epochs: int = 3, seed: int = 0, steps: int = 4,
                weights: bool = False):
    """A tiny watched training run in ``folder``: a nano model trained ``steps`` steps per epoch on
    seeded random images, its snapshots stored at epoch 0 and after every epoch (with ``weights``, its
    weights too, ``weights<epoch>.pt``); returns the model as trained (its last epoch's weights)."""
    from unifiedctx.inspection.snapshots import SnapshotStore, plan, take_snapshot

    torch.manual_seed(seed)
    model = create_model(name)
    probe = probe_images()
    store = SnapshotStore.create(folder, probe, plan(model, probe, epochs=epochs, budget_mb=64).first)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    if weights:
        torch.save(model.state_dict(), f"{folder}/weights0.pt")
    for epoch in range(1, epochs + 1):
        model.train()
        for _ in range(steps):
            x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        store.append(epoch, take_snapshot(model, probe))
        if weights:
            torch.save(model.state_dict(), f"{folder}/weights{epoch}.pt")
    return model.eval()


def live_training(live, epochs: int = 4, seed: int = 5, steps: int = 3, pause: float = 0.0) -> dict:
    """A training loop written by hand that updates ``live`` (a :class:`~unifiedctx.widgets.LiveView`
    of :func:`probe_images`) as it goes: a nano Container-Light on seeded random images, a history row
    pushed after every step but an epoch's last, a snapshot and a row after every epoch (then
    ``pause`` seconds, so a watcher sees it grow). One thread, so the test process computes the same
    numbers as a kernel. Returns the medians in ms of an epoch's training steps, of a snapshot, of a
    push with a snapshot and of a push of a row alone."""
    import statistics
    import time

    from unifiedctx.inspection.snapshots import take_snapshot

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = create_model("container_light_nano")
        probe = probe_images()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        gen = torch.Generator().manual_seed(seed)
        times = {"train": [], "snapshot": [], "push": [], "row push": []}
        live.push(0, take_snapshot(model, probe))
        for epoch in range(1, epochs + 1):
            model.train()
            started = time.perf_counter()
            for step in range(steps):
                x, y = torch.rand(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                if step < steps - 1:
                    t = time.perf_counter()
                    live.push(epoch - 1 + (step + 1) / steps, row={"train_loss": round(loss.item(), 6)})
                    times["row push"].append(time.perf_counter() - t)
            times["train"].append(time.perf_counter() - started - sum(times["row push"][-(steps - 1):]))
            t = time.perf_counter()
            snapshot = take_snapshot(model, probe)
            times["snapshot"].append(time.perf_counter() - t)
            t = time.perf_counter()
            live.push(epoch, snapshot, {"train_loss": round(loss.item(), 6), "test_acc": 0.1 * epoch})
            times["push"].append(time.perf_counter() - t)
            time.sleep(pause)
        return {name: round(1e3 * statistics.median(values), 2) for name, values in times.items()}
    finally:
        torch.set_num_threads(threads)


def digits():
    """512 training and 64 test digits of mnist5k (3 channels), and three of its test digits as probe
    images, as the models take them: ``(data, probe)``."""
    from unifiedctx.data import load

    data = load("mnist5k", channels=3).subset(512, 64, seed=0)
    return data, data.normalize(data.test_x[:3]).float()


def watched_fit(folder, live, epochs: int = 4, seed: int = 7, pause: float = 0.0) -> torch.Tensor:
    """A run of ``fit(..., watch=probe, live=live)`` into ``folder``: a nano Container (mixed layers in
    every stage) on 512 real digits (mnist5k), 4 steps of 128 an epoch, one thread. Maps within an
    epoch are off (``watching.MAP_SHARE``: they come by the clock), so a twin fed in the test process
    gets the very pushes the kernel's view got; ``pause`` seconds after each epoch (so a watcher
    sees the view grow). Returns the probe images (three test digits)."""
    import time

    from unifiedctx.train import EpochDone, build_model, fit, watching

    threads, share = torch.get_num_threads(), watching.MAP_SHARE
    torch.set_num_threads(1)
    watching.MAP_SHARE = 1e-12
    try:
        data, probe = digits()
        model = build_model("container_nano", data, seed=seed)
        fit(model, data, epochs=epochs, batch_size=128, lr=5e-3, warmup_epochs=0.5, augment=False, out=folder,
            device="cpu", progress="epoch", watch=probe, live=live,
            callback=lambda event: time.sleep(pause) if isinstance(event, EpochDone) else None)
        return probe
    finally:
        torch.set_num_threads(threads)
        watching.MAP_SHARE = share
