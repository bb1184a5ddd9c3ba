"""MLflow runs into the results store.

``aggregate`` pulls the FINISHED uqflow runs of a tracking store through the MLflow API (search with
paging, artifact download) and writes each run's row in ``runs``, its ``scores`` and its
``generations`` in one transaction: a crash or ``kill -9`` leaves every run either fully stored or
as it was, and running it again completes the rest.

Which runs: uqflow's runs carry the tag ``uqflow_version``; they are found in every experiment of the
tracking store (``mlflow run .`` puts them in whichever experiment it was given, ``Default`` when
none), or in one experiment with ``experiment``.

What is stored is what the run's rows imply (scoring/consistency.py): every score, rule verdict and
per-run metric is recomputed from the rows of ``generations.parquet`` and compared with what the run
stored and logged; a run that disagrees is refused with the column (or metric), row and both values
named, and a copy stored earlier is kept as it was.

Idempotent: a run whose params, tags, metrics, end time and ``generations.parquet`` (its SHA-256) are
unchanged since it was stored (their digest) is left alone; a changed one is read again and replaced,
so an edited or repaired artifact is never left stale. A stored run that the tracking store no longer has
as FINISHED is removed, unless ``filter_string`` narrows the search. Removal is scoped to the
experiments that were searched, each identified by its id *and* its creation time: two tracking
stores (a laptop's and a cluster's) both number their first experiment 1, and one store's runs are
never removed because another store lacks them. MLflow run ids are random UUIDs, so a run id is one
run whichever store it is read from; ``tracking_uri`` records where it was last read.

Two aggregations may run at once: each run's write re-checks the digest inside its own write
transaction, which holds the run's lock (SQLite: the database's write lock, ``BEGIN IMMEDIATE``;
PostgreSQL: an advisory lock keyed by the run id), so a run is stored by exactly one of them and the
other finds it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from uqflow import lease, tracking
from uqflow.artifact import GENERATIONS_FILE
from uqflow.errors import StoreError, UqflowError
from uqflow.models.registry import precision_of
from uqflow.store.db import _first_line, connect, db_url, preflight, store_failure, upgrade
from uqflow.scoring.consistency import Derived, check_checksum, check_run_table
from uqflow.scoring.pipeline import DELONG_PAIR, MEASURE_METRICS, metric, verdict_columns
from uqflow.scoring.measures import NAMES
from uqflow.store.schema import Generation, Run, Score

log = logging.getLogger(__name__)

ACTIONS = ("added", "updated", "unchanged", "skipped", "removed")


@dataclass(frozen=True)
class Outcome:
    """What aggregation did with one run, and why."""

    run_id: str
    action: str  # one of ACTIONS
    reason: str = ""
    label: str = ""  # "model x dataset", for messages
    problem: bool = False  # a uqflow run that could not be stored (the store is incomplete without it)


def aggregate(experiment: str | None = None, filter_string: str = "", url: str | None = None,
              on_run: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Bring the store at ``url`` in line with the FINISHED uqflow runs of the tracking store: of
    every experiment, or of ``experiment`` alone. Returns one outcome per run looked at."""
    from mlflow.exceptions import MlflowException

    url = db_url(url)
    preflight(url)  # a mistyped URL or a missing driver is reported before anything else is looked at
    uri = tracking.shown_uri()
    with tracking.reaching_store():  # an unreachable tracking store is reported before the SQL store is touched
        scope = _experiments(experiment)
    search = (f"attributes.status = 'FINISHED' and tags.{tracking.VERSION_TAG} LIKE '%'"
              + (f" and {filter_string}" if filter_string.strip() else ""))
    active = [e for e in scope if e.lifecycle_stage == "active"]
    runs = []
    with tracking.reaching_store():
        lease.close_abandoned_in([e.experiment_id for e in active])  # runs left RUNNING by a vanished process end KILLED
        try:
            runs = tracking.search_runs([e.experiment_id for e in active], search) if active else []
        except MlflowException as e:
            if filter_string.strip() and e.error_code == "INVALID_PARAMETER_VALUE":
                raise UqflowError(f"MLflow rejected the filter {filter_string!r}: {_first_line(e)}") from None
            raise
    by_id = {e.experiment_id: e for e in scope}

    upgrade(url)  # the writer keeps the schema current; a no-op when it already is
    engine = connect(url)
    outcomes: list[Outcome] = []

    def report(o: Outcome) -> None:
        outcomes.append(o)
        if on_run:
            on_run(o)

    try:
        for run in runs:
            report(_aggregate_run(engine, by_id[run.info.experiment_id], uri, run))
        if not filter_string.strip():
            for o in _remove_stale(engine, scope, {r.info.run_id for r in runs}):
                report(o)
    except SQLAlchemyError as e:
        raise StoreError(store_failure("write", url, e)) from None
    finally:
        engine.dispose()
    return outcomes


