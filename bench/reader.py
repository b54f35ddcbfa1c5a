"""Benchmark of the one reader: ``inspect_model`` plus ``rollout`` of timm's DeiT-S, batch 1, on this CPU.

    python bench/reader.py            (needs timm: the .venv-timm environment)

Prints a table: the time of ``inspect_model(model, x)`` and of ``rollout(model, x)`` (the class token's and
every patch token's map over the 224 x 224 pixels), median of ``--repeat`` runs after one warm-up, for
DeiT-S at 224 (the target: under 2 s together), then the same with the depth changed (3, 6, 12 blocks)
and with the token count changed (input 112, 160, 224: 49, 100, 196 patch tokens). Random weights (no
download): the time does not depend on the values.
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
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
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


if __name__ == "__main__":
    main()
