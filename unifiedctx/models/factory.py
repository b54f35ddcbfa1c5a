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

from .network import ContextNet, as_size, stage_settings
from .presets import PRESETS, preset
from .pretrained import apply_weights

#: Arguments of the builder that an override may replace.
BUILD_KEYS = tuple(p for p in inspect.signature(ContextNet.__init__).parameters if p not in ("self", "name"))
#: Per-stage settings; an override of one of these applies to every stage.
STAGE_KEYS = ("mixer", "mixer_options", "mlp_ratio", "stride", "embed_kernel", "embed_norm", "embed_eps",
              "norm", "norm_eps", "pos_conv", "layer_scale")
#: Per-stage lists: ``dims=(...)`` and ``depths=(...)``, one entry per stage.
LIST_KEYS = {"dims": "dim", "depths": "depth"}


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
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


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
        **overrides: any builder argument (``drop_path=0.1``, ``init=...``, ``stages=[...]``), a
            per-stage setting applied to every stage (``layer_scale=1e-6``, ``norm="layer"``,
            ``mixer="attention"``), or ``dims=(...)`` / ``depths=(...)`` with one entry per stage.

    Returns:
        a :class:`ContextNet` with ``config``, ``img_size``, ``num_classes``, ``stride``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string (see list_models()), got {type(name).__name__}")
    if name not in PRESETS:
        raise _unknown(name)
    cfg = preset(name)
    cfg.pop("family"), cfg.pop("size")
    cfg["img_size"] = list(as_size(cfg["img_size"] if img_size is None else img_size))
    cfg["num_classes"] = _check_count("num_classes", cfg["num_classes"] if num_classes is None
                                      else num_classes, 0)
    cfg["in_chans"] = _check_count("in_chans", in_chans, 1)
    for key, value in overrides.items():
        if key in BUILD_KEYS:
            cfg[key] = list(as_size(value)) if key == "img_size" else copy.deepcopy(value)
        elif key in STAGE_KEYS:
            for stage in cfg["stages"]:
                stage[key] = copy.deepcopy(value)
        elif key in LIST_KEYS:
            if not isinstance(value, (list, tuple)) or len(value) != len(cfg["stages"]):
                raise ValueError(f"{key} must be a list with one entry per stage "
                                 f"({len(cfg['stages'])}), got {value!r}")
            for stage, v in zip(cfg["stages"], value):
                stage[LIST_KEYS[key]] = v
        else:
            options = sorted({*BUILD_KEYS, *STAGE_KEYS, *LIST_KEYS} - {"stages"}) + ["stages"]
            raise TypeError(f"create_model got an unknown option {key!r}; options are: {', '.join(options)}")
    cfg["stages"] = stage_settings(cfg["stages"])
    defaults = inspect.signature(ContextNet.__init__).parameters
    cfg = {**{k: defaults[k].default for k in BUILD_KEYS if k not in cfg}, **cfg}
    try:
        config = json.loads(json.dumps({"preset": name, **cfg}))
    except TypeError as err:
        raise TypeError(f"every option of create_model must be JSON-serialisable: {err}") from None
    model = ContextNet(**{k: v for k, v in config.items() if k != "preset"}, name=name)
    model.config = config
    return apply_weights(model, name, checkpoint_path, pretrained, ema)


def from_config(config: dict) -> ContextNet:
    """Rebuild a model from its ``model.config`` (fresh weights, same architecture)."""
    if not isinstance(config, dict) or "preset" not in config:
        raise ValueError("config must be a model.config dict with a 'preset' key")
    rest = {k: v for k, v in config.items() if k != "preset"}
    return create_model(config["preset"], **rest)
