"""Calibration, risk-coverage, beyond-length test and power of uqflow.scoring.selective, on hand-worked cases."""

import math
import warnings

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from uqflow.scoring.selective import (aurc, beyond_length, brier_score, confidence_probabilities,
                                      delong_min_detectable_difference, expected_calibration_error, reliability_bins,
                                      risk_coverage, small_sample_warning)

# ---------------------------------------------------------------- Brier, ECE, reliability bins


def test_brier_by_hand():
    # (0.9-1)^2 + (0.9-0)^2 + (0.1-0)^2 + (0.1-0)^2 = 0.01 + 0.81 + 0.01 + 0.01 = 0.84; / 4 = 0.21
    assert brier_score([1, 0, 0, 0], [0.9, 0.9, 0.1, 0.1]) == pytest.approx(0.21)
    # a NaN probability is dropped with its answer
    assert brier_score([1, 0, 0, 0, 1], [0.9, 0.9, 0.1, 0.1, np.nan]) == pytest.approx(0.21)
    # one class only: (0.9-1)^2 + (0.8-1)^2 = 0.01 + 0.04; / 2 = 0.025
    assert brier_score([True, True], [0.9, 0.8]) == pytest.approx(0.025)
    assert math.isnan(brier_score([True], [np.nan]))


def test_ece_by_hand():
    # bins of width 0.1: the two 0.9s fall in [0.9, 1.0] (confidence 0.9, accuracy 1/2),
    # the two 0.1s in [0.1, 0.2) (confidence 0.1, accuracy 0).
    # ECE = 2/4 * |0.5 - 0.9| + 2/4 * |0 - 0.1| = 0.2 + 0.05 = 0.25
    assert expected_calibration_error([1, 0, 0, 0], [0.9, 0.9, 0.1, 0.1]) == pytest.approx(0.25)
    # two bins [0, 0.5), [0.5, 1]; the NaN answer is dropped, N = 4
    # upper: 0.8, 0.6 -> confidence 0.7, accuracy 1   -> 2/4 * 0.3  = 0.15
    # lower: 0.3, 0.2 -> confidence 0.25, accuracy 1/2 -> 2/4 * 0.25 = 0.125;  ECE = 0.275
    prob = [0.8, 0.6, 0.3, 0.2, np.nan]
    assert expected_calibration_error([1, 1, 0, 1, 0], prob, bins=2) == pytest.approx(0.275)
    # perfectly calibrated: confidence 0.5, accuracy 1/2 in one bin
    assert expected_calibration_error([1, 0], [0.5, 0.5]) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_reliability_bins_by_hand():
    r = reliability_bins([1, 0, 0, 0], [0.9, 0.9, 0.1, 0.1])
    assert list(r.count) == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert r.lower[1] == pytest.approx(0.1) and r.upper[9] == 1.0
    assert r.confidence[1] == pytest.approx(0.1) and r.accuracy[1] == 0.0
    assert r.confidence[9] == pytest.approx(0.9) and r.accuracy[9] == 0.5
    assert np.isnan(r.confidence[0]) and np.isnan(r.accuracy[5])  # empty bins are NaN, not 0


def test_bin_edges_are_lower_inclusive_and_one_is_in_the_last_bin():
    # 0.3 is the lower edge of bin 3 (np.linspace's edge 0.30000000000000004 would put it in bin 2)
    r = reliability_bins([1, 1, 0], [0.3, 1.0, 0.0])
    assert r.count[3] == 1 and r.count[9] == 1 and r.count[0] == 1


def test_probabilities_outside_0_1_are_refused():
    with pytest.raises(ValueError):
        expected_calibration_error([1, 0], [0.5, 1.5])
    with pytest.raises(ValueError):
        brier_score([1, 0], [-0.1, 0.5])


def test_undecided_answers_are_refused():
    with pytest.raises(ValueError, match="undecided"):
        brier_score(np.array([1.0, np.nan]), [0.5, 0.5])


# ---------------------------------------------------------------- risk-coverage, AURC

def test_risk_coverage_by_hand():
    correct = [True, False, True, False]
    score = [0.1, 0.9, 0.2, 0.5]  # most confident first: right (0.1), right (0.2), wrong (0.5), wrong (0.9)
    cov, risk = risk_coverage(correct, score)
    assert list(cov) == [0.25, 0.5, 0.75, 1.0]
    # errors among the first k, over k: 0/1, 0/2, 1/3, 2/4
    assert risk == pytest.approx([0.0, 0.0, 1 / 3, 0.5])
    # this is the oracle ordering: AURC = (0 + 0 + 1/3 + 1/2) / 4 = 5/24
    assert aurc(correct, score) == pytest.approx(5 / 24)
    # the reversed scores put both wrong first: risk 1, 1, 2/3, 1/2 -> AURC = (19/6) / 4 = 19/24
    assert aurc(correct, [0.9, 0.1, 0.5, 0.2]) == pytest.approx(19 / 24)


