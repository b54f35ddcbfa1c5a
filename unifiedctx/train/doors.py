"""Checks at the door of the training functions whose modules have none of their own yet.

Each check raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
that names the argument, what it got and what was expected, through :mod:`unifiedctx.validation`,
before anything is built or written:

    check_build_model("convnet_nano", data, seed="a")
    # TypeError: seed must be an int, got str 'a'
"""

from __future__ import annotations

from ..validation import check_choice, check_seed

__all__ = ["check_build_model", "check_dataset"]

#: What :func:`unifiedctx.train.build_model` reads from a data set to size a model.
SIZING = ("num_classes", "image_size", "channels")


def check_dataset(name: str, data):
    """``data`` if it says how to size a model (``num_classes``, ``image_size = (H, W)`` and
    ``channels``, as every data set of :func:`unifiedctx.data.load` does); a ``TypeError`` naming
    ``name`` and the missing attributes otherwise (never an ``AttributeError`` from deep inside)."""
    missing = [a for a in SIZING if not hasattr(data, a)]
    if missing:
        shown = f"{type(data).__name__} {data!r}"[:120]
        raise TypeError(f"{name} must be a data set from unifiedctx.data.load (ImageData, FolderData, "
                        f"SegmentationData) with {', '.join(SIZING)}; got {shown}, which has no "
                        f"{', '.join(missing)}")
    return data


def check_build_model(model_name, data, seed) -> None:
    """The arguments of ``build_model(model_name, data, seed)``: a preset of
    :func:`unifiedctx.models.list_models`, a data set (:func:`check_dataset`) and a seed in
    ``[0, 2**63 - 1]`` (:func:`unifiedctx.validation.check_seed`; ``"a"``, ``1.5``, ``True``, ``-1``
    are refused here, not by ``torch.manual_seed``)."""
    from unifiedctx.models import list_models

    check_choice("model_name", model_name, list_models())
    check_dataset("data", data)
    check_seed("seed", seed)
