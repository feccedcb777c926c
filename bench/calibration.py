"""Why the registered model's ECE stayed high, measured on a finished demo (issue 14, item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py --demo out/demo [--supports 100]

Refits the registered head as the demo does (``fit_deployable_head``, K = 5) and embeds its
support and calibration scans (train split, disjoint from the 150 evaluation scans of
``OUT/features.npz``). Prints, on the evaluation scans: ECE / Brier / balanced accuracy of the raw
head, of the support's cross-fitted temperature, of a temperature fitted on the calibration scans,
of the temperature that is best *on the evaluation scans themselves* (a diagnostic that no deployed
model may use: the most any temperature can do), of vector scaling on half the calibration scans,
of two rules measured and not deployed (vector scaling with a ridge pull toward the temperature
solution, its strength by 5-fold CV; temperature unless vector scaling's CV NLL is better by one
standard error), of the rule fitted before (temperature or vector by 5-fold CV on half the calibration scans, the
other half for split-conformal scores) and of what is deployed (the same rule on all the
calibration scans, CV+ conformal scores: ``calibrate_deployable_head``); for the last two, the
coverage and mean size of their prediction sets at ``--coverage`` on the evaluation scans; the ECE
that a perfectly calibrated model with these probabilities would show on 150 scans (labels drawn
from its own probabilities: the metric's floor); and, over ``--supports`` random 5-shot supports of
the train split, each method's ECE (median, 5-95%, share <= 0.10) and set coverage (mean, share
below the target).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcl.data.cohort import Cohort  # noqa: E402
from medcl.fewshot.calibrate import (T_GRID, choose_scaling, fit_vector_scaling, out_of_fold_nll,  # noqa: E402
                                     support_temperature)
from medcl.fewshot.conformal import calibrate_head, head_sets  # noqa: E402
from medcl.fewshot.embed import embed_cohort  # noqa: E402
from medcl.fewshot.heads import HEADS  # noqa: E402
from medcl.fewshot.metrics import balanced_accuracy, brier_score, expected_calibration_error  # noqa: E402
from medcl.fewshot.ops import softmax  # noqa: E402
from medcl.fewshot.suite import calibrate_deployable_head, fit_deployable_head  # noqa: E402
from medcl.pipelines.pretrain import encoder_meta  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402
from medcl.validate import load_checked  # noqa: E402


def _best_T(L, y) -> float:
    nll = [-np.log(softmax(L / T)[np.arange(len(y)), y] + 1e-12).mean() for T in T_GRID]
    return float(T_GRID[int(np.argmin(nll))])


def _scores(y, p) -> dict:
    return {"ece": round(expected_calibration_error(y, p), 4), "brier": round(brier_score(y, p), 4),
            "balanced_accuracy": round(balanced_accuracy(y, p.argmax(1)), 4)}


LAMBDAS = np.r_[0.0, np.geomspace(1e-4, 10, 16)]


def _shrunk_fit(L, y, ridge: float):
    """Vector scaling with an L2 pull of strength ``ridge`` toward the temperature of ``L``/``y``."""
    return fit_vector_scaling(L, y, ridge=ridge, toward=fit_vector_scaling(L, y, shared=True)[0][0])


def _shrunk(L, y):
    """Vector scaling shrunk toward the temperature solution, ``ridge`` by 5-fold CV NLL."""
    cv = [out_of_fold_nll(L, y, partial(_shrunk_fit, ridge=r)).mean() for r in LAMBDAS]
    return _shrunk_fit(L, y, LAMBDAS[int(np.argmin(cv))])


def _one_se(L, y):
    """Vector scaling only when its 5-fold CV NLL beats the temperature's by one standard error."""
    d = (out_of_fold_nll(L, y, partial(fit_vector_scaling, shared=True)) - out_of_fold_nll(L, y, fit_vector_scaling))
    return fit_vector_scaling(L, y, shared=d.mean() <= d.std(ddof=1) / np.sqrt(len(d)))


def _coverage(head, Fe, ye, coverage: float) -> dict:
    sets, _ = head_sets(head, head.decision_function(Fe), coverage)
    truth = np.asarray(head.classes_).astype(str)[ye]
    return {"coverage": round(float(np.mean([c in s for c, s in zip(truth, sets)])), 4),
            "set_size": round(float(np.mean([len(s) for s in sets])), 3)}