def _experiments(name: str | None) -> list:
    """The experiments aggregation looks at: ``name`` alone, else all of them (deleted ones too, so
    that the runs of a deleted experiment are removed from the store)."""
    import mlflow

    if not name:
        return tracking.all_experiments()
    exp = mlflow.MlflowClient().get_experiment_by_name(name)
    if exp is None:
        raise UqflowError(f"no experiment {name!r} in the tracking store {tracking.shown_uri()}; "
                          "run `uqflow run` or `uqflow grid` first, or leave out --experiment to look in all")
    return [exp]


def _label(run) -> str:
    t = run.data.tags
    return f"{t.get('model', '?')} x {t.get('dataset', '?')}"


def digest(run, artifact_sha256: str = "") -> str:
    """A fingerprint of what MLflow recorded for a run and of its artifact's bytes; a change in it
    means the stored copy is stale."""
    d = run.data
    payload = {"params": d.params, "tags": d.tags, "metrics": d.metrics,
               "end_time": run.info.end_time, "generations_sha256": artifact_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _aggregate_run(engine, exp, tracking_uri: str, run) -> Outcome:
    run_id, label = run.info.run_id, _label(run)
    tags, metrics = run.data.tags, tracking.run_metrics(run)
    missing = [k for k in ("model", "dataset", "family") if k not in tags] + [k for k in ("n",) if k not in metrics]
    if missing:
        return Outcome(run_id, "skipped", f"not a uqflow model x dataset run (no {', '.join(missing)})", label)
    if "size_b" not in tags:
        return Outcome(run_id, "skipped", "its tags lack size_b", label, problem=True)
    try:
        table, checksum = tracking.load_table_and_checksum(run_id, GENERATIONS_FILE)
    except UqflowError as e:
        return Outcome(run_id, "skipped", str(e), label, problem=True)
    dig = digest(run, checksum)
    identity = {"tracking_uri": tracking_uri, "experiment_creation_time": exp.creation_time}
    stored = _stored(engine, run_id)
    if stored is not None and stored.mlflow_digest == dig:
        if (stored.tracking_uri, stored.experiment_creation_time) != tuple(identity.values()):
            with engine.begin() as conn:  # the same run read from a moved or copied tracking store
                conn.execute(update(Run).where(Run.run_id == run_id).values(**identity))
        return Outcome(run_id, "unchanged", "", label)
    try:
        derived = _derived(run, table, checksum)
        row = {**_run_row(exp.name, run, dig, derived.metrics), **identity}
        score_rows = _score_rows(run_id, derived.metrics)
        gen_rows = _generation_rows(run_id, table, derived)
    except UqflowError as e:
        return Outcome(run_id, "skipped", str(e), label, problem=True)
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                _lock_run(conn, run_id)
                # checked again inside the write transaction: another aggregation may have just stored it
                stored = conn.execute(select(Run.mlflow_digest).where(Run.run_id == run_id)).scalar_one_or_none()
                if stored == dig:
                    return Outcome(run_id, "unchanged", "", label)
                _delete_run(conn, run_id)
                conn.execute(insert(Run), [row])
                if score_rows:
                    conn.execute(insert(Score), score_rows)
                if gen_rows:
                    conn.execute(insert(Generation), gen_rows)
            return Outcome(run_id, "added" if stored is None else "updated", "", label)
        except IntegrityError:  # a writer that takes no run lock (an older uqflow) inserted it first; look again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


_RUN_LOCKS = 0x7571  # the advisory-lock namespace of run writes (the migration lock is a single bigint key)


def _lock_run(conn, run_id: str) -> None:
    """Hold ``run_id``'s write lock until the transaction ends. PostgreSQL's READ COMMITTED takes a
    fresh snapshot per statement, so without it a writer that found no row could then delete the row
    another writer had just committed and insert its own copy; the lock makes the second writer wait
    and then find the first one's row. SQLite needs nothing: ``BEGIN IMMEDIATE`` already serializes
    writers."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(:run))"), {"ns": _RUN_LOCKS, "run": run_id})


def _delete_run(conn, run_id: str) -> None:
    """A run's row; its scores and generations go with it (ON DELETE CASCADE, enforced on SQLite
    by the store's ``PRAGMA foreign_keys``)."""
    conn.execute(delete(Run).where(Run.run_id == run_id))


def _stored(engine, run_id: str):
    """The stored run's digest and tracking-store identity, or None."""
    with engine.connect() as conn:
        return conn.execute(select(Run.mlflow_digest, Run.tracking_uri, Run.experiment_creation_time)
                            .where(Run.run_id == run_id)).one_or_none()


def _remove_stale(engine, scope: list, keep: set[str]) -> list[Outcome]:
    """Remove stored runs of the searched experiments that are no longer FINISHED uqflow runs there.
    An experiment is matched by id and creation time, so another tracking store's experiment of the
    same id is out of reach; rows stored before the creation time was recorded are left alone."""
    if not scope:
        return []
    same_experiment = or_(*(and_(Run.experiment_id == e.experiment_id,
                                 Run.experiment_creation_time == e.creation_time) for e in scope))
    with engine.begin() as conn:
        stored = conn.execute(select(Run.run_id, Run.model, Run.dataset, Run.experiment_name)
                              .where(same_experiment)).all()
        stale = [r for r in stored if r.run_id not in keep]
        for r in stale:
            _delete_run(conn, r.run_id)
    return [Outcome(r.run_id, "removed", f"no longer a FINISHED run of experiment {r.experiment_name!r} in MLflow",
                    f"{r.model} x {r.dataset}") for r in stale]


def _num(v: Any) -> float | None:
    """A float for a FLOAT column: NaN and missing values are NULL (undefined); an infinite score
    (an answer with a token of probability zero) is kept, as SQLite and PostgreSQL floats hold it."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _json_num(v: Any) -> float | None:
    """A float inside a JSON column: JSON has no NaN or infinity, so those are null."""
    f = _num(v)
    return f if f is not None and math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _json_num(v)  # finite or None: a count has no infinity
    return None if f is None else int(f)


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def _run_row(experiment_name: str, run, dig: str, metrics: dict[str, float]) -> dict[str, Any]:
    """The run's row of ``runs``; ``metrics``: the run's metrics as its rows imply them."""
    info, p, t, m = run.info, run.data.params, run.data.tags, metrics
    try:
        size_b = float(t["size_b"])
    except ValueError:
        raise UqflowError(f"tag size_b={t['size_b']!r} is not a number") from None
    pair = "{}_vs_{}".format(*DELONG_PAIR)
    return {
        "run_id": info.run_id, "experiment_id": info.experiment_id, "experiment_name": experiment_name,
        "run_name": info.run_name, "parent_run_id": t.get(tracking.GRID_RUN_TAG) or t.get("mlflow.parentRunId"),
        "source_run_id": t.get(tracking.SOURCE_RUN_TAG), "start_time": _time(info.start_time),
        "end_time": _time(info.end_time), "model": t["model"], "family": t["family"], "size_b": size_b,
        "quantization": t.get("quantization", "none"),
        "precision": t.get("precision") or precision_of(t.get("quantization", "none")), "instruct": t.get("instruct", "").lower() == "true",
        "dataset": t["dataset"], "correctness": p.get("correctness"), "similarity": p.get("similarity"),
        "num_few_shot": _int(p.get("num_few_shot")), "backend": t.get("engine") or p.get("backend"),
        "num_generations": _int(p.get("num_generations", "0")),
        "entailment": p.get("entailment") if _int(p.get("num_generations", "0")) else None,
        "config_hash": t.get("config_hash"), "dataset_fingerprint": t.get("dataset_fingerprint"),
        "prompt_template_hash": t.get("prompt_template_hash"), "uqflow_version": t.get("uqflow_version"),
        "torch_version": t.get("torch_version"), "transformers_version": t.get("transformers_version"),
        "n": int(m["n"]), "n_undecided": _int(m.get("n_undecided")), "n_skipped": _int(m.get("n_skipped")),
        "accuracy": _num(m.get("accuracy")), "mean_answer_tokens": _num(m.get("mean_answer_tokens")),
        "delong_z": _num(m.get(f"delong_z_{pair}")), "delong_p": _num(m.get(f"delong_p_{pair}")),
        "generation_seconds": _num(m.get("generation_seconds")),
        "questions_per_second": _num(m.get("questions_per_second")), "peak_memory_mb": _num(m.get("peak_memory_mb")),
        "params": dict(p), "tags": dict(t), "metrics": {k: _json_num(v) for k, v in m.items()},
        "mlflow_digest": dig, "aggregated_at": datetime.now(UTC).replace(tzinfo=None),
    }


_AUROC = re.compile(r"^auroc_(.+?)(_ci_low|_ci_high)?$")


def _score_rows(run_id: str, metrics: dict[str, float]) -> list[dict[str, Any]]:
    # the declared measures in order, then any other a run logged (a measure of a later version)
    measures = list(NAMES) + sorted({mt.group(1) for k in metrics if (mt := _AUROC.match(k))} - set(NAMES))
    rows = []
    for s in measures:
        keys = {col: metric(col, s) for col in MEASURE_METRICS}
        if not any(k in metrics for k in keys.values()):
            continue
        rows.append({"run_id": run_id, "measure": s, **{col: _num(metrics.get(k)) for col, k in keys.items()}})
    return rows


def _floats(values) -> list[float | None]:
    return [_json_num(v) for v in values]


def _derived(run, table, checksum: str) -> Derived:
    """What the run's rows imply, after every field was checked against its row and its run
    (scoring/consistency.py) and the file against the checksum the run recorded."""
    derived = check_run_table(table, run.data.params, tracking.run_metrics(run))
    check_checksum(run.data.tags, checksum)
    return derived


def _generation_rows(run_id: str, table, derived: Derived) -> list[dict[str, Any]]:
    """The run's generations as rows of ``generations``: the stored fields, and every measure as
    recomputed from them (``derived``)."""
    judges = verdict_columns(table)
    measures = {s: derived.frame[s].tolist() for s in NAMES if s in derived.frame.columns}
    rows = []
    for i, r in enumerate(table.to_pylist()):
        token_ids = r["token_ids"]
        rows.append({
            "run_id": run_id, "example_id": str(r["example_id"]), "position": i, "question": r["question"],
            "answer": r["answer"], "reference_answers": r["references"], "answerable": r["answerable"],
            "correct": r["correct"], "correctness_score": _num(r.get("correctness_score")),
            "verdicts": {name: r[col] for name, col in judges.items()} or None,
            "num_tokens": len(token_ids), "stop_reason": r.get("stop_reason"),
            # one column each (scoring/measures.py), as the row implies it; null where not measured
            **{s: _num(measures[s][i]) if s in measures else None for s in NAMES},
            "tokens": r.get("tokens"), "token_ids": token_ids, "token_logprobs": _floats(r["token_logprobs"]),
            "relevance": _floats(r["relevance"]) if r.get("relevance") is not None else None,
            "samples": r.get("samples"),
            "semantic_ids": r.get("semantic_ids"),
        })
    return rows
