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

and each one answers for what it alone knows (every method has a default, so a simple mixer
writes none of them)::

    components(x)      {"static"|"dynamic"|"mixed": (B|1, M_view, N, N)}   the parts of A
    mixing_weights()   {"alpha": w, "beta": w} or {"gate": g} or None      the mixing knob
    static_kernels()   (M_s, kh, kw) or None                               a learned static kernel
    describe()         "input-gated: a static matrix gated by the input..."  its affinity in words
    head_unit          "head" | "channel"                                  what one of its M affinities is
    reset_parameters()                                                     its own weight init
    example_options(grid)  [{"dim": ..., **options}, ...]                  tiny instances (tests)

Layers above ``mixers/`` (recording, plots, the trainer, the explorer, model builders) use only
these names: they never test for a particular mixer class or reach into a mixer's submodules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from einops import rearrange
from torch import nn

from ..validation import check_float_image, check_int_or_pair, check_positive_int

KINDS = ("static", "dynamic", "mixed")
#: The default :meth:`AffinityMixer.describe` of each kind.
DESCRIPTIONS = {"static": "static: a fixed matrix, the same for every input",
                "dynamic": "dynamic: computed from the input",
                "mixed": "mixed: a static and a dynamic part"}

__all__ = ["KINDS", "AffinityMixer", "check_grid", "check_heads", "check_positive_int", "image",
           "merge_heads", "split_heads", "tokens"]


def check_heads(dim: int, heads) -> int:
    """Validate ``heads`` against ``dim``: a positive int that splits the channels evenly."""
    heads = check_positive_int("heads", heads)
    if dim % heads != 0:
        raise ValueError(f"dim={dim} must be divisible by heads={heads}")
    return heads


def check_grid(grid) -> tuple[int, int]:
    """``grid`` (an int or an ``(H, W)`` pair) as a validated ``(H, W)`` tuple of positive ints."""
    return check_int_or_pair("grid", grid)


class AffinityMixer(nn.Module, ABC):
    """Base class of every token mixer: ``y = project(affinity(x) @ values(x))``.

    Subclasses set ``kind`` (``"static"``, ``"dynamic"`` or ``"mixed"``) and ``heads`` (M, the
    number of affinities ``affinity(x)`` returns, always), implement ``forward``, ``values``,
    ``affinity`` and ``_project``, and override the methods below where they have something to
    say (``components``, ``mixing_weights``, ``static_kernels``, ``reset_parameters``,
    ``example_options``).
    """

    kind: str = "static"
    #: What one of the M affinities is, in the words tiles and status fields use ("head 3",
    #: "channel 3"): attention heads by default; a mixer with one affinity per channel says "channel".
    head_unit: str = "head"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        self.heads = 1
        self._last_grid: tuple[int, int] | None = None

    # ----------------------------------------------------------------- input checks
    def check_input(self, x) -> tuple[int, int]:
        """Check ``x`` is a float ``(B, dim, H, W)`` tensor of this mixer's dtype; remember and
        return its grid ``(H, W)``."""
        check_float_image("x", x, like=self)
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
        if z.shape[1] != self.heads or z.shape[3] != self.value_dim:
            raise ValueError(f"z must have shape (B, M={self.heads}, N, d={self.value_dim}) for this "
                             f"{type(self).__name__} (the shape of A @ values(x)), got {tuple(z.shape)}")
        return self._project(z, grid)

    @property
    def value_dim(self) -> int:
        """d, the width of each head's values: ``values(x)`` is ``(B, M, N, d)``. By default the
        channels split evenly over the heads (``dim // heads``); a mixer whose heads all see every
        channel (the full convolution's shift heads) says so by overriding this."""
        return self.dim // self.heads

    @abstractmethod
    def _project(self, z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``project`` after its checks: ``(B, M, N, d) -> (B, C, H, W)`` on ``grid``."""

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The generic, slow computation ``project(affinity(x) @ values(x))``."""
        grid = self.check_input(x)
        return self.project(self.affinity(x) @ self.values(x), grid)

    # ----------------------------------------------------------------- what each mixer knows
    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The affinity by part, at the resolution a person reads: ``{part: (B|1, M_view, N, N)}``.

        Default: ``{kind: affinity(x)}`` (M_view = M). A mixed mixer returns ``{"dynamic",
        "static", "mixed"}`` with ``mixed = alpha * dynamic + beta * static`` (see
        ``mixing_weights``), each at the resolution of its attention heads; then M divides into
        M_view groups of consecutive heads and ``mixed`` is the mean of ``affinity(x)`` over each.
        """
        return {self.kind: self.affinity(x)}

    def describe(self) -> str:
        """The affinity in a few words, for people (status fields, tile titles, notebooks).

        Default, from ``kind``: ``"static: a fixed matrix, the same for every input"``,
        ``"dynamic: computed from the input"`` or ``"mixed: a static and a dynamic part"``. A mixer
        says more about itself, e.g. ``"dynamic: softmax(QK^T/sqrt d)"``.
        """
        return DESCRIPTIONS.get(self.kind, self.kind)

    def mixing_weights(self) -> dict[str, torch.Tensor] | None:
        """The learned knob between the dynamic and the static part, or ``None`` (the default).

        Either ``{"alpha": a, "beta": b}`` (``mixed = a * dynamic + b * static``) or
        ``{"gate": g}`` (``mixed = (1 - g) * dynamic + g * static``); each weight is a 0-d
        tensor or one per head ``(M_view,)``. Tensors, still differentiable: a caller that wants
        numbers writes ``w.detach().tolist()``.
        """
        return None

    def static_kernels(self) -> torch.Tensor | None:
        """The learned static kernel ``(M_s, kh, kw)``, or ``None`` (the default).

        When given, ``local.local_affinity(static_kernels(), grid)`` is the static part of the
        affinity, one ``(N, N)`` matrix per static head (averaged over groups of M_s / M_view
        heads it is ``components(x)["static"]``).
        """
        return None

    def reset_parameters(self) -> None:
        """(Re-)initialise what only this mixer knows how to initialise (default: nothing).

        A model builder first runs its generic init over the whole network (trunc_normal on
        linear layers, ...), then calls this on every mixer, so a mixer with an init of its own
        (GPSA's local positional init) keeps it.
        """

    @classmethod
    def example_options(cls, grid: tuple[int, int]) -> list[dict]:
        """Keyword arguments of tiny instances that accept an input on ``grid``, ``dim`` included:
        ``[create(name, **o) for o in example_options(grid)]``. Between them they should reach
        every code path (the contract test builds each one). Default: one with 6 channels."""
        return [{"dim": 6}]

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
