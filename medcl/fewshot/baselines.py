"""Baselines that every few-shot evaluation reports beside the pretrained encoder.

- **raw voxels (PCA)**: the evaluation view's voxels, projected on the principal components of
  the unlabelled pretraining scans (the same scans the encoder saw; no labels), then the same
  heads as the encoder's features. If pretraining left no scans aside, PCA is fitted on the
  evaluation scans themselves (still without labels).
- **radiomics (IBSI, MIRP)**: hand-crafted IBSI features of each scan's foreground mask on a
  coarser grid (:mod:`medcl.fewshot.radiomics`, cached per cohort), z-scored with the mean and
  standard deviation of the unlabelled pretraining scans' features (as the PCA above is fitted
  on them), then the same heads; computed by :func:`medcl.fewshot.suite.evaluate_encoders`.
- **3D ResNet from scratch**: a small MONAI ResNet-10 trained on the K support scans of an
  episode (cross-entropy, Adam, left-right flips), then scored on the episode's queries. It is
  deliberately cheap (a narrow network, downsampled views, few steps, few episodes: see the
  ``fewshot.scratch_*`` config keys), which the report says; it is the "no pretraining, no
  frozen features" reference, not a tuned supervised model.
- **linear probe on all labels** (the ceiling): logistic regression on every labelled
  evaluation scan, scored by cross-validation over subjects (stratified group K-fold), its ``C``
  chosen in each training fold by an inner stratified group K-fold (subjects never split).

Example::

    >>> rng = np.random.default_rng(0)
    >>> pca_features(rng.normal(size=(10, 50)), rng.normal(size=(4, 50)), 3).shape
    (4, 3)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from medcl.fewshot.episodes import EpisodeBatch
from medcl.fewshot.evaluate import episode_truth
from medcl.fewshot.logistic import fit_logistic, logits, loso_feasible, loso_fit, span_coordinates
from medcl.fewshot.ops import l2_normalise
from medcl.fewshot.stats import EpisodePredictions
from medcl.models import build_encoder

__all__ = ["BASELINES", "SOURCE_LABELS", "pca_features", "scratch_predictions", "linear_probe", "downsample_views"]

# fewshot.baselines: the encoder-free baselines scored beside the random-init encoder
BASELINES = ("raw_voxels", "radiomics", "scratch")

# every feature source and baseline of an evaluation, as reports and paired comparisons name it
SOURCE_LABELS = {"pretrained": "pretrained encoder", "random_init": "random-init encoder",
                 "raw_voxels": "raw voxels (PCA)", "radiomics": "radiomics (IBSI, MIRP)",
                 "scratch": "3D ResNet from scratch"}


def pca_features(fit_on: np.ndarray, transform: np.ndarray, n_components: int) -> np.ndarray:
    """Project ``transform`` rows on the first ``n_components`` principal components of
    ``fit_on`` rows (centred by ``fit_on``'s mean; at most ``len(fit_on) - 1`` components)."""
    fit_on = np.asarray(fit_on, dtype=np.float64).reshape(len(fit_on), -1)
    transform = np.asarray(transform, dtype=np.float64).reshape(len(transform), -1)
    if fit_on.shape[1] != transform.shape[1]:
        raise ValueError(f"pca_features: {fit_on.shape[1]} voxels to fit on but {transform.shape[1]} to transform")
    if len(fit_on) < 2:
        raise ValueError(f"pca_features: need at least 2 scans to fit PCA on, got {len(fit_on)}")
    mean = fit_on.mean(0)
    X = fit_on - mean
    lam, vec = np.linalg.eigh(X @ X.T)                   # n x n: cheap when voxels >> scans
    order = np.argsort(lam)[::-1][: max(1, min(int(n_components), len(fit_on) - 1))]
    lam, vec = np.clip(lam[order], 1e-12, None), vec[:, order]
    components = (X.T @ vec) / np.sqrt(lam)              # (voxels, r), orthonormal columns
    return (transform - mean) @ components


def downsample_views(views: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 1, S, S, S)`` views resampled to ``size`` per side (area averaging)."""
    if views.shape[-1] == size:
        return views.float()
    return F.adaptive_avg_pool3d(views.float(), size) if size < views.shape[-1] else \
        F.interpolate(views.float(), size=(size,) * 3, mode="trilinear", align_corners=False)


def _train_one(x, y, n_way, widen, steps, lr, seed):
    enc = build_encoder("resnet10", 2, widen, seed=seed)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None                            # running stats = average over all steps
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(enc.feature_dim, n_way)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.nn.init.normal_(head.weight, std=0.01)
        torch.nn.init.zeros_(head.bias)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    enc.train()
    for _ in range(steps):
        flip = torch.rand(len(x), generator=g) < 0.5     # left-right flip, the brain's symmetry
        xb = torch.where(flip[:, None, None, None, None], x.flip(2), x)
        loss = F.cross_entropy(head(enc(xb)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    return lambda q: torch.softmax(head(enc(q)), -1)


def scratch_predictions(views: torch.Tensor, labels, subjects, batch: EpisodeBatch, widen: float = 0.125,
                        steps: int = 20, lr: float = 3e-3, size: int = 24, seed: int = 0) -> EpisodePredictions:
    """Train a fresh 3D ResNet-10 on each episode's support views and predict its queries.

    ``views``: ``(N, 1, S, S, S)`` evaluation views of every scan (row order of ``labels``),
    downsampled to ``size``; episode ``e`` trains with seed ``seed + e``."""
    x_all = downsample_views(torch.as_tensor(views), size)
    C = len(batch.class_names)
    proba = np.zeros(batch.query.shape + (C,))
    local_y = torch.as_tensor(np.repeat(np.arange(batch.n_way), batch.k_shot))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # batches of a few small volumes: one thread is several times faster
    try:
        for e in range(batch.n_episodes):
            predict = _train_one(x_all[batch.support[e]], local_y, batch.n_way, widen, steps, lr, seed + e)
            q = batch.query[e]
            with torch.no_grad():
                p = predict(x_all[q[q >= 0]]).double().numpy()
            proba[e, np.flatnonzero(q >= 0)[:, None], batch.classes[e][None, :]] = p
    finally:
        torch.set_num_threads(threads)
    y, subj = episode_truth(batch, labels, subjects)
    member = np.zeros((batch.n_episodes, C), bool)
    np.put_along_axis(member, batch.classes, True, axis=1)
    return EpisodePredictions(y, proba, subj, batch.class_names.tolist(), member,
                              {"widen_factor": widen, "steps": steps, "lr": lr, "view_size": size})


def _stratified_group_folds(y, groups, n_folds, seed):
    from sklearn.model_selection import StratifiedGroupKFold

    n_folds = max(2, min(n_folds, min(len(np.unique(groups[y == c])) for c in np.unique(y))))
    return list(StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))


def linear_probe(features, labels, subjects, Cs=(0.1, 1.0, 10.0, 100.0), n_folds: int = 5, seed: int = 0,
                 C_fallback: float = 1.0) -> EpisodePredictions:
    """Cross-validated predictions of a logistic regression fitted on *all* labels of the other
    folds (the ceiling of few-shot heads): CL2N features (centred by the training fold's mean).
    Returned as one "episode" whose queries
    are every scan, so :func:`~medcl.fewshot.stats.summarise` bootstraps it over subjects.
    ``C`` is chosen in each training fold by an inner ``n_folds``-fold split grouped by subject."""
    X = np.asarray(features, dtype=float)
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    classes, y = np.unique(labels, return_inverse=True)
    _, s = np.unique(subjects, return_inverse=True)
    outer = _stratified_group_folds(y, s, n_folds, seed)
    # every outer fold is one problem of one batch: coordinates in the span of its training
    # rows, padded (weight 0) to the largest fold
    parts = []
    for train, test in outer:
        mean = X[train].mean(0)
        zt, zq = span_coordinates(l2_normalise(X[train] - mean)[None], l2_normalise(X[test] - mean)[None])
        inner = np.zeros(len(train), int)                 # inner folds, grouped by subject, to choose C
        for j, (_, held) in enumerate(_stratified_group_folds(y[train], s[train], n_folds, seed + 1)):
            inner[held] = j
        parts.append((train, test, zt[0], zq[0], inner))
    n_max, r_max = max(len(p[0]) for p in parts), max(p[2].shape[1] for p in parts)
    Zb, yb, gb, wb = np.zeros((len(parts), n_max, r_max)), np.zeros((len(parts), n_max), int), \
        np.zeros((len(parts), n_max), int), np.zeros((len(parts), n_max))
    for i, (train, _, zt, _, inner) in enumerate(parts):
        Zb[i, :len(train), :zt.shape[1]], yb[i, :len(train)], gb[i, :len(train)] = zt, y[train], inner
        wb[i, :len(train)] = 1.0
    if all(loso_feasible(yb[i][wb[i] > 0], gb[i][wb[i] > 0]) for i in range(len(parts))):
        chosen, _, coef, intercept = loso_fit(Zb, yb, gb, len(classes), Cs, wb)
    else:
        chosen = np.full(len(parts), float(C_fallback))
        coef, intercept = fit_logistic(Zb, yb, len(classes), chosen, wb)
    proba = np.zeros((len(y), len(classes)))
    for i, (_, test, _, zq, _) in enumerate(parts):
        zq = np.pad(zq, ((0, 0), (0, r_max - zq.shape[1])))
        lg = logits(zq[None], coef[i:i + 1], intercept[i:i + 1])[0]
        p = np.exp(lg - lg.max(1, keepdims=True))
        proba[test] = p / p.sum(1, keepdims=True)
    chosen = [float(c) for c in chosen]
    return EpisodePredictions(y[None], proba[None], s[None], classes.tolist(), np.ones((1, len(classes)), bool),
                              {"folds": len(chosen), "C": chosen})
