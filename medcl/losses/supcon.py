"""Supervised contrastive loss: every sample of the same class is a positive.

Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. (2) (L_out^sup). With
L2-normalised embeddings, ``P(i)`` the other samples sharing ``i``'s label and ``A(i)`` all
samples but ``i``:

    L_i = -1/|P(i)| sum_{p in P(i)} log  exp(z_i . z_p / t) / sum_{a in A(i)} exp(z_i . z_a / t)

averaged over the anchors that have at least one positive. Give each view its scan's label;
a scan without a label gets a label of its own, so its two views are each other's only
positive (medcl.ssl.supcon does this) and the loss reduces to NT-Xent for it.

Example:
    >>> import torch
    >>> from medcl.losses import supcon
    >>> z, labels = torch.randn(8, 128), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    >>> loss = supcon(z, labels, temperature=0.1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor = 0.1) -> torch.Tensor:
    """Mean supervised contrastive loss of embeddings ``z`` (N, D) with integer ``labels`` (N,)."""
    _checks.embeddings_and_labels("supcon", z, labels)
    _checks.positive("supcon", "temperature", temperature)
    n = z.shape[0]
    z = F.normalize(z, dim=1)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    has_pos = pos.any(1)
    if not has_pos.any():
        raise ValueError("supcon: no sample has a positive (every label occurs once)")
    logits = (z @ z.t() / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(~pos, 0.0)
    per_anchor = -log_prob.sum(1)[has_pos] / pos.sum(1)[has_pos]
    return per_anchor.mean()
