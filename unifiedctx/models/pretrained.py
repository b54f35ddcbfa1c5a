"""Trained weights into unifiedctx models: the authors' released Container-Light, and our own checkpoints.

``create_model(name, checkpoint_path=PATH)`` (or ``pretrained=True``) ends in :func:`load_weights`,
which reads ``PATH`` with ``torch.load(..., weights_only=True)`` and tells two kinds of file apart:

* a **unifiedctx checkpoint** (:mod:`unifiedctx.files`): loaded by ``load_checkpoint``,
  which refuses one made for another architecture;
* a **DeiT-engine checkpoint** of the authors' code (allenai/container): a dict with ``model`` (the
  state dict), possibly ``model_ema``, ``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler`` and
  ``args`` (an ``argparse.Namespace``, the one class beyond plain tensors and containers that the
  unpickler is allowed to build). Its keys are renamed to ours by :func:`authors_key_map`.

The authors' ``container_v1_light`` and our ``container_light`` compute the same function, so the
mapping only renames, except for three reshapes: the mixed blocks' ``conv1`` and ``conv2`` are 1x1
convolutions ``(O, I, 1, 1)`` where we use ``nn.Linear`` ``(O, I)`` on tokens, and ``sa_weight``
``(1,)`` is our scalar logit ``mix_logit`` ``()`` (alpha = sigmoid(w)). Every key of the file must be
used once and every tensor of the model filled once, or the load fails naming the keys.

The model is returned in the floating dtype the file stores (float32 for the release), so a float64
checkpoint is not rounded on the way in.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..files import FORMAT, check_weights_entry, load_weights_into, read_checkpoint
from ..validation import check_bool, check_module, check_path

#: The authors' ImageNet-1k Container-Light (82.3 % top-1), linked from their README's model zoo.
RELEASE_DRIVE_ID = "1WMOWoxTX7AQDCbfMYh7naqIHube3K85A"
RELEASE_FILE = "container_light_imagenet1k.pth"
RELEASE_URL = f"https://drive.usercontent.google.com/download?id={RELEASE_DRIVE_ID}&export=download&confirm=t"
RELEASE_PAGE = f"https://drive.google.com/file/d/{RELEASE_DRIVE_ID}/view"
#: No checksum of the release is published; a file smaller than the float32 weights of
#: Container-Light's 20.9 M parameters (83.6 MB) cannot be it (Drive answers with an HTML page).
RELEASE_MIN_BYTES = 80_000_000
#: Presets the release fits.
RELEASE_MODELS = ("container_light",)


# ----------------------------------------------------------------------------- the key map

def _linear_from_1x1(t: torch.Tensor) -> torch.Tensor:
    """``(O, I, 1, 1)`` 1x1-conv weight -> ``(O, I)`` linear weight (other tensors unchanged)."""
    return t.flatten(1) if t.dim() == 4 else t


def _scalar(t: torch.Tensor) -> torch.Tensor:
    """``(1,)`` -> ``()``."""
    return t.reshape(())


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


# (our name pattern, the authors' name, how the tensor changes): stage index s is 0-based here and
# 1-based in their names; j is the block's index in its stage.
_BLOCK = r"stages\.(?P<s>\d+)\.blocks\.(?P<j>\d+)\."
_RULES: list[tuple[str, str, Callable]] = [
    (r"stages\.(?P<s>\d+)\.embed\.(?P<rest>(proj|norm)\..+)", "patch_embed{S}.{rest}", _same),
    (_BLOCK + r"pos\.(?P<rest>.+)", "blocks{S}.{j}.pos_embed.{rest}", _same),
    (_BLOCK + r"(?P<rest>(norm1|norm2|mlp\.fc1|mlp\.fc2)\..+)", "blocks{S}.{j}.{rest}", _same),
    # static blocks: 1x1 -> depthwise 5x5 -> 1x1
    (_BLOCK + r"mixer\.proj_in\.(?P<rest>.+)", "blocks{S}.{j}.conv1.{rest}", _same),
    (_BLOCK + r"mixer\.conv\.(?P<rest>.+)", "blocks{S}.{j}.attn.{rest}", _same),
    (_BLOCK + r"mixer\.proj_out\.(?P<rest>.+)", "blocks{S}.{j}.conv2.{rest}", _same),
    # mixed blocks: qkv as a 1x1 conv C -> 3C, depthwise 5x5 on v, 1x1 output projection, the knob w
    (_BLOCK + r"mixer\.qkv\.(?P<rest>.+)", "blocks{S}.{j}.conv1.{rest}", _linear_from_1x1),
    (_BLOCK + r"mixer\.static\.(?P<rest>.+)", "blocks{S}.{j}.conv.{rest}", _same),
    (_BLOCK + r"mixer\.proj\.(?P<rest>.+)", "blocks{S}.{j}.conv2.{rest}", _linear_from_1x1),
    (_BLOCK + r"mixer\.mix_logit", "blocks{S}.{j}.sa_weight", _scalar),
    # the final BatchNorm after the last stage, and the classifier
    (r"stages\.(?P<s>\d+)\.norm\.(?P<rest>.+)", "norm.{rest}", _same),
    (r"head\.(?P<rest>.+)", "head.{rest}", _same),
]


def authors_key_map(our_keys) -> dict[str, tuple[str, Callable]]:
    """Our state-dict name -> (the authors' ``container_v1_light`` name, tensor transform).

    Stage ``s`` (0-based, ours) is the authors' ``patch_embed{s+1}`` / ``blocks{s+1}``; within a block
    ``pos`` is ``pos_embed``; a static mixer's ``proj_in`` / ``conv`` / ``proj_out`` are ``conv1`` /
    ``attn`` / ``conv2``; a mixed one's ``qkv`` / ``static`` / ``proj`` / ``mix_logit`` are ``conv1`` /
    ``conv`` / ``conv2`` / ``sa_weight``; the last stage's ``norm`` is ``norm``.

    Raises:
        ValueError: for a name no rule covers (the model is not Container-Light shaped).
    """
    out, unknown = {}, []
    for key in our_keys:
        for pattern, target, transform in _RULES:
            match = re.fullmatch(pattern, key)
            if match:
                fields = match.groupdict()
                if "s" in fields:
                    fields["S"] = int(fields["s"]) + 1
                out[key] = (target.format(**fields), transform)
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"the authors' Container-Light has no counterpart for {len(unknown)} tensors "
                         f"of this model: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    return out


def _listing(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")


def convert_authors_state_dict(source: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """The authors' Container-Light state dict renamed and reshaped into ``model``'s names.

    Every tensor of ``model.state_dict()`` is filled from exactly one key of ``source`` and every key
    of ``source`` is used exactly once (``num_batches_tracked`` included).

    Raises:
        ValueError: naming the keys of ours that the file lacks, the keys of the file that nothing of
            ours uses, or a key whose shape differs (with both shapes).
    """
    ours = model.state_dict()
    mapping = authors_key_map(ours)
    wanted = {src for src, _ in mapping.values()}
    missing = sorted(k for k, (src, _) in mapping.items() if src not in source)
    unused = sorted(set(source) - wanted)
    if len(wanted) != len(mapping):
        raise ValueError("two tensors of this model map to one key of the authors' file: a wrong key map")
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"the file lacks {len(missing)} keys the model needs: "
                         f"{_listing(mapping[k][0] + f' (for {k})' for k in missing)}")
        if unused:
            parts.append(f"the file has {len(unused)} keys this model does not use: {_listing(unused)}")
        raise ValueError("the checkpoint does not fit Container-Light: " + "; ".join(parts))
    converted = {}
    for key, (src, transform) in mapping.items():
        tensor = source[src]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{src} in the checkpoint is a {type(tensor).__name__}, not a tensor")
        value = transform(tensor) if tensor.numel() == ours[key].numel() else tensor
        if tuple(value.shape) != tuple(ours[key].shape):
            raise ValueError(f"{src} has shape {tuple(tensor.shape)} in the checkpoint, but {key} of the "
                             f"model has shape {tuple(ours[key].shape)}")
        converted[key] = value
    return converted


# ----------------------------------------------------------------------------- reading files

def read_weights_file(path) -> dict:
    """``torch.load(path, weights_only=True)`` allowing ``argparse.Namespace`` and nothing else.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a torch checkpoint dict, or it needs some other class to unpickle.
    """
    path = check_path("path", path, kind="file", what="checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle that needs code, a truncated file, not a torch file at all
        reason = " ".join(str(err).split())[:500]
        raise ValueError(f"{path} cannot be read as a weights-only checkpoint (only tensors, plain "
                         f"containers and argparse.Namespace are allowed): {reason}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _floating_dtype(tensors) -> torch.dtype | None:
    dtypes = {t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _pick_deit_state(state: dict, path, ema: bool) -> dict:
    key = "model_ema" if ema else "model"
    if key not in state:
        hint = " (it was trained without model EMA; call with ema=False)" if ema else ""
        raise ValueError(f"{path} has no {key!r} entry{hint}; its entries are: {', '.join(map(str, state))}")
    weights = state[key]
    if not isinstance(weights, dict):
        raise ValueError(f"{path}[{key!r}] is a {type(weights).__name__}, not a state dict")
    return weights


def load_weights(model: nn.Module, path, *, ema: bool = False) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (in place; its train/eval mode is kept) and return it.

    ``path`` is a unifiedctx checkpoint or a DeiT-engine checkpoint of the authors' Container-Light
    (see the module docstring); ``ema=True`` takes the EMA weights (``"ema"`` in ours, ``"model_ema"``
    in theirs). The model is first cast to the file's floating dtype when the file has one.

    Raises:
        ValueError: a file of another architecture, missing / unused keys, a shape mismatch, no EMA
            weights when asked for, a file that needs a forbidden class to unpickle.
    """
    check_module("model", model)
    check_bool("ema", ema)
    state = read_weights_file(path)
    if state.get("format") == FORMAT:
        state = read_checkpoint(path)
        weights = check_weights_entry(path, state, "ema" if ema and state.get("ema") is not None else "model")
        dtype = _floating_dtype(weights.values())
        if dtype is not None:
            model.to(dtype)
        return load_weights_into(model, path, state, ema=ema)
    weights = _pick_deit_state(state, path, ema)
    try:
        converted = convert_authors_state_dict(weights, model)
    except ValueError as err:
        raise ValueError(f"{path} is neither a unifiedctx checkpoint (no format {FORMAT!r}) nor one of "
                         f"the authors' Container-Light that fits this model: {err}") from err
    dtype = _floating_dtype(converted.values())
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(converted, strict=True)
    return model


# ----------------------------------------------------------------------------- the release

def cache_dir() -> Path:
    """Where released weights are kept: ``$UNIFIEDCTX_CACHE/weights``, else
    ``~/.cache/unifiedctx/weights``."""
    root = os.environ.get("UNIFIEDCTX_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "unifiedctx") / "weights"


def release_path() -> Path:
    """The file :func:`fetch_release` writes and ``pretrained=True`` reads."""
    return cache_dir() / RELEASE_FILE


def fetch_release(progress: bool = True, url: str | None = None) -> Path:
    """The authors' Container-Light checkpoint in the cache folder, downloaded once if absent.

    The download shows a progress bar and is atomic (a temporary file renamed into place only when
    complete and at least ``RELEASE_MIN_BYTES`` long: no checksum of the release is published).

    Raises:
        unifiedctx.data.DatasetUnavailable: the network is unreachable; the message names the file to
            fetch (``RELEASE_PAGE``) and where to put it (:func:`release_path`).
    """
    from ..data.base import DatasetUnavailable
    from ..data.download import download

    dest = release_path()
    if dest.is_file():
        return dest
    url = RELEASE_URL if url is None else url
    try:
        return download(url, dest, md5=None, progress=progress, min_bytes=RELEASE_MIN_BYTES)
    except DatasetUnavailable as err:
        raise DatasetUnavailable(
            f"The authors' Container-Light weights are not in the cache and could not be downloaded ({err}). "
            f"Fetch the file {RELEASE_PAGE} (Google Drive id {RELEASE_DRIVE_ID}, the 'model' link of "
            f"Container-Light in the README of allenai/container) in a browser and save it as {dest}; "
            f"or pass checkpoint_path= to wherever you saved it.") from err


def apply_weights(model: nn.Module, name: str, checkpoint_path=None, pretrained: bool = False,
                  ema: bool = False) -> nn.Module:
    """``create_model``'s last step: load ``checkpoint_path``, or the release when ``pretrained``.

    Raises:
        ValueError: ``pretrained=True`` for a preset the release does not fit, or with a
            ``checkpoint_path`` as well (say which one).
    """
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be True or False, got {ema!r}")
    if pretrained and checkpoint_path is not None:
        raise ValueError("give pretrained=True or checkpoint_path=..., not both")
    if pretrained:
        if name not in RELEASE_MODELS:
            raise ValueError(f"pretrained=True: released weights exist only for {', '.join(RELEASE_MODELS)}, "
                             f"not {name!r}; use checkpoint_path= for your own")
        checkpoint_path = fetch_release()
    if checkpoint_path is None:
        if ema:
            raise ValueError("ema=True needs checkpoint_path= or pretrained=True")
        return model
    if not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a path, got {type(checkpoint_path).__name__}")
    return load_weights(model, checkpoint_path, ema=ema)


__all__ = ["RELEASE_DRIVE_ID", "RELEASE_PAGE", "RELEASE_URL", "apply_weights", "authors_key_map", "cache_dir",
           "convert_authors_state_dict", "fetch_release", "load_weights", "read_weights_file", "release_path"]
