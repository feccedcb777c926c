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


# --- the other single-set metrics, against scikit-learn and known answers -------------------------

from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from medcl.fewshot.metrics import (brier_score, expected_calibration_error, macro_f1, roc_auc_ovr,  # noqa: E402
                                   sensitivity_specificity)
from medcl.fewshot.stats import EpisodePredictions, episode_metrics, paired_difference, summarise  # noqa: E402


def _random_proba(rng, n, c):
    p = rng.random((n, c)) ** 3
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(10))
def test_macro_f1_and_auc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 5))
    y = rng.integers(0, c, 40)
    y[:c] = np.arange(c)                    # every class present
    p = _random_proba(rng, 40, c)
    p[::7] = np.round(p[::7], 1) + 1e-3     # some ties
    p /= p.sum(1, keepdims=True)
    assert macro_f1(y, p.argmax(1)) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    expected = roc_auc_score(y, p[:, 1]) if c == 2 else roc_auc_score(y, p, multi_class="ovr", labels=np.arange(c))
    assert roc_auc_ovr(y, p) == pytest.approx(expected)


def test_ece_and_brier_known_values():
    # confident and right: ECE 0, Brier 0
    y = np.array([0, 1, 2, 0])
    assert expected_calibration_error(y, np.eye(3)[y]) == 0.0 and brier_score(y, np.eye(3)[y]) == 0.0
    # confident and always wrong: ECE 1, Brier 2
    wrong = np.eye(3)[(y + 1) % 3]
    assert expected_calibration_error(y, wrong) == pytest.approx(1.0) and brier_score(y, wrong) == pytest.approx(2.0)
    # uniform probabilities, balanced classes: accuracy of argmax (class 0) is 1/3 = confidence: ECE 0
    yb = np.repeat([0, 1, 2], 4)
    uniform = np.full((12, 3), 1 / 3)
    assert expected_calibration_error(yb, uniform) == pytest.approx(0.0, abs=1e-12)
    assert brier_score(yb, uniform) == pytest.approx(2 / 3)            # (C - 1) / C
    # 0.8 confidence, right 3 times out of 4: |0.75 - 0.8| = 0.05
    p = np.array([[0.8, 0.2]] * 4)
    assert expected_calibration_error(np.array([0, 0, 0, 1]), p) == pytest.approx(0.05)


def test_sensitivity_specificity_known_values():
    y = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    pred = np.array(["a", "a", "a", "b", "b", "b", "b", "b", "c", "a"])
    ss = sensitivity_specificity(y, pred, ["a", "b", "c"])
    assert ss["a"] == pytest.approx((3 / 4, 5 / 6))     # 1 false positive among 6 negatives
    assert ss["b"] == pytest.approx((1.0, 5 / 6))
    assert ss["c"] == pytest.approx((1 / 2, 1.0))


# --- the episodic engine: perfect, random and constant classifiers ---------------------------------

def _episodes(proba_fn, n_episodes=200, n_classes=3, per_class=4, n_subjects=60, seed=0):
    """Episodes of a balanced cohort: each query a random subject of its class."""
    rng = np.random.default_rng(seed)
    y = np.tile(np.repeat(np.arange(n_classes), per_class), (n_episodes, 1))
    per = n_subjects // n_classes
    subject = y * per + rng.integers(0, per, y.shape)
    return EpisodePredictions(y, proba_fn(rng, y, n_classes), subject, [f"c{i}" for i in range(n_classes)])


def test_perfect_classifier():
    r = summarise(_episodes(lambda rng, y, c: np.eye(c)[y]), n_boot=200)
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        assert r[m] == 1.0
    assert r["ci95"] == [1.0, 1.0] and r["auc_ci95"] == [1.0, 1.0]
    assert r["ece"] == 0.0 and r["brier"] == 0.0 and r["brier_ci95"] == [0.0, 0.0]
    assert r["sensitivity"] == {"c0": 1.0, "c1": 1.0, "c2": 1.0} and r["specificity"] == {"c0": 1.0, "c1": 1.0, "c2": 1.0}
    assert r["confusion"] == [[800, 0, 0], [0, 800, 0], [0, 0, 800]]


