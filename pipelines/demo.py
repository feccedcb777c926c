"""The demo: simulated cohort -> ingest -> SimCLR pretraining -> few-shot evaluation against a
random-init encoder -> registered models -> report.html and summary.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np

from medcl import tracking
from medcl.augment import eval_view, make_pair
from medcl.config import Config, config_to_dict
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest
from medcl.models import build_encoder
from medcl.report import DEMO_BANNER, MontageSample, ReportData, render_report
from medcl.tracking.inference import load_encoder
from medcl.tracking.registry import log_fewshot, set_alias
from pipelines.fewshot import evaluate_encoders, fit_deployable_head, save_features
from pipelines.pretrain import encoder_meta, run_pretrain

DEPLOY_SHOTS = 5


def montage_samples(cohort: Cohort, cfg: Config, seed: int = 0) -> list[MontageSample]:
    """One scan per class: its evaluation view and a random training pair."""
    out = []
    rng = np.random.default_rng(seed)
    for label in sorted(set(cohort.labels.tolist())):
        i = int(np.flatnonzero(cohort.labels == label)[0])
        img, mask = cohort.image(i), cohort.mask(i)
        v1, v2, _ = make_pair(img, mask, rng, cfg.augment)
        whole = eval_view(img, mask, cfg.augment.view_size)
        out.append(MontageSample(label, whole[0].numpy(), v1[0].numpy(), v2[0].numpy()))
    return out


def run_demo(cfg: Config, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    src = make_demo_sources(out / "demo_src", cfg.demo.n_subjects, cfg.demo.seed, cfg.data.spacing)
    timings["simulate"] = time.perf_counter() - t0
    res = ingest([src.nifti_dir], out / "cohort", cfg.data, labels_csv=src.labels_csv,
                 test_fraction=0.5, split_seed=cfg.demo.seed, progress=progress)
    cohort = Cohort.load(out / "cohort")
    timings["ingest"] = time.perf_counter() - t0 - sum(timings.values())

    pre = run_pretrain(cfg, out / "cohort", out, progress=progress)
    timings["pretrain"] = time.perf_counter() - t0 - sum(timings.values())

    meta = encoder_meta(cfg)
    pretrained = load_encoder(pre.result.encoder_path, meta)
    random_init = build_encoder(cfg.model.arch, cfg.model.conv1_t_stride, seed=cfg.train.seed).eval()
    fs = evaluate_encoders(cfg, cohort, {"pretrained": pretrained, "random_init": random_init})
    save_features(fs, out / "features.npz")
    timings["fewshot"] = time.perf_counter() - t0 - sum(timings.values())

    tracking.setup(out, f"{cfg.tracking.experiment}-fewshot")
    with mlflow.start_run(run_name="fewshot-demo") as run:
        mlflow.set_tags({"medcl.stage": "fewshot", "medcl.pretrain_run_id": pre.run_id,
                         "medcl.encoder_uri": pre.encoder_uri or "", "medcl.data": "simulated pathology on real anatomy"})
        mlflow.log_dict(config_to_dict(cfg), "config.yaml")
        for enc, heads in fs.results.items():
            for head, shots in heads.items():
                for k, r in shots.items():
                    tracking.log_metrics({f"{enc}.{head}.balanced_accuracy": r["balanced_accuracy"],
                                          f"{enc}.{head}.ci95_lo": r["ci95"][0],
                                          f"{enc}.{head}.ci95_hi": r["ci95"][1]}, int(k))
        head, support_keys = fit_deployable_head(cfg, pretrained, cohort, DEPLOY_SHOTS)
        info = log_fewshot(pretrained, head, meta, cfg.tracking.fewshot_model_name)
        set_alias(cfg.tracking.fewshot_model_name, info.registered_model_version, cfg.tracking.alias)
        mlflow.log_dict({"support_scan_keys": support_keys, "shots_per_class": DEPLOY_SHOTS}, "deployable_support.json")
        report = render_report(ReportData(
            title="medcl few-shot diagnosis evaluation (demo)",
            cohort={"all": cohort.counts(), "evaluated (test split)": fs.cohort.counts(), "ingest": res.counts()},
            config=config_to_dict(cfg), curves=fs.results, primary_head=cfg.fewshot.primary_head,
            confusion_shot="5" if "5" in fs.results["pretrained"][cfg.fewshot.primary_head] else
            next(iter(fs.results["pretrained"][cfg.fewshot.primary_head]), "1"),
            losses=pre.result.losses, montage=montage_samples(cohort, cfg), banner=DEMO_BANNER,
            notes=[f"The encoder was pretrained on the {len(cohort.select(split='train'))} scans of the train split "
                   f"without their labels; episodes draw only from the {len(fs.cohort)} scans of the test split.",
                   "95% CIs are mean ± 1.96 standard errors over episodes; episodes reuse the same scans, so "
                   "they understate the uncertainty due to the finite cohort.",
                   f"The registered model '{cfg.tracking.fewshot_model_name}@{cfg.tracking.alias}' is the "
                   f"{cfg.fewshot.primary_head} head fitted on {DEPLOY_SHOTS} train-split scans per class."]),
            out / "report.html")
        mlflow.log_artifact(str(report))
        fewshot_run = run.info.run_id
    timings["register_report"] = time.perf_counter() - t0 - sum(timings.values())

    summary = {
        "data": "simulated pathology on real anatomy",
        "cohort": cohort.counts(),
        "ingest": res.counts(),
        "fewshot": {enc: {k: {"balanced_accuracy": r["balanced_accuracy"], "ci95": r["ci95"],
                              "accuracy": r["accuracy"], "accuracy_ci95": r["accuracy_ci95"]}
                          for k, r in heads[cfg.fewshot.primary_head].items()}
                    for enc, heads in fs.results.items()},
        "fewshot_all_heads": fs.results,
        "pretrain": {"steps": pre.result.steps, "seconds": round(pre.result.seconds, 1),
                     "final_loss": pre.result.losses[-1]},
        "mlflow": {"tracking_uri": tracking.tracking_uri_for(out), "pretrain_run_id": pre.run_id,
                   "fewshot_run_id": fewshot_run, "encoder_model_uri": pre.encoder_uri,
                   "fewshot_model_uri": f"models:/{cfg.tracking.fewshot_model_name}@{cfg.tracking.alias}"},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
