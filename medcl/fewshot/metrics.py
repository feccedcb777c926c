"""Classification metrics for few-shot episodes, and the usual episodic 95% confidence interval.

Example::

    >>> balanced_accuracy(["a", "a", "a", "b"], ["a", "a", "a", "a"])
    0.5
    >>> [round(v, 3) for v in mean_ci95([0.5, 0.7])]
    [0.6, 0.404, 0.796]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy", "balanced_accuracy", "confusion", "mean_ci95"]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {y_true.shape} and {y_pred.shape}")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true ({len(y_true)}) and y_pred ({len(y_pred)}) differ in length")
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred are empty")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of predictions equal to the truth."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (as sklearn's ``balanced_accuracy_score``)."""
    y_true, y_pred = _pair(y_true, y_pred)
    _, cls = np.unique(y_true, return_inverse=True)
    hits = np.bincount(cls, weights=(y_true == y_pred).astype(float))
    return float(np.mean(hits / np.bincount(cls)))


def confusion(y_true, y_pred, classes) -> np.ndarray:
    """Counts ``(C, C)`` int64: row = true class, column = predicted class, both in ``classes`` order."""
    y_true, y_pred = _pair(y_true, y_pred)
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) == 0:
        raise ValueError(f"classes must be a non-empty 1-D sequence, got shape {classes.shape}")
    order = np.argsort(classes, kind="stable")
    ranked = classes[order]
    if len(np.unique(ranked)) != len(ranked):
        raise ValueError(f"classes has duplicates: {classes.tolist()}")
    n = len(classes)

    def index(y, name):
        pos = np.clip(np.searchsorted(ranked, y), 0, n - 1)
        unknown = ranked[pos] != y
        if unknown.any():
            raise ValueError(f"{name} has labels not in classes: {sorted(set(y[unknown].tolist()))}")
        return order[pos]

    flat = index(y_true, "y_true") * n + index(y_pred, "y_pred")
    return np.bincount(flat, minlength=n * n).reshape(n, n)


def mean_ci95(values) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` with ``mean ± 1.96 · sd / sqrt(n)`` (sample sd, ddof=1); one value gives ``(v, v, v)``.

    This is the interval few-shot papers report over episodes: it covers episode sampling only,
    not the choice of cohort, so it is optimistic for small cohorts.
    """
    v = np.asarray(values, dtype=float).ravel()
    if len(v) == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if not np.isfinite(v).all():
        raise ValueError("mean_ci95 values must be finite (found NaN or inf)")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, mean, mean
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half
