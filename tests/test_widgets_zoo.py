"""The explorer on every network the reader reads (issue 26): Hugging Face ViT, DeiT, DINOv2 (registers),
BEiT, Swin, ConvNeXt and torchvision ViT, Swin, Swin V2, ConvNeXt, ResNet, MaxViT, small random float64
models built from their configs (the builders of ``test_reader_zoos``; no downloads).

Every layer is held to what the reader gives (``layer_affinities``: each layer's rows, every component, and
its colour scale, which is the scale of all its rows), the through-depth view to ``rollout_maps``, and the
exported page to what the live widget sends, for every query. The layers are treated as big (every one sent
by query, the page storing each in its compact form: kernels, windows, or a lattice of queries), so that what
is exercised is the path of ConvNeXt-T or Swin-T at 224 px.

Skips without transformers and torchvision in the main environment; ``make timm-test`` runs it with
``UNIFIEDCTX_REQUIRE_TIMM=1``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from unifiedctx.context import rollout_maps
from unifiedctx.inspection.layers import layer_affinities
from unifiedctx.viz.scales import scale_for
from unifiedctx.widgets import AffinityExplorer
from unifiedctx.widgets import explorer_data as ed
from unifiedctx.widgets import explorer_payload as payload
from unifiedctx.widgets.export import read_payload, unpack

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import torchvision  # noqa: F401  (the timm environment: no skipping)
    import transformers  # noqa: F401
else:
    pytest.importorskip("torchvision")
    pytest.importorskip("transformers")

from test_reader_zoos import ERFS, VITS, hf_swin, image, tv_swin  # noqa: E402

#: key -> (build, image side): every family of the issue
ZOO = {
    "hf_vit": (lambda: VITS["hf_vit"][0]("sdpa"), 32),
    "hf_deit": (lambda: VITS["hf_deit"][0]("eager"), 32),
    "hf_dinov2_registers": (lambda: VITS["hf_dinov2_registers"][0]("sdpa"), 32),
    "hf_beit": (lambda: VITS["hf_beit"][0]("eager"), 32),
    "hf_swin": (hf_swin, 32),
    "hf_swin_v2": (lambda: hf_swin(v2=True), 32),
    "hf_convnext": (ERFS["hf_convnext"][0], 32),
    "tv_vit": (ERFS["tv_vit"][0], 32),
    "tv_swin": (tv_swin, 32),
    "tv_swin_v2": (lambda: tv_swin(True), 32),
    "tv_convnext": (ERFS["tv_convnext"][0], 32),
    "tv_resnet": (ERFS["tv_resnet"][0], 32),
    "tv_resnext": (ERFS["tv_resnext"][0], 32),
    "tv_maxvit": (ERFS["tv_maxvit"][0], 64),
}


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request):
    build, side = ZOO[request.param]
    model = build()
    x = image(side).float().double()  # the explorer keeps its images in float32: give both sides the same
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ed, "WHOLE_BYTES", 0)  # every layer big: sent by query, stored compactly
        explorer = AffinityExplorer({request.param: model}, x, depth="rollout")
        yield request.param, model, x, explorer


def test_every_layer_is_the_readers(zoo):
    key, model, x, explorer = zoo
    data = explorer.data
    assert explorer.layers, key
    kinds = set()
    for i in range(2):
        records = {r.name: r for r in layer_affinities(model, x[i:i + 1]) if r.grid is not None}
        assert list(records) == explorer.layers
        for name, record in records.items():
            info = data.info(key, name)
            assert info.grid == record.grid and info.form(info.components[0]) == "query"
            kinds.add(type(data.source(key, i, name)).__name__)
            h, w = record.grid
            for component in info.components:
                dense = record.components[component][0].double().numpy()
                assert info.heads[component] == dense.shape[0]
                for q in (0, (h // 2) * w + w // 3, h * w - 1):
                    got = data.rows(key, i, name, component, divmod(q, w))
                    np.testing.assert_allclose(got, dense[:, q], rtol=0, atol=1e-6, err_msg=f"{name} {q}")
                scale = data.scale(key, i, name, component)
                want = scale_for(dense.astype(np.float32))
                assert (scale.signed, scale.uniform, scale.keys) == (want.signed, want.uniform, want.keys)
                assert abs(scale.vmax - want.vmax) <= 1e-6 * abs(want.vmax) and scale.vmin == pytest.approx(
                    want.vmin, rel=1e-6)
    if key.endswith(("swin", "swin_v2", "maxvit")):
        assert "WindowedLayer" in kinds
    if key.endswith("convnext"):
        assert kinds == {"StencilLayer"}


def test_the_depth_view_is_rollout_maps(zoo):
    key, model, x, explorer = zoo
    for name in (explorer.layers[0], explorer.layers[-1]):
        explorer.show(layer=name, image_index=1)
        h, w = explorer.grid
        query = (h - 1, w // 3)
        explorer.show(query=query)
        want = rollout_maps(model, x[1:2], name, query=query)
        np.testing.assert_allclose(explorer.depth_map(), want["map"], rtol=0, atol=1e-12)
        assert explorer.depth_data()["layers"] == want["layers"]
        assert not explorer.warning


@pytest.mark.filterwarnings("ignore::unifiedctx.widgets.export.LeftOut")
def test_the_page_gives_every_query_what_the_kernel_sends(zoo, tmp_path):
    key, model, x, explorer = zoo
    page = read_payload(explorer.to_html(tmp_path / f"{key}.html"))
    layers = page["traits"]["catalog"]["models"][key]["layers"]
    assert [la["name"] for la in layers] == explorer.layers
    forms = set()
    for layer in layers:
        (h, w), comp = layer["grid"], layer["components"][0]
        entries = page["maps"][key][layer["name"]][comp["name"]]["layer"]["null"]
        assert entries, layer["name"]
        i = len(entries) - 1  # image 1, or the one entry of a static layer
        meta, buffer = entries[i]["meta"], unpack(entries[i]).tobytes()
        forms.add(meta.get("form", "whole"))
        for q in (meta["queries"] if meta.get("form") == "lattice" else range(h * w)):
            got, _ = payload.place_rows(meta, buffer, divmod(q, w), (h, w))
            want = explorer.answer({"need": "rows", "model": key, "image": i, "layer": layer["name"],
                                    "component": comp["name"], "scale": "layer", "query": list(divmod(q, w))})
            np.testing.assert_array_equal(got.ravel(), np.frombuffer(want[1], np.uint8))
        depth = page["depth"][key][layer["name"]]["rollout"]
        assert len(depth) == 2 and all(entry["data"] for entry in depth)
    if key.endswith("convnext"):  # kernels; a grid smaller than the kernel is no bigger whole
        assert "stencil" in forms and forms <= {"stencil", "whole"}
    if key.startswith("tv_swin"):
        assert "windows" in forms
