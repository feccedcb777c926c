"""InfoNCE with a queue of negatives: MoCo's contrastive loss.

Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018 (the
InfoNCE bound); He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR 2020, eq. (1). For a query ``q`` with positive key ``k+`` and
negatives ``k_1 .. k_K``, all L2-normalised:

    L_q = -log  exp(q . k+ / t) / (exp(q . k+ / t) + sum_i exp(q . k_i / t))

The negatives are the ``queue`` (keys of earlier batches) and, with ``in_batch=True``, the
other keys of the current batch too (as in MoCo v3, Chen, Xie, He, ICCV 2021), which under
DDP are the keys of every GPU. The loss is the mean over queries.

Example:
    >>> import torch
    >>> from medcl.losses import info_nce
    >>> q, k, queue = torch.randn(8, 128), torch.randn(8, 128), torch.randn(4096, 128)
    >>> loss = info_nce(q, k, temperature=0.2, queue=queue)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medcl.losses import _checks


@_checks.fp32
def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float | torch.Tensor = 0.2,
             queue: torch.Tensor | None = None, in_batch: bool = True) -> torch.Tensor:
    """Mean InfoNCE of queries ``query`` (N, D) whose positives are ``key`` (N, D), row by row;
    negatives: ``queue`` (K, D) and, if ``in_batch``, the other rows of ``key``."""
    _checks.pair("info_nce", query, key, a_name="query", b_name="key")
    _checks.positive("info_nce", "temperature", temperature)
    if queue is not None and (queue.ndim != 2 or queue.shape[1] != query.shape[1]):
        raise ValueError(f"info_nce: queue must be (K, {query.shape[1]}), got {tuple(queue.shape)}")
    n_neg = (query.shape[0] - 1 if in_batch else 0) + (0 if queue is None else queue.shape[0])
    if n_neg == 0:
        raise ValueError("info_nce: no negatives (give a non-empty queue, or in_batch=True with N >= 2)")
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    if in_batch:
        parts, target = [q @ k.t()], torch.arange(q.shape[0], device=q.device)
    else:
        parts, target = [(q * k).sum(1, keepdim=True)], torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    if queue is not None and queue.shape[0]:
        parts.append(q @ F.normalize(queue.to(q.dtype), dim=1).t())
    return F.cross_entropy(torch.cat(parts, dim=1) / temperature, target)
