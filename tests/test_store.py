"""The results store: migrations agree with the models, aggregation is idempotent and complete,
the slice views compute what they say, and queries cannot write. The migration and aggregation
tests run on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from sqlalchemy import select

from store_fixtures import log_grid_parent, log_run
from commands import invoke
from uqflow.scoring.measures import SINGLE_PASS
from uqflow.errors import QueryError, StoreError, UqflowError
from uqflow.store import SLICE_VIEWS, Generation, Run, Score, aggregate, connect, run_query, upgrade
from uqflow.store.db import downgrade, head_revision, row_counts
from uqflow.tracking import run_metrics


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """An empty results store URL, on SQLite or on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("postgres_server")()


def _actions(outcomes):
    out: dict[str, int] = {}
    for o in outcomes:
        out[o.action] = out.get(o.action, 0) + 1
    return out


def test_models_and_migrations_agree(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from uqflow.store import Base

    assert upgrade(store) == head_revision()
    engine = connect(store)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
    assert upgrade(store) == head_revision()  # a second upgrade is a no-op


def test_downgrade_removes_everything_and_upgrade_restores(store):
    from sqlalchemy import inspect

    upgrade(store)
    downgrade(store, "base")
    engine = connect(store)
    names = set(inspect(engine).get_table_names()) | set(inspect(engine).get_view_names())
    engine.dispose()
    assert names <= {"alembic_version"}
    assert upgrade(store) == head_revision()
    engine = connect(store)
    names = set(inspect(engine).get_table_names()) | set(inspect(engine).get_view_names())
    engine.dispose()
    assert {"runs", "scores", "generations", *SLICE_VIEWS, "v_run_scores"} <= names


def test_downgrade_one_step_keeps_the_rows(tracking, store):
    """Undoing the newest migration and applying it again loses no run, score or generation."""
    log_run(n=12)
    aggregate(url=store)
    counts = row_counts(store)
    downgrade(store, "-1")
    assert row_counts(store) == counts
    assert upgrade(store) == head_revision()
    assert row_counts(store) == counts
    # the newest migration adds what aggregation derives (PRR@50%, measure columns) and marks the stored
    # runs stale, so the next aggregation reads each again, and the one after finds nothing to do
    assert _actions(aggregate(url=store)) == {"updated": 1}
    assert row_counts(store) == counts
    assert _actions(aggregate(url=store)) == {"unchanged": 1}


def _use_tracking_store(monkeypatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(uri)


def test_two_tracking_stores_keep_each_others_runs(tracking, tmp_path, monkeypatch, store):
    """A laptop's and a cluster's tracking store, aggregated into one results store. Both number
    their experiment 'uqflow' 1; aggregating one never removes the other's runs, and a run deleted
    in one store is removed from the results store, the other store's runs kept."""
    laptop, cluster = f"sqlite:///{tmp_path / 'laptop.db'}", f"sqlite:///{tmp_path / 'cluster.db'}"
    _use_tracking_store(monkeypatch, laptop)
    on_laptop = [log_run("SmolLM2-135M-Instruct", "trivia_mini", 10, 1), log_run("Gemma-3-270M", "trivia_mini", 10, 2)]
    assert _actions(aggregate(url=store)) == {"added": 2}
    laptop_exp = mlflow.get_experiment_by_name("uqflow")
    _use_tracking_store(monkeypatch, cluster)
    on_cluster = [log_run("SmolLM2-135M-Instruct", "squad_mini", 10, 3), log_run("Gemma-3-270M", "squad_mini", 10, 4)]
    assert mlflow.get_experiment_by_name("uqflow").experiment_id == laptop_exp.experiment_id  # the collision
    assert _actions(aggregate(url=store)) == {"added": 2}  # before: also 2 removed (the laptop's), exit 0
    assert row_counts(store) == {"runs": 4, "scores": 4 * len(SINGLE_PASS), "generations": 40}

    mlflow.delete_run(on_cluster[0])
    out = aggregate(url=store)
    assert _actions(out) == {"unchanged": 1, "removed": 1}
    assert [o.run_id for o in out if o.action == "removed"] == [on_cluster[0]]
    _use_tracking_store(monkeypatch, laptop)
    assert _actions(aggregate(url=store)) == {"unchanged": 2}
    stored = run_query("SELECT run_id, tracking_uri FROM runs ORDER BY run_id", store).rows
    assert sorted(stored) == sorted([(r, laptop) for r in on_laptop] + [(on_cluster[1], cluster)])


def test_runs_of_mlflow_run_are_found_in_any_experiment(tracking, store, monkeypatch):
    """`mlflow run .` without --experiment-name logs to the Default experiment; aggregation finds
    uqflow's runs there (by their tag), and leaves other runs of that experiment alone.
    (tests/test_experiment.py::test_headline_command_then_aggregate_and_query runs `mlflow run` itself.)"""
    mlflow.set_experiment("Default")
    with mlflow.start_run(run_name="someone else's run"):
        mlflow.log_metric("loss", 0.1)
    created = mlflow.MlflowClient().create_run("0")  # as MLflow Projects creates the run it hands over
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    theirs = log_run(n=10)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert theirs == created.info.run_id and mlflow.get_run(theirs).info.experiment_id == "0"
    out = aggregate(url=store)
    assert [(o.run_id, o.action) for o in out] == [(theirs, "added")]
    with pytest.raises(UqflowError, match="no experiment 'uqflow'.*leave out --experiment"):
        aggregate("uqflow", url=store)


def test_aggregate_is_idempotent_and_follows_mlflow(tracking, store):
    parent = log_grid_parent()
    ids = [log_run("SmolLM2-135M-Instruct", "trivia_mini", 30, 1, parent),
           log_run("Gemma-3-270M", "trivia_mini", 25, 2, parent),
           log_run("Gemma-3-270M", "squad_mini", 20, 3, parent)]
    first = aggregate(url=store)
    assert _actions(first) == {"added": 3}
    assert parent not in {o.run_id for o in first}  # a grid's parent run is not a model x dataset run
    counts = row_counts(store)
    assert counts == {"runs": 3, "scores": 3 * len(SINGLE_PASS), "generations": 75}

    assert _actions(aggregate(url=store)) == {"unchanged": 3}
    assert row_counts(store) == counts

    mlflow.MlflowClient().set_tag(ids[0], "note", "re-checked")  # a change MLflow recorded
    assert _actions(aggregate(url=store)) == {"updated": 1, "unchanged": 2}
    assert row_counts(store) == counts

    mlflow.MlflowClient().delete_run(ids[2])
    out = aggregate(url=store)
    assert _actions(out) == {"unchanged": 2, "removed": 1}
    assert row_counts(store) == {"runs": 2, "scores": 2 * len(SINGLE_PASS), "generations": 55}

    # the stored rows are what MLflow recorded
    engine = connect(store)
    with engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.run_id == ids[0])).one()
        scores = {s.measure: s for s in conn.execute(select(Score).where(Score.run_id == ids[0]))}
        gens = conn.execute(select(Generation).where(Generation.run_id == ids[0]).order_by(Generation.position)).all()
    engine.dispose()
    m = run_metrics(mlflow.get_run(ids[0]))
    assert (run.model, run.family, run.size_b, run.instruct, run.dataset, run.n) == (
        "SmolLM2-135M-Instruct", "SmolLM2", 0.135, True, "trivia_mini", 30)
    assert run.tags["note"] == "re-checked"
    assert run.accuracy == pytest.approx(m["accuracy"])
    assert scores["g_nll"].auroc == pytest.approx(m["auroc_g_nll"])
    assert scores["rw_g_nll"].ci_low == pytest.approx(m["auroc_rw_g_nll_ci_low"])
    assert run.delong_p == pytest.approx(m["delong_p_g_nll_vs_rw_g_nll"])
    frame = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=ids[0], artifact_path="generations.parquet"))
    assert [g.example_id for g in gens] == list(frame["example_id"])
    assert [g.g_nll for g in gens] == pytest.approx(list(frame["g_nll"]))
    assert [g.correct for g in gens] == [bool(c) for c in frame["correct"]]
    assert gens[0].token_logprobs == pytest.approx(list(frame["token_logprobs"][0]))
    assert gens[0].tokens == list(frame["tokens"][0])


