"""How sure it is, part 2: conformal prediction sets with a coverage guarantee.

Split conformal classification (Vovk et al. 2005; Angelopoulos & Bates 2023, "A gentle
introduction"): a fitted head scores labelled **calibration** scans whose subjects are neither
in its support nor among the scans it will be asked about; the nonconformity score of a scan
is ``1 - p(true class)`` (its calibrated probability). For a target coverage ``1 - alpha`` the
threshold ``q`` is the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` calibration scores,
and the prediction set of a new scan is every class ``c`` with ``1 - p(c) <= q``. Then the set
holds the true class with probability at least ``1 - alpha`` (and at most ``1 - alpha + 1/(n+1)``
without ties), whatever the head.

**Class-conditional** (Mondrian, Vovk et al. 2005 §4.5): one threshold per class from that
class's calibration scans, so the guarantee holds for every class (a rare class is not left
uncovered); used when every class has at least ``ceil((1 - alpha) / alpha)`` calibration scans
(else a class's threshold would be infinite), otherwise the marginal threshold is used.

**CV+** (Barber et al. 2021, "Predictive inference with the jackknife+", section 3; Romano et al.
2020 for classification): a registered head whose calibration (its scaling) was fitted on the
same calibration scans stores, for each scan, the scaling fitted without that scan's fold
(:func:`~medcl.fewshot.calibrate.cross_fitted_scaling`) and its score under it. Class ``c`` is in
a new scan's set when fewer than ``(1 - alpha)(n + 1)`` calibration scores are below the new
scan's score ``1 - p(c)`` under *that scan's* fold scaling (:func:`head_sets`). The guarantee is
then coverage at least ``1 - 2 alpha`` (minus a term of order ``folds / n``); in practice it is
close to ``1 - alpha`` (measured in docs/fewshot.md). When every stored scaling is the head's own
(split conformal), this is exactly the threshold rule above.

Example::

    >>> scores = np.array([[.1, .2, .3, .4, .5, .6, .7, .8, .9]])    # one episode, 9 calibration scans
    >>> labels = np.array([[0, 0, 0, 0, 0, 0, 0, 1, 1]])               # class 1: too few for its own q
    >>> q, mondrian = thresholds(scores, labels, 2, alpha=0.2)
    >>> float(q[0, 0]), bool(mondrian[0])                             # ceil(10 * 0.8) = 8th smallest
    (0.8, False)
"""

from __future__ import annotations

import numpy as np

from medcl.fewshot.batched import gram
from medcl.fewshot.calibrate import apply_temperature
from medcl.fewshot.episodes import EpisodeBatch
from medcl.fewshot.heads import HEADS
from medcl.fewshot.ops import softmax
from medcl.fewshot.stats import EpisodePredictions, subject_bootstrap_mean, summarise

__all__ = ["thresholds", "prediction_sets", "calibration_batch", "episode_sets", "set_summary", "mondrian_minimum",
           "calibrate_head", "head_sets", "head_report"]


def mondrian_minimum(alpha: float) -> int:
    """Calibration scans each class needs for a finite class-conditional threshold."""
    return int(np.ceil((1 - alpha) / alpha - 1e-9))


def _kth(scores: np.ndarray, keep: np.ndarray, alpha: float) -> np.ndarray:
    """Per row, the ``ceil((n + 1)(1 - alpha))``-th smallest kept score (``inf`` when beyond ``n``)."""
    s = np.sort(np.where(keep, scores, np.inf), axis=-1)
    n = keep.sum(-1)
    rank = np.ceil((n + 1) * (1 - alpha) - 1e-9).astype(int)
    idx = np.clip(rank - 1, 0, s.shape[-1] - 1)
    q = np.take_along_axis(s, idx[..., None], -1)[..., 0]
    return np.where((rank <= n) & (n > 0), q, np.inf)