def test_constant_classifier():
    # always "c1" with probabilities (0.2, 0.6, 0.2): chance-level balanced accuracy, AUC exactly 1/2
    r = summarise(_episodes(lambda rng, y, c: np.broadcast_to([0.2, 0.6, 0.2], y.shape + (3,)).copy()), n_boot=200)
    assert r["balanced_accuracy"] == pytest.approx(1 / 3) and r["accuracy"] == pytest.approx(1 / 3)
    assert r["ci95"] == pytest.approx([1 / 3, 1 / 3])
    assert r["auc"] == pytest.approx(0.5) and r["auc_ci95"] == pytest.approx([0.5, 0.5])
    assert r["macro_f1"] == pytest.approx(0.5 / 3)                  # F1 of c1 = 2/(1 + 3) = 0.5, others 0
    assert r["sensitivity"] == pytest.approx({"c0": 0.0, "c1": 1.0, "c2": 0.0})
    assert r["specificity"] == pytest.approx({"c0": 1.0, "c1": 0.0, "c2": 1.0})
    assert r["ece"] == pytest.approx(0.6 - 1 / 3)                   # confidence 0.6, accuracy 1/3
    assert r["brier"] == pytest.approx((0.2 ** 2 * 2 + 0.4 ** 2 + 2 * (0.8 ** 2 + 0.6 ** 2 + 0.2 ** 2)) / 3)


def test_random_classifier_is_at_chance_within_the_interval():
    r = summarise(_episodes(lambda rng, y, c: _random_proba(rng, y.size, c).reshape(y.shape + (c,)), n_episodes=400),
                  n_boot=300)
    assert r["ci95"][0] <= 1 / 3 <= r["ci95"][1] and abs(r["balanced_accuracy"] - 1 / 3) < 0.05
    assert r["auc_ci95"][0] <= 0.5 <= r["auc_ci95"][1] and abs(r["auc"] - 0.5) < 0.05
    assert all(abs(v - 1 / 3) < 0.05 for v in r["sensitivity"].values())
    assert all(abs(v - 2 / 3) < 0.05 for v in r["specificity"].values())


def test_engine_agrees_with_the_single_set_metrics():
    p = _episodes(lambda rng, y, c: _random_proba(rng, y.size, c).reshape(y.shape + (c,)) + 0.4 * np.eye(c)[y],
                  n_episodes=30)
    p.proba /= p.proba.sum(-1, keepdims=True)
    r = summarise(p, n_boot=0)
    y, proba = p.pooled()
    pred = proba.argmax(1)
    assert r["accuracy"] == pytest.approx(accuracy(y, pred))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, pred))
    assert r["macro_f1"] == pytest.approx(macro_f1(y, pred))
    assert r["brier"] == pytest.approx(brier_score(y, proba))
    assert r["ece"] == pytest.approx(expected_calibration_error(y, proba))
    ss = sensitivity_specificity(y, pred, [0, 1, 2])
    assert [r["sensitivity"][f"c{i}"] for i in range(3)] == pytest.approx([ss[i][0] for i in range(3)])
    assert [r["specificity"][f"c{i}"] for i in range(3)] == pytest.approx([ss[i][1] for i in range(3)])
    # AUC: the mean of per-episode AUCs; balanced accuracy: the mean of per-episode values too
    assert r["auc"] == pytest.approx(np.mean([roc_auc_ovr(p.y[e], p.proba[e]) for e in range(30)]))
    per = episode_metrics(p)["per_episode"]["balanced_accuracy"]
    assert per == pytest.approx([balanced_accuracy(p.y[e], p.proba[e].argmax(1)) for e in range(30)])
    assert r["balanced_accuracy"] == pytest.approx(per.mean())
    assert 0.4 < r["accuracy"] < 0.95  # mistakes happen, so the checks have teeth


def test_subject_bootstrap_is_wider_than_the_episodic_interval_on_a_small_cohort():
    # 12 subjects, 500 episodes: the episodic interval shrinks with episodes, the subject one does not
    def proba(rng, y, c):
        good = (np.arange(60) % 5 != 0)      # some subjects are always misclassified
        return np.eye(c)[y] * 0.6 + 0.4 / c
    p = _episodes(proba, n_episodes=500, per_class=2, n_subjects=12)
    p.proba[np.isin(p.subject, [0, 5])] = p.proba[np.isin(p.subject, [0, 5])][..., [1, 0, 2]]   # two subjects wrong
    r = summarise(p, n_boot=500)
    width = lambda ci: ci[1] - ci[0]                                # noqa: E731
    assert width(r["ci95"]) > 3 * width(r["balanced_accuracy_ci95_episodic"])


def test_paired_difference_known_answers():
    perfect = _episodes(lambda rng, y, c: np.eye(c)[y])
    constant = _episodes(lambda rng, y, c: np.broadcast_to([0.2, 0.6, 0.2], y.shape + (3,)).copy())
    d = paired_difference(perfect, constant, n_boot=200)
    assert d["difference"] == pytest.approx(2 / 3) and d["ci95"] == pytest.approx([2 / 3, 2 / 3])
    assert d["p_not_better"] == 0.0
    same = paired_difference(constant, constant, n_boot=200)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["p_not_better"] == 1.0
    other = _episodes(lambda rng, y, c: np.eye(c)[y], seed=1)       # other episodes: not comparable
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(perfect, other, n_boot=10)
