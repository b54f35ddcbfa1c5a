"""``create_model`` and ``list_models``: presets by name, with overrides, into networks.

Every model carries ``model.config``, a JSON-serialisable dict with the preset name and every
build argument, so ``from_config(model.config)`` rebuilds the same architecture (the training
engine stores it in checkpoints and refuses a checkpoint made for another one).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
import json

from torch import nn

from ..validation import check_bool, check_int
from .network import ContextNet, as_size
from .presets import PRESETS, preset
from .pretrained import apply_weights
from .spec import StageSpec, merge_mixer, mixer_options_dict, stage_specs

#: Arguments of the builder that an override may replace.
BUILD_KEYS = tuple(p for p in inspect.signature(ContextNet.__init__).parameters if p not in ("self", "name"))
#: Per-stage lists: ``dims=(...)`` and ``depths=(...)``, one entry per stage.
LIST_KEYS = {"dims": "dim", "depths": "depth"}
#: Per-stage settings; an override of one of these applies to every stage (read from StageSpec).
STAGE_KEYS = tuple(k for k in StageSpec.keys() if k not in LIST_KEYS.values())
#: Shortcuts for common mixer options: ``heads=4`` is ``mixer_options={"heads": 4}``.
MIXER_SHORTCUTS = ("heads", "kernel_size")


def list_models(pattern: str | None = None) -> list[str]:
    """Preset names (paper sizes first, then ``_cifar``, then ``_nano``), filtered by an
    ``fnmatch`` pattern such as ``"*_nano"`` or ``"container*"`` when one is given."""
    names = list(PRESETS)
    if pattern is None:
        return names
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string like 'container*', got {type(pattern).__name__}")
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _unknown(name) -> ValueError:
    close = difflib.get_close_matches(str(name), list(PRESETS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"unknown model {name!r}.{hint} list_models() gives all {len(PRESETS)} names.")


def _check_count(name: str, value, minimum: int) -> int:
    return check_int(name, value, low=minimum)


def create_model(name: str, num_classes: int | None = None, img_size=None, in_chans: int = 3, *,
                 checkpoint_path=None, pretrained: bool = False, ema: bool = False,
                 **overrides) -> ContextNet:
    """Build the preset ``name``.

    Args:
        name: a name from :func:`list_models` (an unknown one is a ``ValueError`` that suggests
            the nearest names).
        num_classes: classifier outputs (0: none); default the preset's (1000 paper, 10 cifar/nano).
        img_size: ``H`` or ``(H, W)``; default the preset's (224 paper, 32 cifar/nano). It must
            be divisible by the total stride (``ValueError`` naming ``img_size`` otherwise).
            Models with ``mixer`` layers (MLP-Mixer) are built for this size only.
        in_chans: input channels.
        checkpoint_path: load these weights: a unifiedctx checkpoint or the authors' DeiT-engine
            Container-Light checkpoint (see :mod:`unifiedctx.models.pretrained`).
        pretrained: load the authors' released ImageNet Container-Light (downloaded once into the
            cache folder; ``container_light`` only).
        ema: with either of the two, take the EMA weights of the file.
        **overrides: any builder argument (``drop_path=0.1``, ``init=...``, ``stages=[...]``, which
            replaces the whole body), a per-stage setting of :class:`StageSpec` applied to every
            stage (``layer_scale=1e-6``, ``norm="layer"``), or ``dims=(...)`` / ``depths=(...)``
            with one entry per stage. Mixer overrides merge, never drop (:func:`merge_mixer`):
            ``mixer_options={...}`` merges into the options of each stage whose mixer takes them;
            ``mixer="attention"`` keeps the stage options the new mixer takes; the shortcuts
            ``heads=4`` and ``kernel_size=7`` are mixer options; an option that no stage's mixer
            takes is a ``TypeError`` naming it.

    Returns:
        a :class:`ContextNet` with ``config``, ``img_size``, ``num_classes``, ``stride``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (see list_models()), got {type(name).__name__}")
    if name not in PRESETS:
        raise _unknown(name)
    check_bool("pretrained", pretrained)
    check_bool("ema", ema)
    cfg = preset(name)
    cfg.pop("family"), cfg.pop("size")
    cfg["img_size"] = list(as_size(cfg["img_size"] if img_size is None else img_size))
    cfg["num_classes"] = _check_count("num_classes", cfg["num_classes"] if num_classes is None
                                      else num_classes, 0)
    cfg["in_chans"] = _check_count("in_chans", in_chans, 1)
    try:
        json.dumps(overrides)
    except TypeError as err:
        raise TypeError(f"every option of create_model must be JSON-serialisable: {err}") from None
    unknown = [k for k in overrides if k not in {*BUILD_KEYS, *STAGE_KEYS, *LIST_KEYS, *MIXER_SHORTCUTS}]
    if unknown:
        options = sorted({*BUILD_KEYS, *STAGE_KEYS, *LIST_KEYS, *MIXER_SHORTCUTS} - {"stages"}) + ["stages"]
        raise TypeError(f"create_model got an unknown option {unknown[0]!r}; "
                        f"options are: {', '.join(options)}")
    for key in BUILD_KEYS:
        if key in overrides:
            value = overrides[key]
            cfg[key] = list(as_size(value)) if key == "img_size" else copy.deepcopy(value)
    specs = stage_specs(cfg["stages"])
    for key, stage_key in LIST_KEYS.items():
        if key in overrides:
            value = overrides[key]
            if not isinstance(value, (list, tuple)) or len(value) != len(specs):
                raise ValueError(f"{key} must be a list with one entry per stage ({len(specs)}), "
                                 f"got {value!r}")
            specs = [StageSpec.from_dict({**s.to_dict(), stage_key: v}, where=f"stages[{i}]")
                     for i, (s, v) in enumerate(zip(specs, value))]
    plain = {k: v for k, v in overrides.items() if k in STAGE_KEYS and k not in ("mixer", "mixer_options")}
    if plain:
        specs = [StageSpec.from_dict({**s.to_dict(), **copy.deepcopy(plain)}, where=f"stages[{i}]")
                 for i, s in enumerate(specs)]
    options = {**mixer_options_dict("mixer_options", overrides.get("mixer_options", {})),
               **{k: overrides[k] for k in MIXER_SHORTCUTS if k in overrides}}
    if "mixer" in overrides or options:
        specs = merge_mixer(specs, overrides.get("mixer"), options)
    cfg["stages"] = [s.to_dict() for s in specs]
    defaults = inspect.signature(ContextNet.__init__).parameters
    cfg = {**{k: defaults[k].default for k in BUILD_KEYS if k not in cfg}, **cfg}
    config = json.loads(json.dumps({"preset": name, **cfg}))
    model = ContextNet(**{k: v for k, v in config.items() if k != "preset"}, name=name)
    model.config = config
    return apply_weights(model, name, checkpoint_path, pretrained, ema)


def normalize_config(config: dict) -> dict:
    """``config`` with every stage dict completed by :class:`StageSpec` (defaults filled, values
    checked), so configs written before the spec compare equal to today's. No model is built."""
    if not isinstance(config, dict) or not isinstance(config.get("stages"), (list, tuple)):
        return config
    return {**config, "stages": [s.to_dict() for s in stage_specs(config["stages"])]}


def from_config(config: dict) -> nn.Module:
    """Rebuild a model from its ``model.config`` (fresh weights, same architecture): a
    :class:`ContextNet`, a :class:`~unifiedctx.models.segment.Segmenter` around one, or the U-Net."""
    from .segment import from_config as segmenter_from_config
    from .segment import is_segmenter_config

    if is_segmenter_config(config):
        return segmenter_from_config(config)
    if not isinstance(config, dict) or "preset" not in config:
        raise ValueError("config must be a model.config dict with a 'preset' key")
    rest = {k: v for k, v in config.items() if k != "preset"}
    return create_model(config["preset"], **rest)
