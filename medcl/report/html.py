"""The diagnosis evaluation report: one self-contained HTML file (images embedded as PNG).

Sections (each only when it has content, so that none is ever empty): banner, summary, cohort
(counts only), method, curves (every metric versus shots, every head and baseline, 95% CI
bands), metrics (all metrics at one K), confusion matrices, ROC curves, reliability diagrams,
embedding maps (t-SNE), augmentation montage, per-class sensitivity and specificity, label
budget (which scans first; how many labels: :mod:`medcl.report.trust`), pretraining loss, model card, notes, configuration.

:class:`ReportData` holds plain data only; :func:`save_report_data` / :func:`load_report_data`
write and read it (``report_data.json`` + ``report_arrays.npz``), so ``medcl report`` renders
a report again from a run's artifacts without recomputing anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcl.report import figures as fig
from medcl.report.blocks import esc, fmt as _fmt, section as _section, table as _table
from medcl.report.trust import calibration_section, curve_section, saliency_section
from medcl.report.figures import HEAD_LABELS, METRIC_LABELS, SOURCE_LABELS, label

DEMO_BANNER = ("Demo data: simulated pathology on real anatomy (MNI ICBM152 2009 template). "
               "These are not patients, and these numbers say nothing about real diagnosis.")

DATA_FILE, ARRAYS_FILE = "report_data.json", "report_arrays.npz"


@dataclass
class MontageSample:
    label: str
    whole: np.ndarray      # (S, S, S) evaluation view, or its mid-axial (S, S) slice
    view1: np.ndarray
    view2: np.ndarray
    local: list = field(default_factory=list)   # multi-crop's local views (s, s, s) or (s, s); none without it


@dataclass
class ReportData:
    title: str
    cohort: dict                        # counts only
    config: dict
    curves: dict                        # source -> head -> shot(str) -> summarise() dict
    primary_head: str
    confusion_shot: str                 # the K that the confusion matrices, ROC, reliability and tables show
    losses: list[float] = field(default_factory=list)
    montage: list[MontageSample] = field(default_factory=list)
    banner: str | None = None
    notes: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)        # how the numbers were made, one item a line
    ceiling: dict = field(default_factory=dict)            # source -> summarise() of the linear probe on all labels
    scratch: dict = field(default_factory=dict)            # shot -> summarise() of the from-scratch 3D ResNet
    paired: list[dict] = field(default_factory=list)       # paired differences (see medcl.fewshot.suite)
    rocs: dict = field(default_factory=dict)               # method name -> stats.roc_points()
    reliability: dict = field(default_factory=dict)        # method name -> stats.reliability_bins() + "ece"
    embeddings: dict = field(default_factory=dict)         # source -> {"xy", "labels", "method"}
    budget: dict = field(default_factory=dict)             # fewshot.budget.evaluate_budget() + "method"
    label_curve: dict = field(default_factory=dict)        # head -> fewshot.curve.learning_curve()
    calibration: dict = field(default_factory=dict)        # K -> ECE before/after (fewshot.suite._calibration)
    conformal: dict = field(default_factory=dict)          # K -> fewshot.conformal.set_summary()
    deployed: dict = field(default_factory=dict)           # fewshot.conformal.head_report() of the registered head
    saliency: dict = field(default_factory=dict)           # report.trust.saliency_block()
    model_card: dict = field(default_factory=dict)         # intended_use, data, model, evaluation, limitations
    interval: str = ""                                     # which interval the report shows


def _ci(res: dict, metric: str):
    return res.get("ci95" if metric == "balanced_accuracy" else f"{metric}_ci95")


def _shots(data: ReportData) -> list[str]:
    return sorted({k for src in data.curves.values() for h in src.values() for k in h} | set(data.scratch), key=int)


def _summary(data: ReportData) -> str:
    h = data.primary_head
    shots = _shots(data)
    rows = []
    for src, heads in data.curves.items():
        if h in heads:
            rows.append([esc(label(src, SOURCE_LABELS))] +
                        [_fmt(heads[h][k]["balanced_accuracy"], heads[h][k]["ci95"]) if k in heads[h] else "–" for k in shots])
    if data.scratch:
        rows.append([esc(label("scratch", SOURCE_LABELS)) + " <span class='ci'>(own head)</span>"] +
                    [_fmt(data.scratch[k]["balanced_accuracy"], data.scratch[k]["ci95"]) if k in data.scratch else "–"
                     for k in shots])
    for src, res in data.ceiling.items():
        rows.append([f"linear probe on all labels ({esc(label(src, SOURCE_LABELS))})"] +
                    [_fmt(res["balanced_accuracy"], res["ci95"])] * len(shots))
    body = (f"<p>Balanced accuracy of the <b>{esc(label(h, HEAD_LABELS))}</b> head with its 95% confidence interval "
            f"({esc(data.interval or 'see Method')}). Support and query scans of an episode always come from "
            f"different subjects; every method is scored on the same episodes.</p>"
            + _table(["method"] + [f"K={k}" for k in shots], rows))
    if data.paired:
        prow = [[esc(p["a_label"]), esc(p["b_label"]), esc(label(p["head"], HEAD_LABELS)), p["shots"],
                 _fmt(p["difference"], p["ci95"]), f"{p['p_not_better']:.3f}", str(p["n_episodes"])]
                for p in data.paired]
        body += ("<h3>Paired differences (same episodes, paired subject bootstrap)</h3>"
                 "<p>Difference in balanced accuracy, A minus B, with its 95% interval; <i>p</i> is the fraction "
                 "of bootstrap replicates in which A does not beat B.</p>"
                 + _table(["A", "B", "head", "K", "A − B", "p", "episodes"], prow))
    return _section("summary", "Few-shot balanced accuracy", body)


def _cohort(data: ReportData) -> str:
    parts = []
    for name, counts in data.cohort.items():
        if not isinstance(counts, dict):
            continue
        rows = []
        for key, value in counts.items():
            if isinstance(value, dict):
                value = ", ".join(f"{esc(str(k))}: {v}" for k, v in value.items())
            rows.append([esc(str(key)), esc(str(value))])
        parts.append(f"<h3>{esc(str(name))}</h3>" + _table(["", "count"], rows))
    body = "<p>Counts only: no identifier of any scan or subject appears in this report.</p>" + "".join(parts)
    return _section("cohort", "Cohort", body)


def _method(data: ReportData) -> str:
    items = "".join(f"<li>{esc(m)}</li>" for m in data.method)
    return _section("method", "Method", f"<ul>{items}</ul>")


def _curves(data: ReportData) -> str:
    heads = sorted({h for src in data.curves.values() for h in src},
                   key=lambda x: (x != data.primary_head, list(HEAD_LABELS).index(x) if x in HEAD_LABELS else 99))
    imgs = []
    for metric in ("balanced_accuracy", "macro_f1", "auc", "ece", "brier"):
        if not any(metric in r for src in data.curves.values() for h in src.values() for r in h.values()):
            continue
        uri = fig.curves_figure(data.curves, metric, heads, {s: r for s, r in data.ceiling.items()}, data.scratch)
        imgs.append(f"<figure><img alt='{esc(label(metric, METRIC_LABELS))} versus shots' src='{uri}'>"
                    f"<figcaption>{esc(label(metric, METRIC_LABELS))} versus K, every head (panels) and every "
                    f"feature source (lines); bands: 95% CI.</figcaption></figure>")
    return _section("curves", "Metrics versus shots", "".join(imgs))


def _metrics(data: ReportData) -> str:
    k = data.confusion_shot
    metrics = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "ece", "brier")
    rows = []
    for src, heads in data.curves.items():
        for h, by_k in heads.items():
            r = by_k.get(k)
            if r:
                rows.append([esc(label(src, SOURCE_LABELS)), esc(label(h, HEAD_LABELS)), str(r["n_episodes"])] +
                            [_fmt(r.get(m), _ci(r, m)) for m in metrics] +
                            [_fmt(None, None) if "balanced_accuracy_ci95_episodic" not in r else
                             "[{:.3f}, {:.3f}]".format(*r["balanced_accuracy_ci95_episodic"])])
    if k in data.scratch:
        r = data.scratch[k]
        rows.append([esc(label("scratch", SOURCE_LABELS)), "own head", str(r["n_episodes"])] +
                    [_fmt(r.get(m), _ci(r, m)) for m in metrics] + ["[{:.3f}, {:.3f}]".format(*r["balanced_accuracy_ci95_episodic"])])
    for src, r in data.ceiling.items():
        rows.append([esc(label(src, SOURCE_LABELS)), "linear probe, all labels", "CV"] +
                    [_fmt(r.get(m), _ci(r, m)) for m in metrics] + ["–"])
    body = (f"<p>K={esc(k)} labelled scans per class. Each cell: value [95% CI, {esc(data.interval or 'subject bootstrap')}]. "
            "Accuracy, balanced accuracy, macro-F1, AUC and Brier score are means over episodes; ECE is pooled over all "
            "query predictions. The last column is the usual episodic interval (mean ± 1.96 SE over episodes), "
            "shown for comparison: it ignores that episodes reuse the same subjects.</p>"
            + _table(["features", "head", "episodes"] + [label(m, METRIC_LABELS) for m in metrics]
                     + ["bal. acc. episodic CI"], rows, "small"))
    return _section("metrics", f"All metrics at K={k}", body)


def _confusion(data: ReportData) -> str:
    k, h = data.confusion_shot, data.primary_head
    panels = []
    for src, heads in data.curves.items():
        r = heads.get(h, {}).get(k)
        if r and "confusion" in r:
            panels.append((f"{label(src, SOURCE_LABELS)}, {h}, K={k}", r["classes"], r["confusion"]))
    if k in data.scratch:
        panels.append((f"{label('scratch', SOURCE_LABELS)}, K={k}", data.scratch[k]["classes"], data.scratch[k]["confusion"]))
    if not panels:
        return ""
    return _section("confusion", "Confusion matrices",
                    "<p>Rows: true class; columns: predicted; summed over all episodes' queries and normalised per row.</p>"
                    f"<img alt='confusion matrices' src='{fig.confusion_figure(panels)}'>")


def _roc(data: ReportData) -> str:
    return _section("roc", "ROC curves", f"<p>One-vs-rest, pooled over all episodes' queries, {esc(label(data.primary_head, HEAD_LABELS))} "
                    f"head at K={esc(data.confusion_shot)} (the AUC in the tables is the mean of per-episode AUCs).</p>"
                    f"<img alt='ROC curves' src='{fig.roc_figure(data.rocs)}'>")


def _reliability(data: ReportData) -> str:
    return _section("reliability", "Reliability diagram",
                    "<p>Accuracy of the predicted class against its probability, per confidence bin (Guo et al. 2017); "
                    "bars below the diagonal are over-confident.</p>"
                    f"<img alt='reliability diagrams' src='{fig.reliability_figure(data.reliability)}'>")


def _embeddings(data: ReportData) -> str:
    how = next(iter(data.embeddings.values())).get("method", "t-SNE")
    return _section("embeddings", "Embedding map",
                    f"<p>{esc(how)} of the evaluation scans' representations, coloured by class "
                    "(the labels are used for colour only).</p>"
                    f"<img alt='embedding map' src='{fig.embedding_figure(data.embeddings)}'>")


def _sensitivity(data: ReportData) -> str:
    k, h = data.confusion_shot, data.primary_head
    entries = [(label(src, SOURCE_LABELS), heads[h][k]) for src, heads in data.curves.items() if k in heads.get(h, {})]
    if k in data.scratch:
        entries.append((label("scratch", SOURCE_LABELS), data.scratch[k]))
    entries += [(f"linear probe ({label(s, SOURCE_LABELS)})", r) for s, r in data.ceiling.items()]
    entries = [(n, r) for n, r in entries if "sensitivity" in r]
    if not entries:
        return ""
    classes = entries[0][1]["classes"]
    rows = [[esc(n)] + [f"{_fmt(r['sensitivity'][c], r['sensitivity_ci95'][c])}<br>{_fmt(r['specificity'][c], r['specificity_ci95'][c])}"
                         for c in classes] for n, r in entries]
    return _section("sensitivity", "Per-class sensitivity and specificity",
                    f"<p>{esc(label(h, HEAD_LABELS))} head, K={esc(k)}; each cell: sensitivity (recall) on the first line, "
                    "specificity on the second, pooled over episodes, with 95% CIs.</p>"
                    + _table(["method"] + [esc(c) for c in classes], rows, "small"))


def _budget(data: ReportData) -> str:
    rows = []
    for k, r in sorted(data.budget.items(), key=lambda kv: int(kv[0])):
        rows.append([k, str(r["budget"]), f"{r['suggested']:.3f}", f"{r['suggested_classes_covered']}/{r['n_classes']}",
                     _fmt(r["random_mean"], r["random_95"]), f"{r['fraction_random_below']:.2f}",
                     f"{r['stratified_random_mean']:.3f}"])
    method = next(iter(data.budget.values()))["method"]
    verdict = []
    for k, r in sorted(data.budget.items(), key=lambda kv: int(kv[0])):
        better = r["suggested"] > r["random_95"][1]
        worse = r["suggested"] < r["random_95"][0]
        verdict.append(f"K={k}: " + ("suggested beat random" if better else "suggested worse than random" if worse
                                     else "no clear difference from random"))
    return _section("budget", "Which scans to label first",
                    f"<p><code>medcl suggest-labels</code> ({esc(method)} in the pretrained embedding space, no labels used) "
                    "against random picks of the same number of scans, each scored with the prototype head on all "
                    "other subjects (balanced accuracy). Random range: 2.5th–97.5th percentile of the random draws. "
                    "Stratified random (K per class) needs the labels and is shown for reference.</p>"
                    + _table(["K", "scans", "suggested", "classes covered", "random [2.5%, 97.5%]",
                              "random draws beaten", "stratified random"], rows)
                    + "<p>" + esc("; ".join(verdict)) + ".</p>")


def _model_card(data: ReportData) -> str:
    mc = data.model_card
    parts = []
    if data.banner:
        parts.append(f"<div class='banner'>{esc(data.banner)}</div>")
    for key, title in (("model", "Model"), ("intended_use", "Intended use"), ("data", "Data"),
                       ("evaluation", "Evaluation")):
        if mc.get(key):
            parts.append(f"<h3>{title}</h3><p>{esc(mc[key])}</p>")
    if mc.get("limitations"):
        parts.append("<h3>Limitations</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in mc["limitations"]) + "</ul>")
    return _section("model-card", "Model card", "".join(parts))


CSS = """body{font-family:system-ui,'DejaVu Sans',sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
.banner{background:#fff3cd;border:1px solid #e0b84c;padding:.8em;font-weight:600;margin:.5em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;font-size:.85em;vertical-align:top}
table.small td,table.small th{font-size:.75em}.ci{color:#666;font-size:.9em}
section{margin:1.6em 0;break-inside:avoid-page}figure{margin:.8em 0;break-inside:avoid}img{max-width:100%;height:auto}
figcaption{font-size:.8em;color:#555}pre{background:#f6f6f6;padding:.6em;font-size:.75em;overflow:auto;white-space:pre-wrap}
nav a{margin-right:.8em;font-size:.85em}
@media print{body{max-width:none;margin:0}nav{display:none}section{break-inside:auto}img{break-inside:avoid}}"""


def render_report(data: ReportData, path: Path) -> Path:
    """Write the report to ``path`` and return it."""
    sections = [_summary(data), _cohort(data) if data.cohort else "", _method(data) if data.method else "",
                _curves(data) if data.curves else "", _metrics(data) if data.curves else "", _confusion(data),
                _roc(data) if data.rocs else "", _reliability(data) if data.reliability else "",
                calibration_section(data.calibration, data.conformal, data.deployed)
                if data.calibration or data.conformal else "",
                saliency_section(data.saliency) if data.saliency.get("examples") else "",
                _embeddings(data) if data.embeddings else ""]
    if data.montage:
        sections.append(_section("montage", "Augmentation pairs",
                                 "<p>Mid-axial slices of the whole-foreground view that evaluation embeds and of two "
                                 "random training views (what contrastive pretraining compares), then of the small "
                                 "local views of multi-crop when the run used them (augment.local_views).</p>"
                                 f"<img alt='augmentation montage' src='{fig.montage_figure(data.montage)}'>"))
    sections += [_sensitivity(data), _budget(data) if data.budget else "",
                 curve_section(data.label_curve) if data.label_curve else ""]
    if data.losses:
        sections.append(_section("training", "Pretraining loss",
                                 f"<img alt='pretraining loss' src='{fig.loss_figure(data.losses)}'>"))
    sections.append(_model_card(data) if data.model_card else "")
    if data.notes:
        sections.append(_section("notes", "Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in data.notes) + "</ul>"))
    sections.append(_section("config", "Configuration", "<pre>" + esc(json.dumps(data.config, indent=2)) + "</pre>"))
    sections = [s for s in sections if s]
    ids = [s.split("'", 2)[1] for s in sections]
    nav = "<nav>" + "".join(f"<a href='#{i}'>{i.replace('-', ' ')}</a>" for i in ids) + "</nav>"
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{esc(data.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{esc(data.title)}</h1>"]
    if data.banner:
        parts.append(f"<div class='banner' id='banner'>{esc(data.banner)}</div>")
    parts += [nav, *sections, "</body></html>"]
    path = Path(path)
    path.write_text("\n".join(parts))
    return path


def save_report_data(data: ReportData, folder: Path) -> Path:
    """``report_data.json`` (everything but the montage) and ``report_arrays.npz`` (the
    montage's mid-axial slices) in ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plain = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.name != "montage"}
    (folder / DATA_FILE).write_text(json.dumps(plain, indent=1, default=_json_default))
    arrays = {}
    for i, s in enumerate(data.montage):
        for part in ("whole", "view1", "view2"):
            arrays[f"{i}_{part}"] = fig._mid(getattr(s, part)).astype(np.float32)
        for j, vol in enumerate(s.local):
            arrays[f"{i}_local{j}"] = fig._mid(vol).astype(np.float32)
    with open(folder / ARRAYS_FILE, "wb") as fh:
        np.savez_compressed(fh, labels=np.asarray([s.label for s in data.montage], dtype=str), **arrays)
    return folder


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_report_data(folder: Path) -> ReportData:
    """The :class:`ReportData` that :func:`save_report_data` wrote in ``folder``."""
    folder = Path(folder)
    try:
        plain = json.loads((folder / DATA_FILE).read_text())
    except FileNotFoundError:
        raise ValueError(f"{folder}: no {DATA_FILE} (not a medcl report folder)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{folder / DATA_FILE}: not valid JSON ({exc.msg})") from None
    known = {f.name for f in dataclasses.fields(ReportData)}
    missing = {"title", "cohort", "config", "curves", "primary_head", "confusion_shot"} - set(plain)
    if missing:
        raise ValueError(f"{folder / DATA_FILE}: missing keys {sorted(missing)}")
    montage = []
    if (folder / ARRAYS_FILE).exists():
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as z:
            for i, lab in enumerate(z["labels"].tolist()):
                local = [z[f"{i}_local{j}"] for j in range(len(z.files)) if f"{i}_local{j}" in z.files]
                montage.append(MontageSample(lab, z[f"{i}_whole"], z[f"{i}_view1"], z[f"{i}_view2"], local))
    return ReportData(**{k: v for k, v in plain.items() if k in known}, montage=montage)
