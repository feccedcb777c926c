"""Barlow Twins: make the cross-correlation matrix of the two views' embeddings the identity.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, eq. (1)-(2). Each embedding dimension is standardised over the batch
(batch norm without affine, biased variance, eps 1e-5, as in the authors' code), then

    C_ij = sum_b z1_bi z2_bj / N
    L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

Under DDP pass the embeddings of every GPU (``medcl.dist.gather``): C is a
statistic of the whole batch.

Example:
    >>> import torch
    >>> from medcl.losses import barlow_twins
    >>> z1, z2 = torch.randn(16, 64), torch.randn(16, 64)
    >>> loss = barlow_twins(z1, z2, lambd=5e-3)
"""

from __future__ import annotations

import torch

from medcl.losses import _checks


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


@_checks.fp32
def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss of (N, D) embeddings, N >= 2; ``lambd`` weighs the off-diagonal."""
    _checks.pair("barlow_twins", z1, z2, min_n=2)
    _checks.positive("barlow_twins", "lambd", lambd, allow_zero=True)
    c = _standardise(z1, eps).t() @ _standardise(z2, eps) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag
