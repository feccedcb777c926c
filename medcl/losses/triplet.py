"""Triplet margin loss over every valid triplet of the batch.

Weinberger, Saul, "Distance Metric Learning for Large Margin Nearest Neighbor
Classification", JMLR 2009; Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015, eq. (1).
With ``d`` the Euclidean distance between L2-normalised embeddings, for every anchor ``a``,
positive ``p`` (same label, p != a) and negative ``n`` (other label):

    l(a, p, n) = max(0, d(a, p) - d(a, n) + margin)

averaged over the triplets with l > 0 (as pytorch-metric-learning's TripletMarginLoss does
with its default AvgNonZeroReducer); 0 when no triplet violates the margin or a batch has no
valid triplet (every sample of one class, or every class a singleton). Memory grows as
N^3 (N = 2 x batch for view pairs): fine for 3D batches of a few hundred.

Example:
    >>> import torch
    >>> from medcl.losses import triplet_margin
    >>> z, labels = torch.randn(8, 64), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    >>> loss = triplet_margin(z, labels, margin=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def triplet_margin(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.05) -> torch.Tensor:
    """Mean positive triplet loss of embeddings ``z`` (N, D) with integer ``labels`` (N,)."""
    _checks.embeddings_and_labels("triplet_margin", z, labels)
    _checks.positive("triplet_margin", "margin", margin, allow_zero=True)
    z = F.normalize(z, dim=1)
    d = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    valid = pos[:, :, None] & ~same[:, None, :]           # [a, p, n]
    if z.shape[0] < 3:
        raise ValueError(f"triplet_margin: needs at least 3 samples, got {z.shape[0]}")
    losses = F.relu(d[:, :, None] - d[:, None, :] + margin)[valid]
    return _checks.mean_nonzero(losses, z)