def test_risk_coverage_drops_nan_keeps_inf_and_ties_are_stable():
    # NaN score dropped; +inf is the least confident; the tie (0.2, 0.2) keeps input order: wrong, right
    correct = [True, False, True, False, True]
    score = [0.1, 0.2, 0.2, np.inf, np.nan]
    cov, risk = risk_coverage(correct, score)
    assert list(cov) == [0.25, 0.5, 0.75, 1.0]
    # order: right, wrong, right, wrong -> 0/1, 1/2, 1/3, 2/4
    assert risk == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert math.isnan(aurc([True], [np.nan]))


def test_risk_coverage_refuses_misaligned_inputs():
    with pytest.raises(ValueError):
        risk_coverage([True, False], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------- confidence probabilities

def _noisy_run(n=300, seed=1):
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n)
    correct = rng.random(n) > 1 / (1 + np.exp(-2 * score))  # more uncertain, more often wrong
    score[[3, 7, 11]] = np.nan
    return correct, score


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_confidence_probabilities_range_nan_and_direction(method):
    correct, score = _noisy_run()
    p = confidence_probabilities(correct, score, method=method)
    assert p.shape == score.shape
    assert list(np.flatnonzero(np.isnan(p))) == [3, 7, 11]  # NaN exactly where the score is NaN
    finite = p[~np.isnan(p)]
    assert ((finite >= 0) & (finite <= 1)).all()
    # higher score, lower P(correct): a strongly negative rank correlation
    keep = ~np.isnan(score)
    assert np.corrcoef(np.argsort(np.argsort(score[keep])), np.argsort(np.argsort(p[keep])))[0, 1] < -0.8
    # out-of-fold probabilities beat the constant base rate on Brier
    base = np.full(keep.sum(), correct[keep].mean())
    assert brier_score(correct[keep], p[keep]) < brier_score(correct[keep], base)


def test_isotonic_is_non_increasing_within_each_fold():
    correct, score = _noisy_run()
    p = confidence_probabilities(correct, score, method="isotonic", folds=5, seed=0)
    keep = ~np.isnan(score)
    s, y, q = score[keep], correct[keep].astype(int), p[keep]
    # the same splits as the function: one isotonic model per held-out fold
    for _, test in StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(s, y):
        order = np.argsort(s[test])
        assert (np.diff(q[test][order]) <= 1e-12).all()


def test_isotonic_on_separated_classes_by_hand():
    # right answers score 0..4, wrong 5..9; 5 folds each hold out one right and one wrong answer.
    # Scores 0..3: every training fold has a right answer at or above them (4, or 3 when 4 is
    # held out) and a right one at or below, so P = 1; scores 6..9: a wrong training answer (5) at
    # or below, P = 0; 4 and 5 lie between the two groups and are interpolated strictly inside (0, 1).
    correct = np.array([True] * 5 + [False] * 5)
    p = confidence_probabilities(correct, np.arange(10.0))
    assert list(p[:4]) == [1.0] * 4 and list(p[6:]) == [0.0] * 4
    assert 0 < p[4] < 1 and 0 < p[5] < 1
    assert (np.diff(p) <= 0).all()  # sorted input, and here monotone across folds too


