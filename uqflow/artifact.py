"""The ``generations.parquet`` artifact: its columns and their types, declared once.

A run writes one row per example (``experiment.py``); aggregation reads it back into the results
store and checks every value by type first (:func:`check_generations`), so a file that was edited,
written by another tool or damaged is refused with the run, column and row named, instead of being
coerced (``bool("False")`` is true).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uqflow.errors import UqflowError, short

GENERATIONS_FILE = "generations.parquet"
#: + an artifact's name: the run's tag holding the SHA-256 of the file it wrote (tracking.log_frame)
CHECKSUM_TAG_PREFIX = "uqflow.sha256."


class ArtifactError(UqflowError):
    """A run's artifact that is missing, unreadable or holds values of the wrong type."""


@dataclass(frozen=True)
class Column:
    """One column of the generations table: its value kind and whether a stored run must have it."""

    name: str
    kind: str  # text | id | bool | float | list[int] | list[float] | list[text] | list[list[int]] | list[list[float]]
    required: bool = False  # aggregation refuses a run whose artifact lacks it
    nullable: bool = True  # null allowed in a row (an undecided verdict, an undefined score)


#: the columns aggregation reads besides the measures' (one number each, declared with the measure in
#: ``scoring/measures.py`` and passed to :func:`check_generations`); a run may hold more (prompt,
#: context, judge_reply, ...)
GENERATION_COLUMNS = (
    Column("example_id", "id", required=True, nullable=False),
    Column("question", "text", required=True, nullable=False),
    Column("answer", "text", required=True, nullable=False),
    Column("token_ids", "list[int]", required=True, nullable=False),
    Column("token_logprobs", "list[float]", required=True, nullable=False),
    Column("references", "list[text]", required=True, nullable=False),
    Column("answerable", "bool", required=True, nullable=False),
    Column("correct", "bool", required=True),  # null: the judge could not decide
    Column("correctness_score", "float"),
    Column("stop_reason", "text"),
    Column("tokens", "list[text]"),
    Column("relevance", "list[float]"),
    Column("token_entropies", "list[float]"),  # NaN where the engine has none (vLLM)
    # a run that sampled (num_generations > 0): the sampled answers, their clusters and log p(True)
    Column("samples", "list[text]"),
    Column("sample_token_ids", "list[list[int]]"),
    Column("sample_token_logprobs", "list[list[float]]"),
    Column("semantic_ids", "list[int]"),
    Column("log_p_true", "float"),
    # its pairwise record (scoring/pipeline.add_pairwise): what the measures of sample consistency read
    Column("sample_entailment", "list[list[float]]"),  # N x N: P(sample i entails sample j), the judge's
    Column("sample_similarity", "list[list[float]]"),  # N x N: the similarity model's, every pair of samples
    Column("greedy_similarity", "list[float]"),  # N: the greedy answer against each sample
    Column("sample_relevance", "list[list[float]]"),  # per sample, per token: SAR's token relevance
)
REQUIRED_COLUMNS = tuple(c.name for c in GENERATION_COLUMNS if c.required)
#: an extra judge's verdicts (the ``judges`` setting): one column ``judge.<name>`` each, like ``correct``
VERDICT_PREFIX = "judge."
#: per-token columns that must have one value per answer token
PER_TOKEN = ("token_logprobs", "tokens", "relevance", "token_entropies")

_EXPECTED = {"text": "text", "id": "text or whole numbers", "bool": "true/false", "float": "numbers",
             "list[int]": "lists of whole numbers", "list[float]": "lists of numbers", "list[text]": "lists of text",
             "list[list[int]]": "lists of lists of whole numbers", "list[list[float]]": "lists of lists of numbers"}


def _fits(kind: str, t) -> bool:
    import pyarrow as pa

    def text(x):
        return pa.types.is_string(x) or pa.types.is_large_string(x)

    def number(x):
        return pa.types.is_floating(x) or pa.types.is_integer(x)

    if pa.types.is_null(t):  # every value null; the null checks below decide
        return True
    if kind.startswith("list["):
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            return False
        v = t.value_type
        inner = kind[5:-1]
        if inner.startswith("list["):  # a list per sample
            return pa.types.is_null(v) or _fits(inner, v)
        return pa.types.is_null(v) or {"int": pa.types.is_integer, "float": number, "text": text}[inner](v)
    return {"text": text, "id": lambda x: text(x) or pa.types.is_integer(x), "bool": pa.types.is_boolean,
            "float": number}[kind](t)


def _type_name(t) -> str:
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"lists of {_type_name(t.value_type)}"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    return str(t)


def _first(column, mask=None) -> tuple[int, Any]:
    """(row, value) of the first non-null value (or the first row where ``mask`` holds)."""
    values = column.to_pylist()
    for i, v in enumerate(values):
        if (mask[i] if mask is not None else v is not None):
            return i, v
    return 0, None


def check_generations(table, expected_rows: int | None = None, required: tuple[str, ...] = REQUIRED_COLUMNS,
                      measures: tuple[str, ...] = ()) -> None:
    """Refuse a generations table that aggregation cannot store truthfully: a required column
    missing, a column of the wrong type (``measures``: the measures' columns, numbers), a null where
    a value is required, a repeated example id, per-token lists of different lengths, or
    (``expected_rows``) a row count other than the run's."""
    import pyarrow.compute as pc

    names = set(table.column_names)
    missing = [c for c in required if c not in names]
    if missing:
        raise ArtifactError(f"its {GENERATIONS_FILE} lacks the column(s) {', '.join(missing)}")
    if expected_rows is not None and table.num_rows != expected_rows:
        raise ArtifactError(f"its {GENERATIONS_FILE} has {table.num_rows} rows but the run reports n={expected_rows}")
    verdicts = [Column(c, "bool") for c in sorted(names) if c.startswith(VERDICT_PREFIX)]
    for col in (*GENERATION_COLUMNS, *(Column(m, "float") for m in measures), *verdicts):
        if col.name not in names:
            continue
        data = table.column(col.name)
        if not _fits(col.kind, data.type):
            row, value = _first(data)
            raise ArtifactError(f"its {GENERATIONS_FILE} column {col.name!r} holds {_type_name(data.type)}, expected "
                                f"{_EXPECTED[col.kind]} (row {row}: {short(value, 60)})")
        if not col.nullable and data.null_count and col.name in required:
            row, _ = _first(data, data.is_null().to_pylist())
            raise ArtifactError(f"its {GENERATIONS_FILE} column {col.name!r} is empty (null) in row {row}")
        # a NaN inside a list of floats is written by pandas as null, so only token ids must be whole
        if col.kind == "list[int]" and pc.list_flatten(data).null_count:
            row = next(i for i, ids in enumerate(data.to_pylist()) if ids and None in ids)
            raise ArtifactError(f"its {GENERATIONS_FILE} column {col.name!r} holds an empty (null) value in row {row}")
    ids = table.column("example_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = {}
        for i, v in enumerate(ids.to_pylist()):
            if v in counts:
                raise ArtifactError(f"its {GENERATIONS_FILE} repeats example_id {short(v, 60)} (rows {counts[v]} and {i})")
            counts[v] = i
    n_tokens = pc.list_value_length(table.column("token_ids")).to_pylist()
    for name in PER_TOKEN:
        if name not in names:
            continue
        lengths = pc.list_value_length(table.column(name)).to_pylist()
        for i, (a, b) in enumerate(zip(n_tokens, lengths)):
            if b is not None and a != b:
                raise ArtifactError(f"its {GENERATIONS_FILE} row {i} has {a} token_ids but {b} {name}")
