"""Attention read where it happens: the affinity of one attention call from the call's own arguments.

Whatever class runs it, an attention ends in one of three calls, and each gives ``A`` exactly::

    F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)   A = softmax(q k^T s + mask)
    softmax(scores) then a matmul with the values (eager attention)          A = that softmax's result
    F.multi_head_attention_forward(...)   (nn.MultiheadAttention)           A from its in-projection

so the scale, the mask and a relative-position bias (an additive mask, or added to the scores) are in ``A``.
:class:`AttentionCall` keeps what one call gave; :meth:`AttentionCall.substituted` reruns its module with the
attention's result replaced by ``A @ V``, which rebuilds the module's own output (``inspect_model``'s proof).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

#: Calls that pass a softmax result on unchanged (eager attention's dtype cast and dropout).
PASS_PROBS = {"to", "type_as", "float", "double", "half", "contiguous", "dropout", "clone", "detach"}
MATMULS = {"matmul", "__matmul__", "bmm", "einsum"}


def softmax_of(q, k, scale=None, mask=None, is_causal=False, gqa=False) -> torch.Tensor:
    """``softmax(q k^T s + mask)`` as ``F.scaled_dot_product_attention`` computes it (``s`` default
    ``1/sqrt(d)``; a boolean mask keeps True; causal keeps the lower triangle; GQA repeats k's heads)."""
    if gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1)


def mha_affinity(call: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(A (B, M, L, S), V (B, M, S, d), extra keys)`` of one ``F.multi_head_attention_forward`` call (its
    arguments by name): the in-projection, ``bias_k`` / ``bias_v``, ``add_zero_attn``, the masks."""
    query, key, value = call["query"], call["key"], call["value"]
    e, m = call["embed_dim_to_check"], call["num_heads"]
    batched = query.dim() == 3
    q_in, k_in, v_in = (t if batched else t[:, None] for t in (query, key, value))  # (L, B, E)
    if call.get("use_separate_proj_weight"):
        wq, wk, wv = call["q_proj_weight"], call["k_proj_weight"], call["v_proj_weight"]
    else:
        wq, wk, wv = call["in_proj_weight"].chunk(3)
    bias = call.get("in_proj_bias")
    bq, bk, bv = (None,) * 3 if bias is None else bias.chunk(3)
    heads = lambda t: rearrange(t, "n b (m d) -> b m n d", m=m)  # noqa: E731
    q, k, v = heads(F.linear(q_in, wq, bq)), heads(F.linear(k_in, wk, bk)), heads(F.linear(v_in, wv, bv))
    extra = 0
    if call.get("bias_k") is not None:
        bsz = q.shape[0]
        k = torch.cat([k, heads(call["bias_k"].view(1, 1, e).expand(1, bsz, e))], dim=2)
        v = torch.cat([v, heads(call["bias_v"].view(1, 1, e).expand(1, bsz, e))], dim=2)
        extra += 1
    if call.get("add_zero_attn"):
        k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))
        extra += 1
    mask = call.get("attn_mask")
    pad = call.get("key_padding_mask")
    if pad is not None:
        pad = pad.bool() if pad.dtype != torch.bool else pad
        pad = F.pad(pad, (0, extra)) if extra else pad
        keep = ~pad[:, None, None, :]
        mask = keep if mask is None else (mask & keep if mask.dtype == torch.bool else
                                          mask.masked_fill(~keep, float("-inf")))
    elif mask is not None and mask.dtype == torch.bool:
        mask = ~mask  # nn.MultiheadAttention's boolean mask marks what is *not* attended
    if mask is not None and mask.dtype != torch.bool and extra:
        mask = F.pad(mask, (0, extra))
    return softmax_of(q, k, e // m and (e // m) ** -0.5, mask, bool(call.get("is_causal"))), v, extra


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass
class AttentionCall:
    """What an attention call gave: its module call, ``A`` ``(Bq, M, n, n)`` and ``V`` ``(Bq, M, n, d)``, and
    the node it became (None when it was not read: then ``Trace.unread`` says why)."""

    module: str
    affinity: torch.Tensor
    values: torch.Tensor | None
    node: int | None
    function: str
    call: tuple | None = None  # (module, args, kwargs) of the module call that ran it (keep_values)
    index: int = 0  # which call of ``function`` in that module call
    out_shape: tuple | None = None
    output: object = None  # the module call's output
    windows: object = None  # a windowed attention's layout on the grid (``windows.Windows``)
    tokens: object = None  # the grid and prefix tokens of its tokens (``records.TokenGrid``)

    def substituted(self, z: torch.Tensor):
        """The module call rerun with this attention's result replaced by ``z = A @ V`` ``(Bq, M, n, d)``:
        everything the module does after its attention (merging heads, the output projection, ...) applied
        to ``z``. Equals the module's own output when ``z`` is the attention's own."""
        module, args, kwargs = self.call
        with _Substitute(self.function, self.index, z, self.out_shape):
            return module(*args, **kwargs)


class _Substitute(TorchFunctionMode):
    """Replaces the ``index``-th attention call of kind ``function`` by ``z`` (``AttentionCall.substituted``):
    an SDPA call, or a matmul whose first operand is a softmax's result (followed as the trace follows it)."""

    def __init__(self, function: str, index: int, z: torch.Tensor, shape):
        super().__init__()
        self.sdpa = function == "scaled_dot_product_attention"
        self.index, self.z, self.shape, self.seen = index, z, shape, 0
        self.probs = WeakIdKeyDictionary()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self.sdpa:
            hit = name == "scaled_dot_product_attention"
        else:
            hit = name in MATMULS and self._probs_first(name, args)
        if hit:
            self.seen += 1
            if self.seen - 1 == self.index:
                return self.z.reshape(self.shape) if self.shape is not None else self.z
        out = func(*args, **(kwargs or {}))
        passed = name in PASS_PROBS and args and isinstance(args[0], torch.Tensor) and args[0] in self.probs
        if name in ("softmax", "_softmax") or (passed
                                               and args[0] in self.probs):
            if isinstance(out, torch.Tensor):
                self.probs[out] = True
        return out

    def _probs_first(self, name, args) -> bool:
        operands = args[1:] if name == "einsum" else args
        if name == "einsum" and len(operands) == 1:
            operands = operands[0]
        return bool(operands) and isinstance(operands[0], torch.Tensor) and operands[0] in self.probs

__all__ = ["MATMULS", "PASS_PROBS", "AttentionCall", "mha_affinity", "softmax_of"]
