"""Every mistake at the explorer's door (``AffinityExplorer``, its fields, ``to_html``) is stopped
there: a ``ValueError``/``TypeError`` raised by our own code (the traceback's last frame is in
``unifiedctx``, not in torch, traitlets or matplotlib) that names the argument and what it got.
A model or a map with NaN/inf is refused or shown as a warning, never drawn silently."""

from __future__ import annotations

import math
import traceback

import pytest
import torch

from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer

MIXED = "stages.3.blocks.0.mixer"


def nano(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("container_light_nano").eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    return nano()


@pytest.fixture(scope="module")
def explorer(model, images):
    return AffinityExplorer(model, images, layer=MIXED, query=(1, 1))


def raised_by_us(info) -> None:
    last = traceback.extract_tb(info.tb)[-1].filename
    assert "unifiedctx" in last, f"raised from {last}, not from unifiedctx: {info.value!r}"


def check(call, error, words):
    with pytest.raises(error) as info:
        call()
    raised_by_us(info)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


CONSTRUCTION = [
    ({"panel": 0}, ValueError, ["panel", "0"]),
    ({"panel": -5}, ValueError, ["panel", "-5"]),
    ({"panel": 100_000}, ValueError, ["panel", "16..2048"]),
    ({"panel": True}, TypeError, ["panel", "bool"]),
    ({"panel": "256"}, TypeError, ["panel", "str"]),
    ({"panel": 256.0}, TypeError, ["panel", "float"]),
    ({"alpha": 5}, ValueError, ["alpha", "[0, 1]", "5"]),
    ({"alpha": -0.1}, ValueError, ["alpha"]),
    ({"alpha": math.nan}, ValueError, ["alpha", "finite"]),
    ({"alpha": "0.5"}, TypeError, ["alpha", "str"]),
    ({"alpha": True}, TypeError, ["alpha", "bool"]),
    ({"cmap": "nope"}, ValueError, ["cmap", "'nope'"]),
    ({"cmap": "virdis"}, ValueError, ["cmap", "Did you mean", "viridis"]),
    ({"cmap": 5}, TypeError, ["cmap"]),
    ({"cache_mb": 0}, ValueError, ["cache_mb"]),
    ({"cache_mb": "512"}, TypeError, ["cache_mb"]),
    ({"head": True}, TypeError, ["head", "bool"]),
    ({"head": 7}, ValueError, ["head", "out of range"]),
    ({"head": "0"}, TypeError, ["head", "str"]),
    ({"image_index": -1}, ValueError, ["image_index", "-1"]),
    ({"image_index": 2}, ValueError, ["image_index", "2 images"]),
    ({"image_index": True}, TypeError, ["image_index", "bool"]),
    ({"image_index": 0.0}, TypeError, ["image_index", "float"]),
    ({"query": (99, 99)}, ValueError, ["query", "outside"]),
    ({"query": (-1, 0)}, ValueError, ["query", "outside"]),
    ({"query": (True, 0)}, TypeError, ["query", "ints"]),
    ({"query": (1.5, 0)}, TypeError, ["query", "ints"]),
    ({"query": "ab"}, TypeError, ["query", "pair"]),
    ({"query": 3}, TypeError, ["query", "pair"]),
    ({"layer": "nope"}, ValueError, ["layer", "'nope'", "does not exist"]),
    ({"layer": 5}, TypeError, ["layer", "string", "int"]),
    ({"component": "banana"}, ValueError, ["component", "banana"]),
    ({"component": 1}, TypeError, ["component", "string"]),
    ({"model_name": "resnet"}, ValueError, ["model_name", "resnet"]),
    ({"model_name": 0}, TypeError, ["model_name", "string"]),
    ({"depth": "rolout"}, ValueError, ["depth", "rolout", "rollout"]),
    ({"depth": None}, TypeError, ["depth", "string"]),
    ({"scale_mode": "fixed"}, ValueError, ["scale_mode", "'fixed'", "from_run"]),
    ({"scale_mode": "maps"}, ValueError, ["scale_mode", "Did you mean", "'map'"]),
    ({"scale_mode": 1}, TypeError, ["scale_mode", "string"]),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), CONSTRUCTION, ids=lambda v: repr(v)[:40])
def test_construction_refuses(model, images, kwargs, error, words):
    check(lambda: AffinityExplorer(model, images, **{"layer": MIXED, **kwargs}), error, words)


