"""Episodic N-way K-shot evaluation of frozen features with a few-shot head.

Example::

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["AD", "CN"], 10)
    >>> subjects = np.array([f"s{i}" for i in range(20)])
    >>> features = rng.normal(size=(20, 8)) + 3.0 * (labels == "AD")[:, None]
    >>> res = evaluate_episodes(features, labels, subjects, shots=[1, 5], n_episodes=100)
    >>> sorted(res), res["5"]["accuracy"] > 0.9
    (['1', '5'], True)
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from medcl.fewshot.episodes import Episode, _group, sample_episodes
from medcl.fewshot.heads import HEADS, make_head
from medcl.fewshot.metrics import accuracy, balanced_accuracy, confusion, mean_ci95

__all__ = ["evaluate_episodes"]


def _predict(features, y, episodes: list[Episode], head: str, head_kwargs: dict) -> list[np.ndarray]:
    """Query predictions of a fresh head fitted on each episode's support set."""
    return [make_head(head, **head_kwargs).fit(features[ep.support], y[ep.support]).predict(features[ep.query])
            for ep in episodes]


def _check_shots(shots) -> list[int]:
    shots = list(shots) if not isinstance(shots, (int, np.integer)) else [shots]
    if not shots:
        raise ValueError("shots is empty; give at least one K")
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"shots must be ints >= 1, got {k!r}")
    return list(dict.fromkeys(int(k) for k in shots))


def evaluate_episodes(features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, shots: Sequence[int],
                      head: str = "prototype", n_query: int = 5, n_episodes: int = 600, seed: int = 0,
                      n_way: int | None = None, head_kwargs: dict | None = None) -> dict:
    """Mean accuracy and balanced accuracy with 95% CIs over episodes, per K in ``shots``.

    Returns ``{str(K): {"accuracy", "accuracy_ci95": [lo, hi], "balanced_accuracy",
    "ci95": [lo, hi] (of balanced accuracy), "n_episodes", "classes" (sorted),
    "confusion" (summed over episodes, rows true)}}``. Every K uses episodes from the same
    ``seed``, so encoders and heads compared with one seed see the same episodes. A K that leaves
    some class without a query subject (K > ``max_shots``) is skipped with a warning; if every K
    is skipped the result is ``{}``.
    """
    features = np.asarray(features, dtype=float)
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (scans, dims), got shape {features.shape}")
    if len(features) != len(labels):
        raise ValueError(f"features ({len(features)} rows) and labels ({len(labels)}) differ in length")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known heads: {', '.join(sorted(HEADS))}")
    head_kwargs = dict(head_kwargs or {})
    make_head(head, **head_kwargs)  # bad kwargs fail here, before any episode
    shots = _check_shots(shots)

    cohort = _group(labels, subjects)
    sizes = [len(s) for s in cohort.class_subjects]
    limit = min(sizes) - 1  # == max_shots(labels, subjects)
    skipped = [k for k in shots if k > limit]
    if skipped:
        smallest = cohort.classes.tolist()[int(np.argmin(sizes))]
        warnings.warn(f"skipping shots {skipped}: class {smallest!r} has {limit + 1} subjects, "
                      f"so only K <= {limit} keeps a query subject", stacklevel=2)
    classes, y = np.unique(labels, return_inverse=True)
    results = {}
    for k in (k for k in shots if k <= limit):
        episodes = sample_episodes(labels, subjects, k, n_query, n_episodes, seed, n_way)
        preds = _predict(features, y, episodes, head, head_kwargs)
        results[str(k)] = _summarise(y, episodes, preds, classes)
    return results


def _summarise(y, episodes, preds, classes) -> dict:
    truth = [y[ep.query] for ep in episodes]
    acc = mean_ci95([accuracy(t, p) for t, p in zip(truth, preds)])
    bacc = mean_ci95([balanced_accuracy(t, p) for t, p in zip(truth, preds)])
    conf = confusion(np.concatenate(truth), np.concatenate(preds), np.arange(len(classes)))
    return {
        "accuracy": float(acc[0]), "accuracy_ci95": [float(acc[1]), float(acc[2])],
        "balanced_accuracy": float(bacc[0]), "ci95": [float(bacc[1]), float(bacc[2])],
        "n_episodes": len(episodes),
        "classes": classes.tolist(),
        "confusion": conf.tolist(),
    }
