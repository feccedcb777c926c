"""Temperature scaling fitted on the support set alone (medcl.fewshot.calibrate), and the
calibrated LinearHead that is registered.

Oracle: predictions drawn from known probabilities and reported four times too sharp, so the
right temperature is 4; and episodes of a real head on features where the cosine prototype head's
fixed temperature is overconfident, where ECE must drop."""

import numpy as np
import pytest

from medcl.config import load_config
from medcl.fewshot.calibrate import (VECTOR_METHOD, apply_temperature, choose_scaling, cross_fitted_scaling,
                                     episode_temperatures, fit_temperatures, fit_vector_scaling, support_folds,
                                     support_temperature)
from medcl.fewshot.conformal import calibrate_head, head_sets
from medcl.fewshot.episodes import sample_episode_batch
from medcl.fewshot.heads import LinearHead, make_head
from medcl.fewshot.ops import softmax
from medcl.fewshot.metrics import expected_calibration_error
from medcl.fewshot.suite import calibrate_deployable_head, evaluate_features


def test_a_known_temperature_is_recovered():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4000, 3))                        # three episodes, true logits
    p_true = softmax(z)
    y = (rng.random((3, 4000, 1)) > p_true.cumsum(-1)).sum(-1)
    T = fit_temperatures(softmax(4.0 * z), y, np.ones((3, 3), bool), smoothing=0.0)
    assert T == pytest.approx([4.0] * 3, rel=0.1)
    assert np.allclose(apply_temperature(softmax(4.0 * z), 4.0), p_true, atol=1e-9)


def test_every_support_scan_is_held_out_once_by_a_head_that_never_saw_it():
    labels, subjects = np.repeat(["a", "b", "c"], 6), np.arange(18)
    batch = sample_episode_batch(labels, subjects, k_shot=4, n_query=2, n_episodes=5, seed=1)
    folds = support_folds(batch)
    assert folds.n_episodes == 20 and folds.k_shot == 3
    for e in range(5):
        held = folds.query[e * 4:(e + 1) * 4].ravel()
        assert sorted(held) == sorted(batch.support[e])
        for j in range(4):
            assert not set(folds.query[e * 4 + j]) & set(folds.support[e * 4 + j])
            assert set(labels[folds.query[e * 4 + j]]) == {"a", "b", "c"}       # one per class
    with pytest.raises(ValueError, match="K >= 2"):
        support_folds(sample_episode_batch(labels, subjects, 1, 2, 3, 0))


def _features(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n_per_class)
    X = rng.normal(size=(len(y), 16)) + 0.9 * np.eye(3, 16)[y]             # overlapping classes
    return X, np.array(["atrophy", "healthy", "lesion"])[y], np.array([f"s{i:03d}" for i in range(len(y))])


def test_calibration_lowers_the_ece_of_an_overconfident_head_on_the_same_episodes():
    X, labels, subjects = _features()
    cfg = load_config(None, ["fewshot.shots=[1,5]", "fewshot.n_episodes=200", "fewshot.heads=[prototype]",
                             "fewshot.baselines=[]", "fewshot.probe=false", "fewshot.budget_method=none",
                             "fewshot.embedding_map=none", "fewshot.curve_shots=[]", "fewshot.n_boot=100"])
    out = evaluate_features(cfg, {"pretrained": X}, labels, subjects)
    k5, k1 = out.calibration["5"], out.calibration["1"]
    assert k5["after"]["ece"] < 0.6 * k5["before"]["ece"] and k5["temperature"][1] > 1.5
    assert k1["method"].startswith("none") and k1["after"]["ece"] == pytest.approx(k1["before"]["ece"])
    assert any(name.endswith("prototype, calibrated") for name in out.reliability)


