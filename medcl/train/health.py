"""Training health, logged to MLflow as ``health/*``: is the representation collapsing?

Computed every ``train.log_every_steps`` steps on the batch's L2-normalised projections ``z``
(what the loss sees; for BYOL the online projections), gathered from every rank, as tensors on
the training device (fetched with the step's other scalars, :class:`medcl.train.step.StepMetrics`).

- ``health/alignment``: mean ``||f(x) - f(x+)||^2`` over the positive pairs of the batch, and
  ``health/uniformity``: ``log mean exp(-2 ||f(x) - f(y)||^2)`` over all pairs, both on
  L2-normalised embeddings (Wang & Isola, "Understanding Contrastive Representation Learning
  through Alignment and Uniformity on the Hypersphere", ICML 2020, eq. 4-5 with alpha = t = 2).
  Lower is better for both; a collapsed encoder has alignment 0 and uniformity 0.
- ``health/std``: the per-dimension standard deviation of the L2-normalised embeddings,
  averaged over dimensions, and ``health/std_ratio`` = std x sqrt(dim): about 1 for
  embeddings spread over the sphere, 0 for complete collapse (SimSiam, Chen & He 2021, §4.1).
  Below ``train.collapse_threshold`` the loop warns and ``health/collapsed`` is 1.
- ``health/knn_balanced_accuracy`` (optional, ``train.knn_every_epochs``): leave-one-subject-out
  k-nearest-neighbour balanced accuracy of the encoder's representations of the labelled scans
  of the pretraining cohort (their whole-foreground views), a cheap online probe.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medcl.augment import eval_view


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Wang & Isola eq. (4): E ||f(x) - f(x+)||^alpha over the pairs (z1[i], z2[i])."""
    a, b = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return (a - b).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola eq. (5): log E exp(-t ||f(x) - f(y)||^2) over distinct pairs."""
    z = F.normalize(z.float(), dim=1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log()


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch standard deviation of L2-normalised embeddings."""
    return F.normalize(z.float(), dim=1).std(0).mean()


def health_metrics(z1: torch.Tensor, z2: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    """The ``health/*`` metrics of one batch of embedding pairs (N >= 2), as 0-d tensors on
    the embeddings' device (nothing is copied to the host)."""
    z = torch.cat([z1, z2])
    std = embedding_std(z)
    ratio = std * math.sqrt(z.shape[1])
    return {"health/alignment": alignment(z1, z2), "health/uniformity": uniformity(z),
            "health/std": std, "health/std_ratio": ratio, "health/collapsed": (ratio < threshold).float()}


def knn_balanced_accuracy(features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, k: int = 10) -> float:
    """Leave-one-subject-out kNN (cosine similarity, similarity-weighted votes) balanced accuracy."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    sim[subjects[:, None] == subjects[None, :]] = -np.inf      # never a neighbour from the same subject
    classes = np.unique(labels)
    pred = []
    for i in range(len(f)):
        order = np.argsort(-sim[i])[:k]
        order = order[np.isfinite(sim[i, order])]
        votes = {c: float(np.sum(sim[i, order][labels[order] == c] + 1.0)) for c in classes}
        pred.append(max(votes, key=votes.get))
    pred = np.array(pred)
    return float(np.mean([np.mean(pred[labels == c] == c) for c in classes]))


class KnnProbe:
    """Online kNN on the labelled scans of a cohort; their eval views are made once."""

    def __init__(self, cohort, view_size: int, k: int, max_scans: int = 256):
        idx = [i for i in range(len(cohort)) if cohort.rows[i]["label"]][:max_scans]
        self.labels = np.array([cohort.rows[i]["label"] for i in idx])
        self.subjects = np.array([cohort.rows[i]["subject_key"] for i in idx])
        self.k = k
        self.ok = len(set(self.labels.tolist())) >= 2 and len(set(self.subjects.tolist())) >= 2
        self.views = [eval_view(cohort.image(i), cohort.mask(i), view_size) for i in idx] if self.ok else []

    @torch.no_grad()
    def __call__(self, encoder: torch.nn.Module, device: torch.device) -> float | None:
        if not self.ok:
            return None
        was_training = encoder.training
        encoder.eval()
        dtype = next(encoder.parameters()).dtype
        feats = [encoder(torch.stack(self.views[i:i + 8]).to(device, dtype)).float().cpu()
                 for i in range(0, len(self.views), 8)]
        encoder.train(was_training)
        return knn_balanced_accuracy(torch.cat(feats).numpy(), self.labels, self.subjects, self.k)