def _methods(h, Fe, Fc, labels_c, T_support, ye, coverage: float) -> dict:
    """Each calibration of head ``h`` (calibration scans: ``Fc``, ``labels_c``) on the evaluation
    scans ``Fe``: its probabilities, its temperature (None: not one; a str: the kind chosen) and
    the coverage of its prediction sets (None: none)."""
    L, Lc = h.decision_function(Fe), h.decision_function(Fc)
    yc = np.array([np.asarray(h.classes_).astype(str).tolist().index(v) for v in labels_c])
    half = np.arange(len(yc)) % 2 == 0
    a, b = fit_vector_scaling(Lc[half], yc[half])
    before, now = copy.deepcopy(h), copy.deepcopy(h)
    before.scale_, before.shift_, kind = choose_scaling(Lc[half], yc[half])
    calibrate_head(before, Fc[~half], labels_c[~half])
    calibrate_deployable_head(now, Fc, labels_c, lambda: T_support)
    T_cal, T_best = _best_T(Lc, yc), _best_T(L, ye)
    return {"raw": (softmax(L), 1.0, None), "support T": (softmax(L / T_support), T_support, None),
            "calibration-split T": (softmax(L / T_cal), T_cal, None),
            "best T on the evaluation scans (diagnostic)": (softmax(L / T_best), T_best, None),
            "vector scaling, half the calibration split": (softmax(L * a + b), None, None),
            **{f"{name}, {part} the calibration split (measured, not deployed)":
               (softmax(L * sa + sb), None, None) for name, rule in (("vector shrunk toward T by CV", _shrunk),
                                                                     ("one-SE rule", _one_se))
               for part, m in (("half", half), ("all", np.ones(len(yc), bool))) for sa, sb in [rule(Lc[m], yc[m])]},
            "temperature or vector by 5-fold CV, half the calibration split (before)":
                (before.predict_proba(Fe), kind, _coverage(before, Fe, ye, coverage)),
            "temperature or vector by 5-fold CV, all the calibration split, CV+ sets (deployed)":
                (now.predict_proba(Fe), now.calibration.split(":")[0], _coverage(now, Fe, ye, coverage))}


def _summary(v: list, coverage: float) -> dict:
    """Median/5-95%/share <= 0.10 of the ECE over random supports, and of the sets' coverage."""
    ece = [s["ece"] for s in v]
    out = {"ece_median": round(float(np.median(ece)), 4),
           "ece_5_95": [round(float(np.percentile(ece, q)), 4) for q in (5, 95)],
           "share_ece_at_most_0.10": round(float(np.mean(np.array(ece) <= 0.10)), 3)}
    if isinstance(v[0]["T"], float):
        out["T_median"] = float(np.median([s["T"] for s in v]))
    if isinstance(v[0]["T"], str):
        out["share_vector"] = float(np.mean([s["T"] == "vector" for s in v]))
    if "coverage" in v[0]:
        cov = [s["coverage"] for s in v]
        out.update(coverage_mean=round(float(np.mean(cov)), 4),
                   share_coverage_below_target=round(float(np.mean(np.array(cov) < coverage)), 3),
                   set_size_mean=round(float(np.mean([s["set_size"] for s in v])), 3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, type=Path)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--supports", type=int, default=100)
    ap.add_argument("--coverage", type=float, default=0.9)
    a = ap.parse_args()
    cfg = load_checked(a.config, [])
    z = np.load(a.demo / "features.npz", allow_pickle=False)
    cohort = Cohort.load(a.demo / "cohort")
    encoder = load_encoder(a.demo / "pretrain" / "encoder.pt", encoder_meta(cfg))
    head, keys = fit_deployable_head(cfg, encoder, cohort, 5)
    pool = cohort.select(split="train", labelled=True)
    support = np.flatnonzero(np.isin(pool.scan_keys, keys))
    F = embed_cohort(encoder, pool, cfg.augment.view_size)
    names = np.asarray(head.classes_).astype(str).tolist()
    y, ye = (np.array([names.index(v) for v in np.asarray(v).astype(str)]) for v in (pool.labels, z["labels"]))
    Fe, rng, out = z["features_pretrained"], np.random.default_rng(0), {}
    for r in range(a.supports + 1):
        pick = (np.concatenate([rng.choice(np.flatnonzero(y == c), 5, replace=False) for c in range(len(names))])
                if r else support)                     # r = 0: the registered head's own support
        h = head if not r else HEADS["prototype"].make().fit(F[pick], pool.labels[pick]).to_linear()
        rest = np.ones(len(y), bool)
        rest[pick] = False
        T = support_temperature("prototype", F[pick], pool.labels[pick], pool.subjects[pick])
        for k, (p, t, sets) in _methods(h, Fe, F[rest], pool.labels[rest].astype(str), T, ye, a.coverage).items():
            out.setdefault(k, []).append({**_scores(ye, p), "T": t if t is None or isinstance(t, str) else
                                          round(float(t), 3), **(sets or {})})
    reg = {k: v[0] for k, v in out.items()}
    p = softmax(head.decision_function(Fe) / _best_T(head.decision_function(Fe), ye))
    floor = [expected_calibration_error((rng.random((len(ye), 1)) > p.cumsum(1)).sum(1), p) for _ in range(500)]
    res = {"registered": reg, "ece_floor_n150": {"mean": round(float(np.mean(floor)), 4),
                                                 "p95": round(float(np.percentile(floor, 95)), 4)},
           "random_supports": {k: _summary(v[1:], a.coverage) for k, v in out.items()} if a.supports else {}}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
