"""Scores, correctness and AUROC on hand-built values."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uqflow.scoring.correctness import exact_match, f1_correct, max_f1, normalize_squad, token_f1
from uqflow.scoring.evaluation import OneClassWarning, auroc, auroc_with_ci
from uqflow.scoring.uncertainty import g_nll, ln_g_nll, max_token_nll, mean_token_entropy, rw_g_nll, score_row


def test_g_nll_family_by_hand():
    lp = [math.log(0.5), math.log(0.25), math.log(1.0)]
    assert g_nll(lp) == pytest.approx(math.log(2) + math.log(4))
    assert ln_g_nll(lp) == pytest.approx((math.log(2) + math.log(4)) / 3)
    assert max_token_nll(lp) == pytest.approx(math.log(4))
    assert mean_token_entropy([0.1, 0.3]) == pytest.approx(0.2)


def test_empty_answer_scores():
    assert g_nll([]) == 0.0
    assert math.isnan(ln_g_nll([])) and math.isnan(max_token_nll([])) and math.isnan(rw_g_nll([], []))


def test_rw_g_nll_weights_without_rescaling():
    lp = [math.log(0.5), math.log(0.1)]
    nll = [math.log(2), math.log(10)]
    # weights used as given: 0.9 and 0.1 (a min-max rescale would turn them into 1 and 0)
    assert rw_g_nll(lp, [0.9, 0.1]) == pytest.approx((0.9 * nll[0] + 0.1 * nll[1]) / 1.0)
    assert rw_g_nll(lp, [0.2, 0.2]) == pytest.approx(ln_g_nll(lp))
    assert rw_g_nll(lp, [0.0, 0.0]) == pytest.approx(ln_g_nll(lp))
    with pytest.raises(ValueError, match="2 weights for 3 tokens"):
        rw_g_nll([0.0, 0.0, 0.0], [1.0, 1.0])


def test_score_row_reads_row_fields():
    row = {"token_logprobs": [-1.0, -2.0], "token_entropies": [0.5, 1.5], "relevance": [1.0, 0.0]}
    s = score_row(row)
    assert s == {"g_nll": 3.0, "ln_g_nll": 1.5, "max_nll": 2.0, "mean_entropy": 1.0, "rw_g_nll": 1.0}


@pytest.mark.parametrize("pred,ref,f1", [
    ("Paris", "Paris", 1.0),
    ("The Paris.", "paris", 1.0),  # article, punctuation and case are normalised away
    ("Leo Tolstoy", "Tolstoy", 2 / 3),  # precision 1/2, recall 1
    ("a spider has eight legs", "eight", 0.4),  # 'a' dropped: precision 1/4, recall 1
    ("New York City", "York New", 0.8),  # bag of tokens: 2 shared, p=2/3, r=1
    ("", "Paris", 0.0),
    ("the", "a", 1.0),  # both normalise to empty: SQuAD counts that as a match
])
def test_token_f1_hand_worked(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_max_f1_exact_match_and_threshold():
    refs = ["William Shakespeare", "Shakespeare"]
    assert max_f1("Shakespeare", refs) == 1.0
    assert exact_match("shakespeare!", refs) == 1.0 and exact_match("Bill Shakespeare", refs) == 0.0
    assert f1_correct("Leo Tolstoy", ["Tolstoy"]) and not f1_correct("Count Leo Nikolayevich Tolstoy", ["Tolstoy"])
    assert max_f1("anything", []) == 0.0
    assert normalize_squad("  The  Beatles, an  Band ") == "beatles band"


def test_auroc_matches_sklearn_and_convention():
    rng = np.random.default_rng(1)
    correct = rng.random(200) < 0.5
    score = rng.normal(size=200) + (~correct) * 1.0  # wrong answers score higher
    assert auroc(correct, score) == pytest.approx(roc_auc_score(~correct, score))
    assert auroc(correct, score) > 0.7
    assert auroc([True, False], [0.0, 1.0]) == 1.0  # wrong answer more uncertain: perfect
    assert auroc([True, False], [1.0, 0.0]) == 0.0


def test_auroc_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    correct = rng.random(150) < 0.4
    score = rng.normal(size=150) + (~correct) * 0.7
    a = auroc_with_ci(correct, score, seed=3)
    b = auroc_with_ci(correct, score, seed=3)
    assert a == b
    assert a.ci_low < a.auroc < a.ci_high and 0 <= a.ci_low and a.ci_high <= 1
    assert a.n == 150 and a.n_incorrect == int((~correct).sum())


def test_one_class_gives_nan_and_warning_not_half():
    with pytest.warns(OneClassWarning):
        r = auroc_with_ci([True, True, True], [0.1, 0.2, 0.3])
    assert math.isnan(r.auroc) and math.isnan(r.ci_low) and math.isnan(r.ci_high)


def test_nan_scores_are_left_out():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auroc([True, False, False], [0.0, float("nan"), 1.0]) == 1.0


def test_interval_needs_two_of_each_class():
    r = auroc_with_ci([True, True, False], [0.1, 0.2, 0.9])
    assert r.auroc == 1.0 and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert math.isnan(auroc_with_ci([True, False, True, False], [0, 1, 0, 1], n_resamples=0).ci_low)
