"""Interruptions and concurrency in the results store: SIGKILL during aggregation leaves it
consistent and a rerun completes it; two aggregations at once store every run exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

from store_fixtures import log_run
from commands import UQFLOW
from uqflow.scoring.measures import SINGLE_PASS
from uqflow.errors import StoreError, Terminated
from uqflow.store import aggregate, run_query
from uqflow.store.db import row_counts
from uqflow.tracking import run_metrics

N_RUNS, N_QUESTIONS = 12, 150


@pytest.fixture
def many_runs(tracking):
    models = ["SmolLM2-135M-Instruct", "Gemma-3-270M", "Llama-3.2-1B", "Qwen2.5-1.5B", "Mistral-7B-v0.3-8bit",
              "Llama-3-8B-8bit"]
    ids = [log_run(models[i % len(models)], ["trivia_mini", "squad_mini"][i // len(models)], N_QUESTIONS, seed=i)
           for i in range(N_RUNS)]
    return ids


def _consistent(url: str) -> int:
    """Every stored run has all its generations and scores, nothing is orphaned; returns the run count."""
    per_run = run_query("SELECT r.run_id, r.n, (SELECT COUNT(*) FROM generations g WHERE g.run_id = r.run_id), "
                        "(SELECT COUNT(*) FROM scores s WHERE s.run_id = r.run_id) FROM runs r", url).rows
    for run_id, n, gens, scores in per_run:
        assert gens == n and scores == len(SINGLE_PASS), f"run {run_id}: {gens} generations of {n}, {scores} scores"
    orphans = run_query("SELECT COUNT(*) FROM generations WHERE run_id NOT IN (SELECT run_id FROM runs)", url).rows
    assert orphans == [(0,)]
    return len(per_run)


def _aggregate_cmd(url: str) -> list[str]:
    return [*UQFLOW, "aggregate", "--db", url]


def test_sigkill_during_aggregation_then_rerun(many_runs, tmp_path, venv_env):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    proc = subprocess.Popen(_aggregate_cmd(url), env=venv_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    added = 0
    for line in proc.stderr:  # kill it once a few runs are in, while it writes the next ones
        added += line.strip().startswith("added")
        if added == 3:
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stored = _consistent(url)
    assert 3 <= stored < N_RUNS
    out = aggregate(url=url)
    assert sum(o.action == "added" for o in out) == N_RUNS - stored
    assert sum(o.action == "unchanged" for o in out) == stored
    assert _consistent(url) == N_RUNS
    assert row_counts(url) == {"runs": N_RUNS, "scores": len(SINGLE_PASS) * N_RUNS, "generations": N_QUESTIONS * N_RUNS}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_aggregations_at_once(many_runs, tmp_path, venv_env, request, backend):
    """Two aggregations of one tracking store into one results store at the same time: each run is
    stored exactly once (one process adds it, the other finds it unchanged) and completely."""
    url = f"sqlite:///{tmp_path / 'results.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_server")()
    procs = [subprocess.Popen(_aggregate_cmd(url), env=venv_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    added = sum(int(out.split(" added")[0].split()[-1]) for out, _ in outs)
    assert added == N_RUNS  # each run stored by exactly one of them
    assert _consistent(url) == N_RUNS
    assert row_counts(url) == {"runs": N_RUNS, "scores": len(SINGLE_PASS) * N_RUNS, "generations": N_QUESTIONS * N_RUNS}


def test_a_writer_that_found_no_row_never_replaces_one_committed_meanwhile(tracking, postgres_server, monkeypatch):
    """PostgreSQL reads each statement at a fresh snapshot: the interleaving that once let two
    aggregations both report a run as added, forced here. Writer A is inside its transaction; writer B
    starts then; B may delete only after A has committed. B must wait for A's run lock and then find
    A's row unchanged, rather than find nothing, delete A's committed row and insert its own copy."""
    import threading

    import uqflow.store.aggregation as agg
    from uqflow.store.db import connect, upgrade

    url = postgres_server()
    upgrade(url)
    log_run(n=20, seed=1)
    import mlflow

    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    exp = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    engine = connect(url)
    a_in_txn, b_started, a_done = threading.Event(), threading.Event(), threading.Event()
    real_delete = agg._delete_run

    def delete(conn, run_id):
        if threading.current_thread().name == "A":
            a_in_txn.set()
            assert b_started.wait(10)
            time.sleep(0.5)  # B reaches its lock (fixed) or its read of the row (the race) meanwhile
        else:
            assert a_done.wait(10)
        real_delete(conn, run_id)

    monkeypatch.setattr(agg, "_delete_run", delete)
    outcomes = {}

    def writer(name):
        if name == "B":
            assert a_in_txn.wait(10)
            b_started.set()
        outcomes[name] = agg._aggregate_run(engine, exp, "test", run).action
        if name == "A":
            a_done.set()

    threads = [threading.Thread(target=writer, args=(n,), name=n) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert outcomes == {"A": "added", "B": "unchanged"}
    assert _consistent(url) == 1


def test_a_failed_write_leaves_no_partial_rows(tracking, tmp_path, monkeypatch):
    """A run whose generations cannot be inserted (here: made to fail mid-insert) leaves nothing."""
    import uqflow.store.aggregation as agg

    url = f"sqlite:///{tmp_path / 'results.db'}"
    log_run(n=20, seed=1)
    real = agg._generation_rows

    def broken(*args):
        rows = real(*args)
        rows[-1]["question"] = None  # NOT NULL: the insert fails after the run and scores rows went in
        return rows

    monkeypatch.setattr(agg, "_generation_rows", broken)
    with pytest.raises(StoreError, match="cannot write the results store"):
        aggregate(url=url)
    assert row_counts(url) == {"runs": 0, "scores": 0, "generations": 0}
    monkeypatch.setattr(agg, "_generation_rows", real)
    assert [o.action for o in aggregate(url=url)] == ["added"]


@pytest.mark.slow
def test_same_configuration_in_two_processes_is_identical(tracking, venv_env):
    """Two `uqflow run` processes with one configuration: identical generations (token ids and
    log-probabilities to the bit), scores and metrics; each run records what it ran with."""
    import mlflow
    import pandas as pd

    cmd = [*UQFLOW, "run", "--model", "SmolLM2-135M-Instruct", "--dataset", "squad_mini",
           "--num-questions", "8", "--set", "max_new_tokens=24", "--set", "n_bootstrap=100"]
    for _ in range(2):
        subprocess.run(cmd, env=venv_env, check=True, capture_output=True, timeout=600)
    runs = mlflow.search_runs(experiment_names=["uqflow"], output_format="list", order_by=["attributes.start_time"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    frames = [pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=r.info.run_id,
                                                                  artifact_path="generations.parquet")) for r in runs]
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    volatile = {"generation_seconds", "scoring_seconds", "relevance_seconds", "questions_per_second", "run_seconds",
                "peak_memory_mb"}
    m0, m1 = ({k: v for k, v in run_metrics(r).items()  # wall times, a measure's cost in seconds among them
               if k not in volatile and not (k.startswith(("cost_", "part_")) and "seconds" in k)} for r in runs)
    assert {k for k in m0 if k.startswith("cost_passes_")}, "the costs are compared too"
    assert m0 == m1
    for key in ("torch_version", "transformers_version", "uqflow_version", "dataset_fingerprint",
                "prompt_template_hash", "config_hash"):
        assert runs[0].data.tags[key] and runs[0].data.tags[key] == runs[1].data.tags[key]


def _wait_for_running(timeout: float = 120.0):
    import mlflow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exp = mlflow.get_experiment_by_name("uqflow")
        if exp is not None:
            running = mlflow.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", output_format="list")
            if running:
                return running
        time.sleep(0.5)
    raise AssertionError("no run started")


RUN = ["run", "--model", "SmolLM2-135M-Instruct", "--dataset", "trivia_mini", "--num-questions", "200"]
GRID = ["grid", str(ROOT / "grids" / "cpu_demo.yaml"), "--set", "num_samples=200"]


@pytest.mark.slow
@pytest.mark.parametrize("command,sig,code,said", [
    (RUN, signal.SIGINT, 130, "Interrupted."),
    (GRID, signal.SIGINT, 130, "Interrupted."),
    (RUN, signal.SIGTERM, 143, "Terminated by SIGTERM."),  # Slurm, Kubernetes, `timeout`
    (GRID, signal.SIGHUP, 129, "Terminated by SIGHUP."),  # the terminal closed
], ids=["run-SIGINT", "grid-SIGINT", "run-SIGTERM", "grid-SIGHUP"])
def test_a_stop_signal_ends_runs_killed_and_leaves_nothing_running(tracking, tmp_path, venv_env, command, sig, code,
                                                                    said):
    """A real Ctrl-C (SIGINT), SIGTERM or SIGHUP during generation: its exit code, one line, no
    traceback, and every run it started ends KILLED with the signal as its reason, none RUNNING.
    Before, SIGTERM and SIGHUP left the run RUNNING for good."""
    import mlflow

    proc = subprocess.Popen([*UQFLOW, *command], env=venv_env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = _wait_for_running()
        time.sleep(3)  # into loading and generating
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert said in err and "Traceback" not in err
    exp = mlflow.get_experiment_by_name("uqflow")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert {r.info.status for r in runs} == {"KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    assert {r.info.run_id for r in started} <= {r.info.run_id for r in runs}
    reason = "KeyboardInterrupt" if sig == signal.SIGINT else sig.name
    assert all(r.data.tags.get("uqflow.error", "") == f"interrupted ({reason})" for r in runs)


def test_readers_recover_after_a_writer_killed_mid_transaction(tracking, tmp_path):
    """A writer killed inside its transaction leaves a hot rollback journal; read-only commands
    (query, report) play it back and see the store as it was before that transaction."""
    path = tmp_path / "results.db"
    url = f"sqlite:///{path}"
    log_run(n=N_QUESTIONS, seed=1)
    aggregate(url=url)
    before = row_counts(url)
    writer = ("import sqlite3, sys, time\n"
              "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "c.execute('PRAGMA cache_size = 1')\n"  # changed pages spill to the file: the journal is needed
              "c.execute('BEGIN IMMEDIATE')\n"
              "c.execute('DELETE FROM generations')\n"
              "c.execute(\"UPDATE runs SET model = 'half-written'\")\n"
              "print('inside', flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "results.db-journal").stat().st_size > 0  # a hot journal is there to play back
    assert row_counts(url) == before
    assert run_query("SELECT model FROM runs", url).rows == [("SmolLM2-135M-Instruct",)]


@pytest.mark.parametrize("signame,raised", [("SIGINT", KeyboardInterrupt), ("SIGTERM", Terminated)])
def test_a_stop_signal_a_library_swallowed_is_raised_again_once(signame, raised):
    """A signal's exception raised inside a weakref callback or __del__ is printed and lost; the
    signal is remembered, so the next long loop raises it, once."""
    import signal

    from uqflow.errors import note_stop, raise_if_stopped

    raise_if_stopped()  # nothing pending: nothing raised
    note_stop(getattr(signal, signame))
    with pytest.raises(raised) as caught:
        raise_if_stopped()
    assert type(caught.value) is raised
    raise_if_stopped()  # acted on once
