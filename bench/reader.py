"""Benchmark of the one reader: ``inspect_model`` plus ``rollout`` of timm's DeiT-S, batch 1, on this CPU.

    python bench/reader.py            (needs timm: the .venv-timm environment)

Prints a table: the time of ``inspect_model(model, x)`` and of ``rollout(model, x)`` (the class token's and
every patch token's map over the 224 x 224 pixels), median of ``--repeat`` runs after one warm-up, for
DeiT-S at 224 (the target: under 2 s together), then the same with the depth changed (3, 6, 12 blocks)
and with the token count changed (input 112, 160, 224: 49, 100, 196 patch tokens). Random weights (no
download): the time does not depend on the values.

    python bench/reader.py --zoo      (needs transformers and torchvision: the .venv-timm environment)

times ``inspect_model`` + ``rollout`` of Hugging Face's ViT-B/16 at 224 (the target: under 2 s) and prints
the peak memory of ``inspect_model`` at 224 on torchvision's ConvNeXt-T and Swin-T and on ViT-B/16, each in
a fresh process (a depthwise conv's dense affinity is only built when asked for: its rows are its kernel).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from unifiedctx import context, inspect_model


def deit_small(depth: int = 12, size: int = 224):
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_small_patch16_224", pretrained=False, depth=depth, img_size=size).eval()


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(depth: int, size: int, repeat: int) -> dict:
    model = deit_small(depth, size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    forward = timed(lambda: model(x), repeat)
    inspect = timed(lambda: inspect_model(model, x), repeat)
    roll = timed(lambda: context.rollout(model, x), repeat)
    return {"depth": depth, "input": size, "tokens": 1 + (size // 16) ** 2, "forward": forward,
            "inspect_model": inspect, "rollout": roll, "total": inspect + roll}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--zoo", action="store_true", help="the Hugging Face / torchvision rows instead")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.zoo:
        return zoo(args)
    configs = [(12, 224), (3, 224), (6, 224), (12, 112), (12, 160)]
    rows = [row(depth, size, args.repeat) for depth, size in configs]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32, median of "
          f"{args.repeat}")
    print("| DeiT-S depth | input | tokens | forward (s) | inspect_model (s) | rollout (s) | both (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['depth']} | {r['input']} | {r['tokens']} | {r['forward']:.3f} "
              f"| {r['inspect_model']:.3f} | {r['rollout']:.3f} | {r['total']:.3f} |")
    return rows


# ---- the zoos (issue 26): Hugging Face ViT-B/16 timed, inspect_model's peak memory per network ----------
def hf_vit_b16():
    """Hugging Face's ViT-B/16 at 224 (its default config), random weights, SDPA attention."""
    import transformers

    torch.manual_seed(0)
    return transformers.ViTModel(transformers.ViTConfig()).eval()


def zoo_row(repeat: int) -> dict:
    model, x = hf_vit_b16(), torch.randn(1, 3, 224, 224)
    return {"model": "HF ViT-B/16", "forward": timed(lambda: model(x), repeat),
            "inspect_model": timed(lambda: inspect_model(model, x), repeat),
            "rollout": timed(lambda: context.rollout(model, x), repeat)}


PEAK = """
import os, threading, time, torch, torchvision
import bench.reader as b
from unifiedctx import inspect_model
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
torch.manual_seed(0)
build = {"HF ViT-B/16": b.hf_vit_b16, "torchvision swin_t": lambda: torchvision.models.swin_t(),
         "torchvision convnext_tiny": lambda: torchvision.models.convnext_tiny()}[NAME]
model, x = build().eval(), torch.randn(1, 3, 224, 224)
with torch.no_grad():
    model(x)
before, peak, done = rss(), [0], []
def watch():
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
thread = threading.Thread(target=watch)
thread.start()
views = inspect_model(model, x)
done.append(1)
thread.join()
top = max(peak[0], rss())
print((top - before) / 2**30, top / 2**30)
"""


def peak_memory(name: str) -> tuple[float, float]:
    """``(added, peak)`` in GB: the resident memory ``inspect_model`` adds on one 224 x 224 image, and the
    process's whole peak during the call (model and torch included), in a fresh process that builds ``name``
    and runs one plain forward first; the resident set is sampled every 2 ms (``/proc/self/statm``)."""
    import subprocess
    import sys

    code = PEAK.replace("NAME", repr(name))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    added, peak = out.stdout.strip().splitlines()[-1].split()
    return float(added), float(peak)


def zoo(args) -> list[dict]:
    r = zoo_row(args.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32, median of "
          f"{args.repeat}")
    print("| model | forward (s) | inspect_model (s) | rollout (s) | both (s) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {r['model']} at 224 | {r['forward']:.3f} | {r['inspect_model']:.3f} | {r['rollout']:.3f} "
          f"| {r['inspect_model'] + r['rollout']:.3f} |")
    print("\n| inspect_model at 224 | memory it adds (GB) | process peak during it (GB) |\n|---|---:|---:|")
    for name in ("torchvision convnext_tiny", "torchvision swin_t", "HF ViT-B/16"):
        added, peak = peak_memory(name)
        print(f"| {name} | {added:.3f} | {peak:.2f} |")
    return [r]


if __name__ == "__main__":
    main()
