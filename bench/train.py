"""Training throughput (images/s) of every ``_nano`` and ``_cifar`` preset on the available device.

    python bench/train.py                      # all presets, defaults for the device
    python bench/train.py --pattern '*_nano' --steps 10 --batch-size 128
    python bench/train.py --device cuda --compile --channels-last   # the fast GPU path

Each preset trains on random 32x32 uint8 images held on the device, with the engine's own pieces
(device-side crop/flip, AdamW, bf16 autocast on CUDA): one warm-up step (two with --compile), then
``--steps`` timed steps; images/s = steps * batch / seconds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unifiedctx.data.base import ImageData  # noqa: E402
from unifiedctx.models import create_model, list_models  # noqa: E402
from unifiedctx.train import DeviceBatches, resolve_amp, resolve_device  # noqa: E402
from unifiedctx.train.optim import make_optimizer  # noqa: E402


def random_data(n: int, size: int = 32, classes: int = 10) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, classes, (n,), generator=gen)
    return ImageData("random", x, y, x[:1], y[:1], [str(i) for i in range(classes)], (0.5,) * 3, (0.25,) * 3)


def measure(name: str, device: torch.device, batch: int, steps: int, amp, compile_: bool,
            channels_last: bool) -> dict:
    """Images/s of ``steps`` training steps of preset ``name`` after warm-up."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, img_size=32)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    warmup = 2 if compile_ else 1
    batches = DeviceBatches(random_data(batch * (steps + warmup)), batch, device, channels_last=channels_last)
    optimizer = make_optimizer(model, 1e-3, 0.05, device)
    step_model = torch.compile(model) if compile_ else model
    dtype = resolve_amp(amp, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for i, (x, target, _) in enumerate(batches.epoch(0)):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with autocast():
            loss = F.cross_entropy(step_model(x).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync()
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {"preset": name, "params": params, "batch": batch, "steps": steps,
            "images_per_s": steps * batch / seconds, "ms_per_step": 1000 * seconds / steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pattern", action="append", default=None,
                   help="fnmatch pattern of presets (repeatable; default '*_nano' and '*_cifar')")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (auto)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA; CPU 64 nano, 16 cifar")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps (default: 20 on CUDA; CPU 2 nano, 1 cifar)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"),
                   help="autocast (auto: bf16 on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    names = [n for pat in (args.pattern or ["*_nano", "*_cifar"]) for n in list_models(pat)]
    start = time.perf_counter()
    label = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {label}; torch {torch.__version__}; amp {resolve_amp(args.amp, device)}; "
          f"compile {args.compile}; channels_last {args.channels_last}\n")
    print("| preset | params | batch | steps | images/s | ms/step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        nano = name.endswith("_nano")
        batch = args.batch_size or (256 if cuda else 64 if nano else 16)
        steps = args.steps or (20 if cuda else 2 if nano else 1)
        r = measure(name, device, batch, steps, args.amp, args.compile, args.channels_last)
        print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['steps']} | "
              f"{r['images_per_s']:.0f} | {r['ms_per_step']:.0f} |", flush=True)
    print(f"\n{len(names)} presets in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
