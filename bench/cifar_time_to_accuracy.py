"""Time to 94% CIFAR-10 test accuracy with a Container-Light ``_cifar`` preset on one GPU.

    python bench/cifar_time_to_accuracy.py                 # CUDA: CIFAR-10, target 0.94, budget 60 s
    python bench/cifar_time_to_accuracy.py --quick         # CPU smoke run: mnist5k subset, nano preset
    python bench/cifar_time_to_accuracy.py --smoke         # the GPU code path, 2 steps, on any device

``--smoke`` runs the full configuration's code path (the ``_cifar`` preset, bf16 autocast,
``channels_last``, ``torch.compile`` unless ``--no-compile``, fused AdamW on CUDA) for 2 steps
on a CIFAR-shaped synthetic set (3x32x32 ``texture`` images), so the fast path is exercised on a
CPU in CI before a first GPU user runs it.

The fast path: the whole training set as uint8 on the GPU with crop/flip done there, bf16
autocast, ``channels_last``, ``torch.compile``, fused AdamW, label smoothing and a short warmup +
cosine schedule. After every epoch it prints the test accuracy against the seconds of training
so far (``train_s``: the epochs' own time, compile included; ``wall_s``: since the start, evaluation
included) and stops when the target is reached or the training budget is spent.
Target on one H100: >= 94% in <= 60 s of training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unifiedctx import data as D  # noqa: E402
from unifiedctx.train import EpochDone, StopTraining, build_model, fit  # noqa: E402

SMOKE = {"model": "container_light_cifar", "data": "texture", "epochs": 1, "batch_size": 16, "lr": 3e-3,
         "weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.1, "ema": 0.99, "target": 1.01,
         "budget": 600.0}
FULL = {"model": "container_light_cifar", "data": "cifar10", "epochs": 20, "batch_size": 512, "lr": 3e-3,
        "weight_decay": 0.05, "warmup_epochs": 1.0, "label_smoothing": 0.1, "ema": None, "target": 0.94,
        "budget": 60.0}
QUICK = {"model": "container_light_nano", "data": "mnist5k", "epochs": 6, "batch_size": 64, "lr": 3e-3,
         "weight_decay": 0.05, "warmup_epochs": 0.5, "label_smoothing": 0.1, "ema": None, "target": 0.90,
         "budget": 120.0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU smoke run on a small offline dataset")
    p.add_argument("--smoke", action="store_true",
                   help="2 steps of the full fast path (bf16, channels_last, compile) on CIFAR-shaped "
                   "synthetic data")
    for key, value in FULL.items():
        kind = type(value) if value is not None else float
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, help=f"(full: {value})")
    p.add_argument("--data-root", default=None, help="where CIFAR-10 is cached (default: data/)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write checkpoints and history here")
    args = p.parse_args(argv)
    if args.smoke:
        return smoke(args)
    cfg = dict(QUICK if args.quick else FULL)
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    cuda = torch.cuda.is_available() and not args.quick
    if not cuda and not args.quick:
        print("no CUDA device: running the CPU smoke version (--quick)")
        cfg = dict(QUICK)
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if cfg["data"] == "mnist5k":
        ds = D.load("mnist5k", channels=3)
    else:
        ds = D.load(cfg["data"], root=args.data_root)
    if args.quick:
        ds = ds.subset(1024, 512, seed=0)
    model = build_model(cfg["model"], ds, seed=args.seed)
    start = time.perf_counter()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{cfg['model']} on {cfg['data']} ({device}): {params:.2f}M "
          f"params, {len(ds.train_y)} train images, target {cfg['target']:.2%} within {cfg['budget']:.0f} s")
    print(f"{'epoch':>5} {'train_s':>8} {'wall_s':>8} {'img/s':>8} {'loss':>7} {'test_acc':>9}")
    reached = {}

    def report(event):
        if not isinstance(event, EpochDone):
            return
        row = event.row
        wall = time.perf_counter() - start
        print(f"{row['epoch']:>5} {row['time']:>8.1f} {wall:>8.1f} {row['images_per_s']:>8.0f} "
              f"{row['train_loss']:>7.3f} {row['test_acc']:>9.4f}", flush=True)
        if row["test_acc"] >= cfg["target"] and not reached:
            reached.update(epoch=row["epoch"], train_s=row["time"], wall_s=wall, acc=row["test_acc"])
            raise StopTraining
        if row["time"] >= cfg["budget"]:
            raise StopTraining

    history = fit(model, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  weight_decay=cfg["weight_decay"], warmup_epochs=cfg["warmup_epochs"],
                  label_smoothing=cfg["label_smoothing"], ema=cfg["ema"], device=device, amp="auto",
                  compile=cuda and not args.no_compile, channels_last=cuda, seed=args.seed, progress=False,
                  eval_batch_size=1024 if cuda else 256, callback=report, out=args.out)
    best = history.best("test_acc")
    if reached:
        print(f"reached {reached['acc']:.4f} >= {cfg['target']:.2f} at epoch {reached['epoch']} after "
              f"{reached['train_s']:.1f} s of training ({reached['wall_s']:.1f} s wall-clock)")
    else:
        print(f"target {cfg['target']:.2f} not reached: best {best['test_acc']:.4f} at epoch {best['epoch']} "
              f"after {history[-1]['time']:.1f} s of training")
    return {"reached": bool(reached), **reached, "best": best["test_acc"]}


def smoke(args) -> dict:
    """Two steps of the GPU configuration's code path on 3x32x32 synthetic images; returns the row."""
    cfg = dict(SMOKE)
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ds = D.load("texture", n_train=64, n_test=32, size=32, channels=3, seed=args.seed)
    model = build_model(cfg["model"], ds, seed=args.seed)
    compile_on = not args.no_compile
    print(f"smoke: {cfg['model']} on CIFAR-shaped {cfg['data']} {tuple(ds.train_x.shape)} ({device}): "
          f"bf16 autocast, channels_last, compile={compile_on}, 2 steps")
    history = fit(model, ds, epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                  weight_decay=cfg["weight_decay"], warmup_epochs=cfg["warmup_epochs"],
                  label_smoothing=cfg["label_smoothing"], ema=cfg["ema"], device=device, amp="bf16",
                  compile=compile_on, channels_last=True, seed=args.seed, progress=False,
                  max_steps_per_epoch=2, out=args.out)
    row = history[-1]
    print(f"{'epoch':>5} {'train_s':>8} {'img/s':>8} {'loss':>7} {'test_acc':>9}")
    print(f"{row['epoch']:>5} {row['time']:>8.1f} {row['images_per_s']:>8.0f} {row['train_loss']:>7.3f} "
          f"{row['test_acc']:>9.4f}")
    return {"smoke": True, "device": device, "compile": compile_on, **row}


if __name__ == "__main__":
    main()
