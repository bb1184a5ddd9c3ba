"""Read-only SQL over the results store (``uqflow query``).

Read-only is enforced by the database, not by inspecting the SQL: SQLite files are opened with
``mode=ro`` and ``query_only``, and an authorizer denies every action but reading (so ATTACH,
PRAGMA and writes fail before they run); PostgreSQL sessions run in read-only transactions and the
statement is sent as a prepared statement, which the server accepts only as a single command (so
no ``COMMIT; ...`` can end the read-only transaction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uqflow.errors import QueryError
from uqflow.store.db import _first_line, connect, db_url, redact, store_failure

FORMATS = ("table", "csv", "json")
DEFAULT_TIMEOUT = 120.0  # seconds; a runaway query (say, an unbounded WITH RECURSIVE) is stopped
_REFUSALS = ("not authorized", "authorization denied", "readonly", "read-only", "read only", "query_only",
             "prohibited")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def frame(self):
        import pandas as pd

        return pd.DataFrame.from_records(self.rows, columns=self.columns)


def run_query(sql: str, url: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> QueryResult:
    """Run one SQL statement read-only and return its columns and rows; stop it after ``timeout`` s."""
    import time

    if not sql.strip():
        raise QueryError("empty query; e.g. uqflow query \"SELECT * FROM v_auroc_by_family WHERE measure = 'g_nll'\"")
    if not timeout > 0:
        raise QueryError(f"the timeout must be a positive number of seconds, not {timeout}")
    url = db_url(url)
    engine = connect(url, readonly=True)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            if engine.dialect.name == "postgresql":
                cur.execute(f"SET statement_timeout = {int(timeout * 1000)}")
                cur.execute(sql, prepare=True)
            else:
                if engine.dialect.name == "sqlite":
                    deadline = time.monotonic() + timeout
                    # SQLite calls this every 10,000 virtual-machine steps; non-zero interrupts the query
                    raw.driver_connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
                cur.execute(sql)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        except engine.dialect.loaded_dbapi.Error as e:
            msg = _first_line(e)
            if "locked" in msg.lower():
                raise QueryError(store_failure("read", url, e)) from None
            if "interrupted" in msg.lower() or "statement timeout" in msg.lower():
                raise QueryError(f"the query ran longer than {timeout:g} s and was stopped (--timeout)") from None
            if "no such table" in msg.lower() or "does not exist" in msg.lower():
                from sqlalchemy import inspect

                if not inspect(engine).has_table("runs"):
                    raise QueryError(f"{msg}: the results store {redact(url)} is empty; fill it with "
                                     "`uqflow aggregate`") from None
            if any(k in msg.lower() for k in _REFUSALS):
                raise QueryError(f"refused: uqflow query is read-only and cannot write, change the schema or "
                                 f"attach databases ({msg})") from None
            if "one statement" in msg.lower() or "multiple commands" in msg.lower():
                raise QueryError(f"one SQL statement at a time, please ({msg})") from None
            raise QueryError(f"the database rejected the query: {msg}") from None
        finally:
            cur.close()
    finally:
        try:
            raw.rollback()
        finally:
            raw.close()
            engine.dispose()
    return QueryResult(columns, rows)


def render(result: QueryResult, fmt: str) -> str:
    """The result as csv or json text (the table format is drawn by the CLI)."""
    frame = result.frame()
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return frame.to_json(orient="records", indent=1) + "\n"
    raise QueryError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
