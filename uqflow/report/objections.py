"""The objections a careful reader raises before believing a ranking of measures, each tested on
the stored answers: answer length, the correctness judge, calibration, and statistical power.

- **Beyond length.** G-NLL sums over tokens, so long answers score as uncertain whatever the model
  believes. Per run and measure, a likelihood-ratio test of two logistic models of a wrong answer
  (log answer length alone, then with the measure) says whether the measure adds anything once
  length is known; the AUROC within length quartiles says how much (scoring/selective.py).
- **The judge.** Where runs stored extra judges' verdicts (the ``judges`` setting), their agreement
  with the run's judge (Cohen's kappa) and each measure's AUROC under each judge, so a ranking that
  flips with the judge shows; a few answers the judges disagree on.
- **Calibration and selective prediction.** ECE, Brier and the area under the risk-coverage curve,
  as the runs logged them (the measure mapped to P(correct) by a cross-fitted isotonic fit, its
  folds drawn with the run's seed); beside the logged ECE, its median and range over 20 fold
  assignments, recomputed from the stored answers, since one assignment's ECE is one draw.
- **Power.** A warning on every run whose AUROCs rest on fewer than 100 answers or 10 of a class,
  and the smallest AUROC difference DeLong's test detects at 80% power with each run's n (and with
  the reference study's 400), from DeLong's correlation of the AUROC estimates of G-NLL and RW-G-NLL.

Every function returns plain rows (lists of dicts) for summary.json and the HTML.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np

from uqflow.report.data import Study
from uqflow.scoring.evaluation import OneClassWarning, auroc_with_ci, delong_covariance
from uqflow.scoring.judges import agreement
from uqflow.scoring.measures import BASELINES
from uqflow.scoring.pipeline import CALIBRATION, verdict_list
from uqflow.scoring.selective import (ECE_FOLD_SEEDS, beyond_length, delong_min_detectable_difference,
                                      ece_over_fold_seeds, small_sample_warning)

#: the reference study's questions per run, for the power line
STUDY_N = 400
ALPHA, POWER = 0.05, 0.8
#: the AUROCs at which power is computed: the observed one, kept inside this range
AUROC_RANGE = (0.6, 0.95)
#: answers shown per run where its judges disagree
DISAGREEMENTS_PER_RUN = 3


def length_rows(study: Study) -> list[dict[str, Any]]:
    """Per run and measure: the measure's AUROC, answer length's, the AUROC within length
    quartiles with the share of the answers it covers (the quartiles holding both classes), and the
    likelihood-ratio test's p that the measure adds nothing beyond length."""
    rows = []
    for _, run in study.runs.iterrows():
        d, correct = study.decided(run.run_id)
        length = d["num_tokens"].to_numpy(dtype=float)
        length_auroc = _auroc(correct, length)
        for m in study.measures:
            # the length baselines are not tested against themselves
            if m in BASELINES or m not in d.columns or d[m].isna().all():
                continue
            r = beyond_length(correct, d[m].to_numpy(dtype=float), length)
            rows.append({"run_id": run.run_id, "label": run.label, "measure": m,
                         "auroc": _auroc(correct, d[m].to_numpy(dtype=float)), "length_auroc": length_auroc,
                         "auroc_within_length": r["auroc_within_length"],
                         "within_length_share": r["within_length_share"], "p_value": r["p_value"],
                         "coef": r["coef"], "n": r["n"],
                         "beyond": bool(math.isfinite(r["p_value"]) and r["p_value"] < ALPHA and r["coef"] > 0)})
    return rows


