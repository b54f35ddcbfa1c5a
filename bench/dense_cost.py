"""How the cost of a dense-prediction backbone grows with resolution: time, memory, MACs.

    .venv/bin/python bench/dense_cost.py                  # 64..512 px, CPU (minutes)
    .venv/bin/python bench/dense_cost.py --device cuda    # the same on a GPU
    .venv/bin/python bench/dense_cost.py --quick          # smoke run: tiny sizes and widths

Backbones (``--width cifar``, the default; ``nano`` for the smoke run): the ``_cifar`` presets'
widths and depths with the **paper's strides** (patch 4, then 2, 2, 2: stage grids H/4 .. H/32;
DeiT patch 16), because the strides decide how attention scales, and the claim is about them:
Container-Light attends only at stride 32, Container at every stride, DeiT at stride 16, the
ConvNet never. Every backbone runs ``features(x)`` on a batch of ``--batch`` images and
backpropagates ``sum(mean(map))`` over the stage maps.

Measured per backbone and side S (pixels P = S^2):

* time: median over ``--repeats`` forward+backward passes (after one warm-up), synchronised on CUDA;
* memory: on CPU the *activation memory*, the bytes of the tensors autograd saves for the backward
  pass (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once): the part of a
  training step's memory that grows with resolution (tracemalloc does not see torch's allocations,
  and RSS deltas depend on the allocator). On CUDA also the peak allocated during the step,
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before it;
* GMACs of one forward pass of one image (``count_macs``: attention products included);
* ratios to Container-Light at the same size;
* growth: the log-log slope of time, memory and MACs against P over all sizes (1 = linear in
  pixels, 2 = quadratic) and between the two largest sizes, and the share of the quadratic term
  ``c P^2 / (a + b P + c P^2)`` of a least-squares quadratic fit of time at the largest size.

PyTorch's CPU and CUDA attention kernels (flash / memory-efficient SDPA) never store the N x N
matrix, so attention's *memory* is linear in tokens; its *time* and MACs are quadratic.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from unifiedctx.models import PRESETS, count_macs, create_model

FAMILIES = ("convnet", "container_light", "container", "deit_tiny")
SIZES = (64, 128, 256, 512)
QUICK_SIZES = (32, 64, 96)
PAPER_STRIDES = {"hierarchical": (4, 2, 2, 2), "isotropic": (16,)}


def build_backbone(family: str, img_size: int, width: str = "cifar", in_chans: int = 3) -> torch.nn.Module:
    """``family`` at the ``width`` preset's dims and depths with the paper's strides, no classifier."""
    stages = copy.deepcopy(PRESETS[f"{family}_{width}"]["stages"])
    strides = PAPER_STRIDES["isotropic" if len(stages) == 1 else "hierarchical"]
    for stage, stride in zip(stages, strides):
        stage["stride"] = stride
    return create_model(f"{family}_{width}", num_classes=0, img_size=img_size, in_chans=in_chans,
                        stages=stages)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward during ``model.features(x)`` (storages once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        maps = model.features(x)
    del maps
    return sum(storages.values())


def step(model: torch.nn.Module, x: torch.Tensor) -> None:
    """One forward + backward of ``sum_s mean(F_s)`` over the stage maps."""
    model.zero_grad(set_to_none=True)
    loss = sum(f.mean() for f in model.features(x))
    loss.backward()


def forward_gmacs(family: str, size: int, width: str = "cifar") -> float:
    """GMACs of one forward pass of one ``size`` x ``size`` image (counted on the meta device)."""
    with torch.device("meta"):
        return count_macs(build_backbone(family, size, width), img_size=size) / 1e9


def measure(family: str, size: int, *, width: str = "cifar", batch: int = 2, repeats: int = 3,
            device: str = "cpu") -> dict:
    """Time, memory and MACs of ``family`` at ``size`` x ``size`` (see the module docstring)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    gmacs = forward_gmacs(family, size, width)
    model = build_backbone(family, size, width).to(dev).train()
    x = torch.randn(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    step(model, x)  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(model, x)
        sync()
        times.append(time.perf_counter() - t0)
    row = {"family": family, "size": size, "pixels": size * size, "time_s": statistics.median(times),
           "act_mb": saved_bytes(model, x) / 2**20, "gmacs": gmacs, "estimated": False}
    if dev.type == "cuda":
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step(model, x)
        torch.cuda.synchronize(dev)
        row["peak_mb"] = (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    return row


def growth(rows: list[dict], key: str) -> dict:
    """Log-log slope of ``key`` against pixels over all rows and between the two largest sizes,
    and the quadratic share at the largest size (least-squares ``a + b P + c P^2``); rows whose
    step was not run count for ``gmacs`` only."""
    exact = key == "gmacs"  # counted, so exact even where the step was not run
    rows = sorted((r for r in rows if exact or not r.get("estimated")), key=lambda r: r["pixels"])
    nan = float("nan")
    if len(rows) < 2:
        return {"slope": nan, "slope_last": nan, "quadratic_share": nan}
    p = np.array([r["pixels"] for r in rows], dtype=np.float64)
    y = np.array([r[key] for r in rows], dtype=np.float64)
    slope = float(np.polyfit(np.log(p), np.log(y), 1)[0])
    last = float(np.log(y[-1] / y[-2]) / np.log(p[-1] / p[-2]))
    share = nan
    if len(rows) >= 3:
        scale = p[-1]
        c, b, a = np.polyfit(p / scale, y, 2)
        share = float(c / (a + b + c)) if (a + b + c) else float("nan")
    return {"slope": slope, "slope_last": last, "quadratic_share": share}


def run(families=FAMILIES, sizes=SIZES, *, width: str = "cifar", batch: int = 2, repeats: int = 3,
        device: str = "cpu", time_limit: float = 60.0, log=print) -> list[dict]:
    """Every ``(family, size)`` row of :func:`measure`, with ``time_ratio``/``act_ratio`` to
    Container-Light at that size when it is among ``families``.

    A step whose time, extrapolated from the previous size by the ratio of MACs, would exceed
    ``time_limit`` seconds is not run: its row holds that estimate (``estimated=True``), no
    memory, and is left out of the growth fits."""
    rows = []
    for family in families:
        previous = None
        for size in sorted(sizes):
            if previous is not None and previous["time_s"] * (
                    forward_gmacs(family, size, width) / previous["gmacs"]) > time_limit:
                gmacs = forward_gmacs(family, size, width)
                rows.append({"family": family, "size": size, "pixels": size * size, "gmacs": gmacs,
                             "time_s": previous["time_s"] * gmacs / previous["gmacs"],
                             "act_mb": float("nan"), "estimated": True})
            else:
                rows.append(measure(family, size, width=width, batch=batch, repeats=repeats, device=device))
                previous = rows[-1]
            if log:
                r = rows[-1]
                note = " (estimated from MACs, not run)" if r["estimated"] else ""
                log(f"  {family:16s} {size:4d} px: {1e3 * r['time_s']:9.1f} ms  {r['act_mb']:8.1f} MB{note}")
    base = {r["size"]: r for r in rows if r["family"] == "container_light"}
    for r in rows:
        if r["size"] in base:
            r["time_ratio"] = r["time_s"] / base[r["size"]]["time_s"]
            r["act_ratio"] = r["act_mb"] / base[r["size"]]["act_mb"]
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of the rows, then one growth line per family."""
    cuda = any("peak_mb" in r for r in rows)
    head = "| backbone | side | GMACs | time (ms) | time / C-Light | act. memory (MB) | memory / C-Light |"
    head += " peak CUDA (MB) |" if cuda else ""
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        nan = float("nan")
        time_ms = f"{1e3 * r['time_s']:.1f}" + (" (est.)" if r.get("estimated") else "")
        line = (f"| {r['family']} | {r['size']} | {r['gmacs']:.4g} | {time_ms} | "
                f"{r.get('time_ratio', nan):.2f} | {r['act_mb']:.1f} | {r.get('act_ratio', nan):.2f} |")
        lines.append(line + (f" {r['peak_mb']:.1f} |" if cuda else ""))
    lines += ["", "| backbone | time slope | time slope (2 largest) | quadratic share of time at max | "
              "memory slope | GMACs slope |", "|---|---:|---:|---:|---:|---:|"]
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        t, m, g = growth(mine, "time_s"), growth(mine, "act_mb"), growth(mine, "gmacs")
        lines.append(f"| {family} | {t['slope']:.2f} | {t['slope_last']:.2f} | {t['quadratic_share']:.2f} | "
                     f"{m['slope']:.2f} | {g['slope']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sides (64 128 256 512)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--width", default=None, choices=("nano", "cifar"), help="preset widths (cifar)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per row, median (3)")
    parser.add_argument("--time-limit", type=float, default=60.0,
                        help="skip a step estimated to take longer (seconds, 60); its time is extrapolated")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sides 32 64 96, nano widths, 1 repeat")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    width = args.width or ("nano" if args.quick else "cifar")
    repeats = 1 if args.quick else args.repeats
    print(f"dense cost on {args.device}: widths of the _{width} presets, paper strides, batch {args.batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = run(args.families, sizes, width=width, batch=args.batch, repeats=repeats, device=args.device,
               time_limit=args.time_limit)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
