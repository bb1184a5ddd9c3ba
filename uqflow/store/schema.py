"""The results store's tables, as SQLAlchemy 2.0 typed models.

The schema is created and changed through the Alembic migrations in ``migrations/``, except the
per-example measure columns of ``generations``: one per measure declared in ``scoring/measures.py``,
added to the database by ``uqflow.store.db.sync_measure_columns`` whenever the store is upgraded;
``tests/test_store.py`` checks that autogenerate finds nothing to do between these models and the
migrations. One row of ``runs`` per FINISHED MLflow run; its ``scores`` (one row per uncertainty
measure) and ``generations`` (one row per example) are replaced together, in one transaction,
whenever the run is aggregated again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_ID = String(64)


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One MLflow run: a model x dataset evaluation, with its dimensions and headline figures."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(RUN_ID, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(String(64), index=True)
    experiment_name: Mapped[str] = mapped_column(String(256))
    # which tracking store the run was read from: its URI (password hidden) and its experiment's
    # creation time (ms), which tells apart experiments of the same id in different stores
    tracking_uri: Mapped[str | None] = mapped_column(String(1024))
    experiment_creation_time: Mapped[int | None] = mapped_column(BigInteger)
    run_name: Mapped[str | None] = mapped_column(String(256))
    parent_run_id: Mapped[str | None] = mapped_column(String(64))
    source_run_id: Mapped[str | None] = mapped_column(String(64))  # set on runs made by `uqflow rescore`
    start_time: Mapped[datetime | None] = mapped_column(DateTime())
    end_time: Mapped[datetime | None] = mapped_column(DateTime())
    # dimensions the study is sliced by
    model: Mapped[str] = mapped_column(String(256), index=True)
    family: Mapped[str] = mapped_column(String(64), index=True)
    size_b: Mapped[float] = mapped_column(Float)
    quantization: Mapped[str] = mapped_column(String(32))
    # what the model computed in (the run's tag; a served model: its server's quantization)
    precision: Mapped[str | None] = mapped_column(String(32))
    instruct: Mapped[bool] = mapped_column(Boolean)
    dataset: Mapped[str] = mapped_column(String(256), index=True)
    # protocol
    correctness: Mapped[str | None] = mapped_column(String(256))
    similarity: Mapped[str | None] = mapped_column(String(256))
    num_few_shot: Mapped[int | None] = mapped_column(Integer)
    backend: Mapped[str | None] = mapped_column(String(32))
    num_generations: Mapped[int | None] = mapped_column(Integer)  # sampled answers per question (0: none)
    entailment: Mapped[str | None] = mapped_column(String(256))  # the judge that clustered them
    config_hash: Mapped[str | None] = mapped_column(String(64))
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(128))
    prompt_template_hash: Mapped[str | None] = mapped_column(String(128))
    uqflow_version: Mapped[str | None] = mapped_column(String(32))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    transformers_version: Mapped[str | None] = mapped_column(String(64))
    # headline figures
    n: Mapped[int] = mapped_column(Integer)
    n_undecided: Mapped[int | None] = mapped_column(Integer)
    n_skipped: Mapped[int | None] = mapped_column(Integer)
    accuracy: Mapped[float | None] = mapped_column(Float)
    mean_answer_tokens: Mapped[float | None] = mapped_column(Float)
    delong_z: Mapped[float | None] = mapped_column(Float)  # G-NLL against RW-G-NLL, paired
    delong_p: Mapped[float | None] = mapped_column(Float)
    generation_seconds: Mapped[float | None] = mapped_column(Float)
    questions_per_second: Mapped[float | None] = mapped_column(Float)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    # every param, tag and metric as MLflow recorded them, and their digest (what "changed" means)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    mlflow_digest: Mapped[str] = mapped_column(String(64))
    aggregated_at: Mapped[datetime] = mapped_column(DateTime())

    scores: Mapped[list[Score]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                               passive_deletes=True)
    generations: Mapped[list[Generation]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                         passive_deletes=True)


class Score(Base):
    """How well one uncertainty measure flags one run's wrong answers."""

    __tablename__ = "scores"

    run_id: Mapped[str] = mapped_column(RUN_ID, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    measure: Mapped[str] = mapped_column(String(64), primary_key=True)
    auroc: Mapped[float | None] = mapped_column(Float)  # NULL where undefined (one class)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    aurac: Mapped[float | None] = mapped_column(Float)
    prr: Mapped[float | None] = mapped_column(Float)  # over every rejection level
    prr50: Mapped[float | None] = mapped_column(Float)  # up to 50% rejected, normalised: the field's PRR
    acc_cov80: Mapped[float | None] = mapped_column(Float)
    acc_cov90: Mapped[float | None] = mapped_column(Float)
    acc_cov95: Mapped[float | None] = mapped_column(Float)
    # calibration of the measure mapped to P(correct) by a cross-validated fit inside the run
    # (scoring/selective.py): expected calibration error and Brier score; and the area under the
    # risk-coverage curve (lower is better)
    ece: Mapped[float | None] = mapped_column(Float)
    brier: Mapped[float | None] = mapped_column(Float)
    aurc: Mapped[float | None] = mapped_column(Float)
    # what the measure cost beyond the greedy pass, per question (uqflow/scoring/cost.py): forward
    # passes, generated tokens, seconds; 0 for G-NLL and the other single-pass scores
    cost_passes: Mapped[float | None] = mapped_column(Float)
    cost_tokens: Mapped[float | None] = mapped_column(Float)
    cost_seconds: Mapped[float | None] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="scores")


class Generation(Base):
    """One example of one run: the greedy answer, its token-level record, correctness and scores."""

    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_run_correct", "run_id", "correct"),)

    run_id: Mapped[str] = mapped_column(RUN_ID, ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    example_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # row order in the run's generations artifact
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    reference_answers: Mapped[list[str]] = mapped_column(JSON)  # "references" is an SQL keyword
    answerable: Mapped[bool] = mapped_column(Boolean)
    correct: Mapped[bool | None] = mapped_column(Boolean)  # NULL = the judge could not decide
    correctness_score: Mapped[float | None] = mapped_column(Float)
    # the extra judges' verdicts (the run's `judges` setting): {judge name: true | false | null}
    verdicts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    num_tokens: Mapped[int] = mapped_column(Integer)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    tokens: Mapped[list[str] | None] = mapped_column(JSON)  # each answer token as text, for token-level views
    token_ids: Mapped[list[int]] = mapped_column(JSON)
    token_logprobs: Mapped[list[float]] = mapped_column(JSON)
    relevance: Mapped[list[float] | None] = mapped_column(JSON)
    # a run that sampled: its sampled answers and their semantic clusters
    samples: Mapped[list[str] | None] = mapped_column(JSON)
    semantic_ids: Mapped[list[int] | None] = mapped_column(JSON)

    run: Mapped[Run] = relationship(back_populates="generations")
    # and one nullable float column per declared measure (scoring/measures.py), added below


def add_measure_columns() -> list[str]:
    """Give ``generations`` a column for every declared measure it lacks (a measure declared after
    this module was imported: a plugin's, a test's); returns the names added. The database follows
    with :func:`uqflow.store.db.sync_measure_columns`, so a new measure needs no migration."""
    from uqflow.scoring.measures import MEASURES

    added = []
    for name in MEASURES:
        if name not in Generation.__table__.c:
            setattr(Generation, name, mapped_column(name, Float, nullable=True))
            added.append(name)
    return added


add_measure_columns()

MEASURE_COLUMNS = tuple(c.name for c in Score.__table__.columns if c.name not in ("run_id", "measure"))
