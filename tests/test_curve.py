"""The label-budget curve (medcl.fewshot.curve): an inverse power law fitted to metric-versus-K,
labels per class for a target with a subject-bootstrap interval, the largest K held out.

Oracle: episodes simulated from a classifier whose accuracy at K is a known curve, so the
labels needed for a target are known in closed form."""

import numpy as np
import pytest

from medcl.fewshot.curve import fit_power_law, labels_needed, learning_curve
from medcl.fewshot.stats import EpisodePredictions

A, B, C = 0.92, 0.45, 0.6          # the true curve m(K) = A - B K^-C
SHOTS = [1, 2, 3, 5, 8, 12, 20]


def _episodes(acc: float, seed: int, n_subjects: int = 400, episodes: int = 400, queries: int = 10):
    """Two-class episodes whose queries are right with probability ``acc``, independently."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=(episodes, queries))
    right = rng.random(y.shape) < acc
    pred = np.where(right, y, 1 - y)
    proba = np.stack([np.where(pred == 0, 0.8, 0.2), np.where(pred == 1, 0.8, 0.2)], -1)
    return EpisodePredictions(y, proba, rng.integers(0, n_subjects, size=y.shape), ["a", "b"])


def _curve(values):
    return {str(k): _episodes(v, i) for i, (k, v) in enumerate(zip(SHOTS, values))}


def test_exact_power_law_is_recovered():
    k = np.array(SHOTS, float)
    a, b, c = fit_power_law(k, A - B * k ** -C)
    assert (a, b, c) == pytest.approx((A, B, C), abs=2e-3)
    assert labels_needed((A, B, C), 0.85) == pytest.approx((B / (A - 0.85)) ** (1 / C))
    assert np.isinf(labels_needed((A, B, C), 0.95))                  # above the asymptote: never
    assert labels_needed((A, B, C), 0.2) == 1.0                      # already there at K = 1


def test_labels_needed_interval_holds_the_truth_and_the_held_out_k_is_predicted():
    truth = A - B * np.array(SHOTS, float) ** -C
    res = learning_curve(_curve(truth), targets=(0.85, 0.95), n_boot=300, n_subjects=400)
    need = (B / (A - 0.85)) ** (1 / C)                                # about 26 per class
    lo, hi = res["targets"][0]["ci95"]
    assert lo <= need <= hi and hi < 4 * need
    assert res["targets"][1]["labels_per_class"] is None or res["targets"][1]["labels_per_class"] > 100
    assert res["holdout"]["k"] == 20 and res["holdout"]["within"]
    assert res["asymptote_ci95"][0] <= A <= res["asymptote_ci95"][1]
    assert len(res["observed_ci95"]) == len(SHOTS) and res["n_boot"] == 300


def test_the_held_out_check_fails_when_the_curve_breaks():
    truth = A - B * np.array(SHOTS, float) ** -C
    truth[-1] = 0.99                                                  # a jump no power law of the others predicts
    assert not learning_curve(_curve(truth), n_boot=200, n_subjects=400)["holdout"]["within"]


def test_too_few_k_give_no_curve_and_bad_input_is_named():
    assert learning_curve({"1": _episodes(0.6, 0), "5": _episodes(0.7, 1)}) == {}
    with pytest.raises(ValueError, match="fit_power_law"):
        fit_power_law([1, 2], [0.5, 0.6])


def test_the_curve_targets_reach_mlflow_with_the_rest_of_the_evaluation(tmp_path):
    """log_to_mlflow on a real sqlite store: the labels per class of each reached target are
    metrics of the run (a target not reached is not logged)."""
    import mlflow

    from medcl import tracking
    from medcl.config import Config
    from medcl.fewshot.suite import FewShotOutput, log_to_mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fs = FewShotOutput(results={}, features={}, cohort=None,
                       curve={"prototype": {"targets": [{"target": 0.8, "labels_per_class": 7.0},
                                                        {"target": 0.9, "labels_per_class": None}]}})
    tracking.setup(uri, "curve-test", tmp_path)
    with tracking.start_run("curve", system_metrics=False, log_environment=False) as run:
        log_to_mlflow(Config(), fs)
    metrics = mlflow.MlflowClient(uri).get_run(run.run_id).data.metrics
    assert metrics["curve.prototype.labels_per_class_for_0.8"] == 7.0
    assert not any(k.startswith("curve.prototype.labels_per_class_for_0.9") for k in metrics)
