"""Conformal prediction sets (medcl.fewshot.conformal): the coverage guarantee on a case with a
known answer, calibration subjects disjoint from support and query, the sets of a registered head.

Known answer: for exchangeable scores, split conformal covers with probability in
[1 - alpha, 1 - alpha + 1/(n + 1)] (Vovk et al. 2005; Angelopoulos & Bates 2023, Thm D.1), and
the class-conditional version does so within every class."""

import numpy as np
import pytest

from medcl.config import load_config
from medcl.fewshot.conformal import calibrate_head, calibration_batch, head_sets, prediction_sets, thresholds
from medcl.fewshot.episodes import sample_episode_batch
from medcl.fewshot.heads import LinearHead, make_head
from medcl.fewshot.ops import softmax
from medcl.fewshot.suite import evaluate_features


def _trials(rng, trials: int, n: int, C: int = 3):
    """``trials`` calibration sets of ``n`` scans and one test scan each, from a fixed noisy
    classifier: true class y, probabilities softmax(2 * onehot(y) + noise), class 0 harder."""
    y = rng.integers(0, C, size=(trials, n + 1))
    z = 2.0 * np.eye(C)[y] * np.where(y == 0, 0.5, 1.0)[..., None] + rng.normal(size=(trials, n + 1, C))
    p = softmax(z)
    return y, p, 1.0 - np.take_along_axis(p, y[..., None], -1)[..., 0]


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_split_conformal_covers_as_the_theory_says(alpha):
    rng = np.random.default_rng(0)
    n, trials = 60, 4000
    y, p, score = _trials(rng, trials, n)
    q, mondrian = thresholds(score[:, :n], y[:, :n], 3, alpha, class_conditional=False)
    sets = prediction_sets(p[:, n], q)
    covered = sets[np.arange(trials), y[:, n]]
    se = np.sqrt(alpha * (1 - alpha) / trials)
    assert 1 - alpha - 3 * se <= covered.mean() <= 1 - alpha + 1 / (n + 1) + 3 * se
    assert not mondrian.any() and (sets.sum(1) < 3).mean() > 0.5            # not trivially every class


def test_class_conditional_sets_cover_every_class_where_marginal_ones_do_not():
    rng = np.random.default_rng(1)
    n, trials, alpha = 90, 6000, 0.1
    y, p, score = _trials(rng, trials, n)
    test_y = y[:, n]
    for cc in (True, False):
        q, mondrian = thresholds(score[:, :n], y[:, :n], 3, alpha, class_conditional=cc)
        covered = prediction_sets(p[:, n], q)[np.arange(trials), test_y]
        per_class = [covered[test_y == c].mean() for c in range(3)]
        if cc:
            assert min(per_class) >= 1 - alpha - 0.02 and mondrian.all()
        else:
            assert per_class[0] < 1 - alpha - 0.02 < min(per_class[1:])     # the hard class is under-covered
    auto_q, auto = thresholds(score[:, :n], y[:, :n], 3, alpha)
    assert auto.all()                                                       # 30 per class: enough for alpha 0.1
    assert not thresholds(score[:, :12], y[:, :12], 3, alpha)[1].any()      # 4 per class: not enough


def test_calibration_scans_are_disjoint_from_support_and_query():
    labels, subjects = np.repeat(["a", "b"], 10), np.repeat(np.arange(10), 2)  # two scans per subject
    batch = sample_episode_batch(labels, subjects, k_shot=2, n_query=2, n_episodes=30, seed=0)
    cb = calibration_batch(batch, subjects)
    for e in range(30):
        used = set(subjects[batch.support[e]]) | set(subjects[batch.query[e][batch.query[e] >= 0]])
        calib = cb.query[e][cb.query[e] >= 0]
        assert not used & set(subjects[calib]) and len(set(subjects[calib])) == len(calib) == 10 - len(used)


def test_episode_sets_reach_their_target_on_synthetic_features():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    X = rng.normal(size=(len(y), 16)) + 1.2 * np.eye(3, 16)[y]
    labels, subjects = np.array(["a", "b", "c"])[y], np.arange(len(y))
    cfg = load_config(None, ["fewshot.shots=[3]", "fewshot.n_episodes=300", "fewshot.heads=[prototype]",
                             "fewshot.baselines=[]", "fewshot.probe=false", "fewshot.budget_method=none",
                             "fewshot.embedding_map=none", "fewshot.curve_shots=[]", "fewshot.n_boot=200",
                             "fewshot.conformal_coverage=0.8"])
    r = evaluate_features(cfg, {"pretrained": X}, labels, subjects).conformal["3"]
    assert r["target"] == pytest.approx(0.8) and r["target_met"]
    assert r["coverage_ci95"][0] <= 0.8 + 1 / (r["n_calibration_mean"] / 3 + 1) and r["coverage"] >= 0.76
    assert r["class_conditional_fraction"] == 1.0 and 1.0 < r["mean_set_size"] < 3.0


