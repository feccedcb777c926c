"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, eq. (1). For ``2N`` embeddings made of ``N`` positive pairs,
each embedding's positive is its partner and its ``2N - 2`` negatives are all the others:

    l(i, j) = -log  exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)

averaged over all ``2N`` anchors, with ``sim`` the cosine similarity.

Example:
    >>> import torch
    >>> from medcl.losses import nt_xent
    >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = nt_xent(z1, z2, temperature=0.2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float | torch.Tensor = 0.5) -> torch.Tensor:
    """Mean NT-Xent loss of the pairs ``(z1[i], z2[i])``; both of shape (N, D), N >= 2."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: z1 and z2 must both be (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("nt_xent: needs at least 2 pairs (one pair has no negatives)")
    if not torch.is_tensor(temperature) and temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.t() / temperature).masked_fill(self_mask, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)
