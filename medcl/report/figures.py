"""The report's figures, each a function of plain data returning a PNG data URI (embedded, so
the HTML file is self-contained)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medcl.fewshot.baselines import SOURCE_LABELS  # noqa: E402
from medcl.fewshot.heads import HEADS  # noqa: E402

HEAD_LABELS = {**{name: spec.label for name, spec in HEADS.items()}, "scratch": "trained end to end"}
METRIC_LABELS = {"balanced_accuracy": "balanced accuracy", "accuracy": "accuracy", "macro_f1": "macro-F1",
                 "auc": "ROC AUC (one-vs-rest)", "ece": "expected calibration error", "brier": "Brier score"}
COLOURS = {"pretrained": "#1f77b4", "random_init": "#ff7f0e", "raw_voxels": "#2ca02c", "radiomics": "#9467bd",
           "scratch": "#d62728"}


def label(name: str, table: dict) -> str:
    return table.get(name, name.replace("_", " "))


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ci_key(metric: str) -> str:
    return "ci95" if metric == "balanced_accuracy" else f"{metric}_ci95"


def _chance(res: dict, metric: str):
    n = len(res.get("classes", []))
    if not n:
        return None
    return {"balanced_accuracy": 1 / n, "accuracy": 1 / n, "macro_f1": None, "auc": 0.5}.get(metric)


def curves_figure(curves: dict, metric: str = "balanced_accuracy", heads: list | None = None,
                  ceiling: dict | None = None, scratch: dict | None = None) -> str:
    """Metric versus shots, one panel per head, one line per feature source with its 95% CI as
    a band; the from-scratch ResNet (its own head) dashed on every panel, the linear probe on
    all labels (the ceiling) as a dotted level with its band."""
    heads = heads or sorted({h for src in curves.values() for h in src})
    fig, axes = plt.subplots(1, len(heads), figsize=(4.0 * len(heads), 3.4), squeeze=False, sharey=True)
    chance = None
    for ax, head in zip(axes[0], heads):
        for src, by_head in curves.items():
            res = by_head.get(head, {})
            ks = sorted(res, key=int)
            if not ks:
                continue
            k = np.array([int(s) for s in ks])
            m = np.array([res[s][metric] for s in ks], dtype=float)
            lo = np.array([res[s][_ci_key(metric)][0] for s in ks], dtype=float)
            hi = np.array([res[s][_ci_key(metric)][1] for s in ks], dtype=float)
            col = COLOURS.get(src)
            ax.plot(k, m, marker="o", ms=4, color=col, label=label(src, SOURCE_LABELS))
            ax.fill_between(k, lo, hi, alpha=0.18, color=col)
            chance = chance or _chance(res[ks[0]], metric)
        if scratch:
            ks = sorted(scratch, key=int)
            k = np.array([int(s) for s in ks])
            ax.plot(k, [scratch[s][metric] for s in ks], ls="--", marker="s", ms=4, color=COLOURS["scratch"],
                    label=f"{SOURCE_LABELS['scratch']} ({scratch[ks[0]]['n_episodes']} ep.)")
            ax.fill_between(k, [scratch[s][_ci_key(metric)][0] for s in ks], [scratch[s][_ci_key(metric)][1] for s in ks],
                            alpha=0.12, color=COLOURS["scratch"])
        for src, res in (ceiling or {}).items():
            ax.axhline(res[metric], color=COLOURS.get(src, "k"), ls=":", lw=1.2,
                       label=f"linear probe, all labels ({label(src, SOURCE_LABELS)})")
            if src == "pretrained":
                ax.axhspan(*res[_ci_key(metric)], color=COLOURS.get(src, "k"), alpha=0.06)
        all_k = sorted({int(s) for by_head in curves.values() for s in by_head.get(head, {})} |
                       {int(s) for s in (scratch or {})})
        if all_k:
            ax.set_xticks(all_k)
        if chance is not None:
            ax.axhline(chance, color="grey", ls="-.", lw=0.8, label="chance")
        ax.set_title(label(head, HEAD_LABELS), fontsize=9)
        ax.set_xlabel("labelled scans per class (K)")
        ax.grid(alpha=0.3)
        if metric in ("balanced_accuracy", "accuracy", "macro_f1", "auc"):
            ax.set_ylim(0, 1.02)
        elif metric == "ece":
            ax.set_ylim(0, None)
    axes[0][0].set_ylabel(label(metric, METRIC_LABELS))
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8, bbox_to_anchor=(0.5, -0.14))
    fig.suptitle(f"{label(metric, METRIC_LABELS)} versus shots (95% CI: subject bootstrap)", fontsize=10)
    fig.tight_layout()
    return png(fig)


def confusion_figure(panels: list) -> str:
    """Row-normalised confusion matrices: ``panels`` is a list of ``(title, classes, matrix)``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, classes, matrix) in zip(axes[0], panels):
        cm = np.asarray(matrix, dtype=float)
        norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return png(fig)


