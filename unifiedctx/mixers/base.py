"""The one contract that every token mixer keeps.

A token mixer aggregates context over the N = H*W positions of an image ``x`` of shape
``(B, C, H, W)``. Each one is read two ways, and both give the same answer:

* **the affinity view** (for people and tests)::

      V = values(x)       # (B, M, N, d)      M heads of d-dimensional values
      A = affinity(x)     # (B or 1, M, N, N) row i says how much token i takes from token j
      y = project(A @ V)  # (B, C, H, W)

* **the fast path** (for training): ``forward(x)``, with the kernel that the family is known
  by (``F.conv2d``, ``F.avg_pool2d``, ``F.scaled_dot_product_attention``, ...). It never builds
  an N x N matrix unless the family itself is a dense static matrix.

``AffinityMixer`` holds what all mixers share: input checks with clear errors, the grid that
``project`` folds tokens back onto, and the reference computation ``project(A @ V)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from einops import rearrange
from torch import nn

KINDS = ("static", "dynamic", "mixed")


def check_positive_int(name: str, value, *, odd: bool = False) -> int:
    """Return ``value`` if it is a positive int (odd when ``odd``), else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if odd and value % 2 == 0:
        raise ValueError(f"{name} must be odd so the window is centred on its token, got {value}")
    return value


def check_heads(dim: int, heads: int) -> int:
    """Validate ``heads`` against ``dim``: the channels split evenly into heads."""
    check_positive_int("heads", heads)
    if dim % heads != 0:
        raise ValueError(f"dim={dim} must be divisible by heads={heads}")
    return heads


def check_grid(grid) -> tuple[int, int]:
    """Turn ``grid`` (an int or an (H, W) pair) into a validated ``(H, W)`` tuple."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise TypeError(f"grid must be an int or a pair (H, W), got {grid!r}")
    return (check_positive_int("grid[0] (H)", grid[0]), check_positive_int("grid[1] (W)", grid[1]))


class AffinityMixer(nn.Module, ABC):
    """Base class of every token mixer: ``y = project(affinity(x) @ values(x))``.

    Subclasses set ``kind`` (``"static"``, ``"dynamic"`` or ``"mixed"``) and ``heads`` (M),
    and implement ``forward``, ``values``, ``affinity`` and ``_project``.
    """

    kind: str = "static"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.heads = 1
        self._last_grid: tuple[int, int] | None = None

    # ----------------------------------------------------------------- input checks
    def check_input(self, x) -> tuple[int, int]:
        """Check ``x`` is a float ``(B, dim, H, W)`` tensor; remember and return its grid."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
        if not (x.is_floating_point()):
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(f"x must have shape (B, C, H, W) (rank 4), got shape {tuple(x.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"x has {x.shape[1]} channels but this {type(self).__name__} was built with "
                f"dim={self.dim}"
            )
        self._last_grid = (x.shape[2], x.shape[3])
        return self._last_grid

    # ----------------------------------------------------------------- the affinity view
    @abstractmethod
    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Values ``V`` of shape ``(B, M, N, d)``."""

    @abstractmethod
    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """Dense affinity ``A`` of shape ``(B, M, N, N)``, or ``(1, M, N, N)`` when static."""

    def project(self, z: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Map aggregated values ``z = A @ V`` of shape ``(B, M, N, d)`` to ``(B, C, H, W)``.

        ``grid`` is the ``(H, W)`` the N tokens fold back onto; by default the grid of the
        last input this mixer saw (through ``values``, ``affinity`` or ``forward``).
        """
        if grid is None:
            grid = self._last_grid
        if grid is None:
            raise ValueError("project needs grid=(H, W): this mixer has not seen an input yet")
        grid = check_grid(grid)
        if not isinstance(z, torch.Tensor) or z.dim() != 4:
            raise ValueError(f"z must have shape (B, M, N, d), got {getattr(z, 'shape', z)!r}")
        if z.shape[2] != grid[0] * grid[1]:
            raise ValueError(f"z has {z.shape[2]} tokens but grid {grid} holds {grid[0] * grid[1]}")
        return self._project(z, grid)

    @abstractmethod
    def _project(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``project`` after its checks: ``(B, M, N, d) -> (B, C, H, W)`` on ``grid``."""

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The generic, slow computation ``project(affinity(x) @ values(x))``."""
        grid = self.check_input(x)
        return self.project(self.affinity(x) @ self.values(x), grid)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, kind={self.kind!r}"


def tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, C)``: the image as a sequence of N = H*W tokens."""
    return rearrange(x, "b c h w -> b (h w) c")


def image(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, N, C) -> (B, C, H, W)``: tokens folded back onto the grid."""
    return rearrange(t, "b (h w) c -> b c h w", h=grid[0], w=grid[1])


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, M*d) -> (B, M, N, d)``."""
    return rearrange(t, "b n (m d) -> b m n d", m=heads)


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    """``(B, M, N, d) -> (B, N, M*d)``."""
    return rearrange(z, "b m n d -> b n (m d)")
