"""The course as a student sees it in JupyterLab: what a cell shows under itself must be what the cell
means to show.

* A cell that ends with a plotting call that returns an object shows that object's text
  (``Text(0.5, 0.98, '...')``, ``[<matplotlib.lines.Line2D ...>]``) or, for a returned Figure, the
  figure a second time: such a last line ends with ``;`` (or its value is assigned).
* Layers are named one way in every picture: by their module name (``stages.0.blocks.0.mixer``, what
  ``record_affinities``, the explorer and the plots say), never by a 1-based "stage 1".
* The query marker has one colour: the text that names the square in the figures names the colour the
  figures draw it in.
* A caption belongs to its widget: a cell that displays an explorer prints nothing that describes an
  explorer's state (``label_text``, ``status``): under the widget it would read as the widget's caption.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))

#: Figure / Axes methods whose value is an object (a Text, a list of lines, a Legend, ...), so that a
#: cell ending with one of them prints it.
RETURNS_AN_OBJECT = {
    "suptitle", "supxlabel", "supylabel", "set_title", "set_xlabel", "set_ylabel", "text", "annotate",
    "legend", "axhline", "axvline", "axhspan", "axvspan", "plot", "loglog", "semilogx", "semilogy",
    "scatter", "bar", "barh", "imshow", "hist", "fill_between", "colorbar", "add_patch", "set",
    "set_xticks", "set_yticks", "set_xticklabels", "set_yticklabels", "set_xlim", "set_ylim", "errorbar",
}
#: The library's plotting functions return the Figure: a cell ending with one shows the figure twice.
RETURNS_A_FIGURE = re.compile(r"^(plot_\w+|comparison_figure|learning_curves)$")
ONE_BASED_STAGE = re.compile(r"\bstage \d", re.I)
DISPLAYS_A_WIDGET = re.compile(r"\bdisplay\(\s*AffinityExplorer\(|^AffinityExplorer\(", re.M)
DESCRIBES_AN_EXPLORER = re.compile(r"print\([^\n]*\.(label_text|status)\b")


SQUARE = re.compile(r"\b(white|black|red|cyan|yellow|green|blue|magenta|orange|grey|gray)\s+square", re.I)


def markdown_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def marker_colour() -> tuple:
    """The edge colour of the query's square in a query map the library draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from unifiedctx import viz

    fig = viz.plot_query_maps(torch.full((1, 1, 4, 4), 0.25), (2, 2), (0, 0))
    (square,) = [p for p in fig.axes[0].patches if p.get_label() == "query token"]
    plt.close(fig)
    return tuple(square.get_edgecolor())


def code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def shown_value(cell: str) -> str | None:
    """The name of the call whose value the cell's last line shows, or None when it shows nothing."""
    lines = [line for line in cell.rstrip().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines or lines[-1].split("#")[0].rstrip().endswith(";"):
        return None
    body = ast.parse(cell).body
    last = body[-1] if body else None
    if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
        return None
    func = last.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name if name in RETURNS_AN_OBJECT or RETURNS_A_FIGURE.match(name) else None


def strings(cell: str) -> list[str]:
    """Every string constant of the cell (f-strings' literal parts included)."""
    return [node.value for node in ast.walk(ast.parse(cell))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]




@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_shows_the_object_a_plotting_call_returns(path):
    shown = [(i, name) for i, cell in enumerate(code_cells(path)) if (name := shown_value(cell))]
    assert shown == [], f"cells ending with a plotting call whose value is shown (end it with ';'): {shown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_pictures_name_layers_by_their_module_name(path):
    found = [s for cell in code_cells(path) for s in strings(cell) if ONE_BASED_STAGE.search(s)]
    assert found == [], f"1-based stage words in a title or label (say stages.0): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_cell_that_shows_an_explorer_prints_no_explorer_state_under_it(path):
    for cell in code_cells(path):
        if DISPLAYS_A_WIDGET.search(cell):
            assert not DESCRIBES_AN_EXPLORER.search(cell), cell[:300]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_text_names_the_query_square_in_the_colour_the_figures_draw(path):
    from matplotlib.colors import to_rgba

    drawn = marker_colour()
    named = [m.group(0) for cell in markdown_cells(path) for m in SQUARE.finditer(cell)]
    assert all(to_rgba(words.split()[0].lower()) == drawn for words in named), (named, drawn)


def test_the_checks_catch_what_they_are_for():
    assert shown_value('fig.suptitle("a title")') == "suptitle"
    assert shown_value('viz.plot_affinity_matrix(A, grid=g)') == "plot_affinity_matrix"
    assert shown_value('fig.suptitle("a title");') is None
    assert shown_value('title = fig.suptitle("a title")') is None
    assert shown_value('print("done")') is None
    assert shown_value('ax.set_title("x")  # a comment') == "set_title"
    def one_based(cell):
        return [s for s in strings(cell) if ONE_BASED_STAGE.search(s)]

    assert one_based('ax.set_title(f"container, stage 1, query {q}")')
    assert not one_based('ax.set_title(f"container stages.0, query {q}")')
    cell = "display(AffinityExplorer(m, x))\nex = AffinityExplorer(m, x)\nprint(ex.label_text)"
    assert DISPLAYS_A_WIDGET.search(cell) and DESCRIBES_AN_EXPLORER.search(cell)
