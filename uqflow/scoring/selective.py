"""Calibration and selective prediction of an uncertainty score, and whether a run can tell scores apart.

Inputs are aligned arrays: ``correct`` (bool, True = the answer is right; undecided answers must be
removed by the caller) and ``score`` (float, HIGHER = MORE UNCERTAIN). An answer whose score is NaN
(undefined, e.g. an empty answer) is dropped together with its ``correct`` entry. Functions that
fit a model on score values (:func:`confidence_probabilities`, :func:`beyond_length`) also drop
infinite scores, which no fit can use; functions that depend only on the order of the scores
(:func:`risk_coverage`, :func:`aurc`) keep them (+inf is the most uncertain).

"Positive" means a WRONG answer, as in ``uqflow.scoring.evaluation``. Undefined results are NaN.
Pure functions: no I/O, no tracking, no model calls.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from uqflow.scoring.evaluation import rejection_curve

#: probabilities are clipped to [EPS, 1 - EPS] before a log, so a separated fit has a finite likelihood
EPS = 1e-12


# ---------------------------------------------------------------- inputs

def _correct(correct) -> np.ndarray:
    """``correct`` as a bool array; refuses NaN (an undecided answer would silently become True)."""
    c = np.asarray(correct)
    if c.dtype.kind == "f" and np.isnan(c).any():
        raise ValueError("correct holds NaN (undecided answers); drop them before scoring")
    return c.astype(bool)


def _aligned(correct, *columns) -> tuple[np.ndarray, ...]:
    """``correct`` (bool) and each column (float64), checked to have one entry per answer."""
    c = _correct(correct)
    cols = tuple(np.asarray(x, dtype=np.float64) for x in columns)
    for x in cols:
        if x.shape != c.shape:
            raise ValueError(f"{x.shape[0] if x.ndim else 0} values for {c.size} answers")
    return (c, *cols)


def _finite_probs(correct, prob) -> tuple[np.ndarray, np.ndarray]:
    """(correct, prob) over the answers whose probability is finite; a probability outside [0, 1] is an error."""
    c, p = _aligned(correct, prob)
    keep = np.isfinite(p)
    c, p = c[keep], p[keep]
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return c, p


# ---------------------------------------------------------------- score -> P(correct)

def _platt(s_fit, y_fit, s_new) -> np.ndarray:
    # standardizing does not change an unpenalized fit's predictions; it only helps the solver
    model = make_pipeline(StandardScaler(), LogisticRegression(C=np.inf))
    model.fit(s_fit[:, None], y_fit)
    return model.predict_proba(s_new[:, None])[:, 1]  # classes_ = [0, 1]: column 1 is P(correct)


def _isotonic(s_fit, y_fit, s_new) -> np.ndarray:
    model = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0, y_max=1)
    return model.fit(s_fit, y_fit).predict(s_new)


_FITS = {"platt": _platt, "isotonic": _isotonic}


def confidence_probabilities(correct, score, *, method: str = "isotonic", folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each answer's probability of being right, from its score, fitted out of fold.

    P(correct | score) is fitted on the run's own answers by cross-fitting: the answers are split
    by ``StratifiedKFold(min(folds, smallest class count), shuffle=True, random_state=seed)`` and
    each answer's probability comes from a model fitted on the other folds only. ``method``:
    ``"isotonic"`` (a non-increasing, piecewise-linear function of the score: more uncertain should mean
    less often right) or ``"platt"`` (unpenalized logistic regression on the score). Units:
    probability in [0, 1], higher = more likely right (the opposite sign of the score).

    The isotonic fit is monotone within each fold's model; held-out predictions from different
    folds' models need not be monotone together. Returns an array as long as the inputs, NaN where
    the score is NaN or infinite; all NaN when fewer than 2 answers of either class remain.
    """
    if method not in _FITS:
        raise ValueError(f"method must be one of {sorted(_FITS)}, not {method!r}")
    c, s = _aligned(correct, score)
    out = np.full(c.shape, np.nan)
    keep = np.isfinite(s)
    y, x = c[keep].astype(int), s[keep]
    n_min = min(int(y.sum()), int((1 - y).sum()))
    if n_min < 2:
        return out
    fit = _FITS[method]
    prob = np.empty(x.shape)
    splits = StratifiedKFold(n_splits=min(folds, n_min), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separated classes: the Platt slope diverges
        for train, test in splits.split(x, y):
            prob[test] = fit(x[train], y[train], x[test])
    out[keep] = prob
    return out


# ---------------------------------------------------------------- calibration

def brier_score(correct, prob) -> float:
    """Brier score of probabilities of being right.

    mean over answers of (prob - correct)^2, correct as 0/1; units: squared probability, in
    [0, 1], lower = better (0 = certain and right every time). Answers with a non-finite
    probability are dropped; NaN when none remain.
    """
    c, p = _finite_probs(correct, prob)
    if not c.size:
        return math.nan
    # pos_label fixed: with one class only, scikit-learn could not infer which label is "right"
    return float(brier_score_loss(c, p, pos_label=True))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin data of a reliability diagram; ``confidence`` and ``accuracy`` are NaN in empty bins."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(correct, prob, bins: int = 10) -> ReliabilityBins:
    """Equal-width bins of the probability of being right, with their accuracy and mean confidence.

    Bin i covers [i/bins, (i+1)/bins); the last bin also holds 1.0. For each bin: its edges, its
    number of answers, the mean probability (confidence) and the fraction right (accuracy) of its
    answers, NaN for an empty bin. Answers with a non-finite probability are dropped.
    """
    # hand-written: sklearn.calibration.calibration_curve drops empty bins and returns no counts
    if bins < 1:
        raise ValueError("bins must be at least 1")
    c, p = _finite_probs(correct, prob)
    edges = np.arange(bins + 1) / bins  # i / bins, correctly rounded (np.linspace gives 0.30000000000000004)
    idx = np.minimum(np.searchsorted(edges, p, side="right") - 1, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=bins) / count
        acc = np.bincount(idx, weights=c.astype(float), minlength=bins) / count
    return ReliabilityBins(edges[:-1], edges[1:], count, conf, acc)


def expected_calibration_error(correct, prob, bins: int = 10) -> float:
    """Expected calibration error of probabilities of being right.

    ECE = sum over bins b of (n_b / N) * |accuracy_b - confidence_b|, over the equal-width bins of
    :func:`reliability_bins`; units: probability, in [0, 1], lower = better. Answers with a
    non-finite probability are dropped; NaN when none remain.
    """
    r = reliability_bins(correct, prob, bins)
    n = r.count.sum()
    if n == 0:
        return math.nan
    full = r.count > 0
    return float(np.sum(r.count[full] / n * np.abs(r.accuracy[full] - r.confidence[full])))


#: the fold seeds over which :func:`ece_over_fold_seeds` states the spread of ECE
ECE_FOLD_SEEDS = tuple(range(20))


def ece_over_fold_seeds(correct, score, *, seeds=ECE_FOLD_SEEDS, method: str = "isotonic", folds: int = 5,
                        bins: int = 10) -> dict:
    """ECE of the score mapped to P(correct), once per fold assignment, and its spread.

    The cross-fitted probabilities of :func:`confidence_probabilities` depend on which answers share
    a fold, so one seed's ECE is one draw: at n = 100 it moves by about 0.1 with the seed. For each
    seed in ``seeds`` the answers are split by that seed, mapped to P(correct) out of fold and
    their ECE (:func:`expected_calibration_error`, ``bins`` equal-width bins) taken. Returns
    ``median``, ``low`` and ``high`` (the smallest and largest ECE over the seeds) and ``seeds``
    (how many); NaN (and 0 seeds) where the ECE is undefined (fewer than 2 answers of a class).
    """
    values = np.array([expected_calibration_error(
        correct, confidence_probabilities(correct, score, method=method, folds=folds, seed=s), bins) for s in seeds])
    values = values[np.isfinite(values)]
    if not values.size:
        return {"median": math.nan, "low": math.nan, "high": math.nan, "seeds": 0}
    return {"median": float(np.median(values)), "low": float(values.min()), "high": float(values.max()),
            "seeds": int(values.size)}


# ---------------------------------------------------------------- selective prediction

def risk_coverage(correct, score) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve: the error rate among the k most confident answers.

    Answers are sorted by score ascending (most confident first) with a stable sort, so tied
    scores keep their input order (a tie straddling a coverage is split, not kept all-or-none).
    Returns (coverage, risk): coverage[k-1] = k/N and risk[k-1] = wrong answers among the first k
    divided by k, for k = 1..N; both are fractions in [0, 1], lower risk = better. NaN scores are
    dropped, infinite ones kept. Empty arrays when no answer remains.
    """
    c, s = _aligned(correct, score)
    coverage, accuracy = rejection_curve(c, s)  # the same order; accuracy = 1 - risk
    return coverage, 1.0 - accuracy


def aurc(correct, score) -> float:
    """Area under the risk-coverage curve (AURC), discrete.

    AURC = (1/N) * sum over k = 1..N of risk[k-1] from :func:`risk_coverage`; a fraction in
    [0, 1], lower = better (a perfect ranking's AURC is the smallest the error rate allows). NaN
    when no answer has a score.
    """
    _, risk = risk_coverage(correct, score)
    return float(risk.mean()) if risk.size else math.nan


# ---------------------------------------------------------------- beyond answer length

def _logistic_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Unpenalized logistic regression of y on the columns of x: (maximized log-likelihood in nats,
    coefficients per standard deviation of each column)."""
    # no library here returns a fitted model's log-likelihood (statsmodels is not a dependency)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=np.inf, max_iter=1000))
    model.fit(x, y)
    p = np.clip(model.predict_proba(x)[:, 1], EPS, 1 - EPS)
    return float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p))), model[-1].coef_[0]