def thresholds(scores, labels, n_classes: int, alpha: float, class_conditional: bool | None = None):
    """Thresholds ``(E, C)`` and whether each row is class-conditional ``(E,)``, from calibration
    ``scores`` ``(E, N)`` with true classes ``labels`` ``(E, N)`` (``-1``: not a calibration scan).
    ``class_conditional=None``: per row, when every class present has enough scans
    (:func:`mondrian_minimum`); ``True``/``False`` force it."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (coverage 1 - alpha), got {alpha!r}")
    scores, labels = np.atleast_2d(np.asarray(scores, float)), np.atleast_2d(np.asarray(labels))
    marginal = _kth(scores, labels >= 0, alpha)                                          # (E,)
    per_class = np.stack([_kth(scores, labels == c, alpha) for c in range(n_classes)], 1)
    counts = np.stack([(labels == c).sum(1) for c in range(n_classes)], 1)
    present = counts > 0
    enough = np.where(present, counts >= mondrian_minimum(alpha), True).all(1) & present.any(1)
    mondrian = enough if class_conditional is None else np.full(len(scores), bool(class_conditional))
    q = np.where(mondrian[:, None], per_class, marginal[:, None])
    return q, mondrian


def prediction_sets(proba, q) -> np.ndarray:
    """Boolean sets ``(..., C)``: class ``c`` when ``1 - p(c) <= q(c)`` (``q`` broadcasts)."""
    return (1.0 - np.asarray(proba, float)) <= np.asarray(q, float) + 1e-12


def calibration_batch(batch: EpisodeBatch, subjects) -> EpisodeBatch:
    """The episodes with, as queries, one scan of every subject in neither the support nor the
    queries of the episode (its calibration scans; ``-1`` pads)."""
    subj = np.unique(np.asarray(subjects), return_inverse=True)[1]
    _, first = np.unique(subj, return_index=True)                    # one scan per subject
    used = np.zeros((batch.n_episodes, subj.max() + 1), bool)
    rows = np.arange(batch.n_episodes)[:, None]
    used[rows, subj[batch.support]] = True
    q = batch.query
    used[np.broadcast_to(rows, q.shape)[q >= 0], subj[q[q >= 0]]] = True
    free = ~used[:, subj[first]]                                     # (E, n_first)
    order = np.argsort(~free, axis=1, kind="stable")
    calib = np.where(np.take_along_axis(free, order, 1), first[order], -1)
    return EpisodeBatch(batch.support, calib[:, : max(1, int(free.sum(1).max()))], batch.classes,
                        batch.class_names, batch.k_shot)


def episode_sets(head: str, features, labels, subjects, batch: EpisodeBatch, query: EpisodePredictions,
                 alpha: float, G: np.ndarray | None = None, **options) -> np.ndarray:
    """Prediction sets ``(E, Q, C)`` of ``query`` (the head's calibrated predictions on
    ``batch``'s queries; its ``meta["temperature"]`` is applied to the calibration scans too),
    thresholds from each episode's calibration scans (:func:`calibration_batch`)."""
    features = np.asarray(features, float)
    G = gram(features) if G is None else G
    cb = calibration_batch(batch, subjects)
    proba = HEADS[head].predict_episodes(features, cb, subjects, G, **options)
    T = np.asarray(query.meta.get("temperature", np.ones(batch.n_episodes)), float)[:, None, None]
    proba = apply_temperature(proba, T, query.in_episode[:, None, :])
    y = np.where(cb.query >= 0, np.searchsorted(batch.class_names, np.asarray(labels)[np.maximum(cb.query, 0)]), -1)
    score = 1.0 - np.take_along_axis(proba, np.maximum(y, 0)[..., None], -1)[..., 0]
    q, mondrian = thresholds(score, y, len(batch.class_names), alpha)
    sets = prediction_sets(query.proba, q[:, None, :]) & query.in_episode[:, None, :] & query.mask[..., None]
    query.meta["class_conditional"] = mondrian
    query.meta["n_calibration"] = (y >= 0).sum(1)
    return sets


def set_summary(query: EpisodePredictions, sets: np.ndarray, alpha: float, n_boot: int, seed: int,
                n_subjects: int) -> dict:
    """Empirical coverage and mean set size (pooled over queries, subject-bootstrap 95% CIs),
    coverage per class, against the target ``1 - alpha``."""
    m = query.mask
    covered = np.take_along_axis(sets, np.maximum(query.y, 0)[..., None], -1)[..., 0].astype(float)
    size = sets.sum(-1).astype(float)
    cov, cov_ci = subject_bootstrap_mean(covered, query.subject, m, n_boot, seed, n_subjects)
    sz, sz_ci = subject_bootstrap_mean(size, query.subject, m, n_boot, seed, n_subjects)
    per_class = {str(c): float(covered[m & (query.y == i)].mean()) for i, c in enumerate(query.class_names)
                 if (m & (query.y == i)).any()}
    mond = query.meta.get("class_conditional", np.zeros(0, bool))
    return {"target": 1.0 - alpha, "coverage": cov, "coverage_ci95": cov_ci, "mean_set_size": sz,
            "set_size_ci95": sz_ci, "coverage_per_class": per_class,
            "class_conditional_fraction": float(np.mean(mond)) if len(mond) else 0.0,
            "n_calibration_mean": float(np.mean(query.meta.get("n_calibration", [0]))),
            "empty_fraction": float((size[m] == 0).mean()), "n_episodes": int(query.n_episodes),
            "target_met": bool(cov_ci[0] <= 1.0 - alpha <= cov_ci[1] or cov_ci[0] > 1.0 - alpha)}


def calibrate_head(head, features, labels, scale=None, shift=None) -> None:
    """Store in a :class:`~medcl.fewshot.heads.LinearHead` the nonconformity scores
    ``1 - p(true class)`` of its calibration scans (``features`` ``(N, D)``, ``labels`` ``(N,)``;
    subjects disjoint from its support and from whatever it will predict) and the scaling each
    was scored with: ``scale``/``shift`` ``(N, C)`` (out-of-fold, CV+), else the head's own."""
    labels = np.asarray(labels).astype(str)
    known = dict(zip(np.asarray(head.classes_).astype(str), range(len(head.classes_))))
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise ValueError(f"calibration scans have classes the head does not know: {unknown}")
    L = head.decision_function(features)
    A = np.broadcast_to(head.scale_ if scale is None else scale, L.shape).astype(float)
    B = np.broadcast_to(head.shift_ if shift is None else shift, L.shape).astype(float)
    proba = softmax(head.scaled(L, A, B))
    head.conformal_scores_ = 1.0 - proba[np.arange(len(labels)), [known[v] for v in labels]]
    head.conformal_labels_ = labels
    head.conformal_scale_, head.conformal_shift_ = A, B


def head_sets(head, scores, coverage: float) -> tuple[list[list[str]], bool]:
    """Prediction sets (class names) at ``coverage`` of the scans whose raw head scores are the
    rows of ``scores`` (``head.decision_function``), from the head's stored calibration scores by
    the CV+ rule (module docstring); and whether they are class-conditional."""
    if not len(head.conformal_scores_):
        raise ValueError("this model has no calibration scans, so it gives no prediction sets")
    names = np.asarray(head.classes_).astype(str)
    y = np.array([list(names).index(v) for v in head.conformal_labels_])
    alpha, C = 1.0 - float(coverage), len(names)
    _, mondrian = thresholds(head.conformal_scores_[None], y[None], C, alpha)
    z = head.scaled(np.asarray(scores, float)[:, None, :], head.conformal_scale_, head.conformal_shift_)
    test = 1.0 - softmax(z)                                                  # (N, n, C): under each scan's scaling
    counts = np.eye(C, dtype=bool)[y] if mondrian[0] else np.ones((len(y), C), bool)    # (n, C): who counts for c
    below = ((head.conformal_scores_[:, None] < test - 1e-12) & counts).sum(1)        # (N, C)
    sets = below < np.ceil((counts.sum(0) + 1) * (1 - alpha) - 1e-9)
    return [names[row].tolist() for row in sets], bool(mondrian[0])


def head_report(head, features, labels, subjects, coverage: float, n_boot: int = 1000, seed: int = 0) -> dict:
    """A registered head on labelled scans none of its support or calibration subjects hold
    (e.g. the evaluation split): ECE and Brier before (its raw scores) and after its calibration,
    and the empirical coverage and mean size of its prediction sets, with subject-bootstrap CIs."""
    labels, names = np.asarray(labels).astype(str), np.asarray(head.classes_).astype(str)
    subj = np.unique(np.asarray(subjects), return_inverse=True)[1]
    y = np.array([list(names).index(v) for v in labels])
    out = {"temperature": head.temperature, "scale": head.scale_.tolist(), "shift": head.shift_.tolist(),
           "calibration": getattr(head, "calibration", ""), "n_scans": int(len(labels)),
           "n_calibration": int(len(head.conformal_scores_))}
    for name, proba in (("before", softmax(head.decision_function(features))), ("after", head.predict_proba(features))):
        p = EpisodePredictions(y[None], proba[None], subj[None], names.tolist())
        r = summarise(p, n_boot, seed, int(subj.max()) + 1)
        out[name] = {m: r[m] for m in ("ece", "ece_ci95", "brier", "brier_ci95", "balanced_accuracy", "ci95")}
    if len(head.conformal_scores_):
        sets, mondrian = head_sets(head, head.decision_function(features), coverage)
        covered = np.array([lab in s for lab, s in zip(labels, sets)], float)
        size = np.array([len(s) for s in sets], float)
        keep = np.ones(len(labels), bool)
        out["sets"] = {"target": float(coverage), "class_conditional": mondrian}
        for key, v in (("coverage", covered), ("mean_set_size", size)):
            point, ci = subject_bootstrap_mean(v, subj, keep, n_boot, seed)
            out["sets"][key], out["sets"][f"{key}_ci95"] = point, ci
    return out
