"""The few-shot evaluation suite: frozen encoders -> embeddings -> every head of
:data:`~medcl.fewshot.heads.HEADS` and every baseline on the same episodes -> metrics with
subject-bootstrap CIs, paired comparisons, ROC and reliability data, label-budget check, t-SNE
maps; and the deployable head (fitted on K labelled scans per class).

Which scans are evaluated is decided here: the labelled scans of the ``test`` split, never seen
by pretraining (:func:`evaluation_cohort`); the raw-voxel PCA is fitted on the unlabelled
pretraining scans (:func:`pca_cohort`), and the radiomics features are z-scored with those same
scans' means and standard deviations (:func:`radiomics_baseline`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from medcl import tracking
from medcl.config import Config, FewShotConfig, config_to_dict, flatten
from medcl.data.cohort import Cohort
from medcl.fewshot.baselines import SOURCE_LABELS, linear_probe, pca_features, scratch_predictions
from medcl.fewshot.budget import evaluate_budget
from medcl.fewshot.calibrate import (METHOD as CALIBRATION_METHOD, VECTOR_METHOD, calibrated, cross_fitted_scaling,
                                     episode_temperatures, support_temperature)
from medcl.fewshot.conformal import calibrate_head, episode_sets, set_summary
from medcl.fewshot.curve import learning_curve
from medcl.fewshot.embed import cohort_views, embed_cohort, embed_views, tsne_map
from medcl.fewshot.episodes import max_shots
from medcl.fewshot.evaluate import EvalSpec, run_heads
from medcl.fewshot.heads import LinearHead, deployable
from medcl.fewshot.radiomics import cache_path, cohort_radiomics, kept_columns, standardise
from medcl.fewshot.stats import paired_difference, reliability_bins, roc_points, summarise
from medcl.models import Encoder

__all__ = ["FewShotOutput", "evaluation_cohort", "pca_cohort", "confusion_shot", "head_options", "eval_spec",
           "radiomics_baseline", "radiomics_fit_cohort", "evaluate_encoders", "evaluate_features", "fit_deployable_head",
           "calibrate_deployable_head", "save_features", "log_to_mlflow"]


def evaluation_cohort(cohort: Cohort) -> Cohort:
    """Labelled scans of the ``test`` split (never seen by pretraining), else all labelled."""
    test = cohort.select(split="test", labelled=True)
    return test if len(test) else cohort.select(labelled=True)


def pca_cohort(cohort: Cohort) -> Cohort:
    """The scans the raw-voxel PCA is fitted on: the ``train`` split (the unlabelled pretraining
    scans, labels unused) when it has 2+ scans, else the evaluation scans (still no labels)."""
    train = cohort.select(split="train")
    return train if len(train) >= 2 else evaluation_cohort(cohort)


def radiomics_fit_cohort(f: FewShotConfig, cohort: Cohort) -> Cohort:
    """The scans the radiomics z-scoring is fitted on: :func:`pca_cohort`'s, the first
    ``fewshot.radiomics_fit_scans`` of them when that is set (manifest order, i.e. by
    pseudonymous scan key: a label-blind subset); a mean and a standard deviation per feature
    need far fewer scans than the pretraining pool has, and each costs a radiomics extraction."""
    fit = pca_cohort(cohort)
    n = f.radiomics_fit_scans
    return fit.with_rows(fit.rows[:n]) if 0 < n < len(fit) else fit


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
    curve: dict = field(default_factory=dict)         # head -> learning_curve() of the pretrained features
    calibration: dict = field(default_factory=dict)   # K -> ECE/Brier before and after temperature scaling
    conformal: dict = field(default_factory=dict)     # K -> coverage and set size of the prediction sets
    embeddings: dict = field(default_factory=dict)
    rocs: dict = field(default_factory=dict)
    reliability: dict = field(default_factory=dict)
    confusion_shot: str = ""
    timings: dict = field(default_factory=dict)
    radiomics: dict = field(default_factory=dict)     # how the radiomics baseline was computed (radiomics_baseline)
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


def head_options(f: FewShotConfig) -> dict:
    """The config's options of each head (keyword arguments of its class), for evaluation and
    deployment alike."""
    return {"logreg": {"Cs": tuple(f.logreg_Cs), "C_fallback": f.logreg_C}, "knn": {"k": f.knn_k}}


def eval_spec(f: FewShotConfig) -> EvalSpec:
    return EvalSpec(list(f.shots), tuple(f.heads), f.n_query, f.n_episodes, {"logreg": f.logreg_episodes}, f.seed,
                    None, f.n_boot, head_options(f))


class StageClock:
    """The few-shot stage's parts: seconds per part (``timings``) and, with ``progress``, one bar
    of ``total`` parts whose postfix names the part running."""

    def __init__(self, total: int = 0, progress: bool = False):
        self.timings: dict[str, float] = {}
        self.bar = tqdm(total=total, desc="few-shot", unit="part", disable=not progress, dynamic_ncols=True)

    @contextmanager
    def part(self, key: str):
        self.bar.set_postfix_str(key)
        t = time.perf_counter()
        yield
        self.timings[key] = time.perf_counter() - t
        self.bar.update()

    def rounded(self) -> dict[str, float]:
        self.bar.close()
        return {k: round(v, 2) for k, v in self.timings.items()}


def _feature_parts(f: FewShotConfig, sources, views) -> dict[str, bool]:
    """Which parts :func:`evaluate_features` runs after the heads and the statistics."""
    pre = "pretrained" in sources
    return {"scratch": "scratch" in f.baselines and bool(f.shots) and views is not None, "probe": f.probe,
            "budget": f.budget_method != "none" and pre, "calibration": f.calibration != "none" and pre,
            "curve": bool(f.curve_shots) and pre, "tsne": f.embedding_map == "tsne"}


def radiomics_baseline(f: FewShotConfig, eval_set: Cohort, fit_set: Cohort) -> tuple[np.ndarray, dict]:
    """The radiomics baseline's ``(N, F)`` float32 features of ``eval_set`` and how they were made.

    Features of every scan of both sets (:func:`~medcl.fewshot.radiomics.cohort_radiomics`,
    ``fewshot.radiomics_*`` settings, cached in the cohort folder), then ``eval_set``'s z-scored
    with the mean and standard deviation of ``fit_set``'s: the unlabelled pretraining scans
    (:func:`pca_cohort`, as the raw-voxel PCA; no label, no support or query scan), so every
    episode sees the same features and the heads' own centring (SimpleShot, logistic
    regression) does the rest. Columns constant or non-finite on ``fit_set`` are dropped."""
    keys = {r["scan_key"] for r in eval_set.rows}
    both = eval_set.with_rows(eval_set.rows + [r for r in fit_set.rows if r["scan_key"] not in keys])
    X, names, info = cohort_radiomics(both, f.radiomics_spacing, f.radiomics_families, f.radiomics_bins,
                                      f.radiomics_workers)
    row = {r["scan_key"]: i for i, r in enumerate(both.rows)}
    X_eval, X_fit = X[:len(eval_set)], X[[row[r["scan_key"]] for r in fit_set.rows]]
    info.update({"features": len(names), "kept": int(kept_columns(X_fit).sum()), "fit_scans": len(fit_set),
                 "fit_on": "evaluation scans" if {r["scan_key"] for r in fit_set.rows} == keys else "train split",
                 "families": list(f.radiomics_families), "bins": f.radiomics_bins,
                 "cache": str(cache_path(both, f.radiomics_spacing, f.radiomics_families, f.radiomics_bins))})
    return standardise(X_fit, X_eval).astype(np.float32), info


def evaluate_encoders(cfg: Config, cohort: Cohort, encoders: dict[str, Encoder], view_size: int | None = None,
                      log=print, progress: bool = False) -> FewShotOutput:
    """Every encoder and baseline, every head, the same episodes (same seed) for all of them;
    ``progress``: one bar over the parts of the stage."""
    f = cfg.fewshot
    view_size = view_size or cfg.augment.view_size
    eval_set = evaluation_cohort(cohort)
    if len(eval_set) == 0:
        raise ValueError(f"{cohort.root}: no labelled scans to evaluate few-shot heads on")
    baselines = [b for b in ("raw_voxels", "radiomics") if b in f.baselines]
    parts = 3 + len(baselines) + sum(_feature_parts(f, encoders, True).values())   # + embed, heads, statistics
    clock = StageClock(parts, progress)
    with clock.part("embed"):
        views = cohort_views(eval_set, view_size)
        features = {name: embed_views(enc, views) for name, enc in encoders.items()}
    if "raw_voxels" in f.baselines:
        with clock.part("pca"):
            fit_set = pca_cohort(cohort)
            fit_views = views if fit_set.rows == eval_set.rows else cohort_views(fit_set, view_size)
            features["raw_voxels"] = pca_features(torch.stack(fit_views).numpy(), torch.stack(views).numpy(),
                                                  f.pca_components).astype(np.float32)
    radiomics_info = {}
    if "radiomics" in f.baselines:
        with clock.part("radiomics"):
            features["radiomics"], radiomics_info = radiomics_baseline(f, eval_set, radiomics_fit_cohort(f, cohort))
        (tqdm.write if progress else log)(f"radiomics: {radiomics_info['computed']} scans computed, "
                                          f"{radiomics_info['cached']} from the cache ({radiomics_info['cache']})")
    out = evaluate_features(cfg, features, eval_set.labels, eval_set.subjects, torch.stack(views), view_size, clock)
    out.cohort, out.radiomics = eval_set, radiomics_info
    return out


def evaluate_features(cfg: Config, features: dict, labels, subjects, views: torch.Tensor | None = None,
                      view_size: int | None = None, clock: StageClock | None = None) -> FewShotOutput:
    """Every head on every feature set (``source -> (N, D)``), the same episodes for all; the
    from-scratch ResNet on ``views`` ``(N, 1, S, S, S)`` (skipped when ``None``), the linear
    probe, paired differences, ROC and reliability data, label-budget check, t-SNE maps."""
    f = cfg.fewshot
    labels, subjects = np.asarray(labels), np.asarray(subjects)
    clock, run = clock or StageClock(), _feature_parts(f, features, views)
    with clock.part("heads"):
        results, predictions, batches = run_heads(features, labels, subjects, eval_spec(f))
    shots = sorted(batches, key=int)
    out = FewShotOutput(results, features, None, predictions, confusion_shot=confusion_shot(shots), labels=labels,
                        subjects=subjects)
    scratch_pred = {}
    if run["scratch"] and shots:
        with clock.part("scratch"):
            scratch_pred = _scratch(f, out, views, batches, shots, view_size)
    if run["probe"]:
        with clock.part("probe"):
            _probe(f, out)
    with clock.part("statistics"):
        _statistics(f, out, scratch_pred)
    if run["budget"]:
        with clock.part("budget"):
            out.budget = evaluate_budget(features["pretrained"], labels, subjects, [int(s) for s in shots],
                                         f.budget_method, f.budget_random, f.seed)
    if run["calibration"]:
        with clock.part("calibration"):
            _calibration(f, out, batches)
    if run["curve"]:
        with clock.part("curve"):
            out.curve = _curves(f, out, batches)
    if run["tsne"]:
        with clock.part("tsne"):
            for name, feats in features.items():
                out.embeddings[name] = {"xy": tsne_map(feats, f.seed).tolist(), "labels": labels.tolist(),
                                        "method": "t-SNE (scikit-learn, CL2N features)"}
    out.timings = clock.rounded()
    return out


def _n_subjects(out: FewShotOutput) -> int:
    return len(np.unique(out.subjects))


def _calibration(f: FewShotConfig, out: FewShotOutput, batches: dict) -> None:
    """The primary head on the pretrained features, per K: temperature fitted on each episode's
    support (:mod:`medcl.fewshot.calibrate`), ECE and Brier before and after; conformal sets at
    ``conformal_coverage`` from each episode's calibration subjects (:mod:`medcl.fewshot.conformal`)."""
    h, feats = f.primary_head, out.features["pretrained"]
    opts, alpha, S = head_options(f).get(h, {}), 1.0 - f.conformal_coverage, _n_subjects(out)
    for k, p in out.predictions["pretrained"][h].items():
        batch = batches[k].first(p.n_episodes)
        T = episode_temperatures(h, feats, batch, out.subjects, **opts)
        cal = calibrated(p, T)
        after = summarise(cal, f.n_boot, f.seed, S)
        keep = ("ece", "ece_ci95", "brier", "brier_ci95")
        out.calibration[k] = {"head": h, "method": CALIBRATION_METHOD if batch.k_shot >= 2 else "none (K = 1)",
                              "temperature": [float(v) for v in np.percentile(T, [2.5, 50, 97.5])],
                              "before": {m: out.results["pretrained"][h][k][m] for m in keep},
                              "after": {m: after[m] for m in keep}}
        sets = episode_sets(h, feats, out.labels, out.subjects, batch, cal, alpha, **opts)
        out.conformal[k] = {"head": h, **set_summary(cal, sets, alpha, f.n_boot, f.seed, S)}
        if k == out.confusion_shot:
            out.reliability[f"{SOURCE_LABELS['pretrained']}, {h}, calibrated"] = {**reliability_bins(cal),
                                                                                 "ece": after["ece"]}