def test_platt_survives_separation_without_warnings():
    correct = np.array([True] * 5 + [False] * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = confidence_probabilities(correct, np.arange(10.0), method="platt")
    assert (p[:4] > 0.5).all() and (p[6:] < 0.5).all()


def test_confidence_probabilities_undefined_with_one_class_or_too_few():
    assert np.isnan(confidence_probabilities([True] * 6, np.arange(6.0))).all()
    # a single wrong answer cannot be held out and fitted on both
    assert np.isnan(confidence_probabilities([True] * 5 + [False], np.arange(6.0))).all()
    # two of the smaller class: the folds shrink to 2 rather than failing
    p = confidence_probabilities([True] * 8 + [False] * 2, np.arange(10.0), folds=5)
    assert np.isfinite(p).all()
    with pytest.raises(ValueError):
        confidence_probabilities([True, False], [0.1, 0.2], method="beta")


# ---------------------------------------------------------------- beyond length

def _lengths(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng, rng.integers(1, 60, n).astype(float)


def test_a_score_that_is_log_length_adds_nothing():
    rng, length = _lengths()
    # wrong answers grow with log length only
    correct = rng.random(length.size) > 1 / (1 + np.exp(-(-3 + np.log1p(length))))
    for score in (np.log1p(length), 3 - 2 * np.log1p(length)):  # affine in the covariate: the same model
        r = beyond_length(correct, score, length)
        assert r["lr_stat"] == 0.0 and r["p_value"] == 1.0 and math.isnan(r["coef"])
        assert r["n"] == 400
    # an independent noise score: no evidence either
    assert beyond_length(correct, rng.normal(size=length.size), length)["p_value"] > 0.05


def test_a_score_with_signal_beyond_length_is_detected():
    rng, length = _lengths()
    score = rng.normal(size=length.size)
    correct = rng.random(length.size) > 1 / (1 + np.exp(-(-3 + np.log1p(length) + score)))
    r = beyond_length(correct, score, length)
    assert r["p_value"] < 1e-6 and r["lr_stat"] > 20
    assert r["coef"] > 0  # more uncertain, more often wrong
    assert r["auroc_within_length"] > 0.65 and r["strata"] == 4
    flipped = beyond_length(correct, -score, length)
    assert flipped["coef"] < 0 and flipped["auroc_within_length"] < 0.35
    assert flipped["lr_stat"] == pytest.approx(r["lr_stat"], rel=1e-4)


def test_auroc_within_length_strata_by_hand():
    # quartiles of length [1,1,1,1,5,5,9,9] are 1, 1, 3, 6, 9; the repeated 1 is merged, leaving
    # three strata: length 1 (4 answers), 5 (2) and 9 (2)
    length = [1, 1, 1, 1, 5, 5, 9, 9]
    correct = [False, True, True, True, False, True, False, True]
    score = [0.5, 0.1, 0.2, 0.9, 0.1, 0.9, 0.8, 0.3]
    # length 1: the wrong 0.5 is above 0.1 and 0.2, below 0.9 -> AUROC 2/3
    # length 5: wrong below right -> 0;  length 9: wrong above right -> 1
    # size-weighted: (4 * 2/3 + 2 * 0 + 2 * 1) / 8 = 7/12  (unweighted it would be 5/9)
    r = beyond_length(correct, score, length)
    assert r["auroc_within_length"] == pytest.approx(7 / 12) and r["strata"] == 3
    # 3 wrong answers (< 5): the test is undefined
    assert math.isnan(r["lr_stat"]) and math.isnan(r["p_value"]) and math.isnan(r["coef"])
    assert r["n"] == 8
    # a stratum with one class is skipped: make length 9 both right -> (4 * 2/3 + 2 * 0) / 6 = 4/9
    r = beyond_length(correct[:6] + [True, True], score, length)
    assert r["auroc_within_length"] == pytest.approx(4 / 9) and r["strata"] == 2


def test_beyond_length_drops_nan_rows_and_handles_separation():
    correct = np.array([True] * 20 + [False] * 20 + [True, False])
    score = np.r_[np.arange(40.0), np.nan, 1.0]
    length = np.r_[np.full(40, 10.0), 10.0, np.nan]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = beyond_length(correct, score, length)
    assert r["n"] == 40
    assert r["auroc_within_length"] == 1.0 and r["strata"] == 1  # one length, one stratum
    assert r["coef"] > 0 and np.isfinite(r["lr_stat"]) and r["p_value"] < 1e-6


# ---------------------------------------------------------------- power and small samples

def test_min_detectable_difference_by_hand():
    # A = 0.75, n_pos = n_neg = 200, r = 0.5:
    # Q1 = 0.75 / 1.25 = 0.6;  Q2 = 2 * 0.5625 / 1.75 = 0.642857...
    # Var = (0.1875 + 199 * 0.0375 + 199 * 0.0803571...) / 40000 = 23.6410714 / 40000 = 5.9102679e-4
    # Var(diff) = 2 * Var * (1 - 0.5) = 5.9102679e-4;  sd = 0.0243110
    # (z_0.975 + z_0.8) = 1.959964 + 0.841621 = 2.801585;  MDD = 2.801585 * 0.0243110 = 0.068109
    assert delong_min_detectable_difference(200, 200, 0.75, 0.5) == pytest.approx(0.068109, abs=2e-6)
    # perfectly correlated estimates: any difference is detected
    assert delong_min_detectable_difference(200, 200, 0.75, 1.0) == 0.0
    # more power, more answers: larger and smaller differences
    assert delong_min_detectable_difference(200, 200, 0.75, 0.5, power=0.9) > 0.068109
    assert delong_min_detectable_difference(800, 800, 0.75, 0.5) < 0.068109 / 1.9
    assert math.isnan(delong_min_detectable_difference(0, 200, 0.75, 0.5))
    assert math.isnan(delong_min_detectable_difference(10, 200, float("nan"), 0.5))
    with pytest.raises(ValueError):
        delong_min_detectable_difference(10, 10, 1.2, 0.5)


def test_small_sample_warning():
    assert small_sample_warning(16, 3, 13) == ("n=16 (3 wrong, 13 right): fewer than 100 answers or 10 of a class; "
                                               "its AUROC interval is wide and its ranking unreliable")
    assert small_sample_warning(500, 5, 495) is not None  # enough answers, too few wrong ones
    assert small_sample_warning(100, 10, 90) is None
    assert small_sample_warning(50, 25, 25, min_n=40) is None
