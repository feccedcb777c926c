"""BYOL's normalised regression: the prediction of one view regresses the target of the other.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020, eq. (2):

    L = || p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z)

averaged over the batch. The caller detaches ``z`` (it comes from the momentum target network);
this function only computes.

Example:
    >>> import torch
    >>> from medcl.losses import normalized_regression
    >>> p, z = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = normalized_regression(p, z)      # in [0, 4]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def normalized_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of ``2 - 2 cos(p_i, z_i)``; ``p`` and ``z`` both (N, D)."""
    _checks.pair("normalized_regression", p, z, a_name="p", b_name="z")
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
