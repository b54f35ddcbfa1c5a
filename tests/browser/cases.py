"""The explorers the browser tests open, built the same way in the test process and in the
JupyterLab kernel (seeded), so the test can compute what the browser must draw."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unifiedctx.models import create_model
from unifiedctx.widgets import AffinityExplorer

START_LAYER = "stages.1.blocks.0.mixer"  # container_nano: a mixed (Container) layer on 8x8


def seeded(name: str, seed: int) -> torch.nn.Module:
    """A preset with seeded random weights (nudged, so no map is flat by initialisation)."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def smooth_images(n: int = 2, size: int = 32) -> torch.Tensor:
    """Seeded smooth images (4x4 noise upsampled), so the query marker stands out."""
    noise = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


def live_explorer() -> AffinityExplorer:
    """Two nano models (a Container and a DeiT) on two images: every control has a choice."""
    models = {"container": seeded("container_nano", 0), "deit": seeded("deit_tiny_nano", 1)}
    return AffinityExplorer(models, smooth_images(), layer=START_LAYER, head=0, query=(0, 0))
