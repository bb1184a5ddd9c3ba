"""Connecting to the results store and bringing its schema up to date.

The URL is ``--db`` where a command takes it, else ``UQFLOW_RESULTS_DB``, else
``sqlite:///results.db``; Alembic's ``migrations/env.py`` reads the same setting. Any SQLAlchemy URL
works: SQLite on a laptop, PostgreSQL (``postgresql+psycopg://user@host/db``) for a team.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text as sa_text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from uqflow.credentials import hide, mask
from uqflow.errors import StoreError

DEFAULT_URL = "sqlite:///results.db"
ENV_VAR = "UQFLOW_RESULTS_DB"
_PACKAGE = Path(__file__).resolve().parents[1]
#: the Alembic migrations: the checkout's top-level migrations/, which a built wheel carries inside
#: the package as uqflow/migrations (pyproject.toml maps it), so an installed uqflow can create and
#: upgrade its results store from any folder
MIGRATIONS = next((p for p in (_PACKAGE / "migrations", _PACKAGE.parent / "migrations") if (p / "env.py").is_file()),
                  _PACKAGE.parent / "migrations")
SQLITE_BUSY_SECONDS = 60
_MIGRATION_LOCK = 0x7571666C6F77  # an arbitrary advisory-lock key for this schema's migrations ("uqflow")


def db_url(url: str | None = None) -> str:
    """The results store's URL: the argument, else $UQFLOW_RESULTS_DB, else sqlite:///results.db."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def redact(url: str) -> str:
    """The URL as it may be shown: its password and its query's credentials (``?password=``,
    ``sslpassword``, ...) hidden, whatever characters they hold, even in text SQLAlchemy cannot
    parse (:func:`uqflow.credentials.mask`)."""
    return mask(url)