def _curves(f: FewShotConfig, out: FewShotOutput, batches: dict) -> dict:
    """The learning curve of each of ``curve_heads`` (those evaluated) on the pretrained
    features, over ``curve_shots`` and the evaluated K (K that leave no query subject skipped);
    the K not evaluated yet are scored here on episodes of the same seed."""
    heads = tuple(h for h in f.curve_heads if h in f.heads)
    limit = max_shots(out.labels, out.subjects)
    missing = sorted({k for k in f.curve_shots if k <= limit} - {int(k) for k in batches})
    preds = {h: dict(out.predictions["pretrained"][h]) for h in heads}
    if heads and missing:
        spec = dataclasses.replace(eval_spec(f), shots=missing, heads=heads, n_boot=0)
        _, more, _ = run_heads({"pretrained": out.features["pretrained"]}, out.labels, out.subjects, spec)
        for h in heads:
            preds[h].update(more["pretrained"][h])
    curves = {h: learning_curve(preds[h], f.curve_targets, "balanced_accuracy", f.curve_boot, f.seed,
                                _n_subjects(out)) for h in heads}
    return {h: {**c, "head": h, "source": "pretrained"} for h, c in curves.items() if c}


def _scratch(f: FewShotConfig, out: FewShotOutput, views: torch.Tensor, batches: dict, shots: list[str],
             view_size: int | None) -> dict:
    """The from-scratch 3D ResNet on the first ``scratch_episodes`` episodes of each K: its
    predictions per K; its metrics go to ``out.scratch``."""
    size = min(f.scratch_view_size, view_size or views.shape[-1])
    pred = {}
    for k in shots:
        batch = batches[k].first(f.scratch_episodes)
        pred[k] = scratch_predictions(views, out.labels, out.subjects, batch, f.scratch_widen, f.scratch_steps,
                                      f.scratch_lr, size, f.seed)
        out.scratch[k] = summarise(pred[k], f.n_boot, f.seed, _n_subjects(out))
    return pred


