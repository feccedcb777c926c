"""Few-shot pipeline: frozen encoders -> embeddings -> every head and every baseline on the same
episodes -> metrics with subject-bootstrap CIs, paired comparisons, label-budget check -> report
(HTML + PDF) and MLflow run; and the deployable diagnosis model (encoder + head fitted on K
labelled scans per class). ``medcl fewshot`` runs :func:`run_fewshot`; the demo calls
:func:`evaluate_encoders` and :func:`build_report_data`."""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medcl.config import Config, config_to_dict, flatten
from medcl.data.cohort import Cohort
from medcl.fewshot.baselines import linear_probe, pca_features, scratch_predictions
from medcl.fewshot.budget import evaluate_budget
from medcl.fewshot.embed import cohort_views, embed_cohort, embed_views, tsne_map
from medcl.fewshot.evaluate import EvalSpec, run_heads
from medcl.fewshot.heads import deployable
from medcl.fewshot.stats import paired_difference, reliability_bins, roc_points, summarise
from medcl.models import Encoder
from medcl.report import ReportData
from medcl.report.figures import HEAD_LABELS, SOURCE_LABELS


def evaluation_cohort(cohort: Cohort) -> Cohort:
    """Labelled scans of the ``test`` split (never seen by pretraining), else all labelled."""
    test = cohort.select(split="test", labelled=True)
    return test if len(test) else cohort.select(labelled=True)


def pca_cohort(cohort: Cohort) -> Cohort:
    """The scans the raw-voxel PCA is fitted on: the ``train`` split (the unlabelled pretraining
    scans, labels unused) when it has 2+ scans, else the evaluation scans (still no labels)."""
    train = cohort.select(split="train")
    return train if len(train) >= 2 else evaluation_cohort(cohort)


@dataclass
class FewShotOutput:
    results: dict            # source -> head -> shot -> metrics (summarise)
    features: dict           # source -> (N, D) features of the evaluation cohort
    cohort: Cohort | None
    predictions: dict = field(default_factory=dict)   # source -> head -> shot -> EpisodePredictions
    scratch: dict = field(default_factory=dict)       # shot -> metrics of the from-scratch 3D ResNet
    ceiling: dict = field(default_factory=dict)       # source -> metrics of the linear probe on all labels
    paired: list = field(default_factory=list)
    budget: dict = field(default_factory=dict)
    embeddings: dict = field(default_factory=dict)
    rocs: dict = field(default_factory=dict)
    reliability: dict = field(default_factory=dict)
    confusion_shot: str = ""
    timings: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    subjects: np.ndarray | None = None

    def counts(self) -> dict:
        """Counts only (never identifiers) of the evaluated scans."""
        if self.cohort is not None:
            return self.cohort.counts()
        names, n = np.unique(self.labels, return_counts=True)
        return {"scans": int(len(self.labels)), "subjects": int(len(np.unique(self.subjects))),
                "labels": {str(a): int(b) for a, b in zip(names, n)}}


def confusion_shot(shots: list[str]) -> str:
    """The K the per-K figures and tables show: 5 when evaluated, else the largest."""
    return "5" if "5" in shots else max(shots, key=int) if shots else ""


def _spec(cfg: Config) -> EvalSpec:
    f = cfg.fewshot
    options = {"logreg": {"Cs": tuple(f.logreg_Cs), "C_fallback": f.logreg_C}, "knn": {"k": f.knn_k}}
    return EvalSpec(list(f.shots), tuple(f.heads), f.n_query, f.n_episodes, {"logreg": f.logreg_episodes}, f.seed,
                    None, f.n_boot, options)


