"""The report's HTML building blocks: escaping, a number with its interval, a table, a section."""

from __future__ import annotations

import html

import numpy as np

__all__ = ["esc", "fmt", "table", "section"]

esc = html.escape


def fmt(v, ci=None) -> str:
    """``v`` to 3 decimals, with ``[lo, hi]`` after it when ``ci`` is given and finite."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    s = f"{v:.3f}"
    if ci is not None and not any(c is None or np.isnan(c) for c in ci):
        s += f" <span class='ci'>[{ci[0]:.3f}, {ci[1]:.3f}]</span>"
    return s


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{esc(title)}</h2>{body}</section>"
