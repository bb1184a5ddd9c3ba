"""The one check of a run's ``generations.parquet`` against itself and its run, shared by
aggregation (``uqflow aggregate``) and rescoring (``uqflow rescore``).

:func:`uqflow.artifact.check_generations` checks each value's type; this adds what the fields of
a row, and the table as a whole, imply about each other and about the run's own record:

- the table has as many rows as the run's metric ``n``;
- a run that sampled has, in every row, ``num_generations`` sampled answers, and as many token-id
  lists, log-probability lists and cluster ids (``semantic_ids``) as answers; a run that did not
  sample has no sampled answers;
- G-NLL equals the negative sum of the row's stored token log-probabilities (within rounding):
  every score must be recomputable from its row;
- the table's accuracy (over decided verdicts) equals the run's ``accuracy`` metric.

A contradiction raises :class:`~uqflow.artifact.ArtifactError` naming the column and row, and the
caller stores (or logs) nothing of that run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from uqflow.artifact import GENERATIONS_FILE, REQUIRED_COLUMNS as REQUIRED_FIELDS, ArtifactError, check_generations
from uqflow.scoring.measures import NAMES, REQUIRED
from uqflow.scoring.uncertainty import g_nll

#: what a stored run's table must hold: the artifact's required fields and the study's two measures
REQUIRED_COLUMNS = REQUIRED_FIELDS + REQUIRED
#: the per-sample columns of a run that sampled, each one list entry per sampled answer
SAMPLE_LISTS = ("samples", "sample_token_ids", "sample_token_logprobs", "semantic_ids")
#: G-NLL as stored against G-NLL recomputed: float64 sums of the same numbers, in the same order,
#: agree exactly; the tolerance admits a tool that summed them in another order
G_NLL_RTOL, G_NLL_ATOL = 1e-6, 1e-6
ACCURACY_ATOL = 1e-9


def num_generations(params: Mapping[str, Any]) -> int:
    """The run's ``num_generations`` param as a number (0 when absent: runs from before sampling)."""
    raw = params.get("num_generations", "0")
    try:
        return int(float(raw))
    except (TypeError, ValueError):
        raise ArtifactError(f"its param num_generations={raw!r} is not a whole number") from None


def check_run_table(table, params: Mapping[str, Any], metrics: Mapping[str, float],
                    required: tuple[str, ...] = REQUIRED_COLUMNS) -> None:
    """Refuse a generations table that contradicts itself or its run (see the module's docstring);
    ``params`` and ``metrics`` are the run's as MLflow recorded them."""
    n = metrics.get("n")
    check_generations(table, expected_rows=None if n is None else int(n), required=required, measures=NAMES)
    names = set(table.column_names)
    _check_samples(table, names, num_generations(params))
    if "g_nll" in names:
        _check_g_nll(table.column("token_logprobs").to_pylist(), table.column("g_nll").to_pylist())
    if "correct" in names and "accuracy" in metrics:
        _check_accuracy(table.column("correct").to_pylist(), float(metrics["accuracy"]))


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
            if c == "semantic_ids" and value is None:
                continue  # clustering was not done (a run from before clustering was stored)
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


def _same(stored: float, expected: float) -> bool:
    if math.isnan(expected) or math.isnan(stored):
        return math.isnan(expected) and math.isnan(stored)
    if math.isinf(expected) or math.isinf(stored):
        return stored == expected
    return abs(stored - expected) <= G_NLL_ATOL + G_NLL_RTOL * abs(expected)


def _check_g_nll(logprobs: list, stored: list) -> None:
    for i, (lps, g) in enumerate(zip(logprobs, stored)):
        # a null inside the list is a NaN the writer could not store: the score it gives is undefined
        expected = g_nll([math.nan if v is None else v for v in lps or []])
        value = math.nan if g is None else float(g)
        if not _same(value, expected):
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
