"""The array operations the few-shot modules share: normalisation and softmax (the per-scan heads
of :mod:`medcl.fewshot.heads` and their vectorised forms in :mod:`medcl.fewshot.batched`), and
the check of two paired 1-D arrays (metrics and episodes)."""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalise", "softmax", "paired_1d"]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit L2 norm; all-zero rows stay zero (as ``sklearn.preprocessing.normalize``)."""
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.where(norm == 0, 1.0, norm)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def paired_1d(a, b, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as 1-D arrays of the same, non-zero length, else a ValueError naming them."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-D, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"{names[0]} ({len(a)}) and {names[1]} ({len(b)}) differ in length")
    if len(a) == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    return a, b
