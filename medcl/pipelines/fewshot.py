"""Few-shot pipelines: ``medcl fewshot`` (:func:`run_fewshot`: a registered encoder evaluated on
a cohort's labelled scans against the baselines, an MLflow run, report.html/.pdf and
summary.json) and ``medcl suggest-labels`` (:func:`suggest_labels`). The evaluation is
:mod:`medcl.fewshot.suite`; the report's wording :mod:`medcl.report.content`."""

from __future__ import annotations

import time
from pathlib import Path

from medcl import tracking
from medcl.config import Config
from medcl.data.cohort import Cohort
from medcl.fewshot.budget import suggest
from medcl.fewshot.embed import embed_cohort
from medcl.fewshot.suite import evaluate_encoders, log_to_mlflow, save_features
from medcl.models import build_encoder
from medcl.report.content import build_report_data, model_card, summary_block
from medcl.report.files import log_report_artifacts, write_report, write_summary
from medcl.serving.inference import check_reference
from medcl.serving.load import load_encoder_uri


def run_fewshot(cfg: Config, cohort_dir: Path, encoder_uri: str, out_dir: Path, tracking_uri: str,
                progress: bool = False) -> dict:
    """``medcl fewshot``: evaluate a registered encoder (read from ``tracking_uri``) on a cohort's
    labelled scans against the baselines, log a ``fewshot`` run to the same store, write
    report.html/.pdf and summary.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = Cohort.load(cohort_dir)
    if not len(cohort.select(labelled=True)):
        raise ValueError(f"{cohort_dir}: the cohort has no labelled scans (ingest with --labels)")
    tracking.setup(tracking_uri, f"{cfg.tracking.experiment}-fewshot", out_dir)
    encoder, meta = load_encoder_uri(encoder_uri)
    check_reference(meta, cohort.reference, str(cohort_dir))
    random_init = build_encoder(meta["arch"], meta["conv1_t_stride"], meta.get("widen_factor", 1.0),
                                seed=cfg.train.seed).eval()
    fs = evaluate_encoders(cfg, cohort, {"pretrained": encoder, "random_init": random_init}, meta["view_size"],
                           progress=progress)
    save_features(fs, out_dir / "features.npz")
    with tracking.start_run("fewshot", tags={"medcl.stage": "fewshot", "medcl.encoder_uri": encoder_uri}) as run:
        log_to_mlflow(cfg, fs)
        data = build_report_data(cfg, fs, "medcl few-shot diagnosis evaluation",
                                 {"all": cohort.counts(), "evaluated": fs.counts()},
                                 model_card=model_card(cfg, fs, encoder_uri, demo=False),
                                 notes=[f"Encoder: {encoder_uri}. Episodes draw only from the {fs.counts()['scans']} labelled "
                                        "scans of the test split (all labelled scans when there is no test split)."])
        paths = write_report(data, out_dir, cfg.fewshot.pdf)
        log_report_artifacts(paths)
    summary = {"cohort": fs.counts(), "fewshot": summary_block(cfg, fs), "fewshot_all_heads": fs.results,
               "ceiling": fs.ceiling, "paired": fs.paired, "budget": fs.budget, "label_curve": fs.curve,
               "calibration": fs.calibration, "conformal": fs.conformal,
               "report": {"html": str(paths["html"]), "pdf": str(paths["pdf"]) if paths["pdf"] else None},
               "mlflow": {"tracking_uri": tracking_uri, "fewshot_run_id": run.run_id,
                          "encoder_uri": encoder_uri},
               "timings_seconds": {**fs.timings, "total": round(time.perf_counter() - t0, 1)}}
    write_summary(out_dir / "summary.json", summary)
    return summary


def suggest_labels(cohort_dir: Path, encoder_uri: str, n: int, method: str = "kmedoids", seed: int = 0,
                   include_labelled: bool = False) -> list[dict]:
    """``medcl suggest-labels``: the ``n`` scans to label first (one per subject), ranked, from
    the cohort's unlabelled scans (all scans with ``include_labelled`` or when none is
    unlabelled), chosen in the encoder's embedding space. Rows: rank, scan_key, subject_key."""
    cohort = Cohort.load(cohort_dir)
    pool = cohort if include_labelled else cohort.select(labelled=False)
    if not len(pool):
        pool = cohort
    if not len(pool):
        raise ValueError(f"{cohort_dir}: the cohort has no scans")
    n_subjects = len(set(pool.subjects.tolist()))
    if not 1 <= n <= n_subjects:
        raise ValueError(f"--k {n}: must be between 1 and the {n_subjects} subjects available")
    encoder, meta = load_encoder_uri(encoder_uri)
    check_reference(meta, cohort.reference, str(cohort_dir))
    feats = embed_cohort(encoder, pool, meta["view_size"])
    picked = suggest(feats, pool.subjects, n, method, seed)
    return [{"rank": r + 1, "scan_key": pool.rows[i]["scan_key"], "subject_key": pool.rows[i]["subject_key"]}
            for r, i in enumerate(picked)]
