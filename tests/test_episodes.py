"""Subject-disjoint episodes and the episodic evaluation built on them."""

import json
from collections import Counter

import numpy as np
import pytest

from medcl.fewshot.episodes import BLOCK, Episode, max_shots, sample_episode_batch, sample_episodes
from medcl.fewshot.evaluate import evaluate_episodes
from medcl.fewshot.heads import PrototypeHead
from medcl.fewshot.metrics import accuracy


def _cohort(subjects_per_class=(8, 12, 20), max_scans=4, seed=0):
    """labels, subjects per scan; each subject has 1..max_scans scans, scans shuffled."""
    rng = np.random.default_rng(seed)
    labels, subjects = [], []
    for c, n in zip(["AD", "CN", "MCI"], subjects_per_class):
        for s in range(n):
            k = int(rng.integers(1, max_scans + 1))
            labels += [c] * k
            subjects += [f"{c.lower()}-{s:03d}"] * k
    order = rng.permutation(len(labels))
    return np.array(labels)[order], np.array(subjects)[order]


# --- sample_episodes ---------------------------------------------------------------------------

@pytest.mark.parametrize("k_shot", [1, 3, 7])
def test_no_subject_on_both_sides_and_one_scan_per_subject(k_shot):
    labels, subjects = _cohort()
    for ep in sample_episodes(labels, subjects, k_shot, n_query=5, n_episodes=200, seed=1):
        sup, qry = subjects[ep.support], subjects[ep.query]
        assert not set(sup) & set(qry)
        assert len(set(sup)) == len(sup) and len(set(qry)) == len(qry)


def test_k_support_per_class_and_query_counts():
    labels, subjects = _cohort(subjects_per_class=(8, 12, 20))
    for ep in sample_episodes(labels, subjects, k_shot=5, n_query=6, n_episodes=50, seed=2):
        assert Counter(labels[ep.support]) == {"AD": 5, "CN": 5, "MCI": 5}
        # AD has 8 subjects: 5 support leave 3 queries (fewer than n_query, all remaining)
        assert Counter(labels[ep.query]) == {"AD": 3, "CN": 6, "MCI": 6}


def test_every_scan_of_a_subject_gets_picked():
    labels, subjects = _cohort(max_scans=4)
    seen = {int(i) for ep in sample_episodes(labels, subjects, 2, 5, 500, seed=3)
            for i in np.concatenate([ep.support, ep.query])}
    assert seen == set(range(len(labels)))


def test_n_way_picks_that_many_classes_and_all_classes_over_time():
    labels, subjects = _cohort()
    eps = sample_episodes(labels, subjects, 2, 3, 200, seed=4, n_way=2)
    for ep in eps:
        assert len(set(labels[ep.support])) == 2
        assert set(labels[ep.query]) == set(labels[ep.support])
    assert {frozenset(labels[ep.support]) for ep in eps} == {frozenset(p) for p in
                                                           [("AD", "CN"), ("AD", "MCI"), ("CN", "MCI")]}


def test_same_seed_same_episodes_and_different_seed_different_episodes():
    labels, subjects = _cohort()
    a = sample_episodes(labels, subjects, 3, 5, 100, seed=7)
    b = sample_episodes(labels, subjects, 3, 5, 100, seed=7)
    c = sample_episodes(labels, subjects, 3, 5, 100, seed=8)
    assert a == b
    assert all(np.array_equal(x.support, y.support) and np.array_equal(x.query, y.query) for x, y in zip(a, b))
    assert sum(x != y for x, y in zip(a, c)) > 90
    assert len({ep for ep in a}) > 90  # episodes differ from each other too


def test_episode_arrays_are_read_only_copies():
    idx = np.array([1, 2])
    ep = Episode(idx, np.array([3]))
    idx[0] = 99
    assert ep.support.tolist() == [1, 2]
    with pytest.raises(ValueError):
        ep.support[0] = 5


def test_too_few_subjects_names_the_class_its_subjects_and_k():
    labels = np.array(["AD"] * 6 + ["rare"] * 3)
    subjects = np.array([f"s{i}" for i in range(6)] + ["r1", "r1", "r2"])  # 'rare' has 2 subjects
    with pytest.raises(ValueError, match=r"class 'rare' has 2 subject\(s\) \[r1, r2\] but k_shot=2"):
        sample_episodes(labels, subjects, 2, 5, 10, seed=0)
    assert max_shots(labels, subjects) == 1
    assert len(sample_episodes(labels, subjects, 1, 5, 10, seed=0)) == 10


def test_max_shots_is_the_smallest_class_minus_one():
    labels, subjects = _cohort(subjects_per_class=(8, 12, 20))
    assert max_shots(labels, subjects) == 7
    sample_episodes(labels, subjects, 7, 1, 5, seed=0)
    with pytest.raises(ValueError, match="class 'AD'"):
        sample_episodes(labels, subjects, 8, 1, 5, seed=0)


