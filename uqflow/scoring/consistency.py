"""The one check of a run's ``generations.parquet`` against itself and its run, shared by
aggregation (``uqflow aggregate``) and rescoring (``uqflow rescore``): derive, then compare.

:func:`uqflow.artifact.check_generations` checks each value's type; :func:`derive` then recomputes
from each row's own fields everything a run stores beside them, and compares:

- the table has as many rows as the run's metric ``n``, and no example twice;
- a run that sampled has, in every row, ``num_generations`` sampled answers, and as many token-id
  lists, log-probability lists and cluster ids (``semantic_ids``, numbered 0, 1, 2... in order of
  first appearance, as clustering numbers them) as answers; a run that did not sample has none;
- the answer is the text its token pieces (``tokens``) join to, log-probabilities are at most 0 and
  entropies at least 0;
- every declared measure (``scoring/measures.py``) equals its function of the row's fields: G-NLL and
  its companions from the token log-probabilities, entropies and relevance, the length baselines
  from the token ids and the answer, the sampled measures from the samples' log-probabilities,
  their cluster ids and log p(True);
- every verdict a rule decides (``correct`` and ``correctness_score`` under the run's judge and
  threshold, an extra rule judge's ``judge.<name>``, and every unanswerable question's verdict
  under the run's abstention rule) equals the rule applied to the row's answer and references;
- every per-run metric that :func:`uqflow.scoring.pipeline.evaluate` computes from the rows
  (accuracy, each measure's AUROC and interval, AURAC, PRR, coverage accuracies, calibration,
  risk-coverage, the judges' agreement, DeLong's test) equals the metric the run logged.

What needs a model to recompute is checked for type and shape only: the answer's own tokens and
log-probabilities, relevance weights, sampled answers and their clusters, log p(True), and an LLM
judge's verdicts on answerable questions (docs/definitions.md, "What a stored run must imply").

A contradiction raises :class:`~uqflow.artifact.ArtifactError` naming the column (or metric), the
row and both values, and the caller stores (or logs) nothing of that run. What passes is returned
as derived (:class:`Derived`), so a store holds what the rows imply and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from uqflow.artifact import (CHECKSUM_TAG_PREFIX, GENERATIONS_FILE, REQUIRED_COLUMNS as REQUIRED_FIELDS,
                             VERDICT_PREFIX, ArtifactError, check_generations)
from uqflow.scoring.measures import MEASURES, NAMES, REQUIRED
from uqflow.scoring.uncertainty import g_nll

#: what a stored run's table must hold: the artifact's required fields and the study's two measures
REQUIRED_COLUMNS = REQUIRED_FIELDS + REQUIRED
#: the per-sample columns of a run that sampled, each one list entry per sampled answer (the
#: pairwise record's are absent in runs from before it was kept)
SAMPLE_LISTS = ("samples", "sample_token_ids", "sample_token_logprobs", "semantic_ids", "greedy_similarity",
                "sample_entailment", "sample_similarity", "sample_relevance")
#: the pairwise record's N x N matrices, and the range their values lie in
SAMPLE_MATRICES = {"sample_entailment": (0.0, 1.0), "sample_similarity": (0.0, 1.0)}
#: a similarity or probability a hair outside its range (float32 rounding of a cosine or softmax)
RANGE_ATOL = 1e-4
#: a stored score against the score recomputed from its row: float64 sums of the same numbers, in
#: the same order, agree exactly; the tolerance admits a tool that summed them in another order
G_NLL_RTOL, G_NLL_ATOL = 1e-6, 1e-6
ACCURACY_ATOL = 1e-9
#: a logged metric against the metric recomputed from the rows: the same functions of the same
#: values with the same seeds (bootstrap, calibration folds) give the same float; the tolerance
#: admits another build of the numerical libraries summing in another order
METRIC_ATOL = 1e-6
#: a log-probability above 0 (a probability above 1) is not one; float32 rounding of log_softmax
#: can give a few ulps above 0 for a token of probability ~1
LOGPROB_MAX = 1e-4
#: the row fields that are lists of floats, where a stored null is a NaN the writer could not store
FLOAT_LISTS = ("token_logprobs", "token_entropies", "relevance")


@dataclass(frozen=True)
class Derived:
    """What a run's rows imply: ``frame`` the table with every declared measure recomputed from its
    row (pandas), ``metrics`` the run's logged metrics with every metric the rows determine
    recomputed from them (the rest, such as costs and timings, as logged)."""

    frame: Any
    metrics: dict[str, float]


def num_generations(params: Mapping[str, Any]) -> int:
    """The run's ``num_generations`` param as a number (0 when absent: runs from before sampling)."""
    return _int_param(params, "num_generations", 0)


def _int_param(params: Mapping[str, Any], name: str, default: int) -> int:
    raw = params.get(name, default)
    try:
        return int(float(raw))
    except (TypeError, ValueError):
        raise ArtifactError(f"its param {name}={raw!r} is not a whole number") from None


def check_run_table(table, params: Mapping[str, Any], metrics: Mapping[str, float],
                    required: tuple[str, ...] = REQUIRED_COLUMNS) -> Derived:
    """Refuse a generations table that contradicts itself or its run (see the module's docstring);
    ``params`` and ``metrics`` are the run's as MLflow recorded them. Returns what the rows imply."""
    n = metrics.get("n")
    check_generations(table, expected_rows=None if n is None else int(n), required=required, measures=NAMES)
    names = set(table.column_names)
    _check_samples(table, names, num_generations(params))
    if "g_nll" in names:
        _check_g_nll(table.column("token_logprobs").to_pylist(), table.column("g_nll").to_pylist())
    if "correct" in names and "accuracy" in metrics:
        _check_accuracy(table.column("correct").to_pylist(), float(metrics["accuracy"]))
    rows = _rows(table)
    _check_fields(rows, names)
    _check_verdicts(rows, names, params)
    frame = _derived_frame(table, rows, names)
    return Derived(frame, _derived_metrics(frame, params, metrics))


def check_checksum(tags: Mapping[str, str], checksum: str, name: str = GENERATIONS_FILE) -> None:
    """Refuse an artifact that is not the file its run wrote: the run's tag
    ``uqflow.sha256.<name>`` (set as the file was logged; runs from before it have none) against the
    SHA-256 of the file read back."""
    written = tags.get(CHECKSUM_TAG_PREFIX + name)
    if written and written != checksum:
        raise ArtifactError(f"its {name} is not the file the run wrote (SHA-256 {checksum[:12]}... against "
                            f"{written[:12]}... in its tag {CHECKSUM_TAG_PREFIX + name}); restore the file, "
                            "or run the configuration again")


def _rows(table) -> list[dict[str, Any]]:
    """The table's rows as dicts, a null inside a list of floats read as the NaN it stands for."""
    rows = table.to_pylist()
    for r in rows:
        for c in FLOAT_LISTS:
            if r.get(c) is not None:
                r[c] = [math.nan if v is None else v for v in r[c]]
        if r.get("sample_token_logprobs") is not None:
            r["sample_token_logprobs"] = [[math.nan if v is None else v for v in lp or []]
                                          for lp in r["sample_token_logprobs"]]
    return rows


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _close(stored: float, expected: float, atol: float = G_NLL_ATOL, rtol: float = G_NLL_RTOL) -> bool:
    if math.isnan(expected) or math.isnan(stored):
        return math.isnan(expected) and math.isnan(stored)
    if math.isinf(expected) or math.isinf(stored):
        return stored == expected
    return abs(stored - expected) <= atol + rtol * abs(expected)


def _check_fields(rows: list[dict[str, Any]], names: set[str]) -> None:
    """What a row's fields imply about each other without a model: the answer is its token pieces
    joined (surrounding whitespace aside), log-probabilities are at most 0, entropies at least 0,
    and cluster ids are numbered in order of first appearance."""
    for i, r in enumerate(rows):
        pieces = r.get("tokens")
        if pieces is not None and "".join(pieces).strip() != r["answer"].strip():
            raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has the answer {_show(r['answer'])}, but its tokens "
                                f"join to {_show(''.join(pieces))}")
        for c, what, bad in (("token_logprobs", "a log-probability above 0", lambda v: v > LOGPROB_MAX),
                             ("token_entropies", "a negative entropy", lambda v: v < -LOGPROB_MAX)):
            values = r.get(c) or []
            k = next((k for k, v in enumerate(values) if not math.isnan(v) and bad(v)), None)
            if k is not None:
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column {c!r} holds {what} "
                                    f"({values[k]:.6g}, token {k})")
        samples = r.get("sample_token_logprobs") or []
        for s, lps in enumerate(samples):
            k = next((k for k, v in enumerate(lps) if not math.isnan(v) and v > LOGPROB_MAX), None)
            if k is not None:
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column 'sample_token_logprobs' holds a "
                                    f"log-probability above 0 ({lps[k]:.6g}, sample {s}, token {k})")
        lpt = r.get("log_p_true")
        if lpt is not None and not math.isnan(lpt) and lpt > LOGPROB_MAX:
            raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column 'log_p_true' is {lpt:.6g}, "
                                "but a log-probability is at most 0")
        ids = r.get("semantic_ids")
        if ids:
            seen = -1
            for k, v in enumerate(ids):
                if v < 0 or v > seen + 1:
                    raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has semantic_ids {list(ids)}, but clusters "
                                        "are numbered 0, 1, 2... in order of first appearance")
                seen = max(seen, v)


def _show(text: str) -> str:
    from uqflow.errors import short

    return short(text, 60)


def _derived_frame(table, rows: list[dict[str, Any]], names: set[str]):
    """The table as pandas, every declared measure recomputed from its row's fields and compared with
    the stored value where the table holds one. A measure whose fields the table lacks is NaN (not
    measured), and a stored value beside it is a contradiction."""
    frame = table.to_pandas()
    sampled_run = any(r.get("sample_token_logprobs") or r.get("semantic_ids") for r in rows)
    for name, m in MEASURES.items():
        if m.sampled and not sampled_run:
            if name in names and any(not math.isnan(_num(r.get(name))) for r in rows):
                i = next(i for i, r in enumerate(rows) if not math.isnan(_num(r.get(name))))
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has {name} {_num(rows[i][name]):.6g}, "
                                    "but the row holds no sampled answers")
            continue
        derived = [_measure(m, r) for r in rows]
        if name in names:
            for i, (r, d) in enumerate(zip(rows, derived)):
                stored = _num(r.get(name))
                if not _close(stored, d):
                    raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has {name} {stored + 0.0:.6g}, but "
                                        f"recomputed from its {', '.join(m.fields)} it is {d + 0.0:.6g}")  # no "-0"
        frame[name] = derived
    return frame


def _measure(m, row: Mapping[str, Any]) -> float:
    """A measure of one row, NaN where the row lacks a field it reads (a sampled measure of a row
    without samples, an older run's missing column)."""
    values = [row.get(f) for f in m.fields]
    if any(v is None for v in values):
        return math.nan
    if m.sampled and not len(row.get("sample_token_logprobs") or row.get("semantic_ids") or []):
        return math.nan
    return float(m.fn(*values))


def _rule_judge(name: str, threshold: float):
    """The judge ``name`` if a rule decides it (recomputable from the strings), else None."""
    from uqflow.models.registry import asked_model
    from uqflow.scoring.judges import JUDGES, make_judge

    if asked_model(name) or name not in JUDGES:
        return None
    return make_judge(name, threshold)