def test_the_registered_head_carries_its_temperature_and_old_heads_still_load(tmp_path):
    X, labels, subjects = _features()
    T = support_temperature("prototype", X[::4], labels[::4], subjects[::4])
    assert T > 1.5
    folds_T = episode_temperatures("prototype", X, sample_episode_batch(labels, subjects, 5, 5, 1, 0), subjects)
    assert folds_T.shape == (1,)
    head = make_head("prototype").fit(X[::4], labels[::4]).to_linear()
    raw = head.predict_proba(X)
    head.temperature = T
    head.save(tmp_path / "head.npz")
    back = LinearHead.load(tmp_path / "head.npz")
    assert back.temperature == T and np.allclose(back.predict_proba(X), apply_temperature(raw, T))
    assert (back.predict(X) == make_head("prototype").fit(X[::4], labels[::4]).predict(X)).all()
    old = tmp_path / "old.npz"
    with open(old, "wb") as f:                                                # a head saved before calibration
        np.savez(f, classes=head.classes_, mean=head.mean_, weight=head.weight_, bias=head.bias_, normalise=True)
    assert LinearHead.load(old).temperature == 1.0 and np.allclose(LinearHead.load(old).predict_proba(X), raw)
    with pytest.raises(ValueError, match="temperature"):
        LinearHead(head.classes_, head.mean_, head.weight_, head.bias_, True, temperature=0.0)


def _draw(p, rng):
    return (rng.random((len(p), 1)) > p.cumsum(-1)).sum(-1)


def test_known_vector_scaling_is_recovered():
    """Labels drawn from softmax(a * s + b) for known a, b: the fit finds them back."""
    rng = np.random.default_rng(0)
    s = 3.0 * rng.normal(size=(6000, 3))
    a, b = np.array([0.25, 0.5, 0.1]), np.array([0.0, 0.8, -0.4])
    scale, shift = fit_vector_scaling(s, _draw(softmax(s * a + b), rng))
    assert scale == pytest.approx(a, abs=0.05) and shift == pytest.approx(b, abs=0.12)


def test_the_registered_head_is_vector_scaled_on_all_its_calibration_scans(tmp_path):
    """A head far too sure and biased against one class (what a 5-shot prototype head can be):
    one temperature cannot fix it, vector scaling fitted on the calibration scans does, on other
    scans of the same distribution, and cross-validation picks it; every calibration scan holds a
    conformal score made with its out-of-fold scaling; the head saves and loads with its scaling
    and those, and predicts what its calibrated probabilities say. A head that is only too sharp
    gets a temperature (cross-validation prefers the model with fewer parameters when it predicts
    as well)."""
    rng = np.random.default_rng(1)
    truth = np.array([0.6, 0.3, 0.2]), np.array([0.0, 0.3, 1.2])           # what the raw scores mean
    X = 3.0 * rng.normal(size=(4200, 3))
    y = _draw(softmax(X * truth[0] + truth[1]), rng)
    head = LinearHead(["a", "b", "c"], np.zeros(3), np.eye(3), np.zeros(3), False)
    labels = np.array(["a", "b", "c"])[y]
    calibrate_deployable_head(head, X[:200], labels[:200], lambda: 1.0)
    assert head.calibration == f"vector: {VECTOR_METHOD}" and len(head.conformal_scores_) == 200
    assert head.conformal_scale_.shape == (200, 3) and not np.allclose(head.conformal_scale_, head.scale_)
    raw, test = head.decision_function(X[200:]), y[200:]
    def nll(p):
        return -np.log(p[np.arange(len(test)), test]).mean()
    best_T = min(nll(softmax(raw / T)) for T in np.geomspace(0.5, 20, 60))      # even the test's own best T
    assert nll(head.predict_proba(X[200:])) < best_T - 0.03
    assert expected_calibration_error(test, head.predict_proba(X[200:])) < 0.04 < expected_calibration_error(test, softmax(raw))
    head.save(tmp_path / "h.npz")
    back = LinearHead.load(tmp_path / "h.npz")
    assert np.allclose(back.predict_proba(X), head.predict_proba(X)) and np.allclose(back.shift_, head.shift_)
    assert np.array_equal(back.conformal_shift_, head.conformal_shift_)
    assert head_sets(back, X[:50], 0.9) == head_sets(head, X[:50], 0.9)
    assert (back.predict(X) == np.array(["a", "b", "c"])[head.predict_proba(X).argmax(1)]).all()
    calibrated_T = LinearHead(["a", "b", "c"], np.zeros(3), np.eye(3), np.zeros(3), False)
    y_T = _draw(softmax(X / 4.0), rng)                                     # only too sharp: a temperature will do
    calibrate_deployable_head(calibrated_T, X[:200], np.array(["a", "b", "c"])[y_T[:200]], lambda: 1.0)
    assert calibrated_T.calibration.startswith("temperature:") and 1 / calibrated_T.scale_[0] == pytest.approx(4, rel=0.3)
    assert np.allclose(calibrated_T.shift_, 0) and np.ptp(calibrated_T.scale_) == 0
    few = LinearHead(["a", "b", "c"], np.zeros(3), np.eye(3), np.zeros(3), False)
    calibrate_deployable_head(few, X[:12], labels[:12], lambda: 2.5)        # too few scans per class: the temperature
    assert few.temperature == 2.5 and few.calibration != VECTOR_METHOD and len(few.conformal_scores_) == 12


