"""The report's sections on what a team asks after the accuracy: how many labels it needs
(learning curve), how sure it is (calibration, prediction sets). Plain data in, HTML out."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from medcl.fewshot.curve import predict_power_law
from medcl.report.blocks import esc, fmt, section, table
from medcl.report.figures import HEAD_LABELS, label, png

__all__ = ["curve_section", "curve_figure", "labels_text", "EXTRAPOLATION_LIMIT", "calibration_section",
           "saliency_figure", "saliency_block", "saliency_section"]

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


def _deployed(d: dict) -> str:
    """The registered model on the evaluation scans: ECE before and after, its sets."""
    rows = [[name, fmt(d[name]["ece"], d[name]["ece_ci95"]), fmt(d[name]["brier"], d[name]["brier_ci95"])]
            for name in ("before", "after")]
    kind = d.get("calibration", "").split(":")[0]
    how = {"vector": "vector scaling: scale " + ", ".join(f"{v:.2f}" for v in d.get("scale", [])) + "; shift "
                     + ", ".join(f"{v:.2f}" for v in d.get("shift", [])) + ", fitted on its calibration scans",
           "temperature": f"temperature {1 / max(d.get('scale', [1.0])[0], 1e-9):.2f}, fitted on its calibration scans"
           }.get(kind, f"temperature {d['temperature']:.2f}, fitted on its own support")
    text = (f"<h3>The registered model</h3><p>Its head ({esc(how)}) on the {d['n_scans']} evaluation scans, which none "
            "of its support or calibration subjects hold; before: its raw scores, after: calibrated:</p>"
            + table(["", "ECE", "Brier"], rows))
    if "sets" in d:
        s = d["sets"]
        text += (f"<p>Its prediction sets at coverage {s['target']:g} (from {d['n_calibration']} calibration scans"
                 f"{', CV+' if kind in ('vector', 'temperature') else ''}, "
                 f"{'class-conditional' if s['class_conditional'] else 'marginal'}): empirical coverage "
                 f"{fmt(s['coverage'], s['coverage_ci95'])}, mean set size "
                 f"{fmt(s['mean_set_size'], s['mean_set_size_ci95'])}.</p>")
    return text


def calibration_section(calibration: dict, conformal: dict, deployed: dict) -> str:
    """How sure it is: ECE and Brier before and after temperature scaling per K, coverage and
    mean set size of the conformal sets per K (the same episodes), the registered model."""
    shots = sorted(set(calibration) | set(conformal), key=int)
    head = next(iter({**calibration, **conformal}.values()))["head"] if shots else ""
    rows = []
    for k in shots:
        c, s = calibration.get(k), conformal.get(k)
        row = [k]
        row += ([fmt(c["before"]["ece"], c["before"]["ece_ci95"]), fmt(c["after"]["ece"], c["after"]["ece_ci95"]),
                 f"{c['temperature'][1]:.2f} <span class='ci'>[{c['temperature'][0]:.2f}, {c['temperature'][2]:.2f}]"
                 "</span>"] if c else ["–"] * 3)
        row += ([fmt(s["coverage"], s["coverage_ci95"]), f"{s['target']:g}", "yes" if s["target_met"] else "<b>no</b>",
                 fmt(s["mean_set_size"], s["set_size_ci95"]), f"{s['class_conditional_fraction']:.2f}"] if s
                else ["–"] * 5)
        rows.append(row)
    method = next((c["method"] for c in calibration.values() if not c["method"].startswith("none")), "")
    body = (f"<p>The pretrained encoder's {esc(label(head, HEAD_LABELS))} head on the same episodes as above. "
            f"Calibration: {esc(method)}; at K = 1 no fold keeps every class, so nothing is fitted. Prediction sets: "
            "split conformal (score 1 − p(true class), calibrated probabilities) from each episode's calibration "
            "scans, one per subject in neither its support nor its queries; class-conditional when every class has "
            "enough of them. Intervals: subject bootstrap.</p>"
            + table(["K", "ECE before", "ECE after", "temperature (median [2.5%, 97.5%])", "coverage",
                     "target", "target reached", "mean set size", "class-conditional episodes"], rows))
    if deployed:
        body += _deployed(deployed)
    return section("calibration", "How sure it is", body)


def saliency_figure(image: np.ndarray, saliency: np.ndarray) -> str:
    """Axial, coronal and sagittal slices through the saliency peak, the map (its positive
    part) over the image."""
    pos = np.clip(saliency, 0, None)
    x, y, z = np.unravel_index(int(np.argmax(pos)), pos.shape) if pos.max() > 0 else [n // 2 for n in pos.shape]
    cuts = [("axial", image[:, :, z], pos[:, :, z]), ("coronal", image[:, y, :], pos[:, y, :]),
            ("sagittal", image[x, :, :], pos[x, :, :])]
    fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.4))
    top = pos.max() or 1.0
    for ax, (name, im, s) in zip(axes, cuts):
        ax.imshow(im.T, cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_less_equal(s.T, 0.05 * top), cmap="hot", origin="lower", alpha=0.55, vmin=0, vmax=top)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return png(fig)


def saliency_block(examples: list, method: str, lesions: dict | None = None) -> dict:
    """The report's saliency data: one overlay figure and the regions per example, per class the
    mean over its examples of each region's relative saliency, and (``lesions``: from
    :func:`medcl.fewshot.lesions.lesion_concentration`) the saliency inside the simulated lesions."""
    shown = [{"label": e["label"], "predicted": e["predicted"], "correct": e["correct"], "regions": e["regions"],
              "figure": saliency_figure(e["image"], e["saliency"])} for e in examples]
    summary: dict = {}
    for e in examples:
        for r, v in e["regions"].items():
            if v is not None:
                summary.setdefault(e["label"], {}).setdefault(r, []).append(v)
    kept = None if lesions is None else {k: v for k, v in lesions.items() if k != "per_scan"} | {
        "ratios": [c["ratio"] for c in lesions["per_scan"]],
        "fraction_above": [c["fraction_above"] for c in lesions["per_scan"]]}
    return {"method": method, "examples": shown, "lesions": kept,
            "summary": {c: {r: float(np.mean(v)) for r, v in by.items()} for c, by in summary.items()}}


def saliency_section(data: dict) -> str:
    """Where the model looks: overlays per example, the mean relative saliency per region."""
    figs = "".join(f"<figure><img alt='saliency, true {esc(e['label'])}, predicted {esc(e['predicted'])}' "
                   f"src='{e['figure']}'><figcaption>true {esc(e['label'])}, predicted {esc(e['predicted'])} "
                   f"({'correct' if e['correct'] else 'wrong'})</figcaption></figure>" for e in data["examples"])
    regions = sorted({r for by in data["summary"].values() for r in by})
    rows = [[esc(c)] + [fmt(by.get(r)) for r in regions] for c, by in sorted(data["summary"].items())]
    body = (f"<p>Saliency ({esc(data['method'])}, <code>monai.visualize</code>) of the registered head's score for "
            "the class it predicted, on evaluation scans it classified correctly and wrongly, per class. "
            "<code>medcl predict --explain OUT</code> writes the same maps as NIfTI files on each scan's own grid.</p>"
            + figs)
    if rows:
        body += ("<h3>Where the model looks</h3><p>Mean saliency in each region of the MNI template, divided by the "
                 "mean over the brain (1: no preference), averaged over the examples of each true class.</p>"
                 + table(["true class"] + [esc(r) for r in regions], rows))
        tops = [f"{c}: {max(by, key=by.get)} ({max(by.values()):.2f})" for c, by in sorted(data["summary"].items())]
        body += ("<p>" + esc("Region with the most saliency, per class: " + "; ".join(tops)) + ". A value near 1 "
                 "everywhere means the map does not single out any region.</p>")
    if data.get("lesions"):
        body += _lesion_paragraph(data["lesions"])
    return section("saliency", "Where it looked", body)


def _lesion_paragraph(les: dict) -> str:
    """Inside the simulated lesions: the ratio to the other subjects' lesion masks."""
    head = (f"<h3>Inside the simulated lesions</h3><p>Saliency ({esc(les['method'])}) of the "
            f"{esc(les['class'])} class's score on {les['n_scans']} {esc(les['class'])}-class evaluation scans "
            f"({les.get('n_without_saliency', 0)} more had no positive saliency in any mask): its mean "
            "inside each scan's own simulated lesions (the masks the simulation knows, carried through the scan's "
            "registration) divided by its mean inside the other evaluation subjects' lesion masks (the shuffled-mask "
            "baseline: lesion-shaped regions in white matter, but not this scan's lesions; 1: no preference).</p>")
    if not les.get("n_scans"):
        return head + "<p>No scan had positive saliency in any mask.</p>"
    verdict = ("above" if les["mean_ratio_ci95"][0] > 1 else "not distinguishable from" if les["mean_ratio_ci95"][1] >= 1
               else "below")
    return head + (f"<p><b>Ratio: median {les['median_ratio']:.2f}, mean {les['mean_ratio']:.2f} "
                   f"[95% CI {les['mean_ratio_ci95'][0]:.2f}, {les['mean_ratio_ci95'][1]:.2f}]</b> "
                   f"({esc(verdict)} the shuffled-mask baseline); the own lesions beat 95% of the other masks in "
                   f"{100 * les['fraction_above_95']:.0f}% of the scans. Per scan: "
                   + esc(", ".join(f"{r:.2f}" for r in les["ratios"] if r is not None)) + ".</p>")
