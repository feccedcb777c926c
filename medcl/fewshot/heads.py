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
- ``HEADS``: the one table of heads, by evaluation name (``prototype``, ``prototype_euclidean``,
  ``logreg``, ``knn``): each a :class:`HeadSpec` holding the head class and its fixed options,
  its vectorised episode predictor (:mod:`medcl.fewshot.batched`), how it deploys, its label.

Example::

    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(6, 4)), np.array(["a", "a", "a", "b", "b", "b"])
    >>> make_head("prototype").fit(X, y).predict_proba(X).shape
    (6, 2)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from medcl.fewshot.batched import predict_knn, predict_logreg, predict_prototype
from medcl.fewshot.episodes import EpisodeBatch
from medcl.fewshot.logistic import loso_feasible, loso_select_C, span_coordinates
from medcl.fewshot.ops import l2_normalise, softmax

__all__ = ["PrototypeHead", "LogisticHead", "KNNHead", "LinearHead", "HeadSpec", "HEADS", "make_head", "deployable",
           "l2_normalise", "softmax"]


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
    """``predict_proba(X) = softmax((s(X) * scale + shift) / temperature)`` with the head's score
    ``s(X) = f(X) @ weight.T + bias``, ``f(X) = X - mean``, then L2-normalised if ``normalise``: the
    deployable form of a fitted head (see ``to_linear``). ``temperature`` (1: as fitted) and the
    per-class ``scale`` (ones) and ``shift`` (zeros; vector scaling) are the calibration of
    :mod:`medcl.fewshot.calibrate`; ``predict`` follows the calibrated probabilities.
    ``conformal_scores`` and ``conformal_labels`` (optional) are the nonconformity scores and
    classes of its calibration scans, ``conformal_scale``/``conformal_shift`` ``(N, C)`` the
    scaling each was scored with (default: the head's own; :mod:`medcl.fewshot.conformal`)."""

    def __init__(self, classes, mean, weight, bias, normalise: bool, temperature: float = 1.0,
                 conformal_scores=None, conformal_labels=None, scale=None, shift=None, conformal_scale=None,
                 conformal_shift=None):
        self.classes_ = np.asarray(classes)
        self.mean_ = np.asarray(mean, dtype=float)
        self.weight_ = np.asarray(weight, dtype=float)
        self.bias_ = np.asarray(bias, dtype=float)
        self.normalise = bool(normalise)
        c, d = len(self.classes_), len(self.mean_)
        if self.classes_.ndim != 1 or self.mean_.ndim != 1 or self.weight_.shape != (c, d) or self.bias_.shape != (c,):
            raise ValueError(f"LinearHead: need classes (C,), mean (D,), weight (C, D), bias (C,); got "
                             f"{self.classes_.shape}, {self.mean_.shape}, {self.weight_.shape}, {self.bias_.shape}")
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"LinearHead: temperature must be a finite number > 0, got {temperature!r}")
        self.n_features_in_ = d
        self.temperature = float(temperature)
        self.scale_ = np.ones(c) if scale is None else np.asarray(scale, dtype=float)
        self.shift_ = np.zeros(c) if shift is None else np.asarray(shift, dtype=float)
        if self.scale_.shape != (c,) or self.shift_.shape != (c,) or not (np.isfinite(self.scale_).all()
                                                                           and np.isfinite(self.shift_).all()):
            raise ValueError(f"LinearHead: scale and shift must be {c} finite numbers, got {self.scale_}, {self.shift_}")
        self.conformal_scores_ = np.asarray([] if conformal_scores is None else conformal_scores, dtype=float)
        self.conformal_labels_ = np.asarray([] if conformal_labels is None else conformal_labels).astype(str)
        if self.conformal_scores_.shape != self.conformal_labels_.shape:
            raise ValueError("LinearHead: conformal_scores and conformal_labels must have the same length")
        n = len(self.conformal_scores_)
        self.conformal_scale_, self.conformal_shift_ = (
            np.array(np.broadcast_to(own if v is None else np.asarray(v, dtype=float), (n, c)))
            for own, v in ((self.scale_, conformal_scale), (self.shift_, conformal_shift)))

    def __repr__(self):
        return (f"LinearHead(classes={self.classes_.tolist()}, dim={self.n_features_in_}, normalise={self.normalise}, "
                f"temperature={self.temperature:g})")

    def decision_function(self, X) -> np.ndarray:
        Z = _check_predict(self, X) - self.mean_
        return (l2_normalise(Z) if self.normalise else Z) @ self.weight_.T + self.bias_

    def scaled(self, scores, scale=None, shift=None) -> np.ndarray:
        """Raw head ``scores`` (``decision_function``) under a scaling (default: the head's own
        ``scale_``/``shift_``; broadcast against ``scores``), over the temperature: the
        calibrated logits."""
        return (scores * (self.scale_ if scale is None else scale) + (self.shift_ if shift is None else shift)) \
            / self.temperature

    def calibrated_logits(self, X) -> np.ndarray:
        return self.scaled(self.decision_function(X))

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.calibrated_logits(X))

    def predict(self, X) -> np.ndarray:
        best = np.argmax(self.calibrated_logits(X), axis=1)
        return self.classes_[best]

    def save(self, path) -> None:
        """Plain arrays in an ``.npz`` (class names as a unicode array, never pickled objects)."""
        with open(path, "wb") as f:  # an open file: numpy would otherwise append .npz to other names
            np.savez(f, classes=np.asarray(self.classes_.tolist()), mean=self.mean_, weight=self.weight_,
                     bias=self.bias_, normalise=np.asarray(self.normalise), temperature=np.asarray(self.temperature),
                     conformal_scores=self.conformal_scores_, conformal_labels=self.conformal_labels_,
                     scale=self.scale_, shift=self.shift_, conformal_scale=self.conformal_scale_,
                     conformal_shift=self.conformal_shift_)

    @classmethod
    def load(cls, path) -> "LinearHead":
        """A saved head; one saved before calibration existed loads with temperature 1, no vector
        scaling and no scores; one saved before CV+ with its scores made by its own scaling."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                extra = {k: z[k] for k in ("conformal_scores", "conformal_labels", "scale", "shift", "conformal_scale",
                                           "conformal_shift") if k in z.files}
                return cls(z["classes"], z["mean"], z["weight"], z["bias"], bool(z["normalise"]),
                           float(z["temperature"]) if "temperature" in z.files else 1.0, **extra)
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


@dataclass(frozen=True)
class HeadSpec:
    """One few-shot head, under its evaluation name in :data:`HEADS`.

    ``head`` with the ``fixed`` options is the per-scan head (``fit``/``predict_proba``) that is
    deployed; ``episodes`` the same head vectorised over an episode batch (what evaluation
    runs): ``episodes(features, batch, subjects, G, options)`` with every option of ``head``
    resolved (:meth:`options`), returning probabilities ``(E, Q, C)``. A fitted head has an
    exact :class:`LinearHead` form (``to_linear``) unless ``deploy_as`` names the head deployed
    in its place (:func:`deployable`); ``label`` is its name in reports."""

    head: type
    episodes: Callable
    label: str
    fixed: dict = field(default_factory=dict)
    deploy_as: str | None = None

    @property
    def linear(self) -> bool:
        """Whether the fitted head turns into a :class:`LinearHead` (``to_linear``)."""
        return self.deploy_as is None

    def options(self, **options) -> dict:
        """Every constructor option of ``head``: its defaults, then ``fixed``, then ``options``;
        an option ``head`` does not take is a ``TypeError``, as from the constructor itself."""
        params = inspect.signature(self.head).parameters
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise TypeError(f"{self.head.__name__}() got an unexpected keyword argument {unknown[0]!r} "
                            f"(known: {', '.join(params)})")
        return {**{k: p.default for k, p in params.items()}, **self.fixed, **options}

    def make(self, **options):
        """A new, unfitted per-scan head (its arguments checked)."""
        return self.head(**self.options(**options))

    def predict_episodes(self, features, batch: EpisodeBatch, subjects=None, G: np.ndarray | None = None,
                         **options) -> np.ndarray:
        """Probabilities ``(E, Q, C)`` of this head on every episode of ``batch`` (columns in
        ``batch.class_names`` order); ``subjects`` (one per feature row) for the logistic head's
        leave-one-subject-out choice of ``C``; ``G`` the features' Gram matrix, if computed."""
        return self.episodes(features, batch, subjects, G, self.options(**options))


