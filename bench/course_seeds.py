"""Run the course's notebooks on several seeds and collect what their claims measure.

Every notebook takes its seed from the profile (``UNIFIEDCTX_SEED``) and asserts only what holds on
every seed tried. This script is how "every seed tried" is measured: it executes each chosen
notebook in a fresh kernel for each seed (quick profile, one torch thread), **with errors allowed**
(a failing ``assert`` does not stop the rest of the notebook, so a seed where a claim fails still
gives every number), and then evaluates, in the notebook's own namespace, the expressions that
:data:`MEASURES` lists for it: the quantities its ``assert`` cells compare. One JSON row per
(notebook, seed)::

    {"notebook": "10", "seed": 3, "wall_s": ..., "cpu_s": ..., "failed": [...], "values": {...}}

``cpu_s`` is the CPU time of the kernel and of the worker processes it waited for (notebook 09
trains in two); on a machine shared with other jobs it is about what a quiet machine's wall clock
reads, while ``wall_s`` is what this machine took at its load. ``failed`` lists the cells that raised
(the cell, the error and the failing line). Runs are cached per seed in ``runs/quick/seed<k>/``, as the
notebooks cache them; ``--fresh`` removes a seed's cached runs first, so the times are a cold run's.
Within one seed the notebooks run in the order given (notebook 05 and 10 read 04's runs); ``--jobs 2``
runs two seeds at a time::

    PYTHONPATH=$PWD python bench/course_seeds.py 03 09 10 --seeds 0 1 2 3 4 5 --jobs 2 --json runs/seeds.json
    python bench/course_seeds.py --table runs/seeds.json            # per-seed table, mean, spread, min, max
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unifiedctx.course import notebooks  # noqa: E402

#: For each notebook: name -> a Python expression evaluated in the executed notebook's namespace
#: (the quantities its asserts compare). A notebook that renames a variable fails here loudly.
MEASURES = {
    "01": {"attention_outside_window": "far[~near].sum()"},
    "02": {"conv_like_in_window": "conv_like[window].abs().sum() / conv_like.abs().sum()"},
    "03": {
        **{f"texture_{p}": f"acc['texture']['{p}']" for p in ("conv", "attention", "mixer", "container")},
        **{f"longrange_{p}": f"acc['longrange']['{p}']" for p in ("conv", "attention", "mixer", "container")},
        "conv_minus_attention_texture": "acc['texture']['conv'] - acc['texture']['attention']",
        "conv_reach_max": "reach['conv'].max()",
        "attention_reach_min": "reach['attention'].min()",
    },
    "04": {},
    "05": {
        **{f"test_acc_{f}": f"histories['{f}'][-1]['test_acc']"
           for f in ("container_light", "container", "deit_tiny", "mixer_s16")},
        **{f"moved_{f}": f"max((distances['{f}', 'trained'][n] - distances['{f}', 'untrained'][n])"
                         f".abs().max().item() for n in distances['{f}', 'trained'])"
           for f in ("container_light", "container", "deit_tiny", "mixer_s16")},
        "container_alpha_moved": "max(abs(ab['alpha'] - 0.5) "
                                 "for ab in mixing_weights(trained['container']).values())",
        "kernel_change_min": "min(((after[n] - before[n]).norm() / before[n].norm()).item() for n in after)",
        "peak_distance_max": "max(max(abs(py - qy), abs(px - qx)) for (qy, qx), found in peaks.items() "
                             "for py, px in found)",
        "window_largest_over_smallest": "window.max() / window.min()",
        "rollout_minus_window": "np.abs(shares['rollout'] - window).max()",
        "erf_window_correlation": "agree",
        "erf_largest_over_smallest": "erf.max() / erf.min()",
    },
    "06": {},
    "08": {  # over notebook 04's watched epochs: the asserts of its last cell
        "deit_distance_change_max": "max(distances['deit_tiny', la][-1] - distances['deit_tiny', la][0] "
                                    "for la in attention_layers(watched['deit_tiny']))",
        "light_distance_change": "distances['container_light', 'stages.3.blocks.0.mixer'][-1] "
                                 "- distances['container_light', 'stages.3.blocks.0.mixer'][0]",
        "light_alpha_min_after_0": "min(alphas['container_light', 'stages.3.blocks.0.mixer'][1:])",
        "container_last_alpha_minus_earlier": "alphas['container', 'stages.3.blocks.0.mixer'][-1] - max("
                                              "alphas['container', f'stages.{k}.blocks.0.mixer'][-1] "
                                              "for k in range(3))",
        "container_last_alpha": "alphas['container', 'stages.3.blocks.0.mixer'][-1]",
    },
    "09": {
        "miou_container_light": "light",
        "miou_unet": "main['unet'][1][-1]['test_miou']",
        "background_only": "baseline",
        "light_over_baseline": "light / baseline",
        "digits_above_0.15": "int((ious['container_light'][1:] > 0.15).sum())",
        "digit_iou_min": "float(np.nanmin(ious['container_light'][1:]))",
        "digit_iou_max": "float(np.nanmax(ious['container_light'][1:]))",
        "main_minus_equal_light": "light - histories['container_light'][-1]['test_miou']",
        **{f"equal_{f}": f"histories['{f}'][-1]['test_miou']"
           for f in ("convnet", "container_light", "container", "deit_tiny", "unet")},
        "light_minus_unet": "light - main['unet'][1][-1]['test_miou']",
        "act_slope": "act_slope",
    },
    "10": {
        **{f"untrained_{f}": f"untrained_knn['{f}']" for f in ("container_light", "deit_tiny")},
        **{f"knn_{f}": f"final['{f}']" for f in ("container_light", "deit_tiny")},
        **{f"gain_{f}": f"gain['{f}']" for f in ("container_light", "deit_tiny")},
        "final_gap": "final['container_light'] - final['deit_tiny']",
        "untrained_gap": "untrained_knn['container_light'] - untrained_knn['deit_tiny']",
        "gain_gap": "gain['container_light'] - gain['deit_tiny']",
        **{f"probe_{f}_{s}": f"probes['{f}']['{k}']" for f in ("container_light", "deit_tiny")
           for s, k in (("dino", "DINO"), ("untrained", "untrained"))},
        **{f"probe_gain_{f}": f"probes['{f}']['DINO'] - probes['{f}']['untrained']"
           for f in ("container_light", "deit_tiny")},
        **{f"ink_{f}_{s}": f"on_ink['{f}', '{s}'] - uniform['{f}']" for f in ("container_light", "deit_tiny")
           for s in ("DINO", "supervised", "untrained")},
        **{f"teacher_{f}_{k}": f"histories['{f}'][-1]['teacher_{k}'] / math.log(task_options['out_dim'])"
           for f in ("container_light", "deit_tiny") for k in ("entropy", "mean_entropy")},
    },
}

#: The cell appended to every executed notebook: the measures and the kernel's CPU time, as one line.
PROBE = """
import json as _json, math as _math, resource as _resource
def _number(value):
    try:
        value = value.item() if hasattr(value, "item") else value
        return value if isinstance(value, (int, float)) else float(value)
    except Exception as err:  # a name the notebook never reached: the cell that defines it failed
        return f"error: {type(err).__name__}: {err}"
