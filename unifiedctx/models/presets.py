"""Named presets: each is a dict of :class:`~unifiedctx.models.network.ContextNet` arguments.

A family (``container_light``) comes in three sizes that differ only in numbers:

* the paper size (ImageNet, 224 x 224, 1000 classes), checked against published counts;
* ``<name>_cifar`` (32 x 32, 10 classes): patch stride 2, then 2, 2, 1 (grids 16, 8, 4, 4) for
  the hierarchical nets, patch 4 (an 8 x 8 grid) for the isotropic ones;
* ``<name>_nano`` (32 x 32, 10 classes): a few tens of thousands of parameters, for tests and
  the notebooks' quick profile; every mixer still sees a grid of 4 x 4 or more.

Structural details that decide the published counts:

* ``container_light`` follows the authors' released code (allenai/container): patch embeddings
  are a k = stride conv then a LayerNorm (eps 1e-5); every block starts with a depthwise 3x3
  positional conv ``x + pos(x)``, uses BatchNorm for both norms and a 1x1-conv MLP; stages 1-3
  mix with 1x1 -> depthwise 5x5 -> 1x1 (``dwconv``, ``proj=True``), stage 4 with the mixed
  ``container`` affinity (one qkv map, 16 heads of 32, alpha = sigmoid(w)); BatchNorm after the
  last stage; no class token, no absolute position embedding.
* ``container`` is the paper's full Container: the mixed block in all four stages, MLP ratio 4.
* ``convnet`` is Container-Light with every stage static: the CNN of the family.
* ``deit_*`` are DeiT without the class token: the classifier reads the mean of the final
  tokens (timm's ``global_pool='avg'``), so every mixer keeps seeing images ``(B, C, H, W)``.
  That drops 2 x dim parameters (the class token and its position) and one of 197 tokens:
  -0.007 % parameters and about -0.5 % MACs against timm. The absolute position embedding
  ``(1, C, H/16, W/16)`` is resized bicubically for other input sizes.
* ``mixer_s16`` is timm's ``mixer_s16_224`` with a bias-free first token-MLP layer (2,048
  parameters fewer). It is built for one grid: another ``img_size`` needs another model.
* ``poolformer_s12`` is timm's ``poolformer_s12``: pooling minus identity, GroupNorm(1, C),
  layer scale 1e-5, 7x7 stride-4 stem and 3x3 stride-2 downsampling without norms. Its final
  norm is GroupNorm(1, C) on the map, as in the authors' code (timm puts a LayerNorm after the
  pooling: the same parameter count).
"""

from __future__ import annotations

import copy

#: (default img_size, default num_classes) of each size.
SIZE_DEFAULTS = {"paper": (224, 1000), "cifar": (32, 10), "nano": (32, 10)}

#: Stage sizes of the hierarchical families: dims, depths, patch strides, heads.
HIERARCHICAL = {
    "paper": {"dims": (64, 128, 320, 512), "depths": (3, 4, 8, 3), "strides": (4, 2, 2, 2), "heads": 16},
    "cifar": {"dims": (48, 96, 192, 384), "depths": (2, 2, 6, 2), "strides": (2, 2, 2, 1), "heads": 12},
    "nano": {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "strides": (2, 2, 2, 1), "heads": 2},
}
POOLFORMER = {
    "paper": {"dims": (64, 128, 320, 512), "depths": (2, 2, 6, 2), "strides": (4, 2, 2, 2),
              "kernels": (7, 3, 3, 3)},
    "cifar": {"dims": (48, 96, 192, 384), "depths": (2, 2, 6, 2), "strides": (2, 2, 2, 1),
              "kernels": (3, 3, 3, 3)},
    "nano": {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "strides": (2, 2, 2, 1),
             "kernels": (3, 3, 3, 3)},
}
#: Isotropic sizes: (dim, depth, heads, patch) per family and size.
DEIT = {
    "tiny": {"paper": (192, 12, 3, 16), "cifar": (192, 12, 3, 4), "nano": (32, 2, 2, 4)},
    "small": {"paper": (384, 12, 6, 16), "cifar": (384, 12, 6, 4), "nano": (48, 2, 3, 4)},
}
#: MLP-Mixer: (dim, depth, token-MLP hidden, patch); channel MLP ratio 4.
MIXER = {"paper": (512, 8, 256, 16), "cifar": (256, 8, 128, 4), "nano": (32, 2, 32, 4)}