def test_filter_narrows_and_does_not_remove_others(tracking, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    log_run("SmolLM2-135M-Instruct", "trivia_mini", 20, 1)
    log_run("Gemma-3-270M", "trivia_mini", 20, 2)
    assert _actions(aggregate(url=url, filter_string="tags.family = 'Gemma'")) == {"added": 1}
    assert _actions(aggregate(url=url, filter_string="tags.family = 'SmolLM2'")) == {"added": 1}
    assert row_counts(url)["runs"] == 2
    with pytest.raises(UqflowError, match="MLflow rejected the filter"):
        aggregate(url=url, filter_string="tags.family === 'x'")


def test_a_corrupt_artifact_skips_that_run_only(tracking, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    good = log_run("SmolLM2-135M-Instruct", "trivia_mini", 20, 1)
    bad = log_run("Gemma-3-270M", "trivia_mini", 20, 2)
    art = Path(mlflow.get_run(bad).info.artifact_uri.removeprefix("file://")) / "generations.parquet"
    art.write_bytes(b"PAR1 this is not parquet")
    out = {o.run_id: o for o in aggregate(url=url)}
    assert out[good].action == "added"
    assert out[bad].action == "skipped" and "cannot read its generations.parquet" in out[bad].reason
    assert row_counts(url) == {"runs": 1, "scores": len(SINGLE_PASS), "generations": 20}


def test_slice_views_compute_their_means(tracking, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for i, (model, ds) in enumerate([("SmolLM2-135M-Instruct", "trivia_mini"), ("SmolLM2-135M-Instruct", "squad_mini"),
                                     ("Gemma-3-270M", "trivia_mini"), ("Gemma-3-270M", "squad_mini")]):
        log_run(model, ds, 40, i)
    aggregate(url=url)
    per_run = run_query("SELECT * FROM v_run_scores", url).frame()
    assert len(per_run) == 4 * len(SINGLE_PASS)
    assert set(per_run["size_class"]) == {"only"}  # one size per family in this store
    fam = run_query("SELECT family, n_runs, mean_auroc FROM v_auroc_by_family WHERE measure = 'g_nll' "
                    "ORDER BY family", url).frame()
    g = per_run[per_run.measure == "g_nll"].groupby("family")["auroc"].mean()
    assert list(fam["family"]) == ["Gemma", "SmolLM2"] and list(fam["n_runs"]) == [2, 2]
    assert list(fam["mean_auroc"]) == pytest.approx([g["Gemma"], g["SmolLM2"]])
    for view in SLICE_VIEWS:
        assert len(run_query(f"SELECT * FROM {view} WHERE measure = 'rw_g_nll'", url).rows) >= 1


def test_size_class_within_family(tracking, tmp_path, monkeypatch):
    """Two sizes of one family (a user registry entry) become small and large; the other family 'only'."""
    reg = tmp_path / "models.yaml"
    reg.write_text("models:\n  - name: SmolLM2-1.7B-Instruct\n    source: HuggingFaceTB/SmolLM2-1.7B-Instruct\n"
                   "    family: SmolLM2\n    size_b: 1.7\n    instruct: true\n", encoding="utf-8")
    from store_fixtures import log_run as log
    from uqflow.models.registry import all_models

    monkeypatch.setattr("store_fixtures.MODELS", all_models(str(reg)))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    log("SmolLM2-135M-Instruct", "trivia_mini", 20, 1)
    log("SmolLM2-1.7B-Instruct", "trivia_mini", 20, 2)
    log("Gemma-3-270M", "trivia_mini", 20, 3)
    aggregate(url=url)
    rows = run_query("SELECT DISTINCT model, size_class FROM v_run_scores ORDER BY model", url).rows
    assert rows == [("Gemma-3-270M", "only"), ("SmolLM2-1.7B-Instruct", "large"), ("SmolLM2-135M-Instruct", "small")]


@pytest.mark.parametrize("sql", [
    "INSERT INTO runs (run_id) VALUES ('x')",
    "DELETE FROM generations",
    "UPDATE scores SET auroc = 1",
    "DROP TABLE runs",
    "CREATE TABLE t (x INTEGER)",
    "ATTACH DATABASE '{other}' AS other",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
])
def test_query_cannot_write_or_attach(tracking, tmp_path, sql):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    log_run(n=10)
    aggregate(url=url)
    before = row_counts(url)
    other = tmp_path / "other.db"
    with pytest.raises(QueryError, match="read-only|one SQL statement"):
        run_query(sql.format(other=other), url)
    assert row_counts(url) == before
    assert not other.exists()  # an ATTACH that ran would have created it


def test_query_on_postgres_is_read_only(tracking, postgres_server):
    url = postgres_server()
    log_run(n=10)
    aggregate(url=url)
    assert run_query("SELECT COUNT(*) FROM generations", url).rows == [(10,)]
    for sql in ("DELETE FROM generations", "COMMIT; DELETE FROM generations", "DROP VIEW v_run_scores",
                "SET default_transaction_read_only = off; DELETE FROM runs"):
        with pytest.raises(QueryError, match="read-only|one SQL statement"):
            run_query(sql, url)
    assert row_counts(url) == {"runs": 1, "scores": len(SINGLE_PASS), "generations": 10}


def test_query_errors_are_clear(tmp_path, tracking):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with pytest.raises(StoreError, match="no results store at .*uqflow aggregate"):
        run_query("SELECT 1", url)
    log_run(n=10)
    aggregate(url=url)
    with pytest.raises(QueryError, match="no such table: nope"):
        run_query("SELECT * FROM nope", url)
    with pytest.raises(QueryError, match="empty query"):
        run_query("  ", url)
    with pytest.raises(QueryError, match="one SQL statement"):
        run_query("SELECT 1; SELECT 2", url)


def test_cli_aggregate_then_query(tracking, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    log_run(n=12)
    r = invoke("aggregate", "--db", url)
    assert r.exit_code == 0, r.output
    assert "1 added, 0 updated, 0 unchanged, 0 skipped, 0 removed" in r.output
    r = invoke("aggregate", "--db", url)
    assert "0 added, 0 updated, 1 unchanged" in r.output
    r = invoke("query", "--db", url, "--format", "csv",
                            "SELECT family, measure, n_runs FROM v_auroc_by_family ORDER BY measure")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "family,measure,n_runs"
    assert "SmolLM2,g_nll,1" in r.output
    r = invoke("query", "--db", url, "--format", "json", "SELECT n FROM runs")
    assert r.exit_code == 0 and '"n":12' in r.output.replace(" ", "")
    r = invoke("query", "--db", url, "DELETE FROM runs")
    assert r.exit_code == 1 and "read-only" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("url, message", [
    ("not a url", "is not a database URL"),
    ("nosuchdialect://x/y", "no SQLAlchemy dialect"),
    ("sqlite:////nonexistent/folder/results.db", "folder /nonexistent/folder does not exist"),
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot open the results store"),
])
def test_bad_database_urls(tracking, url, message):
    r = invoke("db", "upgrade", "--db", url)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_aggregate_without_runs_says_so(tracking, tmp_path):
    r = invoke("aggregate", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--experiment", "nope")
    assert r.exit_code == 1 and "no experiment 'nope'" in r.output


def test_nan_metrics_are_null(tracking, tmp_path):
    """A one-class run: AUROC undefined, not logged by MLflow, stored as NULL, never 0.5."""
    from store_fixtures import generations
    from uqflow import tracking as tr
    from uqflow.config import RunConfig
    from uqflow.experiment import run_tags
    from uqflow.models import MODELS
    from uqflow.scoring import pipeline

    frame = generations(10, 0)
    frame["correct"] = pd.array([True] * 10, dtype="boolean")
    frame["references"] = [[a] for a in frame["answer"]]  # every answer right, as its judge finds it
    frame["correctness_score"] = 1.0
    cfg = RunConfig(num_samples=10, n_bootstrap=20, seed=0)
    with pytest.warns(Warning):
        metrics = pipeline.evaluate(frame, n_bootstrap=20)
    with tr.tracked_run("one-class", run_tags(cfg, MODELS.get(cfg.model))):
        tr.log_params(cfg.to_dict())
        tr.log_metrics(metrics)
        tr.log_frame(frame)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    rows = run_query("SELECT measure, auroc, aurac FROM scores ORDER BY measure", url).rows
    assert rows and all(r[1] is None for r in rows) and all(r[2] is not None and not math.isnan(r[2]) for r in rows)


def test_migrations_have_exactly_one_head():
    from alembic.script import ScriptDirectory

    from uqflow.store.db import DEFAULT_URL, alembic_config

    heads = ScriptDirectory.from_config(alembic_config(DEFAULT_URL)).get_heads()
    assert len(heads) == 1, heads


@pytest.mark.slow
def test_an_installed_uqflow_migrates_a_store_from_any_folder(tmp_path):
    """`pip install .` into a fresh virtualenv, then `uqflow db upgrade` from another folder: the
    migrations travel inside the wheel (before, they existed only beside a source checkout)."""
    import subprocess
    import sys
    import sysconfig
    import zipfile

    from conftest import ROOT

    import shutil

    dist, venv, elsewhere, src = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere", tmp_path / "src"
    elsewhere.mkdir()
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):  # built from a copy, since a build writes build/ beside its source
        shutil.copy(ROOT / name, src / name)
    for name in ("uqflow", "migrations"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(src)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = dist.glob("uqflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {str(p.relative_to(ROOT)) for p in (ROOT / "uqflow").rglob("*.py")}
    assert source <= names, sorted(source - names)  # every module of the package ships
    assert {"uqflow/migrations/env.py", "uqflow/migrations/script.py.mako"} <= names
    assert {f"uqflow/migrations/versions/{p.name}" for p in (ROOT / "migrations" / "versions").glob("*.py")} <= names
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with zipfile.ZipFile(wheel) as z:  # what `pip install --no-deps` does with a pure-Python wheel
        z.extractall(site)
    # the dependencies come from this environment's site-packages, added as a plain path (its .pth
    # files, among them the editable install of the checkout, are not read)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    url = f"sqlite:///{tmp_path / 'stores' / 'r.db'}"
    (tmp_path / "stores").mkdir()
    out = subprocess.run([str(python), "-m", "uqflow", "db", "upgrade", "--db", url], cwd=elsewhere,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"is at schema revision {head_revision()}" in out.stdout
    where = subprocess.run([str(python), "-c", "import uqflow.store.db as d; print(d.MIGRATIONS)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(Path(site) / "uqflow" / "migrations")  # the installed copy, not the checkout's


def test_scores_columns_are_the_metrics_a_run_logs():
    """The results store's per-measure columns and the metrics evaluation logs come from one
    declaration (scoring.pipeline.MEASURE_METRICS)."""
    from uqflow.scoring.pipeline import MEASURE_METRICS
    from uqflow.store.schema import MEASURE_COLUMNS

    assert MEASURE_COLUMNS == tuple(MEASURE_METRICS)


def test_schema_gives_every_view_column_a_type(tracking, tmp_path):
    """`uqflow query --schema`: SQLite declares no type for a view's computed column (an AVG, a
    CASE); the schema gives its storage class instead of NULL."""
    from uqflow.store.query import schema

    db = f"sqlite:///{tmp_path / 'results.db'}"
    log_run(n=8)
    aggregate(url=db)
    views = {name: dict(cols) for name, kind, cols in schema(db) if kind == "view"}
    assert views["v_auroc_by_family"]["mean_auroc"] == "FLOAT" and views["v_auroc_by_family"]["n_runs"] == "INTEGER"
    assert views["v_run_scores"]["size_class"] == "TEXT" and views["v_run_scores"]["precision"] == "TEXT"
    assert not [(v, c) for v, cols in views.items() for c, t in cols.items() if t == "NULL"]
