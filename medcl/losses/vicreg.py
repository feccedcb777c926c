"""VICReg: variance-invariance-covariance regularisation.

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, eq. (1)-(6):

    L = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')]
    s = mean squared error;  v(Z) = mean_j relu(1 - sqrt(Var(z_j) + eps));
    c(Z) = sum_{i != j} Cov(Z)_ij^2 / D

with unbiased (co)variances over the batch. As in the authors' code (and
pytorch-metric-learning's VICRegLoss) the variance term averages the two branches. Under DDP
pass the embeddings of every GPU: v and c are statistics of the whole batch.

Example:
    >>> import torch
    >>> from medcl.losses import vicreg
    >>> z1, z2 = torch.randn(16, 64), torch.randn(16, 64)
    >>> loss = vicreg(z1, z2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


def _variance(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    n, d = z.shape
    z = z - z.mean(0)
    cov = z.t() @ z / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@_checks.fp32
def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
           cov_weight: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg loss of (N, D) embeddings, N >= 2."""
    _checks.pair("vicreg", z1, z2, min_n=2)
    for arg, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
        _checks.positive("vicreg", arg, value, allow_zero=True)
    _checks.positive("vicreg", "eps", eps)
    return (sim_weight * F.mse_loss(z1, z2)
            + var_weight * (_variance(z1, eps) + _variance(z2, eps)) / 2
            + cov_weight * (_covariance(z1) + _covariance(z2)))
