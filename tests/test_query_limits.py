"""``uqflow query`` is bounded in time and in memory: a runaway statement (one huge expression, an
unbounded WITH RECURSIVE, a string that doubles, a row of many large values, endless rows) is
stopped with one clear line, well before the timeout where a memory limit applies, and without
taking the machine's memory.

Each case runs in a child process of its own, so its time and its peak memory (the child's
``ru_maxrss``, read with ``os.wait4``) are its own. The bounds are generous: they guard against
hangs and runaway memory, they are not benchmarks. Peak memory is compared with that of a child
running ``SELECT 1`` (the interpreter, uqflow and its imports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from commands import invoke, UQFLOW
from uqflow.errors import QueryError, UqflowError
from uqflow.store import run_query
from uqflow.store.query import _sqlite_heap_functions

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="os.wait4 (POSIX) measures each child")

HANG_S = 90  # a child still running after this is killed and the case fails
RANDOMBLOB = "SELECT length(replace(hex(randomblob(200000000)),'0','00'))"
COUNT_FOREVER = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r)"
GROUP_CONCAT = f"{COUNT_FOREVER} SELECT length(group_concat(x)) FROM r"
DOUBLING = "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT length(s) FROM r"
STRING_AGG = f"{COUNT_FOREVER} SELECT length(string_agg(x::text, ',')) FROM r"
ENDLESS_ROWS = f"{COUNT_FOREVER} SELECT x FROM r"
WIDE_ROW = "SELECT " + ", ".join(["randomblob(40000000)"] * 16)  # 640 MB in one row, no value over 40 MB



@dataclasses.dataclass
class Ran:
    code: int
    output: str
    seconds: float
    peak_mb: float


def run_child(argv: list[str], cwd) -> Ran:
    """Run ``argv``; its exit code, output, wall time and peak resident memory."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > HANG_S:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        output = out.read().decode(errors="replace")
    peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, else KiB
    return Ran(proc.returncode, output, seconds, peak)


def cli_query(cwd, url: str, sql: str, *options: str) -> Ran:
    return run_child([*UQFLOW, "query", "--db", url, *options, sql], cwd)


def capped_query(cwd, url: str, sql: str, *, timeout: float, max_memory_mb: float) -> Ran:
    return cli_query(cwd, url, sql, "--timeout", str(timeout), "--max-memory", str(max_memory_mb))


def assert_stopped(ran: Ran, phrase: str, *, within_s: float, baseline_mb: float, extra_mb: float) -> None:
    """Exit code 1, the phrase on the one line of output, no traceback, in time, within memory."""
    assert ran.code == 1, ran
    assert phrase in ran.output.strip().splitlines()[-1], ran  # on the one line of the message
    assert "Traceback" not in ran.output, ran
    assert ran.seconds < within_s, ran
    assert ran.peak_mb < baseline_mb + extra_mb, (ran, baseline_mb)


def new_store(url: str) -> str:
    """An empty results store with the schema, as `uqflow db upgrade` makes it."""
    res = invoke("db", "upgrade", "--db", url)
    assert res.exit_code == 0, res.output
    return url


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    return new_store(f"sqlite:///{tmp_path_factory.mktemp('query-limits') / 'r.db'}")


@pytest.fixture(scope="module")
def baseline_mb(sqlite_store, tmp_path_factory):
    """The peak memory of a child that answers SELECT 1."""
    ran = cli_query(tmp_path_factory.mktemp("baseline"), sqlite_store, "SELECT 1", "--format", "csv")
    assert ran.code == 0, ran
    return ran.peak_mb


@pytest.fixture
def heap_limit_available():
    """SQLite's process-wide heap limit can be set and put back (found on Linux: Python's sqlite3
    module uses a shared libsqlite3); elsewhere the cases that need it are skipped."""
    if _sqlite_heap_functions() is None:
        if sys.platform.startswith("linux"):
            pytest.fail("sqlite3_hard_heap_limit64 of Python's SQLite library was not found")
        pytest.skip("SQLite's heap limit cannot be set and put back on this platform")


# ---------------------------------------------------------------------------------------- SQLite

def test_one_huge_expression_is_stopped_by_the_value_limit(tmp_path, sqlite_store, baseline_mb):
    # before: ran 2.6 s past --timeout 1 (one function call never reaches the progress handler),
    # took 1.4 GB and printed the length
    ran = cli_query(tmp_path, sqlite_store, RANDOMBLOB, "--timeout", "1")
    assert_stopped(ran, "the query built a value longer than 100 MB and was stopped",
                   within_s=30, baseline_mb=baseline_mb, extra_mb=300)


