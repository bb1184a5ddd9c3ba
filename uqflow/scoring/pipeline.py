"""From generations to a scored table and a run's metrics; shared by runs and rescoring.

Each step adds columns to the per-example table (``generations.parquet``): relevance, then
correctness, then every score; :func:`evaluate` turns the table into the run's metrics.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from uqflow.artifact import VERDICT_PREFIX
from uqflow.scoring.evaluation import (OneClassWarning, accuracy_at_coverage, aurac, auroc_with_ci, delong_test,
                                       prr, prr_at)
from uqflow.scoring.judges import Judge, agreement, judge_examples
from uqflow.scoring.measures import SAMPLED, SINGLE_PASS, score_row, score_sampled_row
from uqflow.scoring.cost import Cost, measure_costs, part_metrics
from uqflow.scoring.relevance import similarity_passes, token_relevance
from uqflow.scoring.selective import aurc, brier_score, confidence_probabilities, expected_calibration_error
from uqflow.scoring.semantic import cluster_samples

#: the columns of a generations table that hold a run's sampled answers
SAMPLE_COLUMNS = ("samples", "sample_token_ids", "sample_token_logprobs", "log_p_true")
COVERAGES = (0.8, 0.9, 0.95)
#: how a measure is mapped to P(correct) for its calibration (ECE, Brier): a non-increasing step
#: function of the score fitted out of fold (5-fold cross-fitting inside the run, scoring/selective.py)
CALIBRATION = "isotonic"
#: the paired comparison the study asks about
DELONG_PAIR = ("g_nll", "rw_g_nll")
#: the metrics a run logs for each measure, by name (the results store's ``scores`` columns), as
#: patterns of the measure's name; evaluation and aggregation both read them from here
MEASURE_METRICS = {"auroc": "auroc_{m}", "ci_low": "auroc_{m}_ci_low", "ci_high": "auroc_{m}_ci_high",
                   "aurac": "aurac_{m}", "prr": "prr_{m}", "prr50": "prr50_{m}",
                   **{f"acc_cov{round(c * 100)}": f"acc_cov{round(c * 100)}_{{m}}" for c in COVERAGES},
                   # calibration (the measure mapped to P(correct), cross-validated) and risk-coverage
                   "ece": "ece_{m}", "brier": "brier_{m}", "aurc": "aurc_{m}",
                   # what the measure cost beyond the greedy pass, per question (scoring/cost.py)
                   "cost_passes": "cost_passes_{m}", "cost_tokens": "cost_tokens_{m}",
                   "cost_seconds": "cost_seconds_{m}"}


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


def verdict_columns(frame) -> dict[str, str]:
    """judge name -> its verdict column, for the extra judges a table holds."""
    names = frame.column_names if hasattr(frame, "column_names") else frame.columns  # a pyarrow Table, or pandas
    return {c[len(VERDICT_PREFIX):]: c for c in names if c.startswith(VERDICT_PREFIX)}


def add_verdicts(frame: pd.DataFrame, judges: dict[str, Judge], abstention: str = "official") -> pd.DataFrame:
    """``judge.<name>``: each extra judge's verdict (nullable), judged as ``correct`` is, beside it."""
    frame = frame.copy()
    for name, judge in judges.items():
        verdicts = judge_examples(judge, list(frame["question"]), list(frame["answer"]),
                                  [list(r) for r in frame["references"]], list(frame["answerable"]), abstention)
        frame[VERDICT_PREFIX + name] = pd.array([v.correct for v in verdicts], dtype="boolean")
    return frame


def verdict_list(column: pd.Series) -> list[bool | None]:
    """A nullable verdict column as a list of True, False and None (undecided): pandas' boolean
    arrays hold pd.NA, whose truth value raises."""
    return column.astype(object).where(column.notna(), None).tolist()