FIELDS = [
    ("head", True, TypeError), ("head", -2, ValueError), ("head", "1", TypeError), ("head", 2.0, TypeError),
    ("image_index", True, TypeError), ("image_index", 9, ValueError), ("image_index", "0", TypeError),
    ("query", (True, False), TypeError), ("query", (0, 9), ValueError), ("query", None, TypeError),
    ("query", ("0", "1"), TypeError), ("layer", None, TypeError), ("layer", "stages.9", ValueError),
    ("component", "mixd", ValueError), ("depth", "nope", ValueError), ("depth", 0, TypeError),
    ("model_name", b"x", TypeError), ("scale_mode", "fixed", ValueError), ("scale_mode", None, TypeError),
    ("epoch", 3, ValueError), ("epoch", "3", TypeError), ("epoch", 1.0, TypeError),
    ("epoch", True, TypeError),
]


@pytest.mark.parametrize(("field", "value", "error"), FIELDS, ids=lambda v: repr(v)[:30])
def test_fields_refuse_and_keep_the_state(explorer, field, value, error):
    before, sent = explorer.state.as_dict(), dict(explorer.shown)
    check(lambda: setattr(explorer, field, value), error, [field])
    assert explorer.state.as_dict() == before and explorer.shown == sent


@pytest.mark.parametrize(("models", "error", "words"), [
    ("container", TypeError, ["model must be"]),
    ({}, TypeError, ["model must be"]),
    ({"a": 5}, TypeError, ["model must be"]),
    (None, TypeError, ["model must be"]),
])
def test_models_that_are_not_models(images, models, error, words):
    check(lambda: AffinityExplorer(models, images), error, words)


@pytest.mark.parametrize(("value", "error", "words"), [
    ("images", TypeError, ["images"]),
    ([], ValueError, ["images is empty"]),
    (torch.rand(32, 32), ValueError, ["images", "(32, 32)"]),
    ([torch.rand(3, 32, 32), torch.rand(3, 16, 16)], ValueError, ["one size", "images[1]"]),
    (torch.full((1, 3, 32, 32), math.nan), ValueError, ["images", "NaN"]),
])
def test_images_that_are_not_images(model, value, error, words):
    check(lambda: AffinityExplorer(model, value), error, words)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_model_with_non_finite_weights_is_refused(images, bad):
    model = nano()
    with torch.no_grad():
        model.stages[1].blocks[0].mixer.parameters().__next__().view(-1)[0] = bad
    check(lambda: AffinityExplorer({"diverged": model}, images), ValueError,
          ["'diverged'", "non-finite", "stages.1.blocks.0.mixer"])


def test_non_finite_maps_are_a_warning_not_a_drawing(images):
    """Finite weights, but an input so large that attention overflows: the map says so."""
    huge = images * 1e30
    explorer = AffinityExplorer(nano(), huge, layer=MIXED)
    explorer.component = "dynamic"
    meta, buffer = explorer.shown_entries()[0]
    if not meta["warning"]:
        pytest.skip("this input did not overflow the attention")
    assert buffer == b"" and "non-finite" in explorer.warning and "not drawn" in explorer.warning
    assert explorer.rendered()["indices"] is None


def test_a_nan_map_is_never_sent_as_colours(explorer, monkeypatch):
    import numpy as np

    data = explorer.data
    real = data.affinity

    def poisoned(*args):
        a = real(*args).copy()
        a[0, 0, 0] = np.nan
        return a

    monkeypatch.setattr(data, "affinity", poisoned)
    meta, buffer = explorer.shown_entries()[0]
    assert buffer == b"" and "1 non-finite values" in meta["warning"] and MIXED in meta["warning"]
    assert "not drawn" in explorer.warning


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"max_mb": 0}, ValueError, ["max_mb"]),
    ({"max_mb": -1}, ValueError, ["max_mb"]),
    ({"max_mb": "5"}, TypeError, ["max_mb", "str"]),
    ({"max_mb": True}, TypeError, ["max_mb", "bool"]),
    ({"images": "0"}, TypeError, ["images"]),
    ({"images": 0}, TypeError, ["images"]),
    ({"images": []}, ValueError, ["images must be indices"]),
    ({"images": [True]}, TypeError, ["images[0]", "int", "bool"]),
    ({"images": [5]}, ValueError, ["images must be indices", "0..1"]),
    ({"images": [0, 0.0]}, TypeError, ["images[1]", "int", "float"]),
    ({"title": 5}, TypeError, ["title", "int"]),
    ({"depth": "nope"}, ValueError, ["depth"]),
    ({"depth": ("rollout", "x")}, ValueError, ["depth"]),
])
def test_to_html_refuses(explorer, tmp_path, kwargs, error, words):
    check(lambda: explorer.to_html(tmp_path / "page.html", **kwargs), error, words)
    assert not (tmp_path / "page.html").exists()