def _auroc(correct: np.ndarray, score: np.ndarray) -> float:
    """AUROC, NaN where one class is missing (a judge that calls every answer right): the tables say
    "undefined" there, so the warning would only repeat it on the console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)
        return auroc_with_ci(correct, score, n_resamples=0).auroc


def length_summary(rows: list[dict[str, Any]], measure: str = "g_nll") -> str:
    """One sentence on ``measure`` beyond length, over the runs."""
    mine = [r for r in rows if r["measure"] == measure and math.isfinite(r["p_value"])]
    if not mine:
        return "No run has enough answers of both kinds to test whether the measure predicts errors beyond length."
    beyond = [r for r in mine if r["beyond"]]
    longer = [r for r in mine if math.isfinite(r["length_auroc"]) and math.isfinite(r["auroc"])
              and r["length_auroc"] >= r["auroc"]]
    return (f"In {len(beyond)} of {len(mine)} runs the measure predicts wrong answers beyond answer length "
            f"(likelihood-ratio test, p < {ALPHA}); in {len(longer)} answer length alone reaches at least its AUROC.")


def judge_rows(study: Study) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """For runs with extra judges' verdicts: (agreement rows: run, judge, accuracy, kappa;
    AUROC rows: run, judge, measure, AUROC; a few answers the judges disagree on)."""
    rows, aurocs, examples = [], [], []
    for _, run in study.runs.iterrows():
        answers = study.answers(run.run_id)
        if "verdicts" not in answers or not answers["verdicts"].map(lambda v: isinstance(v, dict) and bool(v)).any():
            continue
        judges = sorted({j for v in answers["verdicts"] if isinstance(v, dict) for j in v})
        own = str(run.correctness or "judge")
        verdicts = {own: verdict_list(answers["correct"])}
        for j in judges:
            verdicts[j] = [v.get(j) if isinstance(v, dict) else None for v in answers["verdicts"]]
        for j, vs in verdicts.items():
            a = agreement(verdicts[own], vs)
            rows.append({"run_id": run.run_id, "label": run.label, "judge": j, "own": j == own, **a,
                         "kappa": math.nan if j == own else a["kappa"]})
            mask = np.array([b is not None for b in vs])
            correct = np.array([bool(b) for b in vs if b is not None])
            for m in study.measures:
                if m in answers.columns and not answers[m].isna().all():
                    aurocs.append({"run_id": run.run_id, "label": run.label, "judge": j, "measure": m,
                                   "auroc": _auroc(correct, answers.loc[mask, m].to_numpy(dtype=float))})
        shown = 0
        for i, (_, a) in enumerate(answers.iterrows()):
            values = {j: verdicts[j][i] for j in verdicts}
            if len({v for v in values.values() if v is not None}) > 1 and shown < DISAGREEMENTS_PER_RUN:
                examples.append({"label": run.label, "question": a.question, "answer": a.answer,
                                 "references": list(a.reference_answers or [])[:3], "verdicts": values})
                shown += 1
    return rows, aurocs, examples


def ranking_flips(aurocs: list[dict[str, Any]], a: str = "g_nll", b: str = "answer_tokens") -> list[dict[str, Any]]:
    """Runs where judges disagree on which of measures ``a`` and ``b`` flags errors better."""
    out = []
    by_run: dict[str, dict[str, dict[str, float]]] = {}
    for r in aurocs:
        by_run.setdefault(r["label"], {}).setdefault(r["judge"], {})[r["measure"]] = r["auroc"]
    for label, judges in by_run.items():
        winners = {j: (a if v.get(a, math.nan) >= v.get(b, math.nan) else b) for j, v in judges.items()
                   if math.isfinite(v.get(a, math.nan)) and math.isfinite(v.get(b, math.nan))}
        if len(set(winners.values())) > 1:
            out.append({"label": label, "winners": winners})
    return out


def calibration_rows(study: Study, measures: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Per run and measure: ECE and Brier of the measure mapped to P(correct) and AURC, as logged
    (``ece``: one fold assignment, drawn with the run's seed, ``fold_seed``); and ECE's ``ece_median``,
    ``ece_low`` and ``ece_high`` (smallest, largest) over the fold seeds ``ECE_FOLD_SEEDS``,
    recomputed from the run's stored, decided answers (selective.ece_over_fold_seeds)."""
    s = study.scores
    if "ece" not in s.columns:
        return []
    keep = s["measure"].isin(measures or study.measures)
    seeds = {run.run_id: _run_seed(run) for run in study.runs.itertuples()}
    decided: dict[str, tuple] = {}
    rows = []
    for r in s[keep].itertuples():
        if r.run_id not in decided:
            decided[r.run_id] = study.decided(r.run_id)
        d, correct = decided[r.run_id]
        spread = (ece_over_fold_seeds(correct, d[r.measure].to_numpy(dtype=float), method=CALIBRATION)
                  if r.measure in d.columns else ece_over_fold_seeds([], []))
        rows.append({"label": r.label, "measure": r.measure, "ece": r.ece, "fold_seed": seeds.get(r.run_id),
                     "ece_median": spread["median"], "ece_low": spread["low"], "ece_high": spread["high"],
                     "ece_seeds": spread["seeds"], "brier": r.brier, "aurc": r.aurc, "aurac": r.aurac})
    return rows


