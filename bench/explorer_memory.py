"""Benchmark of the explorer's memory: peak resident memory and time of ``AffinityExplorer`` at 224 px.

    python bench/explorer_memory.py                 (needs timm, torchvision, transformers: .venv-timm)
    python bench/explorer_memory.py --only "timm convnext_tiny"

For each network (random weights, no download; two 224 x 224 images), in a fresh process that builds the
model and runs one plain forward first, four steps are timed and their peak resident memory is sampled every
2 ms (``/proc/self/statm``): ``construct`` (``AffinityExplorer(model, images)``: the catalogue of layers),
``first map`` (the maps the front end is sent for the shown layer at the centre query, ``rendered()``),
``depth map`` (the rollout of that query, ``depth="rollout"``) and ``to_html`` (the exported page, within its
20 MB cap). Prints a markdown table: network x (peak GB, seconds) per step, the process before them (the model
and one forward), the page's size, what the explorer holds at the end (``held_bytes``) and what the page left
out; ``docs/reader_bench.md`` keeps the measured table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: name -> the expression that builds it (inside the fresh process)
NETWORKS = {
    "timm convnext_tiny": "timm.create_model('convnext_tiny')",
    "torchvision convnext_tiny": "torchvision.models.convnext_tiny()",
    "timm swin_tiny_patch4_window7_224": "timm.create_model('swin_tiny_patch4_window7_224')",
    "torchvision swin_t": "torchvision.models.swin_t()",
    "HF ViT-B/16": "transformers.ViTModel(transformers.ViTConfig())",
    "timm vit_base_patch16_224": "timm.create_model('vit_base_patch16_224')",
}

STEPS = ("construct", "first map", "depth map", "to_html")

CHILD = """
import json, os, sys, tempfile, threading, time, warnings
import torch, timm, torchvision, transformers
from unifiedctx.widgets import AffinityExplorer
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
torch.manual_seed(0)
model = BUILD.eval()
images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    model(images[:1])
out = {"base": rss() / 2**30}
state = {"peak": 0, "stop": False}
def watch():
    while not state["stop"]:
        state["peak"] = max(state["peak"], rss())
        time.sleep(0.002)
thread = threading.Thread(target=watch, daemon=True)
thread.start()
def step(name, fn):
    state["peak"] = rss()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    out[name] = {"peak": max(state["peak"], rss()) / 2**30, "seconds": seconds}
    return value
explorer = step("construct", lambda: AffinityExplorer(model, images))
out["layers"] = len(explorer.layers)
out["layer"] = explorer.layer
step("first map", explorer.rendered)
def depth():
    explorer.depth = "rollout"
    return explorer.depth_map()
step("depth map", depth)
folder = tempfile.mkdtemp()
def export():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            path = explorer.to_html(os.path.join(folder, "page.html"))
            out["page_mb"] = os.path.getsize(path) / 1e6
        except ValueError as error:
            out["page_mb"], out["export_error"] = float("nan"), str(error)[:160]
    out["left_out"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
step("to_html", export)
out["held_mb"] = explorer.data.held_bytes() / 2**20 if hasattr(explorer.data, "held_bytes") else None
state["stop"] = True
print("RESULT " + json.dumps(out))
"""


def measure(name: str) -> dict:
    """One network's row, measured in a fresh process (see the module docstring)."""
    code = CHILD.replace("BUILD", NETWORKS[name])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(NETWORKS), help="measure only this network")
    args = parser.parse_args(argv)
    names = args.only or list(NETWORKS)
    rows = []
    print("| network (224 px, 2 images) | layers | model + forward (GB) | "
          + " | ".join(f"{s}: peak GB, s" for s in STEPS) + " | page MB | held by the explorer (MB) |")
    print("|---|---:|---:|" + "---:|" * len(STEPS) + "---:|---:|")
    for name in names:
        r = measure(name)
        rows.append({"network": name, **r})
        if "error" in r:
            print(f"| {name} | failed: {r['error']} |")
            continue
        cells = " | ".join(f"{r[s]['peak']:.2f}, {r[s]['seconds']:.1f}" for s in STEPS)
        held = "" if r.get("held_mb") is None else f"{r['held_mb']:.1f}"
        print(f"| {name} | {r['layers']} | {r['base']:.2f} | {cells} | {r['page_mb']:.1f} | {held} |",
              flush=True)
    for r in rows:
        if "export_error" in r:
            print(f"\n{r['network']}: to_html failed: {r['export_error']}")
        for message in r.get("left_out", []):
            print(f"\n{r['network']}: {message}")
    return rows


if __name__ == "__main__":
    main()
