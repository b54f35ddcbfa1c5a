"""Execute the course end to end and write rendered copies (HTML with figures).

    python -m unifiedctx.course --out build/course            # every notebook, current profile
    python -m unifiedctx.course --profile quick 01 03         # just notebooks 01 and 03

Each notebook in ``notebooks/`` runs top to bottom in a fresh kernel; its executed copy is
written as ``<name>.ipynb`` and ``<name>.html`` under ``--out``, and every explorer it displays
as a self-contained page under ``--out/explorers/`` (the HTML copy shows it in an ``<iframe>``).
The executed notebook records the profile it ran in (``metadata.unifiedctx.profile``), so such a
folder is what ``python -m unifiedctx.site --executed`` renders. The committed notebooks are never
modified. A notebook that fails stops with the cell's error and a non-zero exit.

Explorers stay live without a kernel: while a notebook executes here, the environment variable
:data:`STATIC_ENV` names the explorers' folder; every :class:`~unifiedctx.widgets.AffinityExplorer`
that the notebook displays then also exports itself there (``AffinityExplorer.to_html``: every map
precomputed, no kernel, no network) and adds an ``<iframe>`` of that page as the ``text/html`` of
its output, beside the widget's own view.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The environment variable that asks displayed explorers to export themselves (see above).
STATIC_ENV = "UNIFIEDCTX_STATIC_EXPLORERS"
#: Folder name of the exported explorers, beside the executed notebooks (and in the site).
EXPLORERS = "explorers"
#: The output mime type of a live Jupyter widget: a view of kernel state, empty without a kernel.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def notebooks(selection: list[str] | None = None, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The course's notebooks in order; ``selection`` keeps those whose name starts with one of
    its entries (``["01", "03"]``). An entry that matches nothing is a ``ValueError``."""
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found
    chosen = []
    for prefix in selection:
        match = [p for p in found if p.name.startswith(prefix)]
        if not match:
            names = ", ".join(p.name for p in found) or f"no notebook at all in {folder}"
            raise ValueError(f"no notebook starts with {prefix!r}; the course has: {names}")
        chosen += [p for p in match if p not in chosen]
    return chosen


def static_outputs(nb):
    """A copy of the executed notebook ``nb`` for a page without a kernel: the widget views (and
    the saved widget state) are dropped, so each output shows what it carries besides, the
    exported explorer's ``<iframe>`` (``text/html``) or its text. Left in, an HTML renderer would
    draw an empty box that tries to load the widget manager from a CDN."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    return nb


def execute(path: Path, out: Path, timeout: int = 1800) -> float:
    """Run one notebook in a fresh kernel (cwd: its folder) in the current profile, with its
    explorers exported to ``out/explorers``; write ``.ipynb`` (recording the profile) and
    ``.html`` copies to ``out``; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from .profiles import ENV_VAR, current

    profile = current().name  # what the kernel resolves too: it gets the same environment, pinned
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, ENV_VAR: profile, STATIC_ENV: str((out / EXPLORERS).resolve())}
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    seconds = time.perf_counter() - start
    nb.metadata["unifiedctx"] = {"profile": profile}
    nbformat.write(nb, out / path.name)
    html, _ = HTMLExporter().from_notebook_node(static_outputs(nb))
    (out / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Command line: execute the course and report each notebook's run time."""
    parser = argparse.ArgumentParser(prog="python -m unifiedctx.course", description=__doc__.split("\n")[0])
    parser.add_argument("select", nargs="*", help="notebook name prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--out", default="build/course", help="folder for the executed copies")
    parser.add_argument("--profile", choices=("quick", "full"), help="sets UNIFIEDCTX_PROFILE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["UNIFIEDCTX_PROFILE"] = args.profile
    try:
        chosen = notebooks(args.select)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out)
    for path in chosen:
        print(f"running {path.name} ...", flush=True)
        seconds = execute(path, out, args.timeout)
        print(f"  {seconds:6.1f} s -> {out / path.with_suffix('.html').name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
