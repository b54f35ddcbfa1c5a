"""Every task in the registry (``tasks.available()``, so a new task is picked up by itself) keeps the
engine's contract on its tiny example (``Task.example()``, a :class:`TaskExample`):

1. fit trains it for 2 epochs (finite losses, the task's best metric in every row);
2. a run stopped after epoch 1 and resumed by a fresh model and a fresh task ends bit for bit where
   the uninterrupted run ends: weights, optimizer, the task's modules and state, the history rows
   (timing columns aside);
3. ``evaluate`` of the checkpoint, loaded into a freshly built model, gives the last row's test metrics
   exactly (the same batches, the same sums);
4. two gloo ranks (``torch.distributed.run``, as tests/test_ddp.py launches it) end with the same
   weights and task modules on both ranks; where the example says so (``ddp_matches_single``), those
   weights equal one process's with the doubled batch up to float rounding (K ranks of batch b take
   the step of one process of batch K b), else they still differ from the initial weights; the run
   is watched, and rank 0 alone keeps its snapshots (each epoch's, the last one the last.pt's);
5. watched (``fit(..., watch=probe)``), it trains the very weights of the unwatched run, keeps every
   epoch's affinities of the probe images, the last one those of its ``last.pt``, and a watched run
   stopped after epoch 1 and resumed stores the uninterrupted one's snapshot files byte for byte.

Every task declares its example itself (``Task.example()``); a task without one fails here.

This file is also the worker the two ranks run: ``python tests/test_task_contract.py OUT``.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("epoch_time", "images_per_s", "time")


@functools.cache
def example(name: str):
    from unifiedctx.train import tasks

    declared = tasks.task_class(name).example()
    assert declared is not None, (f"task {name!r} declares no example(): give it a classmethod example() "
                                  "returning a TaskExample (see unifiedctx/train/tasks/base.py)")
    return declared


def run(name: str, out: Path | None, ex=None, seed: int = 1, **fit_kwargs):
    """``(model, history)`` of the example of task ``name`` trained for 2 epochs on the CPU."""
    from unifiedctx.train import build_model, fit, tasks

    ex = ex or example(name)
    task = tasks.create(name, **ex.options)
    model = build_model(ex.preset, ex.data, seed, task=task, **ex.model_options)
    settings = {**ex.recipe, **{k: fit_kwargs.pop(k) for k in list(fit_kwargs) if k in ex.recipe}}
    history = fit(model, ex.data, task=task, epochs=2, device="cpu", progress=False, out=out, **settings,
                  **fit_kwargs)
    return model, history


def same(a, b, where: str = "") -> None:
    """``a`` and ``b`` equal bit for bit (tensors), recursively through dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        both_nan = isinstance(a, float) and math.isnan(a) and math.isnan(b)
        assert a == b or both_nan, f"{where}: {a!r} != {b!r}"


def without_timing(rows) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def task_names() -> list[str]:
    from unifiedctx.train import tasks

    return tasks.available()


@pytest.fixture(scope="module")
def full_runs():
    """Each task's uninterrupted 2-epoch run (made once, read by several tests), on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {}
    torch.set_num_threads(threads)


def full_run(name: str, full_runs: dict, root: Path) -> Path:
    if name not in full_runs:
        out = root / f"full_{name}"
        run(name, out)
        full_runs[name] = out
    return full_runs[name]


@pytest.mark.parametrize("name", task_names())
def test_fit_stop_and_resume_is_bit_exact(name, full_runs, tmp_path_factory):
    from unifiedctx.train import EpochDone, StopTraining, read_checkpoint, tasks

    full = full_run(name, full_runs, tmp_path_factory.mktemp("contract"))
    a = read_checkpoint(full / "last.pt")
    assert a["epoch"] == 2 and len(a["history"]) == 2
    metric = tasks.task_class(name).best_metric
    for row in a["history"]:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row[metric]), row

    def stop_after_epoch_1(event):
        if isinstance(event, EpochDone) and event.epoch == 1:
            raise StopTraining

    cut = tmp_path_factory.mktemp("cut") / name
    _, first = run(name, cut, callback=stop_after_epoch_1)
    assert len(first) == 1 and read_checkpoint(cut / "last.pt")["epoch"] == 1
    torch.manual_seed(12345)  # the resumed run owes nothing to the global RNG this process left behind
    _, resumed = run(name, cut, seed=99, resume=True)  # other initial weights: the checkpoint's are loaded
    b = read_checkpoint(cut / "last.pt")
    assert b["epoch"] == 2 and b["step"] == a["step"]
    for key in ("model", "optimizer", "ema", "task_modules", "task_state"):
        same(a.get(key), b.get(key), key)
    assert without_timing(a["history"]) == without_timing(b["history"]) == without_timing(resumed)


@pytest.mark.parametrize("name", task_names())
def test_evaluate_of_the_checkpoint_gives_the_last_rows_metrics(name, full_runs, tmp_path_factory):
    from unifiedctx.train import build_model, evaluate, load_checkpoint, tasks

    full = full_run(name, full_runs, tmp_path_factory.mktemp("contract"))
    ex = example(name)
    task = tasks.create(name, **ex.options)
    fresh = build_model(ex.preset, ex.data, 99, task=task, **ex.model_options)  # other weights until loaded
    model, state = load_checkpoint(full / "last.pt", fresh)
    row = state["history"][-1]
    got = evaluate(model, ex.data, batch_size=2 * ex.recipe["batch_size"], device="cpu", task=task)
    public = getattr(task, "public_metrics", None)
    wanted = public(row) if public is not None else {k: row[k] for k in got if k not in ex.state_metrics}
    assert wanted and {k: got[k] for k in wanted} == wanted
    if public is None:
        assert task.best_metric in wanted


def probe(name: str) -> torch.Tensor:
    """Two test images of the task's example data, as the model takes them: what the run watches."""
    data = example(name).data
    return data.normalize(data.test_x[:2]).float()


