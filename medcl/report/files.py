"""A report's files: ``report.html``, ``report.pdf`` and ``report_data/`` written to a folder and
logged to the current MLflow run, and ``summary.json`` as strict JSON."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from medcl import tracking
from medcl.report.browser import BrowserMissing, html_to_pdf
from medcl.report.html import ReportData, render_report, save_report_data

__all__ = ["write_report", "log_report_artifacts", "write_summary"]


def write_report(data: ReportData, out_dir: Path, pdf: bool = True) -> dict:
    """``report.html``, ``report.pdf`` (headless Chromium; a warning and no PDF without it) and
    ``report_data/`` (what ``medcl report`` renders again) in ``out_dir``; returns their paths
    (``html``, ``pdf`` or ``None``, ``data``)."""
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


def log_report_artifacts(paths: dict) -> None:
    """The files of :func:`write_report` as artifacts of the current run: the HTML and PDF at
    the top, the report data under ``report_data/`` (what ``medcl report RUN_ID`` reads)."""
    for key in ("html", "pdf"):
        if paths[key] is not None:
            tracking.log_artifact(paths[key])
    tracking.log_artifact(paths["data"] / "report_data.json", "report_data")
    tracking.log_artifact(paths["data"] / "report_arrays.npz", "report_data")


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
