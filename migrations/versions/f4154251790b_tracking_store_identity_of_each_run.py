"""Tracking store identity of each run: the URI it was read from and its experiment's creation time.

Revision ID: f4154251790b
Revises: 0001
Create Date: 2026-11-27 15:43:26.584249

Aggregation removes stale runs only within an experiment matched by id and creation time, so one
tracking store's runs are never removed because another store (whose experiment 1 is a different
experiment) lacks them. Rows stored before this revision get both values when next aggregated.

Plain ADD/DROP COLUMN, not a batch table copy: on SQLite a copy would drop ``runs`` (cascading
to its scores and generations) and break the views that read it; SQLite >= 3.35 drops a column
in place.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'f4154251790b'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('runs', sa.Column('tracking_uri', sa.String(length=1024), nullable=True))
    op.add_column('runs', sa.Column('experiment_creation_time', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column('runs', 'experiment_creation_time')
    op.drop_column('runs', 'tracking_uri')
