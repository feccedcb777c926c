"""Classification metrics on one set of predictions, and the usual episodic 95% confidence
interval. :mod:`medcl.fewshot.stats` computes the same metrics for every episode at once and
puts subject-bootstrap intervals on them; these single-set versions are the reference its tests
check it against (and are checked against scikit-learn themselves).

- discrimination: accuracy, balanced accuracy, macro-F1, one-vs-rest ROC AUC (macro), and
  per-class sensitivity (recall) and specificity;
- calibration: expected calibration error (top-label, equal-width bins; Guo et al. 2017,
  "On calibration of modern neural networks", ICML) and the multi-class Brier score (Brier 1950).

Example::

    >>> balanced_accuracy(["a", "a", "a", "b"], ["a", "a", "a", "a"])
    0.5
    >>> round(brier_score([0, 1], [[0.5, 0.5], [0.5, 0.5]]), 3)
    0.5
    >>> [round(v, 3) for v in mean_ci95([0.5, 0.7])]
    [0.6, 0.404, 0.796]
"""

from __future__ import annotations

import math

import numpy as np

from medcl.fewshot.ops import paired_1d

__all__ = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "expected_calibration_error", "brier_score",
           "sensitivity_specificity", "confusion", "mean_ci95"]


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    return paired_1d(y_true, y_pred, ("y_true", "y_pred"))


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


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean of per-class F1 over the classes in ``y_true`` or ``y_pred`` (as sklearn's
    ``f1_score(average="macro")``)."""
    y_true, y_pred = _pair(y_true, y_pred)
    scores = []
    for c in np.unique(np.concatenate([y_true, y_pred])):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = np.sum(y_true == c) + np.sum(y_pred == c)
        scores.append(2 * tp / denom)
    return float(np.mean(scores))


def _proba(y_idx, proba) -> tuple[np.ndarray, np.ndarray]:
    y_idx, proba = np.asarray(y_idx), np.asarray(proba, dtype=float)
    if proba.ndim != 2 or y_idx.ndim != 1 or len(y_idx) != len(proba):
        raise ValueError(f"need y (n,) class indices and proba (n, C), got shapes {y_idx.shape} and {proba.shape}")
    if len(y_idx) == 0:
        raise ValueError("y and proba are empty")
    if y_idx.dtype.kind not in "iu" or y_idx.min() < 0 or y_idx.max() >= proba.shape[1]:
        raise ValueError(f"y must hold class indices in [0, {proba.shape[1]}) (columns of proba)")
    return y_idx.astype(np.int64), proba


def roc_auc_ovr(y_idx, proba) -> float:
    """Macro one-vs-rest ROC AUC (Mann-Whitney, ties count 1/2) over the classes present in
    ``y`` (columns of ``proba`` are classes; as sklearn's ``roc_auc_score(multi_class="ovr")``
    for 3+ classes, and ``roc_auc_score(y, proba[:, 1])`` for 2)."""
    y, p = _proba(y_idx, proba)
    aucs = []
    for c in np.unique(y):
        pos, neg = p[y == c, c], p[y != c, c]
        if len(neg) == 0:
            continue
        diff = pos[:, None] - neg[None, :]
        aucs.append(float(np.mean((diff > 0) + 0.5 * (diff == 0))))
    if not aucs:
        raise ValueError("roc_auc_ovr needs at least 2 classes in y")
    return float(np.mean(aucs))


def expected_calibration_error(y_idx, proba, n_bins: int = 10) -> float:
    """Top-label ECE (Guo et al. 2017): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over
    ``n_bins`` equal-width bins of the predicted class's probability."""
    y, p = _proba(y_idx, proba)
    conf, pred = p.max(1), p.argmax(1)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    gap = np.bincount(bins, weights=(pred == y) - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


def brier_score(y_idx, proba) -> float:
    """Multi-class Brier score (Brier 1950): ``mean_i sum_c (p_ic - [y_i = c])^2``, in [0, 2]."""
    y, p = _proba(y_idx, proba)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(((p - onehot) ** 2).sum(1)))


def sensitivity_specificity(y_true, y_pred, classes) -> dict:
    """Per class, one-vs-rest: ``{class: (sensitivity, specificity)}``; sensitivity is NaN for a
    class absent from ``y_true``, specificity NaN when every scan is of that class."""
    cm = confusion(y_true, y_pred, classes).astype(float)
    out = {}
    total = cm.sum()
    for i, c in enumerate(np.asarray(classes).tolist()):
        tp, pos, pred_pos = cm[i, i], cm[i].sum(), cm[:, i].sum()
        neg = total - pos
        tn = neg - (pred_pos - tp)
        out[c] = (tp / pos if pos else float("nan"), tn / neg if neg else float("nan"))
    return out