def _probe(f: FewShotConfig, out: FewShotOutput) -> None:
    """The linear probe on all labels (the ceiling) of every feature source."""
    for name, feats in out.features.items():
        try:
            out.ceiling[name] = summarise(linear_probe(feats, out.labels, out.subjects, f.logreg_Cs, f.probe_folds,
                                                       f.seed, f.logreg_C), f.n_boot, f.seed, _n_subjects(out))
        except ValueError as exc:       # e.g. a class with a single subject: no fold can test it
            warnings.warn(f"linear probe on {name} skipped: {exc}", stacklevel=3)


def _statistics(f: FewShotConfig, out: FewShotOutput, scratch_pred: dict) -> None:
    """Paired differences, and the ROC and reliability data of the primary head at the confusion K."""
    predictions, k, h = out.predictions, out.confusion_shot, f.primary_head
    out.paired = _paired(predictions, scratch_pred, h, f.n_boot, f.seed, _n_subjects(out))
    for name in predictions:
        if k in predictions[name].get(h, {}):
            p = predictions[name][h][k]
            out.rocs[name] = roc_points(p)
            out.reliability[f"{SOURCE_LABELS.get(name, name)}, {h}"] = {**reliability_bins(p),
                                                                       "ece": out.results[name][h][k]["ece"]}
    if k in scratch_pred:
        out.rocs["scratch"] = roc_points(scratch_pred[k])
        out.reliability[SOURCE_LABELS["scratch"]] = {**reliability_bins(scratch_pred[k]), "ece": out.scratch[k]["ece"]}


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


