"""Multi-class N-pair loss: each anchor picks its positive out of the other pairs' positives.

Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016,
eq. (3)-(4). For N pairs (anchor f_i, positive f_i+) of N different classes, with plain dot
products (no normalisation):

    L = 1/N sum_i log(1 + sum_{j != i} exp(f_i . f_j+ - f_i . f_i+))
      = cross-entropy of the logits f_i . f_j+ with target j = i

plus ``l2_reg * mean_i (||f_i||^2 + ||f_i+||^2)``, the penalty Sohn adds (§3.2.2) to keep
the unnormalised embeddings small. With ``labels``, a positive f_j+ whose label equals the
anchor's is not used as a negative (medcl's batches hold several scans of a class); an anchor
left with no negative adds log(1 + 0) = 0.

Example:
    >>> import torch
    >>> from medcl.losses import n_pair
    >>> anchors, positives = torch.randn(8, 64), torch.randn(8, 64)
    >>> loss = n_pair(anchors, positives, l2_reg=0.002)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def n_pair(anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor | None = None,
           l2_reg: float = 0.0) -> torch.Tensor:
    """N-pair loss of the pairs ``(anchors[i], positives[i])``, both (N, D), N >= 2."""
    _checks.pair("n_pair", anchors, positives, min_n=2, a_name="anchors", b_name="positives")
    _checks.positive("n_pair", "l2_reg", l2_reg, allow_zero=True)
    a, p = anchors, positives
    logits = a @ p.t()
    if labels is not None:
        _checks.embeddings_and_labels("n_pair", a, labels)
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(same, float("-inf"))
    loss = F.cross_entropy(logits, torch.arange(len(a), device=a.device))
    if l2_reg:
        loss = loss + l2_reg * (a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean())
    return loss
