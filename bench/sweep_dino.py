"""Sweep the DINO budget: k-NN gain over the untrained network against training seconds (notebook 10).

Trains the ``dino`` task on ``mnist5k`` (3 channels, as notebook 10) over a grid of epochs, learning
rates, batch sizes, local crops, teacher momenta, head widths and seeds, and prints one row per run::

    family seed epochs lr batch local momentum out_dim steps wall_s cpu_s untrained k-NN teacher gain

``untrained`` is the k-NN accuracy (k = 20, T = 0.07) of the same preset with the same seed (the
weights the run started from), ``k-NN`` the student's after the last epoch, ``teacher`` the EMA
teacher's, ``gain = k-NN - untrained``. ``wall_s`` is the wall-clock time of ``fit`` (with its
per-epoch k-NN of student and teacher) with ``--threads`` torch threads; on a shared machine it is
pessimistic and noisy, so ``cpu_s`` (the process's CPU time over the same span) is printed beside
it: with one thread it is about what the wall clock of a quiet machine would read. After the grid,
the rows are printed again sorted by ``cpu_s``, with ``*`` on the points of the Pareto front (no
other point of the same family and seed costs no more CPU time and gains more). The quick
profile's ``dino`` recipe is the point of this table that keeps notebook 10 inside its time limit
(docs/sweep_dino.md).

    python bench/sweep_dino.py --epochs 2 4 --lr 2e-3 5e-3 --seeds 0 1 --json runs/sweep/dino.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import time
from pathlib import Path

import torch

from unifiedctx.data import load
from unifiedctx.train import Recipe, build_model, fit
from unifiedctx.train.dino import knn_accuracy
from unifiedctx.train.tasks.dino import Dino

# the table's columns: (title in the text table, title in Markdown, the row's key, format)
COLUMNS = (
    ("family", "family", "family", "16s"),
    ("seed", "seed", "seed", "4d"),
    ("epochs", "epochs", "epochs", "6d"),
    ("lr", "lr", "lr", "7.0e"),
    ("batch", "batch", "batch", "5d"),
    ("local", "local", "local_crops", "5d"),
    ("momentum", "momentum", "momentum", "8.3f"),
    ("out_dim", "out_dim", "out_dim", "7d"),
    ("steps", "steps", "steps", "5d"),
    ("wall_s", "wall s", "seconds", "6.1f"),
    ("cpu_s", "CPU s", "cpu_seconds", "6.1f"),
    ("untrained", "untrained", "untrained", "9.3f"),
    ("k-NN", "k-NN", "knn", "6.3f"),
    ("teacher", "teacher", "teacher_knn", "7.3f"),
    ("gain", "gain", "gain", "+6.3f"),
)


def _cells(row: dict, markdown: bool) -> list[str]:
    """The row's values, padded to the text table's widths (``markdown``: unpadded)."""
    cells = []
    for _, _, key, fmt in COLUMNS:
        value = cpu_seconds(row) if key == "cpu_seconds" else row[key]
        text = format(value, fmt)
        cells.append(("–" if value == math.inf else text.strip()) if markdown else text)
    return cells


def _width(fmt: str) -> int:
    """The field width of a format spec such as ``"+6.3f"`` (6)."""
    return int(re.match(r"\+?(\d+)", fmt).group(1))


HEADER = "  " + " ".join(
    f"{title:<{_width(fmt)}}" if fmt.endswith("s") else f"{title:>{_width(fmt)}}"
    for title, _, _, fmt in COLUMNS
)
MARKDOWN_HEADER = "| " + " | ".join(md for _, md, _, _ in COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def run_point(
    family: str,
    data,
    *,
    seed: int,
    epochs: int,
    lr: float,
    batch: int = 128,
    local_crops: int = 2,
    momentum: float = 0.99,
    out_dim: int = 256,
    warmup_epochs: float = 0.5,
) -> dict:
    """Train one point of the grid and return its row (see the module docstring)."""
    options = dict(out_dim=out_dim, local_crops=local_crops, momentum=momentum)
    preset = f"{family}_nano"
    untrained = knn_accuracy(build_model(preset, data, seed, task="dino"), data)
    task = Dino(**options)
    model = build_model(preset, data, seed, task=task)
    recipe = Recipe(
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        warmup_epochs=warmup_epochs,
        weight_decay=0.04,
        augment=False,
        seed=seed,
        task="dino",
        task_options=options,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, data, recipe, task=task, device="cpu", progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    final = history[-1]["knn_acc"]
    return {
        "family": family,
        "seed": seed,
        "n_train": int(data.train_x.shape[0]),
        "epochs": epochs,
        "lr": lr,
        "batch": batch,
        "local_crops": local_crops,
        "momentum": momentum,
        "out_dim": out_dim,
        "warmup_epochs": warmup_epochs,
        "steps": epochs * (data.train_x.shape[0] // batch),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "untrained": round(untrained, 4),
        "knn": round(final, 4),
        "gain": round(final - untrained, 4),
        "knn_curve": [round(r["knn_acc"], 4) for r in history],
        "teacher_knn": round(history[-1]["teacher_knn_acc"], 4),
        "teacher_mean_entropy": round(history[-1]["teacher_mean_entropy"], 3),
        "teacher_entropy": round(history[-1]["teacher_entropy"], 3),
    }


def format_row(row: dict, mark: str = " ") -> str:
    """One printed line of the table (``mark``: ``*`` on the Pareto front)."""
    return f"{mark} " + " ".join(_cells(row, markdown=False))


def cpu_seconds(row: dict) -> float:
    """The row's CPU seconds (``inf`` for a row saved before they were recorded)."""
    return row.get("cpu_seconds", math.inf)


