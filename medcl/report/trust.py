"""The report's sections on what a team asks after the accuracy: how many labels it needs
(learning curve), how sure it is (calibration, prediction sets). Plain data in, HTML out."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from medcl.fewshot.curve import predict_power_law
from medcl.report.blocks import esc, fmt, section, table
from medcl.report.figures import HEAD_LABELS, label, png

__all__ = ["curve_section", "curve_figure", "labels_text", "EXTRAPOLATION_LIMIT"]

EXTRAPOLATION_LIMIT = 5   # a curve is not trusted beyond this many times the largest K measured


def labels_text(row: dict, largest_k: int) -> str:
    """'about N per class [lo, hi]', or why no number is given (plain text)."""
    need, (lo, hi) = row["labels_per_class"], row["ci95"]
    limit = EXTRAPOLATION_LIMIT * largest_k
    if need is None:
        return "not reached: the fitted curve levels off below it"
    if need > limit:
        return f"more than {limit} per class (beyond {EXTRAPOLATION_LIMIT}x the largest K measured)"
    hi_text = f"{hi:.0f}" if hi is not None and hi <= limit else f"more than {limit}"
    return f"about {int(np.ceil(need))} per class [95% CI {lo:.0f}, {hi_text}]"


def curve_figure(curves: dict) -> str:
    """Measured balanced accuracy per K (95% CI bars), the fitted curve, the fit without the
    largest K (dashed) and the targets, one panel per head."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (head, c) in zip(axes[0], curves.items()):
        k, y = np.array(c["shots"], float), np.array(c["observed"])
        ci = np.array(c["observed_ci95"])
        ax.errorbar(k, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o", color="#1f77b4", ms=4, capsize=2,
                    label="measured (95% CI)")
        grid = np.geomspace(1, k.max() * 2, 100)
        p = c["params"]
        ax.plot(grid, predict_power_law(np.array([p["a"], p["b"], p["c"]]), grid), color="#1f77b4", lw=1.2,
                label="fitted curve")
        if "holdout" in c:
            h = c["holdout"]
            lo, hi = h["predicted_ci95"]
            ax.errorbar([h["k"] * 1.04], [h["predicted"]], yerr=[[h["predicted"] - lo], [hi - h["predicted"]]],
                        fmt="s", color="#d62728", ms=4, capsize=2, label=f"K={h['k']} predicted without it")
        for t in c["targets"]:
            ax.axhline(t["target"], color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("labelled scans per class (K)")
        ax.set_title(label(head, HEAD_LABELS), fontsize=8)
        ax.legend(fontsize=6.5, loc="lower right")
    axes[0][0].set_ylabel("balanced accuracy")
    fig.tight_layout()
    return png(fig)


def curve_section(curves: dict) -> str:
    """How many labels it needs: the fit, the labels per class for each target, the held-out check."""
    rows, checks, lines = [], [], []
    for head, c in curves.items():
        largest = max(c["shots"])
        p = c["params"]
        rows.append([esc(label(head, HEAD_LABELS)), ", ".join(str(k) for k in c["shots"]),
                     f"{p['a']:.3f} − {p['b']:.3f}·K<sup>−{p['c']:.3f}</sup>", fmt(p["a"], c["asymptote_ci95"])]
                    + [esc(labels_text(t, largest)) for t in c["targets"]])
        for t in c["targets"]:
            lines.append(f"{label(head, HEAD_LABELS)}: to reach balanced accuracy {t['target']:g}, label "
                         f"{labels_text(t, largest)}.")
        if "holdout" in c:
            h = c["holdout"]
            checks.append([esc(label(head, HEAD_LABELS)), str(h["k"]), fmt(h["observed"]),
                           fmt(h["predicted"], h["predicted_ci95"]), "yes" if h["within"] else "<b>no</b>"])
    targets = next(iter(curves.values()))["targets"]
    body = ("<p>Balanced accuracy of the pretrained encoder's heads at each K, fitted by an inverse power law "
            "m(K) = a − b·K<sup>−c</sup> (a ≤ 1: the asymptote). Intervals: subject bootstrap, the curve refitted "
            "per replicate. A number of labels beyond "
            f"{EXTRAPOLATION_LIMIT}x the largest K measured is not given: the curve is not trusted that far.</p>"
            + f"<img alt='label-budget curve' src='{curve_figure(curves)}'>"
            + table(["head", "K measured", "fitted curve", "asymptote a"]
                    + [f"labels per class for {t['target']:g}" for t in targets], rows)
            + "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>")
    if checks:
        body += ("<h3>Check: the largest K held out</h3><p>The curve fitted without the largest K predicts it; "
                 "'within' says whether the measured value falls in the prediction's 95% interval.</p>"
                 + table(["head", "K held out", "measured", "predicted [95% CI]", "within"], checks))
    return section("label-curve", "How many labels it needs", body)
