"""timm's ``MixerBlock`` (MLP-Mixer) in the affinity view: the token MLP as an input-gated affinity.

Per channel c with u = norm1(x)[:, c] (N tokens)::

    y = W2 act(W1 u + b1) + b2,    act(h) = h * g(h)   (GELU: g = Phi, the normal CDF)
      = W2 diag(g(h)) (W1 u + b1) + b2
      = [W2 diag(g(h)) W1 | W2 diag(g(h)) b1] [u; 1] + b2

so with the values augmented by one constant key, ``V[c] = [u; 1]`` (K = N + 1, d = 1), the
affinity ``A[c] = W2 diag(g(h)) [W1 | b1]`` of shape ``(N, N + 1)`` is exact: the last column
(``view.extra_keys == 1``) is the input-dependent share of the first-layer bias. ``project`` adds
``b2``, the block's residual and its channel MLP, so the view rebuilds the whole block's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from ..mixers.dense import gelu_gate
from .view import AffinityView, check_tokens, token_grid


def activation_gate(act: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g`` with ``act(h) = h * g(h)`` for the activations an MLP-Mixer uses (GELU, ReLU, SiLU...)."""
    name = type(act).__name__
    approximate = getattr(act, "approximate", "none")
    if name == "GELUTanh" or (name == "GELU" and approximate == "tanh"):
        return lambda h: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    if name == "GELU":
        return gelu_gate
    if name == "QuickGELU":
        return lambda h: torch.sigmoid(1.702 * h)
    if name in ("SiLU", "Swish"):
        return torch.sigmoid
    if name == "ReLU":
        return lambda h: (h > 0).to(h.dtype)
    if name == "Identity":
        return torch.ones_like
    raise ValueError(f"cannot write the activation {name} as act(h) = h * g(h); "
                     f"supported: GELU (erf or tanh), QuickGELU, SiLU, ReLU, Identity")


def inspect_timm_mixer_block(module, x, grid=None, prefix_tokens=0) -> AffinityView:
    """The view of a whole ``timm.models.mlp_mixer.MixerBlock`` on tokens ``x`` ``(B, N, C)``:
    ``affinity`` ``(B, C, N, N + 1)``, ``values`` ``(B, C, N + 1, 1)`` (see the module docstring)."""
    check_tokens(x, "timm MixerBlock")
    mlp = module.mlp_tokens
    if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        raise ValueError("MixerBlock.mlp_tokens.norm must be Identity: a norm inside the token MLP "
                         "is not an affinity")
    g = activation_gate(mlp.act)
    u = rearrange(module.norm1(x), "b n c -> b c n")  # (B, C, N)
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    gate = g(mlp.fc1(u))  # (B, C, hidden)
    if b1 is not None:
        w1 = torch.cat([w1, b1[:, None]], dim=1)  # (hidden, N + 1): the constant-1 key
        u = torch.cat([u, torch.ones_like(u[..., :1])], dim=-1)
    a = torch.einsum("nk,bck,kj->bcnj", w2, gate, w1)
    values = u.unsqueeze(-1)

    def project(z):
        t = rearrange(z, "b c n 1 -> b n c")
        if b2 is not None:
            t = t + b2.view(1, -1, 1)
        y = x + module.drop_path(mlp.drop2(t))
        return y + module.drop_path(module.mlp_channels(module.norm2(y)))

    grid = token_grid(grid, x.shape[1], prefix_tokens)
    view = AffinityView(values, a, project, grid, "dynamic", x.shape[2], "timm MixerBlock", prefix_tokens,
                        int(b1 is not None))
    view.notes["project"] = "adds the block's residual and its channel MLP: the output is the whole block's"
    return view
