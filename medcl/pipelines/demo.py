"""The demo: simulated cohort -> ingest -> SimCLR pretraining -> few-shot evaluation against a
random-init encoder -> registered models -> report.html and summary.json.

With ``demo.seeds = n`` (docs/fewshot.md, "Seeds") pretraining runs n times, with ``train.seed``,
``train.seed + 1``, ...: each its own MLflow run tagged ``medcl.train_seed``. The first seed is
the demo as with one seed: its encoder alone is registered, and it gets the full few-shot suite,
the deployable model and the report. Every further seed's encoder and its own random-init
encoder are scored on the same episodes with the primary head (and the linear probe, when on)
only; summary.json's ``seeds`` block holds every seed's numbers with their mean and sd.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medcl import tracking
from medcl.augment import eval_view, make_views
from medcl.config import Config, config_to_dict
from medcl.data.cohort import Cohort
from medcl.data.demo import make_demo_sources
from medcl.data.ingest import ingest
from medcl.models import build_encoder
from medcl.fewshot.conformal import head_report
from medcl.fewshot.lesions import demo_lesion_masks, lesion_concentration
from medcl.fewshot.saliency import explain_examples, template_regions
from medcl.fewshot.embed import cohort_views, embed_views
from medcl.fewshot.suite import (evaluate_encoders, evaluation_cohort, fit_deployable_head, log_to_mlflow,
                                 save_features)
from medcl.pipelines.pretrain import PretrainOutput, encoder_meta, run_pretrain
from medcl.report import DEMO_BANNER, MontageSample
from medcl.fewshot.seeds import primary_only, seed_entry, seeds_block
from medcl.report.content import build_report_data, model_card, seed_spread_lines, summary_block
from medcl.report.files import log_report_artifacts, write_report, write_summary
from medcl.report.trust import saliency_block
from medcl.serving.inference import load_encoder
from medcl.serving.registry import alias_new_version, log_fewshot
from medcl.train.callbacks import StepTiming, format_duration

DEPLOY_SHOTS = 5
# What follows pretraining, for the expected finish printed after 20 steps: the full few-shot
# suite of the first seed, its registration and report (87 s for configs/demo.yaml on 2 quiet CPU
# cores at 0.57 s a step, docs/performance.md), and per further seed its embeddings, primary head
# and probe; on a slower or loaded machine (a longer step) both grow with the step time.
FEWSHOT_ALLOWANCE_S = 90.0
SEED_EVAL_ALLOWANCE_S = 10.0
ALLOWANCE_S_PER_STEP = 0.57
LESION_SCANS = 10   # lesion-class evaluation scans whose saliency is checked against their simulated lesions ...
BASELINE_MASKS = 40  # ... and other evaluation scans whose lesion masks join theirs in the shuffled-mask baseline


def montage_samples(cohort: Cohort, cfg: Config, seed: int = 0) -> list[MontageSample]:
    """One scan per class: its evaluation view, a random training pair and its local views
    (multi-crop, when ``augment.local_views`` > 0)."""
    out = []
    rng = np.random.default_rng(seed)
    for label in sorted(set(cohort.labels.tolist())):
        i = int(np.flatnonzero(cohort.labels == label)[0])
        img, mask = cohort.image(i), cohort.mask(i)
        v1, v2, local, _ = make_views(img, mask, rng, cfg.augment)
        whole = eval_view(img, mask, cfg.augment.view_size)
        out.append(MontageSample(label, whole[0].numpy(), v1[0].numpy(), v2[0].numpy(),
                                 [] if local is None else [v[0].numpy() for v in local]))
    return out


def run_demo(cfg: Config, out: Path, tracking_uri: str, progress: bool = True) -> dict:
    """``medcl demo``: every stage on a simulated cohort, logged to ``tracking_uri``; returns
    the summary (also written to ``OUT/summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    src = make_demo_sources(out / "demo_src", cfg.demo.n_subjects, cfg.demo.seed, cfg.data.spacing,
                            workers=cfg.data.workers, progress=progress)
    timings["simulate"] = time.perf_counter() - t0
    res = ingest([src.nifti_dir], out / "cohort", cfg.data, labels_csv=src.labels_csv,
                 test_fraction=0.5, split_seed=cfg.demo.seed, progress=progress)
    cohort = Cohort.load(out / "cohort")
    timings["ingest"] = time.perf_counter() - t0 - sum(timings.values())

    pres = _pretrain_seeds(cfg, out, tracking_uri, progress)
    pre = pres[0]
    timings["pretrain"] = time.perf_counter() - t0 - sum(timings.values())

    meta = encoder_meta(cfg, cohort.reference)
    pretrained = load_encoder(pre.result.encoder_path, meta)
    fs = evaluate_encoders(cfg, cohort, {"pretrained": pretrained, "random_init": random_init_encoder(cfg)},
                           progress=progress)
    save_features(fs, out / "features.npz")
    timings["fewshot"] = time.perf_counter() - t0 - sum(timings.values())
    per_seed = [seed_entry(cfg, cfg.train.seed, fs)] + _further_seeds(cfg, cohort, pres[1:])
    if len(pres) > 1:
        timings["seeds"] = time.perf_counter() - t0 - sum(timings.values())

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
        seeds = seeds_block(cfg, per_seed)
        if len(pres) > 1:
            _log_seeds(seeds, pres)
        alias, head, deployed = _register_fewshot_model(cfg, pretrained, meta, cohort, fs, pre, run, lineage)
        t_report = time.perf_counter()
        saliency = _saliency(cfg, pretrained, head, fs, src.nifti_dir)   # its time counts in timings["report"]
        paths = write_report(_report_data(cfg, fs, cohort, res, pre, alias, seeds, deployed, saliency), out,
                             cfg.fewshot.pdf)
        timings["report"] = time.perf_counter() - t_report
        log_report_artifacts(paths)
    timings["register"] = time.perf_counter() - t0 - sum(timings.values())
    summary = {**_summary(cfg, cohort, res, fs, pre, paths), **_trust_summary(deployed, saliency)}
    summary["seeds"] = seeds
    summary["mlflow"] = {"tracking_uri": tracking_uri, "pretrain_run_id": pre.run_id,
                         "fewshot_run_id": run.run_id, "encoder_model_uri": pre.encoder_uri,
                         "fewshot_model_uri": f"models:/{cfg.tracking.fewshot_model_name}@{alias}"}
    summary["timings_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["fewshot_timings_seconds"] = fs.timings
    write_summary(out / "summary.json", summary)
    return summary


def seed_config(cfg: Config, offset: int) -> Config:
    """``cfg`` with ``train.seed + offset``."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=cfg.train.seed + offset))


def random_init_encoder(cfg: Config):
    """The untrained encoder of ``cfg``'s architecture, initialised from ``train.seed``."""
    m = cfg.model
    return build_encoder(m.arch, m.conv1_t_stride, m.widen_factor, seed=cfg.train.seed).eval()


def _pretrain_seeds(cfg: Config, out: Path, tracking_uri: str, progress: bool) -> list[PretrainOutput]:
    """Pretraining with each of the ``demo.seeds`` seeds; only the first registers its encoder and
    writes to ``OUT/pretrain`` (the others to ``OUT/pretrain_seed<train.seed>``)."""
    clock = DemoClock(cfg.demo.seeds, progress)
    pres = []
    for i in range(cfg.demo.seeds):
        c = seed_config(cfg, i)
        pres.append(run_pretrain(c, out / "cohort", out, tracking_uri, progress=progress, register=i == 0,
                                 subdir="pretrain" if i == 0 else f"pretrain_seed{c.train.seed}",
                                 on_timing=partial(clock.estimate, i)))
    return pres


class DemoClock:
    """The demo's expected finish, printed (with ``show``) when a seed's pretraining has measured
    its pace: the steps left of every seed at that pace, plus FEWSHOT_ALLOWANCE_S and
    SEED_EVAL_ALLOWANCE_S per further seed for what follows pretraining, stretched by the pace
    over ALLOWANCE_S_PER_STEP when the machine is slower than the one they were measured on."""

    def __init__(self, n_seeds: int, show: bool):
        self.n, self.show = n_seeds, show
        self.finish: datetime | None = None

    def estimate(self, index: int, timing: StepTiming) -> None:
        steps = timing.steps_left + (self.n - 1 - index) * timing.total_steps
        pace = max(1.0, timing.s_per_step / ALLOWANCE_S_PER_STEP)   # never faster than where it was measured
        after = (FEWSHOT_ALLOWANCE_S + (self.n - 1) * SEED_EVAL_ALLOWANCE_S) * pace
        left = steps * timing.s_per_step + after
        self.finish = datetime.now() + timedelta(seconds=left)
        if self.show:
            tqdm.write(f"demo: expected to finish at {self.finish:%H:%M:%S} (in {format_duration(left)}): "
                       f"{steps} pretraining steps to go over {self.n - index} seed(s) at "
                       f"{timing.s_per_step:.2f} s/step, and about {format_duration(after)} for the few-shot "
                       f"evaluation, registration and report")


def _further_seeds(cfg: Config, cohort: Cohort, pres: list[PretrainOutput]) -> list[dict]:
    """The ``seeds.per_seed`` entries of the seeds after the first: each pretrained encoder and
    its own random-init encoder on the evaluation views, primary head (and probe) only."""
    if not pres:
        return []
    eval_set = evaluation_cohort(cohort)
    views = cohort_views(eval_set, cfg.augment.view_size)
    entries = []
    for i, pre in enumerate(pres, start=1):
        c = seed_config(cfg, i)
        features = {"pretrained": embed_views(load_encoder(pre.result.encoder_path, encoder_meta(c)), views),
                    "random_init": embed_views(random_init_encoder(c), views)}
        entries.append(seed_entry(c, c.train.seed, primary_only(c, features, eval_set.labels, eval_set.subjects)))
    return entries


def _log_seeds(seeds: dict, pres: list[PretrainOutput]) -> None:
    """The seeds block, with the pretraining run of each seed, on the few-shot run; the mean and
    sd as metrics ``seeds.SOURCE.balanced_accuracy.mean|sd`` at step K."""
    tracking.log_dict({**seeds, "pretrain_run_ids": [p.run_id for p in pres]}, "seeds.json")
    for src, by_k in seeds["mean_sd"].items():
        for k, r in by_k.items():
            tracking.log_metrics({f"seeds.{src}.balanced_accuracy.mean": r["mean"],
                                  f"seeds.{src}.balanced_accuracy.sd": r["sd"]}, int(k))


def _register_fewshot_model(cfg: Config, pretrained, meta: dict, cohort: Cohort, fs, pre, run,
                            lineage: dict) -> tuple[str, object, dict]:
    """The deployable head fitted on DEPLOY_SHOTS train-split scans per class, registered with
    the encoder as the few-shot model of ``run``; returns the alias of the new version, the head
    and its calibration and prediction sets on the evaluation scans (:func:`head_report`)."""
    head, support_keys = fit_deployable_head(cfg, pretrained, cohort, DEPLOY_SHOTS)
    f = cfg.fewshot
    deployed = head_report(head, fs.features["pretrained"], fs.labels, fs.subjects, f.conformal_coverage, f.n_boot,
                           f.seed) if f.calibration != "none" else {}
    for name in ("before", "after") if deployed else ():
        tracking.log_metrics({f"registered.ece_{name}": deployed[name]["ece"]}, DEPLOY_SHOTS)
    primary = fs.results["pretrained"][cfg.fewshot.primary_head]
    info = log_fewshot(pretrained, head, meta, cfg.tracking.fewshot_model_name, run=run, reference=cohort.reference,
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
    return alias or cfg.tracking.alias, head, deployed


def _saliency(cfg: Config, encoder, head, fs, nifti_dir: Path) -> dict:
    """The report's saliency block: the registered head's maps on a few evaluation scans per
    class, with the template's regions when the cohort is registered to it and brain-masked, and
    then the lesion class's saliency inside the simulated lesions of up to LESION_SCANS
    lesion-class evaluation scans against the lesion masks of the others and of BASELINE_MASKS
    further evaluation subjects (about 0.3 s a mask)."""
    f = cfg.fewshot
    if f.saliency == "none":
        return {}
    regions, lesions = None, None
    if cfg.data.register != "none" and cfg.data.brain_mask == "template":
        regions = template_regions(fs.cohort.image(0).shape, cfg.data.spacing, cfg.data.crop_margin)
        lesion = fs.cohort.labels == "lesion"
        keys = set(fs.cohort.scan_keys[lesion][:LESION_SCANS]) | set(fs.cohort.scan_keys[~lesion][:BASELINE_MASKS])
        masks = demo_lesion_masks(fs.cohort, nifti_dir, cfg.demo.seed, cfg.data.spacing, cfg.data.crop_margin,
                                  keys=keys)
        lesions = lesion_concentration(encoder, head, fs.cohort, masks, cfg.augment.view_size, f.saliency,
                                       max_scans=LESION_SCANS, n_boot=f.n_boot, seed=f.seed)
    examples = explain_examples(encoder, head, fs.cohort, fs.features["pretrained"], cfg.augment.view_size,
                                f.saliency_per_class, f.saliency, regions, f.seed)
    return saliency_block(examples, f.saliency, lesions)


def _report_data(cfg: Config, fs, cohort: Cohort, res, pre, alias: str, seeds: dict, deployed: dict,
                 saliency: dict):
    return build_report_data(
        cfg, fs, "medcl few-shot diagnosis evaluation (demo)",
        {"all": cohort.counts(), "evaluated (test split)": fs.cohort.counts(), "ingest": res.counts()},
        banner=DEMO_BANNER, losses=pre.result.losses, montage=montage_samples(cohort, cfg),
        model_card=model_card(cfg, fs, pre.encoder_uri or "the pretrained encoder", demo=True, deploy_shots=DEPLOY_SHOTS),
        deployed=deployed, saliency=saliency,
        notes=[f"The encoder was pretrained on the {len(cohort.select(split='train'))} scans of the train split "
               f"without their labels; episodes draw only from the {len(fs.cohort)} scans of the test split.",
               f"The registered model '{cfg.tracking.fewshot_model_name}@{alias}' is the "
               f"{cfg.fewshot.primary_head} head fitted on {DEPLOY_SHOTS} train-split scans per class.",
               "Few-shot stage timings (s): " + ", ".join(f"{k} {v}" for k, v in fs.timings.items()),
               *seed_spread_lines(seeds, report=True)])


def _trust_summary(deployed: dict, saliency: dict) -> dict:
    """summary.json's registered model (calibration, sets) and where it looked."""
    return {"registered_model": deployed,
            "saliency": {"method": saliency.get("method"), "where_it_looks": saliency.get("summary", {}),
                         "lesions": saliency.get("lesions")}}


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
        "label_curve": fs.curve,
        "fewshot_calibration": fs.calibration,
        "fewshot_conformal": fs.conformal,
        "report": {"html": str(paths["html"]), "pdf": str(paths["pdf"]) if paths["pdf"] else None},
        "pretrain": {"steps": pre.result.steps, "seconds": round(pre.result.seconds, 1),
                     "final_loss": pre.result.losses[-1]},
    }
