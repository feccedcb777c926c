"""Evaluation reports."""

from medcl.report.html import DEMO_BANNER, MontageSample, ReportData, render_report

__all__ = ["DEMO_BANNER", "MontageSample", "ReportData", "render_report"]
