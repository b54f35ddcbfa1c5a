"""The course as a static website: executed notebooks rendered by MkDocs + mkdocs-jupyter.

    python -m unifiedctx.site --out build/site               # execute the course, then render it
    python -m unifiedctx.site --executed build/course         # render copies executed already

Why MkDocs with the mkdocs-jupyter plugin: it renders executed ``.ipynb`` files as they are
(figures, tables, printed output) with nbconvert, needs nothing but pip (no Node, no pandoc), and
gives a searchable site with one page per notebook. The pages are built from copies: the
committed notebooks are never modified.

Explorers stay live: while the course executes for the site, ``UNIFIEDCTX_STATIC_EXPLORERS`` names
a folder; every :class:`~unifiedctx.widgets.AffinityExplorer` that a notebook displays then also
exports itself there as a self-contained page (``AffinityExplorer.to_html``: every map
precomputed, no kernel, no network) and shows it in an ``<iframe>`` in the static output. The
folder is copied into the site beside the pages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .course import NOTEBOOK_DIR, execute, notebooks

#: The environment variable that asks displayed explorers to export themselves (see above).
STATIC_ENV = "UNIFIEDCTX_STATIC_EXPLORERS"
#: Folder name of the exported explorers, inside the site's source and output folders.
EXPLORERS = "explorers"

INDEX = """# unifiedctx: the course

Convolution, self-attention and MLP-Mixer are one operator: every token takes a weighted sum of
the other tokens' values through an affinity matrix, `Y = project(A V)`. These pages are the
course's notebooks, executed in the **{profile}** profile. Every explorer in them is a
self-contained page: click its image to move the query.

{toc}
"""


def title_of(path: Path) -> str:
    """The first Markdown heading of a notebook, else its file name."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def write_sources(executed: list[Path], src: Path, explorers: Path | None, profile: str) -> Path:
    """Lay out MkDocs' source folder ``src``: the executed notebooks, an index page, the exported
    explorers; return the ``mkdocs.yml`` written next to it."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    nav = [{"Home": "index.md"}]
    toc = []
    for path in executed:
        shutil.copy2(path, src / path.name)
        title = title_of(path)
        nav.append({title: path.name})
        toc.append(f"- [{title}]({path.name})")
    (src / "index.md").write_text(INDEX.format(profile=profile, toc="\n".join(toc)), encoding="utf-8")
    if explorers is not None and explorers.is_dir():
        shutil.copytree(explorers, src / EXPLORERS)
    config = {
        "site_name": "unifiedctx course",
        "docs_dir": str(src.resolve()),
        "use_directory_urls": False,
        "theme": {"name": "mkdocs", "highlightjs": False},
        "nav": nav,
        "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True}}],
    }
    config_path = src.parent / "mkdocs.yml"
    config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is valid YAML
    return config_path


def render(config_path: Path, out: Path) -> None:
    """``mkdocs build`` of ``config_path`` into ``out`` (a clear error when mkdocs is missing)."""
    if shutil.which("mkdocs") is None and not _module_available("mkdocs"):
        raise RuntimeError("mkdocs is not installed: pip install mkdocs mkdocs-jupyter (in the dev extra)")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--quiet", "--clean", "-f", str(config_path),
           "-d", str(out.resolve())]
    # mkdocs-jupyter caches rendered pages in ./.cache: keep that inside the build folder
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=config_path.parent)
    if result.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{result.stderr.strip()}")


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def build(out: Path, executed_dir: Path | None = None, selection: list[str] | None = None,
          work: Path = Path("build/site-src"), timeout: int = 1800) -> Path:
    """Build the site into ``out``: execute the course (or take ``executed_dir``'s copies), then
    render it; return ``out / "index.html"``."""
    work = Path(work)
    explorers = work.parent / f"{work.name}-{EXPLORERS}"
    if executed_dir is None:
        executed_dir = work.parent / f"{work.name}-executed"
        if explorers.exists():
            shutil.rmtree(explorers)
        explorers.mkdir(parents=True)
        previous = os.environ.get(STATIC_ENV)
        os.environ[STATIC_ENV] = str(explorers.resolve())
        try:
            for path in notebooks(selection, NOTEBOOK_DIR):
                print(f"running {path.name} ...", flush=True)
                seconds = execute(path, executed_dir, timeout)
                print(f"  {seconds:6.1f} s", flush=True)
        finally:
            if previous is None:
                os.environ.pop(STATIC_ENV, None)
            else:
                os.environ[STATIC_ENV] = previous
    executed = notebooks(selection, Path(executed_dir))
    profile = os.environ.get("UNIFIEDCTX_PROFILE") or "default"
    config_path = write_sources(executed, work / "docs", explorers, profile)
    render(config_path, Path(out))
    return Path(out) / "index.html"


def main(argv: list[str] | None = None) -> int:
    """Command line: build the course's static site."""
    parser = argparse.ArgumentParser(prog="python -m unifiedctx.site", description=__doc__.split("\n")[0])
    parser.add_argument("select", nargs="*", help="notebook name prefixes, e.g. 01 05 (default: all)")
    parser.add_argument("--out", default="build/site", help="the site's folder (build/site)")
    parser.add_argument("--executed", default=None, help="take executed copies from this folder instead")
    parser.add_argument("--profile", choices=("quick", "full"), help="sets UNIFIEDCTX_PROFILE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["UNIFIEDCTX_PROFILE"] = args.profile
    try:
        index = build(Path(args.out), Path(args.executed) if args.executed else None, args.select or None,
                      timeout=args.timeout)
    except (ValueError, RuntimeError) as err:
        print(f"unifiedctx.site: error: {err}", file=sys.stderr)
        return 2
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
