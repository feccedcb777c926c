"""Why the registered model's ECE stayed high, measured on a finished demo (issue 14, item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration.py --demo out/demo [--supports 100]

Refits the registered head as the demo does (``fit_deployable_head``, K = 5) and embeds its
support and calibration scans (train split, disjoint from the 150 evaluation scans of
``OUT/features.npz``). Prints, on the evaluation scans: ECE / Brier / balanced accuracy of the raw
head, of the support's cross-fitted temperature, of a temperature fitted on the calibration scans,
of the temperature that is best *on the evaluation scans themselves* (a diagnostic that no deployed
model may use: the most any temperature can do), and of vector scaling on half the calibration
scans (what is deployed); the ECE that a perfectly calibrated model with these probabilities would
show on 150 scans (labels drawn from its own probabilities: the metric's floor); and, over
``--supports`` random 5-shot supports of the train split, each method's ECE (median, 5-95%).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcl.data.cohort import Cohort  # noqa: E402
from medcl.fewshot.calibrate import T_GRID, choose_scaling, fit_vector_scaling, support_temperature  # noqa: E402
from medcl.fewshot.embed import embed_cohort  # noqa: E402
from medcl.fewshot.heads import HEADS  # noqa: E402
from medcl.fewshot.metrics import balanced_accuracy, brier_score, expected_calibration_error  # noqa: E402
from medcl.fewshot.ops import softmax  # noqa: E402
from medcl.fewshot.suite import fit_deployable_head  # noqa: E402
from medcl.pipelines.pretrain import encoder_meta  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402
from medcl.validate import load_checked  # noqa: E402


def _best_T(L, y) -> float:
    nll = [-np.log(softmax(L / T)[np.arange(len(y)), y] + 1e-12).mean() for T in T_GRID]
    return float(T_GRID[int(np.argmin(nll))])


def _scores(y, p) -> dict:
    return {"ece": round(expected_calibration_error(y, p), 4), "brier": round(brier_score(y, p), 4),
            "balanced_accuracy": round(balanced_accuracy(y, p.argmax(1)), 4)}


def _methods(L, Lc, yc, T_support, ye) -> dict:
    """Each calibration of raw evaluation scores ``L`` (calibration scans: ``Lc``, ``yc``): its
    probabilities and its temperature (None: not a temperature)."""
    half = np.arange(len(yc)) % 2 == 0
    a, b = fit_vector_scaling(Lc[half], yc[half])
    a_cv, b_cv, kind = choose_scaling(Lc[half], yc[half])
    T_cal, T_best = _best_T(Lc, yc), _best_T(L, ye)
    return {"raw": (softmax(L), 1.0), "support T": (softmax(L / T_support), T_support),
            "calibration-split T": (softmax(L / T_cal), T_cal),
            "best T on the evaluation scans (diagnostic)": (softmax(L / T_best), T_best),
            "vector scaling, half the calibration split": (softmax(L * a + b), None),
            "temperature or vector by 5-fold CV, half the calibration split (deployed)": (softmax(L * a_cv + b_cv),
                                                                                           kind)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, type=Path)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--supports", type=int, default=100)
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
        L = h.decision_function(Fe)
        for k, (p, t) in _methods(L, h.decision_function(F[rest]), y[rest], T, ye).items():
            out.setdefault(k, []).append({**_scores(ye, p), "T": t if t is None or isinstance(t, str) else round(float(t), 3)})
    reg = {k: v[0] for k, v in out.items()}
    p = softmax(head.decision_function(Fe) / _best_T(head.decision_function(Fe), ye))
    floor = [expected_calibration_error((rng.random((len(ye), 1)) > p.cumsum(1)).sum(1), p) for _ in range(500)]
    res = {"registered": reg, "ece_floor_n150": {"mean": round(float(np.mean(floor)), 4),
                                                 "p95": round(float(np.percentile(floor, 95)), 4)},
           "random_supports": {k: {"ece_median": round(float(np.median([s["ece"] for s in v[1:]])), 4),
                                   "ece_5_95": [round(float(np.percentile([s["ece"] for s in v[1:]], q)), 4) for q in (5, 95)],
                                   "share_ece_at_most_0.10": round(float(np.mean([s["ece"] <= 0.10 for s in v[1:]])), 3),
                                   "T_median": (float(np.median([s["T"] for s in v[1:]])) if isinstance(v[1]["T"], float)
                                                else None),
                                   "share_vector": (float(np.mean([s["T"] == "vector" for s in v[1:]]))
                                                    if isinstance(v[1]["T"], str) else None)}
                               for k, v in out.items()} if a.supports else {}}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
