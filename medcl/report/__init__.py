"""Evaluation reports: a self-contained HTML file (figures embedded) and its PDF."""

from medcl.report.html import (DEMO_BANNER, MontageSample, ReportData, load_report_data, render_report,
                               save_report_data)
from medcl.report.browser import BrowserMissing, find_browser, html_to_pdf

__all__ = ["DEMO_BANNER", "MontageSample", "ReportData", "render_report", "save_report_data", "load_report_data",
           "html_to_pdf", "find_browser", "BrowserMissing"]