def fit_deployable_head(cfg: Config, encoder: Encoder, cohort: Cohort, k: int) -> tuple[LinearHead, list[str]]:
    """Fit the primary head on ``k`` labelled scans per class, one per subject, drawn by seed
    from the ``train`` split (or from all labelled scans); returns (linear head, scan keys).
    A primary head with no linear form (kNN) deploys the head its spec names (``deploy_as``).
    With ``fewshot.calibration`` on, a class with ``k`` subjects or fewer keeps one out of the
    support, and the pool's other subjects (one scan each) calibrate the head
    (:func:`calibrate_deployable_head`)."""
    pool = cohort.select(split="train", labelled=True)
    pool = pool if len(pool) else cohort.select(labelled=True)
    rng = np.random.default_rng(cfg.fewshot.seed)
    chosen: list[int] = []
    keep = 1 if cfg.fewshot.calibration != "none" else 0          # a calibration subject of each class, if need be
    for label in sorted(set(pool.labels.tolist())):
        subjects = sorted({pool.rows[i]["subject_key"] for i in range(len(pool)) if pool.rows[i]["label"] == label})
        picked = rng.choice(subjects, size=max(1, min(k, len(subjects) - keep)), replace=False)
        for s in picked:
            chosen.append(next(i for i in range(len(pool)) if pool.rows[i]["subject_key"] == s))
    support = pool.with_rows([pool.rows[i] for i in chosen])
    feats = embed_cohort(encoder, support, cfg.augment.view_size)
    name, spec = deployable(cfg.fewshot.primary_head)
    opts = head_options(cfg.fewshot).get(name, {})
    head = spec.make(**opts).fit(feats, support.labels).to_linear()
    if cfg.fewshot.calibration != "none":
        calib = _calibration_scans(pool, set(support.subjects.tolist()))
        calib_feats = embed_cohort(encoder, calib, cfg.augment.view_size) if len(calib) else np.zeros((0, feats.shape[1]))
        calibrate_deployable_head(head, calib_feats, calib.labels,
                                  partial(support_temperature, name, feats, support.labels, support.subjects, **opts))
    return head, support.scan_keys.tolist()


