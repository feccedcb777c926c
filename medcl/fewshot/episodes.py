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

from medcl.fewshot.ops import paired_1d

__all__ = ["Episode", "EpisodeBatch", "sample_episodes", "sample_episode_batch", "max_shots"]


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
    labels, subjects = paired_1d(labels, subjects, ("labels", "subjects"))
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


BLOCK = 64  # episodes drawn from one seeded random stream; see ``sample_episode_batch``


@dataclass(frozen=True)
class EpisodeBatch:
    """``E`` episodes as arrays, for heads that score every episode at once.

    - ``support`` ``(E, n_way * K)``: scan indices, ``K`` per class, classes in the order of ``classes``;
    - ``query`` ``(E, Q)``: scan indices, ``-1`` pads episodes with fewer queries (see ``query_mask``);
    - ``classes`` ``(E, n_way)``: the episode's classes, as indices into ``class_names`` (sorted).
    """

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray
    class_names: np.ndarray
    k_shot: int

    @property
    def n_episodes(self) -> int:
        return len(self.support)

    @property
    def n_way(self) -> int:
        return self.classes.shape[1]

    @property
    def query_mask(self) -> np.ndarray:
        return self.query >= 0

    def first(self, n: int) -> "EpisodeBatch":
        """The first ``n`` episodes: the same episodes a smaller ``n_episodes`` would have drawn."""
        n = min(int(n), self.n_episodes)
        q = self.query[:n]
        q = q[:, : max(1, int((q >= 0).sum(1).max()))]
        return EpisodeBatch(self.support[:n], q, self.classes[:n], self.class_names, self.k_shot)

    def episodes(self) -> list[Episode]:
        """One :class:`Episode` per row, padding removed."""
        return [Episode(s, q[q >= 0]) for s, q in zip(self.support, self.query)]


def _block(cohort: _Cohort, rng: np.random.Generator, m: int, k_shot: int, n_pick: list[int], n_way: int):
    """``m`` episodes: support ``(m, n_way*K)``, query ``(m, n_way*Qmax)`` padded with -1, classes."""
    n_classes = len(cohort.classes)
    q_max = max(n_pick) - k_shot
    support = np.empty((m, n_classes, k_shot), np.int64)
    query = np.full((m, n_classes, q_max), -1, np.int64)
    for c, subs in enumerate(cohort.class_subjects):
        # a random permutation per episode: argsort of uniform keys (one call for all m episodes)
        picked = subs[np.argsort(rng.random((m, len(subs))), axis=1)[:, : n_pick[c]]]
        offset = (rng.random(picked.shape) * cohort.scan_count[picked]).astype(np.int64)
        scans = cohort.scan_order[cohort.scan_start[picked] + offset]
        support[:, c] = scans[:, :k_shot]
        query[:, c, : n_pick[c] - k_shot] = scans[:, k_shot:]
    if n_way == n_classes:
        chosen = np.broadcast_to(np.arange(n_classes), (m, n_classes))
    else:
        chosen = np.sort(np.argsort(rng.random((m, n_classes)), axis=1)[:, :n_way], axis=1)
    rows = np.arange(m)[:, None]
    return support[rows, chosen].reshape(m, -1), query[rows, chosen].reshape(m, -1), np.array(chosen)


def sample_episode_batch(labels: np.ndarray, subjects: np.ndarray, k_shot: int, n_query: int,
                         n_episodes: int, seed: int, n_way: int | None = None) -> EpisodeBatch:
    """Sample ``n_episodes`` stratified, subject-disjoint N-way K-shot episodes as arrays.

    Per episode: ``n_way`` classes (``None`` = all classes), then per class ``k_shot`` support
    *subjects* and ``n_query`` query *subjects*, disjoint; each picked subject contributes one
    random scan, so a subject never appears on both sides (nor twice). A class with fewer than
    ``k_shot + n_query`` subjects uses all its remaining subjects (at least 1) as queries. A class
    with fewer than ``k_shot + 1`` subjects is a ``ValueError`` naming it.

    Episodes are drawn in blocks of ``BLOCK``, block ``b`` from ``SeedSequence(seed, spawn_key=(b,))``,
    so the first ``n`` episodes are identical whatever ``n_episodes >= n`` is asked for: a costly
    head scored on 100 episodes sees the first 100 of the 1,000 a cheap head sees, and the two are
    compared pairwise on them. The same ``seed`` gives every encoder and head the same episodes.
    """
    k_shot = _check_int("k_shot", k_shot, 1)
    n_query = _check_int("n_query", n_query, 1)
    n_episodes = _check_int("n_episodes", n_episodes, 1)
    cohort = _group(labels, subjects)
    n_classes = len(cohort.classes)
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes for an episode, found {cohort.classes.tolist()}")
    n_way = n_classes if n_way is None else _check_int("n_way", n_way, 2)
    if n_way > n_classes:
        raise ValueError(f"n_way={n_way} but the labels have only {n_classes} classes {cohort.classes.tolist()}")
    _check_enough(cohort, k_shot)
    n_pick = [k_shot + min(n_query, len(s) - k_shot) for s in cohort.class_subjects]
    parts = []
    for b in range(-(-n_episodes // BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(b,)))
        parts.append(_block(cohort, rng, BLOCK, k_shot, n_pick, n_way))
    support = np.concatenate([p[0] for p in parts])[:n_episodes]
    query = np.concatenate([p[1] for p in parts])[:n_episodes]
    classes = np.concatenate([p[2] for p in parts])[:n_episodes]
    # padding (classes with fewer query subjects) to the end of each row, then trim empty columns
    order = np.argsort(query < 0, axis=1, kind="stable")
    query = np.take_along_axis(query, order, axis=1)
    query = query[:, : max(1, int((query >= 0).sum(1).max()))]
    return EpisodeBatch(support, query, classes, cohort.classes, k_shot)


def sample_episodes(labels: np.ndarray, subjects: np.ndarray, k_shot: int, n_query: int,
                    n_episodes: int, seed: int, n_way: int | None = None) -> list[Episode]:
    """The episodes of :func:`sample_episode_batch` as a list of :class:`Episode` (indices in
    ``support`` and ``query`` grouped by class in sorted class order)."""
    return sample_episode_batch(labels, subjects, k_shot, n_query, n_episodes, seed, n_way).episodes()
