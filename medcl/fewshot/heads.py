"""Few-shot classification heads on frozen features, sklearn style: ``fit(X, y)``,
``predict_proba(X)`` (columns in ``classes_`` order) and ``predict(X)``.

- ``PrototypeHead``: nearest class prototype (SimpleShot, Wang et al. 2019, arXiv:1911.04623).
  ``cosine``: centre by the support mean (optional), L2-normalise, average per class, compare to
  the L2-normalised class means by cosine similarity. ``euclidean``: squared distance to the class
  means of the raw features, i.e. scikit-learn's ``NearestCentroid``.
- ``LogisticHead``: ``LogisticRegression`` on centred (optional), L2-normalised features; with
  ``C=None`` its ``C`` is chosen by leave-one-subject-out cross-validation on the training set
  (:func:`medcl.fewshot.logistic.loso_select_C`) when every class has 2+ subjects.
- ``KNNHead``: distance-weighted k nearest neighbours (Dudani 1976) by cosine on CL2N features.
- ``LinearHead``: the deployable form of either (``head.to_linear()``): ``softmax(W f(x) + b)``
  with the same probabilities, stored as plain arrays in an ``.npz`` (nothing pickled).

Example::

    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(6, 4)), np.array(["a", "a", "a", "b", "b", "b"])
    >>> make_head("prototype").fit(X, y).predict_proba(X).shape
    (6, 2)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

__all__ = ["PrototypeHead", "LogisticHead", "KNNHead", "LinearHead", "HEADS", "make_head", "l2_normalise", "softmax"]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows (last axis) scaled to unit L2 norm; all-zero rows stay zero (as ``sklearn.preprocessing.normalize``)."""
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.where(norm == 0, 1.0, norm)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _check_fit(head: str, X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=float), np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"{head}.fit: X must be 2-D (samples, features), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"{head}.fit: y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{head}.fit: X contains NaN or inf")
    if len(np.unique(y)) < 2:
        raise ValueError(f"{head}.fit: needs at least 2 classes, got {np.unique(y).tolist()}")
    return X, y


def _check_fitted(head) -> None:
    if not hasattr(head, "classes_"):
        raise NotFittedError(f"{type(head).__name__} is not fitted; call fit(X, y) first")


def _check_predict(head, X) -> np.ndarray:
    _check_fitted(head)
    name = type(head).__name__
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != head.n_features_in_:
        raise ValueError(f"{name}: X must have shape (n, {head.n_features_in_}), got {X.shape}")
    return X


class LinearHead:
    """``predict_proba(X) = softmax(f(X) @ weight.T + bias)`` with ``f(X) = X - mean``, then
    L2-normalised if ``normalise``: the deployable form of a fitted head (see ``to_linear``)."""

    def __init__(self, classes, mean, weight, bias, normalise: bool):
        self.classes_ = np.asarray(classes)
        self.mean_ = np.asarray(mean, dtype=float)
        self.weight_ = np.asarray(weight, dtype=float)
        self.bias_ = np.asarray(bias, dtype=float)
        self.normalise = bool(normalise)
        c, d = len(self.classes_), len(self.mean_)
        if self.classes_.ndim != 1 or self.mean_.ndim != 1 or self.weight_.shape != (c, d) or self.bias_.shape != (c,):
            raise ValueError(f"LinearHead: need classes (C,), mean (D,), weight (C, D), bias (C,); got "
                             f"{self.classes_.shape}, {self.mean_.shape}, {self.weight_.shape}, {self.bias_.shape}")
        self.n_features_in_ = d

    def __repr__(self):
        return f"LinearHead(classes={self.classes_.tolist()}, dim={self.n_features_in_}, normalise={self.normalise})"

    def decision_function(self, X) -> np.ndarray:
        Z = _check_predict(self, X) - self.mean_
        return (l2_normalise(Z) if self.normalise else Z) @ self.weight_.T + self.bias_

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        best = np.argmax(self.decision_function(X), axis=1)
        return self.classes_[best]

    def save(self, path) -> None:
        """Plain arrays in an ``.npz`` (class names as a unicode array, never pickled objects)."""
        with open(path, "wb") as f:  # an open file: numpy would otherwise append .npz to other names
            np.savez(f, classes=np.asarray(self.classes_.tolist()), mean=self.mean_, weight=self.weight_,
                     bias=self.bias_, normalise=np.asarray(self.normalise))

    @classmethod
    def load(cls, path) -> "LinearHead":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                return cls(z["classes"], z["mean"], z["weight"], z["bias"], bool(z["normalise"]))
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a LinearHead .npz ({e})") from None