def test_a_registered_head_gives_sets_that_grow_with_coverage():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = rng.normal(size=(len(y), 8)) + 1.0 * np.eye(3, 8)[y]
    labels = np.array(["a", "b", "c"])[y]
    head = make_head("prototype").fit(X[::6], labels[::6]).to_linear()
    with pytest.raises(ValueError, match="no calibration scans"):
        head_sets(head, head.decision_function(X), 0.9)
    calibrate_head(head, np.delete(X, np.s_[::6], 0), np.delete(labels, np.s_[::6]))
    small, _ = head_sets(head, head.decision_function(X), 0.5)
    large, _ = head_sets(head, head.decision_function(X), 0.99)
    assert all(set(a) <= set(b) for a, b in zip(small, large))
    assert np.mean([len(s) for s in small]) < np.mean([len(s) for s in large])
    with pytest.raises(ValueError, match="does not know"):
        calibrate_head(head, X[:2], ["a", "zebra"])


@pytest.mark.parametrize("n_per_class", [3, 30])         # 3: too few for class-conditional thresholds
def test_cv_plus_sets_are_the_split_conformal_sets_when_every_score_used_the_heads_own_scaling(n_per_class):
    """A head calibrated on scans outside its fit (split conformal) stores its own scaling for
    every scan; the CV+ rule of head_sets must then give exactly the threshold sets."""
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], n_per_class + 4)
    X = rng.normal(size=(len(y), 8)) + 1.0 * np.eye(3, 8)[y]
    labels = np.array(["a", "b", "c"])[y]
    fit = np.arange(len(y)) % (n_per_class + 4) < 4
    head = make_head("prototype").fit(X[fit], labels[fit]).to_linear()
    head.scale_, head.shift_, head.temperature = np.array([0.3, 0.2, 0.5]), np.array([0.0, 0.4, -0.2]), 1.5
    calibrate_head(head, X[~fit], labels[~fit])
    test = rng.normal(size=(200, 8)) + 0.5
    class_conditional = {3: [True, False, False], 30: [True, True, True]}[n_per_class]    # 1, 4, 9 scans a class
    for coverage, want in zip((0.5, 0.8, 0.9), class_conditional):
        q, mondrian = thresholds(head.conformal_scores_[None], y[~fit][None], 3, 1 - coverage)
        expected = prediction_sets(head.predict_proba(test), q[0][None])
        sets, cc = head_sets(head, head.decision_function(test), coverage)
        assert cc == bool(mondrian[0]) == want
        assert [list(np.array(["a", "b", "c"])[row]) for row in expected] == sets


def test_cv_plus_scores_a_new_scan_under_each_calibration_scans_own_fold_scaling():
    """Worked by hand: 3 calibration scores of 0.3 (marginal at coverage 0.7: a class is out of
    the set when all 3 lie below the new scan's score), each made under a fold scaling that adds
    2 to class b's logit. A new scan with raw scores (0, 0) scores 1 - sigmoid(2) = 0.12 for b
    (none below: in) and 0.88 for a (all below: out) under those scalings; under the head's own
    scaling (identity) both would score 0.5 and the set would be empty."""
    head = LinearHead(["a", "b"], np.zeros(2), np.eye(2), np.zeros(2), False, conformal_scores=[0.3, 0.3, 0.3],
                      conformal_labels=["a", "a", "b"], conformal_scale=np.ones((3, 2)),
                      conformal_shift=np.tile([0.0, 2.0], (3, 1)))
    assert head_sets(head, head.decision_function(np.zeros((1, 2))), 0.7) == ([["b"]], False)
    own = LinearHead(["a", "b"], np.zeros(2), np.eye(2), np.zeros(2), False, conformal_scores=[0.3, 0.3, 0.3],
                     conformal_labels=["a", "a", "b"])
    assert head_sets(own, own.decision_function(np.zeros((1, 2))), 0.7) == ([[]], False)