MIN_SCALING_SCANS = 10   # calibration scans per class for scaling fitted on them (5 folds: 8 to fit each)


def calibrate_deployable_head(head: LinearHead, features: np.ndarray, labels, support_T) -> None:
    """Temperature or vector scaling fitted on all calibration scans, their conformal scores out
    of fold (``head.calibration``: :data:`~medcl.fewshot.calibrate.VECTOR_METHOD`) when every
    class has MIN_SCALING_SCANS; else the support's cross-fitted temperature (``support_T()``)
    and split-conformal scores from every calibration scan."""
    labels = np.asarray(labels).astype(str)
    names = np.asarray(head.classes_).astype(str).tolist()
    if len(labels) and all((labels == c).sum() >= MIN_SCALING_SCANS for c in names):
        y = np.array([names.index(v) for v in labels])
        head.scale_, head.shift_, kind, A, B = cross_fitted_scaling(head.decision_function(features), y)
        head.calibration = f"{kind}: {VECTOR_METHOD}"
        calibrate_head(head, features, labels, A, B)
        return
    head.temperature, head.calibration = support_T(), CALIBRATION_METHOD
    if len(labels):
        calibrate_head(head, features, labels)


def _calibration_scans(pool: Cohort, support_subjects: set) -> Cohort:
    """One scan of every subject of ``pool`` outside the support."""
    seen: set = set()
    rows = []
    for r in pool.rows:
        if r["subject_key"] not in support_subjects and r["subject_key"] not in seen:
            seen.add(r["subject_key"])
            rows.append(r)
    return pool.with_rows(rows)


def save_features(out: FewShotOutput, path: Path) -> None:
    """The evaluated features of every source with their labels and subject keys (``.npz``)."""
    np.savez_compressed(path, labels=out.labels, subjects=out.subjects,
                        **{f"features_{k}": v for k, v in out.features.items()})


def log_to_mlflow(cfg: Config, fs: FewShotOutput) -> None:
    """Params and metrics of the evaluation on the current run (``SOURCE.HEAD.METRIC`` with step K)."""
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
    for h, c in fs.curve.items():
        for t in c.get("targets", []):
            if t["labels_per_class"] is not None:
                tracking.log_metrics({f"curve.{h}.labels_per_class_for_{t['target']:g}": t["labels_per_class"]}, 0)
    for k, r in fs.calibration.items():
        tracking.log_metrics({"calibrated.pretrained.ece": r["after"]["ece"],
                              "calibrated.pretrained.brier": r["after"]["brier"]}, int(k))
    for k, r in fs.conformal.items():
        tracking.log_metrics({"conformal.coverage": r["coverage"], "conformal.mean_set_size": r["mean_set_size"]},
                             int(k))
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
