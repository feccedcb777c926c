"""Label-budget advice: which scans to label first (k-center, k-medoids in embedding space)."""

import numpy as np
import pytest

from medcl.fewshot.budget import evaluate_budget, kcenter_greedy, kmedoids, suggest


def _clusters(n_clusters=4, per=15, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 3
    y = np.repeat(np.arange(n_clusters), per)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


@pytest.mark.parametrize("method", ["kcenter", "kmedoids"])
def test_one_suggestion_per_cluster(method):
    X, y = _clusters()
    picked = suggest(X, np.arange(len(X)), 4, method)
    assert sorted(y[picked].tolist()) == [0, 1, 2, 3]


def test_kmedoids_picks_typical_scans_and_kcenter_covers_outliers():
    X, y = _clusters(n_clusters=1, per=40, spread=1.0)
    X = np.vstack([X, X.mean(0) + 25 * np.ones(X.shape[1])])      # one far outlier (row 40)
    Z = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0), axis=1, keepdims=True)
    assert 40 in kcenter_greedy(Z, 2).tolist()                     # k-center reaches for it
    assert 40 not in kmedoids(Z, 2).tolist()                       # medoids stay with the crowd


def test_one_scan_per_subject_and_ranked_order_is_stable():
    X, y = _clusters()
    subjects = np.repeat(np.arange(30), 2)                          # 2 scans per subject
    picked = suggest(X, subjects, 10, "kmedoids", seed=3)
    assert len(set(subjects[picked])) == 10
    np.testing.assert_array_equal(picked, suggest(X, subjects, 10, "kmedoids", seed=3))
    assert suggest(X, subjects, 3, "kcenter")[:2].tolist() == suggest(X, subjects, 5, "kcenter")[:2].tolist()


def test_errors_name_the_problem():
    X, _ = _clusters()
    with pytest.raises(ValueError, match="unknown suggestion method 'random'"):
        suggest(X, np.arange(len(X)), 3, "random")
    with pytest.raises(ValueError, match="between 1 and the number of subjects"):
        suggest(X, np.arange(len(X)), 61)


def test_suggested_supports_beat_random_ones_on_clustered_data_with_unequal_classes():
    # 3 classes; random picks of 3 scans often miss the small class, k-medoids does not
    rng = np.random.default_rng(1)
    sizes = (30, 30, 8)
    centres = rng.normal(size=(3, 16)) * 2
    labels = np.repeat(np.array(["a", "b", "c"]), sizes)
    X = centres[np.repeat([0, 1, 2], sizes)] + 0.5 * rng.normal(size=(sum(sizes), 16))
    res = evaluate_budget(X, labels, np.arange(len(labels)), [1, 3], "kmedoids", n_random=100)
    r = res["1"]
    assert r["budget"] == 3 and r["suggested_classes_covered"] == 3
    assert r["suggested"] > r["random_mean"] and r["fraction_random_below"] > 0.5
    assert set(res) == {"1", "3"} and 0 <= res["3"]["random_95"][0] <= res["3"]["random_95"][1] <= 1
