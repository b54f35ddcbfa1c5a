"""The course as a static website: executed notebooks rendered by MkDocs + mkdocs-jupyter.

    python -m unifiedctx.site --out build/site                 # execute the course, then render it
    python -m unifiedctx.site --profile quick 01 05 --out s    # two notebooks, quick profile
    python -m unifiedctx.site --executed build/course          # render copies executed already

The site is self-contained: it loads nothing from outside its folder (no CDN, no web font), so it
works offline, from a web server or straight from disk. Each notebook becomes one page. An
explorer that a notebook displays is live in its page: :func:`~unifiedctx.course.execute`
exports it as a self-contained page (every map precomputed, no kernel) into ``explorers/``, the
page shows it in an ``<iframe>`` with a link to open it alone, and the widget's own view, empty
without a kernel, is dropped (:func:`~unifiedctx.course.static_outputs`). Math is typeset in the
browser by the MathJax 2.7 copy that the ``jupyter-server-mathjax`` package ships, copied into
``assets/mathjax/``. The index states the profile that the notebooks were executed in (recorded
in each executed notebook).

Why MkDocs with mkdocs-jupyter, measured against Sphinx + myst-nb (Jupyter Book 1's engine) on
notebooks 01 and 05 (see the commit that chose it): both render the executed ``.ipynb`` as it is,
both can drop the widget view and load MathJax from a local copy; MkDocs needs fewer packages, its
pages keep their figures inline (one file a page) and Material's header is one line.

The builder owns its output folder the way a run owns its run folder
(:mod:`unifiedctx.train.rundir`): ``--out`` must be empty, new, or a site built here (it holds the
marker file :data:`MARKER`, which lists the files the builder wrote); anything else is refused
before any notebook runs. A rebuild replaces the files the marker lists and nothing else: a file
someone added to the folder stays, and one that a new page would overwrite stops the build. The
pages are built in a temporary folder beside ``--out`` and moved in only when the build succeeded.
Names that go into pages are escaped: the titles are HTML-escaped and each page takes a file name
made of ``[A-Za-z0-9_.-]`` from its notebook's name.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .course import EXPLORERS, NOTEBOOK_DIR, STATIC_ENV, execute, notebooks, static_outputs
from .validation import check_path

__all__ = ["EXPLORERS", "MARKER", "STATIC_ENV", "SiteFolder", "build", "main", "page_name", "title_of"]

#: The file that marks a folder as a site built here; it lists the files the builder wrote.
MARKER = ".unifiedctx-site.json"
#: Where the MathJax copy goes inside the site, and how a page loads it (MathJax 2 config names).
MATHJAX = "assets/mathjax"
MATHJAX_URL = f"{MATHJAX}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/unifiedctx"
#: MathJax's local configuration (``config/local/unifiedctx.js``): always the HTML-CSS output (not
#: the browser's MathML, whose variant fonts the package does not ship) with the STIX-Web fonts
#: that it ships (the default, TeX fonts, it does not).
MATHJAX_LOCAL = """MathJax.Hub.Config({MMLorHTML: {prefer: "HTML"}, menuSettings: {assistiveMML: false},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/unifiedctx.js");
"""
#: How the exported explorer's iframe appears in an executed notebook's ``text/html`` output.
_FRAME = re.compile(r'<iframe src="(' + EXPLORERS + r'/explorer-\d+\.html)"')

#: Material's page template with one block changed: its ``<title>`` runs the title through
#: ``striptags``, which un-escapes it (``&lt;/title&gt;`` would become markup); the titles the
#: builder gives are escaped already, so they go in as they are.
THEME_OVERRIDE = """{% extends "base.html" %}
{% block htmltitle %}<title>{% if page.title and not page.is_homepage %}{{ page.title }} - {% endif %}\
{{ config.site_name }}</title>{% endblock %}
"""

#: The site's own stylesheet: a wider page than Material's 61rem, so that an explorer with its
#: depth panel fits beside the navigation on a laptop screen.
STYLESHEET = ".md-grid { max-width: 100rem; }\n"
STYLESHEET_PATH = "assets/stylesheets/unifiedctx.css"

INDEX = """# unifiedctx: the course

Convolution, self-attention and MLP-Mixer are one operator: every token takes a weighted sum of
the other tokens' values through an affinity matrix, `Y = project(A V)`. These pages are the
course's notebooks, {executed}. Every explorer in them is live: click its image to move the query,
or open it on its own page (every map is precomputed in it; it needs no kernel and no network).

<ol class="ucx-course">
{toc}
</ol>
"""


def title_of(path: Path) -> str:
    """The first Markdown heading of a notebook, else its file name (as text: not escaped)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return Path(path).stem


def page_name(path: Path) -> str:
    """The page's source name for the notebook ``path``: its stem with every run of characters
    outside ``[A-Za-z0-9_.-]`` made one ``-`` (so no name can be markup or a URL's syntax)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-.") or "notebook"
    return f"{stem}.ipynb"


def _profile_sentence(profiles: dict[str, str | None]) -> str:
    """How the index states the profile(s) the notebooks were executed in."""
    known = {p for p in profiles.values() if p}
    if len(known) == 1 and None not in profiles.values():
        return f"executed in the **{known.pop()}** profile"
    shown = ", ".join(f"{html.escape(name)}: {html.escape(p or 'not recorded')}"
                      for name, p in profiles.items())
    return f"executed in these profiles ({shown})"


def _heading_as_text(line: str) -> str:
    """A Markdown heading line with ``<`` and ``>`` outside code spans escaped: a title is text
    on the page as in the navigation (``# 01 <img src=x onerror=...>`` shows those characters)."""
    parts = re.split(r"(`+[^`]*`+)", line)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def _live_explorers(nb, explorers: Path, name: str):
    """``static_outputs(nb)`` with a link under each explorer's iframe to open its page alone and
    the headings as text; an iframe whose page is not in ``explorers`` is a ``ValueError`` (the
    site would show a hole)."""
    nb = static_outputs(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = "\n".join(_heading_as_text(line) if line.startswith("#") else line
                                    for line in cell.source.split("\n"))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            frame = "".join(data.get("text/html", ""))
            pages = _FRAME.findall(frame)
            for src in pages:
                if not (explorers.parent / src).is_file():
                    raise ValueError(f"executed notebook {name} shows the explorer page {src}, which is "
                                     f"not in {explorers}: the notebook and its explorers must be "
                                     "executed together (python -m unifiedctx.course)")
            if pages and 'class="ucx-open"' not in frame:  # a site's own copy, rendered again: as it is
                links = "".join(f'<p class="ucx-open"><a href="{html.escape(src, quote=True)}" '
                                'target="_blank">Open this explorer on its own page</a> (every map '
                                "precomputed: it needs no kernel and no network)</p>" for src in pages)
                data["text/html"] = frame + links
    return nb


def write_sources(executed: list[Path], docs: Path, explorers: Path | None) -> Path:
    """Lay out MkDocs' source folder ``docs`` (new): the pages' notebooks (widget views dropped,
    explorer links added), an index page, the exported explorers and MathJax; return the
    ``mkdocs.yml`` written beside it (absolute paths only)."""
    import nbformat

    docs.mkdir(parents=True)
    explorers = explorers if explorers is not None and explorers.is_dir() else docs / EXPLORERS
    nav, toc, profiles, seen = [{"Home": "index.md"}], [], {}, {}
    for path in executed:
        name = page_name(path)
        if name in seen:
            raise ValueError(f"notebooks {seen[name].name!r} and {path.name!r} would both become the page "
                             f"{name}: rename one of them")
        seen[name] = path
        nb = nbformat.read(path, as_version=4)
        profiles[path.name] = nb.metadata.get("unifiedctx", {}).get("profile")
        nbformat.write(_live_explorers(nb, explorers, path.name), docs / name)
        title = html.escape(title_of(path), quote=True)
        nav.append({title: name})
        toc.append(f'<li><a href="{name[:-len(".ipynb")]}.html">{title}</a></li>')
    index = INDEX.format(executed=_profile_sentence(profiles), toc="\n".join(toc))
    (docs / "index.md").write_text(index, encoding="utf-8")
    if explorers != docs / EXPLORERS:
        shutil.copytree(explorers, docs / EXPLORERS)
    (docs / STYLESHEET_PATH).parent.mkdir(parents=True)
    (docs / STYLESHEET_PATH).write_text(STYLESHEET, encoding="utf-8")
    shutil.copytree(_mathjax_folder(), docs / MATHJAX)
    (docs / MATHJAX / "config" / "local").mkdir(parents=True, exist_ok=True)
    (docs / MATHJAX / "config" / "local" / "unifiedctx.js").write_text(MATHJAX_LOCAL, encoding="utf-8")
    overrides = docs.parent / "overrides"
    overrides.mkdir()
    (overrides / "main.html").write_text(THEME_OVERRIDE, encoding="utf-8")
    config = {
        "site_name": "unifiedctx course",
        "docs_dir": str(docs.resolve()),
        "use_directory_urls": False,
        # no web font (Material's default loads one from a CDN); the header is one line
        "theme": {"name": "material", "font": False, "features": ["toc.integrate"],
                  "custom_dir": str(overrides.resolve())},
        "nav": nav,
        "extra_css": [STYLESHEET_PATH],
        # no search plugin: its web worker cannot start on a page opened from disk
        "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True, "ignore_h1_titles": True,
                                        "custom_mathjax_url": MATHJAX_URL, "cache": False}}],
    }
    config_path = docs.parent / "mkdocs.yml"
    config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is valid YAML
    return config_path.resolve()


def _mathjax_folder() -> Path:
    """MathJax 2.7 as the ``jupyter-server-mathjax`` package ships it (a clear error without it)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise RuntimeError("jupyter-server-mathjax is not installed (it ships the site's offline MathJax): "
                           "pip install -e '.[dev]'") from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def render(config_path: Path, site_dir: Path) -> None:
    """``mkdocs build`` of ``config_path`` (absolute) into ``site_dir``; its folder is the cwd
    (mkdocs-jupyter's cache, if any, stays there). A clear error when mkdocs is missing."""
    if shutil.which("mkdocs") is None and not _module_available("mkdocs"):
        raise RuntimeError("mkdocs is not installed: pip install mkdocs mkdocs-jupyter (in the dev extra)")
    config_path = Path(config_path).resolve()
    cmd = [sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(config_path),
           "-d", str(Path(site_dir).resolve())]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=config_path.parent)
    if result.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{result.stderr.strip()}")


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class SiteFolder:
    """The site's folder ``out``, owned like a run folder: locked while the builder works in it,
    claimed only when empty, new, or marked as a site built here (:data:`MARKER`).

    ``claim()`` refuses anything else (``FileExistsError`` naming ``out`` and a few of its files);
    ``install(built)`` moves the files of the folder ``built`` in, after removing the files that
    the marker lists (the previous site) and nothing else, and writes the new marker. A file of
    ``built`` that would land on a file the marker does not list stops it before anything moved.
    """

    def __init__(self, out: str | os.PathLike):
        from .files import LOCK_NAME, FileLock  # (imports torch: only when a site is built)

        self.out = check_path("out", out, kind="folder", must_exist=False, what="site")
        self.lock = FileLock(self.out / LOCK_NAME, f"site folder {self.out}")
        self.owned: list[str] = []

    def claim(self) -> SiteFolder:
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            marker = self.out / MARKER
            names = sorted(p.name for p in self.out.iterdir() if p.name not in (MARKER, self.lock.path.name))
            if marker.is_file():
                self.owned = self._read_marker(marker)
            elif names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                raise FileExistsError(f"out {self.out} holds files that are not a site built here "
                                      f"({shown}) and no {MARKER}: the site builder owns its folder and "
                                      "never deletes another's files; choose an empty or new folder")
        except BaseException:
            self.lock.release()
            raise
        return self

    def _read_marker(self, marker: Path) -> list[str]:
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
            if not all(isinstance(f, str) for f in files):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise FileExistsError(f"out {self.out}: its {MARKER} is not a list of files this builder "
                                  "wrote; remove the folder yourself or choose another") from None
        root = self.out.resolve()
        return [f for f in files if (root / f).resolve().is_relative_to(root)]  # never outside out

    def install(self, built: Path) -> None:
        built = Path(built)
        new = sorted(str(p.relative_to(built)) for p in built.rglob("*") if not p.is_dir())
        owned = set(self.owned)
        blocked = [f for f in new if f not in owned and (self.out / f).exists()]
        if blocked:
            raise FileExistsError(f"out {self.out} holds {', '.join(blocked[:6])}, which the new "
                                  "site would overwrite and which the builder did not write; move it away")
        for name in self.owned:
            path = self.out / name
            if path.is_file() or path.is_symlink():
                path.unlink()
        for folder in sorted({(self.out / f).parent for f in self.owned}, key=lambda p: -len(p.parts)):
            if folder != self.out and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        for name in new:
            target = self.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built / name, target)
        marker = {"generator": "python -m unifiedctx.site", "files": new}
        tmp = self.out / f".{MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=1), encoding="utf-8")
        os.replace(tmp, self.out / MARKER)
        self.owned = new

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> SiteFolder:
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()


