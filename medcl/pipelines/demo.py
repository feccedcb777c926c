"""The demo: simulated cohort -> ingest -> SimCLR pretraining -> few-shot evaluation against a
random-init encoder -> registered models -> report.html and summary.json."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medcl import tracking
from medcl.augment import eval_view, make_pair
from medcl.config import Config, config_to_dict
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest
from medcl.models import build_encoder
from medcl.fewshot.suite import evaluate_encoders, fit_deployable_head, log_to_mlflow, save_features
from medcl.pipelines.pretrain import encoder_meta, run_pretrain
from medcl.report import DEMO_BANNER, MontageSample
from medcl.report.content import build_report_data, model_card, summary_block
from medcl.report.files import log_report_artifacts, write_report, write_summary
from medcl.serving.inference import load_encoder
from medcl.serving.registry import alias_new_version, log_fewshot

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


def run_demo(cfg: Config, out: Path, tracking_uri: str, progress: bool = True) -> dict:
    """``medcl demo``: every stage on a simulated cohort, logged to ``tracking_uri``; returns
    the summary (also written to ``OUT/summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    src = make_demo_sources(out / "demo_src", cfg.demo.n_subjects, cfg.demo.seed, cfg.data.spacing,
                            workers=cfg.data.workers)
    timings["simulate"] = time.perf_counter() - t0
    res = ingest([src.nifti_dir], out / "cohort", cfg.data, labels_csv=src.labels_csv,
                 test_fraction=0.5, split_seed=cfg.demo.seed, progress=progress)
    cohort = Cohort.load(out / "cohort")
    timings["ingest"] = time.perf_counter() - t0 - sum(timings.values())

    pre = run_pretrain(cfg, out / "cohort", out, tracking_uri, progress=progress)
    timings["pretrain"] = time.perf_counter() - t0 - sum(timings.values())

    meta = encoder_meta(cfg)
    pretrained = load_encoder(pre.result.encoder_path, meta)
    random_init = build_encoder(cfg.model.arch, cfg.model.conv1_t_stride, cfg.model.widen_factor, seed=cfg.train.seed).eval()
    fs = evaluate_encoders(cfg, cohort, {"pretrained": pretrained, "random_init": random_init})
    save_features(fs, out / "features.npz")
    timings["fewshot"] = time.perf_counter() - t0 - sum(timings.values())

    tracking.setup(tracking_uri, f"{cfg.tracking.experiment}-fewshot", out)
    lineage = {"medcl.pretrain_run_id": pre.run_id or "", "medcl.encoder_uri": pre.encoder_uri or "",
               "medcl.encoder_version": (pre.encoder_uri or "").rsplit("/", 1)[-1]}
    with tracking.start_run("fewshot-demo", tags={"medcl.stage": "fewshot", **lineage,
                                                  "medcl.data": "simulated pathology on real anatomy"}) as run:
        tracking.log_dict(config_to_dict(cfg), "config.yaml")
        log_to_mlflow(cfg, fs)   # every source, head, baseline and K (step K), paired differences, label budget
        tracking.log_fewshot_evaluation({src: {cfg.fewshot.primary_head: heads[cfg.fewshot.primary_head]}
                                         for src, heads in fs.results.items() if cfg.fewshot.primary_head in heads},
                                        {"n_query": cfg.fewshot.n_query, "seed": cfg.fewshot.seed})
        alias = _register_fewshot_model(cfg, pretrained, meta, cohort, fs, pre, run, lineage)
        t_report = time.perf_counter()
        paths = write_report(_report_data(cfg, fs, cohort, res, pre, alias), out, cfg.fewshot.pdf)
        timings["report"] = time.perf_counter() - t_report
        log_report_artifacts(paths)
    timings["register"] = time.perf_counter() - t0 - sum(timings.values())
    summary = _summary(cfg, cohort, res, fs, pre, paths)
    summary["mlflow"] = {"tracking_uri": tracking_uri, "pretrain_run_id": pre.run_id,
                         "fewshot_run_id": run.run_id, "encoder_model_uri": pre.encoder_uri,
                         "fewshot_model_uri": f"models:/{cfg.tracking.fewshot_model_name}@{alias}"}
    summary["timings_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["fewshot_timings_seconds"] = fs.timings
    write_summary(out / "summary.json", summary)
    return summary


def _register_fewshot_model(cfg: Config, pretrained, meta: dict, cohort: Cohort, fs, pre, run, lineage: dict) -> str:
    """The deployable head fitted on DEPLOY_SHOTS train-split scans per class, registered with
    the encoder as the few-shot model of ``run``; returns the alias of the new version."""
    head, support_keys = fit_deployable_head(cfg, pretrained, cohort, DEPLOY_SHOTS)
    primary = fs.results["pretrained"][cfg.fewshot.primary_head]
    info = log_fewshot(pretrained, head, meta, cfg.tracking.fewshot_model_name, run=run,
                       version_tags={**lineage, "medcl.fewshot_run_id": run.run_id},
                       card_info={"training_data": f"Demo data: simulated pathology on real anatomy (MNI ICBM152), "
                                  f"not patients. Head fitted on {DEPLOY_SHOTS} train-split scans per class.",
                                  "metrics": {f"balanced accuracy, {k}-shot episodes ({cfg.fewshot.primary_head})":
                                              f"{r['balanced_accuracy']:.3f} [95% CI {r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                                              for k, r in primary.items()},
                                  "lineage": {"pretraining run": pre.run_id, "encoder": pre.encoder_uri,
                                              "few-shot run": run.run_id},
                                  "limitations": ["Trained and evaluated on simulated pathology: says nothing "
                                                  "about real diagnosis."]})
    alias = None
    if info is not None:
        alias = alias_new_version(cfg.tracking.fewshot_model_name, info.registered_model_version, cfg.tracking.alias)
    tracking.log_dict({"support_scan_keys": support_keys, "shots_per_class": DEPLOY_SHOTS}, "deployable_support.json")
    return alias or cfg.tracking.alias


def _report_data(cfg: Config, fs, cohort: Cohort, res, pre, alias: str):
    return build_report_data(
        cfg, fs, "medcl few-shot diagnosis evaluation (demo)",
        {"all": cohort.counts(), "evaluated (test split)": fs.cohort.counts(), "ingest": res.counts()},
        banner=DEMO_BANNER, losses=pre.result.losses, montage=montage_samples(cohort, cfg),
        model_card=model_card(cfg, fs, pre.encoder_uri or "the pretrained encoder", demo=True, deploy_shots=DEPLOY_SHOTS),
        notes=[f"The encoder was pretrained on the {len(cohort.select(split='train'))} scans of the train split "
               f"without their labels; episodes draw only from the {len(fs.cohort)} scans of the test split.",
               f"The registered model '{cfg.tracking.fewshot_model_name}@{alias}' is the "
               f"{cfg.fewshot.primary_head} head fitted on {DEPLOY_SHOTS} train-split scans per class.",
               "Few-shot stage timings (s): " + ", ".join(f"{k} {v}" for k, v in fs.timings.items())])


def _summary(cfg: Config, cohort: Cohort, res, fs, pre, paths: dict) -> dict:
    return {
        "data": "simulated pathology on real anatomy",
        "cohort": cohort.counts(),
        "ingest": res.counts(),
        "fewshot": summary_block(cfg, fs),
        "fewshot_all_heads": fs.results,
        "fewshot_ceiling": fs.ceiling,
        "fewshot_paired": fs.paired,
        "label_budget": fs.budget,
        "report": {"html": str(paths["html"]), "pdf": str(paths["pdf"]) if paths["pdf"] else None},
        "pretrain": {"steps": pre.result.steps, "seconds": round(pre.result.seconds, 1),
                     "final_loss": pre.result.losses[-1]},
    }