def test_argument_errors():
    labels, subjects = _cohort()
    with pytest.raises(ValueError, match="k_shot must be an int >= 1"):
        sample_episodes(labels, subjects, 0, 5, 10, seed=0)
    with pytest.raises(ValueError, match="n_way=4 but the labels have only 3 classes"):
        sample_episodes(labels, subjects, 1, 5, 10, seed=0, n_way=4)
    with pytest.raises(ValueError, match="n_way must be an int >= 2"):
        sample_episodes(labels, subjects, 1, 5, 10, seed=0, n_way=1)
    with pytest.raises(ValueError, match="differ in length"):
        sample_episodes(labels[:-1], subjects, 1, 5, 10, seed=0)
    with pytest.raises(ValueError, match="subject 's1' has scans with different labels"):
        sample_episodes(np.array(["a", "b", "a", "b"]), np.array(["s1", "s1", "s2", "s3"]), 1, 1, 1, seed=0)
    with pytest.raises(ValueError, match="unlabelled"):
        max_shots(np.array(["a", ""]), np.array(["s1", "s2"]))


# --- evaluate_episodes -------------------------------------------------------------------------

def _features(labels, d=64, signal=3.0, seed=0):
    rng = np.random.default_rng(seed)
    _, y = np.unique(labels, return_inverse=True)
    return rng.normal(size=(y.max() + 1, d))[y] * signal + rng.normal(size=(len(y), d))


@pytest.mark.parametrize("head", ["prototype", "logreg"])
def test_clear_class_structure_scores_above_0_9(head):
    labels, subjects = _cohort()
    n = 600 if head == "prototype" else 20
    res = evaluate_episodes(_features(labels), labels, subjects, shots=[1, 5], head=head, n_episodes=n)
    for k in ("1", "5"):
        assert res[k]["accuracy"] > 0.9 and res[k]["balanced_accuracy"] > 0.9


def test_pure_noise_is_at_chance_within_the_ci():
    # The episodic CI covers episode sampling only; a large cohort keeps the cohort's own
    # deviation from chance small next to it (with 20 subjects a class it would not be).
    labels = np.repeat(np.array(["a", "b", "c", "d"]), 200)
    subjects = np.arange(len(labels))
    noise = np.random.default_rng(1).normal(size=(len(labels), 64))
    res = evaluate_episodes(noise, labels, subjects, shots=[1, 5], n_episodes=300)
    for r in res.values():
        assert r["accuracy_ci95"][0] <= 0.25 <= r["accuracy_ci95"][1]
        assert r["ci95"][0] <= 0.25 <= r["ci95"][1]


def test_scans_of_one_subject_never_leak_across_support_and_query():
    # Features identify the subject, not the label (labels are random per subject), so only a
    # subject on both sides can beat chance. K is half a class, so leaking queries would be
    # common: a sampler that drew queries ignoring the support scored ~0.53 here (clean: ~0.33).
    rng = np.random.default_rng(0)
    n_sub, scans = 120, 3
    subjects = np.repeat(np.arange(n_sub), scans)
    labels = np.repeat(rng.permutation(np.arange(n_sub) % 3), scans)
    X = rng.normal(size=(n_sub, 32))[subjects] + 0.05 * rng.normal(size=(len(subjects), 32))
    res = evaluate_episodes(X, labels, subjects, shots=[20], n_episodes=300)["20"]
    assert abs(res["accuracy"] - 1 / 3) < 0.1
    leaky = []  # the control: queries that are other scans of the support subjects
    for ep in sample_episodes(labels, subjects, 20, 5, 30, seed=0):
        query = ep.support + np.where(ep.support % scans == 0, 1, -1)
        head = PrototypeHead().fit(X[ep.support], labels[ep.support])
        leaky.append(accuracy(labels[query], head.predict(X[query])))
    assert np.mean(leaky) > 0.6  # ~0.74: far above chance even diluted in 20-subject prototypes


def test_result_layout_and_confusion_rows_are_true_classes():
    labels, subjects = _cohort(subjects_per_class=(6, 12, 20))
    res = evaluate_episodes(_features(labels, signal=0.3), labels, subjects, shots=[3], n_query=5, n_episodes=40)
    r = res["3"]
    assert {"accuracy", "accuracy_ci95", "balanced_accuracy", "ci95", "balanced_accuracy_ci95_episodic", "macro_f1",
            "auc", "ece", "brier", "sensitivity", "specificity", "n_episodes", "classes", "confusion"} <= set(r)
    assert r["classes"] == ["AD", "CN", "MCI"] and r["n_episodes"] == 40
    conf = np.array(r["confusion"])
    # AD has 6 subjects: 3 support leave 3 queries an episode; CN and MCI give 5
    assert conf.sum(axis=1).tolist() == [40 * 3, 40 * 5, 40 * 5]
    # every episode has 13 queries, so the mean episode accuracy is the pooled accuracy
    assert r["accuracy"] == pytest.approx(np.trace(conf) / conf.sum())
    assert 0.3 < r["accuracy"] < 0.99
    assert r["accuracy_ci95"][0] <= r["accuracy"] <= r["accuracy_ci95"][1]
    json.dumps(res)


