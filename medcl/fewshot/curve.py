"""How many labels it needs: a learning curve fitted to the metric-versus-K results.

The few-shot metric at K labelled scans per class is fitted by an inverse power law

    m(K) = a - b * K^(-c),    a <= 1 (the asymptote), b >= 0, c > 0

(the learning-curve model of Figueroa et al. 2012, BMC Med Inform Decis Mak 12:8, and of
Cho et al. 2015 for medical image classifiers). For each exponent ``c`` on a fine grid the
model is linear in ``a`` and ``b`` (least squares in closed form, with the bounds enforced);
the ``c`` with the least squared error wins. The labels per class needed for a target ``t`` are
``K = (b / (a - t))^(1/c)``, or unreachable when the asymptote is at or below ``t``.

Intervals come from the **subject bootstrap** of :mod:`medcl.fewshot.stats`: one replicate draws
the cohort's subjects with replacement and recomputes the metric at every K over the same
episodes (the same subject draws at every K, so a replicate is one coherent curve); the curve
is refitted per replicate and the 2.5th and 97.5th percentiles bound every derived number.
The fit is checked by holding out the largest K: the curve fitted on the smaller K predicts it,
with the interval of the replicates' predictions, beside what was measured.

Example::

    >>> k = np.array([1, 2, 3, 5, 10, 20.0])
    >>> p = fit_power_law(k, 0.9 - 0.4 * k ** -0.7)
    >>> [round(float(v), 3) for v in p]
    [0.9, 0.4, 0.7]
    >>> round(float(labels_needed(p, 0.8)), 1)           # (0.4 / 0.1) ** (1 / 0.7)
    7.2
"""

from __future__ import annotations

import numpy as np

from medcl.fewshot.stats import EpisodePredictions, bootstrap_replicates

__all__ = ["fit_power_law", "predict_power_law", "labels_needed", "learning_curve", "MODEL"]

MODEL = "inverse power law m(K) = a - b K^-c (a <= 1, b >= 0), least squares over K"
C_GRID = np.geomspace(0.02, 5.0, 400)


def _ab(k: np.ndarray, Y: np.ndarray, c: np.ndarray, a_max: float):
    """Least-squares ``a``, ``b`` (bounds enforced) and squared error of each row of ``Y``
    ``(B, nK)`` at each exponent of ``c`` ``(B, nc)``: three ``(B, nc)`` arrays."""
    X = k[None, None, :] ** -c[..., None]                                       # (B, nc, nK)
    xm, ym = X.mean(-1), Y.mean(-1)[:, None]
    xc = X - xm[..., None]
    sxx = (xc ** 2).sum(-1)
    sxy = np.einsum("bk,bck->bc", Y - ym, xc)
    b = np.clip(-sxy / np.where(sxx > 0, sxx, 1.0), 0.0, None)                  # slope of -x, >= 0
    a = ym + b * xm
    over = a > a_max                                                            # asymptote bound hit:
    b_fix = np.clip(np.einsum("bk,bck->bc", a_max - Y, X) / (X ** 2).sum(-1), 0.0, None)
    a, b = np.where(over, a_max, a), np.where(over, b_fix, b)
    sse = ((a[..., None] - b[..., None] * X - Y[:, None, :]) ** 2).sum(-1)
    return a, b, sse


def _fit_many(k: np.ndarray, Y: np.ndarray, a_max: float = 1.0) -> np.ndarray:
    """Best ``(a, b, c)`` per row of ``Y`` ``(B, nK)``: ``(B, 3)``. Grid search over ``c``, then
    one parabolic step in ``log c`` through the best grid point and its neighbours."""
    _, _, sse = _ab(k, Y, np.broadcast_to(C_GRID, (len(Y), len(C_GRID))), a_max)
    i = np.clip(np.argmin(sse, axis=1), 1, len(C_GRID) - 2)
    rows = np.arange(len(Y))
    f0, f1, f2 = sse[rows, i - 1], sse[rows, i], sse[rows, i + 1]
    curv = f0 - 2 * f1 + f2
    step = np.where(curv > 0, 0.5 * (f0 - f2) / np.where(curv > 0, curv, 1.0), 0.0)
    logc = np.log(C_GRID[i]) + np.clip(step, -1, 1) * np.log(C_GRID[1] / C_GRID[0])
    c = np.exp(logc)[:, None]
    a, b, sse_c = _ab(k, Y, c, a_max)
    keep = sse_c[:, 0] <= f1                                                    # the step never makes it worse
    c = np.where(keep, c[:, 0], C_GRID[i])
    a, b, _ = _ab(k, Y, c[:, None], a_max)
    return np.stack([a[:, 0], b[:, 0], c], 1)


