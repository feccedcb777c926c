"""What a few-shot evaluation says, in words and tables: the report's Method section, its model
card, the :class:`~medcl.report.html.ReportData` of an evaluation, and the ``fewshot`` block of
``summary.json``. Built from a :class:`~medcl.fewshot.suite.FewShotOutput` and its config."""

from __future__ import annotations

from medcl.config import Config, config_to_dict
from medcl.fewshot.suite import FewShotOutput
from medcl.report.figures import HEAD_LABELS
from medcl.report.html import ReportData

__all__ = ["method_lines", "model_card", "build_report_data", "summary_block"]


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
           if "raw_voxels" in f.baselines else "")
        + ("; radiomics features (below)" if "radiomics" in f.baselines else "") + ".",
    ]
    if "radiomics" in f.baselines:
        lines.append(_radiomics_line(f, fs.radiomics))
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


def _radiomics_line(f, info: dict) -> str:
    """The radiomics baseline in words: what, on which grid, z-scored on which scans."""
    spacing = info.get("spacing", f.radiomics_spacing)
    fit = ("the unlabelled pretraining (train split) scans' features" if info.get("fit_on", "train split") == "train split"
           else "the evaluation scans' features (no labels; the cohort has no train split)")
    return (f"Radiomics (IBSI-compliant, MIRP): {', '.join(f.radiomics_families)} features of each scan's foreground "
            f"(head) mask in 3D, grey levels discretised into {f.radiomics_bins} fixed bins, computed on a "
            f"{spacing:g} mm grid (the cached scan averaged over {spacing:g} mm blocks, the mask where at least half "
            f"covered) for speed; " + (f"{info['kept']} of {info['features']} features kept (the rest constant), " if
                                       info else "") + f"z-scored with the mean and standard deviation of {fit}, "
            "then the same heads and episodes as every other source. A hospital radiomics study's usual "
            "baseline, without feature selection or tuning.")


def _evaluation_line(cfg: Config, fs: FewShotOutput) -> str:
    h, k = cfg.fewshot.primary_head, fs.confusion_shot
    r = fs.results.get("pretrained", {}).get(h, {}).get(k)
    if not r:
        return "Not evaluated."
    return (f"{HEAD_LABELS.get(h, h)} head, K={k}: balanced accuracy {r['balanced_accuracy']:.3f} "
            f"[95% CI {r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}], ROC AUC {r['auc']:.3f}, ECE {r['ece']:.3f} "
            f"(subject bootstrap), over {r['n_episodes']} episodes.")


def model_card(cfg: Config, fs: FewShotOutput, encoder: str, demo: bool, deploy_shots: int | None = None) -> dict:
    """The report's model card: model, intended use, data, evaluation, limitations; ``demo``
    says everywhere that the data are simulated pathology on real anatomy."""
    h = cfg.fewshot.primary_head
    counts = fs.counts()
    limitations = [
        f"Evaluated on {counts['subjects']} subjects only: the intervals are wide, and a new cohort "
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
                    + f"Evaluation set: {counts['scans']} labelled scans of "
                      f"{counts['subjects']} subjects ({', '.join(f'{c}: {n}' for c, n in counts['labels'].items())}).",
            "evaluation": _evaluation_line(cfg, fs), "limitations": limitations}


def build_report_data(cfg: Config, fs: FewShotOutput, title: str, cohort_counts: dict, banner: str | None = None,
                      losses: list | None = None, montage: list | None = None, notes: list | None = None,
                      model_card: dict | None = None, deployed: dict | None = None,
                      saliency: dict | None = None) -> ReportData:
    """Everything :func:`~medcl.report.html.render_report` shows of an evaluation."""
    return ReportData(title=title, cohort=cohort_counts, config=config_to_dict(cfg), curves=fs.results,
                      primary_head=cfg.fewshot.primary_head, confusion_shot=fs.confusion_shot, losses=list(losses or []),
                      montage=list(montage or []), banner=banner, notes=list(notes or []), method=method_lines(cfg, fs),
                      ceiling=fs.ceiling, scratch=fs.scratch, paired=fs.paired, rocs=fs.rocs, reliability=fs.reliability,
                      embeddings=fs.embeddings, budget={k: {**v} for k, v in fs.budget.items()},
                      label_curve=fs.curve, calibration=fs.calibration, conformal=fs.conformal,
                      deployed=deployed or {}, saliency=saliency or {}, model_card=model_card or {},
                      interval=f"subject bootstrap, {cfg.fewshot.n_boot} replicates")


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


def seed_spread_lines(seeds: dict | None, report: bool = False) -> list[str]:
    """The mean ± sd over pretraining seeds (``demo.seeds`` > 1; nothing for one seed): one line
    per K for the console, or one sentence for the report's notes (``report``)."""
    if not seeds or seeds.get("n", 1) < 2:
        return []
    ms = seeds["mean_sd"]

    def cells(k: str, sep: str) -> str:
        return sep.join(f"{src.replace('_', ' ')} {ms[src][k]['mean']:.3f} ± {ms[src][k]['sd']:.3f}"
                        for src in ms if k in ms[src])

    if report:
        per_k = "; ".join(f"K={k}: {cells(k, ', ')}" for k in ms["pretrained"])
        return [f"Over {seeds['n']} pretraining seeds {seeds['train_seeds']} (mean ± sd of the balanced accuracy, "
                f"same episodes): {per_k}. The rest of this report is the first seed's."]
    return ([f"over {seeds['n']} pretraining seeds {seeds['train_seeds']} (mean ± sd):"]
            + [f"K={k:>2}  {cells(k, '   ')}" for k in ms["pretrained"]])
