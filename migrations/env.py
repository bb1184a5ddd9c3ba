"""Alembic environment for uqflow's results store.

The URL is taken from the same setting as the CLI (``--db`` → ``UQFLOW_RESULTS_DB`` →
``sqlite:///results.db``): ``uqflow db upgrade`` passes it (and an open connection) as config
attributes; plain ``alembic`` reads the environment variable.
"""

from alembic import context

from uqflow.store.db import connect, db_url
from uqflow.store.schema import Base

config = context.config
target_metadata = Base.metadata


def include_object(obj, name, type_, reflected, compare_to):
    # the slice views are created by hand in the migrations; reflected views are not tables to diff
    return not (type_ == "table" and reflected and compare_to is None and name.startswith("v_"))


def run_migrations_offline() -> None:
    context.configure(url=config.attributes.get("url") or db_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    engine = connect(config.attributes.get("url") or db_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(conn) -> None:
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True,
                      include_object=include_object, transaction_per_migration=False)
    context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
