"""Subject-disjoint, stratified N-way K-shot episodes.

An episode picks ``n_way`` classes, then per class ``k_shot`` support *subjects* and up to
``n_query`` query *subjects*, disjoint, and one random scan of each picked subject. A subject
never appears on both sides, so a subject's second scan cannot leak into the query set.

Example::

    >>> labels = np.array(["AD", "AD", "AD", "CN", "CN", "CN"])
    >>> subjects = np.array(["s1", "s2", "s3", "s4", "s5", "s6"])
    >>> eps = sample_episodes(labels, subjects, k_shot=1, n_query=2, n_episodes=10, seed=0)
    >>> len(eps), len(eps[0].support), len(eps[0].query)
    (10, 2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Episode", "sample_episodes", "max_shots"]


@dataclass(frozen=True)
class Episode:
    """Support and query row indices into the feature matrix (read-only int arrays)."""

    support: np.ndarray
    query: np.ndarray

    def __post_init__(self):
        for name in ("support", "query"):
            a = np.array(getattr(self, name), dtype=np.int64)  # a copy, so the caller cannot mutate it
            if a.ndim != 1:
                raise ValueError(f"Episode.{name} must be 1-D, got shape {a.shape}")
            a.flags.writeable = False
            object.__setattr__(self, name, a)

    def __eq__(self, other):
        if not isinstance(other, Episode):
            return NotImplemented
        return np.array_equal(self.support, other.support) and np.array_equal(self.query, other.query)

    def __hash__(self):
        return hash((self.support.tobytes(), self.query.tobytes()))


@dataclass(frozen=True)
class _Cohort:
    """Scans grouped by subject and subjects grouped by class (built once per call)."""

    classes: np.ndarray          # sorted class names
    class_subjects: list         # per class: sorted subject indices
    subject_keys: np.ndarray     # sorted subject keys
    scan_order: np.ndarray       # scan indices, grouped by subject
    scan_start: np.ndarray       # per subject: offset into scan_order
    scan_count: np.ndarray       # per subject: number of scans


def _group(labels, subjects) -> _Cohort:
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    if labels.ndim != 1 or subjects.ndim != 1:
        raise ValueError(f"labels and subjects must be 1-D, got shapes {labels.shape} and {subjects.shape}")
    if len(labels) != len(subjects):
        raise ValueError(f"labels ({len(labels)}) and subjects ({len(subjects)}) differ in length")
    if len(labels) == 0:
        raise ValueError("no scans: labels and subjects are empty")
    if any(v is None or v == "" for v in labels.tolist()):
        raise ValueError("labels contain unlabelled scans (None or ''); select the labelled scans first")
    classes, lab = np.unique(labels, return_inverse=True)
    keys, sub = np.unique(subjects, return_inverse=True)
    sub_label = np.empty(len(keys), dtype=np.int64)
    sub_label[sub] = lab
    bad = np.flatnonzero(sub_label[sub] != lab)
    if len(bad):
        s = sub[bad[0]]
        found = sorted(set(classes[lab[sub == s]].tolist()))
        raise ValueError(f"subject {keys.tolist()[s]!r} has scans with different labels {found}; a subject has one label")
    order = np.argsort(sub, kind="stable")
    count = np.bincount(sub, minlength=len(keys))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    per_class = [np.flatnonzero(sub_label == c) for c in range(len(classes))]
    return _Cohort(classes, per_class, keys, order, start, count)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def max_shots(labels: np.ndarray, subjects: np.ndarray) -> int:
    """Largest K such that every class keeps at least one query subject (0 if some class has one subject)."""
    cohort = _group(labels, subjects)
    return int(min(len(s) for s in cohort.class_subjects) - 1)


def _check_enough(cohort: _Cohort, k_shot: int) -> None:
    for name, subs in zip(cohort.classes.tolist(), cohort.class_subjects):
        if len(subs) < k_shot + 1:
            keys = cohort.subject_keys[subs].tolist()
            shown = ", ".join(map(str, keys[:10])) + (", ..." if len(keys) > 10 else "")
            raise ValueError(f"class {name!r} has {len(subs)} subject(s) [{shown}] but k_shot={k_shot} "
                             f"needs at least {k_shot + 1} (K support + 1 query)")


def sample_episodes(labels: np.ndarray, subjects: np.ndarray, k_shot: int, n_query: int,
                    n_episodes: int, seed: int, n_way: int | None = None) -> list[Episode]:
    """Sample ``n_episodes`` stratified, subject-disjoint N-way K-shot episodes.

    Per episode: ``n_way`` classes (``None`` = all classes), then per class ``k_shot`` support
    subjects and ``n_query`` query subjects, disjoint; each picked subject contributes one random
    scan. A class with fewer than ``k_shot + n_query`` subjects uses all its remaining subjects
    (at least 1) as queries, so its query count is smaller. A class with fewer than
    ``k_shot + 1`` subjects is a ``ValueError``.

    Indices in ``support`` and ``query`` are grouped by class in sorted class order. The same
    ``seed`` (and inputs) gives identical episodes, so every encoder and head can be scored on the
    same episodes.
    """
    k_shot = _check_int("k_shot", k_shot, 1)
    n_query = _check_int("n_query", n_query, 1)
    n_episodes = _check_int("n_episodes", n_episodes, 1)
    cohort = _group(labels, subjects)
    n_classes = len(cohort.classes)
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes for an episode, found {cohort.classes.tolist()}")
    if n_way is None:
        n_way = n_classes
    n_way = _check_int("n_way", n_way, 2)
    if n_way > n_classes:
        raise ValueError(f"n_way={n_way} but the labels have only {n_classes} classes {cohort.classes.tolist()}")
    _check_enough(cohort, k_shot)

    rng = np.random.default_rng(seed)
    n_pick = [k_shot + min(n_query, len(s) - k_shot) for s in cohort.class_subjects]
    episodes = []
    for _ in range(n_episodes):
        chosen = range(n_classes) if n_way == n_classes else np.sort(rng.choice(n_classes, n_way, replace=False))
        support, query = [], []
        for c in chosen:
            subs = cohort.class_subjects[c]
            picked = subs[rng.permutation(len(subs))[:n_pick[c]]]
            offset = (rng.random(len(picked)) * cohort.scan_count[picked]).astype(np.int64)
            scans = cohort.scan_order[cohort.scan_start[picked] + offset]
            support.append(scans[:k_shot])
            query.append(scans[k_shot:])
        episodes.append(Episode(np.concatenate(support), np.concatenate(query)))
    return episodes
