"""Episodic metrics with honest confidence intervals, and paired comparisons between methods.

Few-shot papers report the mean over episodes with ``mean +- 1.96 SE`` (``episodic`` below).
On a small cohort that interval is optimistic: 1,000 episodes drawn from 45 scans reuse every
scan hundreds of times, so the episodes are far from independent and the interval shrinks with
the number of episodes, not with the number of patients. The interval medcl reports
(``ci95``) is a **subject bootstrap** (a cluster bootstrap, Field & Welsh 2007): draw the
cohort's subjects with replacement ``n_boot`` times; in each replicate every query prediction
counts as many times as its subject was drawn, and every metric is recomputed over the same
episodes; the 2.5th and 97.5th percentiles bound it. It reflects which patients happened to be
in the cohort (query side); the choice of support scans is averaged over by the episodes.

Two methods scored on the same episodes (same seed) are compared with the **paired** bootstrap:
the same subject draws for both, the interval of the difference (Efron & Tibshirani 1993, §16).

Metrics are pooled over all (episode, query) predictions: accuracy, balanced accuracy (mean of
per-class recall), macro-F1 (from the pooled per-class counts), Brier score, expected
calibration error (10 equal-width bins, Guo et al. 2017), per-class sensitivity and
specificity (specificity counts only episodes that contain the class), and one-vs-rest ROC AUC
(macro over classes) from positive-negative pairs *within* episodes (scores of different
episodes' heads are not comparable). With the same number of queries of each class in every
episode (as here), pooled accuracy, balanced accuracy and AUC equal the usual means of the
per-episode values. Because every metric is a ratio of sums over queries, it is summed per
subject once, and each bootstrap replicate costs one small product with its subject weights.

Example::

    >>> y = np.array([[0, 1, 2]] * 4); subj = np.array([[0, 1, 2], [3, 4, 5], [0, 4, 2], [3, 1, 5]])
    >>> proba = np.eye(3)[y]                       # a perfect classifier
    >>> r = summarise(EpisodePredictions(y, proba, subj, ["a", "b", "c"]), n_boot=200)
    >>> r["balanced_accuracy"], r["ci95"], r["ece"], r["brier"]
    (1.0, [1.0, 1.0], 0.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medcl.fewshot.metrics import mean_ci95

__all__ = ["EpisodePredictions", "episode_metrics", "summarise", "paired_difference", "roc_points",
           "reliability_bins", "bootstrap_replicates", "subject_bootstrap_mean", "SCALAR_METRICS"]

SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "brier", "ece")
N_BINS = 10


@dataclass
class EpisodePredictions:
    """Query predictions of one method on ``E`` episodes (``Q`` query slots, ``C`` classes).

    ``y`` ``(E, Q)`` true class index, ``-1`` for padding; ``proba`` ``(E, Q, C)`` probabilities
    over all classes (0 for classes not in the episode); ``subject`` ``(E, Q)`` subject index of
    each query (into the cohort's subjects); ``class_names`` ``(C,)``; ``in_episode`` ``(E, C)``
    which classes each episode holds (default: the classes with any probability mass)."""

    y: np.ndarray
    proba: np.ndarray
    subject: np.ndarray
    class_names: list
    in_episode: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.y = np.atleast_2d(np.asarray(self.y, dtype=np.int64))
        self.proba = np.asarray(self.proba, dtype=float)
        if self.proba.ndim == 2:
            self.proba = self.proba[None]
        self.subject = np.atleast_2d(np.asarray(self.subject, dtype=np.int64))
        self.class_names = list(np.asarray(self.class_names).tolist())
        E, Q = self.y.shape
        if self.proba.shape != (E, Q, len(self.class_names)) or self.subject.shape != (E, Q):
            raise ValueError(f"EpisodePredictions: need y (E, Q), proba (E, Q, {len(self.class_names)}), subject (E, Q); "
                             f"got {self.y.shape}, {self.proba.shape}, {self.subject.shape}")
        mask = self.y >= 0
        if (self.subject[mask] < 0).any():
            raise ValueError("EpisodePredictions: every query needs a subject index >= 0")
        if not np.isfinite(self.proba).all():
            raise ValueError("EpisodePredictions: proba contains NaN or inf")
        if self.in_episode is None:
            self.in_episode = (self.proba * mask[..., None]).sum(1) > 0
            self.in_episode[np.arange(E)[:, None], np.where(mask, self.y, 0)] |= mask
        self.in_episode = np.asarray(self.in_episode, dtype=bool)

    @property
    def n_episodes(self) -> int:
        return len(self.y)

    @property
    def mask(self) -> np.ndarray:
        return self.y >= 0

    def first(self, n: int) -> "EpisodePredictions":
        return EpisodePredictions(self.y[:n], self.proba[:n], self.subject[:n], self.class_names, self.in_episode[:n],
                                  dict(self.meta))

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All (episode, query) predictions: ``(y (n,), proba (n, C))``."""
        m = self.mask
        return self.y[m], self.proba[m]


def _query_arrays(p: EpisodePredictions) -> dict:
    """Per (episode, query) one-hot truth and prediction, and the pairwise AUC comparisons."""
    mask = p.mask
    C = len(p.class_names)
    Y = np.eye(C)[np.where(mask, p.y, 0)] * mask[..., None]                             # (E, Q, C)
    masked = np.where(p.in_episode[:, None, :], p.proba, -np.inf)
    pred = np.eye(C)[masked.argmax(-1)] * mask[..., None]                               # (E, Q, C)
    return {"Y": Y, "pred": pred, "hit": Y * pred}


def _prepared(p: EpisodePredictions, n_subjects: int) -> dict:
    """Every metric's numerator and denominator summed per subject, computed once per method.

    All metrics are ratios of sums over (episode, query) predictions, and a bootstrap replicate
    only reweights subjects, so a replicate is a product of its subject weights with these
    per-subject sums: ``(S, ...)`` arrays for per-query sums, and per class a sparse ``(S, S)``
    matrix for the AUC's positive-negative pairs (``[s, t]``: positives of subject ``s`` against
    negatives of ``t`` in the same episode)."""
    S = n_subjects
    q = _query_arrays(p)
    mask = p.mask
    Y, pred = q["Y"], q["pred"]
    subj = np.where(mask, p.subject, 0)
    flat_s, flat_m = subj.ravel(), mask.ravel().astype(float)

    def per(a):                                                                          # (S, k) sums per subject
        a = a.reshape(mask.size, -1) * flat_m[:, None]
        return np.stack([np.bincount(flat_s, weights=a[:, j], minlength=S) for j in range(a.shape[1])], 1)
    conf = np.where(mask, p.proba.max(-1), 0.0)
    correct = (pred * Y).sum(-1)
    bins = np.minimum((conf * N_BINS).astype(int), N_BINS - 1)
    gap = (correct - conf)[..., None] * np.eye(N_BINS)[bins] * mask[..., None]           # (E, Q, bins)
    inep = p.in_episode[:, None, :] * mask[..., None]
    agg = {"n": per(Y), "tp": per(q["hit"]), "pp": per(pred), "total": per(mask.astype(float))[:, 0],
           "sq": per(((p.proba - Y) ** 2).sum(-1) * mask)[:, 0], "gap": per(gap),
           "negmask": per((1 - Y) * inep), "trueneg": per((1 - Y) * (1 - pred) * inep)}
    # AUC: within-episode positive-negative pairs, summed per (subject, subject)
    C = len(p.class_names)
    from scipy import sparse

    shape = subj.shape + subj.shape[1:]
    si, sj = np.broadcast_to(subj[:, :, None], shape), np.broadcast_to(subj[:, None, :], shape)
    num, den = [], []
    for c in range(C):
        sc = p.proba[..., c]
        diff = sc[:, :, None] - sc[:, None, :]
        pos = Y[..., c] * p.in_episode[:, None, c]
        neg = (1 - Y[..., c]) * mask * p.in_episode[:, None, c]
        pair = pos[:, :, None] * neg[:, None, :]
        keep = pair > 0                                   # only pairs that met in an episode: sparse
        r, q = si[keep], sj[keep]
        num.append(sparse.csr_matrix((((diff > 0) + 0.5 * (diff == 0))[keep], (r, q)), shape=(S, S)))
        den.append(sparse.csr_matrix((pair[keep], (r, q)), shape=(S, S)))
    agg["auc_num"], agg["auc_den"] = num, den
    return agg


def _nanmean(x, axis):
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.sum(~np.isnan(x), axis=axis)
        return np.where(n > 0, np.nansum(x, axis=axis) / np.maximum(n, 1), np.nan)


def _scores(agg: dict, W: np.ndarray) -> dict:
    """Every metric for subject weights ``W`` ``(B, S)``: ``(B,)`` scalars, ``(B, C)`` per class.

    Pooled ratios: with the same number of queries of each class in every episode (as the
    episodes here have) the pooled accuracy and balanced accuracy equal the mean over episodes
    of the per-episode values, and the AUC (positive-negative pairs taken within episodes only,
    since different episodes' heads give incomparable scores) equals the mean of per-episode AUCs."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n, tp, pp, total = W @ agg["n"], W @ agg["tp"], W @ agg["pp"], W @ agg["total"]
        recall = np.where(n > 0, tp / n, np.nan)
        f1 = np.where(n + pp > 0, 2 * tp / (n + pp), np.nan)
        num = np.stack([((m.T @ W.T).T * W).sum(1) for m in agg["auc_num"]], 1)          # W M W^T per class
        den = np.stack([((m.T @ W.T).T * W).sum(1) for m in agg["auc_den"]], 1)
        return {"accuracy": tp.sum(1) / total, "balanced_accuracy": _nanmean(recall, -1),
                "macro_f1": _nanmean(f1, -1), "auc": _nanmean(np.where(den > 0, num / den, np.nan), -1),
                "brier": (W @ agg["sq"]) / total, "ece": np.abs(W @ agg["gap"]).sum(-1) / total,
                "sensitivity": recall, "specificity": (W @ agg["trueneg"]) / (W @ agg["negmask"])}


def _n_subjects(p: EpisodePredictions, n_subjects: int | None) -> int:
    return int(n_subjects if n_subjects is not None else p.subject.max() + 1)


def episode_metrics(p: EpisodePredictions, n_subjects: int | None = None) -> dict:
    """Point values of every metric (``(C,)`` arrays for sensitivity and specificity), and the
    per-episode accuracy and balanced accuracy ``(E,)`` (for the episodic interval)."""
    S = _n_subjects(p, n_subjects)
    out = {k: v[0] for k, v in _scores(_prepared(p, S), np.ones((1, S))).items()}
    q = _query_arrays(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        n, tp = q["Y"].sum(1), q["hit"].sum(1)
        out["per_episode"] = {"accuracy": tp.sum(-1) / p.mask.sum(1),
                              "balanced_accuracy": _nanmean(np.where(n > 0, tp / n, np.nan), -1)}
    return out


def _boot_weights(n_subjects: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_subjects)`` multiplicities of a subject bootstrap (multinomial draws)."""
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(7,)))
    return rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_boot).astype(float)


