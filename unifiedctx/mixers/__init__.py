"""Token mixers as context aggregation: ``y = project(affinity(x) @ values(x))``.

Every mixer here keeps the contract of :class:`AffinityMixer` (see ``base.py``):

=============  ==========================================  =======  =========================
name           affinity A_m                                kind     fast path
=============  ==========================================  =======  =========================
``dwconv``     banded Toeplitz from a k x k kernel / chan  static   ``F.conv2d(groups=C)``
``conv``       k*k shift matrices (kernel in ``project``)  static   ``F.conv2d``
``pool``       uniform over the window (PoolFormer)        static   ``F.avg_pool2d``
``tokenmlp``   learned N x N (MLP-Mixer token mixing)      static   token-axis matmul
``attention``  softmax(q k^T / sqrt(d))                    dynamic  SDPA
``container``  alpha A_attention + beta A_dwconv           mixed    alpha SDPA + beta dwconv
``window``     attention inside w x w windows              dynamic  SDPA over windows
``relattn``    softmax(q k^T / sqrt(d) + relative bias)    dynamic  SDPA with a bias mask
``gpsa``       (1-g) softmax(q k^T) + g softmax(positions) mixed    SDPA + static matmul
=============  ==========================================  =======  =========================

Create one with ``create(name, dim=..., **options)``; ``available()`` lists the names. The old
name ``mixer`` of ``tokenmlp`` is still accepted by ``create`` (configs and checkpoints that
name it keep working) but no longer listed.

Adding a mixer is one class (a subclass of :class:`AffinityMixer`, see ``base.py`` and
``docs/adding_a_mixer.md``) and one line in ``REGISTRY``.
"""

from __future__ import annotations

import inspect

from ..validation import check_choice
from .attention import Attention, RelPosAttention
from .base import AffinityMixer
from .container import Container
from .conv import AvgPool, DepthwiseConv, FullConv
from .dense import TokenMixing
from .gpsa import GatedPositionalAttention
from .window import WindowAttention

REGISTRY: dict[str, type[AffinityMixer]] = {
    "dwconv": DepthwiseConv,
    "conv": FullConv,
    "pool": AvgPool,
    "tokenmlp": TokenMixing,
    "attention": Attention,
    "container": Container,
    "window": WindowAttention,
    "relattn": RelPosAttention,
    "gpsa": GatedPositionalAttention,
}

#: Old names ``create`` still accepts: ``{old: registered name}`` (not listed by ``available()``).
ALIASES = {"mixer": "tokenmlp"}

#: Options a model builder may pass to any mixer; a mixer that has no use for one ignores it.
SHARED_OPTIONS = ("heads", "kernel_size", "grid")


def available() -> list[str]:
    """Names of the registered mixers, in the order of the table above (aliases left out)."""
    return list(REGISTRY)


def resolve(name: str) -> str:
    """The registered name for ``name`` (an alias maps to its mixer); a clear error if unknown."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    return check_choice("mixer", name, available())


def options_of(name: str) -> list[str]:
    """The options mixer ``name`` takes, in its constructor's order (``dim`` aside)."""
    cls = REGISTRY[resolve(name)]
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim")]


def create(name: str, dim: int, **options) -> AffinityMixer:
    """Build the mixer ``name`` for ``dim`` channels.

    Shared options (``heads``, ``kernel_size``, ``grid``) are passed where the mixer takes
    them and ignored where it does not (``heads`` means nothing to pooling); any other option
    the mixer does not take is a ``TypeError`` that lists the options it does take. An unknown
    ``name`` is a ``ValueError`` that lists the mixers and suggests close names.
    """
    name = resolve(name)
    accepted = options_of(name)
    kwargs = {}
    for key, value in options.items():
        if key in accepted:
            kwargs[key] = value
        elif key not in SHARED_OPTIONS:
            raise TypeError(f"mixer {name!r} has no option {key!r}; its options are: "
                            f"{', '.join(accepted) or 'none'}")
    return REGISTRY[name](dim, **kwargs)


__all__ = [
    "ALIASES", "REGISTRY", "SHARED_OPTIONS", "AffinityMixer", "Attention", "AvgPool", "Container",
    "DepthwiseConv", "FullConv", "GatedPositionalAttention", "RelPosAttention", "TokenMixing",
    "WindowAttention", "available", "create", "options_of", "resolve",
]
