"""The static site: executed notebooks rendered by MkDocs, with exported explorers copied in."""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest

from unifiedctx import site

pytestmark = pytest.mark.skipif(not site._module_available("mkdocs"), reason="mkdocs is not installed")


def executed_notebook(path, title, printed):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome text."),
                nbformat.v4.new_code_cell("print('x')", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text=printed)])]
    nbformat.write(nb, path)


def test_site_renders_every_executed_notebook_with_its_outputs_and_the_explorers(tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    executed_notebook(executed / "01_first.ipynb", "The first lesson", "printed-by-cell-one")
    executed_notebook(executed / "02_second.ipynb", "The second lesson", "printed-by-cell-two")
    work = tmp_path / "work"
    explorers = tmp_path / f"work-{site.EXPLORERS}"
    explorers.mkdir()
    (explorers / "explorer-1.html").write_text("<html>an explorer</html>")
    index = site.build(tmp_path / "out", executed_dir=executed, work=work)
    out = tmp_path / "out"
    assert index == out / "index.html" and index.is_file()
    home = index.read_text()
    assert "The first lesson" in home and "The second lesson" in home
    assert "printed-by-cell-one" in (out / "01_first.html").read_text()
    assert "printed-by-cell-two" in (out / "02_second.html").read_text()
    assert (out / site.EXPLORERS / "explorer-1.html").read_text() == "<html>an explorer</html>"
    config = json.loads((work / "mkdocs.yml").read_text())
    assert [next(iter(entry)) for entry in config["nav"]] == ["Home", "The first lesson", "The second lesson"]


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
    assert "application/vnd.jupyter.widget-view+json" in data
    assert (tmp_path / "explorer-1.html").read_text() == "another notebook's page"  # not overwritten
    assert read_payload(tmp_path / "explorer-2.html")["traits"]["shown"] == explorer.shown
