"""Contrastive loss with margins on pairs: pull positives within one margin, push negatives
beyond another.

Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR
2006, eq. (4), in the form pytorch-metric-learning's ContrastiveLoss computes: with ``d`` the
Euclidean distance between L2-normalised embeddings, over every ordered pair i != j,

    L = mean_nz over positive pairs of max(0, d_ij - pos_margin)
      + mean_nz over negative pairs of max(0, neg_margin - d_ij)

where ``mean_nz`` averages the pairs with a non-zero loss (0 when there are none, or when the
batch has no pair of that kind). Hadsell et
al. square the two terms and fix ``pos_margin = 0``; these are the margins, not the squares,
that metric-learning libraries use.

Example:
    >>> import torch
    >>> from medcl.losses import contrastive_margin
    >>> z, labels = torch.randn(8, 64), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    >>> loss = contrastive_margin(z, labels, pos_margin=0.0, neg_margin=1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def contrastive_margin(z: torch.Tensor, labels: torch.Tensor, pos_margin: float = 0.0,
                       neg_margin: float = 1.0) -> torch.Tensor:
    """Margin contrastive loss of embeddings ``z`` (N, D) with integer ``labels`` (N,)."""
    _checks.embeddings_and_labels("contrastive_margin", z, labels)
    _checks.positive("contrastive_margin", "pos_margin", pos_margin, allow_zero=True)
    _checks.positive("contrastive_margin", "neg_margin", neg_margin)
    z = F.normalize(z, dim=1)
    d = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    if z.shape[0] < 2:
        raise ValueError(f"contrastive_margin: needs at least 2 samples, got {z.shape[0]}")
    return (_checks.mean_nonzero(F.relu(d[pos] - pos_margin), z)
            + _checks.mean_nonzero(F.relu(neg_margin - d[~same]), z))