def test_unbounded_recursive_cte_is_stopped_by_the_timeout(tmp_path, sqlite_store, baseline_mb):
    # group_concat stops growing at the value limit (SQLite reports that only when the aggregate
    # ends, which this one never does), so the timeout stops it, with memory bounded meanwhile
    ran = cli_query(tmp_path, sqlite_store, GROUP_CONCAT, "--timeout", "3")
    assert_stopped(ran, "the query ran longer than 3 s and was stopped (--timeout)",
                   within_s=3 + 30, baseline_mb=baseline_mb, extra_mb=500)


def test_recursive_cte_doubling_a_string_is_stopped_by_the_value_limit(tmp_path, sqlite_store, baseline_mb):
    # before: 12 s and 3.1 GB, then "the database rejected the query: string or blob too big"
    ran = cli_query(tmp_path, sqlite_store, DOUBLING, "--timeout", "60")
    assert_stopped(ran, "the query built a value longer than 100 MB and was stopped",
                   within_s=30, baseline_mb=baseline_mb, extra_mb=800)


def test_many_large_values_are_stopped_by_the_heap_limit(tmp_path, sqlite_store, baseline_mb,
                                                         heap_limit_available):
    # 16 values of 40 MB in one row: none is past the value limit, together they pass the heap's
    ran = capped_query(tmp_path, sqlite_store, WIDE_ROW, timeout=60, max_memory_mb=200)
    assert_stopped(ran, "the query needed more than 200 MB of memory and was stopped (--max-memory)",
                   within_s=30, baseline_mb=baseline_mb, extra_mb=450)


def test_endless_rows_are_stopped_by_the_result_limit(tmp_path, sqlite_store, baseline_mb):
    # before: the rows piled up in Python until the timeout (~150 MB/s)
    ran = capped_query(tmp_path, sqlite_store, ENDLESS_ROWS, timeout=120, max_memory_mb=100)
    assert_stopped(ran, "the query's result needed more than 100 MB of memory and was stopped (--max-memory)",
                   within_s=60, baseline_mb=baseline_mb, extra_mb=350)


def test_value_limit_follows_the_memory_limit(tmp_path, sqlite_store):
    # at most a quarter of --max-memory: 20 MB here; values below it are fine
    ran = capped_query(tmp_path, sqlite_store, "SELECT length(randomblob(30000000))", timeout=60, max_memory_mb=80)
    assert ran.code == 1 and "the query built a value longer than 20 MB and was stopped" in ran.output, ran
    ran = capped_query(tmp_path, sqlite_store, "SELECT length(randomblob(10000000))", timeout=60, max_memory_mb=80)
    assert ran.code == 0 and "(1 row)" in ran.output, ran


@pytest.mark.parametrize("mb", [0, 0.5, -1, float("nan"), float("inf")])
def test_memory_limit_must_be_sensible(sqlite_store, mb):
    with pytest.raises(QueryError, match="the memory limit must be a finite number of MB, at least 1"):
        run_query("SELECT 1", sqlite_store, max_memory_mb=mb)


def _heap_limits() -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(":memory:")) as c:
        return (c.execute("PRAGMA hard_heap_limit").fetchone()[0], c.execute("PRAGMA soft_heap_limit").fetchone()[0])


