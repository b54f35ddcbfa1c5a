"""The static site: executed notebooks rendered by MkDocs, with exported explorers copied in.

The builder's own rules, without a browser (``tests/browser/test_site_browser.py`` opens the
pages): it builds from a relative ``--out`` anywhere, owns its output folder (refuses a foreign
one, keeps a user's file, replaces only what it wrote), refuses a missing or empty ``--executed``,
escapes every name that goes into pages, shows each explorer's iframe (not the widget view) with a
link to its page, loads nothing from outside the site and states the profile it was executed in.
"""

from __future__ import annotations

import json
import re
import shutil

import nbformat
import pytest

from unifiedctx import course, site
from unifiedctx.validation import PathNotFound

pytestmark = pytest.mark.skipif(not site._module_available("mkdocs"), reason="mkdocs is not installed")

WIDGET_VIEW = {"model_id": "abc", "version_major": 2, "version_minor": 0}
FRAME = '<iframe src="explorers/explorer-1.html" title="affinity explorer" style="width:100%"></iframe>'


def executed_notebook(path, title, printed, profile="quick", explorer=False):
    """An executed notebook as course.execute writes it: a heading, a printed output, the profile;
    with ``explorer``, an explorer's output (widget view + its iframe) and the saved widget state."""
    nb = nbformat.v4.new_notebook()
    heading = [f"# {title}\n\n"] if title else []
    outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    if explorer:
        outputs.append(nbformat.v4.new_output("display_data", data={
            course.WIDGET_VIEW: WIDGET_VIEW, "text/plain": "AffinityExplorer(...)", "text/html": FRAME}))
        state = {"state": {"abc": {"model_name": "AnyModel", "model_module": "anywidget", "state": {}}},
                 "version_major": 2, "version_minor": 0}  # the view's model, as nbclient saves it
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": state}
    nb.cells = [nbformat.v4.new_markdown_cell("".join(heading) + "The affinity $A$, and $$Y = A V$$."),
                nbformat.v4.new_code_cell("print('x')", outputs=outputs)]
    if profile:
        nb.metadata["unifiedctx"] = {"profile": profile}
    nbformat.write(nb, path)


def two_lessons(folder):
    """An executed folder: two lessons, the second with an explorer (and its page)."""
    folder.mkdir()
    executed_notebook(folder / "01_first.ipynb", "The first lesson", "printed-by-cell-one")
    executed_notebook(folder / "02_second.ipynb", "The second lesson", "printed-by-cell-two", explorer=True)
    (folder / course.EXPLORERS).mkdir()
    (folder / course.EXPLORERS / "explorer-1.html").write_text("<html>an explorer</html>")
    return folder


@pytest.fixture
def executed(tmp_path):
    return two_lessons(tmp_path / "executed")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One site of the two lessons, built once for the tests that only read it: its folder."""
    base = tmp_path_factory.mktemp("built")
    index = site.build(base / "out", executed_dir=two_lessons(base / "executed"))
    assert index == base / "out" / "index.html"
    return index.parent


def test_site_renders_every_executed_notebook_with_its_outputs_and_the_explorers(built):
    out, index = built, built / "index.html"
    assert index.is_file()
    home = index.read_text()
    assert "The first lesson" in home and "The second lesson" in home
    assert "printed-by-cell-one" in (out / "01_first.html").read_text()
    assert "printed-by-cell-two" in (out / "02_second.html").read_text()
    assert (out / course.EXPLORERS / "explorer-1.html").read_text() == "<html>an explorer</html>"
    nav = re.findall(r'class="md-nav__link[^"]*"[^>]*>\s*(?:<span[^>]*>)?\s*([^<]+?)\s*<', home)
    assert [n for n in nav if n in ("Home", "The first lesson", "The second lesson")][:3] == \
        ["Home", "The first lesson", "The second lesson"]


def test_a_relative_out_builds_from_any_working_folder(tmp_path, executed, monkeypatch):
    """The reported failure: a relative config path given to mkdocs run from another folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    index = site.build("build/site", executed_dir="../executed")
    assert index.resolve() == (elsewhere / "build" / "site" / "index.html").resolve() and index.is_file()
    assert sorted(p.name for p in (elsewhere / "build").iterdir()) == ["site"]  # no work folder left


