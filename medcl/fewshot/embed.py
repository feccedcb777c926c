"""Embed scans with a frozen encoder: the deterministic whole-foreground view of each scan;
and a 2-D map of embeddings for the report."""

from __future__ import annotations

import numpy as np
import torch

from medcl.augment import eval_view
from medcl.data.cohort import Cohort
from medcl.fewshot.ops import l2_normalise
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


def cohort_views(cohort: Cohort, view_size: int) -> list[torch.Tensor]:
    """The evaluation view ``(1, S, S, S)`` of every scan in ``cohort``, in manifest order
    (made once, then shared by every encoder and baseline)."""
    return [eval_view(cohort.image(i), cohort.mask(i), view_size) for i in range(len(cohort))]


def embed_cohort(encoder: Encoder, cohort: Cohort, view_size: int, batch_size: int = 8) -> np.ndarray:
    """Representations of every scan in ``cohort``, in manifest order."""
    return embed_views(encoder, cohort_views(cohort, view_size), batch_size)


def tsne_map(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(N, 2)`` t-SNE map (van der Maaten & Hinton 2008) of CL2N features (centred,
    L2-normalised: the geometry of the prototype head); perplexity ``min(30, (N - 1) / 3)``."""
    from sklearn.manifold import TSNE


    X = np.asarray(features, dtype=np.float64)
    Z = l2_normalise(X - X.mean(0))
    if len(Z) < 4:
        return np.c_[np.arange(len(Z), dtype=float), np.zeros(len(Z))]
    perplexity = float(max(1.0, min(30.0, (len(Z) - 1) / 3)))
    method = "exact" if len(Z) <= 500 else "barnes_hut"     # exact is faster on the small cohorts here
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500, method=method).fit_transform(Z)
