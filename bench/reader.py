"""Benchmark of the one reader: ``inspect_model`` plus ``rollout`` of timm's DeiT-S, batch 1, on this CPU.

    python bench/reader.py            (needs timm: the .venv-timm environment)

Prints a table: the time of ``inspect_model(model, x)`` and of ``rollout(model, x)`` (the class token's and
every patch token's map over the 224 x 224 pixels), median of ``--repeat`` runs after one warm-up, for
DeiT-S at 224 (the target: under 2 s together), then the same with the depth changed (3, 6, 12 blocks)
and with the token count changed (input 112, 160, 224: 49, 100, 196 patch tokens). Random weights (no
download): the time does not depend on the values.

    python bench/reader.py --zoo      (needs transformers and torchvision: the .venv-timm environment)

times ``inspect_model`` + ``rollout`` of Hugging Face's ViT-B/16 at 224 (the target: under 2 s) and prints
the peak memory of ``inspect_model`` at 224 on ViT-B/16 and torchvision's Swin-T, each in a fresh process
(``--convnext`` adds ConvNeXt-T, whose dense depthwise views still take many GB: see docs/reader_bench.md).
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
    parser.add_argument("--convnext", action="store_true",
                        help="also ConvNeXt-T's peak memory (inspect_model still builds its dense depthwise views)")
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


def peak_memory(name: str) -> float:
    """Peak resident memory (GB) of a fresh process that builds ``name`` and runs ``inspect_model`` on one
    224 x 224 image, minus the same process's peak before ``inspect_model``."""
    import subprocess
    import sys

    code = f"""
import resource, torch, torchvision
import bench.reader as b
from unifiedctx import inspect_model
torch.manual_seed(0)
build = {{"HF ViT-B/16": b.hf_vit_b16, "torchvision swin_t": lambda: torchvision.models.swin_t(),
         "torchvision convnext_tiny": lambda: torchvision.models.convnext_tiny()}}[{name!r}]
model, x = build().eval(), torch.randn(1, 3, 224, 224)
with torch.no_grad():
    model(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inspect_model(model, x)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def zoo(args) -> list[dict]:
    r = zoo_row(args.repeat)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, float32, median of {args.repeat}")
    print("| model | forward (s) | inspect_model (s) | rollout (s) | both (s) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {r['model']} at 224 | {r['forward']:.3f} | {r['inspect_model']:.3f} | {r['rollout']:.3f} "
          f"| {r['inspect_model'] + r['rollout']:.3f} |")
    names = ["HF ViT-B/16", "torchvision swin_t"] + (["torchvision convnext_tiny"] if args.convnext else [])
    print("\n| inspect_model at 224 | peak memory above the forward (GB) |\n|---|---:|")
    for name in names:
        print(f"| {name} | {peak_memory(name):.2f} |")
    return [r]


if __name__ == "__main__":
    main()