def _replicates(p: EpisodePredictions, n_boot: int, seed: int, n_subjects: int | None = None) -> dict:
    """Per-replicate values of every metric: scalar metrics ``(B,)``, per-class ``(B, C)``."""
    S = _n_subjects(p, n_subjects)
    return _scores(_prepared(p, S), _boot_weights(S, n_boot, seed))


def bootstrap_replicates(p: EpisodePredictions, metric: str, n_boot: int, seed: int = 0,
                         n_subjects: int | None = None) -> np.ndarray:
    """A scalar metric per subject-bootstrap replicate ``(n_boot,)``; ``n_boot = 0``: the point
    value ``(1,)``. Replicate ``b`` draws the same subjects for every method and K scored with the
    same ``seed`` and ``n_subjects``, so replicates of different K form one coherent curve."""
    if metric not in SCALAR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(SCALAR_METRICS)}")
    S = _n_subjects(p, n_subjects)
    W = _boot_weights(S, n_boot, seed) if n_boot > 0 else np.ones((1, S))
    return _scores(_prepared(p, S), W)[metric]


def subject_bootstrap_mean(values, subject, mask, n_boot: int, seed: int = 0,
                           n_subjects: int | None = None) -> tuple[float, list]:
    """Mean of ``values`` over the ``mask``-ed predictions (any shape; ``subject`` alike) and its
    95% subject-bootstrap interval (the same subject draws as every other metric of ``seed``)."""
    m = np.asarray(mask, bool)
    s, v = np.asarray(subject)[m], np.asarray(values, float)[m]
    S = int(n_subjects if n_subjects is not None else s.max() + 1)
    num, den = np.bincount(s, weights=v, minlength=S), np.bincount(s, minlength=S).astype(float)
    point = float(num.sum() / den.sum())
    if n_boot <= 0:
        return point, [point, point]
    W = _boot_weights(S, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return point, _ci((W @ num) / (W @ den))


def _ci(values: np.ndarray) -> list:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def summarise(p: EpisodePredictions, n_boot: int = 1000, seed: int = 0, n_subjects: int | None = None) -> dict:
    """Every metric with its 95% subject-bootstrap interval (``ci95`` for balanced accuracy,
    ``<metric>_ci95`` for the others), the episodic interval of accuracy and balanced accuracy
    (``*_ci95_episodic``), per-class sensitivity and specificity with intervals, and the
    pooled confusion matrix. ``n_subjects``: size of the cohort the bootstrap draws from (the
    subject indices' range; default: the largest index + 1). JSON-serialisable."""
    point = episode_metrics(p, n_subjects)
    reps = _replicates(p, n_boot, seed, n_subjects) if n_boot > 0 else {}
    res: dict = {}
    for m in SCALAR_METRICS:
        res[m] = float(point[m])
        res[f"{m}_ci95"] = _ci(reps[m]) if reps else [float(point[m])] * 2
    res["ci95"] = res.pop("balanced_accuracy_ci95")
    for m in ("accuracy", "balanced_accuracy"):
        vals = point["per_episode"][m]
        vals = vals[~np.isnan(vals)]
        ep = mean_ci95(vals) if len(vals) else (float("nan"),) * 3
        res[f"{m}_ci95_episodic"] = [float(ep[1]), float(ep[2])]
    for m in ("sensitivity", "specificity"):
        res[m] = {c: float(v) for c, v in zip(p.class_names, point[m])}
        res[f"{m}_ci95"] = {c: _ci(reps[m][:, i]) if reps else [float(point[m][i])] * 2
                            for i, c in enumerate(p.class_names)}
    y, proba = p.pooled()
    masked = np.where(p.in_episode[:, None, :], p.proba, -np.inf)[p.mask]
    pred = masked.argmax(-1)
    C = len(p.class_names)
    res["confusion"] = np.bincount(y * C + pred, minlength=C * C).reshape(C, C).tolist()
    res["classes"] = list(p.class_names)
    res["n_episodes"] = int(p.n_episodes)
    res["n_predictions"] = int(p.mask.sum())
    res["interval"] = f"subject bootstrap, {n_boot} replicates" if n_boot > 0 else "none"
    return res


def paired_difference(a: EpisodePredictions, b: EpisodePredictions, metric: str = "balanced_accuracy",
                      n_boot: int = 1000, seed: int = 0, n_subjects: int | None = None) -> dict:
    """``metric(a) - metric(b)`` on their common episodes (the first ``min(E_a, E_b)``), with
    the paired subject-bootstrap 95% interval and the fraction of replicates where ``a`` does not
    beat ``b`` (a one-sided bootstrap p-value). The two must share episodes (same seed):
    identical truth and query subjects on the common episodes, else ``ValueError``."""
    if metric not in SCALAR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(SCALAR_METRICS)}")
    n = min(a.n_episodes, b.n_episodes)
    a, b = a.first(n), b.first(n)
    if a.y.shape != b.y.shape or not (np.array_equal(a.y, b.y) and np.array_equal(a.subject, b.subject)):
        raise ValueError("paired_difference: the two methods were not scored on the same episodes (same seed)")
    S = int(n_subjects if n_subjects is not None else max(a.subject.max(), b.subject.max()) + 1)
    pa, pb = episode_metrics(a, S), episode_metrics(b, S)
    point = (lambda r: float(r[metric]))                                                   # noqa: E731
    ra, rb = _replicates(a, n_boot, seed, S)[metric], _replicates(b, n_boot, seed, S)[metric]
    d = ra - rb
    d = d[~np.isnan(d)]
    return {"metric": metric, "difference": float(point(pa) - point(pb)), "ci95": _ci(d),
            "p_not_better": float(np.mean(d <= 0)) if len(d) else float("nan"), "n_episodes": int(n)}


