"""From generations to a scored table and a run's metrics; shared by runs and rescoring.

Each step adds columns to the per-example table (``generations.parquet``): relevance, then
correctness, then every score; :func:`evaluate` turns the table into the run's metrics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from uqflow.scoring.evaluation import (OneClassWarning, accuracy_at_coverage, aurac, auroc_with_ci, delong_test,
                                       prr)
from uqflow.scoring.judges import Judge, judge_examples
from uqflow.scoring.relevance import token_relevance
from uqflow.scoring.uncertainty import SCORES, score_row

#: scores whose evaluation is reported, in table order
REPORTED_SCORES = tuple(SCORES)
COVERAGES = (0.8, 0.9, 0.95)
#: the paired comparison the study asks about
DELONG_PAIR = ("g_nll", "rw_g_nll")
#: the metrics a run logs for each measure, by name (the results store's ``scores`` columns), as
#: patterns of the measure's name; evaluation and aggregation both read them from here
MEASURE_METRICS = {"auroc": "auroc_{m}", "ci_low": "auroc_{m}_ci_low", "ci_high": "auroc_{m}_ci_high",
                   "aurac": "aurac_{m}", "prr": "prr_{m}",
                   **{f"acc_cov{round(c * 100)}": f"acc_cov{round(c * 100)}_{{m}}" for c in COVERAGES}}


def metric(kind: str, measure: str) -> str:
    """The name of a measure's metric: ``metric("auroc", "g_nll")`` is ``auroc_g_nll``."""
    return MEASURE_METRICS[kind].format(m=measure)


def add_relevance(frame: pd.DataFrame, decode: Callable[[Sequence[int]], str], similarity) -> pd.DataFrame:
    """``relevance``: TokenSAR relevance of every answer token (one batched similarity call)."""
    frame = frame.copy()
    frame["relevance"] = token_relevance(list(frame["question"]), [list(t) for t in frame["token_ids"]],
                                         decode, similarity)
    return frame


def add_correctness(frame: pd.DataFrame, judge: Judge, abstention: str = "official") -> pd.DataFrame:
    """``correct`` (nullable: None = undecided), ``correctness_score`` and ``judge_reply``;
    unanswerable questions are judged by the ``abstention`` rule."""
    frame = frame.copy()
    verdicts = judge_examples(judge, list(frame["question"]), list(frame["answer"]),
                              [list(r) for r in frame["references"]], list(frame["answerable"]), abstention)
    frame["correct"] = pd.array([v.correct for v in verdicts], dtype="boolean")
    frame["correctness_score"] = [v.score for v in verdicts]
    frame["judge_reply"] = [v.raw for v in verdicts]
    return frame


def add_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One column per uncertainty score (higher = more uncertain), recomputed from each row."""
    frame = frame.copy()
    scores = [score_row(row) for _, row in frame.iterrows()]
    for name in SCORES:
        frame[name] = [s[name] for s in scores]
    return frame


def evaluate(frame: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy and, for every score, AUROC with its interval, AURAC, PRR and accuracy at fixed
    coverages, plus DeLong's paired test of G-NLL against RW-G-NLL. Undecided judgments are left
    out (and counted); undefined values are NaN (not logged), never a made-up 0.5."""
    decided = frame[frame["correct"].notna()]
    correct = decided["correct"].astype(bool).to_numpy()
    m: dict[str, float] = {
        "n": float(len(frame)), "n_undecided": float(len(frame) - len(decided)),
        "accuracy": float(correct.mean()) if correct.size else math.nan,
        "n_answerable": float(frame["answerable"].sum()),
        "mean_answer_tokens": float(frame["token_ids"].map(len).mean()) if len(frame) else math.nan,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)  # reported once below, not once per score
        for name in REPORTED_SCORES:
            s = decided[name].to_numpy(dtype=np.float64)
            r = auroc_with_ci(correct, s, n_resamples=n_bootstrap, seed=seed)
            m[metric("auroc", name)], m[metric("ci_low", name)], m[metric("ci_high", name)] = r.auroc, r.ci_low, r.ci_high
            m[metric("aurac", name)] = aurac(correct, s)
            m[metric("prr", name)] = prr(correct, s)
            for c in COVERAGES:
                m[metric(f"acc_cov{round(c * 100)}", name)] = accuracy_at_coverage(correct, s, c)
    if correct.size and (correct.all() or not correct.any()):
        warnings.warn(f"every decided answer is {'right' if correct.all() else 'wrong'}: AUROC is undefined",
                      OneClassWarning, stacklevel=2)
    a, b = DELONG_PAIR
    d = delong_test(correct, decided[a].to_numpy(dtype=np.float64), decided[b].to_numpy(dtype=np.float64))
    m[f"delong_z_{a}_vs_{b}"] = d.z
    m[f"delong_p_{a}_vs_{b}"] = d.p_value
    return m