def _length_strata(length: np.ndarray, q: int = 4) -> np.ndarray:
    """Stratum (0..) of each answer: quantiles of length, merged where quantiles coincide."""
    if np.ptp(length) == 0:
        return np.zeros(length.shape, dtype=int)
    return np.asarray(pd.qcut(length, q, labels=False, duplicates="drop"), dtype=int)


def _auroc_within(wrong: np.ndarray, score: np.ndarray, strata: np.ndarray) -> tuple[float, int, int]:
    """Size-weighted mean AUROC of score for wrong answers over strata with both classes, their
    number, and the number of answers in them (a one-class stratum has no AUROC and is left out)."""
    aurocs, sizes = [], []
    for k in np.unique(strata):
        w, s = wrong[strata == k], score[strata == k]
        if 0 < w.sum() < w.size:
            aurocs.append(roc_auc_score(w, s))
            sizes.append(w.size)
    if not sizes:
        return math.nan, 0, 0
    return float(np.average(aurocs, weights=sizes)), len(sizes), int(sum(sizes))


def _affine_in(s: np.ndarray, x: np.ndarray) -> bool:
    """Whether s is an affine function of x (a constant included): then s adds nothing to x."""
    def scaled(v):
        return v / max(np.abs(v).max(), 1.0)
    one = np.ones_like(s)
    return np.linalg.matrix_rank(np.column_stack([one, scaled(x), scaled(s)])) < \
        np.linalg.matrix_rank(np.column_stack([one, scaled(x)])) + 1


