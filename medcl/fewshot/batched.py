"""Every episode at once: the few-shot heads of :mod:`medcl.fewshot.heads`, vectorised over
an :class:`~medcl.fewshot.episodes.EpisodeBatch`.

Everything a prototype or nearest-neighbour head needs is an inner product between two scans,
so the ``N x N`` Gram matrix of the features is computed once and each episode gathers an
``(S + Q) x S`` block of it (``S`` support, ``Q`` query scans): no per-episode feature copies,
no Python loop over episodes. Centring by the support mean and L2 normalisation (SimpleShot's
CL2N, Wang et al. 2019, arXiv:1911.04623) are done on the Gram block:

    <x - m, y - m> = G[x, y] - mean_s G[x, s] - mean_s G[s, y] + mean_{s,s'} G[s, s']

The logistic head is the same per-episode model as :class:`~medcl.fewshot.heads.LogisticHead`
(scikit-learn's objective), fitted for all episodes at once by :mod:`medcl.fewshot.logistic`, with
``C`` chosen per episode by leave-one-subject-out cross-validation on the support set when every
class has at least 2 support subjects (K >= 2), else ``C = logreg_C``.

Each head's entry in :data:`medcl.fewshot.heads.HEADS` names its function here. Every function
returns probabilities ``(E, Q, C)`` over *all* classes of the cohort (columns in
``batch.class_names`` order; classes outside an episode get probability 0); padded query slots
hold zeros.

Example::

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["a", "b", "c"], 6); subjects = np.arange(18)
    >>> X = rng.normal(size=(18, 8)) + 4 * np.eye(3, 8)[np.repeat([0, 1, 2], 6)]
    >>> batch = sample_episode_batch(labels, subjects, k_shot=2, n_query=3, n_episodes=50, seed=0)
    >>> predict_prototype(X, batch).shape
    (50, 9, 3)
"""

from __future__ import annotations

import numpy as np

from medcl.fewshot.episodes import EpisodeBatch, sample_episode_batch  # noqa: F401  (doctest)
from medcl.fewshot.ops import softmax
from medcl.fewshot.logistic import fit_logistic, logits, loso_fit, one_thread

__all__ = ["predict_prototype", "predict_knn", "predict_logreg", "gram", "episode_blocks"]

CHUNK = 1024  # episodes per gather (bounds memory at CHUNK x (S+Q) x S doubles)


