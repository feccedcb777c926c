"""Embed scans with a frozen encoder: the deterministic whole-foreground view of each scan."""

from __future__ import annotations

import numpy as np
import torch

from medcl.augment import eval_view
from medcl.data.cohort import Cohort
from medcl.models import Encoder


@torch.no_grad()
def embed_views(encoder: Encoder, views: list[torch.Tensor], batch_size: int = 8) -> np.ndarray:
    """(N, feature_dim) float32 representations of (1, S, S, S) views."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(views), batch_size):
        x = torch.stack(views[i:i + batch_size]).to(device)
        out.append(encoder(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, encoder.feature_dim), np.float32)


def embed_cohort(encoder: Encoder, cohort: Cohort, view_size: int, batch_size: int = 8) -> np.ndarray:
    """Representations of every scan in ``cohort``, in manifest order."""
    views = [eval_view(cohort.image(i), cohort.mask(i), view_size) for i in range(len(cohort))]
    return embed_views(encoder, views, batch_size)
