"""Sweep the DINO budget: k-NN gain over the untrained network against training seconds (notebook 10).

Trains the ``dino`` task on ``mnist5k`` (3 channels, as notebook 10) over a grid of epochs, learning
rates, local crops, teacher momenta and seeds, for ``container_light_nano`` and ``deit_tiny_nano``,
and prints one row per run::

    family  seed  n_train  epochs  lr  local  momentum  steps  seconds  untrained  k-NN  gain

``untrained`` is the k-NN accuracy (k = 20, T = 0.07) of the same preset with the same seed (the
weights the run started from), ``k-NN`` the student's after the last epoch, ``gain`` their
difference. ``seconds`` is the wall-clock time of ``fit`` (with its per-epoch k-NN of student and
teacher) with ``--threads`` torch threads; on a shared machine it is pessimistic. The quick
profile's ``dino`` budget is the point of this table that keeps notebook 10 inside its time
limit (docs/sweep_dense_ssl.md).

    python bench/sweep_dino.py --epochs 2 4 --lr 2e-3 5e-3 --seeds 0 1 --json runs/sweep/dino.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from unifiedctx.data import load
from unifiedctx.train import Recipe, fit
from unifiedctx.train.dino import Dino, knn_accuracy

HEADER = (f"{'family':16s} {'seed':>4s} {'n_train':>7s} {'epochs':>6s} {'lr':>7s} {'local':>5s} "
          f"{'momentum':>8s} {'steps':>5s} {'seconds':>7s} {'untrained':>9s} {'k-NN':>6s} {'gain':>6s}")


def run_point(family: str, data, *, seed: int, epochs: int, lr: float, local_crops: int, momentum: float,
              batch: int = 128, out_dim: int = 256) -> dict:
    """Train one point of the grid and return its row (see the module docstring)."""
    options = dict(out_dim=out_dim, local_crops=local_crops, momentum=momentum)
    task = Dino(**options)
    preset = f"{family}_nano"
    untrained = knn_accuracy(Dino(**options).build_model(preset, data, seed=seed), data)
    model = task.build_model(preset, data, seed=seed)
    recipe = Recipe(epochs=epochs, batch_size=batch, lr=lr, warmup_epochs=0.5, weight_decay=0.04,
                    augment=False, seed=seed, task="dino")
    start = time.perf_counter()
    history = fit(model, data, recipe, task=task, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    final = history[-1]["knn_acc"]
    return {"family": family, "seed": seed, "n_train": int(data.train_x.shape[0]), "epochs": epochs, "lr": lr,
            "local_crops": local_crops, "momentum": momentum, "batch": batch, "out_dim": out_dim,
            "steps": epochs * (data.train_x.shape[0] // batch), "seconds": round(seconds, 1),
            "untrained": round(untrained, 4), "knn": round(final, 4), "gain": round(final - untrained, 4),
            "knn_curve": [round(r["knn_acc"], 4) for r in history],
            "teacher_knn": round(history[-1]["teacher_knn_acc"], 4)}


def format_row(row: dict) -> str:
    """One printed line of the table."""
    return (f"{row['family']:16s} {row['seed']:4d} {row['n_train']:7d} {row['epochs']:6d} {row['lr']:7.0e} "
            f"{row['local_crops']:5d} {row['momentum']:8.3f} {row['steps']:5d} {row['seconds']:7.1f} "
            f"{row['untrained']:9.3f} {row['knn']:6.3f} {row['gain']:+6.3f}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["container_light"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[2])
    parser.add_argument("--lr", nargs="+", type=float, default=[2e-3])
    parser.add_argument("--local-crops", nargs="+", type=int, default=[2])
    parser.add_argument("--momentum", nargs="+", type=float, default=[0.99])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=None, help="a random subset of the training split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load("mnist5k", channels=3)
    if args.n_train is not None:
        data = data.subset(n_train=args.n_train)
    rows = []
    print(HEADER, flush=True)
    grid = itertools.product(args.families, args.seeds, args.epochs, args.lr, args.local_crops, args.momentum)
    for family, seed, epochs, lr, local, momentum in grid:
        row = run_point(family, data, seed=seed, epochs=epochs, lr=lr, local_crops=local, momentum=momentum,
                        batch=args.batch)
        row["threads"] = args.threads
        rows.append(row)
        print(format_row(row), flush=True)
        if args.json is not None:
            old = json.loads(args.json.read_text()) if args.json.exists() else []
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(old + [row], indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
