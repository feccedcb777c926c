"""Metrics: known answers and agreement with scikit-learn."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

from medcl.fewshot.metrics import accuracy, balanced_accuracy, confusion, mean_ci95

CLASSES = np.array(["AD", "CN", "FTD", "MCI"])


def test_perfect_classifier_scores_one():
    y = np.repeat(CLASSES, 5)
    assert accuracy(y, y) == 1.0
    assert balanced_accuracy(y, y) == 1.0


def test_constant_classifier_on_balanced_data_is_one_over_c():
    y = np.repeat(CLASSES, 7)
    pred = np.full(len(y), "CN")
    assert balanced_accuracy(y, pred) == pytest.approx(1 / len(CLASSES))
    assert accuracy(y, pred) == pytest.approx(1 / len(CLASSES))


def test_constant_classifier_on_imbalanced_data_separates_the_two_metrics():
    y = np.array(["AD"] * 9 + ["CN"])
    pred = np.full(10, "AD")
    assert accuracy(y, pred) == pytest.approx(0.9)
    assert balanced_accuracy(y, pred) == pytest.approx(0.5)


def test_random_predictions_are_near_chance():
    rng = np.random.default_rng(0)
    y = rng.choice(CLASSES, 20000)
    pred = rng.choice(CLASSES, 20000)
    assert abs(accuracy(y, pred) - 0.25) < 0.015
    assert abs(balanced_accuracy(y, pred) - 0.25) < 0.015


@pytest.mark.parametrize("seed", range(20))
def test_balanced_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    y = rng.choice(CLASSES[: rng.integers(1, 5)], n)
    pred = rng.choice(CLASSES, n)  # may hold classes absent from y_true
    with warnings.catch_warnings():  # sklearn warns when y_pred has classes absent from y_true
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(y, pred)
    assert balanced_accuracy(y, pred) == pytest.approx(expected)
    assert accuracy(y, pred) == pytest.approx(accuracy_score(y, pred))


@pytest.mark.parametrize("seed", range(10))
def test_confusion_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y, pred = rng.choice(CLASSES, 50), rng.choice(CLASSES, 50)
    order = rng.permutation(CLASSES)  # any class order, not only sorted
    np.testing.assert_array_equal(confusion(y, pred, order), confusion_matrix(y, pred, labels=order))


def test_confusion_rows_are_true_classes():
    c = confusion(["a", "a", "b"], ["b", "b", "b"], ["a", "b"])
    np.testing.assert_array_equal(c, [[0, 2], [0, 1]])
    assert c.dtype.kind == "i"


def test_confusion_rejects_unknown_and_duplicate_classes():
    with pytest.raises(ValueError, match="not in classes: \\['z'\\]"):
        confusion(["a", "z"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="duplicates"):
        confusion(["a"], ["a"], ["a", "a"])


def test_mean_ci95_known_values():
    mean, lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0])
    half = 1.96 * np.std([1, 2, 3, 4], ddof=1) / 2.0
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert mean_ci95([0.5, 0.7]) == pytest.approx((0.6, 0.6 - 0.196, 0.6 + 0.196))
    assert mean_ci95([0.3]) == (0.3, 0.3, 0.3)
    assert mean_ci95([0.8] * 10) == pytest.approx((0.8, 0.8, 0.8))
    assert all(type(v) is float for v in mean_ci95([0.1, 0.2]))


def test_mean_ci95_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    covered = [lo <= 0.5 <= hi for lo, hi in
               (mean_ci95(rng.normal(0.5, 0.2, 100))[1:] for _ in range(2000))]
    assert 0.93 < np.mean(covered) < 0.97


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        balanced_accuracy([], [])
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci95([])
    with pytest.raises(ValueError, match="finite"):
        mean_ci95([0.5, float("nan")])