def _run_seed(run) -> int | None:
    """The run's ``seed`` setting (which drew its calibration folds), from its stored params; None if absent."""
    params = getattr(run, "params", None)
    try:
        if isinstance(params, str):
            params = json.loads(params)
        return int(params["seed"])
    except (TypeError, KeyError, ValueError):
        return None


def power_rows(study: Study, a: str = "g_nll", b: str = "rw_g_nll") -> list[dict[str, Any]]:
    """Per run: its small-n warning (or None), and the smallest difference between the AUROCs of
    ``a`` and ``b`` that a two-sided DeLong test detects at 80% power with this run's answers and
    with the study's 400 at the same accuracy (selective.delong_min_detectable_difference).

    ``correlation`` is DeLong's correlation of the two AUROC estimates over the run's decided
    answers, r = S_ab / sqrt(S_aa S_bb) from DeLong's covariance S = S10/m + S01/n
    (evaluation.delong_covariance), not a correlation of the scores themselves. Where it is
    undefined (fewer than 2 answers of a class, or an AUROC estimate without variance) it is NaN
    and the detectable difference assumes 0, the uncorrelated case."""
    rows = []
    for _, run in study.runs.iterrows():
        d, correct = study.decided(run.run_id)
        n, wrong = len(correct), int((~correct).sum())
        auroc = _auroc(correct, d[a].to_numpy(dtype=float)) if a in d else float("nan")
        r = float("nan")
        if a in d and b in d:
            dc = delong_covariance(correct, d[a].to_numpy(dtype=float), d[b].to_numpy(dtype=float))
            r = dc.correlation if dc is not None else float("nan")
        # the variance vanishes at an AUROC of 1 (a small run's perfect ranking): the design point is
        # the observed AUROC held inside [0.6, 0.95], 0.75 where undefined
        at = min(max(auroc, AUROC_RANGE[0]), AUROC_RANGE[1]) if math.isfinite(auroc) else 0.75
        share = wrong / n if n else float("nan")
        mdd = delong_min_detectable_difference(wrong, n - wrong, at, r if math.isfinite(r) else 0.0,
                                               alpha=ALPHA, power=POWER)
        mdd_study = (delong_min_detectable_difference(round(STUDY_N * share), STUDY_N - round(STUDY_N * share), at,
                                                      r if math.isfinite(r) else 0.0, alpha=ALPHA, power=POWER)
                     if math.isfinite(share) else float("nan"))
        rows.append({"run_id": run.run_id, "label": run.label, "n": n, "wrong": wrong, "right": n - wrong,
                     "warning": small_sample_warning(n, wrong, n - wrong), "correlation": r,
                     "min_detectable_difference": mdd, "min_detectable_difference_at_400": mdd_study})
    return rows


def objections(study: Study, measure: str = "g_nll") -> dict[str, Any]:
    """Every objection's rows, for summary.json and the report."""
    lengths = length_rows(study)
    agreement, judge_aurocs, disagreements = judge_rows(study)
    return {"length": lengths, "length_summary": length_summary(lengths, measure),
            "judges": agreement, "judge_aurocs": judge_aurocs, "judge_disagreements": disagreements,
            "judge_flips": ranking_flips(judge_aurocs, measure, "answer_tokens"),
            "calibration": calibration_rows(study), "ece_fold_seeds": list(ECE_FOLD_SEEDS),
            "power": power_rows(study)}
