"""How sure it is, part 1: temperature scaling fitted on the support set alone.

A few-shot head's probabilities are not calibrated: the cosine prototype head's fixed
temperature (10) makes it far too sure on a weak encoder. Temperature scaling (Guo et al. 2017)
divides the head's log-probabilities by one number ``T`` per fitted head. Here ``T`` must come
from the labelled support set only (no other labels exist in a few-shot setting), so the
support is **cross-fitted**: fold ``j`` of ``K`` holds out the ``j``-th support subject of every
class (one subject per class: the head refitted on the other ``K - 1`` keeps every class), so
every support subject is predicted once by a head that never saw it. ``T`` minimises the
negative log-likelihood of those held-out predictions against Platt's smoothed targets
(Platt 1999: the true class ``(K + 1) / (K + 2)``, the rest share ``1 / (K + 2)``), which keeps
``T`` finite when every held-out scan is right. ``T`` is chosen on a log grid (0.05 to 50).
At K = 1 no fold keeps a class: ``T = 1`` (uncalibrated), and the report says so.

**Vector scaling on a calibration split** (:func:`fit_vector_scaling`; Guo et al. 2017, section 4.2):
the registered model has labelled scans beyond its support (train-split subjects in neither its
support nor anything it is evaluated on), so its probabilities are ``softmax(a * s + b)`` with a
scale ``a_c >= 0`` and a shift ``b_c`` per class (``b`` of the first class 0), or one temperature,
whichever 5-fold cross-validation prefers (:func:`choose_scaling`), fitted by least negative
log-likelihood on **all** those scans. Their conformal scores come out of fold
(:func:`cross_fitted_scaling`): each scan is scored by the scaling the same rule fits on the other
folds, the CV+ construction of :mod:`medcl.fewshot.conformal`. Fitting on half the scans (the other
half held the scores) overfitted: one encoder's deployed ECE was 0.13 where one temperature gave
0.08 (docs/fewshot.md, "The registered model"). Fifteen cross-fitted support predictions fix one
temperature only roughly, and one temperature cannot correct a 5-shot head whose classes are
unevenly sure.

The same function scores every episode of an evaluation (vectorised over episodes with the
head's own batched predictor) and fits the registered model's ``T`` (a one-episode batch made of
its support), so the report's "after" numbers are those of the procedure that is deployed.

Example::

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["a", "b"], 12); subjects = np.arange(24)
    >>> X = rng.normal(size=(24, 6)) + 1.0 * (labels == "a")[:, None]
    >>> batch = sample_episode_batch(labels, subjects, k_shot=5, n_query=5, n_episodes=20, seed=0)
    >>> T = episode_temperatures("prototype", X, batch, subjects)
    >>> T.shape, bool((T > 1).all())                  # temperature 10 is overconfident here
    ((20,), True)
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax

from medcl.fewshot.batched import gram
from medcl.fewshot.episodes import EpisodeBatch, sample_episode_batch  # noqa: F401  (doctest)
from medcl.fewshot.heads import HEADS
from medcl.fewshot.stats import EpisodePredictions

__all__ = ["T_GRID", "support_folds", "fit_temperatures", "apply_temperature", "episode_temperatures",
           "calibrated", "support_temperature", "fit_vector_scaling", "choose_scaling", "cross_fitted_scaling",
           "out_of_fold_nll", "METHOD", "VECTOR_METHOD"]

T_GRID = np.geomspace(0.05, 50.0, 241)
METHOD = ("temperature scaling fitted on the support set alone: K folds, each holding out one support subject "
          "per class; NLL with Platt's smoothed targets")
VECTOR_METHOD = ("temperature or vector scaling (a scale and a shift per class), whichever 5-fold cross-validation "
                 "prefers, fitted by NLL on all the calibration scans (train-split subjects outside the support); "
                 "their conformal scores come out of fold (CV+, 5 folds)")


def support_folds(batch: EpisodeBatch) -> EpisodeBatch:
    """``K`` folds of every episode (episode-major, ``E * K`` rows): fold ``j`` supports with all
    but the ``j``-th support scan of each class and queries that scan of each class."""
    E, n_way, K = batch.n_episodes, batch.n_way, batch.k_shot
    if K < 2:
        raise ValueError(f"support_folds: cross-fitting needs K >= 2 support subjects per class, got K={K}")
    s = batch.support.reshape(E, n_way, K)
    support = np.stack([np.delete(s, j, axis=2).reshape(E, -1) for j in range(K)], 1).reshape(E * K, -1)
    query = np.stack([s[:, :, j] for j in range(K)], 1).reshape(E * K, n_way)
    return EpisodeBatch(support, query, np.repeat(batch.classes, K, axis=0), batch.class_names, K - 1)


def _log_proba(proba: np.ndarray, in_episode: np.ndarray) -> np.ndarray:
    """log p over the episode's classes, ``-inf`` elsewhere; ``in_episode`` broadcasts to ``proba``."""
    return np.where(in_episode, np.log(np.clip(proba, 1e-12, 1.0)), -np.inf)


