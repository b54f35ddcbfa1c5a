"""``inspect(module, x)`` and ``inspect_model(model, x)``: the affinity view of token mixers that
unifiedctx did not build, one layer at a time or a whole network at once.

Given a module and an input, :func:`inspect` returns an :class:`AffinityView` with

* ``values``   ``V`` of shape ``(B, M, K, d)``  (K keys: usually the N tokens),
* ``affinity`` ``A`` of shape ``(B|1, M, N, K)``,
* ``project``  a callable with ``view.project(view.affinity @ view.values) == module(x)``,

so that the module's own output is rebuilt from its affinity (in its own output format).
:func:`inspect_model` does it for every layer of a network in one forward pass (see ``network.py``).
Supported modules and their views (one file per family of foreign layers):

==========================================  =====================================================
module                                      view
==========================================  =====================================================
unifiedctx mixers (``AffinityMixer``)       their own ``values`` / ``affinity`` / ``project``
``nn.Conv2d`` depthwise (groups = C)        M = C heads, d = 1, A[c] = banded kernel matrix
``nn.Conv2d`` full or grouped               im2col: M = kh*kw shift matrices, d = C_in,
                                            the kernel lives in ``project`` (ResNet's 3x3,
                                            ResNeXt's and RegNet's grouped 3x3)
``nn.AvgPool2d`` (stride 1, pad k//2)       M = 1, A = window / count (either count rule)
``nn.MultiheadAttention`` (self-attention)  M = num_heads, A = softmax(q k^T / sqrt(d))
timm ``Attention`` (ViT, DeiT)              A from ``qkv`` (+ q_norm / k_norm, attn_mask),
                                            class and distillation tokens as prefix tokens
timm ``MixerBlock``                         the token MLP as an input-gated affinity, N + 1
                                            keys; ``project`` adds the residual and channel MLP
timm ``Pooling`` (PoolFormer)               A = window / count - I
timm Swin ``WindowAttention``               per window: softmax(q k^T s + B[rel. offset] + mask)
timm ConViT ``GPSA`` / ``MHSA``             (1-g) softmax(q k^T s) + g softmax(r W_pos^T); plain
any other attention (``inspect_model`` only:  read at its call (``attention_call.py``): SDPA's or the
Hugging Face, torchvision's Swin and         eager softmax's A, scale, mask and position bias
MaxViT, a user's own)                        included; ``project`` reruns the module with A @ V
==========================================  =====================================================

(ConvNeXt's depthwise 7x7 and ResNet's stride-1 3x3 convs are ``nn.Conv2d`` and read as such.)
Dropout and drop-path must be off (``module.eval()``) for the rebuild to be exact.

The package is the one reader: ``reader.py`` (the hook-and-guard path), ``trace.py`` (the forward watched
by a ``TorchFunctionMode``: every token-mixing call attributed to its module call, residuals and parallel
branches found where the forward adds them, and whatever is not read named), ``layers.py`` (each layer's
affinity for the explorer, the plots and ``record_affinities``), ``records.py`` (the typed records).
"""

from .families import FAMILIES, SUPPORTED, inspect
from .layers import (
    LayerAffinity,
    layer_affinities,
    mixer_components,
    mixer_inputs,
    mixer_layers,
    mixing_weights,
    record_affinities,
    record_components,
)
from .network import NetworkInspection, inspect_model
from .timm_mixer import activation_gate
from .trace import Trace, trace
from .view import AffinityView

__all__ = ["FAMILIES", "SUPPORTED", "AffinityView", "LayerAffinity", "NetworkInspection", "Trace",
           "activation_gate", "inspect", "inspect_model", "layer_affinities", "mixer_components",
           "mixer_inputs",
           "mixer_layers", "mixing_weights", "record_affinities", "record_components", "trace"]