def test_to_html_paths(explorer, tmp_path):
    check(lambda: explorer.to_html(tmp_path), ValueError, ["is a folder", "explorer.html"])
    (tmp_path / "a_file").write_text("x")
    inside_a_file = tmp_path / "a_file" / "page.html"
    check(lambda: explorer.to_html(inside_a_file), ValueError, ["is a file, not a folder"])
    assert explorer.to_html(tmp_path / "new" / "page.html").is_file()  # a missing folder is made
    check(lambda: explorer.to_html(5), TypeError, ["path", "int"])
    keep = tmp_path / "keep.html"
    keep.write_text("mine")
    with pytest.raises(ValueError):
        explorer.to_html(keep, max_mb=1e-6)
    assert keep.read_text() == "mine"  # a refused page overwrites nothing


# ------------------------------------------------------------------ the front end's requests (issue 27)
def maps_request(explorer, **change) -> dict:
    good = {"need": "maps", "model": explorer.model_name, "image": 1, "layer": MIXED, "component": "dynamic",
            "scale": "layer", "key": "k1"}
    return {k: v for k, v in {**good, **change}.items() if v is not DROP}


def depth_request(explorer, **change) -> dict:
    good = {"need": "depth", "model": explorer.model_name, "image": 0, "layer": MIXED, "mode": "rollout",
            "query": [1, 2], "key": "k2"}
    return {k: v for k, v in {**good, **change}.items() if v is not DROP}


def rows_request(explorer, **change) -> dict:
    good = {"need": "rows", "model": explorer.model_name, "image": 1, "layer": MIXED, "component": "dynamic",
            "scale": "map", "query": [3, 1], "key": "k3"}
    return {k: v for k, v in {**good, **change}.items() if v is not DROP}


DROP = object()  # a key left out of the request

#: (how the request is made, the error, words the message must hold): every entry of a request
#: the front end sends, wrong in each way a message from a page can be wrong.
REQUESTS = [
    (lambda e: 5, TypeError, ["must be a dict", "int"]),
    (lambda e: None, TypeError, ["must be a dict", "NoneType"]),
    (lambda e: [maps_request(e)], TypeError, ["must be a dict", "list"]),
    (lambda e: "maps", TypeError, ["must be a dict", "str"]),
    (lambda e: {}, TypeError, ["request['need']", "'maps', 'rows', 'depth'"]),
    (lambda e: maps_request(e, need="map"), ValueError, ["request['need']", "'map'", "Did you mean"]),
    (lambda e: maps_request(e, need=1), TypeError, ["request['need']", "int"]),
    (lambda e: maps_request(e, model=DROP), ValueError, ["missing: model"]),
    (lambda e: maps_request(e, layer=DROP, image=DROP), ValueError, ["missing: image, layer"]),
    (lambda e: maps_request(e, colour="red"), ValueError, ["unknown: colour"]),
    (lambda e: depth_request(e, query=DROP), ValueError, ["'depth' request", "missing: query"]),
    (lambda e: maps_request(e, model="resnet"), ValueError, ["request['model']", "'resnet'"]),
    (lambda e: maps_request(e, model=None), TypeError, ["request['model']", "NoneType"]),
    (lambda e: maps_request(e, layer="stages.9.mixer"), ValueError, ["request['layer']", "'stages.9.mixer'"]),
    (lambda e: maps_request(e, layer=["a"]), TypeError, ["request['layer']", "list"]),
    (lambda e: maps_request(e, component="mixd"), ValueError, ["request['component']", "Did you mean"]),
    (lambda e: maps_request(e, image=2), ValueError, ["request['image']", "<= 1", "2"]),
    (lambda e: maps_request(e, image=-1), ValueError, ["request['image']", ">= 0"]),
    (lambda e: maps_request(e, image=math.nan), TypeError, ["request['image']", "float"]),
    (lambda e: maps_request(e, image=1.0), TypeError, ["request['image']", "float"]),
    (lambda e: maps_request(e, image=True), TypeError, ["request['image']", "bool"]),
    (lambda e: maps_request(e, image="0"), TypeError, ["request['image']", "str"]),
    (lambda e: maps_request(e, scale="fixed"), ValueError, ["request['scale']", "'fixed'"]),
    (lambda e: maps_request(e, scale=None), TypeError, ["request['scale']"]),
    (lambda e: maps_request(e, epoch=3), ValueError, ["request['epoch']", "no run"]),
    (lambda e: maps_request(e, epoch="3"), TypeError, ["request['epoch']", "str"]),
    (lambda e: maps_request(e, key=7), TypeError, ["request['key']", "string"]),
    (lambda e: depth_request(e, mode="erf"), ValueError, ["request['mode']", "'erf'"]),
    (lambda e: depth_request(e, query=[1]), TypeError, ["request['query']", "pair"]),
    (lambda e: depth_request(e, query=7), TypeError, ["request['query']", "pair"]),
    (lambda e: depth_request(e, query="ab"), TypeError, ["request['query']", "pair"]),
    (lambda e: depth_request(e, query=[math.nan, 0]), TypeError, ["request['query']", "ints"]),
    (lambda e: depth_request(e, query=[1.0, 0]), TypeError, ["request['query']", "ints"]),
    (lambda e: depth_request(e, query=[True, 0]), TypeError, ["request['query']", "ints"]),
    (lambda e: depth_request(e, query=[4, 0]), ValueError, ["request['query']", "outside the grid (4, 4)"]),
    (lambda e: depth_request(e, query=[0, -1]), ValueError, ["request['query']", "outside"]),
    (lambda e: rows_request(e, query=DROP), ValueError, ["'rows' request", "missing: query"]),
    (lambda e: rows_request(e, mode="rollout"), ValueError, ["'rows' request", "unknown: mode"]),
    (lambda e: rows_request(e, query=[4, 4]), ValueError, ["request['query']", "outside the grid (4, 4)"]),
    (lambda e: rows_request(e, query=["1", 0]), TypeError, ["request['query']", "ints"]),
    (lambda e: rows_request(e, component=DROP), ValueError, ["'rows' request", "missing: component"]),
    (lambda e: rows_request(e, scale="fixed"), ValueError, ["request['scale']", "'fixed'"]),
    (lambda e: rows_request(e, epoch=0), ValueError, ["request['epoch']", "no run"]),
    (lambda e: rows_request(e, image=5), ValueError, ["request['image']", "<= 1"]),
]