def apply_temperature(proba: np.ndarray, T, in_episode: np.ndarray | None = None) -> np.ndarray:
    """``softmax(log p / T)`` over the classes of ``in_episode`` (default: all); ``T`` broadcasts
    against ``proba``'s leading axes (one per episode: shape ``(E, 1, 1)``)."""
    proba = np.asarray(proba, dtype=float)
    inep = np.ones(proba.shape, bool) if in_episode is None else np.broadcast_to(in_episode, proba.shape)
    z = _log_proba(proba, inep) / T
    z = z - z.max(-1, keepdims=True)
    e = np.where(inep, np.exp(z), 0.0)
    return e / e.sum(-1, keepdims=True)


def fit_temperatures(proba: np.ndarray, y: np.ndarray, in_episode: np.ndarray, smoothing: float) -> np.ndarray:
    """``T`` ``(E,)`` per episode from held-out probabilities ``(E, n, C)`` and their true class
    ``y`` ``(E, n)``: the grid value of least NLL against targets ``1 - smoothing`` for the true
    class and ``smoothing`` shared by the episode's other classes (``in_episode`` ``(E, C)``)."""
    inep = np.broadcast_to(in_episode[:, None, :], proba.shape)
    n_other = np.maximum(in_episode.sum(1) - 1, 1)[:, None, None]
    onehot = np.eye(proba.shape[-1], dtype=bool)[y]
    target = np.where(onehot, 1.0 - smoothing, smoothing / n_other) * inep
    logp = _log_proba(proba, inep)
    nll = np.empty((len(proba), len(T_GRID)))
    for i, T in enumerate(T_GRID):
        z = logp / T
        m = z.max(-1, keepdims=True)
        lse = m + np.log(np.where(inep, np.exp(z - m), 0.0).sum(-1, keepdims=True))
        nll[:, i] = -np.where(inep, target * (z - lse), 0.0).sum((1, 2))
    return T_GRID[np.argmin(nll, axis=1)]


def episode_temperatures(head: str, features, batch: EpisodeBatch, subjects=None, G: np.ndarray | None = None,
                         **options) -> np.ndarray:
    """``T`` ``(E,)`` of head ``head`` (a name in :data:`~medcl.fewshot.heads.HEADS`) fitted on
    each episode's support by cross-fitting; ones when K = 1."""
    if batch.k_shot < 2:
        return np.ones(batch.n_episodes)
    features = np.asarray(features, dtype=float)
    folds = support_folds(batch)
    G = gram(features) if G is None else G
    proba = HEADS[head].predict_episodes(features, folds, subjects, G, **options)        # (E*K, n_way, C)
    E, K, n_way = batch.n_episodes, batch.k_shot, batch.n_way
    y = folds.classes.reshape(E, K * n_way)
    inep = np.zeros((E, len(batch.class_names)), bool)
    np.put_along_axis(inep, batch.classes, True, axis=1)
    return fit_temperatures(proba.reshape(E, K * n_way, -1), y, inep, 1.0 / (K + 2))


def calibrated(p: EpisodePredictions, T: np.ndarray) -> EpisodePredictions:
    """``p`` with every episode's probabilities scaled by its temperature (padding stays zero)."""
    proba = apply_temperature(p.proba, np.asarray(T, float)[:, None, None], p.in_episode[:, None, :])
    proba = proba * p.mask[..., None]
    return EpisodePredictions(p.y, proba, p.subject, p.class_names, p.in_episode, {**p.meta, "temperature": T})


def support_temperature(head: str, features, labels, subjects=None, **options) -> float:
    """``T`` of a head fitted on one labelled support set (rows of ``features``), by the same
    cross-fitting; each class contributes its first ``K = min count`` scans. ``1.0`` when some
    class has a single scan."""
    labels = np.asarray(labels)
    names = np.unique(labels)
    rows = [np.flatnonzero(labels == c) for c in names]
    k = min(len(r) for r in rows)
    if k < 2:
        return 1.0
    support = np.concatenate([r[:k] for r in rows])[None]
    batch = EpisodeBatch(support, support[:, :1], np.arange(len(names))[None], names, k)
    subj = np.arange(len(labels)) if subjects is None else np.asarray(subjects)
    return float(episode_temperatures(head, features, batch, subj, **options)[0])