_values = {}
for _name, _expr in %r.items():
    try:
        _values[_name] = _number(eval(_expr))
    except Exception as _err:
        _values[_name] = f"error: {type(_err).__name__}: {_err}"
_usage = [_resource.getrusage(_who) for _who in (_resource.RUSAGE_SELF, _resource.RUSAGE_CHILDREN)]
print("@@measures@@" + _json.dumps({"values": _values,
      "cpu_s": sum(u.ru_utime + u.ru_stime for u in _usage)}))
"""

ANSI = re.compile(r"\x1b\[[0-9;]*m")
_write = threading.Lock()


def failures(nb) -> list[dict]:
    """The cells that raised: their index, the error and the line it points at."""
    found = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") != "error":
                continue
            lines = [ANSI.sub("", line) for line in output.get("traceback", [])]
            arrow = [row.strip() for text in lines for row in text.splitlines()
                     if row.lstrip().startswith("---->")]
            found.append({"cell": index, "error": f"{output['ename']}: {output['evalue']}"[:300],
                          "line": arrow[-1][5:].strip() if arrow else ""})
    return found


def run_notebook(path: Path, seed: int, timeout: int = 1800) -> dict:
    """Execute ``path`` for ``seed`` in the quick profile; return its row (see the module docstring)."""
    import nbformat
    from nbclient import NotebookClient

    prefix = path.name[:2]
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE % (MEASURES.get(prefix, {}),)))
    env = {**os.environ, "UNIFIEDCTX_PROFILE": "quick", "UNIFIEDCTX_SEED": str(seed), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    wall = time.perf_counter() - start
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("name") == "stdout")
    probe = {"values": {}, "cpu_s": None}
    if "@@measures@@" in text:
        probe = json.loads(text.split("@@measures@@", 1)[1])
    return {"notebook": prefix, "name": path.stem, "seed": seed, "wall_s": round(wall, 1),
            "cpu_s": None if probe["cpu_s"] is None else round(probe["cpu_s"], 1),
            "failed": failures(nb), "values": probe["values"],
            "load": round(os.getloadavg()[0], 1)}


def run_seed(paths: list[Path], seed: int, fresh: bool, out: Path | None) -> list[dict]:
    """The notebooks of one seed, in order; each row printed and appended to ``out`` as it ends."""
    if fresh:
        shutil.rmtree(ROOT / "runs" / "quick" / f"seed{seed}", ignore_errors=True)
    rows = []
    for path in paths:
        row = run_notebook(path, seed)
        rows.append(row)
        failed = "; ".join(f"cell {f['cell']}: {f['line'] or f['error']}" for f in row["failed"])
        print(f"{row['name']:28s} seed {seed}: {row['wall_s']:6.1f} s wall, {row['cpu_s']} s CPU "
              f"(load {row['load']}); {failed or 'all claims hold'}", flush=True)
        if out is not None:
            with _write:
                old = json.loads(out.read_text()) if out.exists() else []
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(old + [row], indent=1) + "\n")
                os.replace(tmp, out)
    return rows


def table(rows: list[dict], markdown: bool = False) -> str:
    """For each notebook and measure: the value per seed, then mean, spread (sample sd), min and max.
    The last row of a seed wins (a re-run replaces an earlier one)."""
    latest = {(r["notebook"], r["seed"]): r for r in rows}
    lines = []
    for prefix in sorted({nb for nb, _ in latest}):
        seeds = sorted(s for nb, s in latest if nb == prefix)
        chosen = [latest[prefix, s] for s in seeds]
        names = list(dict.fromkeys(k for r in chosen for k in r["values"]))
        head = ["measure", *[f"seed {s}" for s in seeds], "mean", "sd", "min", "max"]
        lines.append(f"\nnotebook {prefix} ({chosen[0]['name']})")
        body = []
        for name in [*names, "wall_s", "cpu_s"]:
            values = [r["values"].get(name) if name in names else r.get(name) for r in chosen]
            numbers = [v for v in values if isinstance(v, (int, float))]
            cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
            spread = f"{statistics.stdev(numbers):.3f}" if len(numbers) > 1 else "-"
            stats = ([f"{statistics.mean(numbers):.3f}", spread, f"{min(numbers):.3f}", f"{max(numbers):.3f}"]
                     if numbers else ["-"] * 4)
            body.append([name, *cells, *stats])
        failed = [f"seed {r['seed']}: cell {f['cell']} {f['line'] or f['error']}"
                  for r in chosen for f in r["failed"]]
        if markdown:
            lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in body]
        else:
            widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
            lines += ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths))) for row in [head, *body]]
        lines += [f"failed: {f}" for f in failed] or ["failed: none"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("select", nargs="*", help="notebook prefixes, run in this order for each seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at the same time (each one process)")
    parser.add_argument("--fresh", action="store_true", help="remove each seed's cached runs first")
    parser.add_argument("--json", type=Path, default=None, help="append the rows to this JSON file")
    parser.add_argument("--table", type=Path, nargs="+", default=None, help="print the table of saved rows")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.table:
        print(table([r for path in args.table for r in json.loads(path.read_text())], args.markdown))
        return
    paths = notebooks(args.select)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda s: run_seed(paths, s, args.fresh, args.json), args.seeds))
    print(table([r for rows in results for r in rows], args.markdown))


if __name__ == "__main__":
    main()
