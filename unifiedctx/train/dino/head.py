"""The DINO projection head: an MLP to an L2-normalised bottleneck, then a weight-normalised layer.

    h = MLP(f)                 f (B, in_dim) -> (B, bottleneck): Linear, GELU, ..., Linear
    z = h / ||h||_2            on the unit sphere
    out = (g v / ||v||) z      v (out_dim, bottleneck), one row norm per output; g fixed to 1

With ``g = 1`` every output is a cosine between ``z`` and a learned prototype direction, so the
logits lie in [-1, 1] and only the temperatures of the loss set how peaked the softmax is
(DINO's ``norm_last_layer=True``, which keeps training stable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ...validation import check_bool, check_positive_int


class DinoHead(nn.Module):
    """``(B, in_dim) -> (B, out_dim)``: MLP of ``layers`` linear maps, L2 norm, weight-normed last layer.

    Args:
        in_dim: width of the backbone's pooled feature.
        out_dim: number of prototypes (DINO: 65536; a few hundred to a few thousand at CPU scale).
        hidden_dim: width of the MLP's hidden layers.
        bottleneck_dim: width of the normalised bottleneck.
        layers: linear maps in the MLP (1: a single ``in_dim -> bottleneck`` map).
        batch_norm: a BatchNorm1d after each hidden linear map (DINO's ``use_bn``): it removes
            what all images share, so small networks whose features differ little between images
            start with a teacher that tells them apart.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1024,
        hidden_dim: int = 256,
        bottleneck_dim: int = 64,
        layers: int = 3,
        batch_norm: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("layers", layers),
        ):
            check_positive_int(name, value)
        check_bool("batch_norm", batch_norm)
        widths = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mlp.append(nn.Linear(a, b))
            if i < layers - 1:
                if batch_norm:
                    mlp.append(nn.BatchNorm1d(b))
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)  # g = 1: only the directions v are learned
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` features -> ``(B, out_dim)`` logits (cosines with the prototypes)."""
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise ValueError(f"features must have shape (B, {self.in_dim}), got {tuple(features.shape)}")
        z = F.normalize(self.mlp(features), dim=-1)
        return self.last_layer(z)
