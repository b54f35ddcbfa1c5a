"""Token mixers as context aggregation: ``y = project(affinity(x) @ values(x))``.

Every mixer here keeps the contract of :class:`AffinityMixer` (see ``base.py``):

=============  ==========================================  =======  =========================
name           affinity A_m                                kind     fast path
=============  ==========================================  =======  =========================
``dwconv``     banded Toeplitz from a k x k kernel / chan  static   ``F.conv2d(groups=C)``
``conv``       k*k shift matrices (kernel in ``project``)  static   ``F.conv2d``
``pool``       uniform over the window (PoolFormer)        static   ``F.avg_pool2d``
``mixer``      learned N x N (MLP-Mixer token mixing)      static   token-axis matmul
``attention``  softmax(q k^T / sqrt(d))                    dynamic  SDPA
``container``  alpha A_attention + beta A_dwconv           mixed    alpha SDPA + beta dwconv
``window``     attention inside w x w windows              dynamic  SDPA over windows
``relattn``    softmax(q k^T / sqrt(d) + relative bias)    dynamic  SDPA with a bias mask
``gpsa``       (1-g) softmax(q k^T) + g softmax(positions) mixed    SDPA + static matmul
=============  ==========================================  =======  =========================

Create one with ``create(name, dim=..., **options)``; ``available()`` lists the names.
"""

from __future__ import annotations

import difflib
import inspect

from .attention import Attention, Container, GatedPositionalAttention, RelPosAttention, WindowAttention
from .base import AffinityMixer
from .conv import AvgPool, DepthwiseConv, FullConv
from .dense import TokenMixing

REGISTRY: dict[str, type[AffinityMixer]] = {
    "dwconv": DepthwiseConv,
    "conv": FullConv,
    "pool": AvgPool,
    "mixer": TokenMixing,
    "attention": Attention,
    "container": Container,
    "window": WindowAttention,
    "relattn": RelPosAttention,
    "gpsa": GatedPositionalAttention,
}

#: Options a model builder may pass to any mixer; a mixer that has no use for one ignores it.
SHARED_OPTIONS = ("heads", "kernel_size", "grid")


def available() -> list[str]:
    """Names of the registered mixers, in the order of the table above."""
    return list(REGISTRY)


def create(name: str, dim: int, **options) -> AffinityMixer:
    """Build the mixer ``name`` for ``dim`` channels.

    Shared options (``heads``, ``kernel_size``, ``grid``) are passed where the mixer takes
    them and ignored where it does not (``heads`` means nothing to pooling); any other option
    the mixer does not take is a ``TypeError`` that lists the options it does take.
    """
    if name not in REGISTRY:
        close = difflib.get_close_matches(str(name), REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}; available: {', '.join(REGISTRY)}.{hint}")
    cls = REGISTRY[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]
    kwargs = {}
    for key, value in options.items():
        if key in accepted:
            kwargs[key] = value
        elif key not in SHARED_OPTIONS:
            raise TypeError(f"mixer {name!r} has no option {key!r}; its options are: "
                            f"{', '.join(accepted) or 'none'}")
    return cls(dim, **kwargs)


__all__ = [
    "REGISTRY", "SHARED_OPTIONS", "AffinityMixer", "Attention", "AvgPool", "Container",
    "DepthwiseConv", "FullConv", "GatedPositionalAttention", "RelPosAttention", "TokenMixing",
    "WindowAttention", "available", "create",
]