def fit_vector_scaling(logits, y, ridge: float = 1e-3, shared: bool = False,
                       toward: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` ``(C,)`` minimising the NLL of ``softmax(logits * scale + shift)`` against
    class indices ``y`` (``scale >= 0``, ``shift[0] = 0``; ``ridge``: an L2 pull of the shifts
    toward 0 and of the scales toward ``toward``, small by default, so a class absent from ``y``
    keeps finite parameters). ``shared``: one scale for every class and no shift (temperature
    scaling, ``T = 1 / scale``). Convex in the parameters; L-BFGS-B from ``scale = toward``,
    ``shift = 0``."""
    L, y = np.asarray(logits, float), np.asarray(y, int)
    n, C = L.shape
    onehot = np.eye(C)[y]
    unpack = (lambda w: (np.full(C, w[0]), np.zeros(C))) if shared else (lambda w: (w[:C], np.r_[0.0, w[C:]]))

    def nll(w):
        a, b = unpack(w)
        lp = log_softmax(L * a + b, axis=1)
        g = np.exp(lp) - onehot                              # d NLL / d z, per scan
        reg = ridge * (np.sum((a - toward) ** 2) + np.sum(b ** 2))
        ga, gb = (g * L).sum(0) / n + 2 * ridge * (a - toward), g[:, 1:].sum(0) / n + 2 * ridge * b[1:]
        return -(lp * onehot).sum() / n + reg, (np.array([ga.sum()]) if shared else np.r_[ga, gb])

    start = np.full(1, toward) if shared else np.r_[np.full(C, toward), np.zeros(C - 1)]
    bounds = [(0.0, None)] * (1 if shared else C) + ([] if shared else [(None, None)] * (C - 1))
    return unpack(minimize(nll, start, jac=True, method="L-BFGS-B", bounds=bounds).x)


def _folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each of ``n`` scans: a seeded permutation, dealt round-robin."""
    return np.random.default_rng(seed).permutation(n) % folds


def out_of_fold_nll(logits, y, fit, folds: int = 5, seed: int = 0) -> np.ndarray:
    """NLL ``(n,)`` of every scan under the scaling ``fit(logits, y) -> (scale, shift)`` fitted
    on the other ``folds - 1`` folds."""
    L, y = np.asarray(logits, float), np.asarray(y, int)
    fold, out = _folds(len(y), folds, seed), np.empty(len(y))
    for f in range(folds):
        a, b = fit(L[fold != f], y[fold != f])
        out[fold == f] = -log_softmax(L[fold == f] * a + b, axis=1)[np.arange((fold == f).sum()), y[fold == f]]
    return out


def choose_scaling(logits, y, folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Temperature or vector scaling, whichever predicts held-out scans better (NLL, ``folds``-fold
    cross-validation on ``logits``/``y``), refitted on all of them: ``(scale, shift, kind)``."""
    cv = {kind: out_of_fold_nll(logits, y, partial(fit_vector_scaling, shared=kind == "temperature"), folds,
                                seed).mean() for kind in ("temperature", "vector")}
    kind = min(cv, key=cv.get)
    return (*fit_vector_scaling(logits, y, shared=kind == "temperature"), kind)


def cross_fitted_scaling(logits, y, folds: int = 5, seed: int = 0):
    """:func:`choose_scaling` on all of ``logits``/``y`` (what is deployed) and, for every scan,
    the scaling that the same rule fits on the other ``folds - 1`` folds (its out-of-fold
    scaling, for CV+ conformal scores): ``(scale (C,), shift (C,), kind, fold_scale (n, C),
    fold_shift (n, C))``. Folds differ from those inside :func:`choose_scaling` (seed + 1)."""
    L, y = np.asarray(logits, float), np.asarray(y, int)
    fold = _folds(len(y), folds, seed + 1)
    A, B = np.empty(L.shape), np.empty(L.shape)
    for f in range(folds):
        A[fold == f], B[fold == f], _ = choose_scaling(L[fold != f], y[fold != f], folds, seed)
    return (*choose_scaling(L, y, folds, seed), A, B)
