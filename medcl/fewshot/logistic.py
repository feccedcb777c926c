"""Many small L2-regularised multinomial logistic regressions at once, and the choice of their
regularisation by leave-one-subject-out cross-validation.

Few-shot evaluation fits one logistic regression per episode, and choosing ``C`` by
leave-one-subject-out (LOSO) cross-validation multiplies that by (folds + 1) x (grid size):
for 100 episodes of 3-way 10-shot with 4 values of ``C`` that is 12,400 fits, an hour with
scikit-learn on 2 cores (about 30 ms a fit) but seconds as one batched Newton solve, because
every problem is tiny (at most a few dozen samples, after projecting the features onto the
span of the training samples: the L2-penalised solution lies in that span, so the projection
is exact).

The objective is scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, L2, intercept not
penalised): ``C * sum_i w_i * CE(softmax(W x_i + b), y_i) + ||W||^2 / 2`` over all classes
(the multinomial loss for 3+ classes, the binomial one for 2), solved to a tight tolerance,
so probabilities agree with scikit-learn's to its own tolerance.

Example::

    >>> rng = np.random.default_rng(0)
    >>> Z = rng.normal(size=(2, 12, 5)); y = np.tile(np.arange(3), (2, 4))
    >>> coef, intercept = fit_logistic(Z, y, 3, C=np.array([1.0, 10.0]))
    >>> coef.shape, intercept.shape
    ((2, 3, 5), (2, 3))
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits

__all__ = ["fit_logistic", "logits", "loso_select_C", "loso_fit", "span_coordinates", "loso_feasible", "one_thread"]

STEPS = torch.tensor([1.0, 0.3, 0.05, 0.005, 0.0], dtype=torch.float64)  # backtracking line search ladder
FOLD_TOL = 1e-6  # gradient tolerance of the fold fits: enough to rank the values of C
FOLD_MAX_ITER = 5  # Newton steps of a fold fit from the fit on all samples (most stop earlier, at FOLD_TOL)
CHUNK = 2048  # problems solved together (bounds memory: CHUNK x params^2 doubles)


@contextmanager
def one_thread():
    """Run torch and the BLAS/OpenMP pools on one thread: the problems here are tiny (a few
    dozen rows), so a second thread only adds synchronisation, and on a machine loaded by other
    jobs the waiting dominates (2 shared cores, load 7: the LOSO fits of 30 episodes of 3-way
    10-shot took 17 s on 2 threads, 2.6 s on one; a batched 30 x 30 ``eigh`` 0.7 s against 2 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(n)


def span_coordinates(train: np.ndarray, test: np.ndarray | None = None, rtol: float = 1e-10):
    """Coordinates of ``train`` rows ``(B, n, d)`` (and of ``test`` rows ``(B, m, d)``) in an
    orthonormal basis of the span of the train rows: inner products among and with train rows
    are kept exactly, and the dimension drops from ``d`` to at most ``n`` (kernel PCA with the
    linear kernel)."""
    train = np.asarray(train, dtype=float)
    gram = train @ np.swapaxes(train, -1, -2)
    lam, vec = np.linalg.eigh(gram)
    keep = lam > rtol * np.maximum(lam.max(-1, keepdims=True), 1e-300)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    cols = keep.reshape(-1, keep.shape[-1]).any(0)                       # eigh sorts ascending: drop the null space
    basis = np.swapaxes(train, -1, -2) @ (vec * scale[..., None, :])[..., cols]   # (B, d, r), orthonormal columns
    z_train = train @ basis
    return z_train if test is None else (z_train, np.asarray(test, dtype=float) @ basis)


def _penalty_matrix(n_classes: int) -> torch.Tensor:
    """``||W||^2`` in terms of the logits relative to class 0: ``V^T (I - 11^T/C) V`` for the
    (zero-mean) multinomial parameters; the binomial loss penalises ``|w|^2`` itself."""
    k = n_classes - 1
    if n_classes == 2:
        return torch.eye(1, dtype=torch.float64)
    return torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / n_classes, dtype=torch.float64)


def _lse0(eta):
    """``log(1 + sum_k exp(eta_k))``: logsumexp over the logits with class 0's (zero) included."""
    m = eta.amax(-1).clamp(min=0.0)
    return m + torch.log(torch.exp(-m) + torch.exp(eta - m[..., None]).sum(-1))


def _nll(eta, Yk, w):
    """Weighted cross-entropy from logits relative to class 0, ``eta`` ``(..., n, k)``;
    ``Yk`` the one-hot truth of classes 1..k."""
    return (w * (_lse0(eta) - (eta * Yk).sum(-1))).sum(-1)


def _penalty(th, M, pen_mask):
    """``||W||^2`` of parameters ``th`` ``(..., p+1, k)`` (the intercept row is not penalised)."""
    th = th * pen_mask[:, None]
    return ((th @ M) * th).sum((-1, -2))


