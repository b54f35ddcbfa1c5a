"""The explorer's memory grows with what is shown, and everything it keeps has one budget (issues 26, 27).

What is held is measured here, not asked: every numpy array and torch tensor reachable from the explorer
(its whole object graph: closures, partials, dicts, the widget), less what the user gave (the models, whose
parameters a kept window may share, and the images with their pictures). With ``cache_mb`` a fraction of what
a tour of every layer, image, query and through-depth view would keep, that stays within ``cache_mb`` after
every request, and what was dropped comes back the same. A big layer is sent as the rows of the query shown;
the compact forms the page stores (a kernel layer's kernels, a windowed attention's windows, a lattice of
queries) give back, for every query, exactly the rows the kernel sends; every call of a module is a layer.
"""

from __future__ import annotations

import gc
import types
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unifiedctx.context import context_graph, rollout_maps
from unifiedctx.inspection.layers import layer_affinities
from unifiedctx.models import create_model
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets import explorer_data as ed
from unifiedctx.widgets import explorer_payload as payload
from unifiedctx.widgets.export import LeftOut, read_payload, unpack


# ------------------------------------------------------------------ what is held, measured
def reachable_bytes(explorer) -> int:
    """Bytes of every distinct array / tensor storage reachable from ``explorer``, less the models' own
    parameters and buffers and the images the user gave (and their pictures). Function globals, classes and
    modules are not followed (they are the program, not the explorer's state)."""
    data = explorer.data
    skip_storages = {t.untyped_storage().data_ptr() for m in data.models.values()
                     for t in (*m.parameters(), *m.buffers())}
    skip_storages |= {im.untyped_storage().data_ptr() for im in data.images}
    skip_ids = {id(a) for a in explorer._display}
    seen, stack, total, counted = set(), [explorer], 0, set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip_ids:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            if key not in skip_storages and key not in counted:
                counted.add(key)
                total += storage.nbytes()
            continue
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in counted:
                counted.add(id(base))
                total += base.nbytes
            continue
        if isinstance(obj, (nn.Module, type, types.ModuleType, str, bytes, int, float)):
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in (obj.__closure__ or ()) if _filled(cell))
            stack.extend(obj.__defaults__ or ())
            continue
        if isinstance(obj, partial):
            stack.extend([obj.func, *obj.args, *obj.keywords.values()])
            continue
        stack.extend(gc.get_referents(obj))
    return total


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def seeded(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def tour(explorer, every=None):
    """Every layer, component, image, a few queries, both colour scales and the rollout, through the
    requests the front end sends; ``every()`` after each."""
    for model in explorer.data.models:
        for layer, info in explorer.data.catalogue(model).items():
            h, w = info.grid
            for image in range(len(explorer.data.images)):
                for component in info.components:
                    for query in ((0, 0), (h // 2, w // 3), (h - 1, w - 1)):
                        need = "rows" if info.form(component) == "query" else "maps"
                        for scale in ("layer", "map"):
                            explorer.answer({"need": need, "model": model, "image": image, "layer": layer,
                                             "component": component, "scale": scale, "query": list(query)}
                                            if need == "rows" else
                                            {"need": need, "model": model, "image": image, "layer": layer,
                                             "component": component, "scale": scale})
                            if every:
                                every()
                        explorer.answer({"need": "depth", "model": model, "image": image, "layer": layer,
                                         "mode": "rollout", "query": list(query)})
                        if every:
                            every()


@pytest.fixture(scope="module")
def models():
    return {"container": seeded("container_light_nano", 0), "deit": seeded("deit_tiny_nano", 1)}


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_everything_the_explorer_keeps_stays_within_cache_mb(models, images):
    free = AffinityExplorer(models, images)
    tour(free)
    everything = reachable_bytes(free)
    assert free.data.held_bytes() == everything  # its own account is what is really held
    budget = everything // 6  # a tour keeps six times this, if nothing is dropped
    largest = max(free.data.cache.sizes.values())
    assert largest < budget  # so the rule is plain: never more than the budget
    tight = AffinityExplorer(models, images, cache_mb=budget / 2**20)
    peak = []

    def measure():
        held = reachable_bytes(tight)
        peak.append(held)
        assert held <= budget, (held, budget)

    measure()
    tour(tight, measure)
    assert max(peak) > budget / 2  # the budget was used, not avoided
    assert tight.data.held_bytes() == reachable_bytes(tight)


def test_what_was_dropped_comes_back_the_same(models, images):
    layer = "stages.3.blocks.0.mixer"
    free = AffinityExplorer(models["container"], images, layer=layer)
    want = {i: free.data.affinity("ContextNet", i, layer, "mixed").copy() for i in range(3)}
    scale = free.data.scale("ContextNet", 2, layer, "mixed")
    one = free.data.cache.sizes[free.data._key("ContextNet", 0, layer)]
    tight = AffinityExplorer(models["container"], images, layer=layer, cache_mb=1.5 * one / 2**20)
    for i in (0, 1, 2, 0, 2, 1):  # each image's layer pushes out the one before (least recently used)
        np.testing.assert_array_equal(tight.data.affinity("ContextNet", i, layer, "mixed"), want[i])
        keys = [k for k in tight.data.cache.items if k[0] == "layer" and k[3] == layer]
        assert keys[-1][2] == i and len(keys) == 1
    assert tight.data.scale("ContextNet", 2, layer, "mixed") == scale


def test_the_old_leak_would_be_seen():
    """The measure sees what a cache forgot to count: layer records kept in a dict on the side."""
    model = seeded("deit_tiny_nano", 1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    explorer = AffinityExplorer(model, images, cache_mb=0.01)
    before = reachable_bytes(explorer)
    explorer.data.side = {i: layer_affinities(model, images[i:i + 1]) for i in range(2)}
    for records in explorer.data.side.values():
        for r in records:
            r.components  # noqa: B018  (computed and kept, as the old explorer kept them)
    assert reachable_bytes(explorer) > before + 2 * 4 * 2 * 64 * 64 * 2  # two images' attention, at least


# ------------------------------------------------------------ big layers: by query, and the page's forms
class WindowBlock(nn.Module):
    """A user's own Swin-like block: softmax attention inside 4 x 4 windows of its grid, shifted by 2."""

    def __init__(self, dim=8, heads=2, window_size=4, shift_size=2):
        super().__init__()
        self.window_size, self.shift_size, self.heads = window_size, shift_size, heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):  # (B, C, H, W)
        b, c, h, w = x.shape
        s, k = self.shift_size, self.window_size
        t = torch.roll(rearrange(x, "b c h w -> b h w c"), (-s, -s), (1, 2))
        t = rearrange(t, "b (y i) (z j) c -> (b y z) (i j) c", i=k, j=k)
        q, kk, v = rearrange(self.qkv(t), "n t (three m d) -> three n m t d", three=3, m=self.heads)
        y = self.proj(rearrange(F.scaled_dot_product_attention(q, kk, v), "n m t d -> n t (m d)"))
        y = rearrange(y, "(b y z) (i j) c -> b (y i) (z j) c", b=b, y=h // k, i=k)
        return x + rearrange(torch.roll(y, (s, s), (1, 2)), "b h w c -> b c h w")


class Net(nn.Module):
    """A patch embedding, a dilated depthwise conv (a kernel layer), the windowed block and a global
    attention on a 16 x 16 grid: one layer of each of the page's compact forms."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.dw = nn.Conv2d(8, 8, 5, padding=4, dilation=2, groups=8)
        self.win = WindowBlock()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = self.embed(x)
        x = self.win(x + self.dw(x))
        t = rearrange(x, "b c h w -> b (h w) c")
        return (t + self.attn(t, t, t, need_weights=False)[0]).mean(1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(4)
    model = Net().eval()
    with torch.no_grad():
        model.dw.weight.sub_(0.05)  # a signed kernel
    return model, torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def by_query(monkeypatch, net):
    """Every layer component is big: sent by query, stored by the page in its compact form."""
    monkeypatch.setattr(ed, "WHOLE_BYTES", 0)
    model, images = net
    return AffinityExplorer(model, images, layer="dw", query=(3, 12))


def test_the_compact_sources_are_the_readers_affinities(net):
    model, images = net
    data = ed.ExplorerData({"net": model}, list(images))
    assert list(data.catalogue("net")) == ["dw", "win", "attn"]
    for i in range(2):
        records = {r.name: r for r in layer_affinities(model, images[i:i + 1])}
        kinds = {"dw": ed.StencilLayer, "win": ed.WindowedLayer, "attn": ed.DenseLayer}
        for name, kind in kinds.items():
            source = data.source("net", i, name)
            assert isinstance(source, kind)
            component = data.info("net", name).components[0]
            dense = records[name].components[component][0].numpy()  # the reader's dense (M, N, N)
            np.testing.assert_allclose(data.affinity("net", i, name, component), dense, rtol=0, atol=1e-7)
            for q in (0, 17, 255):
                np.testing.assert_allclose(data.rows("net", i, name, component, divmod(q, 16)), dense[:, q],
                                           rtol=0, atol=1e-7)
            # streamed in chunks, or (a kernel) from one query per border class: the scale of every row
            assert data.scale("net", i, name, component) == scale_for(dense)
    assert data.scale("net", 0, "dw", "static").signed


def test_a_big_layer_is_sent_by_query_and_shows_what_the_whole_one_shows(by_query, net, monkeypatch):
    whole = AffinityExplorer(net[0], net[1], layer="dw", query=(3, 12))
    monkeypatch.setattr(ed, "WHOLE_BYTES", 0)
    layers = by_query.catalog["models"]["Net"]["layers"]
    assert {c["form"] for la in layers for c in la["components"]} == {"query"}
    for layer in ("dw", "win", "attn"):
        for state in ({"query": (0, 0), "head": -1, "scale_mode": "layer"}, {"query": (9, 4), "head": 1},
                      {"scale_mode": "map", "image_index": 1, "query": (15, 15), "head": -1}):
            by_query.show(layer=layer, **state)
            whole.show(layer=layer, **state)
            got, want = by_query.rendered(), whole.rendered()
            np.testing.assert_array_equal(got["maps"], want["maps"])
            np.testing.assert_array_equal(got["indices"], want["indices"])
            assert got["fields"] == want["fields"] and got["label"] == want["label"]
            (meta, buffer), _ = by_query.shown_entries()
            assert meta["kind"] == "rows" and len(buffer) == meta["heads"] * 256  # one query's rows, not N^2


@pytest.mark.parametrize("scale", ["layer", "map"])
def test_the_pages_compact_forms_give_every_query_the_rows_the_kernel_sends(by_query, scale):
    data, cmap = by_query.data, by_query.cmap
    forms = {name: payload.page_form(data, "Net", name, data.info("Net", name).components[0])
             for name in ("dw", "win", "attn")}
    assert forms == {"dw": "stencil", "win": "windows", "attn": "lattice"}
    stored = {"dw": payload.stencil_entry(data, "Net", "dw", "static", cmap, scale),
              "win": payload.windows_entry(data, "Net", 1, "win", "dynamic", cmap, scale),
              "attn": payload.lattice_entry(data, "Net", 1, "attn", "dynamic", [0, 5, 136], cmap, scale)}
    for name, (meta, buffer) in stored.items():
        image = 0 if name == "dw" else 1
        for q in range(256):
            query = divmod(q, 16)
            got, rows = payload.place_rows(meta, buffer, query, (16, 16))
            if name == "attn" and q not in (0, 5, 136):
                assert got is None  # not held: the page says which are
                continue
            want_meta, want = by_query.answer({"need": "rows", "model": "Net", "image": image, "layer": name,
                                               "component": meta["component"], "scale": scale,
                                               "query": list(query)})
            np.testing.assert_array_equal(got.ravel(), np.frombuffer(want, np.uint8), err_msg=f"{name} {q}")
            assert rows == want_meta["rows"]
    # kernels, not maps: 5 x 5 border classes (a 5-tap kernel dilated by 2) x 8 heads x 25 taps, not 8 x 256^2
    assert len(stored["dw"][1]) == 25 * 8 * 25
    assert stored["attn"][0]["held"] == "rows 0, 8 x columns 0, 5, 8"


def test_the_page_of_big_layers_holds_their_compact_forms(by_query, tmp_path):
    with pytest.warns(LeftOut, match="lattice of queries only: attn"):
        data = read_payload(by_query.to_html(tmp_path / "page.html"))
    assert len(data["left_out"]) == 1 and "lattice of queries only: attn" in data["left_out"][0]
    for name, form in {"dw": "stencil", "win": "windows", "attn": "lattice"}.items():
        comp = by_query.data.info("Net", name).components[0]
        entries = data["maps"]["Net"][name][comp]["layer"]["null"]
        assert [e["meta"]["form"] for e in entries] == [form] * (1 if form == "stencil" else 2)
        meta, buffer = entries[-1]["meta"], unpack(entries[-1]).tobytes()
        query = (8, 8)  # on every lattice: through the centre
        got, _ = payload.place_rows(meta, buffer, query, (16, 16))
        want = by_query.answer({"need": "rows", "model": "Net", "image": len(entries) - 1, "layer": name,
                                "component": comp, "scale": "layer", "query": list(query)})[1]
        np.testing.assert_array_equal(got.ravel(), np.frombuffer(want, np.uint8))


# ------------------------------------------------------------------ every call a layer; what cannot be read
class Shared(nn.Module):
    """A depthwise conv and an attention, each called twice (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        x = self.dw(torch.relu(self.dw(self.embed(x))))
        t = rearrange(x, "b c h w -> b (h w) c")
        for _ in range(2):
            t = t + self.attn(t, t, t, need_weights=False)[0]
        return t.mean(1)


def test_every_call_of_a_module_is_a_layer_of_its_own():
    torch.manual_seed(6)
    model = Shared().eval()
    with torch.no_grad():
        model.attn.in_proj_weight.mul_(4)  # attention that looks somewhere
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    explorer = AffinityExplorer(model, images, depth="rollout")
    assert explorer.layers == ["dw#0", "dw#1", "attn#0", "attn#1"]
    graph = context_graph(model, images)
    nodes = {n.name: n for n in graph.nodes}
    for name in ("attn#0", "attn#1"):
        explorer.show(layer=name, query=(2, 5), head=-1)
        a = nodes[name].step.affinity[0].numpy()  # the rollout's own node for that call
        np.testing.assert_allclose(explorer.maps(), a[:, 2 * 8 + 5].reshape(2, 8, 8), rtol=0, atol=1e-6)
        want = rollout_maps(model, images, name, query=(2, 5))
        np.testing.assert_allclose(explorer.depth_map(), want["map"], rtol=0, atol=1e-12)
        assert explorer.depth_data()["layers"] == want["layers"]
    first = nodes["attn#0"].step.affinity
    assert (first - nodes["attn#1"].step.affinity).abs().max() > 1e-3  # two calls, two inputs, two maps
    assert "call 1 of the 2 calls of attn" in explorer.data.info("Shared", "attn#1").notes["call"]


class LinearAttention(nn.Module):
    """``phi(Q) (phi(K)^T V)``: token mixing with no softmax, which the reader cannot read."""

    def __init__(self, dim=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = F.elu(q) + 1, F.elu(k) + 1
        return x + q @ (k.transpose(-2, -1) @ v)


class ConvThenLinear(nn.Module):
    """A depthwise conv, a linear attention (no softmax: not read), another depthwise conv."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.mix = LinearAttention()
        self.after = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        tokens = self.mix(rearrange(self.dw(self.embed(x)), "b c h w -> b (h w) c"))
        return self.after(rearrange(tokens, "b (h w) c -> b c h w", h=4))


def test_a_network_read_in_part_shows_its_layers_and_names_what_blocks_the_rollout(tmp_path):
    """Every layer with a view is shown; the depth map of a layer that the unread mixing runs before is
    refused naming it, and that of a layer before it is whole (nothing it depends on was left out)."""
    torch.manual_seed(8)
    model = ConvThenLinear().eval()
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    explorer = AffinityExplorer(model, images, depth="rollout")
    assert explorer.layers == ["dw", "after"]
    explorer.show(layer="dw", query=(1, 2))
    shown = explorer.rendered()
    want = rollout_maps(model, images, "dw", query=(1, 2))["map"]
    assert shown["maps"].shape == (8, 4, 4) and np.abs(shown["depth"] - want).max() < 1e-6
    explorer.show(layer="after")
    shown = explorer.rendered()
    assert shown["depth"] is None
    assert "mix: LinearAttention" in explorer.warning and "rollout unavailable" in explorer.warning
    page = read_payload(explorer.to_html(tmp_path / "page.html"))
    (entry,) = page["depth"]["ConvThenLinear"]["after"]["rollout"]
    assert "mix: LinearAttention" in entry["meta"]["warning"] and not entry["data"]
    assert page["depth"]["ConvThenLinear"]["dw"]["rollout"][0]["data"]  # before the linear attention: whole


def test_a_unifiedctx_mixer_called_twice_is_two_layers():
    from unifiedctx import mixers

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.mix = mixers.create("attention", dim=8, heads=2)

        def forward(self, x):
            x = self.embed(x)
            return self.mix(x + self.mix(x))

    torch.manual_seed(10)
    model = Twice().eval()
    with torch.no_grad():
        for p in model.mix.parameters():
            p.mul_(4)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    explorer = AffinityExplorer(model, images)
    assert explorer.layers == ["mix#0", "mix#1"]
    with torch.no_grad():
        x = model.embed(images)
        inputs = [x, x + model.mix(x)]
    for k, u in enumerate(inputs):  # each call's maps: the mixer's own affinity of that call's input
        explorer.show(layer=f"mix#{k}", query=(5, 2), head=-1)
        want = model.mix.affinity(u)[0, :, 5 * 8 + 2].reshape(2, 8, 8).detach().numpy()
        np.testing.assert_allclose(explorer.maps(), want, rtol=0, atol=1e-6)
    assert np.abs(explorer.data.affinity("Twice", 0, "mix#0", "dynamic")
                  - explorer.data.affinity("Twice", 0, "mix#1", "dynamic")).max() > 1e-3


def test_a_tight_page_keeps_big_whole_layers_for_a_lattice_of_queries_and_asks_for_them_by_query():
    from unifiedctx.widgets import export

    model = seeded("deit_tiny_nano", 1)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # 16 x 16 tokens
    explorer = AffinityExplorer(model, images)
    order = [("ContextNet", name) for name in explorer.layers]
    entries = export._map_entries(explorer, order, ("layer",), [0, 1])
    assert all(e["thin"] and e["entry"]["meta"]["kind"] == "maps" for e in entries)  # sent whole, live
    whole = sum(e["size"] for e in entries)
    thinned = sum(export._thinned(e)[1] for e in entries)
    assert thinned < whole / 2
    full = export.payload_of(explorer, depth=(), room=10**9)
    essentials = len(json_of(full)) - sum(len(export.embed_json(e["entry"])) + 1 for e in entries) * 2
    data = export.payload_of(explorer, depth=(), room=essentials + int(thinned * 1.5))
    assert any("lattice of queries only" in words for words in data["left_out"])
    for layer in data["traits"]["catalog"]["models"]["ContextNet"]["layers"]:
        assert [c["form"] for c in layer["components"]] == ["query"]  # the page asks by query...
        for i, entry in enumerate(data["maps"]["ContextNet"][layer["name"]]["dynamic"]["layer"]["null"]):
            meta, buffer = entry["meta"], unpack(entry).tobytes()
            assert meta["form"] == "lattice" and 8 * 16 + 8 in meta["queries"]  # ...what it holds by query
            for q in meta["queries"]:
                got, _ = payload.place_rows(meta, buffer, divmod(q, 16), (16, 16))
                want = explorer.answer({"need": "rows", "model": "ContextNet", "image": i,
                                        "layer": layer["name"], "component": "dynamic", "scale": "layer",
                                        "query": list(divmod(q, 16))})[1]
                np.testing.assert_array_equal(got.ravel(), np.frombuffer(want, np.uint8))


def json_of(body: dict) -> str:
    from unifiedctx.widgets.export import embed_json

    return embed_json(body)