def test_the_explorer_is_its_iframe_with_a_link_not_the_widget_view(built):
    out = built
    page = (out / "02_second.html").read_text()
    assert page.count('<iframe src="explorers/explorer-1.html"') == 1
    link = r'<a href="explorers/explorer-1\.html"[^>]*>Open this explorer on its own page</a>'
    assert re.search(link, page)
    for gone in ("widget-view+json", "html-manager", "widget-state+json", "AffinityExplorer(...)"):
        assert gone not in page, gone
    assert "widgets" not in json.loads((out / "02_second.ipynb").read_text())["metadata"]


def test_an_iframe_whose_page_is_missing_is_refused(tmp_path, executed):
    (executed / course.EXPLORERS / "explorer-1.html").unlink()
    with pytest.raises(ValueError, match=r"02_second.ipynb shows the explorer page explorers/explorer-1"):
        site.build(tmp_path / "out", executed_dir=executed)
    assert not (tmp_path / "out" / "index.html").exists()


def test_a_site_built_from_a_site_is_the_same_site(tmp_path, built):
    """The site keeps its executed notebooks and explorers in the layout --executed reads."""
    first, second = built, tmp_path / "second"
    site.build(second, executed_dir=first)
    assert (second / "02_second.html").read_text().count("Open this explorer on its own page") == 1
    assert (first / "02_second.ipynb").read_text() == (second / "02_second.ipynb").read_text()


