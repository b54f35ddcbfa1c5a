"""Print the preset table (markdown): parameters and GMACs, and how the cost grows with resolution.

    .venv/bin/python bench/presets.py            # the tables (a few seconds: counted on 'meta')
    .venv/bin/python bench/presets.py --time     # also time one CPU epoch of each nano preset

Paper presets: parameters at 1000 classes, GMACs (FlopCounterMode, attention products counted)
at 224, 448 and 896 (MLP-Mixer is rebuilt for each size: its token weights exist for one grid).
``_cifar`` / ``_nano`` presets: parameters at 10 classes and MMACs at 32 x 32; for ``_cifar``,
the training work of one CIFAR-10 epoch (50,000 images, forward + backward ~ 3x forward).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from unifiedctx.models import PRESETS, count_macs, count_params, create_model, list_models

PAPER_SIZES = (224, 448, 896)


def meta_model(name: str, **kwargs):
    """Shapes only: counting needs no arithmetic, so it takes milliseconds even at 896."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def paper_rows() -> list[str]:
    rows = ["| preset | params (M) | GMACs @224 | GMACs @448 | GMACs @896 | 896 / 224 |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in list_models():
        if PRESETS[name]["size"] != "paper":
            continue
        grid_bound = meta_model(name).grid_bound
        macs = []
        for size in PAPER_SIZES:
            model = meta_model(name, img_size=size) if grid_bound else meta_model(name)
            macs.append(count_macs(model, size) / 1e9)
        params = count_params(meta_model(name)) / 1e6
        cells = " | ".join(f"{m:.2f}" for m in macs)
        rows.append(f"| `{name}` | {params:.2f} | {cells} | {macs[-1] / macs[0]:.0f}x |")
    return rows


def epoch_seconds(name: str, images: int = 5000, batch: int = 100) -> float:
    """Wall time of one training epoch (SGD) over ``images`` random 32 x 32 images on this CPU."""
    torch.manual_seed(0)
    model = create_model(name).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    F.cross_entropy(model(x), y).backward()  # warm-up
    start = time.perf_counter()
    for _ in range(images // batch):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - start


def small_rows(timed: bool) -> list[str]:
    head = "| preset | grids (32 x 32 input) | params | MMACs @32 | train TFLOP / CIFAR-10 epoch |"
    rows = [head + (" CPU s / 5k-image epoch |" if timed else ""),
            "|---|---|---:|---:|---:|" + ("---:|" if timed else "")]
    for name in list_models():
        size = PRESETS[name]["size"]
        if size == "paper":
            continue
        model = meta_model(name)
        grids = ", ".join(f"{32 // s}" for s in model.feature_strides)
        macs = count_macs(model)
        tflop = 3 * 2 * macs * 50_000 / 1e12
        row = f"| `{name}` | {grids} | {count_params(model):,} | {macs / 1e6:.1f} | {tflop:.1f} |"
        if timed:
            row += f" {epoch_seconds(name):.1f} |" if size == "nano" else " |"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", action="store_true", help="time one CPU epoch of each nano preset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for --time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("\n".join(paper_rows()))
    print()
    print("\n".join(small_rows(args.time)))


if __name__ == "__main__":
    main()
