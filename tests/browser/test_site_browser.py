"""The course's static site (``python -m unifiedctx.site``) in real Chromium, served on 127.0.0.1.

Which site: ``UNIFIEDCTX_SITE`` names a built one (``make test`` builds notebooks 01 and 05 of the
course in the quick profile with ``make site-quick`` after the notebooks ran, so 05 loads the runs
that 04 cached, and browses it with this file); without it, a small course is built here with the
real generator: a notebook with math and an explorer on an untrained nano model, and one whose file
name is markup (``02_<img src=x onerror=alert(1)>``, no heading, so it is its title too).

Every page is opened with every request logged: nothing may come from outside the site, no console
error, no page error, no dialog. Every explorer's iframe must be live (a click on its image moves the
query), its own page linked beside it; MathJax must have typeset the page's math (no ``$...$`` left
in the text); the header must be one short line that covers no heading, also at a narrow window;
the index must state the profile the notebooks were executed in. The notebook 05 page (or the
fixture's) is saved as ``artifacts/site_<page>.png`` with its explorer in view.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
HOSTILE = "02_<img src=x onerror=alert(1)>"
HEADER_PX = 64  # Material's header is 48 px: one line, whatever the titles

EXPLORER_CELL = """import torch
from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer

torch.manual_seed(0)
images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
models = {"container": create_model("container_nano").eval(), "deit": create_model("deit_tiny_nano").eval()}
AffinityExplorer(models, images, head=-1)"""


def fixture_course(folder: Path) -> Path:
    """Two small notebooks, as the course's are named: math and an explorer; a hostile name."""
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(
        "# 01 · A site fixture: the explorer on untrained nano models\n\n"
        "The affinity $A$ in $Y = \\mathrm{project}(A V)$, with $A_m \\in \\mathbb{R}^{N \\times N}$:\n\n"
        "$$A = \\operatorname{softmax}\\left(\\frac{Q K^\\top}{\\sqrt{d}}\\right)$$\n\n"
        "Code keeps its dollars: `print('$x$')`."),
        nbformat.v4.new_code_cell(EXPLORER_CELL)]
    nbformat.write(nb, folder / "01_site_fixture.ipynb")
    hostile = nbformat.v4.new_notebook()
    hostile.metadata["kernelspec"] = nb.metadata["kernelspec"]
    hostile.cells = [nbformat.v4.new_code_cell("print('a notebook without a heading')")]
    nbformat.write(hostile, folder / f"{HOSTILE}.ipynb")
    return folder


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    """The site under test: ``UNIFIEDCTX_SITE``, else the fixture course built here."""
    given = os.environ.get("UNIFIEDCTX_SITE")
    if given:
        site = Path(given).resolve()
        assert (site / "index.html").is_file(), f"UNIFIEDCTX_SITE={given} holds no built site"
        return site
    from unifiedctx import course, site

    base = tmp_path_factory.mktemp("site")
    source = fixture_course(base / "notebooks")
    for path in course.notebooks(None, source):
        course.execute(path, base / "executed", timeout=300)
    return site.build(base / "site", executed_dir=base / "executed").parent


class Server:
    """The site folder over HTTP on 127.0.0.1 (a free port), as a reader would get it."""

    def __init__(self, root: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(built_site):
    server = Server(built_site)
    yield server
    server.close()


def notebook_pages(site: Path) -> list[str]:
    """The pages made from notebooks: the site keeps each page's notebook beside it."""
    return sorted(p.with_suffix(".html").name for p in site.glob("[0-9][0-9]_*.ipynb"))


class Visit:
    """One page in Chromium: every request outside the site aborted and kept, every error kept."""

    def __init__(self, page, server: Server, name: str):
        self.page, self.outside, self.errors = page, [], []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))
        page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        def route(r):
            url = r.request.url
            if url.startswith(server.url) or url.startswith(("data:", "blob:", "about:")):
                r.continue_()
            else:
                self.outside.append(url)
                r.abort()

        page.route("**/*", route)
        page.goto(server.url + name)
        page.wait_for_load_state("load")

    def typeset(self) -> int:
        """Wait for MathJax to finish this page; the number of formulas it typeset (0: none to do)."""
        return self.page.evaluate("""() => new Promise((done) => window.MathJax
            ? MathJax.Hub.Queue(() => done(document.querySelectorAll('.MathJax').length)) : done(0))""")


@pytest.fixture
def browser(chromium_page):
    """A fresh context of the module's Chromium for each test (its own listeners and routes)."""
    context = chromium_page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()


def test_every_page_loads_only_from_the_site_and_logs_no_error(browser, served, built_site):
    names = ["index.html", *notebook_pages(built_site),
             *sorted(f"explorers/{p.name}" for p in (built_site / "explorers").glob("*.html"))]
    assert len(names) >= 3
    for name in names:
        visit = Visit(browser.new_page(), served, name)
        visit.typeset()
        visit.page.wait_for_timeout(300)
        assert visit.outside == [], (name, visit.outside)
        assert visit.errors == [], (name, visit.errors)
        visit.page.close()


