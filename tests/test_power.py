"""The report's statistics stated as they are: the power line from DeLong's correlation of the two
AUROC estimates, ECE with its spread over fold assignments, and the share of answers the
within-length AUROC covers. Each is checked against an independent computation on a hand-built
study (no store, no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import StratifiedKFold

from uqflow.report.data import Study
from uqflow.report.objections import AUROC_RANGE, calibration_rows, length_rows, power_rows
from uqflow.scoring.evaluation import auroc, delong_covariance, delong_test
from uqflow.scoring.selective import (ECE_FOLD_SEEDS, beyond_length, delong_min_detectable_difference,
                                      ece_over_fold_seeds)

# ---------------------------------------------------------------- DeLong's covariance, from its definition


def _delong_by_definition(correct, a, b):
    """DeLong, DeLong & Clarke-Pearson (1988) written out with loops: psi(X, Y) = 1 if X > Y,
    1/2 if X = Y, else 0 over (wrong X, right Y) pairs; V10_i = mean_j psi(X_i, Y_j),
    V01_j = mean_i psi(X_i, Y_j); S10, S01 their sample covariances (divisor m - 1, n - 1);
    S = S10 / m + S01 / n. Returns (AUROCs, S, r = S12 / sqrt(S11 S22))."""
    wrong = [i for i, c in enumerate(correct) if not c]
    right = [j for j, c in enumerate(correct) if c]
    m, n = len(wrong), len(right)

    def psi(x, y):
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [[sum(psi(s[i], s[j]) for j in right) / n for i in wrong] for s in (a, b)]
    v01 = [[sum(psi(s[i], s[j]) for i in wrong) / m for j in right] for s in (a, b)]
    A = [sum(v) / m for v in v10]
    S = [[0.0, 0.0], [0.0, 0.0]]
    for k in range(2):
        for l in range(2):
            s10 = sum((v10[k][i] - A[k]) * (v10[l][i] - A[l]) for i in range(m)) / (m - 1)
            s01 = sum((v01[k][j] - A[k]) * (v01[l][j] - A[l]) for j in range(n)) / (n - 1)
            S[k][l] = s10 / m + s01 / n
    return A, S, S[0][1] / math.sqrt(S[0][0] * S[1][1])


def test_delong_covariance_matches_its_definition_on_a_hand_case():
    # 4 wrong, 5 right answers; score b ties with itself and across the classes
    correct = [False, False, False, False, True, True, True, True, True]
    a = [0.9, 0.8, 0.4, 0.7, 0.3, 0.5, 0.1, 0.2, 0.6]
    b = [0.7, 0.7, 0.2, 0.9, 0.2, 0.4, 0.3, 0.1, 0.8]
    A, S, r = _delong_by_definition(correct, a, b)
    # a: the wrong 0.9, 0.8 and 0.7 beat all 5 right scores, 0.4 beats 3: 18 of 20 pairs
    assert A[0] == pytest.approx(18 / 20)
    dc = delong_covariance(correct, a, b)
    assert dc.auroc == pytest.approx(A)
    assert dc.cov == pytest.approx(np.array(S))
    assert dc.correlation == pytest.approx(r)
    assert (dc.n_pos, dc.n_neg) == (4, 5)
    # delong_test reads the same covariance: z = (A_a - A_b) / sqrt(S11 + S22 - 2 S12)
    z = (A[0] - A[1]) / math.sqrt(S[0][0] + S[1][1] - 2 * S[0][1])
    assert delong_test(correct, a, b).z == pytest.approx(z)
    # a NaN score leaves its answer out of both; one class left: undefined
    assert delong_covariance(correct + [True], a + [np.nan], b + [0.5]).cov == pytest.approx(np.array(S))
    assert delong_covariance([True] * 5 + [False], np.arange(6.0), np.arange(6.0)) is None


# ---------------------------------------------------------------- a study built by hand


def _study(runs: dict[str, pd.DataFrame], logged: dict[tuple[str, str], dict] | None = None, seed: int = 10) -> Study:
    """A Study of the given runs' answers (columns: correct, num_tokens and measures), with the
    metrics ``logged`` per (run, measure) and every run's ``seed`` setting in its params."""
    gens, scores, rows = [], [], []
    for run_id, d in runs.items():
        d = d.assign(run_id=run_id, position=np.arange(len(d)))
        d["correct"] = d["correct"].astype("boolean")
        gens.append(d)
        rows.append({"run_id": run_id, "label": f"model × {run_id}", "params": json.dumps({"seed": str(seed)})})
        for m in [c for c in d.columns if c not in ("run_id", "position", "correct", "num_tokens")]:
            v = (logged or {}).get((run_id, m), {})
            scores.append({"run_id": run_id, "label": f"model × {run_id}", "measure": m,
                           "ece": v.get("ece", math.nan), "brier": math.nan, "aurc": math.nan, "aurac": math.nan})
    return Study("sqlite://", pd.DataFrame(rows), pd.DataFrame(scores), pd.concat(gens, ignore_index=True), {})


