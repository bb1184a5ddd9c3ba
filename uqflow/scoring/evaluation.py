"""How well a score flags wrong answers: AUROC with a bootstrap interval.

Convention: the positive class is an **incorrect** answer and the score predicts it (higher score =
more uncertain), so 0.5 is chance and 1.0 means every wrong answer scored above every right one.

A NaN score is undefined (an empty answer's per-token scores) and is left out. An infinite score is
kept: +inf (an answer with a token of probability zero) is more uncertain than any finite score,
and every measure here depends only on the order of the scores.
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


def incorrect_and_scores(correct, score) -> tuple[np.ndarray, np.ndarray]:
    """(incorrect, score) without NaN scores; infinite scores become their ranks (same order, finite),
    since scikit-learn refuses infinities."""
    y = ~np.asarray(correct, dtype=bool)  # positive = incorrect
    s = np.asarray(score, dtype=np.float64)
    keep = ~np.isnan(s)
    y, s = y[keep], s[keep]
    if np.isinf(s).any():
        s = stats.rankdata(s)
    return y, s


def auroc(correct, score) -> float:
    """AUROC of ``score`` for detecting incorrect answers; NaN (with a warning) for one class."""
    y, s = incorrect_and_scores(correct, score)
    if y.all() or not y.any():
        warnings.warn(f"AUROC undefined: {int(y.sum())} incorrect of {y.size} scored answers", OneClassWarning, stacklevel=2)
        return float("nan")
    return float(roc_auc_score(y, s))


def auroc_with_ci(correct, score, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> AurocResult:
    """AUROC with a stratified percentile bootstrap interval (scipy.stats.bootstrap over the
    incorrect and correct groups separately, so no resample loses a class), seeded."""
    y, s = incorrect_and_scores(correct, score)
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


# ---------------------------------------------------------------- selective prediction

def _by_confidence(correct, score) -> np.ndarray:
    """Correctness (0/1) ordered from the most confident answer (lowest score) to the least;
    ties keep their original order (a stable sort), so the curves are deterministic."""
    c = np.asarray(correct, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    keep = ~np.isnan(s)
    c, s = c[keep], s[keep]
    return c[np.argsort(s, kind="stable")]


def rejection_curve(correct, score) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy-rejection curve: (coverage, accuracy of the answers kept) when the most
    uncertain answers are rejected first. coverage[k] = (k+1)/n keeps the k+1 most confident."""
    c = _by_confidence(correct, score)
    k = np.arange(1, c.size + 1)
    return k / max(c.size, 1), np.cumsum(c) / k


def aurac(correct, score) -> float:
    """Area under the accuracy-rejection curve (mean accuracy over all coverages); NaN if empty."""
    _, acc = rejection_curve(correct, score)
    return float(acc.mean()) if acc.size else float("nan")


def prr(correct, score) -> float:
    """Prediction rejection ratio: (AURAC(score) - AURAC(random)) / (AURAC(oracle) - AURAC(random)).

    1 = the score rejects wrong answers as an oracle would, 0 = no better than random; NaN when
    every answer is right or every answer is wrong (oracle and random coincide)."""
    c = _by_confidence(correct, score)
    if c.size == 0 or c.min() == c.max():
        return float("nan")
    k = np.arange(1, c.size + 1)
    ar_score = (np.cumsum(c) / k).mean()
    ar_oracle = (np.cumsum(np.sort(c)[::-1]) / k).mean()
    ar_random = c.mean()
    return float((ar_score - ar_random) / (ar_oracle - ar_random))


#: the field's headline metric rejects up to half of the answers (LM-Polygraph's
#: PredictionRejectionArea(max_rejection=0.5), normalised; CoCoA's prr_0.5_normalized)
PRR_MAX_REJECTION = 0.5


def prr_at(correct, score, max_rejection: float = PRR_MAX_REJECTION) -> float:
    """PRR as the field reports it (LM-Polygraph, CoCoA): the prediction-rejection area up to
    ``max_rejection`` of the answers rejected, normalised against random and oracle rejection,

        PRR@r = (A(score) - A(random)) / (A(oracle) - A(random)),
        A(s)  = 1/m sum_{k = n-m+1}^{n} accuracy of the k answers s finds most confident,

    with m = floor(r n) the rejection levels counted. 1 = the oracle, 0 = random. A(random) is the
    exact expectation, the accuracy itself (LM-Polygraph estimates it from 1,000 random orders;
    the two differ by that estimate's noise); ties keep their order (a stable sort). NaN when
    every answer is right or wrong, when m = 0, or when the oracle does no better than random
    over the levels counted (N of 2 or 3: LM-Polygraph then returns the area unnormalised)."""
    c = _by_confidence(correct, score)
    m = int(max_rejection * c.size)
    if c.size == 0 or m == 0 or c.min() == c.max():
        return float("nan")
    k = np.arange(c.size - m + 1, c.size + 1)

    def area(order: np.ndarray) -> float:
        return float((np.cumsum(order)[k - 1] / k).mean())

    random = float(c.mean())
    oracle = area(np.sort(c)[::-1])
    if oracle == random:  # every level counted keeps every answer (N = 2, 3): nothing to normalise by
        return float("nan")
    return (area(c) - random) / (oracle - random)


