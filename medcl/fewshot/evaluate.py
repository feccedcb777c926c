"""Episodic N-way K-shot evaluation of frozen features with few-shot heads.

Every head and every feature set (pretrained encoder, random-init encoder, raw voxels ...) is
scored on the *same* episodes: one seed, drawn once per K; a costly head scored on fewer
episodes sees the first ``n`` of them (:func:`~medcl.fewshot.episodes.sample_episode_batch`),
so any two methods can be compared pairwise (:func:`~medcl.fewshot.stats.paired_difference`).

Example::

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(["AD", "CN"], 10)
    >>> subjects = np.array([f"s{i}" for i in range(20)])
    >>> features = rng.normal(size=(20, 8)) + 3.0 * (labels == "AD")[:, None]
    >>> res = evaluate_episodes(features, labels, subjects, shots=[1, 5], n_episodes=100, n_boot=100)
    >>> sorted(res), res["5"]["accuracy"] > 0.9
    (['1', '5'], True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from medcl.fewshot.batched import gram
from medcl.fewshot.episodes import EpisodeBatch, _group, sample_episode_batch
from medcl.fewshot.heads import HEADS, make_head
from medcl.fewshot.stats import EpisodePredictions, summarise

__all__ = ["evaluate_episodes", "EvalSpec", "run_heads", "episode_truth", "check_shots", "usable_shots"]


def check_shots(shots) -> list[int]:
    shots = list(shots) if not isinstance(shots, (int, np.integer)) else [shots]
    if not shots:
        raise ValueError("shots is empty; give at least one K")
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"shots must be ints >= 1, got {k!r}")
    return list(dict.fromkeys(int(k) for k in shots))


def usable_shots(labels, subjects, shots, stacklevel: int = 3) -> list[int]:
    """The K in ``shots`` that leave every class a query subject; warns naming the others."""
    cohort = _group(labels, subjects)
    sizes = [len(s) for s in cohort.class_subjects]
    limit = min(sizes) - 1
    skipped = [k for k in shots if k > limit]
    if skipped:
        smallest = cohort.classes.tolist()[int(np.argmin(sizes))]
        warnings.warn(f"skipping shots {skipped}: class {smallest!r} has {limit + 1} subjects, "
                      f"so only K <= {limit} keeps a query subject", stacklevel=stacklevel)
    return [k for k in shots if k <= limit]


def episode_truth(batch: EpisodeBatch, labels, subjects) -> tuple[np.ndarray, np.ndarray]:
    """``(y, subject)`` ``(E, Q)`` of the query slots: class index into ``batch.class_names`` and
    subject index into ``np.unique(subjects)``; ``-1`` for padding."""
    y_all = np.searchsorted(batch.class_names, np.asarray(labels))
    s_all = np.unique(np.asarray(subjects), return_inverse=True)[1]
    q = np.maximum(batch.query, 0)
    pad = batch.query < 0
    return np.where(pad, -1, y_all[q]), np.where(pad, -1, s_all[q])


@dataclass
class EvalSpec:
    """What to run: heads (names in :data:`~medcl.fewshot.heads.HEADS`), episodes per head
    (``episodes``; heads not listed get ``n_episodes``), head options (``options[head]``: keyword
    arguments of the head's class), and the bootstrap."""

    shots: Sequence[int]
    heads: Sequence[str] = ("prototype",)
    n_query: int = 5
    n_episodes: int = 1000
    episodes: dict = field(default_factory=dict)
    seed: int = 0
    n_way: int | None = None
    n_boot: int = 1000
    options: dict = field(default_factory=dict)


def run_heads(feature_sets: dict, labels, subjects, spec: EvalSpec, batches: dict | None = None):
    """Score every head on every feature set, per K, on shared episodes.

    Returns ``(results, predictions, batches)``: ``results[name][head][str(K)]`` is the dict of
    :func:`~medcl.fewshot.stats.summarise`; ``predictions`` the matching
    :class:`~medcl.fewshot.stats.EpisodePredictions`; ``batches[str(K)]`` the episodes."""
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    for h in spec.heads:
        if h not in HEADS:
            raise ValueError(f"unknown head {h!r}; known heads: {', '.join(HEADS)}")
    shots = usable_shots(labels, subjects, check_shots(spec.shots), stacklevel=4)
    n_subjects = len(np.unique(subjects))
    need = max([spec.episodes.get(h, spec.n_episodes) for h in spec.heads] + [1])
    batches = dict(batches or {})
    for k in shots:
        if str(k) not in batches or batches[str(k)].n_episodes < need:
            batches[str(k)] = sample_episode_batch(labels, subjects, k, spec.n_query, need, spec.seed, spec.n_way)
    results: dict = {}
    predictions: dict = {}
    for name, feats in feature_sets.items():
        feats = np.asarray(feats, dtype=float)
        if feats.ndim != 2 or len(feats) != len(labels):
            raise ValueError(f"features '{name}': need shape ({len(labels)}, dims), got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"features '{name}' contain NaN or inf")
        G = gram(feats)
        for head in spec.heads:
            for k in shots:
                batch = batches[str(k)].first(spec.episodes.get(head, spec.n_episodes))
                proba = HEADS[head].predict_episodes(feats, batch, subjects, G, **spec.options.get(head, {}))
                y, subj = episode_truth(batch, labels, subjects)
                pred = EpisodePredictions(y, proba, subj, batch.class_names.tolist(), _membership(batch))
                predictions.setdefault(name, {}).setdefault(head, {})[str(k)] = pred
                results.setdefault(name, {}).setdefault(head, {})[str(k)] = summarise(pred, spec.n_boot, spec.seed,
                                                                                      n_subjects)
    return results, predictions, batches


def _membership(batch: EpisodeBatch) -> np.ndarray:
    out = np.zeros((batch.n_episodes, len(batch.class_names)), bool)
    np.put_along_axis(out, batch.classes, True, axis=1)
    return out


def evaluate_episodes(features: np.ndarray, labels: np.ndarray, subjects: np.ndarray, shots: Sequence[int],
                      head: str = "prototype", n_query: int = 5, n_episodes: int = 1000, seed: int = 0,
                      n_way: int | None = None, head_kwargs: dict | None = None, n_boot: int = 1000) -> dict:
    """One head on one feature set: every metric with its 95% CIs, per K in ``shots``.

    ``head`` is a name in :data:`~medcl.fewshot.heads.HEADS` with ``head_kwargs`` as for
    :func:`~medcl.fewshot.heads.make_head` (``logreg`` without ``C`` chooses it by
    leave-one-subject-out cross-validation). Returns
    ``{str(K): summarise(...)}``: ``accuracy``, ``balanced_accuracy``, ``ci95`` (of balanced
    accuracy, subject bootstrap), ``*_ci95_episodic``, ``macro_f1``, ``auc``, ``ece``,
    ``brier`` (each with ``_ci95``), ``sensitivity``/``specificity`` per class, ``confusion``
    (pooled, rows true), ``classes``, ``n_episodes``. A K that leaves some class without a
    query subject is skipped with a warning; if every K is skipped the result is ``{}``.
    """
    features = np.asarray(features, dtype=float)
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (scans, dims), got shape {features.shape}")
    if len(features) != len(labels):
        raise ValueError(f"features ({len(features)} rows) and labels ({len(labels)}) differ in length")
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or inf")
    kwargs = dict(head_kwargs or {})
    make_head(head, **kwargs)  # an unknown head or bad kwargs fail here, before any episode
    shots = usable_shots(labels, subjects, check_shots(shots))
    if not shots:
        return {}
    spec = EvalSpec(shots, (head,), n_query, n_episodes, {}, seed, n_way, n_boot, {head: kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already warned above
        results, _, _ = run_heads({"features": features}, labels, subjects, spec)
    return results["features"][head]