DWCONV = {"kernel_size": 5, "proj": True}


def container_family(size: str, mixers: tuple[str, ...], ratios: tuple[float, ...]) -> dict:
    """Container-Light's skeleton with ``mixers[s]`` (``dwconv`` or ``container``) in stage s."""
    h = HIERARCHICAL[size]
    stages = []
    for dim, depth, stride, mixer, ratio in zip(h["dims"], h["depths"], h["strides"], mixers, ratios):
        options = DWCONV if mixer == "dwconv" else {"heads": h["heads"], "kernel_size": 5}
        stages.append({"dim": dim, "depth": depth, "stride": stride, "mixer": mixer,
                       "mixer_options": dict(options), "mlp_ratio": ratio, "embed_norm": "layer",
                       "norm": "batch", "pos_conv": True})
    return {"stages": stages, "final_norm": "batch", "init": "linear"}


def container_light(size: str) -> dict:
    return container_family(size, ("dwconv",) * 3 + ("container",), (8, 8, 4, 4))


def container(size: str) -> dict:
    return container_family(size, ("container",) * 4, (4, 4, 4, 4))


def convnet(size: str) -> dict:
    return container_family(size, ("dwconv",) * 4, (8, 8, 4, 4))


def poolformer_s12(size: str) -> dict:
    p = POOLFORMER[size]
    stages = [{"dim": d, "depth": n, "stride": s, "embed_kernel": k, "mixer": "pool",
               "mixer_options": {"kernel_size": 3, "subtract_input": True}, "mlp_ratio": 4,
               "norm": "group", "layer_scale": 1e-5}
              for d, n, s, k in zip(p["dims"], p["depths"], p["strides"], p["kernels"])]
    return {"stages": stages, "final_norm": "group", "init": "all"}


def isotropic(dim: int, depth: int, patch: int, mixer: str, options: dict, **extra) -> dict:
    """One stage: a patch-``patch`` embedding, ``depth`` blocks, LayerNorm (eps 1e-6)."""
    stage = {"dim": dim, "depth": depth, "stride": patch, "mixer": mixer, "mixer_options": options,
             "mlp_ratio": 4, "norm": "layer", "norm_eps": 1e-6}
    return {"stages": [stage], "final_norm": "layer", "final_eps": 1e-6, "init": "pointwise", **extra}


def deit(variant: str):
    def build(size: str) -> dict:
        dim, depth, heads, patch = DEIT[variant][size]
        return isotropic(dim, depth, patch, "attention", {"heads": heads}, abs_pos_embed=True)
    return build


def mixer_s16(size: str) -> dict:
    dim, depth, hidden, patch = MIXER[size]
    return isotropic(dim, depth, patch, "tokenmlp", {"hidden": hidden})


FAMILIES = {
    "container_light": container_light,
    "container": container,
    "convnet": convnet,
    "deit_tiny": deit("tiny"),
    "deit_small": deit("small"),
    "mixer_s16": mixer_s16,
    "poolformer_s12": poolformer_s12,
}


def _all_presets() -> dict[str, dict]:
    presets = {}
    for size in SIZE_DEFAULTS:
        for family, build in FAMILIES.items():
            name = family if size == "paper" else f"{family}_{size}"
            img_size, num_classes = SIZE_DEFAULTS[size]
            presets[name] = {**build(size), "img_size": img_size, "num_classes": num_classes,
                             "family": family, "size": size}
    return presets


PRESETS: dict[str, dict] = _all_presets()


def preset(name: str) -> dict:
    """A deep copy of the preset ``name`` (callers may edit it freely)."""
    return copy.deepcopy(PRESETS[name])
