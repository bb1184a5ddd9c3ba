"""Read-only SQL over the results store (``uqflow query``).

Read-only is enforced by the database, not by inspecting the SQL: SQLite files are opened with
``mode=ro`` and ``query_only``, and an authorizer denies every action but reading (so ATTACH,
PRAGMA and writes fail before they run); PostgreSQL sessions run in read-only transactions and the
statement is sent through the extended query protocol (parse, bind, execute), which the server
accepts only as a single command (so no ``COMMIT; ...`` can end the read-only transaction). The
session settings that bound the query (``SET statement_timeout`` ...) are sent before it, inside
the same read-only transaction, as statements of their own.

A query is bounded in time and in memory:

* time: ``timeout`` seconds (SQLite: a progress handler consulted every few thousand
  virtual-machine steps; PostgreSQL: ``statement_timeout``);
* memory: ``max_memory_mb``. SQLite's own heap is capped at it while the query runs (SQLite's
  hard heap limit, which is process-wide: the previous limit is put back afterwards), and no
  single string or blob may exceed a quarter of it, at most ``MAX_VALUE_MB`` (one function call
  such as ``randomblob(200000000)`` never yields to the progress handler, so only this limit stops
  it). On both databases the rows held in Python are capped at ``max_memory_mb`` too: they are
  fetched a few at a time, never all at once by the driver. PostgreSQL's server-side memory is
  bounded only per sort or hash (``work_mem``), see ``_postgres_limits``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from uqflow.errors import QueryError
from uqflow.store.db import _first_line, connect, db_url, redact, store_failure

FORMATS = ("table", "csv", "json")
DEFAULT_TIMEOUT = 120.0  # seconds; a runaway query (say, an unbounded WITH RECURSIVE) is stopped
DEFAULT_MAX_MEMORY_MB = 1024  # SQLite's heap while the query runs, and separately the rows held in Python
MAX_VALUE_MB = 100  # the longest string or blob an SQLite query may build (at most a quarter of max_memory_mb)
PG_WORK_MEM_MB = 64  # PostgreSQL: work_mem is lowered to this for the query, never raised
PG_TEMP_FILE_MB = 4096  # PostgreSQL: temp_file_limit, where the role may set it (superusers; PG 15+: granted)
MB = 1024 * 1024
_PROGRESS_STEPS = 10_000  # SQLite virtual-machine steps between two looks at the clock
_REFUSALS = ("not authorized", "authorization denied", "readonly", "read-only", "read only", "query_only",
             "prohibited")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def frame(self):
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=self.columns)


@dataclass
class _Limits:
    timeout: float
    max_bytes: int
    value_bytes: int
    heap_bytes: int = 0  # SQLite's hard heap limit while the query ran; 0: none could be set


def run_query(sql: str, url: str | None = None, timeout: float = DEFAULT_TIMEOUT, *,
              max_memory_mb: float = DEFAULT_MAX_MEMORY_MB) -> QueryResult:
    """Run one SQL statement read-only and return its columns and rows; stop it after ``timeout``
    s, or when it needs more than ``max_memory_mb`` MB (see the module's docstring)."""
    if not sql.strip():
        raise QueryError("empty query; e.g. uqflow query \"SELECT * FROM v_auroc_by_family WHERE measure = 'g_nll'\"")
    if not timeout > 0:
        raise QueryError(f"the timeout must be a positive number of seconds, not {timeout}")
    if not 1 <= max_memory_mb < 2**40:
        raise QueryError(f"the memory limit must be a finite number of MB, at least 1, not {max_memory_mb}")
    max_bytes = int(max_memory_mb * MB)
    limits = _Limits(timeout, max_bytes, value_bytes=min(MAX_VALUE_MB * MB, max_bytes // 4))
    url = db_url(url)
    engine = connect(url, readonly=True)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            if engine.dialect.name == "postgresql":
                columns, rows = _run_postgres(engine, raw, cur, sql, limits)
            elif engine.dialect.name == "sqlite":
                columns, rows = _run_sqlite(raw, cur, sql, limits)
            else:
                cur.execute(sql)
                columns, rows = _columns(cur), _collect(cur, limits) if cur.description else []
        except MemoryError:
            if limits.heap_bytes:
                raise QueryError(f"the query needed more than {limits.heap_bytes / MB:g} MB of memory and was "
                                 "stopped (--max-memory)") from None
            raise QueryError("the query ran out of memory and was stopped") from None
        except engine.dialect.loaded_dbapi.Error as e:
            raise QueryError(_explain(e, engine, url, limits)) from None
        finally:
            cur.close()
    except BaseException:
        with contextlib.suppress(Exception):  # the query's own error is the one to report
            raw.rollback()
        raise
    else:
        raw.rollback()
    finally:
        raw.close()
        engine.dispose()
    return QueryResult(columns, rows)


def _explain(e: BaseException, engine, url: str, limits: _Limits) -> str:
    """The one-line message for a database error raised by the query."""
    msg = _first_line(e)
    low = msg.lower()
    if "locked" in low:
        return store_failure("read", url, e)
    if "interrupted" in low or "statement timeout" in low:
        return f"the query ran longer than {limits.timeout:g} s and was stopped (--timeout)"
    if "string or blob too big" in low:  # SQLITE_TOOBIG: SQLITE_LIMIT_LENGTH, set in _run_sqlite
        return f"the query built a value longer than {limits.value_bytes / MB:g} MB and was stopped"
    if "temp_file_limit" in low:
        return ("the query needed more temporary file space on the database server than its temp_file_limit "
                "allows and was stopped")
    if "out of memory" in low:  # SQLITE_NOMEM arrives as MemoryError (run_query); this is the server's
        return "the query ran out of memory on the database server and was stopped"
    if "invalid memory alloc request size" in low:  # PostgreSQL: one value past its 1 GB limit
        return "the query built a value larger than the database server allows (1 GB) and was stopped"
    if "no such table" in low or "does not exist" in low:
        from sqlalchemy import inspect

        if not inspect(engine).has_table("runs"):
            return f"{msg}: the results store {redact(url)} is empty; fill it with `uqflow aggregate`"
    if any(k in low for k in _REFUSALS):
        return (f"refused: uqflow query is read-only and cannot write, change the schema or attach "
                f"databases ({msg})")
    if "one statement" in low or "multiple commands" in low:
        return f"one SQL statement at a time, please ({msg})"
    return f"the database rejected the query: {msg}"


# ------------------------------------------------------------------------------------------ SQLite


def _run_sqlite(raw, cur, sql: str, limits: _Limits):
    import sqlite3

    conn = raw.driver_connection
    if hasattr(conn, "setlimit"):  # Python 3.11+; before, only the heap limit bounds one value
        # the longest string or blob any expression may build; without it one function call
        # (randomblob, replace, group_concat, s || s) allocates gigabytes without ever yielding
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.value_bytes)
    deadline = time.monotonic() + limits.timeout
    # SQLite calls this every _PROGRESS_STEPS virtual-machine steps; non-zero interrupts the query
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
    try:
        with _sqlite_heap_limit(limits.max_bytes) as heap:
            limits.heap_bytes = heap
            cur.execute(sql)
            return _columns(cur), _collect(cur, limits) if cur.description else []
    finally:
        conn.set_progress_handler(None, 0)


_heap_lock = threading.Lock()
_heap_users = 0
_heap_saved = (0, 0)


@contextlib.contextmanager
def _sqlite_heap_limit(nbytes: int):
    """SQLite's hard heap limit lowered to ``nbytes`` (SQLite then fails an allocation past it with
    SQLITE_NOMEM, which Python raises as MemoryError) and put back afterwards; yields the limit in
    force, or 0 where it cannot be set and put back.

    The limit is process-wide. ``PRAGMA hard_heap_limit`` can only lower it, never raise or clear
    it, so the C function ``sqlite3_hard_heap_limit64`` of the SQLite library that Python's sqlite3
    module uses is called through ctypes; where that library cannot be found (an SQLite linked
    into Python statically, or no memory accounting) no heap limit is set, and the value-length
    limit, the result-size cap and the timeout still hold. Queries running at the same time in
    threads share the lowest limit; the last one to finish puts the previous limits back."""
    global _heap_users, _heap_saved
    funcs = _sqlite_heap_functions()
    if funcs is None:
        yield 0
        return
    hard, soft = funcs
    with _heap_lock:
        if _heap_users == 0:
            _heap_saved = (hard(-1), soft(-1))
        _heap_users += 1
        prior = hard(-1)
        limit = nbytes if prior <= 0 else min(prior, nbytes)
        hard(limit)
    try:
        yield limit
    finally:
        with _heap_lock:
            _heap_users -= 1
            if _heap_users == 0:
                hard(_heap_saved[0])  # first: setting the hard limit also moves the soft one
                soft(_heap_saved[1])


@functools.cache
def _sqlite_heap_functions():
    """``sqlite3_hard_heap_limit64`` and ``sqlite3_soft_heap_limit64`` of the SQLite library that
    Python's sqlite3 module is linked to, or None. A candidate library counts only when a soft heap
    limit set through a PRAGMA on a Python connection reads back through it: a second copy of
    SQLite in the process (a conda or system library beside the one Python loaded) is not it."""
    import ctypes
    import ctypes.util
    import sqlite3

    candidates: list[str] = []
    with contextlib.suppress(OSError):  # Linux: the libraries this process has loaded
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5 and "sqlite" in line}
        candidates += sorted(p for p in paths if p.startswith("/"))
    with contextlib.suppress(ImportError, AttributeError):
        import _sqlite3

        candidates.append(_sqlite3.__file__)  # where SQLite is linked into the extension module
    with contextlib.suppress(Exception):
        candidates.append(ctypes.util.find_library("sqlite3"))
    for name in dict.fromkeys(c for c in candidates if c):
        try:
            lib = ctypes.CDLL(name)
            hard, soft = lib.sqlite3_hard_heap_limit64, lib.sqlite3_soft_heap_limit64
        except (OSError, AttributeError):
            continue
        for fn in (hard, soft):
            fn.restype, fn.argtypes = ctypes.c_int64, [ctypes.c_int64]
        try:
            with contextlib.closing(sqlite3.connect(":memory:")) as conn:
                before = conn.execute("PRAGMA soft_heap_limit").fetchone()[0]
                cap = conn.execute("PRAGMA hard_heap_limit").fetchone()[0]
                probe = cap - 1 if cap > 1 else 0x2B0B_F00D  # any value that is not already set
                conn.execute(f"PRAGMA soft_heap_limit = {probe}")
                same = soft(-1) == probe
                conn.execute(f"PRAGMA soft_heap_limit = {before}")
        except sqlite3.Error:
            return None
        if same:
            return hard, soft
    return None


# -------------------------------------------------------------------------------------- PostgreSQL


def _run_postgres(engine, raw, cur, sql: str, limits: _Limits):
    if engine.dialect.driver != "psycopg":
        # psycopg2 would send "COMMIT; ..." as one simple-protocol string, ending the read-only transaction
        raise QueryError(f"uqflow query on PostgreSQL needs the psycopg driver: use a postgresql+psycopg:// URL, "
                         f"not {engine.url.drivername}://")
    import psycopg

    _postgres_limits(cur, limits)
    # stream(): the extended query protocol (one command only, see the module's docstring) in
    # single-row or chunked mode, so the rows arrive as they are read; cur.execute + fetchall would
    # let libpq buffer the whole result (an unbounded WITH RECURSIVE: gigabytes) first
    try:  # rows in chunks: psycopg 3.2+ with libpq 17+; else one at a time
        from psycopg import capabilities

        chunked = capabilities.has_stream_chunked()
    except ImportError:
        chunked = False
    stream = cur.stream(sql, size=1000) if chunked else cur.stream(sql)
    try:
        rows = _collect(stream, limits)
    except psycopg.ProgrammingError as e:
        if "didn't produce a result" in str(e):  # a command that returns no rows (SET ..., BEGIN)
            return [], []
        raise
    finally:
        stream.close()  # on an early stop: cancels the query on the server
    columns = _columns(cur) if cur.description else _postgres_columns(raw.driver_connection, sql)
    return columns, rows


def _postgres_limits(cur, limits: _Limits) -> None:
    """Session settings that bound the query, inside its read-only transaction (psycopg has begun
    it with the first statement), each a statement of its own before the query.

    PostgreSQL has no per-session or per-query memory cap: ``work_mem`` bounds each sort, hash and
    materialisation of a query (several may run at once; past it they spill to temporary files),
    but not, say, a ``string_agg`` growing towards PostgreSQL's 1 GB value limit. The server's own
    settings (and the operating system) are what bound it further; ``statement_timeout`` bounds
    how long it can grow. ``temp_file_limit`` bounds the spilled files, but only superusers (or,
    from PostgreSQL 15, roles granted SET on it) may set it: for others it is skipped."""
    import psycopg

    cur.execute(f"SET statement_timeout = {int(min(max(1, limits.timeout * 1000), 2**31 - 1))}")  # ms, an int4
    work_mem_kb = min(PG_WORK_MEM_MB * 1024, limits.max_bytes // 1024)
    # lowered to at most PG_WORK_MEM_MB, never raised above the server's setting (its default is 4 MB)
    cur.execute("SELECT set_config('work_mem', least(pg_size_bytes(current_setting('work_mem')) / 1024, "
                f"{work_mem_kb})::text || 'kB', false)")
    temp_kb = PG_TEMP_FILE_MB * 1024
    cur.execute("SAVEPOINT uqflow_limits")
    try:  # -1: no limit
        cur.execute("SELECT set_config('temp_file_limit', (CASE WHEN pg_size_bytes(current_setting('temp_file_limit')) "
                    f"< 0 THEN {temp_kb} ELSE least(pg_size_bytes(current_setting('temp_file_limit')) / 1024, "
                    f"{temp_kb}) END)::text || 'kB', false)")
    except psycopg.Error:  # permission denied to set parameter "temp_file_limit": not for this role
        cur.execute("ROLLBACK TO SAVEPOINT uqflow_limits")
    cur.execute("RELEASE SAVEPOINT uqflow_limits")


def _postgres_columns(conn, sql: str) -> list[str]:
    """The column names of a query that returned no rows (psycopg's stream() then describes none):
    the statement is parsed and described again by the server, not run."""
    from psycopg import pq

    enc = conn.info.encoding
    if conn.pgconn.prepare(b"", sql.encode(enc)).status != pq.ExecStatus.COMMAND_OK:
        return []
    described = conn.pgconn.describe_prepared(b"")
    return [described.fname(i).decode(enc) for i in range(described.nfields)]


# ----------------------------------------------------------------------------------------- results


def _columns(cur) -> list[str]:
    return [d[0] for d in cur.description] if cur.description else []


def _collect(rows, limits: _Limits, batch: int = 1000) -> list[tuple[Any, ...]]:
    """The rows of a cursor (or any iterable of rows), read a batch at a time, until they would
    hold more than ``limits.max_bytes`` of Python memory (an estimate: each row's tuple, its values
    and its slot in the list)."""
    if hasattr(rows, "fetchmany"):
        chunks = iter(lambda: rows.fetchmany(batch), [])
    else:
        it = iter(rows)
        chunks = iter(lambda: list(itertools.islice(it, batch)), [])
    out: list[tuple[Any, ...]] = []
    held = 0
    size = sys.getsizeof
    for chunk in chunks:
        held += sum(map(size, chunk)) + sum(map(size, itertools.chain.from_iterable(chunk))) + 8 * len(chunk)
        if held > limits.max_bytes:
            raise QueryError(f"the query's result needed more than {limits.max_bytes / MB:g} MB of memory and was "
                             "stopped (--max-memory); narrow it with WHERE, LIMIT or an aggregate")
        out.extend(map(tuple, chunk))
    return out


#: rows a terminal table shows by default: a table drawn for a person is laid out whole in memory
#: before it prints (rich measures every cell), which for 800,000 rows took minutes and GBs
TABLE_ROWS = 1000


def render(result: QueryResult, fmt: str) -> str:
    """The result as csv or json text (the table format is drawn by the CLI)."""
    import io

    out = io.StringIO()
    write(result, fmt, out)
    return out.getvalue()


def write(result: QueryResult, fmt: str, out) -> None:
    """Write the result to the text stream ``out`` as csv or json, a row at a time, so that the
    printing costs no more memory than the result itself already holds."""
    import csv
    import json
    import math

    from uqflow.console import inert_json  # csv keeps every character: it is data for a program

    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(result.rows)
        return
    if fmt == "json":
        def value(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None  # JSON has no NaN or infinity
            if isinstance(v, (bytes, bytearray, memoryview)):
                return bytes(v).hex()
            return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)

        out.write("[")
        for i, row in enumerate(result.rows):
            out.write(("," if i else "") + "\n " + inert_json(json.dumps(
                {c: value(v) for c, v in zip(result.columns, row)}, ensure_ascii=False)))
        out.write("\n]\n")
        return
    raise QueryError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


#: SQLite's storage classes, as the SQL types a reader expects
_SQLITE_CLASSES = {"integer": "INTEGER", "real": "FLOAT", "text": "TEXT", "blob": "BLOB"}


def _type_name(engine, relation: str, column: str, sql_type) -> str:
    """A column's SQL type. SQLite declares none for a view's computed column (an AVG, a CASE):
    there it is the storage class of the column's first value (``typeof``), or "unknown (no rows)"
    in an empty store."""
    from sqlalchemy import text
    from sqlalchemy.types import NullType

    if not isinstance(sql_type, NullType) or engine.dialect.name != "sqlite":
        return str(sql_type)
    with engine.connect() as conn:
        found = conn.execute(text(f'SELECT typeof("{column}") FROM "{relation}" WHERE "{column}" IS NOT NULL LIMIT 1'))
        value = found.scalar_one_or_none()
    return _SQLITE_CLASSES.get(value, "unknown (no rows)") if value else "unknown (no rows)"


def schema(url: str | None = None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The store's tables and views, each with its columns and their SQL types, as
    (name, "table" | "view", [(column, type), ...]); Alembic's own bookkeeping table left out."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from uqflow.store.db import require_schema

    url = db_url(url)
    engine = connect(url, readonly=True)
    try:
        require_schema(engine, url)
        insp = inspect(engine)
        out = []
        for kind, names in (("table", insp.get_table_names()), ("view", insp.get_view_names())):
            for name in sorted(n for n in names if n != "alembic_version"):
                columns = [(c["name"], c["type"]) for c in insp.get_columns(name)]
                out.append((name, kind, [(c, _type_name(engine, name, c, t)) for c, t in columns]))
        return out
    except SQLAlchemyError as e:
        raise QueryError(store_failure("read", url, e)) from None
    finally:
        engine.dispose()

