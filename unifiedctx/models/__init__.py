"""Networks built from context-aggregation blocks: one builder, named presets, and tools to
count their cost and read their affinities.

    model = create_model("container_light")                 # the authors' Container-Light
    list_models("*_nano")                                   # tiny presets for CPUs
    record_affinities(model, x)                             # name -> (B|1, M, N, N), any nn.Module
    count_params(model), count_macs(model, img_size=448)
    StageSpec(dim=64, depth=3, stride=4, mixer="dwconv")    # one stage, checked; .to_dict() is JSON
"""

from __future__ import annotations

from ..inspection.layers import (  # the reader's public names, also here beside the builder
    LayerAffinity,
    layer_affinities,
    mixer_components,
    mixer_inputs,
    mixer_layers,
    mixing_weights,
    record_affinities,
    record_components,
)
from .blocks import Block
from .factory import create_model, from_config, list_models, normalize_config
from .flops import SDPA_FLOPS, count_flops, count_macs, count_params
from .network import ContextNet, Stage
from .presets import PRESETS
from .spec import STAGE_DEFAULTS, STAGE_REQUIRED, StageSpec, merge_mixer

__all__ = [
    "LayerAffinity", "layer_affinities",
    "PRESETS", "SDPA_FLOPS", "STAGE_DEFAULTS", "STAGE_REQUIRED", "Block", "StageSpec", "merge_mixer",
    "ContextNet", "Stage", "count_flops", "count_macs", "count_params",
    "create_model", "from_config", "list_models", "mixer_components", "mixer_inputs", "mixer_layers",
    "mixing_weights", "normalize_config", "record_affinities", "record_components",
]
