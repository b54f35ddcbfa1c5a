"""Static, local mixers: depthwise convolution, full convolution, average pooling.

Their affinities are built from shift matrices (see ``local.py``) and do not depend on x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..validation import check_bool, check_positive_int
from .base import AffinityMixer, image
from .local import local_affinity, shift_matrices


class DepthwiseConv(AffinityMixer):
    """Depthwise k x k convolution: one static, local, weight-shared affinity per channel.

    Math, for channel c (M = C heads of d = 1)::

        V[c]    = (W_in x)[c]             (W_in is a 1x1 conv when ``proj=True``, else identity)
        A[c]    = sum_o w[c, o] * S_o     (banded Toeplitz, zero outside the k x k window)
        y       = W_out (A V) + bias      (W_out likewise)

    Shapes: ``values -> (B, C, N, 1)``, ``affinity -> (1, C, N, N)``,
    ``static_kernels -> (C, k, k)`` (the kernels ``w``). Fast path: ``F.conv2d(..., groups=C)``.
    ``proj=True`` gives Container-Light's static mixer (1x1 -> depthwise k x k -> 1x1).
    """

    kind = "static"
    head_unit = "channel"  # its M affinities are one per channel

    def describe(self) -> str:
        return f"static local: one {self.kernel_size}x{self.kernel_size} kernel per channel, slid along"


    def __init__(self, dim: int, kernel_size: int = 3, proj: bool = False, bias: bool = True):
        super().__init__(dim)
        self.kernel_size = check_positive_int("kernel_size", kernel_size, odd=True)
        proj, bias = check_bool("proj", proj), check_bool("bias", bias)
        self.heads = dim
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=bias)
        self.proj_in = nn.Conv2d(dim, dim, 1) if proj else nn.Identity()
        self.proj_out = nn.Conv2d(dim, dim, 1) if proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj_out(self.conv(self.proj_in(x)))

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return rearrange(self.proj_in(x), "b c h w -> b c (h w) 1")

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        return local_affinity(self.static_kernels(), grid).unsqueeze(0)

    def static_kernels(self) -> torch.Tensor:
        """The depthwise kernels ``(C, k, k)``: channel c's affinity is ``sum_o w[c, o] S_o``."""
        return self.conv.weight[:, 0]

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "kernel_size": 3}, {"dim": 6, "kernel_size": 5, "proj": True},
                {"dim": 4, "kernel_size": 3, "bias": False}]

    def _project(self, z, grid):
        y = rearrange(z, "b c (h w) 1 -> b c h w", h=grid[0])
        if self.conv.bias is not None:
            y = y + self.conv.bias.view(1, -1, 1, 1)
        return self.proj_out(y)


class FullConv(AffinityMixer):
    """Full k x k convolution in the im2col view: M = k*k fixed shift affinities.

    Math (M = k*k heads, d = C; the kernel lives in ``project``)::

        V[o]          = x as tokens                 (the same values for every head)
        A[o]          = S_o                         (fixed 0/1 shift matrix of offset o)
        y[:, c_out]   = sum_o sum_c W[c_out, c, o] (S_o x)[:, c] + b[c_out]

    Shapes: ``values -> (B, k*k, N, C)`` (an expanded view, no copy), ``affinity ->
    (1, k*k, N, N)``. Fast path: ``F.conv2d``. ``static_kernels()`` is ``None``: the affinities
    are fixed shifts, the learned kernel mixes channels inside ``project``.
    """

    kind = "static"

    def describe(self) -> str:
        return f"static local: {self.kernel_size}x{self.kernel_size} shift matrices, kernel mixes channels"


    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True):
        super().__init__(dim)
        self.kernel_size = check_positive_int("kernel_size", kernel_size, odd=True)
        self.heads = kernel_size * kernel_size
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, bias=check_bool("bias", bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.conv(x)

    @property
    def value_dim(self) -> int:
        """d = C: every shift head fetches all the channels (the kernel mixes them in ``project``)."""
        return self.dim

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return repeat(x, "b c h w -> b m (h w) c", m=self.heads)

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        w = self.conv.weight
        return shift_matrices(self.kernel_size, grid, dtype=w.dtype, device=w.device).unsqueeze(0)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "kernel_size": 3}, {"dim": 4, "kernel_size": 5, "bias": False}]

    def _project(self, z, grid):
        w = rearrange(self.conv.weight, "o c kh kw -> (kh kw) c o")
        y = torch.einsum("bmnc,mco->bno", z, w)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        return image(y, grid)


class AvgPool(AffinityMixer):
    """Average pooling as PoolFormer uses it (stride 1, ``count_include_pad=False``).

    Math (M = 1 head, d = C)::

        A[i, j] = 1 / |window(i)|   for j in the k x k window of i that lies on the grid
        y       = A x               (or (A - I) x with ``subtract_input=True``: PoolFormer's
                                     "pool minus identity", because its block adds x back)

    Fast path: ``F.avg_pool2d``. No parameters.
    """

    kind = "static"

    def describe(self) -> str:
        return f"static local: uniform over the {self.kernel_size}x{self.kernel_size} window (not learned)"


    def __init__(self, dim: int, kernel_size: int = 3, subtract_input: bool = False):
        super().__init__(dim)
        self.kernel_size = check_positive_int("kernel_size", kernel_size, odd=True)
        self.subtract_input = check_bool("subtract_input", subtract_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        k = self.kernel_size
        y = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
        return y - x if self.subtract_input else y

    def values(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return rearrange(x, "b c h w -> b 1 (h w) c")

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        k, dtype, device = self.kernel_size, x.dtype, x.device
        window = local_affinity(torch.ones(1, k, k, dtype=dtype, device=device), grid)[0]  # 0/1 (N, N)
        a = window / window.sum(1, keepdim=True)
        if self.subtract_input:
            a = a - torch.eye(a.shape[0], dtype=dtype, device=device)
        return a.view(1, 1, *a.shape)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "kernel_size": 3}, {"dim": 6, "kernel_size": 5, "subtract_input": True}]

    def _project(self, z, grid):
        return rearrange(z, "b 1 (h w) c -> b c h w", h=grid[0])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernel_size={self.kernel_size}, subtract_input={self.subtract_input}"