def test_math_is_typeset_and_no_dollar_is_left(browser, served, built_site):
    typeset = {}
    for name in notebook_pages(built_site):
        visit = Visit(browser.new_page(), served, name)
        typeset[name] = visit.typeset()
        prose = visit.page.locator(".jp-RenderedMarkdown").evaluate_all(
            "(ns) => ns.map((n) => { const c = n.cloneNode(true); c.querySelectorAll('code, pre, script')"
            ".forEach((x) => x.remove()); return c.innerText; }).join('\\n')")
        left = re.findall(r"\$[^$\n]{1,60}\$", prose)
        assert left == [], (name, left[:5])
        visit.page.close()
    assert max(typeset.values()) > 0, typeset  # the course has math: some page typeset it


def test_each_explorer_is_live_in_its_page_and_linked(browser, served, built_site):
    frames = 0
    for name in notebook_pages(built_site):
        visit = Visit(browser.new_page(), served, name)
        page = visit.page
        srcs = page.locator("iframe").evaluate_all("(fs) => fs.map((f) => f.getAttribute('src'))")
        assert page.locator("[data-jupyter-widgets-cdn], .jupyter-widgets").count() == 0
        for k, src in enumerate(srcs):
            assert re.fullmatch(r"explorers/explorer-\d+\.html", src), src
            assert page.locator(f'a[href="{src}"]').count() == 1, f"{name}: no link to {src}"
            frame_el = page.locator("iframe").nth(k)
            frame_el.scroll_into_view_if_needed()
            frame = page.frame_locator("iframe").nth(k)
            root = frame.locator(".ucx-explorer")
            root.locator("canvas.ucx-image").wait_for(timeout=30_000)
            page.wait_for_function(
                "(f) => f.contentDocument.querySelector('.ucx-explorer')?.dataset.ready === '1'",
                arg=frame_el.element_handle(), timeout=30_000)
            image = root.locator("canvas.ucx-image")
            for fx, fy in ((0.98, 0.98), (0.02, 0.02)):  # the far corner, then the first token
                before = root.get_attribute("data-query"), root.get_attribute("data-map-sum")
                box = image.bounding_box()
                page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
                if fx < 0.5:
                    page.wait_for_function("(f) => f.contentDocument.querySelector('.ucx-explorer')"
                                           ".dataset.query === '0,0'", arg=frame_el.element_handle())
                else:
                    page.wait_for_function("""(f) => { const [r, c] = f.contentDocument
                        .querySelector('.ucx-explorer').dataset.query.split(',').map(Number);
                        return r > 0 && c > 0; }""", arg=frame_el.element_handle())
                after = root.get_attribute("data-query"), root.get_attribute("data-map-sum")
                assert after[0] != before[0] and after[1] != before[1], (before, after)  # the maps followed
            frames += 1
            if frames == 1:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"site_{Path(name).stem}.png"))
        assert visit.outside == [] and visit.errors == [], (name, visit.outside, visit.errors)
        page.close()
    assert frames >= 1, "no explorer in the site: the quick site must show one"


@pytest.mark.parametrize("width", [1400, 800])
def test_the_header_is_one_short_line_and_covers_no_heading(browser, served, built_site, width):
    for name in ["index.html", *notebook_pages(built_site)]:
        page = browser.new_page()
        page.set_viewport_size({"width": width, "height": 900})
        Visit(page, served, name)
        header = page.locator("header").first.bounding_box()
        assert header["height"] <= HEADER_PX, (name, width, header)
        heading = page.locator("article h1").first
        box = heading.bounding_box()
        assert box["y"] >= header["y"] + header["height"], (name, width, box, header)
        # what is drawn at the heading's first line is the heading, not the navigation
        hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.closest('h1') !== null",
                            [box["x"] + 5, box["y"] + min(box["height"] / 2, 12)])
        assert hit, (name, width)
        page.close()


def test_the_index_states_the_profile_and_names_stay_text(browser, served, built_site):
    recorded = {json.loads(p.read_text())["metadata"].get("unifiedctx", {}).get("profile")
                for p in built_site.glob("[0-9][0-9]_*.ipynb")}
    assert len(recorded) == 1 and None not in recorded, recorded
    want = os.environ.get("UNIFIEDCTX_PROFILE") or __import__("unifiedctx.profiles").profiles.current().name
    assert recorded == {want}
    visit = Visit(browser.new_page(), served, "index.html")
    page = visit.page
    text = page.locator("article").inner_text()
    assert f"executed in the {want} profile" in " ".join(text.split())
    assert page.locator("article strong", has_text=want).count() >= 1
    links = page.locator("article ol a").evaluate_all("(as) => as.map((a) => a.getAttribute('href'))")
    assert links == notebook_pages(built_site)
    if not os.environ.get("UNIFIEDCTX_SITE"):
        assert HOSTILE in text  # shown as the text it is, in the index, the navigation and the title
        assert HOSTILE in Visit(browser.new_page(), served, "02_-img-src-x-onerror-alert-1.html").page.title()
        assert HOSTILE in page.locator("nav.md-nav--primary").first.text_content()
        assert page.locator("img[src='x']").count() == 0
    assert visit.errors == [], visit.errors
    page.close()