def _newton_direction(Za, th, wa, iC, Ya, M, pen_mask, ridge):
    """Gradient (of objective / C), Newton step and Cholesky status of ``b`` problems; the
    Hessian is built block by block over pairs of classes, class-major ``(b, k p1, k p1)``."""
    b, _, p1 = Za.shape
    k = Ya.shape[-1]
    eta = Za @ th
    Pk = torch.exp(eta - _lse0(eta)[..., None])                        # probabilities of classes 1..k
    grad = Za.transpose(1, 2) @ ((Pk - Ya) * wa[..., None]) + iC[:, None, None] * ((th * pen_mask[:, None]) @ M)
    A = (torch.diag_embed(Pk) - Pk[..., :, None] * Pk[..., None, :]) * wa[..., None, None]  # (b, n, k, k)
    blocks = {(a, c): (Za * A[..., a, c, None]).transpose(1, 2) @ Za for a in range(k) for c in range(a, k)}
    H = torch.cat([torch.cat([blocks[min(a, c), max(a, c)] for c in range(k)], -1) for a in range(k)], -2)
    H = H + iC[:, None, None] * ridge
    g = grad.transpose(1, 2).reshape(b, k * p1)
    L, info = torch.linalg.cholesky_ex(H)
    step = torch.cholesky_solve(g[..., None], L).squeeze(-1).reshape(b, k, p1).transpose(1, 2)
    return eta, grad, step, info


def _line_search(f0, eta, Za, th, step, grad, Ya, wa, iC, M, pen_mask):
    """Backtracking (Armijo) over the fixed ladder ``STEPS``, all problems at once: logits are
    linear and the penalty quadratic in the step size t. The full step is tried first.
    Returns the new objective values and the step sizes taken (0: no decrease found)."""
    b = len(th)
    deta = Za @ step
    p0, pd = th * pen_mask[:, None], step * pen_mask[:, None]
    pen0, cross, pen1 = _penalty(th, M, pen_mask), ((p0 @ M) * pd).sum((-1, -2)), _penalty(step, M, pen_mask)
    decrease = (grad * step).sum((1, 2))

    def objective(t, rows):
        pen_t = pen0[rows, None] - 2 * t * cross[rows, None] + t ** 2 * pen1[rows, None]
        eta_t = eta[rows, None] - t[..., None, None] * deta[rows, None]       # (r, S, n, k)
        return _nll(eta_t, Ya[rows, None], wa[rows, None]) + 0.5 * iC[rows, None] * pen_t

    rows = torch.arange(b)
    f_new = objective(STEPS[None, :1], rows)[:, 0]
    t_new = torch.ones(b, dtype=torch.float64)
    bad = ~(f_new <= f0 - 1e-4 * decrease)
    if bad.any():
        r = rows[bad]
        fc = objective(STEPS[None, 1:], r)
        ok = fc <= f0[r, None] - 1e-4 * STEPS[None, 1:] * decrease[r, None]
        ok[:, -1] = True
        pick = ok.float().argmax(1)
        f_new[r], t_new[r] = fc[torch.arange(len(r)), pick], STEPS[1:][pick]
    return f_new, t_new


def _solve(Z1, y, n_classes, C, w, max_iter, tol, init=None):
    """Damped Newton for ``B`` problems at once; converged problems leave the batch."""
    B, n, p1 = Z1.shape
    k = n_classes - 1
    M = _penalty_matrix(n_classes)
    inv_C = 1.0 / C
    Yk = torch.nn.functional.one_hot(y, n_classes).to(torch.float64)[..., 1:]
    pen_mask = torch.ones(p1, dtype=torch.float64)
    pen_mask[-1] = 0.0                                                    # the intercept is free
    theta = torch.zeros(B, p1, k, dtype=torch.float64) if init is None else init.clone()
    ridge = torch.kron(M, torch.diag(pen_mask)) + 1e-10 * torch.eye(p1 * k, dtype=torch.float64)
    f = _nll(Z1 @ theta, Yk, w) + 0.5 * inv_C * _penalty(theta, M, pen_mask)   # objective / C
    active = torch.ones(B, dtype=torch.bool)
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        Za, th, wa, iC, Ya = Z1[idx], theta[idx], w[idx], inv_C[idx], Yk[idx]
        eta, grad, step, info = _newton_direction(Za, th, wa, iC, Ya, M, pen_mask, ridge)
        done = grad.abs().amax((1, 2)) < tol * (1.0 + wa.sum(-1))
        f_new, t_new = _line_search(f[idx], eta, Za, th, step, grad, Ya, wa, iC, M, pen_mask)
        theta[idx] = th - t_new[:, None, None] * step
        f[idx] = f_new
        active[idx[done | (t_new == 0) | (info != 0)]] = False
    return theta