def snapshot_files(folder: Path) -> dict[str, bytes]:
    from unifiedctx.inspection.snapshots import owns

    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if owns(p.name)}


def last_epoch_is_the_checkpoints(name: str, folder: Path) -> None:
    """The run's last stored snapshot is what its ``last.pt``'s weights give, exactly."""
    from unifiedctx.inspection.snapshots import read_snapshots, take_snapshot
    from unifiedctx.train import build_model, load_checkpoint, tasks

    ex = example(name)
    fresh = build_model(ex.preset, ex.data, 99, task=tasks.create(name, **ex.options), **ex.model_options)
    model, state = load_checkpoint(folder / "last.pt", fresh)
    run = read_snapshots(folder)
    assert run.epochs == list(range(state["epoch"] + 1)) and torch.equal(run.images, probe(name))
    again = take_snapshot(model, probe(name))
    stored = run.snapshots[run.epochs[-1]].maps
    assert stored.keys() == again.maps.keys()
    for key, value in again.maps.items():
        assert (stored[key] == value).all(), key


@pytest.mark.parametrize("name", task_names())
def test_a_watched_run_trains_the_same_weights_and_resumes_its_snapshots_exactly(name, full_runs,
                                                                                 tmp_path_factory):
    from unifiedctx.train import EpochDone, StopTraining, read_checkpoint

    full = read_checkpoint(full_run(name, full_runs, tmp_path_factory.mktemp("contract")) / "last.pt")
    watched = tmp_path_factory.mktemp("watched") / name
    run(name, watched, watch=probe(name))
    state = read_checkpoint(watched / "last.pt")
    for key in ("model", "optimizer", "ema", "task_modules", "task_state"):
        same(full.get(key), state.get(key), key)  # watching changed nothing of the training
    last_epoch_is_the_checkpoints(name, watched)

    def stop_after_epoch_1(event):
        if isinstance(event, EpochDone) and event.epoch == 1:
            raise StopTraining

    cut = tmp_path_factory.mktemp("watched_cut") / name
    run(name, cut, watch=probe(name), callback=stop_after_epoch_1)
    run(name, cut, seed=99, resume=True, watch=probe(name))
    assert snapshot_files(cut) == snapshot_files(watched) and len(snapshot_files(cut)) == 5


# ---------------------------------------------------------------------------------- two gloo ranks
def worker(out: Path) -> None:
    """Run on each of two ranks: every task's example, with per-rank batch half the example's."""
    import torch.distributed as dist

    from unifiedctx.train import tasks

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # once: fit joins it (and leaves it to us) for every task
    try:
        for name in tasks.available():
            ex = example(name)
            run(name, out / name, batch_size=ex.recipe["batch_size"] // 2, save_rank_weights=True,
                watch=probe(name))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    from test_ddp import free_port

    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", task_names())
def test_two_gloo_ranks_agree(name, ddp_runs, full_runs, tmp_path_factory):
    from unifiedctx.train import build_model, read_checkpoint, tasks

    ex = example(name)
    full = full_run(name, full_runs, tmp_path_factory.mktemp("contract"))  # one process, batch 2 b
    r0, r1 = (read_checkpoint(ddp_runs / name / f"rank{r}.pt")["model"] for r in (0, 1))
    last = read_checkpoint(ddp_runs / name / "last.pt")
    assert last["recipe"]["world_size"] == 2 and last["epoch"] == 2
    same(r0, r1, "rank 0 vs rank 1")
    same(last["model"], r0, "last.pt vs rank 0")
    single = read_checkpoint(full / "last.pt")
    start = build_model(ex.preset, ex.data, 1, task=tasks.create(name, **ex.options), **ex.model_options)
    start = start.state_dict()
    assert last["step"] == single["step"]
    for key, w in r0.items():
        if ex.ddp_matches_single:
            torch.testing.assert_close(w, single["model"][key], atol=2e-5, rtol=1e-4,
                                       msg=f"2 ranks vs 1 process: {key}")
    moved = [k for k, w in r0.items() if w.is_floating_point() and not torch.equal(w, start[k])]
    assert moved, "two ranks trained nothing"
    last_epoch_is_the_checkpoints(name, ddp_runs / name)  # written once (by rank 0), every epoch


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
