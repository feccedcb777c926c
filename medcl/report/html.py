"""The diagnosis evaluation report: one self-contained HTML file (images embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DEMO_BANNER = ("Demo data: simulated pathology on real anatomy (MNI ICBM152 2009 template). "
               "These are not patients, and these numbers say nothing about real diagnosis.")


@dataclass
class MontageSample:
    label: str
    whole: np.ndarray      # (S, S, S) evaluation view
    view1: np.ndarray
    view2: np.ndarray


@dataclass
class ReportData:
    title: str
    cohort: dict                        # counts only
    config: dict
    curves: dict                        # encoder -> head -> shot(str) -> {"balanced_accuracy", "ci95", ...}
    primary_head: str
    confusion_shot: str                 # which shot count the confusion matrix shows
    losses: list[float] = field(default_factory=list)
    montage: list[MontageSample] = field(default_factory=list)
    banner: str | None = None
    notes: list[str] = field(default_factory=list)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curves_figure(curves: dict, head: str, metric: str = "balanced_accuracy") -> str:
    """Metric versus shots, one line per encoder, 95% CI as a band."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    chance = None
    for name, heads in curves.items():
        res = heads.get(head, {})
        shots = sorted(res, key=int)
        if not shots:
            continue
        k = np.array([int(s) for s in shots])
        m = np.array([res[s][metric] for s in shots])
        lo = np.array([res[s]["ci95"][0] for s in shots])
        hi = np.array([res[s]["ci95"][1] for s in shots])
        ax.plot(k, m, marker="o", label=name)
        ax.fill_between(k, lo, hi, alpha=0.2)
        chance = 1.0 / len(res[shots[0]].get("classes", [0, 0]))
    if chance:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("labelled scans per class (K)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{head} head: {metric.replace('_', ' ')} (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_figure(classes: list[str], matrix: list[list[int]], title: str) -> str:
    cm = np.asarray(matrix, dtype=float)
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def loss_figure(losses: list[float]) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    ax.plot(np.arange(len(losses)), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.grid(alpha=0.3)
    return _png(fig)


def montage_figure(samples: list[MontageSample]) -> str:
    """Mid-axial slices: the whole-brain evaluation view and the two random views."""
    fig, axes = plt.subplots(len(samples), 3, figsize=(6.5, 2.2 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples):
        for ax, vol, name in zip(row, (s.whole, s.view1, s.view2), ("whole", "view 1", "view 2")):
            ax.imshow(np.rot90(vol[:, :, vol.shape[2] // 2]), cmap="gray")
            ax.set_title(f"{s.label}: {name}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _table(curves: dict, head: str) -> str:
    shots = sorted({s for h in curves.values() for s in h.get(head, {})}, key=int)
    rows = ["<tr><th>encoder</th>" + "".join(f"<th>K={s}</th>" for s in shots) + "</tr>"]
    for name, heads in curves.items():
        cells = []
        for s in shots:
            r = heads.get(head, {}).get(s)
            cells.append(f"<td>{r['balanced_accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]</td>"
                         if r else "<td>–</td>")
        rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return "<table>" + "".join(rows) + "</table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
.banner{background:#fff3cd;border:1px solid #e0b84c;padding:.8em;font-weight:600}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;font-size:.9em}
section{margin:1.5em 0}img{max-width:100%}pre{background:#f6f6f6;padding:.6em;font-size:.8em;overflow:auto}"""


def render_report(data: ReportData, path: Path) -> Path:
    """Write the report to ``path`` and return it."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(data.title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{esc(data.title)}</h1>"]
    if data.banner:
        parts.append(f"<div class='banner' id='banner'>{esc(data.banner)}</div>")
    heads = sorted({h for enc in data.curves.values() for h in enc})
    parts.append("<section id='summary'><h2>Few-shot balanced accuracy</h2>"
                 f"<p>Mean over episodes with its 95% confidence interval; primary head: "
                 f"<b>{esc(data.primary_head)}</b>. Support and query scans of an episode always "
                 f"come from different subjects.</p>")
    for h in heads:
        parts.append(f"<h3>{esc(h)} head</h3>{_table(data.curves, h)}"
                     f"<img alt='{esc(h)} curve' src='{curves_figure(data.curves, h)}'>")
    parts.append("</section>")
    first = next(iter(data.curves.values()), {}).get(data.primary_head, {}).get(data.confusion_shot)
    if first:
        enc = next(iter(data.curves))
        parts.append("<section id='confusion'><h2>Confusion matrix</h2>"
                     f"<img alt='confusion matrix' src='{confusion_figure(first['classes'], first['confusion'], f'{enc}, {data.primary_head}, K={data.confusion_shot}, summed over episodes')}'></section>")
    parts.append("<section id='cohort'><h2>Cohort</h2><pre>" + esc(json.dumps(data.cohort, indent=2)) + "</pre></section>")
    if data.losses:
        parts.append(f"<section id='training'><h2>Pretraining loss</h2><img alt='loss' src='{loss_figure(data.losses)}'></section>")
    if data.montage:
        parts.append("<section id='montage'><h2>Augmentation pairs</h2><p>Mid-axial slices of the "
                     "whole-foreground view that evaluation embeds and of two random training views.</p>"
                     f"<img alt='augmentation montage' src='{montage_figure(data.montage)}'></section>")
    if data.notes:
        parts.append("<section id='notes'><h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in data.notes) + "</ul></section>")
    parts.append("<section id='config'><h2>Configuration</h2><pre>" + esc(json.dumps(data.config, indent=2)) + "</pre></section>")
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts))
    return path
