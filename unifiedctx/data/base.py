"""The container every small-image dataset is returned in (:class:`ImageData`), its error, and
where datasets are cached (:func:`default_data_root`)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..validation import check_int, check_seed

ENV_VAR = "UNIFIEDCTX_DATA"


class DatasetUnavailable(RuntimeError):
    """A dataset cannot be had: offline, a download cut short, a checksum that does not match,
    a damaged cache. The message says which file to fetch, from which URL, and where to put it."""


def default_data_root() -> Path:
    """Where datasets are cached: ``$UNIFIEDCTX_DATA`` if set; else the ``data/`` folder of the
    repository when running from a checkout (the package's parent holds ``pyproject.toml`` and
    ``data/``); else ``~/.cache/unifiedctx``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "data").is_dir() and (repo / "pyproject.toml").is_file():
        return repo / "data"
    return Path.home() / ".cache" / "unifiedctx"


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images ``x`` of shape ``(N, C, H, W)``,
    in ``[0, 1]`` units, accumulated in float64 over chunks of ``chunk`` images (so 50,000 CIFAR
    images never become one float64 copy)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise TypeError(f"x must be a uint8 tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def tensor_fingerprint(*tensors: torch.Tensor, extra=(), samples: int = 65536) -> str:
    """16 hex digits of SHA-256 over each tensor's shape, dtype, exact sum and ``samples`` entries
    taken at a stride (computed on the tensor's device; only the sample moves to the host)."""
    digest = hashlib.sha256(repr(extra).encode())
    for t in tensors:
        flat = t.detach().reshape(-1)
        stride = max(1, flat.numel() // samples)
        total = int(flat.sum(dtype=torch.int64)) if not t.is_floating_point() else float(flat.double().sum())
        digest.update(f"{tuple(t.shape)} {t.dtype} {total}".encode())
        digest.update(flat[::stride].cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class ImageData:
    """A small-image dataset held as one uint8 tensor per split, ready to move to a device.

    Attributes:
        name: the dataset's name (``"cifar10"``, ``"texture"``, ...).
        train_x: uint8 ``(N, C, H, W)`` training images.
        train_y: int64 ``(N,)`` training labels in ``[0, num_classes)``.
        test_x: uint8 ``(M, C, H, W)`` test images.
        test_y: int64 ``(M,)`` test labels.
        classes: the class names, ``classes[label]``.
        mean, std: per channel, in ``[0, 1]`` units, measured on the training split; used by
            :meth:`normalize`.
        options: the options :func:`unifiedctx.data.load` was called with (for the record).
        crop_ok: random shifted crops fit this data (``augment=True`` uses them; False for digits,
            centred by construction, and for the synthetic tasks).
        flip_ok: a left-right mirror keeps every label (False for digits and oriented textures).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: dict = field(default_factory=dict)
    crop_ok: bool = True
    flip_ok: bool = True

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise TypeError(f"{split}_x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise TypeError(f"{split}_y must be int64 ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"train_x and test_x images differ: {tuple(self.train_x.shape[1:])} "
                             f"vs {tuple(self.test_x.shape[1:])}")
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean and std need one value per channel ({self.channels}), "
                             f"got {len(self.mean)} and {len(self.std)}")
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.classes = list(self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Channels C of every image."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={tuple(self.train_x.shape)}, "
                f"test={tuple(self.test_x.shape)}, classes={self.num_classes}, device={self.train_x.device})")

    def fingerprint(self) -> str:
        """A short hash of the contents, cheap enough for every run: per split the shape, the
        full sum of the pixels, about 64k pixels at a stride and every label, plus the class
        names, mean and std. Two datasets of the same shape with other images differ in it."""
        return tensor_fingerprint(self.train_x, self.train_y, self.test_x, self.test_y,
                                  extra=(self.classes, self.mean, self.std))

    def to(self, device: torch.device | str) -> ImageData:
        """A new :class:`ImageData` whose four tensors live on ``device`` (still uint8: a CIFAR-10
        training set is 150 MB, so it fits on any GPU and batches are cut there)."""
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                                   test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float32 ``(x / 255 - mean) / std`` for uint8 images ``x`` of shape ``(B, C, H, W)`` or
        ``(C, H, W)``, computed on ``x``'s device."""
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            raise TypeError(f"x must be a uint8 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() not in (3, 4) or x.shape[-3] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, H, W) or ({self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return (x.to(torch.float32) / 255.0 - mean) / std

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> ImageData:
        """A new :class:`ImageData` with ``n_train`` training and ``n_test`` test images drawn at
        random without replacement (``torch.Generator`` seeded with ``seed``; ``None`` keeps the
        whole split). ``mean`` and ``std`` are kept, so a model sees the same normalisation."""
        gen = torch.Generator().manual_seed(check_seed("seed", seed))
        picked = {}
        for split, n in (("train", n_train), ("test", n_test)):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if n is None:
                picked[split] = (x, y)
                continue
            n = check_int(f"n_{split}", n, low=1, high=int(x.shape[0]))
            idx = torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)
            picked[split] = (x[idx], y[idx])
        return dataclasses.replace(self, train_x=picked["train"][0], train_y=picked["train"][1],
                                   test_x=picked["test"][0], test_y=picked["test"][1])