def _check_verdicts(rows: list[dict[str, Any]], names: set[str], params: Mapping[str, Any]) -> None:
    """Every verdict a rule decides, recomputed from the row's answer and references under the
    run's judge, threshold and abstention rule."""
    from uqflow.scoring.judges import ABSTENTION_RULES, Verdict, judge_examples

    if "correct" not in names:
        return
    abstention = params.get("abstention") or "official"
    if abstention not in ABSTENTION_RULES:
        raise ArtifactError(f"its param abstention={abstention!r} names no abstention rule "
                            f"({', '.join(ABSTENTION_RULES)})")
    try:
        threshold = float(params.get("correctness_threshold") or 0.0)
    except ValueError:
        raise ArtifactError(f"its param correctness_threshold={params['correctness_threshold']!r} is not a number") \
            from None
    columns = {"correct": (params.get("correctness") or "f1", threshold)}
    columns.update({c: (c[len(VERDICT_PREFIX):], 0.0) for c in sorted(names) if c.startswith(VERDICT_PREFIX)})
    questions = [r["question"] for r in rows]
    answers = [r["answer"] for r in rows]
    references = [list(r["references"]) for r in rows]
    answerable = [bool(r["answerable"]) for r in rows]
    for col, (name, thr) in columns.items():
        judge = _rule_judge(name, thr)
        if judge is None:  # an LLM judge: only the abstention rule's verdicts can be recomputed
            abstains = ABSTENTION_RULES[abstention]
            verdicts = {i: Verdict(abstains(answers[i])) for i, ok in enumerate(answerable) if not ok}
        else:
            verdicts = dict(enumerate(judge_examples(judge, questions, answers, references, answerable, abstention)))
        for i, v in verdicts.items():
            stored = rows[i].get(col)
            if stored != v.correct:
                why = (f"the {abstention} abstention rule" if not answerable[i]
                       else f"judge {name!r}" + (f" at threshold {judge.threshold:g}" if judge.threshold else ""))
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has {col} {stored}, but {why} gives {v.correct} "
                                    f"for its answer {_show(answers[i])} against its references")
            if col == "correct" and "correctness_score" in names and answerable[i] \
                    and not _close(_num(rows[i].get("correctness_score")), v.score):
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has correctness_score "
                                    f"{_num(rows[i].get('correctness_score')):.6g}, but judge {name!r} gives "
                                    f"{v.score:.6g}")


def _derived_metrics(frame, params: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, float]:
    """The run's metrics with every one the rows determine recomputed from them
    (:func:`uqflow.scoring.pipeline.evaluate`, with the run's bootstrap size and seed), each compared
    with the metric the run logged. A metric the run did not log (an older version's run) is added;
    a logged one the rows leave undefined (NaN) is a contradiction."""
    import warnings

    from uqflow.scoring.evaluation import OneClassWarning
    from uqflow.scoring.pipeline import evaluate

    if "correct" not in frame.columns:
        return dict(metrics)
    n_bootstrap = _int_param(params, "n_bootstrap", 1000)
    seed = _int_param(params, "seed", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OneClassWarning)
        derived = evaluate(frame, n_bootstrap=n_bootstrap, seed=seed)
    out = dict(metrics)
    for key, value in derived.items():
        if key in metrics:
            logged = float(metrics[key])
            if not _close(logged, value, METRIC_ATOL, 0.0):
                raise ArtifactError(f"its metric {key} is {logged:.6g}, but its {GENERATIONS_FILE} gives {value:.6g}")
        if not math.isnan(value):
            out[key] = value
    return out