def evaluate_encoders(cfg: Config, cohort: Cohort, encoders: dict[str, Encoder], view_size: int | None = None,
                      log=print) -> FewShotOutput:
    """Every encoder and baseline, every head, the same episodes (same seed) for all of them."""
    f = cfg.fewshot
    view_size = view_size or cfg.augment.view_size
    eval_set = evaluation_cohort(cohort)
    if len(eval_set) == 0:
        raise ValueError(f"{cohort.root}: no labelled scans to evaluate few-shot heads on")
    timings: dict = {}
    t = time.perf_counter()
    views = cohort_views(eval_set, view_size)
    features = {name: embed_views(enc, views) for name, enc in encoders.items()}
    timings["embed"] = time.perf_counter() - t
    if "raw_voxels" in f.baselines:
        t = time.perf_counter()
        fit_set = pca_cohort(cohort)
        fit_views = views if fit_set.rows == eval_set.rows else cohort_views(fit_set, view_size)
        features["raw_voxels"] = pca_features(torch.stack(fit_views).numpy(), torch.stack(views).numpy(),
                                              f.pca_components).astype(np.float32)
        timings["pca"] = time.perf_counter() - t
    out = evaluate_features(cfg, features, eval_set.labels, eval_set.subjects, torch.stack(views), view_size)
    out.cohort = eval_set
    out.timings = {**{k: round(v, 2) for k, v in timings.items()}, **out.timings}
    return out