def _prototype_episodes(features, batch, subjects, G, o: dict) -> np.ndarray:
    return predict_prototype(features, batch, o["metric"], o["centre"], o["temperature"], G)


def _knn_episodes(features, batch, subjects, G, o: dict) -> np.ndarray:
    return predict_knn(features, batch, o["k"], o["temperature"], o["centre"], G)


def _logreg_episodes(features, batch, subjects, G, o: dict) -> np.ndarray:
    """``C`` given: that ``C``; ``C=None``: chosen from ``Cs`` per episode (``C_fallback`` at K = 1)."""
    if subjects is None:
        raise ValueError("logreg needs the subject of every scan (its C is chosen leave-one-subject-out)")
    Cs = (o["C"],) if o["C"] is not None else o["Cs"]
    return predict_logreg(features, batch, subjects, Cs, o["C"] or o["C_fallback"], o["centre"], G)


# The one table of few-shot heads: config validation, evaluation, deployment and the report read it.
HEADS: dict[str, HeadSpec] = {
    "prototype": HeadSpec(PrototypeHead, _prototype_episodes, "prototype (cosine, CL2N)", {"metric": "cosine"}),
    "prototype_euclidean": HeadSpec(PrototypeHead, _prototype_episodes, "prototype (Euclidean)",
                                    {"metric": "euclidean"}),
    "logreg": HeadSpec(LogisticHead, _logreg_episodes, "logistic regression (C by LOSO)", {"C": None}),
    "knn": HeadSpec(KNNHead, _knn_episodes, "kNN (cosine, distance-weighted)", deploy_as="prototype"),
}


def make_head(name: str, **options):
    """A new per-scan head by its name in :data:`HEADS`, e.g. ``make_head("logreg", C=0.5)``
    (``logreg`` without ``C`` chooses it by leave-one-subject-out cross-validation)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; known heads: {', '.join(sorted(HEADS))}")
    return HEADS[name].make(**options)


def deployable(name: str) -> tuple[str, HeadSpec]:
    """The head deployed for head ``name``: itself when it has a linear form, else its ``deploy_as``."""
    spec = HEADS[name]
    return (name, spec) if spec.linear else (spec.deploy_as, HEADS[spec.deploy_as])