def parse_url(url: str):
    """The SQLAlchemy URL object, or a clear error for text that is not a database URL."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number (a raw '@' in a password)
        hint = " (an @ inside a password is written %40)" if url.count("@") > 1 else ""
        raise StoreError(f"{redact(url)!r} is not a database URL; expected e.g. sqlite:///results.db or "
                         f"postgresql+psycopg://user@host/dbname{hint}") from None


def preflight(url: str, *, readonly: bool = False) -> None:
    """Check what can be checked of a store's URL without creating or opening anything: that it
    is a URL and its driver is installed, and for SQLite that the file (or, for a new store, its
    folder) exists and is an SQLite file."""
    u = parse_url(url)
    try:
        u.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StoreError(f"no SQLAlchemy dialect for {u.drivername!r} (in {redact(url)})") from None
    except ModuleNotFoundError as e:
        raise StoreError(f"the database driver for {redact(url)} is not installed ({e}); for PostgreSQL: "
                         "pip install 'uqflow[postgres]'") from None
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        p = Path(u.database)
        if readonly and not p.exists():
            raise StoreError(f"no results store at {p}; fill one with `uqflow aggregate` first")
        if not p.parent.exists():
            raise StoreError(f"cannot create the results store {p}: folder {p.parent} does not exist")
        if p.is_dir():
            raise StoreError(f"cannot open the results store {redact(url)}: {p} is a folder")
        if p.is_file() and p.stat().st_size:
            with p.open("rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise StoreError(_NOT_SQLITE.format(url=redact(url)))


_NOT_SQLITE = "{url} is not a database (not an SQLite file); point --db at a results store or a new file"


def connect(url: str | None = None, *, readonly: bool = False) -> Engine:
    """An engine for the store, checked to be reachable.

    SQLite gets foreign keys, a busy timeout (so two writers wait for each other instead of
    failing) and, for writers, ``BEGIN IMMEDIATE`` transactions: a writer takes the write lock when
    its transaction starts, so two aggregations never deadlock upgrading a read lock. ``readonly``
    opens SQLite files read-only and PostgreSQL sessions in read-only transactions.
    """
    url = db_url(url)
    preflight(url, readonly=readonly)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = _sqlite_engine(u, readonly)
    else:
        args = {"options": "-c default_transaction_read_only=on"} if readonly and u.get_backend_name() == "postgresql" else {}
        engine = create_engine(u, connect_args=args, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, MemoryError) as e:  # MemoryError: SQLite's heap, capped by a query running beside
        engine.dispose()
        raise StoreError(store_failure("open", url, e)) from None
    return engine


def _recover_hot_journal(path: str) -> None:
    """A writer killed mid-transaction leaves a rollback journal that the next connection must play
    back before reading; a read-only connection cannot, so one ordinary read does it first (SQLite
    plays a journal back only when no live process holds the write lock, so this never undoes a
    running transaction)."""
    journal = Path(f"{path}-journal")
    if journal.is_file() and journal.stat().st_size:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_SECONDS)) as c:
                c.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as e:
            raise StoreError(store_failure("recover", f"sqlite:///{path}", e)) from None


def _sqlite_engine(u, readonly: bool) -> Engine:
    path = u.database
    if readonly and path and path != ":memory:":
        _recover_hot_journal(path)
        # mode=ro: SQLite itself refuses every write on this connection, whatever the SQL says
        u = u.set(database=f"file:{Path(path).resolve()}?mode=ro", query={**u.query, "uri": "true"})
    engine = create_engine(u, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys = ON")
        if readonly:
            cur.execute("PRAGMA query_only = ON")
        cur.close()
        if readonly:
            dbapi_conn.set_authorizer(_read_only_authorizer)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _read_only_authorizer(action: int, arg1, arg2, *_rest) -> int:
    """SQLite's per-statement access check for read-only connections: reading, functions and the
    schema-describing PRAGMAs pass; writes, schema changes, ATTACH and every
    other PRAGMA are denied before they run."""
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _READ_PRAGMAS:  # arg2: a table name
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


_READ_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo",
                           "foreign_key_list", "table_list"})
_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                           sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION})


def store_failure(verb: str, url: str, e: BaseException) -> str:
    """A one-line message for a database error, with the way out where there is one."""
    msg = hide(_first_line(e))  # a driver's message may quote the URL
    low = msg.lower()
    if isinstance(getattr(e, "orig", None) or e, MemoryError):
        return (f"cannot {verb} the results store {redact(url)}: SQLite ran out of memory (a query running in this "
                "process caps SQLite's memory, --max-memory); try again when it has finished")
    if "locked" in low or "busy" in low:
        return (f"the results store {redact(url)} is locked by another process (waited {SQLITE_BUSY_SECONDS} s); "
                "try again when it has finished")
    if "not a database" in low or "file is encrypted" in low:
        return _NOT_SQLITE.format(url=redact(url))
    if "readonly" in low or "read-only" in low or "read only" in low:
        return f"cannot {verb} the results store {redact(url)}: it is read-only ({msg})"
    return f"cannot {verb} the results store {redact(url)}: {msg}"


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


def alembic_config(url: str):
    """Alembic's configuration for the store at ``url`` (the URL travels as an attribute, not
    through the ini file, so no ``%`` in a password needs escaping)."""
    from alembic.config import Config

    if not (MIGRATIONS / "env.py").is_file():
        raise StoreError(f"the migrations folder {MIGRATIONS} is missing; reinstall uqflow")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Apply the migrations up to ``revision``; returns the revision the store is at afterwards."""
    return _migrate("upgrade", url, revision)


def downgrade(url: str | None, revision: str) -> str:
    """Undo migrations down to ``revision`` ("base": an empty store); returns the revision reached."""
    return _migrate("downgrade", url, revision)


#: the revision from which the per-example measure columns follow the declarations
MEASURE_SYNC_REVISION = "c2f0d5a1e7b3"