def _theta(Z, y, n_classes, C, weight, max_iter, tol, init=None):
    """Parameters ``(B, p+1, n_classes-1)``: logits relative to class 0, intercept last."""
    Z = torch.as_tensor(np.array(Z, dtype=float))
    if Z.ndim != 3:
        raise ValueError(f"fit_logistic: Z must be (problems, samples, features), got shape {tuple(Z.shape)}")
    B, n, p = Z.shape
    y = torch.as_tensor(np.array(y, dtype=np.int64))
    if y.shape != (B, n) or (y.min() < 0) or (y.max() >= n_classes):
        raise ValueError(f"fit_logistic: y must be ({B}, {n}) ints in [0, {n_classes}), got shape {tuple(y.shape)}")
    C = torch.as_tensor(np.broadcast_to(np.asarray(C, dtype=float), (B,)).copy())
    if not (torch.isfinite(C).all() and (C > 0).all()):
        raise ValueError("fit_logistic: C must be finite and > 0")
    w = torch.ones(B, n, dtype=torch.float64) if weight is None else torch.as_tensor(np.array(weight, dtype=float))
    Z1 = torch.cat([Z, torch.ones(B, n, 1, dtype=torch.float64)], -1)
    init = None if init is None else torch.as_tensor(np.ascontiguousarray(init))
    with one_thread():
        thetas = [_solve(Z1[i:i + CHUNK], y[i:i + CHUNK], n_classes, C[i:i + CHUNK], w[i:i + CHUNK], max_iter, tol,
                         None if init is None else init[i:i + CHUNK]) for i in range(0, B, CHUNK)]
    return torch.cat(thetas).numpy() if thetas else np.zeros((0, p + 1, n_classes - 1))


def _coef(theta: np.ndarray, n_classes: int):
    B = len(theta)
    V = np.concatenate([np.zeros((B, theta.shape[1], 1)), theta], -1)      # logits relative to class 0
    if n_classes > 2:
        V[:, :-1] -= V[:, :-1].mean(-1, keepdims=True)                    # sklearn's zero-mean form
    return np.swapaxes(V[:, :-1], 1, 2), V[:, -1]


def fit_logistic(Z, y, n_classes: int, C, weight=None, max_iter: int = 100, tol: float = 1e-9):
    """Fit ``B`` independent problems: ``Z`` ``(B, n, p)`` features, ``y`` ``(B, n)`` labels in
    ``0..n_classes-1``, ``C`` scalar or ``(B,)``, ``weight`` ``(B, n)`` sample weights (0 drops a
    sample: a cross-validation fold). Returns ``coef (B, n_classes, p)`` and ``intercept
    (B, n_classes)`` such that ``softmax(Z @ coef.T + intercept)`` are the probabilities; for 3+
    classes they equal scikit-learn's ``coef_``/``intercept_`` (zero-mean over classes)."""
    return _coef(_theta(Z, y, n_classes, C, weight, max_iter, tol), n_classes)


def logits(Z, coef, intercept) -> np.ndarray:
    """``(B, m, n_classes)`` logits of rows ``Z`` ``(B, m, p)``."""
    return np.asarray(Z, dtype=float) @ np.swapaxes(coef, 1, 2) + intercept[:, None, :]


def loso_feasible(y, groups) -> bool:
    """True when leaving out any one subject keeps every class in the training set (each class
    has at least 2 subjects): the shots allow leave-one-subject-out cross-validation."""
    y, groups = np.asarray(y), np.asarray(groups)
    return all(len(np.unique(groups[y == c])) >= 2 for c in np.unique(y))


def loso_select_C(Z, y, groups, n_classes: int, Cs) -> tuple[np.ndarray, np.ndarray]:
    """Per problem, the ``C`` in ``Cs`` with the lowest leave-one-subject-out log-loss.

    ``Z`` ``(B, n, p)``, ``y`` and ``groups`` ``(B, n)`` (subject of each row). Every subject of a
    problem is left out once; all ``B x |Cs| x folds`` fits are one batched solve. Ties go to the
    smaller ``C`` (stronger regularisation). Returns ``(best C (B,), mean held-out log-loss
    (B, |Cs|))``; a problem where some class has a single subject is a ``ValueError``.
    """
    best, loss, _, _ = loso_fit(Z, y, groups, n_classes, Cs)
    return best, loss


def _rank_rows(keys: np.ndarray) -> np.ndarray:
    """Per row of ``keys`` ``(B, n)`` (ints), the rank of each value among the row's distinct values."""
    order = np.argsort(keys, axis=1, kind="stable")
    s = np.take_along_axis(keys, order, 1)
    new = np.concatenate([np.ones((len(keys), 1), bool), s[:, 1:] != s[:, :-1]], 1)
    rank = np.empty_like(keys)
    np.put_along_axis(rank, order, np.cumsum(new, 1) - 1, 1)
    return rank


