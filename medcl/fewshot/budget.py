"""Which scans to label first: spread the labelling budget over the embedding space.

With no labels yet, the best few scans to label are the ones that *represent* the cohort.
Two classic choices, both on CL2N features (centred, L2-normalised: the geometry the prototype
head uses), one scan per subject:

- ``kcenter``: greedy k-center (the core-set of Sener & Savarese 2018, ICLR): start from the
  scan nearest the mean, then repeatedly add the scan farthest from everything chosen. Covers
  the space, outliers included.
- ``kmedoids``: k-medoids by alternating assignment and medoid update (Park & Jun 2009),
  initialised by k-means++ seeding (Arthur & Vassilvitskii 2007), best of ``n_init`` runs.
  Picks typical scans; listed largest cluster first.

:func:`evaluate_budget` checks the advice: at a budget of ``K x classes`` scans, a prototype
head fitted on the suggested scans (with their labels) against heads fitted on random scans of
the same number (no labels needed to pick them either), both scored on all other subjects.

Example::

    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(size=(20, 4)) + 8 * np.eye(4)[i] for i in range(3)])
    >>> picked = suggest(X, np.arange(60), 3, "kmedoids")
    >>> sorted(int(i) // 20 for i in picked)      # one scan from each cluster
    [0, 1, 2]
"""

from __future__ import annotations

import numpy as np

from medcl.fewshot.heads import PrototypeHead
from medcl.fewshot.ops import l2_normalise
from medcl.fewshot.metrics import balanced_accuracy

__all__ = ["kcenter_greedy", "kmedoids", "suggest", "evaluate_budget", "METHODS"]

METHODS = ("kcenter", "kmedoids")


def _cl2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    return l2_normalise(X - X.mean(0))


def _dist(Z: np.ndarray) -> np.ndarray:
    """Euclidean distances between unit rows (a monotone function of cosine similarity)."""
    return np.sqrt(np.clip(2.0 - 2.0 * (Z @ Z.T), 0, None))


def kcenter_greedy(Z: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` rows chosen by greedy k-center, in the order chosen."""
    D = _dist(Z)
    first = int(np.argmin(np.linalg.norm(Z - Z.mean(0), axis=1)))
    chosen = [first]
    nearest = D[first].copy()
    while len(chosen) < n:
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, D[nxt])
    return np.array(chosen)


def kmedoids(Z: np.ndarray, n: int, seed: int = 0, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Indices of ``n`` medoids (best total distance of ``n_init`` runs), largest cluster first."""
    D = _dist(Z)
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(n_init):
        medoids = [int(rng.integers(len(Z)))]
        while len(medoids) < n:                                   # k-means++ seeding
            d2 = D[:, medoids].min(1) ** 2
            medoids.append(int(rng.choice(len(Z), p=d2 / d2.sum())) if d2.sum() > 0 else
                           int(rng.choice(np.setdiff1d(np.arange(len(Z)), medoids))))
        medoids = np.array(medoids)
        for _ in range(max_iter):
            assign = np.argmin(D[:, medoids], axis=1)
            new = medoids.copy()
            for j in range(n):
                members = np.flatnonzero(assign == j)
                if len(members):
                    new[j] = members[np.argmin(D[np.ix_(members, members)].sum(1))]
            if np.array_equal(np.sort(new), np.sort(medoids)):
                break
            medoids = new
        cost = D[:, medoids].min(1).sum()
        if cost < best_cost - 1e-12:
            best, best_cost = medoids, cost
    sizes = np.bincount(np.argmin(D[:, best], axis=1), minlength=n)
    return best[np.argsort(-sizes, kind="stable")]


def suggest(features: np.ndarray, subjects: np.ndarray, n: int, method: str = "kmedoids", seed: int = 0) -> np.ndarray:
    """Row indices of the ``n`` scans to label first, in order, at most one scan per subject
    (a subject's first scan in row order stands for it)."""
    if method not in METHODS:
        raise ValueError(f"unknown suggestion method {method!r}; known: {', '.join(METHODS)}")
    features, subjects = np.asarray(features, dtype=float), np.asarray(subjects)
    if features.ndim != 2 or len(features) != len(subjects):
        raise ValueError(f"features (scans, dims) and subjects (scans,) must match, got {features.shape} and {subjects.shape}")
    _, first = np.unique(subjects, return_index=True)
    first = np.sort(first)
    if not 1 <= n <= len(first):
        raise ValueError(f"n must be between 1 and the number of subjects ({len(first)}), got {n}")
    Z = _cl2n(features[first])
    picked = kcenter_greedy(Z, n) if method == "kcenter" else kmedoids(Z, n, seed)
    return first[picked]


def _score(features, labels, subjects, support) -> float:
    """Balanced accuracy of a prototype head fitted on ``support`` rows, on every scan of the
    other subjects (classes missing from the support can never be predicted)."""
    query = ~np.isin(subjects, subjects[support])
    if len(np.unique(labels[support])) < 2:                      # one class: it is every prediction
        return balanced_accuracy(labels[query], np.full(int(query.sum()), labels[support][0]))
    head = PrototypeHead().fit(features[support], labels[support])
    return balanced_accuracy(labels[query], head.predict(features[query]))


def evaluate_budget(features, labels, subjects, shots, method: str = "kmedoids", n_random: int = 200,
                    seed: int = 0) -> dict:
    """Suggested against random supports, per K in ``shots`` (budget ``K x classes`` scans, one
    per subject), prototype head, balanced accuracy on all other subjects. Returns
    ``{str(K): {"budget", "suggested", "suggested_classes_covered", "random_mean",
    "random_95" (2.5th and 97.5th percentiles), "fraction_random_below" (random draws the
    suggestion beats), "stratified_random_mean" (K per class, needs labels: the reference)}}``."""
    features, labels, subjects = np.asarray(features, dtype=float), np.asarray(labels), np.asarray(subjects)
    classes = np.unique(labels)
    _, first = np.unique(subjects, return_index=True)
    first = np.sort(first)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(11,)))
    out = {}
    for k in shots:
        n = int(k) * len(classes)
        if n >= len(first):
            continue
        picked = suggest(features, subjects, n, method, seed)
        s = _score(features, labels, subjects, picked)
        rand = np.array([_score(features, labels, subjects, rng.choice(first, n, replace=False)) for _ in range(n_random)])
        strat = []
        for _ in range(n_random):
            sup = [rng.choice(first[labels[first] == c], min(int(k), int(np.sum(labels[first] == c)) - 1), replace=False)
                   for c in classes]
            strat.append(_score(features, labels, subjects, np.concatenate(sup)))
        out[str(k)] = {"budget": n, "method": method, "suggested": float(s),
                       "suggested_classes_covered": int(len(np.unique(labels[picked]))), "n_classes": int(len(classes)),
                       "random_mean": float(rand.mean()), "random_95": [float(np.percentile(rand, 2.5)),
                                                                      float(np.percentile(rand, 97.5))],
                       "fraction_random_below": float(np.mean(rand < s)), "n_random": int(n_random),
                       "stratified_random_mean": float(np.mean(strat))}
    return out