def test_heap_limit_is_put_back_after_a_capped_query(sqlite_store, heap_limit_available):
    """Run in a fresh process: SQLite's heap limit counts every SQLite allocation of the process,
    and the page caches of the tracking stores that earlier tests opened here (2 MB a connection)
    would eat into the 64 MB this test caps a query at."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_query_limits as t; "
            "t.heap_limit_is_put_back(sys.argv[2])")
    ran = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__), sqlite_store], capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]


def heap_limit_is_put_back(sqlite_store: str) -> None:
    before = _heap_limits()
    with pytest.raises(QueryError, match="needed more than 64 MB of memory"):
        run_query("SELECT " + ", ".join(["randomblob(10000000)"] * 10), sqlite_store, max_memory_mb=64)
    with pytest.raises(QueryError, match="built a value longer than 16 MB"):
        run_query("SELECT randomblob(20000000)", sqlite_store, max_memory_mb=64)
    assert _heap_limits() == before
    # this process is not left capped: SQLite may use more than 64 MB again, in a value or in all
    with contextlib.closing(sqlite3.connect(":memory:")) as c:
        assert c.execute("SELECT length(randomblob(150000000))").fetchone() == (150000000,)
        assert len(c.execute("SELECT " + ", ".join(["randomblob(10000000)"] * 10)).fetchone()) == 10
    assert run_query("SELECT length(randomblob(50000000)), count(*) FROM runs", sqlite_store).rows == [(50000000, 0)]
    assert _heap_limits() == before


def test_heap_limit_is_put_back_after_queries_in_threads(sqlite_store, heap_limit_available):
    """Queries in threads at once share the limit; the last to finish puts the previous one back."""
    before = _heap_limits()
    unexpected = []

    def work():
        for _ in range(5):
            try:
                run_query("SELECT " + ", ".join(["randomblob(10000000)"] * 10), sqlite_store, max_memory_mb=64)
            except UqflowError:  # stopped, or starved by the others' blobs (opening included): either is fine
                pass
            except BaseException as e:  # noqa: BLE001 - a thread's own error would pass unseen
                unexpected.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == []
    assert _heap_limits() == before
    assert run_query("SELECT length(randomblob(50000000))", sqlite_store).rows == [(50000000,)]


def test_a_store_sqlite_has_no_memory_to_open_says_so(sqlite_store, monkeypatch):
    """SQLite's heap limit is process-wide: a query opening the store while another caps it can
    find no memory to open a connection. That is a one-line error, not a MemoryError."""
    def starved(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(sqlite3.dbapi2, "connect", starved)  # what SQLAlchemy opens SQLite with
    with pytest.raises(UqflowError, match=r"SQLite ran out of memory \(a query running in this process caps "):
        run_query("SELECT 1", sqlite_store)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_empty_results_keep_their_columns(request, backend):
    # PostgreSQL: rows are streamed, and a stream that yields none describes no columns by itself
    url = request.getfixturevalue("sqlite_store" if backend == "sqlite" else "pg_store")
    result = run_query("SELECT run_id, model FROM runs", url)
    assert (result.columns, result.rows) == (["run_id", "model"], [])
    assert run_query("SELECT count(*) AS n FROM runs", url).columns == ["n"]


# ------------------------------------------------------------------------------------ PostgreSQL

@pytest.fixture(scope="module")
def pg_store(postgres_server):
    return new_store(postgres_server())


def test_postgres_unbounded_recursive_cte_is_stopped_by_statement_timeout(tmp_path, pg_store, baseline_mb):
    ran = cli_query(tmp_path, pg_store, STRING_AGG, "--timeout", "2")
    assert_stopped(ran, "the query ran longer than 2 s and was stopped (--timeout)",
                   within_s=2 + 30, baseline_mb=baseline_mb, extra_mb=300)


def test_postgres_endless_rows_are_stopped_by_the_result_limit(tmp_path, pg_store, baseline_mb):
    # before: libpq buffered every row until statement_timeout (~70 MB/s in the client)
    ran = capped_query(tmp_path, pg_store, ENDLESS_ROWS, timeout=120, max_memory_mb=100)
    assert_stopped(ran, "the query's result needed more than 100 MB of memory and was stopped (--max-memory)",
                   within_s=60, baseline_mb=baseline_mb, extra_mb=350)


def test_postgres_session_limits(pg_store):
    """statement_timeout and work_mem are set in the read-only transaction; temp_file_limit where
    the role may set it (a superuser here), and silently not elsewhere; work_mem is lowered, never
    raised."""
    import psycopg
    from sqlalchemy.engine import make_url

    settings = ("SELECT current_setting('statement_timeout'), current_setting('work_mem'), "
                "current_setting('temp_file_limit'), current_setting('transaction_read_only')")
    assert run_query(settings, pg_store, timeout=7).rows == [("7s", "4MB", "4GB", "on")]

    # a role that may not set temp_file_limit: skipped silently, the rest holds
    u = make_url(pg_store)
    role = f"reader_{u.database}"
    dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"ALTER ROLE {role} SET work_mem = '256MB'")
        conn.execute(f"ALTER ROLE {role} SET temp_file_limit = '1MB'")  # set for the role by a superuser
    reader = u.set(username=role).render_as_string(hide_password=False)
    assert run_query(settings, reader, timeout=7).rows == [("7s", "64MB", "1MB", "on")]
    assert run_query("SELECT count(*) FROM runs", reader).rows == [(0,)]
    with pytest.raises(QueryError, match="^the query needed more temporary file space on the database server than "
                                         "its temp_file_limit allows and was stopped$"):
        run_query("SELECT count(*) FROM (SELECT x FROM generate_series(1, 3000000) x ORDER BY random()) s", reader)
    for sql in ("DELETE FROM runs", "COMMIT; DELETE FROM runs", "RELEASE SAVEPOINT uqflow_limits; DELETE FROM runs"):
        with pytest.raises(QueryError, match="read-only|one SQL statement"):
            run_query(sql, reader)
