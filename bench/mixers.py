"""Benchmark every mixer's fast path against its dense reference ``project(A @ V)``.

For each registered mixer at each grid size it measures, on the CPU in float32 with batch 1:

* the median wall time of ``forward(x)`` (the fast path) and of ``reference(x)`` (build the dense
  affinity A, then ``project(A @ V)``), and their ratio;
* the peak memory of each: how far the peak resident set size rises during one call, in a fresh
  Python process per measurement, so every allocation PyTorch makes is seen (``tracemalloc``
  sees none of them). The peak is ``VmHWM`` from ``/proc/self/status``, reset just before the
  call through ``/proc/self/clear_refs`` (Linux only); ``ru_maxrss`` would not do, because a
  child process inherits its parent's peak across fork + exec.

The dense path is skipped, not run, when A alone would exceed ``--max-dense-gib``.

Usage::

    python bench/mixers.py                       # 14x14, 28x28, 56x56; dim 64, heads 4
    python bench/mixers.py --sizes 14,28 --repeats 3 --threads 1 --max-dense-gib 0.5

Prints a markdown table on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time


def build(name: str, side: int, dim: int, heads: int):
    """The mixer ``name`` for a ``side`` x ``side`` grid with its defaults and the shared options
    (``heads`` where it takes them: attention heads; ``grid`` for grid-bound mixers)."""
    from unifiedctx.mixers import create

    return create(name, dim=dim, heads=heads, grid=(side, side)).eval()


def dense_bytes(mixer, side: int) -> int:
    """Bytes of the float32 dense affinity ``A`` (batch 1, ``mixer.heads`` matrices of N x N)
    that the reference path would build: M is read from the mixer, never assumed."""
    n = side * side
    return mixer.heads * n * n * 4


def measure_time(name: str, side: int, dense: bool, repeats: int, threads: int, dim: int, heads: int) -> dict:
    """Median (and min) ms of the fast path and, if ``dense``, the reference, interleaved call by call.

    Interleaving puts both paths under the same conditions (a CPU shared with other work slows
    both alike), so their ratio is fair even when the absolute times are noisy.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mixer = build(name, side, dim, heads)
    paths = {"fast": mixer, "dense": mixer.reference} if dense else {"fast": mixer}
    times = {key: [] for key in paths}
    with torch.no_grad():
        x = torch.randn(1, dim, side, side)
        for run in paths.values():  # warm-up, not timed
            run(x)
        for _ in range(repeats):
            for key, run in paths.items():
                start = time.perf_counter()
                run(x)
                times[key].append(1000 * (time.perf_counter() - start))
    out = {"heads": mixer.heads}
    for key, values in times.items():
        out[key] = {"ms": statistics.median(values), "min_ms": min(values)}
    return out


def _status_mib(key: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) / 1024


def measure_peak(name: str, side: int, path: str, threads: int, dim: int, heads: int) -> dict:
    """MiB by which the peak resident memory rises during one call of ``path``.

    The peak is Linux's per-process high-water mark ``VmHWM``, reset to the current RSS just
    before the call (``5`` written to ``/proc/self/clear_refs``). ``ru_maxrss`` is not used: a
    child inherits its parent's peak across fork + exec, which hides small growths.
    """
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.no_grad():
        # load lazy kernels and thread pools on a tiny grid first (a separate 7x7 module)
        small = build(name, 7, dim, heads)
        (small if path == "fast" else small.reference)(torch.randn(1, dim, 7, 7))
        mixer = build(name, side, dim, heads)
        run = mixer if path == "fast" else mixer.reference
        x = torch.randn(1, dim, side, side)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_mib("VmRSS")
        run(x)
        return {"peak_mib": _status_mib("VmHWM") - before}


def child(args) -> dict:
    """Run one measurement in *this* process (the ``--child`` mode)."""
    what, name, side = args.child.split(",")
    if what == "time":
        return measure_time(name, int(side), not args.fast_only, args.repeats, args.threads,
                            args.dim, args.heads)
    return measure_peak(name, int(side), what.removeprefix("peak-"), args.threads, args.dim, args.heads)


def run_child(spec: str, args, fast_only: bool = False) -> dict:
    """One fresh interpreter per measurement (so ``ru_maxrss`` is this measurement's alone)."""
    cmd = [sys.executable, __file__, "--child", spec, "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--dim", str(args.dim), "--heads", str(args.heads)]
    if fast_only:
        cmd.append("--fast-only")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"failed (rc={out.returncode})"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="14,28,56", help="grid sides, comma-separated (default 14,28,56)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every measurement")
    p.add_argument("--max-dense-gib", type=float, default=1.0,
                   help="skip the dense reference when A alone would exceed this many GiB")
    p.add_argument("--mixers", default=None, help="comma-separated subset of mixers (default: all)")
    p.add_argument("--dim", type=int, default=64, help="channels (default 64)")
    p.add_argument("--heads", type=int, default=4,
                   help="the shared option heads= (attention heads; each mixer's M is read from it)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fast-only", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Run every measurement and print the markdown table."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    from unifiedctx.mixers import available

    names = args.mixers.split(",") if args.mixers else available()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"### Fast path vs dense reference (torch {torch.__version__}, {platform.machine()}, "
          f"{args.threads} thread(s), dim {args.dim}, heads {args.heads}, batch 1, float32)\n")
    print(f"Time: median of {args.repeats} calls under `torch.no_grad()`, the two paths called "
          "alternately in one process; the dense reference `project(affinity(x) @ values(x))` "
          "includes building A. Peak: rise of the peak resident memory (`VmHWM`, reset just before "
          "the call) during one call, in a fresh process per cell after a warm-up on a 7x7 grid, "
          "so it counts every tensor "
          "the path allocates (A, V, temporaries, output) but not the interpreter, torch or the "
          "weights. A: size of the float32 dense affinity (1, M, N, N).\n")
    print("| mixer | grid | N | M | fast ms | dense ms | dense / fast | fast peak MiB | "
          "dense peak MiB | A MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        for side in sizes:
            a_bytes = dense_bytes(build(name, side, args.dim, args.heads), side)
            skip = a_bytes > args.max_dense_gib * 2**30
            print(f"[bench] {name} {side}x{side}", file=sys.stderr, flush=True)
            timing = run_child(f"time,{name},{side}", args, fast_only=skip)
            fast_peak = run_child(f"peak-fast,{name},{side}", args)
            dense_peak = {} if skip else run_child(f"peak-dense,{name},{side}", args)
            if "error" in timing:
                fast_ms = dense_ms = ratio = timing["error"]
            else:
                fast_ms = f"{timing['fast']['ms']:.2f}"
                if skip:
                    dense_ms, ratio = f"skipped (A would be {a_bytes / 2**30:.1f} GiB)", "-"
                else:
                    dense_ms = f"{timing['dense']['ms']:.2f}"
                    ratio = f"{timing['dense']['ms'] / timing['fast']['ms']:.1f}x"
            peak = lambda r: f"{r['peak_mib']:.1f}" if "peak_mib" in r else r.get("error", "-")
            print(f"| {name} | {side}x{side} | {side * side} | {timing.get('heads', '?')} | {fast_ms} | "
                  f"{dense_ms} | {ratio} | {peak(fast_peak)} | {peak(dense_peak)} | "
                  f"{a_bytes / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