def test_each_calibration_scan_is_scored_by_a_scaling_fitted_without_it():
    """Out of fold: changing one scan's label changes the deployed scaling but not the scaling
    that scan is scored with."""
    rng = np.random.default_rng(3)
    X = 3.0 * rng.normal(size=(60, 3))
    y = _draw(softmax(X * [0.6, 0.3, 0.2] + [0.0, 0.3, 1.2]), rng)
    flipped = y.copy()
    flipped[0] = (y[0] + 1) % 3
    a, b, _, A, B = cross_fitted_scaling(X, y)
    a2, b2, _, A2, B2 = cross_fitted_scaling(X, flipped)
    assert np.array_equal(A[0], A2[0]) and np.array_equal(B[0], B2[0])
    assert not np.allclose(np.r_[a, b], np.r_[a2, b2]) and not np.allclose(A, A2)


def test_fitting_on_all_calibration_scans_beats_fitting_on_half():
    """Known answer (the true scaling of the raw scores, so the least test NLL any scaling can
    reach): with 135 calibration scans (the demo's), the rule fitted on half of them (what was
    deployed before; the other half for split-conformal scores) overfits: its test NLL exceeds the
    truth's by more than 0.03 on average over 16 draws, the same rule fitted on all of them with
    out-of-fold (CV+) conformal scores by less; and its sets still cover about 90%."""
    rng = np.random.default_rng(2)
    a_true, b_true, names = np.array([0.6, 0.3, 0.2]), np.array([0.0, 0.3, 1.2]), np.array(["a", "b", "c"])
    Xt = 3.0 * rng.normal(size=(20000, 3))
    yt = _draw(softmax(Xt * a_true + b_true), rng)
    def nll(p):
        return -np.log(p[np.arange(len(yt)), yt]).mean()
    excess, cover = {"half": [], "all": []}, []
    for _ in range(16):
        X = 3.0 * rng.normal(size=(135, 3))
        y = _draw(softmax(X * a_true + b_true), rng)
        half, now = (LinearHead(names, np.zeros(3), np.eye(3), np.zeros(3), False) for _ in range(2))
        fit = np.arange(135) % 2 == 0
        half.scale_, half.shift_, _ = choose_scaling(X[fit], y[fit])
        calibrate_head(half, X[~fit], names[y[~fit]])
        calibrate_deployable_head(now, X, names[y], lambda: 1.0)
        for key, h in (("half", half), ("all", now)):
            excess[key].append(nll(h.predict_proba(Xt)) - nll(softmax(Xt * a_true + b_true)))
        sets, _ = head_sets(now, Xt[:2000], 0.9)
        cover.append(np.mean([names[c] in s for c, s in zip(yt[:2000], sets)]))
    assert np.mean(excess["all"]) < 0.03 < np.mean(excess["half"])
    assert 0.88 <= np.mean(cover) <= 0.94
