"""Multi-crop augmentation on image tensors (DINO, Caron et al. 2021), batched for a CPU.

From a batch ``x`` ``(B, C, H, W)`` (normalised images) one call gives

    [global_1, global_2, local_1, ..., local_L]      globals (B, C, G, G), locals (B, C, S, S)

Every crop is a random-resized crop: area fraction ``a ~ U(scale)`` of the image, aspect ratio
``r`` log-uniform in ``(3/4, 4/3)``, so the box is ``h = H sqrt(a / r)``, ``w = W sqrt(a r)``
(clipped to the image), its centre uniform among the positions that keep it inside. The box is
an affine map of the output grid onto the input,

    theta_b = [[w_b / W * f_b, 0, c_x],        f_b = -1 for a horizontal flip, else 1
               [0, h_b / H,      c_y]]         (c_x, c_y) the box centre in [-1, 1] coordinates

and ``F.grid_sample`` (bilinear) reads all the crops of a set in one call. Colour jitter
(brightness, contrast, saturation, each a random factor in ``1 +- strength``, applied with
probability ``jitter_p``) works in [0, 1] pixel space: ``x01 = x * std + mean``, jitter, clamp,
normalise back.

All randomness comes from ``generator`` or, without one, from the global torch RNG, which the
training engine re-seeds at the start of every epoch: a resumed run draws the same crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ...validation import check_float, check_int, check_positive_int


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def crop_boxes(
    n: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Affine matrices ``(n, 2, 3)`` (float64) of random-resized crops, in ``affine_grid`` units.

    Box height and width are fractions of the image: ``h = sqrt(a / r)``, ``w = sqrt(a r)``
    clipped to 1, with ``a ~ U(scale)`` and ``log r ~ U(log ratio)``; the centre is uniform in
    ``[-(1 - w), 1 - w] x [-(1 - h), 1 - h]``; with ``flip`` half of the boxes mirror x.
    """
    area = _uniform(n, scale[0], scale[1], generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    r = log_r.exp()
    h = (area / r).sqrt().clamp(max=1.0)
    w = (area * r).sqrt().clamp(max=1.0)
    cy = (1.0 - h) * (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1.0)
    cx = (1.0 - w) * (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1.0)
    sign = torch.ones(n, dtype=torch.float64)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def resized_crops(x: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops ``(n B, C, size, size)`` of ``x`` ``(B, C, H, W)`` by ``theta`` ``(n B, 2, 3)``.

    Row ``k B + b`` of the output is crop ``k`` of image ``b`` (one ``grid_sample`` call)."""
    b = x.shape[0]
    n = theta.shape[0] // b
    src = x if n == 1 else x.repeat(n, 1, 1, 1)
    grid = F.affine_grid(
        theta.to(x.dtype).to(x.device), [theta.shape[0], x.shape[1], size, size], align_corners=False
    )
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x01: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma ``(B, 1, H, W)`` of RGB ``x01`` ``(B, 3, H, W)``."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 * weights).sum(1, keepdim=True)


def color_jitter(
    x01: torch.Tensor, strength: float = 0.4, p: float = 0.8, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Brightness, contrast and saturation jitter of RGB images in [0, 1], ``(B, 3, H, W)``.

    With probability ``p`` per image, factors ``f ~ U(1 - strength, 1 + strength)`` (one each):
    ``x <- f_b x``; ``x <- f_c (x - mean(grey(x))) + mean(grey(x))``;
    ``x <- f_s (x - grey(x)) + grey(x)``; each step clamped to [0, 1].
    """
    b = x01.shape[0]
    factors = _uniform(3 * b, 1.0 - strength, 1.0 + strength, generator).view(3, b, 1, 1, 1)
    on = (torch.rand(b, generator=generator) < p).view(b, 1, 1, 1)
    factors = torch.where(on, factors, torch.ones_like(factors)).to(x01.dtype).to(x01.device)
    out = (x01 * factors[0]).clamp(0, 1)
    mean = _grey(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * factors[1] + mean).clamp(0, 1)
    grey = _grey(out)
    return ((out - grey) * factors[2] + grey).clamp(0, 1)


def is_grey(images: torch.Tensor) -> bool:
    """True when every image of ``images`` ``(N, C, H, W)`` has one channel or identical channels
    (grey digits replicated to RGB)."""
    return images.shape[1] == 1 or bool((images == images[:, :1]).all())


class MultiCrop:
    """Two global and ``local_crops`` local random-resized crops of every image of a batch.

    Args:
        global_size: side of the global crops (the network's input size).
        local_size: side of the local crops (the network's stride must divide it).
        local_crops: how many local crops per image (0: globals only).
        global_scale, local_scale: ranges of the crop's area fraction.
        flip: mirror half of the crops horizontally (off for digits: a mirrored 2 is not a 2).
        jitter: colour-jitter strength (0: off; needs 3 channels).
        mean, std: the per-channel normalisation of the input (used by the jitter only).
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        local_crops: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        flip: bool = False,
        jitter: float = 0.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        check_positive_int("global_size", global_size)
        check_positive_int("local_size", local_size)
        check_int("local_crops", local_crops, low=0)
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1, got {(lo, hi)}")
        check_float("jitter", jitter, low=0.0, high=1.0, high_open=True)
        if jitter > 0 and len(mean) != 3:
            raise ValueError(f"colour jitter needs 3-channel images; mean has {len(mean)} channels")
        self.global_size, self.local_size, self.local_crops = global_size, local_size, local_crops
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.flip, self.jitter = bool(flip), float(jitter)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def settings(self) -> dict:
        """The JSON-able settings that change the crops."""
        return {
            "global_size": self.global_size,
            "local_size": self.local_size,
            "local_crops": self.local_crops,
            "global_scale": list(self.global_scale),
            "local_scale": list(self.local_scale),
            "flip": self.flip,
            "jitter": self.jitter,
        }

    def _jitter(self, crops: torch.Tensor, generator) -> torch.Tensor:
        if self.jitter == 0:
            return crops
        mean, std = self.mean.to(crops), self.std.to(crops)
        return (color_jitter(crops * std + mean, self.jitter, generator=generator) - mean) / std

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``x`` ``(B, C, H, W)`` -> ``[global_1, global_2, local_1, ...]`` (see the module docstring)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        b = x.shape[0]
        sets = [(2, self.global_scale, self.global_size)]
        if self.local_crops:
            sets.append((self.local_crops, self.local_scale, self.local_size))
        crops: list[torch.Tensor] = []
        for n, scale, size in sets:
            theta = crop_boxes(n * b, scale, flip=self.flip, generator=generator)
            crops.extend(self._jitter(resized_crops(x, theta, size), generator).split(b))
        return crops
