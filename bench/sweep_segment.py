"""Sweep the segmentation budget: mIoU against training seconds (notebook 09's quick profile).

Trains the ``segment`` task on ``mnist_canvas`` over a grid of training-set sizes, epochs, learning
rates, batch sizes and head widths, for any of the nano segmenters and the plain U-Net reference
(``unet``: :class:`unifiedctx.models.unet.UNet`), and prints one row per run::

    family  n_train  epochs  lr  batch  width  params  steps  seconds  cpu_s  mIoU  pixel_acc

``seconds`` is the wall-clock time of ``fit`` (training plus the per-epoch test evaluation) on
this machine with ``--threads`` torch threads; on a shared machine it is pessimistic. ``cpu_s``
is the CPU time of this process over the same span (``time.process_time``): with one thread it
is what the run costs on a quiet core, and it does not grow when other processes take the CPU,
so it is the column to compare runs by on a busy machine. The quick profile's ``segment`` budget
is the point of this table that keeps notebook 09 inside its time limit (docs/sweep_segment.md).

    python bench/sweep_segment.py --families container_light --n-train 1024 2048 --epochs 5 10 \\
        --lr 2e-2 4e-2 --batch 16 32 --width 16 32 --json runs/sweep/segment.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from unifiedctx.data import load
from unifiedctx.models import count_params
from unifiedctx.train import Recipe, build_model, fit

#: mnist_canvas options of the quick profile (64 px canvases with 2-3 digits of 30-40 px).
QUICK_CANVAS = dict(size=64, n_test=96, digits=(2, 3), digit_size=(30, 40))
#: The U-Net of notebook 09 (``build_model("unet", data, task="segment", **UNET_OPTIONS)``): widths 8,
#: 16 and a bottleneck of 32 (29.6k parameters against the segmenters' 41-45k). Depth 3 at the
#: segmenters' size (base 5, 47.5k) has five channels before its classifier and stayed at "background
#: everywhere" at lr 2e-2 and 5e-3 (docs/sweep_segment.md); base 10 costs 2x per canvas.
UNET_OPTIONS = dict(base=8, depth=2)
HEADER = (f"{'family':16s} {'n_train':>7s} {'epochs':>6s} {'lr':>7s} {'batch':>5s} {'width':>5s} "
          f"{'params':>7s} {'steps':>5s} {'seconds':>7s} {'cpu_s':>7s} {'mIoU':>6s} {'pix_acc':>7s}")


def build(family: str, data, width: int, seed: int = 0, unet: dict | None = None) -> torch.nn.Module:
    """The segmenter ``{family}_nano`` with head width ``width``, or for ``unet`` the U-Net of
    ``unet`` options (default :data:`UNET_OPTIONS`), from :func:`unifiedctx.train.build_model`
    (weights drawn from ``torch.manual_seed(seed)``)."""
    if family == "unet":
        return build_model("unet", data, seed, task="segment", **(unet or UNET_OPTIONS))
    return build_model(f"{family}_nano", data, seed, task="segment", width=width)


def run_point(family: str, data, *, epochs: int, lr: float, batch: int, width: int, seed: int = 0,
              warmup: float = 0.3, unet: dict | None = None) -> dict:
    """Train one point of the grid and return its row (see the module docstring)."""
    model = build(family, data, width, seed, unet)
    recipe = Recipe(epochs=epochs, batch_size=batch, lr=lr, warmup_epochs=warmup, weight_decay=0.05,
                    seed=seed, task="segment")
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, data, recipe, device="cpu", progress=False)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    last = history[-1]
    return {"family": family, "n_train": int(data.train_x.shape[0]), "epochs": epochs, "lr": lr,
            "batch": batch, "width": width, "params": count_params(model),
            "steps": epochs * (data.train_x.shape[0] // batch), "seconds": round(seconds, 1),
            "cpu_s": round(cpu_seconds, 1),
            "miou": round(last["test_miou"], 4), "pixel_acc": round(last["test_pixel_acc"], 4),
            "miou_curve": [round(r["test_miou"], 4) for r in history]}


def format_row(row: dict) -> str:
    """One printed line of the table."""
    return (f"{row['family']:16s} {row['n_train']:7d} {row['epochs']:6d} {row['lr']:7.0e} {row['batch']:5d} "
            f"{row['width']:5d} {row['params']:7,d} {row['steps']:5d} {row['seconds']:7.1f} "
            f"{row['cpu_s']:7.1f} {row['miou']:6.3f} {row['pixel_acc']:7.3f}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=["container_light"])
    parser.add_argument("--n-train", nargs="+", type=int, default=[2048])
    parser.add_argument("--epochs", nargs="+", type=int, default=[4])
    parser.add_argument("--lr", nargs="+", type=float, default=[2e-2])
    parser.add_argument("--batch", nargs="+", type=int, default=[16])
    parser.add_argument("--width", nargs="+", type=int, default=[32])
    parser.add_argument("--unet-base", type=int, default=UNET_OPTIONS["base"], help="the U-Net's first width")
    parser.add_argument("--warmup", type=float, default=0.3, help="warm-up epochs")
    parser.add_argument("--size", type=int, default=QUICK_CANVAS["size"], help="canvas side in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    canvas = {**QUICK_CANVAS, "size": args.size}
    rows = []
    print(HEADER, flush=True)
    for n_train in args.n_train:
        data = load("mnist_canvas", seed=0, n_train=n_train, **canvas)
        grid = itertools.product(args.families, args.epochs, args.lr, args.batch, args.width)
        for family, epochs, lr, batch, width in grid:
            row = run_point(family, data, epochs=epochs, lr=lr, batch=batch, width=width, seed=args.seed,
                           warmup=args.warmup, unet={**UNET_OPTIONS, "base": args.unet_base})
            row["threads"], row["size"] = args.threads, args.size
            rows.append(row)
            print(format_row(row), flush=True)
            if args.json is not None:
                old = json.loads(args.json.read_text()) if args.json.exists() else []
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(old + [row], indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