def test_nothing_is_loaded_from_outside_the_site(built):
    out = built
    pages = sorted(out.glob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        for url in re.findall(r'<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)="([^"]*)"', text):
            assert not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", url, re.I) or url.startswith("data:"), \
                (page.name, url)
            path = out / url.split("?")[0].split("#")[0].lstrip("/")  # 404.html: from the site's root
            assert url.startswith("data:") or path.is_file(), (page.name, url)
        assert "fonts.googleapis" not in text and "cdn" not in text.lower().replace("cdnjs", "!"), page.name
    first = (out / "01_first.html").read_text()
    mathjax = re.search(r'<script src="(assets/mathjax/MathJax\.js\?config=[^"]+)"', first)
    assert mathjax, "the notebook page must load the site's own MathJax"
    for name in mathjax.group(1).split("config=")[1].split(","):
        assert (out / site.MATHJAX / "config" / f"{name}.js").is_file(), name


@pytest.mark.parametrize("profiles, stated", [
    ({"01_a.ipynb": "quick", "02_b.ipynb": "quick"}, "executed in the **quick** profile"),
    ({"01_a.ipynb": "full"}, "executed in the **full** profile"),
    ({"01_a.ipynb": "quick", "02_b.ipynb": None}, "executed in these profiles (01_a.ipynb: quick, "
                                                  "02_b.ipynb: not recorded)"),
    ({"01_a.ipynb": "quick", "02_b.ipynb": "full"}, "executed in these profiles (01_a.ipynb: quick, "
                                                    "02_b.ipynb: full)"),
])
def test_the_index_states_the_profile_the_notebooks_ran_in(profiles, stated):
    assert site._profile_sentence(profiles) == stated


def test_the_built_index_states_the_recorded_profile(built):
    home = (built / "index.html").read_text()
    assert "executed in the <strong>quick</strong> profile" in home and "default" not in home


def test_names_that_are_markup_stay_text(tmp_path):
    folder = tmp_path / "executed"
    folder.mkdir()
    hostile_name = "01_<img src=x onerror=alert(1)>"
    hostile_title = '</title><script>alert(2)</script> & "quotes"'
    executed_notebook(folder / f"{hostile_name}.ipynb", None, "untitled")        # its title: the file name
    executed_notebook(folder / "02_titled.ipynb", hostile_title, "titled")
    out = tmp_path / "out"
    site.build(out, executed_dir=folder)
    assert sorted(p.name for p in out.glob("*.html")) == \
        ["01_-img-src-x-onerror-alert-1.html", "02_titled.html", "404.html", "index.html"]
    for page in out.glob("*.html"):
        text = page.read_text()
        assert "<img src=x" not in text and "<script>alert(2)" not in text, page.name
    home = (out / "index.html").read_text()
    assert "01_&lt;img src=x onerror=alert(1)&gt;" in home
    assert "&lt;/title&gt;&lt;script&gt;alert(2)&lt;/script&gt; &amp; &quot;quotes&quot;" in home
    title = re.search(r"<title>(.*?)</title>", (out / "02_titled.html").read_text(), re.S).group(1)
    assert title.startswith("&lt;/title&gt;&lt;script&gt;")


def test_two_notebooks_that_would_share_a_page_are_refused(tmp_path):
    folder = tmp_path / "executed"
    folder.mkdir()
    executed_notebook(folder / "01_a b.ipynb", "One", "1")
    executed_notebook(folder / "01_a?b.ipynb", "Two", "2")
    with pytest.raises(ValueError, match=r"would both become the page 01_a-b.ipynb"):
        site.build(tmp_path / "out", executed_dir=folder)


# --------------------------------------------------------------------- the output folder is owned
def test_a_folder_with_other_files_is_refused_before_anything_runs(tmp_path, executed, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    monkeypatch.setattr(site, "execute", lambda *a, **k: pytest.fail("executed before checking --out"))
    with pytest.raises(FileExistsError, match=r"^out .*mine holds files that are not a site built "
                                              r"here \(thesis.tex\)"):
        site.build(out)
    with pytest.raises(FileExistsError, match="thesis.tex"):
        site.build(out, executed_dir=executed)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "years of work"


def test_a_rebuild_replaces_its_own_files_and_keeps_a_users(tmp_path, executed):
    out = tmp_path / "out"
    site.build(out, executed_dir=executed)
    marker = json.loads((out / site.MARKER).read_text())
    assert "index.html" in marker["files"] and "02_second.html" in marker["files"]
    (out / "notes.txt").write_text("a reader's notes")
    (executed / "02_second.ipynb").unlink()                    # the next site has one page less
    site.build(out, executed_dir=executed)
    assert (out / "notes.txt").read_text() == "a reader's notes"
    assert not (out / "02_second.html").exists() and (out / "01_first.html").is_file()
    assert "notes.txt" not in json.loads((out / site.MARKER).read_text())["files"]
    assert not list(tmp_path.glob(".out.building-*"))  # the temporary build is gone


def fake_site(folder, files):
    """A folder laid out like a built site: ``files`` maps relative paths to their text."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_install_moves_a_site_in_and_lists_what_it_wrote(tmp_path):
    built = fake_site(tmp_path / "built", {"index.html": "new", "assets/a.js": "js"})
    with site.SiteFolder(tmp_path / "out") as folder:
        folder.install(built)
    assert json.loads((tmp_path / "out" / site.MARKER).read_text())["files"] == ["assets/a.js", "index.html"]
    assert (tmp_path / "out" / "assets" / "a.js").read_text() == "js"
    assert not (tmp_path / "out" / ".lock").exists()  # the lock is let go


def test_a_users_file_where_a_page_goes_stops_the_install_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    with site.SiteFolder(out) as folder:
        folder.install(fake_site(tmp_path / "one", {"index.html": "old", "old.html": "old page"}))
    (out / "page.html").write_text("the user's own page")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    built = fake_site(tmp_path / "two", {"index.html": "new", "page.html": "a new page"})
    overwrite = r"page.html, which the new site would overwrite"
    with site.SiteFolder(out) as folder, pytest.raises(FileExistsError, match=overwrite):
        folder.install(built)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_marker_listing_files_outside_the_folder_touches_nothing_there(tmp_path):
    out = tmp_path / "out"
    with site.SiteFolder(out) as folder:
        folder.install(fake_site(tmp_path / "one", {"index.html": "old"}))
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    marker = json.loads((out / site.MARKER).read_text())
    marker["files"] += ["../precious.txt", str(outside)]
    (out / site.MARKER).write_text(json.dumps(marker))
    with site.SiteFolder(out) as folder:
        folder.install(fake_site(tmp_path / "two", {"index.html": "new"}))
    assert outside.read_text() == "keep me" and (out / "index.html").read_text() == "new"


def test_a_folder_in_use_is_refused(tmp_path):
    from unifiedctx.files import FolderInUse

    with site.SiteFolder(tmp_path / "out"), pytest.raises(FolderInUse, match="site folder"):
        site.SiteFolder(tmp_path / "out").claim()


def test_a_broken_marker_is_refused(tmp_path, executed):
    out = tmp_path / "out"
    out.mkdir()
    (out / site.MARKER).write_text("{not json")
    with pytest.raises(FileExistsError, match="is not a list of files this builder wrote"):
        site.build(out, executed_dir=executed)


# --------------------------------------------------------------------- refusals, by argument
def test_a_missing_executed_folder_is_refused_by_name(tmp_path):
    with pytest.raises(PathNotFound, match=r"executed is not a folder"):
        site.build(tmp_path / "out", executed_dir=tmp_path / "no-such-folder")
    assert not (tmp_path / "out").exists()


def test_an_executed_folder_without_notebooks_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not a notebook")
    with pytest.raises(ValueError, match=r"^executed .*empty holds no executed notebook"):
        site.build(tmp_path / "out", executed_dir=tmp_path / "empty")


@pytest.mark.parametrize("argument, value, error", [
    ("out", 3, TypeError), ("out", "", ValueError), ("executed_dir", True, TypeError)])
def test_bad_paths_are_refused_by_name(tmp_path, argument, value, error):
    kwargs = {"out": tmp_path / "out", "executed_dir": tmp_path, argument: value}
    name = "executed" if argument == "executed_dir" else "out"
    with pytest.raises(error, match=rf"^{name} must be a path"):
        site.build(**kwargs)


def test_an_out_that_is_a_file_is_refused(tmp_path, executed):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(ValueError, match=r"out must be a site folder, but .*out is a file"):
        site.build(tmp_path / "out", executed_dir=executed)


def test_the_command_line_names_the_argument_and_exits_2(tmp_path, capsys):
    assert site.main(["--executed", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert ": --executed is not a folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.txt").write_text("x")
    assert site.main(["--out", str(tmp_path / "taken"), "01"]) == 2
    err = capsys.readouterr().err
    assert "error: --out " in err and "out (--out)" not in err
    assert site.main(["--out", str(tmp_path / "new"), "99"]) == 2
    assert "no notebook starts with '99'" in capsys.readouterr().err


def test_title_falls_back_to_the_file_name(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1")]
    nbformat.write(nb, tmp_path / "03_untitled.ipynb")
    assert site.title_of(tmp_path / "03_untitled.ipynb") == "03_untitled"


def test_missing_mkdocs_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "_module_available", lambda name: False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install mkdocs mkdocs-jupyter"):
        site.render(tmp_path / "mkdocs.yml", tmp_path / "out")


def test_course_execute_pins_the_profile_and_exports_explorers_beside_the_copy(tmp_path, monkeypatch):
    """The kernel runs in the profile the copy records, with explorers exported to out/explorers."""
    monkeypatch.setenv("UNIFIEDCTX_PROFILE", "quick")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nprint(os.environ['UNIFIEDCTX_PROFILE'], os.environ['UNIFIEDCTX_STATIC_EXPLORERS'])")]
    nbformat.write(nb, tmp_path / "01_env.ipynb")
    course.execute(tmp_path / "01_env.ipynb", tmp_path / "out", timeout=120)
    copy = nbformat.read(tmp_path / "out" / "01_env.ipynb", as_version=4)
    assert copy.metadata["unifiedctx"] == {"profile": "quick"}
    printed = copy.cells[0].outputs[0]["text"].split()
    assert printed == ["quick", str((tmp_path / "out" / course.EXPLORERS).resolve())]
    assert (tmp_path / "out" / "01_env.html").is_file()


def test_static_outputs_drops_every_widget_view_and_the_state(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"state": {}}
    nb.cells = [nbformat.v4.new_code_cell("w", outputs=[nbformat.v4.new_output("display_data", data={
        course.WIDGET_VIEW: WIDGET_VIEW, "text/plain": "IntSlider(value=3)"})])]
    static = course.static_outputs(nb)
    assert "widgets" not in static.metadata
    assert static.cells[0].outputs[0]["data"] == {"text/plain": "IntSlider(value=3)"}
    assert course.WIDGET_VIEW in nb.cells[0].outputs[0]["data"] and "widgets" in nb.metadata  # a copy


def test_a_displayed_explorer_exports_itself_for_the_site(tmp_path, monkeypatch):
    """While the course executes for the site, a displayed explorer writes its page to the folder
    and shows it in an iframe (so the rendered site keeps a live explorer)."""
    import torch

    from unifiedctx.models import create_model
    from unifiedctx.widgets import AffinityExplorer
    from unifiedctx.widgets.export import read_payload

    torch.manual_seed(0)
    explorer = AffinityExplorer(create_model("deit_tiny_nano").eval(), torch.rand(1, 3, 32, 32))
    monkeypatch.delenv(site.STATIC_ENV, raising=False)
    assert "text/html" not in str(explorer._repr_mimebundle_())  # in JupyterLab: the widget alone
    monkeypatch.setenv(site.STATIC_ENV, str(tmp_path))
    (tmp_path / "explorer-1.html").write_text("another notebook's page")
    bundle = explorer._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert '<iframe src="explorers/explorer-2.html"' in data["text/html"]
    assert site._FRAME.search(data["text/html"])  # the form the site finds and links
    assert "application/vnd.jupyter.widget-view+json" in data
    assert (tmp_path / "explorer-1.html").read_text() == "another notebook's page"  # not overwritten
    assert read_payload(tmp_path / "explorer-2.html")["traits"]["shown"] == explorer.shown