def prr_with_ci(correct, score, *, max_rejection: float = PRR_MAX_REJECTION, n_resamples: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """:func:`prr_at` with a percentile bootstrap interval over the answers (scipy.stats.bootstrap,
    pairs of verdict and score resampled together, seeded): (value, low, high), NaN where undefined
    (a resample with one class gives NaN and is left out of the percentiles)."""
    c = np.asarray(correct, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    keep = ~np.isnan(s)
    c, s = c[keep], s[keep]
    value = prr_at(c, s, max_rejection)
    if not np.isfinite(value) or n_resamples <= 0 or c.size < 4:
        return value, float("nan"), float("nan")
    with warnings.catch_warnings():  # a resample of one class: NaN, reported by the NaN interval itself
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((c, s), lambda a, b: prr_at(a, b, max_rejection), paired=True, vectorized=False,
                              n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                              rng=np.random.default_rng(seed))
    return value, float(res.confidence_interval.low), float(res.confidence_interval.high)


def accuracy_at_coverage(correct, score, coverage: float) -> float:
    """Accuracy of the ceil(coverage * n) most confident answers."""
    c = _by_confidence(correct, score)
    if c.size == 0:
        return float("nan")
    k = max(1, int(np.ceil(coverage * c.size - 1e-9)))
    return float(c[:k].mean())


# ---------------------------------------------------------------- DeLong

@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of two AUROCs on the same answers."""

    auroc_a: float
    auroc_b: float
    z: float
    p_value: float
    se_diff: float


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10[i] = P(neg < pos_i) + 0.5 P(tie) for each positive,
    V01[j] = P(pos > neg_j) + 0.5 P(tie) for each negative, through midranks (O(n log n))."""
    m, n = pos.size, neg.size
    ranks_all = stats.rankdata(np.concatenate([pos, neg]))
    ranks_pos = stats.rankdata(pos)
    ranks_neg = stats.rankdata(neg)
    v10 = (ranks_all[:m] - ranks_pos) / n
    v01 = 1.0 - (ranks_all[m:] - ranks_neg) / m
    return v10, v01


@dataclass(frozen=True)
class DeLongCovariance:
    """Two AUROCs of the same answers and DeLong's covariance matrix of their estimates."""

    auroc: np.ndarray  # (2,): AUROC of score a, of score b
    cov: np.ndarray  # (2, 2): S = S10 / m + S01 / n
    n_pos: int  # m, wrong answers
    n_neg: int  # n, right answers

    @property
    def correlation(self) -> float:
        """Correlation of the two AUROC estimates, r = S_ab / sqrt(S_aa S_bb); NaN where a variance is zero."""
        den = float(np.sqrt(self.cov[0, 0] * self.cov[1, 1]))
        return float(self.cov[0, 1] / den) if den > 0 else float("nan")


def delong_covariance(correct, score_a, score_b) -> DeLongCovariance | None:
    """DeLong's covariance of the AUROC estimates of two scores of the same answers (positive class:
    incorrect): with the structural components V10 (one per wrong answer) and V01 (one per right
    answer) of each score, S10 and S01 their 2 x 2 sample covariances (ddof 1) and m, n the numbers
    of wrong and right answers, S = S10 / m + S01 / n. Answers where either score is NaN are left
    out; None when fewer than 2 answers of either class remain."""
    y = ~np.asarray(correct, dtype=bool)
    a = np.asarray(score_a, dtype=np.float64)
    b = np.asarray(score_b, dtype=np.float64)
    keep = ~np.isnan(a) & ~np.isnan(b)
    y, a, b = y[keep], a[keep], b[keep]
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return None
    v10a, v01a = _placements(a[y], a[~y])
    v10b, v01b = _placements(b[y], b[~y])
    auc = np.array([v10a.mean(), v10b.mean()])
    s10 = np.cov(np.vstack([v10a, v10b]))  # (2, 2) covariance over positives
    s01 = np.cov(np.vstack([v01a, v01b]))  # (2, 2) covariance over negatives
    return DeLongCovariance(auc, s10 / m + s01 / n, m, n)


def delong_test(correct, score_a, score_b) -> DeLongResult:
    """DeLong, DeLong & Clarke-Pearson (1988) test that two scores of the same answers have equal
    AUROC (positive class: incorrect), with the midrank computation of Sun & Xu (2014).

    Written here because neither scipy nor scikit-learn provides it; checked in the tests against
    the published Hanley & McNeil (1982) rating data and against a direct O(m n) computation.
    NaN results when AUROC is undefined (one class) or the variance of the difference is zero.
    """
    dc = delong_covariance(correct, score_a, score_b)
    if dc is None:
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan)
    auc, cov = dc.auroc, dc.cov
    var_diff = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var_diff <= 0:
        return DeLongResult(float(auc[0]), float(auc[1]), float("nan"), float("nan"), 0.0)
    se = float(np.sqrt(var_diff))
    z = float((auc[0] - auc[1]) / se)
    return DeLongResult(float(auc[0]), float(auc[1]), z, float(2 * stats.norm.sf(abs(z))), se)


def delong_variance(correct, score) -> float:
    """DeLong's variance of a single AUROC (positive class: incorrect)."""
    y = ~np.asarray(correct, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    v10, v01 = _placements(s[y], s[~y])
    return float(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)


@dataclass(frozen=True)
class AurocDifference:
    """AUROC(b) - AUROC(a) with a percentile bootstrap interval and a two-sided bootstrap p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_a: int
    n_b: int
    paired: bool


def _aurocs(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each row (positive = y True) by the Mann-Whitney rank formula; NaN for one class."""
    ranks = stats.rankdata(s, axis=-1)
    pos = y.sum(axis=-1)
    neg = y.shape[-1] - pos
    u = (ranks * y).sum(axis=-1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), u / (pos * neg), np.nan)


def auroc_difference(correct_a, score_a, correct_b, score_b, *, paired: bool, n_resamples: int = 2000,
                     confidence: float = 0.95, seed: int = 0) -> AurocDifference:
    """How much better (higher AUROC) score b flags wrong answers than score a.

    ``paired``: a and b answer the same questions in the same order (two models on one dataset),
    and each resample draws the same questions for both, which cancels the questions' own
    difficulty. Unpaired (different datasets): each side is resampled on its own. Resamples in which
    either AUROC is undefined (one class) are dropped — the reason this is written here rather than
    with ``scipy.stats.bootstrap``, which cannot skip them. The p-value is the two-sided bootstrap
    tail probability of a difference of the other sign, floored at 1 / resamples.
    """
    ya, sa = ~np.asarray(correct_a, dtype=bool), np.asarray(score_a, dtype=np.float64)
    yb, sb = ~np.asarray(correct_b, dtype=bool), np.asarray(score_b, dtype=np.float64)
    if paired and ya.size != yb.size:
        raise ValueError(f"paired comparison of {ya.size} and {yb.size} answers")
    # NaN (undefined) scores are left out, infinite ones kept: only their order matters here
    if paired:  # a question whose score is undefined on either side leaves both
        keep = ~np.isnan(sa) & ~np.isnan(sb)
        ya, sa, yb, sb = ya[keep], sa[keep], yb[keep], sb[keep]
    else:
        ka, kb = ~np.isnan(sa), ~np.isnan(sb)
        ya, sa, yb, sb = ya[ka], sa[ka], yb[kb], sb[kb]
    nan = AurocDifference(float("nan"), float("nan"), float("nan"), float("nan"), ya.size, yb.size, paired)
    if not ya.size or not yb.size:
        return nan
    point = float(_aurocs(yb[None], sb[None])[0] - _aurocs(ya[None], sa[None])[0])
    if not np.isfinite(point):
        return nan
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, ya.size, size=(n_resamples, ya.size))
    ib = ia if paired else rng.integers(0, yb.size, size=(n_resamples, yb.size))
    d = _aurocs(yb[ib], sb[ib]) - _aurocs(ya[ia], sa[ia])
    d = d[np.isfinite(d)]
    if d.size < n_resamples // 2:
        return AurocDifference(point, float("nan"), float("nan"), float("nan"), ya.size, yb.size, paired)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(d, [alpha, 1 - alpha])
    p = min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1 / d.size))
    return AurocDifference(point, float(lo), float(hi), float(p), ya.size, yb.size, paired)