def fit_power_law(shots, values, a_max: float = 1.0) -> np.ndarray:
    """``(a, b, c)`` of the inverse power law fitted to ``values`` at ``shots`` (3+ points)."""
    k, y = np.asarray(shots, dtype=float), np.asarray(values, dtype=float)
    if k.ndim != 1 or k.shape != y.shape or len(k) < 3 or (k <= 0).any() or not np.isfinite(y).all():
        raise ValueError(f"fit_power_law: need 3+ finite values at K > 0, got K={k.tolist()} values={y.tolist()}")
    return _fit_many(k, y[None], a_max)[0]


def predict_power_law(params, shots) -> np.ndarray:
    """``m(K)`` for ``params`` ``(3,)`` or ``(B, 3)``."""
    p = np.atleast_2d(np.asarray(params, dtype=float))
    out = p[:, :1] - p[:, 1:2] * np.asarray(shots, dtype=float)[None, :] ** -p[:, 2:3]
    return out[0] if np.ndim(params) == 1 else out


def labels_needed(params, target: float) -> np.ndarray:
    """Labelled scans per class at which the curve reaches ``target`` (at least 1; ``inf`` when
    the asymptote ``a`` is at or below it)."""
    p = np.atleast_2d(np.asarray(params, dtype=float))
    a, b, c = p[:, 0], p[:, 1], p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k = np.where(a > target, (b / np.maximum(a - target, 1e-300)) ** (1.0 / c), np.inf)
    k = np.maximum(np.where(np.isnan(k), np.inf, k), 1.0)
    return k[0] if np.ndim(params) == 1 else k


def _interval(v: np.ndarray) -> list:
    """2.5th and 97.5th percentiles; with infinite values (a target never reached) no
    interpolation between them (``inverted_cdf``)."""
    method = "linear" if np.isfinite(v).all() else "inverted_cdf"
    return [float(np.percentile(v, 2.5, method=method)), float(np.percentile(v, 97.5, method=method))]


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _target_row(point: np.ndarray, reps: np.ndarray, t: float) -> dict:
    """Labels per class for target ``t`` and its interval (``None``: not reached by the curve)."""
    need, need_b = float(labels_needed(point, t)), labels_needed(reps, t)
    lo, hi = _interval(need_b)
    return {"target": float(t), "labels_per_class": _finite(need), "ci95": [_finite(lo), _finite(hi)],
            "reachable_fraction": float(np.isfinite(need_b).mean())}


def learning_curve(predictions: dict, targets=(0.8, 0.9), metric: str = "balanced_accuracy", n_boot: int = 200,
                   seed: int = 0, n_subjects: int | None = None) -> dict:
    """The curve of ``metric`` over ``predictions`` (``str(K) -> EpisodePredictions``, 3+ K),
    its asymptote, the labels per class for each target (with subject-bootstrap intervals), and
    the held-out check of the largest K (when 4+ K). JSON-serialisable; ``{}`` with fewer than 3 K."""
    shots = sorted(predictions, key=int)
    if len(shots) < 3:
        return {}
    k = np.array([int(s) for s in shots], dtype=float)
    ps: list[EpisodePredictions] = [predictions[s] for s in shots]
    S = int(n_subjects if n_subjects is not None else max(int(p.subject.max()) for p in ps) + 1)
    y = np.array([bootstrap_replicates(p, metric, 0, seed, S)[0] for p in ps])             # point values
    Y = np.stack([bootstrap_replicates(p, metric, n_boot, seed, S) for p in ps], 1)       # (B, nK)
    Y = Y[np.isfinite(Y).all(1)]
    point, reps = fit_power_law(k, y), _fit_many(k, Y)
    out = {"metric": metric, "model": MODEL, "shots": [int(v) for v in k], "observed": y.tolist(),
           "observed_ci95": [_interval(Y[:, j]) for j in range(len(k))],
           "params": {"a": float(point[0]), "b": float(point[1]), "c": float(point[2])},
           "asymptote_ci95": _interval(reps[:, 0]), "n_boot": int(len(Y)),
           "fitted": predict_power_law(point, k).tolist(),
           "targets": [_target_row(point, reps, t) for t in targets]}
    if len(k) >= 4:
        hp, hr = fit_power_law(k[:-1], y[:-1]), _fit_many(k[:-1], Y[:, :-1])
        pred_b = predict_power_law(hr, k[-1:])[:, 0]
        lo, hi = _interval(pred_b)
        out["holdout"] = {"k": int(k[-1]), "fitted_on": [int(v) for v in k[:-1]], "observed": float(y[-1]),
                          "predicted": float(predict_power_law(hp, k[-1:])[0]), "predicted_ci95": [lo, hi],
                          "within": bool(lo <= y[-1] <= hi)}
    return out
