"""``inspect_model`` on whole timm networks (random float64 weights, small configurations): every view,
built from the input its layer received in one forward pass, rebuilds that layer's output to 1e-12.
Skips without timm in the main environment; ``make test`` runs it in ``.venv-timm`` where
``UNIFIEDCTX_REQUIRE_TIMM=1`` makes a missing timm a failure."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from conftest import perturb

from unifiedctx import inspect_model

if os.environ.get("UNIFIEDCTX_REQUIRE_TIMM") == "1":
    import timm  # the timm environment: no skipping
else:
    timm = pytest.importorskip("timm")

TOL = 1e-12

#: key -> (a registered timm name, or "module.Class" under timm.models for a custom size; its
#: arguments; the input size; {view type: how many views})
MODELS = {
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {"img_size": 64, "depth": 2}, 64,
                       {"timm Attention": 2}),
    "mixer": ("mlp_mixer.MlpMixer", {"img_size": 64, "patch_size": 16, "num_blocks": 4, "embed_dim": 32}, 64,
              {"timm MixerBlock": 4}),
    "poolformer": ("poolformer_s12", {}, 64, {"timm Pooling": 12}),
    "convnext": ("convnext_atto", {}, 64, {"Conv2d (depthwise)": 12}),
    "resnet": ("resnet18", {}, 64, {"Conv2d (full, im2col)": 13}),
    "swin": ("swin_transformer.SwinTransformer", {"img_size": 56, "window_size": 7, "embed_dim": 16,
                                                  "depths": (2, 2), "num_heads": (2, 2)}, 56,
             {"Swin WindowAttention": 4}),
    "convit": ("convit.ConVit", {"img_size": 64, "depth": 3, "local_up_to_layer": 2, "embed_dim": 32,
                                 "num_heads": 4}, 64, {"ConViT GPSA": 2, "ConViT MHSA": 1}),
}


def build(key):
    name, kwargs, size, _ = MODELS[key]
    torch.manual_seed(0)
    if "." in name:
        module, cls = name.split(".")
        model = getattr(getattr(timm.models, module), cls)(num_classes=5, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    model = perturb(model.double(), std=0.1)
    for m in model.modules():  # keep BatchNorm statistics sane after perturbing everything
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(1 + 0.1 * m.weight)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model.eval(), x


@pytest.mark.parametrize("key", list(MODELS))
def test_every_view_rebuilds_its_layer(key):
    model, x = build(key)
    result = inspect_model(model, x)
    counts = Counter(view.module_type for view in result.values())
    assert counts == Counter(MODELS[key][3])
    errors = result.rebuild_errors()
    assert max(errors.values()) < TOL, {k: v for k, v in errors.items() if v >= TOL}
    for view in result.values():
        if view.kind in ("dynamic", "mixed") and view.module_type != "timm MixerBlock":  # softmax rows
            torch.testing.assert_close(view.affinity.sum(-1), torch.ones_like(view.affinity[..., 0]))
    assert any("stride" in why for why in result.skipped.values())  # the patch embedding / stem


def test_deit_class_and_distillation_tokens():
    model, x = build("deit_distilled")
    view = inspect_model(model, x)["blocks.1.attn"]
    assert view.prefix_tokens == 2 and view.grid == (4, 4) and view.pixel_stride == (16.0, 16.0)
    assert view.affinity.shape == (1, 3, 18, 18) and view.grid_affinity().shape == (1, 3, 16, 16)


def test_swin_shifted_windows_carry_their_mask():
    model, x = build("swin")
    result = inspect_model(model, x)
    shifted = {name: view.notes["shifted"] for name, view in result.items()}
    assert shifted["layers.0.blocks.0.attn"] is False and shifted["layers.0.blocks.1.attn"] is True
    view = result["layers.0.blocks.1.attn"]
    assert view.grid == (7, 7) and view.affinity.shape[0] == 4  # 2 x 2 windows of the 14 x 14 map
    assert view.pixel_stride == (4.0, 4.0)


def test_convnext_weight_stays_in_its_window():
    model, x = build("convnext")
    view = inspect_model(model, x, layers="stages.1.*.conv_dw")["stages.1.blocks.0.conv_dw"]
    assert view.grid == (8, 8)
    a = view.affinity[0]  # (C, N, N): token i takes nothing from tokens more than 3 steps away
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    dy, dx = (ys.reshape(-1, 1) - ys.reshape(1, -1)).abs(), (xs.reshape(-1, 1) - xs.reshape(1, -1)).abs()
    far, near = (dy > 3) | (dx > 3), (dy <= 3) & (dx <= 3)
    assert a[:, far].abs().max() == 0 and a[:, near].abs().min() > 0


def test_model_left_as_found():
    model, x = build("convit")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inspect_model(model, x)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