class PrototypeHead:
    """Nearest class prototype.

    ``metric="cosine"``: features are centred by the support mean (if ``centre``) and
    L2-normalised; a prototype is the L2-normalised mean of its class's normalised support
    features; ``predict_proba = softmax(temperature * cosine similarity)``.
    ``metric="euclidean"``: prototypes are the class means of the features;
    ``predict_proba = softmax(-squared distance)`` (``temperature`` is not used, and centring
    changes nothing because distances do not depend on a common shift).
    """

    METRICS = ("cosine", "euclidean")

    def __init__(self, metric: str = "cosine", centre: bool = True, temperature: float = 10.0):
        if metric not in self.METRICS:
            raise ValueError(f"PrototypeHead: unknown metric {metric!r}; known: {', '.join(self.METRICS)}")
        if not (np.isscalar(temperature) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"PrototypeHead: temperature must be a finite number > 0, got {temperature!r}")
        self.metric, self.centre, self.temperature = metric, bool(centre), float(temperature)

    def __repr__(self):
        return f"PrototypeHead(metric={self.metric!r}, centre={self.centre}, temperature={self.temperature})"

    def _features(self, X: np.ndarray) -> np.ndarray:
        Z = X - self.mean_
        return l2_normalise(Z) if self.metric == "cosine" else Z

    def fit(self, X, y) -> "PrototypeHead":
        X, y = _check_fit("PrototypeHead", X, y)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0) if self.centre else np.zeros(X.shape[1])
        self.classes_, idx = np.unique(y, return_inverse=True)
        onehot = (idx == np.arange(len(self.classes_))[:, None]).astype(float)   # (C, n)
        means = onehot @ self._features(X) / onehot.sum(axis=1, keepdims=True)
        self.prototypes_ = l2_normalise(means) if self.metric == "cosine" else means
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n, C)``: ``temperature * cosine`` or ``-squared distance``."""
        Z = self._features(_check_predict(self, X))
        P = self.prototypes_
        if self.metric == "cosine":
            return self.temperature * (Z @ P.T)
        sq = (Z * Z).sum(1)[:, None] - 2.0 * (Z @ P.T) + (P * P).sum(1)[None, :]
        return -np.maximum(sq, 0.0)

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        best = np.argmax(self.decision_function(X), axis=1)
        return self.classes_[best]

    def to_linear(self) -> LinearHead:
        """Same probabilities as a ``LinearHead``: cosine logits are ``T * z @ P.T``; Euclidean
        ``-|z - p|^2`` equals ``2 z.p - |p|^2`` up to the per-row ``-|z|^2`` that softmax drops."""
        _check_fitted(self)
        P = self.prototypes_
        if self.metric == "cosine":
            return LinearHead(self.classes_, self.mean_, self.temperature * P, np.zeros(len(P)), normalise=True)
        return LinearHead(self.classes_, self.mean_, 2.0 * P, -(P * P).sum(axis=1), normalise=False)


class LogisticHead:
    """Multinomial ``LogisticRegression(C=C)`` (L2 penalty, lbfgs) on features centred by the
    support mean (if ``centre``), then L2-normalised.

    ``C=None``: ``C`` is the value in ``Cs`` with the lowest leave-one-subject-out log-loss on
    the training set (subjects from ``fit(..., groups=)``, else one subject per row) when every
    class has at least 2 subjects, else ``C_fallback``; the choice is ``C_``.
    """

    MAX_ITER = 1000

    def __init__(self, C: float | None = 1.0, centre: bool = True, Cs=(0.1, 1.0, 10.0, 100.0), C_fallback: float = 1.0):
        for name, v in (("C", C), ("C_fallback", C_fallback), *(("Cs", c) for c in Cs)):
            if v is None and name == "C":
                continue
            if not (np.isscalar(v) and np.isfinite(v) and v > 0):
                raise ValueError(f"LogisticHead: {name} must be a finite number > 0, got {v!r}")
        if not len(Cs):
            raise ValueError("LogisticHead: Cs is empty")
        self.C, self.centre = (None if C is None else float(C)), bool(centre)
        self.Cs, self.C_fallback = tuple(float(c) for c in Cs), float(C_fallback)

    def __repr__(self):
        return f"LogisticHead(C={self.C}, centre={self.centre})"

    def _features(self, X: np.ndarray) -> np.ndarray:
        return l2_normalise(X - self.mean_)

    def fit(self, X, y, groups=None) -> "LogisticHead":
        from medcl.fewshot.logistic import loso_feasible, loso_select_C, span_coordinates

        X, y = _check_fit("LogisticHead", X, y)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0) if self.centre else np.zeros(X.shape[1])
        Z = self._features(X)
        self.C_ = self.C
        if self.C_ is None:
            groups = np.arange(len(y)) if groups is None else np.asarray(groups)
            if len(groups) != len(y):
                raise ValueError(f"LogisticHead.fit: groups ({len(groups)}) and y ({len(y)}) differ in length")
            if loso_feasible(y, groups):
                classes, yi = np.unique(y, return_inverse=True)
                self.C_ = float(loso_select_C(span_coordinates(Z[None]), yi[None], groups[None], len(classes), self.Cs)[0][0])
            else:
                self.C_ = self.C_fallback
        self.model_ = LogisticRegression(C=self.C_, max_iter=self.MAX_ITER).fit(Z, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        Z = self._features(_check_predict(self, X))
        return self.model_.predict_proba(Z)

    def predict(self, X) -> np.ndarray:
        best = np.argmax(self.predict_proba(X), axis=1)
        return self.classes_[best]

    def to_linear(self) -> LinearHead:
        """Same probabilities as a ``LinearHead`` (binary: softmax over ``[0, w.z + b]`` = sigmoid)."""
        _check_fitted(self)
        W, b = self.model_.coef_, self.model_.intercept_
        if len(self.classes_) == 2:
            W, b = np.vstack([np.zeros_like(W), W]), np.concatenate([[0.0], b])
        return LinearHead(self.classes_, self.mean_, W, b, normalise=True)


class KNNHead:
    """Distance-weighted k nearest neighbours (Dudani 1976) by cosine similarity on features
    centred by the support mean (if ``centre``) and L2-normalised (SimpleShot's CL2N):
    ``p_c = sum of exp(temperature * cos) over the neighbours of class c``, normalised;
    ``k`` is capped at the smallest class count (K in a K-shot episode)."""

    def __init__(self, k: int = 3, temperature: float = 10.0, centre: bool = True):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"KNNHead: k must be an int >= 1, got {k!r}")
        if not (np.isscalar(temperature) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"KNNHead: temperature must be a finite number > 0, got {temperature!r}")
        self.k, self.temperature, self.centre = int(k), float(temperature), bool(centre)

    def __repr__(self):
        return f"KNNHead(k={self.k}, temperature={self.temperature}, centre={self.centre})"

    def fit(self, X, y) -> "KNNHead":
        X, y = _check_fit("KNNHead", X, y)
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0) if self.centre else np.zeros(X.shape[1])
        self.classes_, self.y_ = np.unique(y, return_inverse=True)
        self.support_ = l2_normalise(X - self.mean_)
        self.k_ = min(self.k, int(np.bincount(self.y_).min()))
        return self

    def predict_proba(self, X) -> np.ndarray:
        sims = l2_normalise(_check_predict(self, X) - self.mean_) @ self.support_.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, : self.k_]
        top = np.take_along_axis(sims, order, 1)
        w = np.exp(self.temperature * (top - top[:, :1]))
        proba = np.zeros((len(sims), len(self.classes_)))
        np.add.at(proba, (np.arange(len(sims))[:, None], self.y_[order]), w)
        return proba / proba.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


HEADS: dict[str, type] = {"prototype": PrototypeHead, "logreg": LogisticHead, "knn": KNNHead}


def make_head(name: str, **kwargs):
    """A new head by registry name, e.g. ``make_head("logreg", C=0.5)``."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}")
    return HEADS[name](**kwargs)