def pareto(rows: list[dict]) -> list[bool]:
    """For each row: True when no other row of the same family and seed costs no more CPU time and
    gains more."""
    return [
        not any(
            o is not r
            and o["family"] == r["family"]
            and o["seed"] == r["seed"]
            and cpu_seconds(o) <= cpu_seconds(r)
            and o["gain"] > r["gain"]
            for o in rows
        )
        for r in rows
    ]


def markdown_row(row: dict, mark: str = "") -> str:
    """One row of the Markdown table (docs/sweep_dino.md)."""
    cells = _cells(row, markdown=True)
    return "| " + " | ".join([mark + cells[0], *cells[1:]]) + " |"


def summary(rows: list[dict], markdown: bool = False) -> str:
    """The rows sorted by family, seed and CPU seconds, ``*`` on the Pareto front (see :func:`pareto`)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["family"], rows[i]["seed"], cpu_seconds(rows[i])))
    front = pareto(rows)
    if markdown:
        return "\n".join([MARKDOWN_HEADER] + [markdown_row(rows[i], "* " if front[i] else "") for i in order])
    return "\n".join([HEADER] + [format_row(rows[i], "*" if front[i] else " ") for i in order])


def append_rows(path: Path, rows: list[dict]) -> None:
    """Add ``rows`` to the JSON list in ``path`` (written to a temporary file, then renamed)."""
    old = json.loads(path.read_text()) if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(old + rows, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["container_light"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[2])
    parser.add_argument("--lr", nargs="+", type=float, default=[2e-3])
    parser.add_argument("--batch", nargs="+", type=int, default=[128])
    parser.add_argument("--local-crops", nargs="+", type=int, default=[2])
    parser.add_argument("--momentum", nargs="+", type=float, default=[0.99])
    parser.add_argument("--out-dim", nargs="+", type=int, default=[256])
    parser.add_argument("--warmup-epochs", type=float, default=0.5)
    parser.add_argument("--n-train", type=int, default=None, help="a random subset of the training split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    parser.add_argument(
        "--table",
        type=Path,
        nargs="+",
        default=None,
        help="train nothing: print the summary of the rows saved in these JSON files",
    )
    parser.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    args = parser.parse_args(argv)
    if args.table is not None:
        rows = [row for path in args.table for row in json.loads(path.read_text())]
        print(summary(rows, args.markdown))
        return rows
    torch.set_num_threads(args.threads)
    data = load("mnist5k", channels=3)
    if args.n_train is not None:
        data = data.subset(n_train=args.n_train)
    rows = []
    print(HEADER, flush=True)
    grid = itertools.product(
        args.families,
        args.seeds,
        args.epochs,
        args.lr,
        args.batch,
        args.local_crops,
        args.momentum,
        args.out_dim,
    )
    for family, seed, epochs, lr, batch, local, momentum, out_dim in grid:
        row = run_point(
            family,
            data,
            seed=seed,
            epochs=epochs,
            lr=lr,
            batch=batch,
            local_crops=local,
            momentum=momentum,
            out_dim=out_dim,
            warmup_epochs=args.warmup_epochs,
        )
        row["threads"] = args.threads
        rows.append(row)
        print(format_row(row), flush=True)
        if args.json is not None:
            append_rows(args.json, [row])
    if len(rows) > 1:
        print(
            "\nk-NN gain against CPU seconds (* = Pareto front: no point of the same family and seed "
            "costs less and gains more)"
        )
        print(summary(rows, args.markdown))
    return rows


if __name__ == "__main__":
    main()