def sync_measure_columns(conn) -> list[str]:
    """Add to ``generations`` a nullable float column for every declared measure it lacks
    (``schema.add_measure_columns``), on an open connection; returns the names added. Rows stored
    before keep NULL there until their runs are aggregated again. Run by the migration
    ``MEASURE_SYNC_REVISION`` and by every upgrade to head after it, so declaring a measure is all
    a new measure needs."""
    import sqlalchemy as sa
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    from uqflow.store.schema import Generation, add_measure_columns

    add_measure_columns()
    missing = missing_measure_columns(conn)
    ops = Operations(MigrationContext.configure(conn))
    for name in missing:  # plain ADD COLUMN: a batch copy on SQLite would drop the tables that refer to it
        ops.add_column("generations", sa.Column(name, Generation.__table__.c[name].type, nullable=True))
    if missing:
        mark_stale(conn)
    return missing


#: the digest of a stored run that the store itself made stale: no run's digest is this
STALE_DIGEST = "stale"  # (runs.mlflow_digest holds 64 characters)


def mark_stale(conn) -> None:
    """Make every stored run stale, so that the next aggregation reads each run again and fills
    what this version derives and the version that stored it did not (a new measure's column, a
    new metric)."""
    conn.execute(sa_text("UPDATE runs SET mlflow_digest = :d"), {"d": STALE_DIGEST})


def missing_measure_columns(bind) -> list[str]:
    """The declared measures the store's ``generations`` has no column for (a measure declared
    since the store was last upgraded); ``bind``: an engine or an open connection."""
    from uqflow.scoring.measures import MEASURES

    have = {c["name"] for c in inspect(bind).get_columns("generations")}
    return [name for name in MEASURES if name not in have]


def _migrate(direction: str, url: str | None, revision: str) -> str:
    from alembic import command
    from alembic.util import CommandError

    url = db_url(url)
    engine = connect(url)
    try:
        cfg = alembic_config(url)
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # two processes migrating one database at once take turns (SQLite: BEGIN IMMEDIATE does it)
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
            if direction == "upgrade" and _at_or_after_sync(conn):
                sync_measure_columns(conn)
        return current_revision(engine) or "base"
    except CommandError as e:
        raise StoreError(f"cannot {direction} the results store to {revision!r}: {e}") from None
    except SQLAlchemyError as e:
        raise StoreError(store_failure("migrate", url, e)) from None
    finally:
        engine.dispose()


def _at_or_after_sync(conn) -> bool:
    """Whether the store's revision is the measure-sync revision or a later one."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        return False
    script = ScriptDirectory.from_config(alembic_config(DEFAULT_URL))
    return any(r.revision == MEASURE_SYNC_REVISION for r in script.iterate_revisions(current, "base"))


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(DEFAULT_URL)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as e:
        raise StoreError(store_failure("read", str(engine.url), e)) from None


def require_schema(engine: Engine, url: str) -> None:
    """Fail clearly unless the store is at the newest migration."""
    if not inspect(engine).has_table("runs"):
        raise StoreError(f"the results store {redact(url)} is empty; fill it with `uqflow aggregate`")
    cur, head = current_revision(engine), head_revision()
    if cur != head:
        raise StoreError(f"the results store {redact(url)} is at schema revision {cur}, this uqflow needs {head}; "
                         f"run `uqflow db upgrade --db {redact(url)}`")
    missing = missing_measure_columns(engine)
    if missing:
        raise StoreError(f"the results store {redact(url)} has no column for the measure(s) {', '.join(missing)}; "
                         f"run `uqflow db upgrade --db {redact(url)}` (or `uqflow aggregate`, which upgrades it)")


def row_counts(url: str | None = None) -> dict[str, int]:
    """Rows in each table of the store."""
    from sqlalchemy import func, select

    from uqflow.store.schema import Base

    url = db_url(url)
    engine = connect(url, readonly=True)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for name, t in Base.metadata.tables.items()}
    except SQLAlchemyError as e:
        raise StoreError(store_failure("read", url, e)) from None
    finally:
        engine.dispose()