def _answers(n=60, seed=3):
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.55
    g = rng.normal(size=n) + 0.9 * ~correct
    rw = 0.5 * g + rng.normal(size=n) + 0.5 * ~correct
    length = rng.integers(1, 12, size=n)
    return pd.DataFrame({"correct": correct, "num_tokens": length, "g_nll": g, "rw_g_nll": rw})


def test_power_uses_delongs_correlation_of_the_auroc_estimates():
    d = _answers()
    correct = d["correct"].to_numpy()
    _, _, r = _delong_by_definition(list(correct), list(d["g_nll"]), list(d["rw_g_nll"]))
    # the case tells the two apart: the scores' rank correlation is another number
    assert abs(spearmanr(d["g_nll"], d["rw_g_nll"]).statistic - r) > 0.05
    (row,) = power_rows(_study({"run": d}))
    assert row["correlation"] == pytest.approx(r)
    wrong = int((~correct).sum())
    at = min(max(auroc(correct, d["g_nll"]), AUROC_RANGE[0]), AUROC_RANGE[1])
    assert row["min_detectable_difference"] == pytest.approx(
        delong_min_detectable_difference(wrong, len(d) - wrong, at, r))
    share = wrong / len(d)
    assert row["min_detectable_difference_at_400"] == pytest.approx(
        delong_min_detectable_difference(round(400 * share), 400 - round(400 * share), at, r))


def test_power_without_a_defined_correlation_assumes_none():
    # one wrong answer: DeLong's covariance is undefined; the line assumes uncorrelated estimates
    d = pd.DataFrame({"correct": [True] * 9 + [False], "num_tokens": [2] * 10,
                      "g_nll": np.arange(10.0), "rw_g_nll": np.arange(10.0)[::-1]})
    (row,) = power_rows(_study({"run": d}))
    assert math.isnan(row["correlation"])
    assert row["min_detectable_difference"] == pytest.approx(delong_min_detectable_difference(1, 9, 0.95, 0.0))


# ---------------------------------------------------------------- ECE over fold assignments


def _ece_by_hand(correct, score, seed):
    """Out-of-fold isotonic P(correct) with sklearn's splitter, then ECE over 10 equal-width bins
    (the last one closed), written out: sum_b n_b / N |accuracy_b - confidence_b|."""
    y = np.asarray(correct, dtype=int)
    s = np.asarray(score, dtype=float)
    p = np.empty(s.size)
    k = min(5, int(y.sum()), int((1 - y).sum()))
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(s, y):
        iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0, y_max=1)
        p[test] = iso.fit(s[train], y[train]).predict(s[test])
    ece = 0.0
    for b in range(10):
        inside = (p >= b / 10) & ((p < (b + 1) / 10) if b < 9 else (p <= 1))
        if inside.any():
            ece += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    return ece


def test_ece_spread_over_fold_seeds_equals_a_recomputation():
    d = _answers(n=80, seed=5)
    correct, g = d["correct"].to_numpy(), d["g_nll"].to_numpy()
    by_hand = np.array([_ece_by_hand(correct, g, s) for s in range(20)])
    assert ECE_FOLD_SEEDS == tuple(range(20))
    spread = ece_over_fold_seeds(correct, g)
    assert spread["median"] == pytest.approx(np.median(by_hand))
    assert (spread["low"], spread["high"]) == pytest.approx((by_hand.min(), by_hand.max()))
    assert spread["seeds"] == 20 and spread["high"] > spread["low"]  # the fold draw moves ECE
    # one class: undefined, not a spread of NaNs
    one = ece_over_fold_seeds([True] * 8, np.arange(8.0))
    assert one["seeds"] == 0 and all(math.isnan(one[k]) for k in ("median", "low", "high"))