REQUEST_IDS = [f"request{i}" for i in range(len(REQUESTS))]


@pytest.mark.parametrize(("make", "error", "words"), REQUESTS, ids=REQUEST_IDS)
def test_a_bad_request_is_refused_at_the_door(explorer, make, error, words):
    check(lambda: explorer.answer(make(explorer)), error, words)


@pytest.mark.parametrize(("make", "error", "words"), REQUESTS, ids=REQUEST_IDS)
def test_a_bad_request_gets_an_error_reply_not_silence(explorer, make, error, words):
    """What ipywidgets calls (``_on_request``) never raises: the page hears of every bad request,
    under the request's own key when it gave one, so it stops waiting for it."""
    sent = []
    request = make(explorer)
    explorer.send = lambda content, buffers=None: sent.append((content, buffers))
    try:
        explorer._on_request(explorer, request, [])
    finally:
        del explorer.send
    ((reply, buffers),) = sent
    assert reply["kind"] == "error" and not buffers
    key = request.get("key") if isinstance(request, dict) else None
    assert reply["key"] == (key if isinstance(key, str) else None)
    for word in words:
        assert word in reply["error"], (word, reply["error"])


def test_good_requests_are_answered_under_their_key(explorer):
    sent = []
    explorer.send = lambda content, buffers=None: sent.append((content, buffers))
    try:
        explorer._on_request(explorer, maps_request(explorer), [])
        explorer._on_request(explorer, depth_request(explorer), [])
        explorer._on_request(explorer, rows_request(explorer), [])
    finally:
        del explorer.send
    (maps, maps_buffers), (depth, depth_buffers), (rows, rows_buffers) = sent
    assert (maps["kind"], maps["key"], depth["kind"], depth["key"]) == ("maps", "k1", "depth", "k2")
    assert len(maps_buffers[0]) == maps["heads"] * 16 * 16 and len(depth_buffers[0]) == 32 * 32
    assert (rows["kind"], rows["key"], rows["query"]) == ("rows", "k3", [3, 1])
    assert len(rows_buffers[0]) == rows["heads"] * 16 and len(rows["rows"]["vmax"]) == rows["heads"]


def test_a_failure_computing_an_answer_is_reported_too(explorer, monkeypatch):
    """Not a bad request: the kernel fails (out of memory, say). The page is told, the log keeps it."""
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("unifiedctx.widgets.explorer_payload.maps_entry", broken)
    sent = []
    monkeypatch.setattr(explorer, "send", lambda content, buffers=None: sent.append(content), raising=False)
    explorer._on_request(explorer, maps_request(explorer), [])
    assert sent == [{"kind": "error", "key": "k1",
                     "error": "the kernel failed to compute this view: RuntimeError: CUDA out of memory"}]


def test_a_state_the_kernel_refuses_is_sent_back_with_the_reason(explorer, monkeypatch):
    sent = []
    monkeypatch.setattr(explorer, "send", lambda content, buffers=None: sent.append(content), raising=False)
    good = dict(explorer.shown)
    explorer.shown = {**good, "layer": "ghost"}
    assert explorer.shown == good
    ((reply,),) = [sent]
    assert reply["kind"] == "refused" and "layer 'ghost' does not exist" in reply["error"]