def build(out, executed_dir=None, selection: list[str] | None = None, timeout: int = 1800) -> Path:
    """Build the site into ``out``: execute the course (or take ``executed_dir``'s executed copies
    and its ``explorers/``), then render it; return ``out / "index.html"``.

    ``out`` must be empty, new, or a site built here (see :class:`SiteFolder`); it is checked
    before anything runs. ``selection``: notebook name prefixes (``["01", "05"]``), default all.
    """
    folder = SiteFolder(out)  # a bad --out is refused first
    if executed_dir is not None:
        executed_dir = check_path("executed", executed_dir, kind="folder", what="executed notebooks")
        found = notebooks(selection, executed_dir)
        if not found:
            raise ValueError(f"executed {executed_dir} holds no executed notebook "
                             "(NN_name.ipynb): run python -m unifiedctx.course --out FOLDER first")
    else:
        notebooks(selection, NOTEBOOK_DIR)  # a bad selection is refused before anything runs
    with folder:
        staging = tempfile.TemporaryDirectory(prefix=f".{folder.out.name}.building-", dir=folder.out.parent)
        with staging as tmp:
            work = Path(tmp)
            if executed_dir is None:
                executed_dir = work / "executed"
                for path in notebooks(selection, NOTEBOOK_DIR):
                    print(f"running {path.name} ...", flush=True)
                    seconds = execute(path, executed_dir, timeout)
                    print(f"  {seconds:6.1f} s", flush=True)
            executed = notebooks(selection, executed_dir)
            config_path = write_sources(executed, work / "docs", executed_dir / EXPLORERS)
            render(config_path, work / "site")
            folder.install(work / "site")
    return folder.out / "index.html"


def main(argv: list[str] | None = None) -> int:
    """Command line: build the course's static site."""
    parser = argparse.ArgumentParser(prog="python -m unifiedctx.site", description=__doc__.split("\n")[0])
    parser.add_argument("select", nargs="*", help="notebook name prefixes, e.g. 01 05 (default: all)")
    parser.add_argument("--out", default="build/site", help="the site's folder (build/site)")
    parser.add_argument("--executed", default=None,
                        help="render the executed notebooks of this folder (and its explorers/) instead")
    parser.add_argument("--profile", choices=("quick", "full"), help="sets UNIFIEDCTX_PROFILE")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["UNIFIEDCTX_PROFILE"] = args.profile
    try:
        index = build(args.out, args.executed, args.select or None, timeout=args.timeout)
    except (ValueError, TypeError, RuntimeError, OSError) as err:
        # the library names its arguments (out, executed); the command line names its options
        message = re.sub(r"(^|: )(out|executed)\b", r"\1--\2", str(err))
        print(f"unifiedctx.site: error: {message}", file=sys.stderr)
        return 2
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