def _check_samples(table, names: set[str], n_generations: int) -> None:
    present = [c for c in SAMPLE_LISTS if c in names]
    if not n_generations:
        for c in present:
            row = next((i for i, v in enumerate(table.column(c).to_pylist()) if v), None)
            if row is not None:
                raise ArtifactError(f"its {GENERATIONS_FILE} column {c!r} holds sampled answers in row {row}, "
                                    "but the run's num_generations is 0")
        return
    if "samples" not in names:
        raise ArtifactError(f"its {GENERATIONS_FILE} lacks the column 'samples', but the run's num_generations is "
                            f"{n_generations}")
    columns = {c: table.column(c).to_pylist() for c in present}
    for i in range(table.num_rows):
        for c in present:
            value = columns[c][i]
            if c not in SAMPLE_LISTS[:3] and value is None:
                continue  # not made (a run from before clustering, or the pairwise record, was stored)
            length = 0 if value is None else len(value)
            if length != n_generations:
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has {length} {c} but the run's "
                                    f"num_generations is {n_generations}")
        ids, lps = columns.get("sample_token_ids"), columns.get("sample_token_logprobs")
        if ids is not None and lps is not None:
            for k, (a, b) in enumerate(zip(ids[i] or [], lps[i] or [])):
                if len(a or []) != len(b or []):
                    raise ArtifactError(f"its {GENERATIONS_FILE} row {i}, sample {k}, has {len(a or [])} token ids "
                                        f"but {len(b or [])} token log-probabilities")
        relevance = columns.get("sample_relevance")
        if ids is not None and relevance is not None and relevance[i] is not None:
            for k, (a, b) in enumerate(zip(ids[i] or [], relevance[i])):
                if len(a or []) != len(b or []):
                    raise ArtifactError(f"its {GENERATIONS_FILE} row {i}, sample {k}, has {len(a or [])} token ids "
                                        f"but {len(b or [])} relevance weights")
        _check_pairwise(i, {c: columns[c][i] for c in (*SAMPLE_MATRICES, "greedy_similarity") if c in columns},
                        n_generations)


def _check_pairwise(i: int, values: Mapping[str, Any], n: int) -> None:
    """The pairwise record of row ``i``: each matrix N x N, its values in [0, 1] (similarities as
    recorded, probabilities), the similarity matrix symmetric with 1 on its diagonal, and
    the entailment matrix 1 on its diagonal (a text entails itself)."""
    for c, value in values.items():
        if value is None:
            continue
        lo, hi = SAMPLE_MATRICES.get(c, (0.0, 1.0))
        rows = value if c in SAMPLE_MATRICES else [value]
        for r, row in enumerate(rows):
            if c in SAMPLE_MATRICES and len(row or []) != n:
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column {c!r} has a row of {len(row or [])} values "
                                    f"in an {n} x {n} matrix")
            bad = next((v for v in row if v is None or math.isnan(v) or not lo - RANGE_ATOL <= v <= hi + RANGE_ATOL),
                       "ok")
            if bad != "ok":
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column {c!r} holds {bad}, outside [{lo:g}, {hi:g}]")
        if c in SAMPLE_MATRICES:
            m = value
            if any(abs(m[k][k] - 1.0) > RANGE_ATOL for k in range(n)):
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column {c!r} has a diagonal other than 1 "
                                    "(each sample against itself)")
            if c == "sample_similarity" and any(abs(m[a][b] - m[b][a]) > RANGE_ATOL
                                                for a in range(n) for b in range(a + 1, n)):
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} column 'sample_similarity' is not symmetric")


def _check_g_nll(logprobs: list, stored: list) -> None:
    for i, (lps, g) in enumerate(zip(logprobs, stored)):
        # a null inside the list is a NaN the writer could not store: the score it gives is undefined
        expected = g_nll([math.nan if v is None else v for v in lps or []])
        value = math.nan if g is None else float(g)
        if not _close(value, expected):
            raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has g_nll {value:.6g}, but its token_logprobs sum "
                                f"to a G-NLL of {expected:.6g}")


def _check_accuracy(correct: list, metric: float) -> None:
    decided = [bool(c) for c in correct if c is not None]
    table = sum(decided) / len(decided) if decided else math.nan
    if math.isnan(table) and math.isnan(metric):
        return
    if math.isnan(table) or math.isnan(metric) or abs(table - metric) > ACCURACY_ATOL:
        raise ArtifactError(f"its {GENERATIONS_FILE} column 'correct' gives an accuracy of {table:.4g} "
                            f"({sum(decided)} of {len(decided)} decided), but the run's accuracy metric is {metric:.4g}")