def evaluate_features(cfg: Config, features: dict, labels, subjects, views: torch.Tensor | None = None,
                      view_size: int | None = None) -> FewShotOutput:
    """Every head on every feature set (``source -> (N, D)``), the same episodes for all; the
    from-scratch ResNet on ``views`` ``(N, 1, S, S, S)`` (skipped when ``None``), the linear
    probe, paired differences, ROC and reliability data, label-budget check, t-SNE maps."""
    f = cfg.fewshot
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    n_subjects = len(np.unique(subjects))
    timings: dict = {}
    t = time.perf_counter()
    results, predictions, batches = run_heads(features, labels, subjects, _spec(cfg))
    timings["heads"] = time.perf_counter() - t
    shots = sorted(batches, key=int)
    out = FewShotOutput(results, features, None, predictions, confusion_shot=confusion_shot(shots), labels=labels,
                        subjects=subjects)
    scratch_pred = {}
    if "scratch" in f.baselines and shots and views is not None:
        t = time.perf_counter()
        size = min(f.scratch_view_size, view_size or views.shape[-1])
        for k in shots:
            batch = batches[k].first(f.scratch_episodes)
            scratch_pred[k] = scratch_predictions(views, labels, subjects, batch, f.scratch_widen, f.scratch_steps,
                                                  f.scratch_lr, size, f.seed)
            out.scratch[k] = summarise(scratch_pred[k], f.n_boot, f.seed, n_subjects)
        timings["scratch"] = time.perf_counter() - t
    if f.probe:
        t = time.perf_counter()
        for name, feats in features.items():
            try:
                out.ceiling[name] = summarise(linear_probe(feats, labels, subjects, f.logreg_Cs, f.probe_folds, f.seed,
                                                           f.logreg_C), f.n_boot, f.seed, n_subjects)
            except ValueError as exc:       # e.g. a class with a single subject: no fold can test it
                warnings.warn(f"linear probe on {name} skipped: {exc}", stacklevel=2)
        timings["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    out.paired = _paired(predictions, scratch_pred, f.primary_head, f.n_boot, f.seed, n_subjects)
    k = out.confusion_shot
    h = f.primary_head
    for name in predictions:
        if k in predictions[name].get(h, {}):
            p = predictions[name][h][k]
            out.rocs[name] = roc_points(p)
            out.reliability[f"{SOURCE_LABELS.get(name, name)}, {h}"] = {**reliability_bins(p),
                                                                       "ece": results[name][h][k]["ece"]}
    if k in scratch_pred:
        out.rocs["scratch"] = roc_points(scratch_pred[k])
        out.reliability[SOURCE_LABELS["scratch"]] = {**reliability_bins(scratch_pred[k]), "ece": out.scratch[k]["ece"]}
    timings["statistics"] = time.perf_counter() - t
    if f.budget_method != "none" and "pretrained" in features:
        t = time.perf_counter()
        out.budget = evaluate_budget(features["pretrained"], labels, subjects, [int(s) for s in shots], f.budget_method,
                                     f.budget_random, f.seed)
        timings["budget"] = time.perf_counter() - t
    if f.embedding_map == "tsne":
        t = time.perf_counter()
        for name, feats in features.items():
            out.embeddings[name] = {"xy": tsne_map(feats, f.seed).tolist(), "labels": labels.tolist(),
                                    "method": "t-SNE (scikit-learn, CL2N features)"}
        timings["tsne"] = time.perf_counter() - t
    out.timings = {k: round(v, 2) for k, v in timings.items()}
    return out


def _paired(predictions: dict, scratch: dict, head: str, n_boot: int, seed: int, n_subjects: int) -> list[dict]:
    """Pretrained against every other source (same head), and against the from-scratch ResNet,
    per K, on shared episodes."""
    out = []
    if "pretrained" not in predictions:
        return out
    mine = predictions["pretrained"]
    for k in sorted(mine.get(head, {}), key=int):
        others = [(src, predictions[src][head][k]) for src in predictions if src != "pretrained"
                  and k in predictions[src].get(head, {})]
        if k in scratch:
            others.append(("scratch", scratch[k]))
        for src, p in others:
            d = paired_difference(mine[head][k], p, "balanced_accuracy", n_boot, seed, n_subjects)
            out.append({**d, "a": "pretrained", "b": src, "head": head, "shots": k,
                        "a_label": SOURCE_LABELS["pretrained"], "b_label": SOURCE_LABELS.get(src, src)})
    return out


def method_lines(cfg: Config, fs: FewShotOutput) -> list[str]:
    """What was done, in words, for the report's Method section."""
    f = cfg.fewshot
    n_ep = {h: (f.logreg_episodes if h == "logreg" else f.n_episodes) for h in f.heads}
    lines = [
        f"Episodes: N-way K-shot with all {len(fs.counts()['labels'])} classes, K in {list(f.shots)}, "
        f"up to {f.n_query} query subjects per class; support and query subjects are disjoint and each contributes "
        f"one scan; seed {f.seed}, so every encoder, head and baseline is scored on the same episodes "
        "(a head with fewer episodes gets the first ones).",
        "Heads on frozen features: " + "; ".join(f"{HEAD_LABELS.get(h, h)} ({n_ep[h]} episodes per K)" for h in f.heads)
        + f". Prototype and kNN heads use SimpleShot's centring by the support mean and L2 normalisation "
        f"(Wang et al. 2019); logistic regression chooses C from {list(f.logreg_Cs)} by leave-one-subject-out "
        f"cross-validation on the support set when K >= 2 (C = {f.logreg_C} at K = 1); kNN uses k = min({f.knn_k}, K).",
        "Feature sources: the pretrained encoder; the same architecture with random weights (random-init baseline)"
        + ("; raw voxels of the same evaluation view projected on their first "
           f"{f.pca_components} principal components (fitted on the unlabelled pretraining scans)"
           if "raw_voxels" in f.baselines else "") + ".",
    ]
    if "scratch" in f.baselines:
        lines.append(f"3D ResNet from scratch: a MONAI ResNet-10 (widen factor {f.scratch_widen}) trained on each episode's "
                     f"K support scans only, {f.scratch_steps} Adam steps at {f.scratch_view_size}^3 voxels with "
                     f"left-right flips, on the first {f.scratch_episodes} episodes per K. Deliberately cheap, so that "
                     "it fits the demo's time budget: a lower bound on what training from scratch can do.")
    if f.probe:
        lines.append(f"Ceiling: a linear probe (logistic regression, C by an inner cross-validation grouped by subject) on all labelled "
                     f"evaluation scans, scored by {f.probe_folds}-fold cross-validation grouped by subject.")
    lines.append(f"Confidence intervals: subject bootstrap ({f.n_boot} replicates; subjects drawn with replacement, every "
                 "metric recomputed on the same episodes with each query weighted by its subject's multiplicity; "
                 "2.5th-97.5th percentiles). The usual episodic interval (mean ± 1.96 SE over episodes) is narrower "
                 "because episodes reuse the same scans; it is shown in the all-metrics table for comparison only. "
                 "Differences between methods: paired subject bootstrap on the same episodes.")
    lines.append("Metrics, pooled over all query predictions of all episodes: accuracy, balanced accuracy, macro-F1, "
                 "Brier score, expected calibration error (10 bins, Guo et al. 2017), per-class sensitivity and "
                 "specificity; one-vs-rest ROC AUC from positive-negative pairs within episodes. With the same number of "
                 "queries of each class in every episode these equal the usual means over episodes.")
    return lines


def build_report_data(cfg: Config, fs: FewShotOutput, title: str, cohort_counts: dict, banner: str | None = None,
                      losses: list | None = None, montage: list | None = None, notes: list | None = None,
                      model_card: dict | None = None) -> ReportData:
    return ReportData(title=title, cohort=cohort_counts, config=config_to_dict(cfg), curves=fs.results,
                      primary_head=cfg.fewshot.primary_head, confusion_shot=fs.confusion_shot, losses=list(losses or []),
                      montage=list(montage or []), banner=banner, notes=list(notes or []), method=method_lines(cfg, fs),
                      ceiling=fs.ceiling, scratch=fs.scratch, paired=fs.paired, rocs=fs.rocs, reliability=fs.reliability,
                      embeddings=fs.embeddings, budget={k: {**v} for k, v in fs.budget.items()},
                      model_card=model_card or {},
                      interval=f"subject bootstrap, {cfg.fewshot.n_boot} replicates")


def _strict(o):
    """``o`` with NaN and infinities as None and numpy scalars and arrays as Python values."""
    if isinstance(o, dict):
        return {k: _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if isinstance(o, np.ndarray):
        return _strict(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_summary(path: Path, summary: dict) -> Path:
    """``summary.json`` as strict JSON: an undefined metric (an AUC with one class in the
    queries, say) is ``null``, not ``NaN``, which other JSON readers refuse."""
    path = Path(path)
    path.write_text(json.dumps(_strict(summary), indent=2, allow_nan=False))
    return path


def summary_block(cfg: Config, fs: FewShotOutput) -> dict:
    """The ``fewshot`` block of summary.json: primary head per source, then everything."""
    h = cfg.fewshot.primary_head
    keep = ("balanced_accuracy", "ci95", "balanced_accuracy_ci95_episodic", "accuracy", "accuracy_ci95", "macro_f1",
            "macro_f1_ci95", "auc", "auc_ci95", "ece", "ece_ci95", "brier", "brier_ci95", "n_episodes")
    block = {src: {k: {m: r[m] for m in keep if m in r} for k, r in heads.get(h, {}).items()}
             for src, heads in fs.results.items()}
    if fs.scratch:
        block["scratch"] = {k: {m: r[m] for m in keep if m in r} for k, r in fs.scratch.items()}
    return block


def log_to_mlflow(cfg: Config, fs: FewShotOutput) -> None:
    """Params and metrics of the evaluation on the current run (``SOURCE.HEAD.METRIC`` with step K)."""
    from medcl import tracking

    tracking.log_params({f"fewshot.{k}": v for k, v in flatten(config_to_dict(cfg)["fewshot"]).items()})
    for src, heads in fs.results.items():
        for head, by_k in heads.items():
            for k, r in by_k.items():
                tracking.log_metrics(_metric_dict(f"{src}.{head}", r), int(k))
    for k, r in fs.scratch.items():
        tracking.log_metrics(_metric_dict("scratch", r), int(k))
    for src, r in fs.ceiling.items():
        tracking.log_metrics(_metric_dict(f"{src}.probe", r), 0)
    for p in fs.paired:
        tracking.log_metrics({f"paired.{p['a']}_minus_{p['b']}.{p['head']}.balanced_accuracy": p["difference"]},
                             int(p["shots"]))
    for k, r in fs.budget.items():
        tracking.log_metrics({"budget.suggested.balanced_accuracy": r["suggested"],
                              "budget.random.balanced_accuracy": r["random_mean"]}, int(k))


def _metric_dict(prefix: str, r: dict) -> dict:
    out = {}
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "brier"):
        if m in r and r[m] == r[m]:
            out[f"{prefix}.{m}"] = r[m]
            lo, hi = r["ci95" if m == "balanced_accuracy" else f"{m}_ci95"]
            if lo == lo and hi == hi:
                out[f"{prefix}.{m}.ci95_lo"], out[f"{prefix}.{m}.ci95_hi"] = lo, hi
    return out


def write_report(data: ReportData, out_dir: Path, pdf: bool = True) -> dict:
    """``report.html``, ``report.pdf`` (headless Chromium; a warning and no PDF without it) and
    ``report_data/`` (what ``medcl report`` renders again) in ``out_dir``."""
    from medcl.report import html_to_pdf, render_report, save_report_data
    from medcl.report.browser import BrowserMissing

    out_dir = Path(out_dir)
    html = render_report(data, out_dir / "report.html")
    save_report_data(data, out_dir / "report_data")
    paths = {"html": html, "data": out_dir / "report_data", "pdf": None}
    if pdf:
        try:
            paths["pdf"] = html_to_pdf(html, out_dir / "report.pdf")
        except (BrowserMissing, RuntimeError, OSError) as exc:
            warnings.warn(f"report.pdf not written: {exc}", stacklevel=2)
    return paths


def fit_deployable_head(cfg: Config, encoder: Encoder, cohort: Cohort, k: int):
    """Fit the primary head on ``k`` labelled scans per class, one per subject, drawn by seed
    from the ``train`` split (or from all labelled scans); returns (linear head, scan keys).
    A primary head with no linear form (kNN) deploys the head its spec names (``deploy_as``)."""
    pool = cohort.select(split="train", labelled=True)
    pool = pool if len(pool) else cohort.select(labelled=True)
    rng = np.random.default_rng(cfg.fewshot.seed)
    chosen: list[int] = []
    for label in sorted(set(pool.labels.tolist())):
        subjects = sorted({pool.rows[i]["subject_key"] for i in range(len(pool)) if pool.rows[i]["label"] == label})
        picked = rng.choice(subjects, size=min(k, len(subjects)), replace=False)
        for s in picked:
            chosen.append(next(i for i in range(len(pool)) if pool.rows[i]["subject_key"] == s))
    support = Cohort(pool.root, [pool.rows[i] for i in chosen])
    feats = embed_cohort(encoder, support, cfg.augment.view_size)
    name, spec = deployable(cfg.fewshot.primary_head)
    head = spec.make(**_spec(cfg).options.get(name, {})).fit(feats, support.labels)
    return head.to_linear(), support.scan_keys.tolist()


def save_features(out: FewShotOutput, path: Path) -> None:
    np.savez_compressed(path, labels=out.labels, subjects=out.subjects,
                        **{f"features_{k}": v for k, v in out.features.items()})


def load_encoder_uri(uri: str):
    """``(encoder, meta)`` from an MLflow model URI (``models:/NAME@ALIAS``, ``runs:/ID/encoder``)
    or a local MLflow model folder logged by medcl (encoder or few-shot model), read from the
    store MLflow's client points at (the CLI sets it once, :func:`medcl.tracking.use_uri`)."""
    import mlflow

    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # MLflow raises many types; one line that names the URI
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{uri}: cannot load the encoder model ({msg[:300]})") from None
    inner = model.unwrap_python_model()
    if not hasattr(inner, "encoder") or not hasattr(inner, "meta"):
        raise ValueError(f"{uri}: not a medcl encoder or few-shot model")
    return inner.encoder.eval(), inner.meta


def run_fewshot(cfg: Config, cohort_dir: Path, encoder_uri: str, out_dir: Path, tracking_uri: str) -> dict:
    """``medcl fewshot``: evaluate a registered encoder (read from ``tracking_uri``) on a cohort's
    labelled scans against the baselines, log a ``fewshot`` run to the same store, write
    report.html/.pdf and summary.json."""
    from medcl import tracking
    from medcl.models import build_encoder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cohort = Cohort.load(cohort_dir)
    if not len(cohort.select(labelled=True)):
        raise ValueError(f"{cohort_dir}: the cohort has no labelled scans (ingest with --labels)")
    tracking.setup(tracking_uri, f"{cfg.tracking.experiment}-fewshot", out_dir)
    encoder, meta = load_encoder_uri(encoder_uri)
    random_init = build_encoder(meta["arch"], meta["conv1_t_stride"], meta.get("widen_factor", 1.0),
                                seed=cfg.train.seed).eval()
    fs = evaluate_encoders(cfg, cohort, {"pretrained": encoder, "random_init": random_init}, meta["view_size"])
    save_features(fs, out_dir / "features.npz")
    with tracking.start_run("fewshot", tags={"medcl.stage": "fewshot", "medcl.encoder_uri": encoder_uri}) as run:
        log_to_mlflow(cfg, fs)
        data = build_report_data(cfg, fs, "medcl few-shot diagnosis evaluation",
                                 {"all": cohort.counts(), "evaluated": fs.counts()},
                                 model_card=_card(cfg, fs, encoder_uri, demo=False),
                                 notes=[f"Encoder: {encoder_uri}. Episodes draw only from the {fs.counts()['scans']} labelled "
                                        "scans of the test split (all labelled scans when there is no test split)."])
        paths = write_report(data, out_dir, cfg.fewshot.pdf)
        for key in ("html", "pdf"):
            if paths[key] is not None:
                tracking.log_artifact(paths[key])
        tracking.log_artifact(paths["data"] / "report_data.json", "report_data")
        tracking.log_artifact(paths["data"] / "report_arrays.npz", "report_data")
    summary = {"cohort": fs.counts(), "fewshot": summary_block(cfg, fs), "fewshot_all_heads": fs.results,
               "ceiling": fs.ceiling, "paired": fs.paired, "budget": fs.budget,
               "report": {"html": str(paths["html"]), "pdf": str(paths["pdf"]) if paths["pdf"] else None},
               "mlflow": {"tracking_uri": tracking_uri, "fewshot_run_id": run.run_id,
                          "encoder_uri": encoder_uri},
               "timings_seconds": {**fs.timings, "total": round(time.perf_counter() - t0, 1)}}
    write_summary(out_dir / "summary.json", summary)
    return summary


def _card(cfg: Config, fs: FewShotOutput, encoder: str, demo: bool, deploy_shots: int | None = None) -> dict:
    h = cfg.fewshot.primary_head
    k = fs.confusion_shot
    r = fs.results.get("pretrained", {}).get(h, {}).get(k)
    ev = (f"{HEAD_LABELS.get(h, h)} head, K={k}: balanced accuracy {r['balanced_accuracy']:.3f} "
          f"[95% CI {r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], ROC AUC {r['auc']:.3f}, ECE {r['ece']:.3f} "
          f"(subject bootstrap), over {r['n_episodes']} episodes.") if r else "Not evaluated."
    limitations = [
        f"Evaluated on {fs.counts()['subjects']} subjects only: the intervals are wide, and a new cohort "
        "(other scanners, sequences, populations) can score outside them.",
        "Few-shot heads are fitted on K scans per class: which scans are labelled matters (see 'Which scans to label first').",
        "Probabilities are not calibrated for clinical use (see the reliability diagram).",
    ]
    if demo:
        limitations.insert(0, "Simulated pathology on real anatomy: the classes are made by editing one template; "
                              "nothing here says anything about real diagnosis.")
    return {"model": f"Encoder {encoder} (frozen) with a {HEAD_LABELS.get(h, h)} head"
                     + (f" fitted on {deploy_shots} labelled scans per class." if deploy_shots else "."),
            "intended_use": "Research on MRI representation learning and few-shot classification. Not a medical "
                            "device; not for clinical decisions.",
            "data": ("Demo data: simulated pathology on real anatomy (the MNI ICBM152 2009 template with random "
                     "deformations, lesions and atrophy); not patients. " if demo else "")
                    + f"Evaluation set: {fs.counts()['scans']} labelled scans of "
                      f"{fs.counts()['subjects']} subjects ({', '.join(f'{c}: {n}' for c, n in fs.counts()['labels'].items())}).",
            "evaluation": ev, "limitations": limitations}


def suggest_labels(cohort_dir: Path, encoder_uri: str, n: int, method: str = "kmedoids", seed: int = 0,
                   include_labelled: bool = False) -> list[dict]:
    """``medcl suggest-labels``: the ``n`` scans to label first (one per subject), ranked, from
    the cohort's unlabelled scans (all scans with ``include_labelled`` or when none is
    unlabelled), chosen in the encoder's embedding space. Rows: rank, scan_key, subject_key."""
    from medcl.fewshot.budget import suggest

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
    feats = embed_cohort(encoder, pool, meta["view_size"])
    picked = suggest(feats, pool.subjects, n, method, seed)
    return [{"rank": r + 1, "scan_key": pool.rows[i]["scan_key"], "subject_key": pool.rows[i]["subject_key"]}
            for r, i in enumerate(picked)]
