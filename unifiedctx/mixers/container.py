"""Container's mixer (NeurIPS 2021): one set of values, aggregated by a dynamic and a static affinity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..validation import check_bool, check_choice, check_positive_int
from .attention import qkv_heads, softmax_affinity
from .base import AffinityMixer, check_heads, image, merge_heads, tokens
from .local import local_affinity

MIXINGS = ("sigmoid", "independent")


class Container(AffinityMixer):
    """``A = alpha * A_dynamic + beta * A_static``, both aggregating the same values V.

    The paper's equation, term by term (``a = attention_heads`` heads of ``d = C / a`` channels)::

        q, k, V   = split_a(x W_qkv)                     shared values V: one qkv map
        A_dynamic = softmax(q k^T / sqrt(d))             (B, a, N, N), per attention head
        A_static  = sum_o w[c, o] S_o                    (C, N, N), a depthwise k x k kernel
        y         = W_proj (alpha A_dynamic V + beta (A_static V + b_static))

    The knob: ``mixing="sigmoid"`` (the authors' released code) ``alpha = sigmoid(w)``,
    ``beta = 1 - alpha`` with one scalar ``w`` initialised to 0; ``mixing="independent"`` (the
    paper's text) two free scalars, both initialised to 0.5.

    ``heads`` is M = C: ``affinity(x)`` is ``(B, C, N, N)``, one per channel, because the static
    kernel differs per channel (channel c uses the dynamic affinity of its attention head).
    The constructor's ``heads=`` sets ``attention_heads`` (the a above), the name presets and
    ``create(..., heads=)`` use for every attention-type mixer. ``components(x)`` reads the
    affinities at the resolution of the attention heads (``(B|1, a, N, N)``).

    Fast path: ``alpha * SDPA(q, k, V) + beta * dwconv(V)``; no N x N matrix is built.
    """

    kind = "mixed"

    def describe(self) -> str:
        return "mixed: alpha*attention + beta*conv"


    def __init__(self, dim: int, heads: int = 8, kernel_size: int = 5, qkv_bias: bool = True,
                 mixing: str = "sigmoid"):
        super().__init__(dim)
        self.attention_heads = check_heads(dim, heads)
        self.head_dim = dim // self.attention_heads
        self.heads = dim
        self.kernel_size = check_positive_int("kernel_size", kernel_size, odd=True)
        self.mixing = check_choice("mixing", mixing, MIXINGS)
        self.qkv = nn.Linear(dim, 3 * dim, bias=check_bool("qkv_bias", qkv_bias))
        self.proj = nn.Linear(dim, dim)
        self.static = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        if self.mixing == "sigmoid":
            self.mix_logit = nn.Parameter(torch.zeros(()))
        else:
            self.alpha_param = nn.Parameter(torch.zeros(()))
            self.beta_param = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The knob starts even: ``w = 0`` (alpha = beta = 1/2), or alpha = beta = 0.5."""
        if self.mixing == "sigmoid":
            self.mix_logit.zero_()
        else:
            self.alpha_param.fill_(0.5)
            self.beta_param.fill_(0.5)

    def mixing_weights(self) -> dict[str, torch.Tensor]:
        """``{"alpha": 0-d, "beta": 0-d}``: the weights of the dynamic and the static affinity."""
        if self.mixing == "sigmoid":
            alpha = torch.sigmoid(self.mix_logit)
            return {"alpha": alpha, "beta": 1 - alpha}
        return {"alpha": self.alpha_param, "beta": self.beta_param}

    def static_kernels(self) -> torch.Tensor:
        """The static depthwise kernels ``w``: ``(C, k, k)``."""
        return self.static.weight[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.check_input(x)
        q, k, v = qkv_heads(self.qkv, x, self.attention_heads)
        w = self.mixing_weights()
        dynamic = merge_heads(F.scaled_dot_product_attention(q, k, v))  # A_dynamic V: (B, N, C)
        static = tokens(self.static(image(merge_heads(v), grid)))       # A_static V + b_static
        return image(self.proj(w["alpha"] * dynamic + w["beta"] * static), grid)

    # ------------------------------------------------------------------ the affinity view
    def values(self, x: torch.Tensor) -> torch.Tensor:
        """V with one head per channel: ``(B, C, N, 1)``."""
        self.check_input(x)
        v = qkv_heads(self.qkv, x, self.attention_heads)[2]
        return rearrange(v, "b m n d -> b (m d) n 1")

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * A_dynamic[head(c)] + beta * A_static[c]``: ``(B, C, N, N)``."""
        grid = self.check_input(x)
        q, k, _ = qkv_heads(self.qkv, x, self.attention_heads)
        dynamic = softmax_affinity(q, k).repeat_interleave(self.head_dim, dim=1)
        static = local_affinity(self.static_kernels(), grid).unsqueeze(0)
        w = self.mixing_weights()
        return w["alpha"] * dynamic + w["beta"] * static

    def components(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"dynamic", "static", "mixed"}`` at attention-head resolution, each ``(B|1, a, N, N)``.

        ``static`` is the depthwise kernel's affinity averaged over the channels of each
        attention head, so ``mixed = alpha * dynamic + beta * static`` is the mean of the exact
        per-channel affinities of that head.
        """
        grid = self.check_input(x)
        q, k, _ = qkv_heads(self.qkv, x, self.attention_heads)
        dynamic = softmax_affinity(q, k)
        static = local_affinity(self.static_kernels(), grid)
        static = rearrange(static, "(m d) n j -> m d n j", m=self.attention_heads).mean(1).unsqueeze(0)
        w = self.mixing_weights()
        return {"dynamic": dynamic, "static": static, "mixed": w["alpha"] * dynamic + w["beta"] * static}

    def _project(self, z, grid):
        y = rearrange(z, "b c n 1 -> b n c") + self.mixing_weights()["beta"] * self.static.bias
        return image(self.proj(y), grid)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2, "kernel_size": 3},
                {"dim": 6, "heads": 3, "kernel_size": 5, "mixing": "independent"}]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, attention_heads={self.attention_heads}, "
                f"kernel_size={self.kernel_size}, mixing={self.mixing!r}")