def test_agrees_with_episodes_scored_by_hand():
    labels, subjects = _cohort()
    X = _features(labels, signal=0.4)
    res = evaluate_episodes(X, labels, subjects, shots=[2], n_query=4, n_episodes=60, seed=5,
                            head_kwargs={"metric": "euclidean"})["2"]
    accs, pooled = [], np.zeros((3, 3), int)
    for ep in sample_episodes(labels, subjects, 2, 4, 60, seed=5):
        pred = PrototypeHead(metric="euclidean").fit(X[ep.support], labels[ep.support]).predict(X[ep.query])
        accs.append(accuracy(labels[ep.query], pred))
        for t, p in zip(labels[ep.query], pred):
            pooled[["AD", "CN", "MCI"].index(t), ["AD", "CN", "MCI"].index(p)] += 1
    assert res["accuracy"] == pytest.approx(np.mean(accs))
    assert res["confusion"] == pooled.tolist()
    assert 0.4 < res["accuracy"] < 0.99  # a case where mistakes happen, so the check has teeth


def test_same_seed_same_result_and_n_way():
    labels, subjects = _cohort()
    X = _features(labels)
    a = evaluate_episodes(X, labels, subjects, shots=[1], n_episodes=50, seed=3, n_way=2)
    assert a == evaluate_episodes(X, labels, subjects, shots=[1], n_episodes=50, seed=3, n_way=2)
    assert a["1"]["accuracy"] > 0.9 and a["1"]["classes"] == ["AD", "CN", "MCI"]


def test_unsupported_shots_are_skipped_with_a_warning_naming_them():
    labels, subjects = _cohort(subjects_per_class=(8, 12, 20))
    with pytest.warns(UserWarning, match=r"skipping shots \[8, 20\]: class 'AD' has 8 subjects"):
        res = evaluate_episodes(_features(labels), labels, subjects, shots=[1, 8, 7, 20], n_episodes=5)
    assert list(res) == ["1", "7"]


def test_evaluate_argument_errors():
    labels, subjects = _cohort()
    X = _features(labels)
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        evaluate_episodes(X, labels, subjects, shots=[1], head="svm")
    with pytest.raises(ValueError, match="shots must be ints >= 1"):
        evaluate_episodes(X, labels, subjects, shots=[0])
    with pytest.raises(ValueError, match="differ in length"):
        evaluate_episodes(X[:-1], labels, subjects, shots=[1])
    with pytest.raises(TypeError, match="unexpected keyword"):
        evaluate_episodes(X, labels, subjects, shots=[1], head_kwargs={"C": 1.0})


# --- EpisodeBatch: the array form every vectorised head uses -------------------------------------

@pytest.mark.parametrize("n_way", [None, 2])
def test_batch_no_subject_on_both_sides_and_k_per_class(n_way):
    labels, subjects = _cohort(subjects_per_class=(6, 12, 20))
    b = sample_episode_batch(labels, subjects, 3, 5, 300, seed=2, n_way=n_way)
    assert b.support.shape == (300, 3 * (n_way or 3)) and b.k_shot == 3
    for e in range(300):
        q = b.query[e][b.query[e] >= 0]
        assert not set(subjects[b.support[e]]) & set(subjects[q])
        assert len(set(subjects[q])) == len(q)
        # support grouped by class, K each, in the order of b.classes; queries only of those classes
        assert labels[b.support[e]].tolist() == np.repeat(b.class_names[b.classes[e]], 3).tolist()
        assert set(labels[q]) == set(b.class_names[b.classes[e]])
    # AD has 3 query subjects left, CN and MCI 5: 2-way episodes with and without AD differ in size
    assert (b.query < 0).any() == (n_way == 2)


def test_first_n_episodes_do_not_depend_on_how_many_are_drawn():
    labels, subjects = _cohort()
    big = sample_episode_batch(labels, subjects, 2, 4, 3 * BLOCK + 5, seed=9)
    for n in (1, BLOCK - 1, BLOCK + 3, 2 * BLOCK):
        small = sample_episode_batch(labels, subjects, 2, 4, n, seed=9)
        assert small.episodes() == big.first(n).episodes()
        np.testing.assert_array_equal(small.support, big.first(n).support)


def test_evaluation_of_every_head_scores_no_subject_on_both_sides():
    # subject-identity features (labels random per subject): only a leak could beat chance
    rng = np.random.default_rng(1)
    n_sub = 90
    subjects = np.repeat(np.arange(n_sub), 2)
    labels = np.repeat(rng.permutation(np.arange(n_sub) % 3), 2)
    X = rng.normal(size=(n_sub, 32))[subjects] + 0.05 * rng.normal(size=(len(subjects), 32))
    for head in ("prototype", "prototype_euclidean", "knn", "logreg"):
        n = 10 if head == "logreg" else 300
        r = evaluate_episodes(X, labels, subjects, shots=[6], head=head, n_episodes=n, n_boot=200)["6"]
        assert abs(r["accuracy"] - 1 / 3) < 0.1, head