def roc_points(p: EpisodePredictions, grid: int = 101) -> dict:
    """Pooled one-vs-rest ROC curve per class (true-positive rate on a grid of false-positive
    rates, step interpolation), over all (episode, query) predictions in episodes holding the class."""
    fpr_grid = np.linspace(0, 1, grid)
    out = {"fpr": fpr_grid.tolist(), "tpr": {}, "auc_pooled": {}}
    for c, name in enumerate(p.class_names):
        keep = p.mask & p.in_episode[:, None, c]
        y, s = (p.y[keep] == c), p.proba[keep][:, c]
        if y.all() or not y.any():
            continue
        order = np.argsort(-s, kind="stable")
        s, y = s[order], y[order]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]                         # ends of tied runs
        tpr = np.r_[0, np.cumsum(y)[last] / y.sum()]
        fpr = np.r_[0, np.cumsum(~y)[last] / (~y).sum()]
        out["tpr"][name] = np.interp(fpr_grid, fpr, tpr).tolist()
        out["auc_pooled"][name] = float(np.trapezoid(tpr, fpr))
    return out


def reliability_bins(p: EpisodePredictions, n_bins: int = N_BINS) -> dict:
    """Pooled top-label reliability: per equal-width confidence bin, the mean confidence, the
    accuracy and the count (the data of a reliability diagram, Guo et al. 2017)."""
    y, proba = p.pooled()
    masked = np.where(p.in_episode[:, None, :], p.proba, -np.inf)[p.mask]
    conf, correct = proba.max(1), masked.argmax(1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "count": count.tolist(),
            "accuracy": [None if np.isnan(v) else float(v) for v in acc],
            "confidence": [None if np.isnan(v) else float(v) for v in mean_conf]}