def beyond_length(correct, score, length) -> dict:
    """Whether a score predicts wrong answers once answer length is accounted for.

    Likelihood-ratio test of two unpenalized logistic models of wrong (= not correct):
    wrong ~ log1p(length) against wrong ~ log1p(length) + standardized score. Returns a dict:

    - ``lr_stat``: 2 * (ll1 - ll0), log-likelihoods in nats; chi-square with 1 degree of freedom
    - ``p_value``: ``scipy.stats.chi2.sf(lr_stat, 1)``; small = the score adds to length
    - ``coef``: the score's coefficient per standard deviation of the score (log-odds of wrong);
      positive is the expected sign (more uncertain, more often wrong)
    - ``auroc_within_length``: AUROC of the score for wrong answers within strata of length (up
      to 4, by quantiles), the size-weighted mean over strata holding both classes; NaN if none
    - ``n``: answers used; ``strata``: number of strata that entered ``auroc_within_length``;
      ``within_length_share``: the share of the ``n`` answers in those strata (the answers
      ``auroc_within_length`` covers, a fraction in [0, 1]; NaN when n is 0)

    Length enters as log1p(length), linearly on the log-odds: a score that is another function of
    length (length itself, say) can still test significant when that form does not fit. Likewise
    four strata leave length varying within each, so a length-only score keeps some AUROC there.

    Rows with a non-finite score or length are dropped. ``lr_stat``, ``p_value`` and ``coef`` are
    NaN when fewer than 5 answers of either class remain. A score that is an affine function of
    log1p(length) (a constant included) adds nothing: ``lr_stat`` 0, ``p_value`` 1, ``coef`` NaN
    (not identifiable). Perfectly separated classes are handled: the fit's ConvergenceWarning is
    suppressed and probabilities are clipped to [1e-12, 1 - 1e-12] before the log.
    """
    c, s, length = _aligned(correct, score, length)
    x_len = np.log1p(length)
    keep = np.isfinite(s) & np.isfinite(x_len)
    wrong, s, x_len, length = (~c[keep]).astype(int), s[keep], x_len[keep], length[keep]
    auroc_within, n_strata, covered = _auroc_within(wrong, s, _length_strata(length)) if wrong.size else (math.nan, 0, 0)
    out = {"lr_stat": math.nan, "p_value": math.nan, "coef": math.nan,
           "auroc_within_length": auroc_within, "n": int(wrong.size), "strata": n_strata,
           "within_length_share": covered / wrong.size if wrong.size else math.nan}
    if min(wrong.sum(), wrong.size - wrong.sum()) < 5:
        return out
    if _affine_in(s, x_len):
        return out | {"lr_stat": 0.0, "p_value": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # separation: the slopes diverge
        ll0, _ = _logistic_fit(x_len[:, None], wrong)
        ll1, coef = _logistic_fit(np.column_stack([x_len, s]), wrong)  # standardized in the fit
    stat = max(2.0 * (ll1 - ll0), 0.0)  # nested models: negative only by solver tolerance
    return out | {"lr_stat": stat, "p_value": float(stats.chi2.sf(stat, 1)), "coef": float(coef[1])}


# ---------------------------------------------------------------- power and sample size

def _hanley_mcneil_variance(auroc: float, n_pos: int, n_neg: int) -> float:
    a = auroc
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    return (a * (1 - a) + (n_pos - 1) * (q1 - a**2) + (n_neg - 1) * (q2 - a**2)) / (n_pos * n_neg)


def delong_min_detectable_difference(n_pos: int, n_neg: int, auroc: float, correlation: float, *,
                                     alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference between two paired AUROCs that a two-sided DeLong test detects.

    Both AUROCs near ``auroc``, on the same ``n_pos`` wrong and ``n_neg`` right answers, their
    estimates correlated by ``correlation``. Each AUROC's variance is Hanley & McNeil's (1982,
    Radiology 143:29-36): with Q1 = A/(2-A) and Q2 = 2A^2/(1+A),
    Var(A) = (A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg);
    Var(A1 - A2) = 2 Var(A) (1 - correlation), and the difference is
    MDD = (z_{1-alpha/2} + z_{power}) sqrt(Var(A1 - A2)). Units: AUROC points (a fraction, e.g.
    0.05), always >= 0. NaN when n_pos or n_neg is below 1 or ``auroc``/``correlation`` is NaN.
    """
    if n_pos < 1 or n_neg < 1 or math.isnan(auroc) or math.isnan(correlation):
        return math.nan
    if not 0 <= auroc <= 1 or not -1 <= correlation <= 1:
        raise ValueError(f"auroc must lie in [0, 1] and correlation in [-1, 1], not {auroc}, {correlation}")
    var_diff = 2 * _hanley_mcneil_variance(auroc, n_pos, n_neg) * (1 - correlation)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * math.sqrt(max(var_diff, 0.0)))


def small_sample_warning(n: int, n_pos: int, n_neg: int, *, min_n: int = 100, min_class: int = 10) -> str | None:
    """A one-line warning when a run has too few decided answers to rank its scores, else None.

    Warns when ``n`` (decided answers) < ``min_n`` or either class (``n_pos`` wrong, ``n_neg``
    right) has fewer than ``min_class`` answers.
    """
    if n >= min_n and min(n_pos, n_neg) >= min_class:
        return None
    return (f"n={n} ({n_pos} wrong, {n_neg} right): fewer than {min_n} answers or {min_class} of a class; "
            "its AUROC interval is wide and its ranking unreliable")
