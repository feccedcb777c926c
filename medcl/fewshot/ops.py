"""The two array operations every few-shot head shares (kept apart so that the per-scan heads of
:mod:`medcl.fewshot.heads` and their vectorised forms in :mod:`medcl.fewshot.batched` both use them)."""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalise", "softmax"]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit L2 norm; all-zero rows stay zero (as ``sklearn.preprocessing.normalize``)."""
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.where(norm == 0, 1.0, norm)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