def judge_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """For each extra judge, its :func:`~uqflow.scoring.judges.agreement` with the run's judge as
    ``judge/<name>/accuracy``, ``/agreement`` and ``/kappa`` (a colon in the name becomes a dash,
    as MLflow's metric names allow no colon on Windows)."""
    own = verdict_list(frame["correct"])
    out = {}
    for name, col in verdict_columns(frame).items():
        key = "judge/" + name.replace(":", "-")
        out.update({f"{key}/{k}": v for k, v in agreement(own, verdict_list(frame[col])).items()})
    return out


def sampled(frame: pd.DataFrame) -> bool:
    """Whether a generations table holds sampled answers (a run with num_generations > 0)."""
    return "sample_token_logprobs" in frame.columns


def measures_of(frame: pd.DataFrame) -> tuple[str, ...]:
    """The measures a generations table has: the single-pass scores, and the sampled ones if it sampled."""
    return SINGLE_PASS + (SAMPLED if sampled(frame) else ())


def add_semantic_ids(frame: pd.DataFrame, entailment, strict: bool = False) -> tuple[pd.DataFrame, Cost]:
    """``semantic_ids``: each question's sampled answers clustered by bidirectional entailment
    (scoring/semantic.py), and ``sample_entailment``, the judge's probability that each sample
    entails each other (the same judgments); returns the table and what the clustering cost."""
    frame = frame.copy()
    ids, matrices, stats = cluster_samples(list(frame["question"]), [list(s) for s in frame["samples"]], entailment,
                                           strict)
    frame["semantic_ids"] = ids
    frame["sample_entailment"] = matrices
    judge_tokens = getattr(entailment, "tokens", 0)  # an LLM judge's generated tokens
    passes = getattr(entailment, "passes", None)
    return frame, Cost(stats.model_calls if passes is None else passes, judge_tokens, stats.seconds)


def add_pairwise(frame: pd.DataFrame, decode: Callable[[Sequence[int]], str], similarity) -> tuple[pd.DataFrame,
                                                                                                   dict[str, Cost]]:
    """The pairwise record of a table that sampled, from the similarity model ``similarity``
    (pairs of texts -> scores, clipped to [0, 1]): ``sample_similarity``, each question's N x N
    similarity of every pair of sampled answers (symmetric, 1 on the diagonal); ``greedy_similarity``, the greedy
    answer's similarity to each sample; and ``sample_relevance``, the TokenSAR relevance of each
    sample's tokens as RW-G-NLL's (:func:`~uqflow.scoring.relevance.token_relevance`). Every
    measure of sample consistency (scoring/pairwise.py) is a function of these and the samples, so
    a rescore with another similarity model recomputes them without sampling again. Returns the
    table and the cost of its two parts: ``pairwise`` (both similarities, one call) and
    ``sample_relevance``."""
    frame = frame.copy()
    t = time.perf_counter()
    pairs: list[tuple[str, str]] = []
    for answer, texts in zip(frame["answer"], frame["samples"]):
        texts = [str(x).strip() for x in texts]
        pairs.extend((texts[i], texts[j]) for i in range(len(texts)) for j in range(i + 1, len(texts)))
        pairs.extend((str(answer).strip(), x) for x in texts)
    # in [0, 1], as SAR's cross-encoder scores lie: an embedding's negative cosine (two unrelated
    # texts) would make SAR's log of relevance-weighted probabilities undefined
    sims = np.clip(np.asarray(similarity(pairs), dtype=np.float64), 0.0, 1.0) if pairs else np.zeros(0)
    matrices, greedy, pos = [], [], 0
    for texts in frame["samples"]:
        n = len(texts)
        m = np.eye(n)
        upper = np.triu_indices(n, 1)
        m[upper] = sims[pos:pos + len(upper[0])]
        m.T[upper] = m[upper]
        pos += len(upper[0])
        matrices.append(m.tolist())
        greedy.append(sims[pos:pos + n].tolist())
        pos += n
    frame["sample_similarity"], frame["greedy_similarity"] = matrices, greedy
    parts = {"pairwise": Cost(float(similarity_passes(similarity, pairs)), 0, time.perf_counter() - t)}
    t = time.perf_counter()
    counts = [len(ids) for ids in frame["sample_token_ids"]]
    flat_questions = [q for q, k in zip(frame["question"], counts) for _ in range(k)]
    flat_ids = [list(ids) for row in frame["sample_token_ids"] for ids in row]
    flat = token_relevance(flat_questions, flat_ids, decode, similarity)
    grouped, pos = [], 0
    for k in counts:
        grouped.append(flat[pos:pos + k])
        pos += k
    frame["sample_relevance"] = grouped
    # as RW-G-NLL's relevance is counted: one pass per text embedded, each sample whole and without each token
    parts["sample_relevance"] = Cost(float(sum(len(ids) + 1 for ids in flat_ids)), 0, time.perf_counter() - t)
    return frame, parts


