"""SwAV: swapped prediction of online cluster codes, with Sinkhorn-Knopp codes.

Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020. With ``z_v`` the L2-normalised embedding of
view ``v`` and ``C`` the ``K`` unit-norm prototypes, the scores of view ``v`` are
``s_v = z_v^T C`` (N, K). The codes ``q_g`` of a global view ``g`` spread the batch equally over
the prototypes (sec. 3.1, eq. (3)): ``Q = exp(C^T Z / eps)`` (K, N) is scaled by a fixed number of
Sinkhorn-Knopp iterations (Cuturi 2013) so that each prototype's row sums to ``1/K`` and each
sample's column to ``1/N``, then multiplied by ``N`` (one code per sample). Codes carry no
gradient. Every view predicts the code of every global view other than itself (eq. (1)-(2)):

    l(z_v, q_g) = - sum_k q_g^(k) log softmax(s_v / tau)^(k)
    L = 1/G sum_g 1/(V - 1) sum_{v != g} mean over the batch of l(z_v, q_g)

with ``V`` views, of which the first ``G`` are global: with multi-crop (sec. 3.2) the small local
views predict the global views' codes and are never assigned codes themselves.

``queue`` (sec. 3.1, "working with small batches"): the scores of earlier batches' embeddings
against the current prototypes, joined to the batch's for the Sinkhorn-Knopp iterations; only
the batch's codes are used. ``all_reduce`` (under DDP, :func:`medcl.dist.all_reduce_sum`): the
sums over samples (the total, each prototype's row, the number of samples) are summed over the
ranks, so the codes are those of the global batch and every rank's queue; a sample's own
column sum is local. Each rank's loss is then the mean over its own samples, and DDP's average
of the gradients is the one-process gradient of the global batch.

Example:
    >>> import torch, torch.nn.functional as F
    >>> from medcl.losses import swav
    >>> protos = F.normalize(torch.randn(16, 32), dim=1)
    >>> views = [F.normalize(torch.randn(8, 32), dim=1) for _ in range(4)]   # 2 global, 2 local
    >>> loss = swav([z @ protos.t() for z in views], temperature=0.1)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from medcl.losses import _checks

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


@_checks.fp32
@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3,
             all_reduce: Reduce | None = None) -> torch.Tensor:
    """Codes (N, K), each row summing to 1, of scores (N, K) (cosines of samples and prototypes).

    ``exp((s - 1) / eps)``: the shift by a cosine's largest value keeps the exponential in
    range and cancels in the first normalisation (by the total)."""
    reduce = all_reduce or _same
    q = torch.exp((scores.detach() - 1) / epsilon).t()
    k = q.shape[0]
    total = reduce(torch.stack([q.sum(), torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device)]))
    q, n = q / total[0], total[1]
    for _ in range(iterations):
        q = q / reduce(q.sum(dim=1, keepdim=True)) / k      # each prototype: 1/K of the mass
        q = q / q.sum(dim=0, keepdim=True) / n              # each sample: 1/N
    return (q * n).t()


@_checks.fp32
def swav(scores: Sequence[torch.Tensor], temperature: float | torch.Tensor = 0.1, epsilon: float = 0.05,
         iterations: int = 3, n_global: int = 2, queue: Sequence[torch.Tensor | None] | None = None,
         all_reduce: Reduce | None = None) -> torch.Tensor:
    """SwAV loss of the prototype scores of ``V`` views, each (N, K), the ``n_global`` global
    views first; ``queue``: per global view, earlier scores (M, K) or None."""
    if len(scores) < 2:
        raise ValueError(f"swav: needs at least 2 views, got {len(scores)}")
    if not 1 <= n_global <= len(scores):
        raise ValueError(f"swav: n_global must be in [1, {len(scores)}], got {n_global}")
    for s in scores:
        _checks.pair("swav", scores[0], s, a_name="scores[0]", b_name="every view's scores")
    _checks.positive("swav", "temperature", temperature)
    _checks.positive("swav", "epsilon", epsilon)
    if iterations < 1:
        raise ValueError(f"swav: iterations must be >= 1, got {iterations}")
    queue = list(queue) if queue is not None else [None] * n_global
    if len(queue) != n_global or any(r is not None and (r.ndim != 2 or r.shape[1] != scores[0].shape[1])
                                     for r in queue):
        raise ValueError(f"swav: queue must hold {n_global} entries of (M, {scores[0].shape[1]}) or None")
    scores = [_checks.upcast(s) for s in scores]
    n = scores[0].shape[0]
    logp = [F.log_softmax(s / temperature, dim=1) for s in scores]
    loss = scores[0].new_zeros(())
    for g in range(n_global):
        rows = scores[g] if queue[g] is None else torch.cat([scores[g], _checks.upcast(queue[g]).to(scores[g])])
        q = sinkhorn(rows, epsilon, iterations, all_reduce)[:n]
        others = [v for v in range(len(scores)) if v != g]
        loss = loss + sum(-(q * logp[v]).sum(dim=1).mean() for v in others) / len(others)
    return loss / n_global
