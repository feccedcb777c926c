"""What the few-shot model answers besides its probabilities: the prediction set.

Kept apart from input handling (:mod:`medcl.serving.inference`): given the head's raw scores of
the scans and its stored conformal calibration scores
(:func:`medcl.fewshot.conformal.calibrate_head`), the set of classes at the asked coverage
(param ``coverage``, default :data:`DEFAULT_COVERAGE`), as a ``|``-joined string (one cell per
scan), and the coverage it was made for."""

from __future__ import annotations

import numpy as np

from medcl.config import FewShotConfig
from medcl.fewshot.conformal import head_sets

__all__ = ["DEFAULT_COVERAGE", "SET_SEPARATOR", "with_prediction_sets", "check_coverage"]

DEFAULT_COVERAGE = FewShotConfig().conformal_coverage
SET_SEPARATOR = "|"


def check_coverage(value) -> float:
    """``value`` as a coverage in (0, 1), else a one-line ValueError naming it."""
    try:
        c = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"coverage must be a number in (0, 1), got {value!r}") from None
    if not 0 < c < 1:
        raise ValueError(f"coverage must be in (0, 1), got {value!r}")
    return c


def with_prediction_sets(out, head, scores: np.ndarray, coverage=None):
    """``out`` (one row per scan) with ``prediction_set`` and ``coverage`` columns when the head
    has calibration scores (``scores``: the scans' raw head scores, ``head.decision_function``);
    unchanged otherwise (a model registered before they existed)."""
    if not len(getattr(head, "conformal_scores_", ())):
        return out
    c = check_coverage(DEFAULT_COVERAGE if coverage is None else coverage)
    sets, _ = head_sets(head, scores, c)
    out["prediction_set"] = [SET_SEPARATOR.join(s) for s in sets]
    out["coverage"] = c
    return out
