"""Counting parameters and multiply-accumulates (MACs) of a model.

MACs are measured with ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass
(GMACs = FLOPs / 2): convolutions, linear maps and matrix products, the attention products
``Q K^T`` and ``A V`` included; norms, activations, pooling and softmax are not counted (the
usual convention of published tables).

On a CPU, ``F.scaled_dot_product_attention`` runs
``aten._scaled_dot_product_flash_attention_for_cpu``, for which PyTorch registers no formula:
the counter would silently count attention as free. ``SDPA_FLOPS`` adds it (and the GPU
kernels, in case a PyTorch lacks them)::

    FLOPs(SDPA) = 2 * B * H * N_q * N_k * (d + d_v)       (Q K^T, then A V)
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ..validation import check_bool, check_positive_int
from .network import as_size


def sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``softmax(Q K^T) V`` from the shapes ``(B, H, N, d)`` of q, k, v."""
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * n_q * n_k * (d + d_v)


def sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                        **kwargs) -> int:
    """FLOPs of the SDPA backward (PyTorch's own formula for its GPU kernels)."""
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _sdpa_mapping() -> dict:
    aten = torch.ops.aten
    forward = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
               "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
               "_scaled_dot_product_attention_math"]
    backward = ["_scaled_dot_product_flash_attention_for_cpu_backward"]
    mapping = {getattr(aten, n): sdpa_flops for n in forward if hasattr(aten, n)}
    mapping.update({getattr(aten, n): sdpa_backward_flops for n in backward if hasattr(aten, n)})
    # keep PyTorch's own formulas where it has them (same numbers for the forward pass)
    return {op: f for op, f in mapping.items() if op not in flop_counter.flop_registry}


#: ``custom_mapping`` for FlopCounterMode that makes it count attention on every device.
SDPA_FLOPS = _sdpa_mapping()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm statistics excluded)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_bool("trainable_only", trainable_only)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (one forward, no gradients), attention included."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor input of the model, got {type(x).__name__}")
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA_FLOPS) as counter:
        model(x)
    return counter.get_total_flops()


def count_macs(model: nn.Module, img_size=None, batch: int = 1, device="meta") -> int:
    """Multiply-accumulates of one forward pass on a ``batch`` of ``img_size`` images.

    ``img_size`` (int or (H, W)) defaults to ``model.img_size``; ``in_chans`` comes from
    ``model.in_chans`` (3 when the model has none). With ``device="meta"`` (the default) a
    copy of the model runs on PyTorch's meta device: shapes only, no arithmetic, so even a
    full Container at 896 x 896 is counted in about a second. ``device=None`` runs the model
    where it is. The model runs in eval mode and is put back in the mode it was in.
    Returns FLOPs // 2.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if img_size is None:
        img_size = getattr(model, "img_size", None)
        if img_size is None:
            raise ValueError("img_size is required: this model has no img_size attribute")
    h, w = as_size(img_size)
    batch = check_positive_int("batch", batch)
    if device is not None:
        model = copy.deepcopy(model).to(device)
    param = next(model.parameters(), None)
    x = torch.zeros(batch, getattr(model, "in_chans", 3), h, w,
                    dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        return count_flops(model, x) // 2
    finally:
        model.train(was_training)
