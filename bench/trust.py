"""Issue 14's figures on a finished demo, without pretraining again: the label-budget curve,
calibration and conformal sets per K, the registered head's ECE before/after on the evaluation
scans, where its saliency falls (template regions; lesion-class saliency in white matter and
atrophy-class saliency at the ventricles against the same masks shifted at random), and the
lesion class's saliency inside each lesion-class evaluation scan's own simulated lesions against
the other subjects' lesion masks (``lesions``; ``medcl.fewshot.lesions``).

    .venv/bin/python bench/trust.py --demo out/demo [--config configs/demo.yaml] [--per-class 3] [--method occlusion]
        [--parts suite,registered,saliency,lesions] [--lesion-scans 12] [--random-init] [KEY=VALUE ...]
        # KEY=VALUE: config overrides, e.g. fewshot.curve_shots=1,2,3,5,10,20

Reads ``OUT/cohort``, ``OUT/features.npz`` (the evaluation scans' pretrained features) and
``OUT/pretrain/encoder.pt`` (and ``OUT/demo_src/nifti`` for the lesion masks); refits the registered head exactly as the demo does
(``fit_deployable_head``, K = 5). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcl.data.cohort import Cohort  # noqa: E402
from medcl.fewshot.conformal import head_report  # noqa: E402
from medcl.fewshot.lesions import demo_lesion_masks, lesion_concentration  # noqa: E402
from medcl.fewshot.saliency import concentration, explain_examples, template_regions  # noqa: E402
from medcl.fewshot.suite import evaluate_features, evaluation_cohort, fit_deployable_head  # noqa: E402
from medcl.models import build_encoder  # noqa: E402
from medcl.pipelines.pretrain import encoder_meta  # noqa: E402
from medcl.serving.inference import load_encoder  # noqa: E402
from medcl.validate import load_checked  # noqa: E402


def _suite(cfg, z) -> dict:
    f = dataclasses.replace(cfg.fewshot, heads=tuple(dict.fromkeys((cfg.fewshot.primary_head, "logreg"))),
                            baselines=(), probe=False, budget_method="none", embedding_map="none")
    fs = evaluate_features(dataclasses.replace(cfg, fewshot=f), {"pretrained": z["features_pretrained"]},
                           z["labels"], z["subjects"])
    return {"curve": fs.curve, "calibration": fs.calibration,
            "conformal": {k: {m: v[m] for m in ("target", "coverage", "coverage_ci95", "mean_set_size",
                                                  "set_size_ci95", "class_conditional_fraction", "target_met")}
                          for k, v in fs.conformal.items()}}


def _saliency(cfg, encoder, head, cohort, X, per_class: int) -> dict:
    eval_set = evaluation_cohort(cohort)
    regions = template_regions(eval_set.image(0).shape, cfg.data.spacing, cfg.data.crop_margin)
    brain = np.logical_or.reduce(list(regions.values()))
    examples = explain_examples(encoder, head, eval_set, X, cfg.augment.view_size, per_class, cfg.fewshot.saliency,
                                regions, cfg.fewshot.seed)
    target = {"lesion": "white matter", "atrophy": "ventricles"}
    out: dict = {"method": cfg.fewshot.saliency, "examples": []}
    for e in examples:
        row = {k: e[k] for k in ("label", "predicted", "correct", "regions")}
        if e["label"] in target:
            row["concentration"] = {"region": target[e["label"]],
                                    **concentration(e["saliency"], regions[target[e["label"]]], brain)}
        out["examples"].append(row)
    return out


def _lesions(cfg, encoder, head, cohort, demo: Path, n_scans: int) -> dict:
    """As the demo's report: the evaluation subjects' lesion masks, the first ``n_scans`` lesion-class scans."""
    eval_set = evaluation_cohort(cohort)
    masks = demo_lesion_masks(eval_set, demo / "demo_src" / "nifti", cfg.demo.seed, cfg.data.spacing, cfg.data.crop_margin)
    res = lesion_concentration(encoder, head, eval_set, masks, cfg.augment.view_size,
                               cfg.fewshot.saliency, max_scans=n_scans, n_boot=cfg.fewshot.n_boot, seed=cfg.fewshot.seed)
    res["n_masks"] = len(masks)
    res["per_scan"] = [{k: round(v, 5) if isinstance(v, float) else v for k, v in c.items()} for c in res["per_scan"]]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, type=Path)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--per-class", type=int, default=3)
    ap.add_argument("--method", choices=("gradcam", "gradient", "occlusion"), help="saliency method (default: the config's)")
    ap.add_argument("--parts", default="suite,registered,saliency,lesions", help="what to compute (comma-separated)")
    ap.add_argument("--lesion-scans", type=int, default=12, help="lesion-class evaluation scans for 'lesions'")
    ap.add_argument("--random-init", action="store_true",
                    help="the random-init encoder of train.seed (and its own head) instead of the pretrained one: the "
                         "control for 'saliency' and 'lesions'")
    ap.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE")
    a = ap.parse_args()
    cfg = load_checked(a.config, a.overrides)
    if a.method:
        cfg = dataclasses.replace(cfg, fewshot=dataclasses.replace(cfg.fewshot, saliency=a.method))
    z = np.load(a.demo / "features.npz", allow_pickle=False)
    t0 = time.perf_counter()
    parts = set(a.parts.split(","))
    res = _suite(cfg, z) if "suite" in parts else {}
    cohort = Cohort.load(a.demo / "cohort")
    m = cfg.model
    encoder = build_encoder(m.arch, m.conv1_t_stride, m.widen_factor, seed=cfg.train.seed).eval() if a.random_init \
        else load_encoder(a.demo / "pretrain" / "encoder.pt", encoder_meta(cfg))
    head, _ = fit_deployable_head(cfg, encoder, cohort, 5)
    if "registered" in parts:
        res["registered"] = head_report(head, z["features_pretrained"], z["labels"], z["subjects"],
                                        cfg.fewshot.conformal_coverage, cfg.fewshot.n_boot, cfg.fewshot.seed)
    if "saliency" in parts:
        res["saliency"] = _saliency(cfg, encoder, head, cohort, z["features_pretrained"], a.per_class)
    if "lesions" in parts:
        res["lesions"] = _lesions(cfg, encoder, head, cohort, a.demo, a.lesion_scans)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