def gram(features: np.ndarray) -> np.ndarray:
    """``features @ features.T`` in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f @ f.T


def episode_blocks(G: np.ndarray, support: np.ndarray, query: np.ndarray, centre: bool, normalise: bool):
    """Support-support ``(E, S, S)``, query-support ``(E, Q, S)`` inner products and query norms
    ``(E, Q)`` (squared) of the features centred by each episode's support mean (if ``centre``)
    and L2-normalised (if ``normalise``). Padded queries (``-1``) read scan 0; mask them."""
    q = np.where(query < 0, 0, query)
    flat, n = G.ravel(), len(G)                       # 1-D takes: several times faster than 2-D fancy indexing
    gss = np.take(flat, support[:, :, None] * n + support[:, None, :])
    gqs = np.take(flat, q[:, :, None] * n + support[:, None, :])
    gqq = np.take(flat, q * (n + 1))
    if centre:
        a_s, a_q, mu = gss.mean(2), gqs.mean(2), gss.mean((1, 2))
        gss = gss - a_s[:, :, None] - a_s[:, None, :] + mu[:, None, None]
        gqs = gqs - a_q[:, :, None] - a_s[:, None, :] + mu[:, None, None]
        gqq = gqq - 2 * a_q + mu[:, None]
    if normalise:
        ns = np.sqrt(np.clip(np.einsum("ess->es", gss), 0, None))
        nq = np.sqrt(np.clip(gqq, 0, None))
        ns, nq = np.where(ns == 0, 1.0, ns), np.where(nq == 0, 1.0, nq)  # zero rows stay zero, as l2_normalise
        gss = gss / (ns[:, :, None] * ns[:, None, :])
        gqs = gqs / (nq[:, :, None] * ns[:, None, :])
        gqq = gqq / nq ** 2
    return gss, gqs, gqq


def _scatter(batch: EpisodeBatch, local: np.ndarray, rows: slice) -> np.ndarray:
    """Episode-local probabilities ``(e, Q, n_way)`` -> ``(e, Q, C)`` over all classes."""
    e, nq, _ = local.shape
    out = np.zeros((e, nq, len(batch.class_names)))
    np.put_along_axis(out, np.broadcast_to(batch.classes[rows][:, None, :], local.shape), local, axis=2)
    return out * (batch.query[rows] >= 0)[..., None]


def _prototype_logits(gss, gqs, gqq, n_way, k, metric, temperature):
    """SimpleShot prototypes from Gram blocks: ``p_c = mean_{s in c} z_s``."""
    e, nq, _ = gqs.shape
    qp = gqs.reshape(e, nq, n_way, k).mean(-1)                                        # <z_q, p_c>
    pp = np.einsum("eaiaj->ea", gss.reshape(e, n_way, k, n_way, k)) / k ** 2            # |p_c|^2
    if metric == "cosine":
        return temperature * qp / np.where(pp > 0, np.sqrt(np.clip(pp, 0, None)), 1.0)[:, None, :]
    return -np.maximum(gqq[:, :, None] - 2 * qp + pp[:, None, :], 0.0)                  # -|z_q - p_c|^2


def predict_prototype(features, batch: EpisodeBatch, metric: str = "cosine", centre: bool = True,
                      temperature: float = 10.0, G: np.ndarray | None = None) -> np.ndarray:
    """:class:`~medcl.fewshot.heads.PrototypeHead` on every episode: ``cosine`` is SimpleShot
    CL2N (centre by the support mean, L2-normalise, cosine to the normalised class means,
    ``softmax(temperature * cosine)``); ``euclidean`` is scikit-learn's ``NearestCentroid``
    (``softmax(-squared distance)``)."""
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"prototype: unknown metric {metric!r}; known: cosine, euclidean")
    G = gram(features) if G is None else G
    out = []
    for i in range(0, batch.n_episodes, CHUNK):
        rows = slice(i, i + CHUNK)
        blocks = episode_blocks(G, batch.support[rows], batch.query[rows], centre, metric == "cosine")
        lg = _prototype_logits(*blocks, batch.n_way, batch.k_shot, metric, temperature)
        out.append(_scatter(batch, softmax(lg), rows))
    return np.concatenate(out)


def predict_knn(features, batch: EpisodeBatch, k: int = 3, temperature: float = 10.0, centre: bool = True,
                G: np.ndarray | None = None) -> np.ndarray:
    """Distance-weighted k nearest neighbours (Dudani 1976) among the support scans, by cosine
    similarity of CL2N features: ``p_c = sum_{j in kNN, y_j = c} exp(T cos_j) / sum_{j in kNN}
    exp(T cos_j)`` with ``k = min(k, K)``; as :class:`~medcl.fewshot.heads.KNNHead`."""
    G = gram(features) if G is None else G
    kk = max(1, min(int(k), batch.k_shot))
    out = []
    for i in range(0, batch.n_episodes, CHUNK):
        rows = slice(i, i + CHUNK)
        _, gqs, _ = episode_blocks(G, batch.support[rows], batch.query[rows], centre, True)
        order = np.argsort(-gqs, axis=2, kind="stable")[:, :, :kk]
        sims = np.take_along_axis(gqs, order, 2)
        w = np.exp(temperature * (sims - sims[:, :, :1]))
        local = np.zeros(gqs.shape[:2] + (batch.n_way,))
        np.add.at(local, (np.arange(len(gqs))[:, None, None], np.arange(gqs.shape[1])[None, :, None],
                          order // batch.k_shot), w)
        out.append(_scatter(batch, local / local.sum(2, keepdims=True), rows))
    return np.concatenate(out)


def predict_logreg(features, batch: EpisodeBatch, subjects: np.ndarray, Cs=(0.1, 1.0, 10.0, 100.0),
                   C: float = 1.0, centre: bool = True, G: np.ndarray | None = None, return_C: bool = False):
    """:class:`~medcl.fewshot.heads.LogisticHead` on every episode: multinomial logistic
    regression on CL2N features; ``C`` per episode by leave-one-subject-out cross-validation
    over ``Cs`` on the support set when K >= 2, else ``C``. The features enter through their
    coordinates in the span of the episode's support (exact for the L2-penalised solution)."""
    subjects = np.asarray(subjects)
    G = gram(features) if G is None else G
    with one_thread():              # tiny batched problems: see medcl.fewshot.logistic.one_thread
        zs, zq = _span(*episode_blocks(G, batch.support, batch.query, centre, True)[:2])
        y = np.broadcast_to(np.repeat(np.arange(batch.n_way), batch.k_shot), batch.support.shape)
        if batch.k_shot >= 2 and len(Cs) > 1:
            groups = np.unique(subjects, return_inverse=True)[1][batch.support]
            chosen, _, coef, intercept = loso_fit(zs, y, groups, batch.n_way, Cs)
        else:
            chosen = np.full(batch.n_episodes, float(C if batch.k_shot < 2 or not len(Cs) else Cs[0]))
            coef, intercept = fit_logistic(zs, y, batch.n_way, chosen)
        proba = _scatter(batch, softmax(logits(zq, coef, intercept)), slice(0, batch.n_episodes))
    return (proba, chosen) if return_C else proba


def _span(gss: np.ndarray, gqs: np.ndarray):
    """Coordinates ``(E, S, r)`` of the support and ``(E, Q, r)`` of the query features in an
    orthonormal basis of each episode's support span, from their Gram blocks alone."""
    lam, vec = np.linalg.eigh(gss)
    keep = lam > 1e-10 * np.maximum(lam.max(-1, keepdims=True), 1e-300)
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    cols = keep.any(0)                                                       # drop the common null space
    zs = (vec * (lam * keep)[:, None, :] * scale[:, None, :])[..., cols]     # (E, S, r) = V sqrt(lam)
    return zs, gqs @ (vec * scale[:, None, :])[..., cols]