def _loso_folds(y: np.ndarray, groups: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Fold of each row ``(B, n)``: the rank of its subject among the problem's real rows' subjects
    (``-1`` for padding), for all problems at once; a ``ValueError`` names the first problem
    where some class has a single subject (leaving it out would empty the class)."""
    g = np.unique(groups, return_inverse=True)[1].reshape(groups.shape)
    pad = g.max(initial=0) + 1
    folds = np.where(real, _rank_rows(np.where(real, g, pad)), -1)
    pairs = np.where(real, y * (pad + 1) + g, -1)                  # distinct (class, subject) pairs per problem
    first = np.zeros_like(real)
    np.put_along_axis(first, np.argsort(pairs, 1, kind="stable"),
                      np.concatenate([np.ones((len(g), 1), bool), np.diff(np.sort(pairs, 1), axis=1) != 0], 1), 1)
    n_cls = int(y.max(initial=0)) + 1
    subjects, rows = np.zeros((len(g), n_cls), int), np.zeros((len(g), n_cls), int)
    np.add.at(subjects, (np.arange(len(g))[:, None], y), first & real)
    np.add.at(rows, (np.arange(len(g))[:, None], y), real)
    bad = ((rows > 0) & (subjects < 2)).any(1)
    if bad.any():
        raise ValueError(f"problem {int(np.argmax(bad))}: some class has a single subject, so leave-one-subject-out "
                         f"cannot keep it in training; give C explicitly")
    return folds


def loso_fit(Z, y, groups, n_classes: int, Cs, weight=None):
    """:func:`loso_select_C`, plus the fit on all samples at the chosen ``C``:
    ``(best C, loss, coef, intercept)``. ``weight`` ``(B, n)`` in {0, 1} marks padding rows
    (0) when problems of different sizes share one batch.

    Two batched solves, no loop over problems, folds or values of ``C``: the fits on all
    subjects for every ``C`` (``B x |Cs|`` problems), then every fold of every ``C``
    (``B x |Cs| x folds``), each started from the fit on all subjects at its ``C`` and taking
    at most ``FOLD_MAX_ITER`` Newton steps (the error squares with each step: the held-out
    log-losses agree with fully converged scikit-learn fits to 1e-4, see the tests)."""
    Z, y, groups = np.asarray(Z, dtype=float), np.asarray(y), np.asarray(groups)
    B, n, p = Z.shape
    base = np.ones((B, n)) if weight is None else np.asarray(weight, dtype=float)
    Cs, nC = np.asarray(sorted(float(c) for c in Cs)), len(Cs)
    folds = _loso_folds(y, groups, base > 0)
    n_folds = int(folds.max(initial=0)) + 1
    # weights (B, F, n): fold j drops subject j (a problem with fewer subjects gets no-op folds)
    W = (folds[:, None, :] != np.arange(n_folds)[None, :, None]) * base[:, None]
    held = base[:, None] - W
    rep = lambda a, *lead: np.broadcast_to(a, lead + a.shape[len(lead):])   # noqa: E731
    full = _theta(rep(Z[:, None], B, nC).reshape(-1, n, p), rep(y[:, None], B, nC).reshape(-1, n), n_classes,
                  rep(Cs[None], B, nC).reshape(-1), rep(base[:, None], B, nC).reshape(-1, n), 100, 1e-9)
    full = full.reshape(B, nC, *full.shape[1:])                                      # (B, |Cs|, p+1, k)
    shape = (B, nC, n_folds)
    Zr = rep(Z[:, None, None], *shape).reshape(-1, n, p)
    yr = rep(y[:, None, None], *shape).reshape(-1, n)
    init = rep(full[:, :, None], *shape).reshape(-1, *full.shape[2:])
    coef, intercept = _coef(_theta(Zr, yr, n_classes, rep(Cs[None, :, None], *shape).reshape(-1),
                                   rep(W[:, None], *shape).reshape(-1, n), FOLD_MAX_ITER, FOLD_TOL, init), n_classes)
    lg = logits(Zr, coef, intercept).reshape(B, nC, n_folds, n, n_classes)
    logp = lg - np.logaddexp.reduce(lg, axis=-1, keepdims=True)
    nll = -np.take_along_axis(logp, y[:, None, None, :, None], -1)[..., 0]            # (B, |Cs|, F, n)
    loss = (nll * held[:, None]).sum((2, 3)) / held.sum((1, 2))[:, None]
    pick = np.argmin(loss + 1e-12 * np.arange(nC), axis=1)
    coef, intercept = _coef(full[np.arange(B), pick], n_classes)
    return Cs[pick], loss, coef, intercept