def test_report_shows_ece_as_logged_beside_its_spread():
    d = _answers(n=80, seed=5)
    correct = d["correct"].to_numpy()
    logged = _ece_by_hand(correct, d["g_nll"].to_numpy(), 10)  # the run's seed 10 drew its folds
    rows = calibration_rows(_study({"run": d}, {("run", "g_nll"): {"ece": logged}}))
    g = next(r for r in rows if r["measure"] == "g_nll")
    assert g["ece"] == logged and g["fold_seed"] == 10  # the logged metric as it is, and its seed
    by_hand = np.array([_ece_by_hand(correct, d["g_nll"].to_numpy(), s) for s in range(20)])
    assert g["ece_median"] == pytest.approx(np.median(by_hand))
    assert (g["ece_low"], g["ece_high"]) == pytest.approx((by_hand.min(), by_hand.max()))
    assert g["ece_low"] <= logged <= g["ece_high"]  # seed 10 is one of the 20


# ---------------------------------------------------------------- AUROC within length quartiles


def test_within_length_share_counts_only_the_quartiles_with_both_classes():
    # quartiles of length [1,1,1,1,5,5,9,9] merge to three strata: 1 (4 answers), 5 (2), 9 (2);
    # both answers of length 9 are right, so that stratum has no AUROC: 6 of 8 answers are covered
    length = [1, 1, 1, 1, 5, 5, 9, 9]
    correct = [False, True, True, True, False, True, True, True]
    score = [0.5, 0.1, 0.2, 0.9, 0.1, 0.9, 0.8, 0.3]
    r = beyond_length(correct, score, length)
    assert r["strata"] == 2 and r["within_length_share"] == pytest.approx(6 / 8)
    assert r["auroc_within_length"] == pytest.approx(4 / 9)  # (4 * 2/3 + 2 * 0) / 6
    # every stratum with both classes: all answers covered; no stratum: none
    assert beyond_length([False, True] * 4, score, length)["within_length_share"] == 1.0
    none = beyond_length([True] * 8, score, length)
    assert none["within_length_share"] == 0.0 and math.isnan(none["auroc_within_length"])
    # the report's rows carry it beside the figure
    d = pd.DataFrame({"correct": correct, "num_tokens": length, "g_nll": score})
    (row,) = length_rows(_study({"run": d}))
    assert row["within_length_share"] == pytest.approx(6 / 8)
    assert row["auroc_within_length"] == pytest.approx(4 / 9)


# ---------------------------------------------------------------- in summary.json and the report


def test_report_states_the_spread_the_coverage_and_delongs_correlation(tracking, tmp_path):
    from store_fixtures import log_run

    from uqflow.report import build_report, load_study
    from uqflow.store import aggregate

    url = f"sqlite:///{tmp_path / 'r.db'}"
    log_run("SmolLM2-135M-Instruct", "trivia_mini", 60, 4)
    aggregate(url=url)
    r = build_report(url, tmp_path / "rep", log_to_mlflow=False)
    o = json.loads(r.summary.read_text())["objections"]
    study = load_study(url)
    d, correct = study.decided(study.runs.run_id.iloc[0])
    (p,) = o["power"]
    assert p["correlation"] == pytest.approx(_delong_by_definition(list(correct), list(d["g_nll"]),
                                                                   list(d["rw_g_nll"]))[2])
    g = next(c for c in o["calibration"] if c["measure"] == "g_nll")
    assert g["ece"] == pytest.approx(study.scores.set_index("measure").loc["g_nll", "ece"])  # as logged
    assert g["fold_seed"] == 4 and g["ece_low"] <= g["ece"] <= g["ece_high"]
    by_hand = [_ece_by_hand(correct, d["g_nll"].to_numpy(dtype=float), s) for s in range(20)]
    assert g["ece_median"] == pytest.approx(np.median(by_hand))
    assert o["ece_fold_seeds"] == list(range(20))
    row = next(x for x in o["length"] if x["measure"] == "g_nll")
    assert row["within_length_share"] == beyond_length(correct, d["g_nll"], d["num_tokens"])["within_length_share"]
    html = r.html.read_text()
    for phrase in ("answers covered", "ECE (logged, seed)", "ECE over folds", "20\nfold assignments (seeds 0–19)",
                   "r (DeLong)", "S = S10/m + S01/n", f"{100 * row['within_length_share']:.0f}%"):
        assert phrase in html, phrase
    assert "Spearman" not in html
