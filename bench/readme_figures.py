"""Copy the README's figures out of the executed course, so they are what the course shows.

    python -m unifiedctx.course --out build/course       # execute every notebook (make course)
    python bench/readme_figures.py                        # build/course/*.ipynb -> docs/figures/

A code cell whose figure belongs in the README carries the tag ``readme:<name>.png`` in its
metadata (JupyterLab: the property inspector's "Cell Tags"). This script writes the cell's last
PNG output to ``docs/figures/<name>.png``. A tagged cell without a PNG output, or a tag in the
committed notebooks that no executed copy has, is an error: the README must not show a stale
figure while claiming it is the course's.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "readme:"


def tagged_figures(notebook: Path) -> dict[str, bytes]:
    """``{file name: PNG bytes}`` of every ``readme:<name>`` tagged cell of an executed notebook."""
    found = {}
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        names = [t[len(TAG):] for t in cell.get("metadata", {}).get("tags", []) if t.startswith(TAG)]
        if not names:
            continue
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if not pngs:
            raise SystemExit(f"{notebook.name}: the cell tagged {names} has no figure output "
                             "(was the notebook executed? python -m unifiedctx.course)")
        for name in names:
            found[name] = base64.b64decode(pngs[-1])
    return found


def main(argv=None) -> int:
    """Command line: write every tagged figure of the executed course into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--course", type=Path, default=ROOT / "build" / "course",
                        help="folder of the executed notebooks (build/course)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="docs/figures")
    args = parser.parse_args(argv)
    wanted = {}
    for committed in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(committed.read_text(encoding="utf-8"))["cells"]:
            for tag in cell.get("metadata", {}).get("tags", []):
                if tag.startswith(TAG):
                    wanted[tag[len(TAG):]] = committed.name
    args.out.mkdir(parents=True, exist_ok=True)
    written = set()
    for name, notebook in sorted(wanted.items()):
        executed = args.course / notebook
        if not executed.exists():
            raise SystemExit(f"{executed} is missing: execute the course first (python -m unifiedctx.course)")
        figures = tagged_figures(executed)
        if name not in figures:
            raise SystemExit(f"{executed} has no cell tagged readme:{name}: execute the course again")
        (args.out / name).write_bytes(figures[name])
        written.add(name)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