def roc_figure(rocs: dict) -> str:
    """Pooled one-vs-rest ROC curves: one panel per class, one line per method."""
    classes = sorted({c for r in rocs.values() for c in r["tpr"]})
    fig, axes = plt.subplots(1, max(1, len(classes)), figsize=(3.5 * max(1, len(classes)), 3.4), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        for name, r in rocs.items():
            if cls in r["tpr"]:
                src = name.split(" / ")[0]
                ax.plot(r["fpr"], r["tpr"][cls], color=COLOURS.get(src), lw=1.4,
                        label=f"{label(src, SOURCE_LABELS)} (AUC {r['auc_pooled'][cls]:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=0.8)
        ax.set_title(f"{cls} vs rest", fontsize=9)
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_aspect("equal")
        ax.legend(fontsize=6.5, loc="lower right")
    axes[0][0].set_ylabel("true-positive rate (sensitivity)")
    fig.tight_layout()
    return png(fig)


def reliability_figure(bins: dict) -> str:
    """Reliability diagrams (accuracy against confidence per bin, Guo et al. 2017), one panel per
    method, with the bin counts as a histogram."""
    fig, axes = plt.subplots(1, len(bins), figsize=(3.4 * len(bins), 3.5), squeeze=False)
    for ax, (name, b) in zip(axes[0], bins.items()):
        edges = np.asarray(b["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc = np.array([np.nan if v is None else v for v in b["accuracy"]])
        ax.bar(centres, np.nan_to_num(acc), width=width * 0.9, color="#4c72b0", alpha=0.8, label="accuracy")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
        counts = np.asarray(b["count"], dtype=float)
        ax2 = ax.twinx()
        ax2.step(centres, counts / max(counts.sum(), 1), where="mid", color="#dd8452", lw=1, label="fraction of predictions")
        ax2.set_ylim(0, 1)
        ax2.tick_params(labelsize=7)
        ax2.set_ylabel("fraction of predictions", fontsize=7, color="#dd8452")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_title(f"{name}\nECE {b.get('ece', float('nan')):.3f}", fontsize=8)
        ax.legend(fontsize=6.5, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    return png(fig)


def embedding_figure(maps: dict) -> str:
    """2-D maps of the embeddings (t-SNE), one panel per feature source, coloured by class."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.5), squeeze=False)
    for ax, (name, m) in zip(axes[0], maps.items()):
        xy, labels = np.asarray(m["xy"]), np.asarray(m["labels"])
        for cls in sorted(set(labels.tolist())):
            sel = labels == cls
            ax.scatter(xy[sel, 0], xy[sel, 1], s=18, label=cls, alpha=0.85)
        ax.set_title(f"{label(name, SOURCE_LABELS)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def loss_figure(losses: list[float]) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    ax.plot(np.arange(len(losses)), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.grid(alpha=0.3)
    return png(fig)


def _mid(vol: np.ndarray) -> np.ndarray:
    vol = np.asarray(vol)
    return vol if vol.ndim == 2 else vol[:, :, vol.shape[2] // 2]


def montage_figure(samples: list) -> str:
    """Mid-axial slices: the whole-brain evaluation view, the two random views and any local
    views of multi-crop (drawn at their own, smaller, size)."""
    cols = 3 + max(len(getattr(s, "local", [])) for s in samples)
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.2 * cols, 2.2 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples):
        local = list(getattr(s, "local", []))
        vols = [s.whole, s.view1, s.view2] + local
        names = ["whole", "view 1", "view 2"] + [f"local {j + 1}" for j in range(len(local))]
        for ax in row[len(vols):]:
            ax.axis("off")
        for ax, vol, name in zip(row, vols, names):
            ax.imshow(np.rot90(_mid(vol)), cmap="gray")
            ax.set_title(f"{s.label}: {name}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return png(fig)