def add_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """One column per uncertainty score (higher = more uncertain), recomputed from each row; the
    sampled measures too when the table has samples."""
    frame = frame.copy()
    scores = [score_row(row) for _, row in frame.iterrows()]
    for name in SINGLE_PASS:
        frame[name] = [s[name] for s in scores]
    if sampled(frame):
        scores = [score_sampled_row(row) for _, row in frame.iterrows()]
        for name in SAMPLED:
            frame[name] = [s[name] for s in scores]
    return frame


def cost_metrics(frame: pd.DataFrame, parts: dict[str, Cost]) -> dict[str, float]:
    """Per question: each part's cost (``part_<unit>_<part>``) and each measure's
    (``cost_<unit>_<measure>``), for the measures the table has (scoring/cost.py)."""
    n = max(len(frame), 1)
    out = part_metrics(parts, len(frame))
    for m, c in measure_costs(parts, measures_of(frame)).items():
        out.update({metric("cost_passes", m): c.passes / n, metric("cost_tokens", m): c.tokens / n,
                    metric("cost_seconds", m): c.seconds / n})
    return out


def evaluate(frame: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy and, for every score (the sampled measures too, if the run sampled), AUROC with its
    interval, AURAC, PRR, accuracy at fixed coverages, the area under the risk-coverage curve, and
    the calibration (ECE, Brier) of the score mapped to P(correct) by CALIBRATION; the extra judges'
    accuracy and agreement with the run's judge; DeLong's paired test of G-NLL against RW-G-NLL. Undecided judgments are left
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
        for name in measures_of(frame):
            s = decided[name].to_numpy(dtype=np.float64)
            r = auroc_with_ci(correct, s, n_resamples=n_bootstrap, seed=seed)
            m[metric("auroc", name)], m[metric("ci_low", name)], m[metric("ci_high", name)] = r.auroc, r.ci_low, r.ci_high
            m[metric("aurac", name)] = aurac(correct, s)
            m[metric("prr", name)] = prr(correct, s)
            m[metric("prr50", name)] = prr_at(correct, s)
            for c in COVERAGES:
                m[metric(f"acc_cov{round(c * 100)}", name)] = accuracy_at_coverage(correct, s, c)
            prob = confidence_probabilities(correct, s, method=CALIBRATION, seed=seed)
            m[metric("ece", name)] = expected_calibration_error(correct, prob)
            m[metric("brier", name)] = brier_score(correct, prob)
            m[metric("aurc", name)] = aurc(correct, s)
    if correct.size and (correct.all() or not correct.any()):
        warnings.warn(f"every decided answer is {'right' if correct.all() else 'wrong'}: AUROC is undefined",
                      OneClassWarning, stacklevel=2)
    m.update(judge_metrics(frame))
    a, b = DELONG_PAIR
    d = delong_test(correct, decided[a].to_numpy(dtype=np.float64), decided[b].to_numpy(dtype=np.float64))
    m[f"delong_z_{a}_vs_{b}"] = d.z
    m[f"delong_p_{a}_vs_{b}"] = d.p_value
    return m
