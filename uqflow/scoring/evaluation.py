"""How well a score flags wrong answers: AUROC with a bootstrap interval.

Convention: the positive class is an **incorrect** answer and the score predicts it (higher score =
more uncertain), so 0.5 is chance and 1.0 means every wrong answer scored above every right one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


class OneClassWarning(UserWarning):
    """AUROC is undefined: every answer is right, or every answer is wrong."""


@dataclass(frozen=True)
class AurocResult:
    """AUROC and its bootstrap interval; NaN when undefined (one class only)."""

    auroc: float
    ci_low: float
    ci_high: float
    n: int
    n_incorrect: int


def _clean(correct, score) -> tuple[np.ndarray, np.ndarray]:
    y = ~np.asarray(correct, dtype=bool)  # positive = incorrect
    s = np.asarray(score, dtype=np.float64)
    keep = np.isfinite(s)
    return y[keep], s[keep]


def auroc(correct, score) -> float:
    """AUROC of ``score`` for detecting incorrect answers; NaN (with a warning) for one class."""
    y, s = _clean(correct, score)
    if y.all() or not y.any():
        warnings.warn(f"AUROC undefined: {int(y.sum())} incorrect of {y.size} scored answers", OneClassWarning, stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y, s))


def auroc_with_ci(correct, score, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> AurocResult:
    """AUROC with a stratified percentile bootstrap interval (scipy.stats.bootstrap over the
    incorrect and correct groups separately, so no resample loses a class), seeded."""
    y, s = _clean(correct, score)
    value = auroc(~y, s) if y.size else float("nan")
    lo = hi = float("nan")
    wrong, right = s[y], s[~y]
    # an interval needs resamples and at least two answers in each group
    if np.isfinite(value) and n_resamples > 0 and min(wrong.size, right.size) >= 2:

        def stat(a, b, axis=-1):
            # Mann-Whitney U / (n_a n_b) = P(score_wrong > score_right) + 0.5 P(tie) = AUROC
            return stats.mannwhitneyu(a, b, axis=axis).statistic / (a.shape[axis] * b.shape[axis])

        res = stats.bootstrap((wrong, right), stat, n_resamples=n_resamples, confidence_level=confidence,
                              method="percentile", vectorized=True, rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return AurocResult(value, lo, hi, int(y.size), int(y.sum()))
