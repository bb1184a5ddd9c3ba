"""Sampled measures and their cost: what each measure cost per question, and the sampled answers.

Revision ID: a7c3e91d2b40
Revises: f4154251790b
Create Date: 2026-11-27 23:00:00

``scores`` gains each measure's cost beyond the greedy pass (forward passes, generated tokens,
seconds per question); ``generations`` the sampling-based measures of each question with the
sampled answers and their semantic cluster ids; ``runs`` the number of samples and the entailment
judge. Rows stored before this revision keep NULL until their runs are next aggregated (a run
that did not sample has no sampled measures, and its single-pass scores cost 0).

Plain ADD COLUMN, as in f4154251790b: a batch table copy on SQLite would drop ``runs`` and its
dependants.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = 'a7c3e91d2b40'
down_revision: str | None = 'f4154251790b'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCORE_COSTS = ('cost_passes', 'cost_tokens', 'cost_seconds')
SAMPLED = ('predictive_entropy', 'ln_predictive_entropy', 'semantic_entropy', 'discrete_semantic_entropy',
           'num_semantic_sets', 'p_true')


def upgrade() -> None:
    op.add_column('runs', sa.Column('num_generations', sa.Integer(), nullable=True))
    op.add_column('runs', sa.Column('entailment', sa.String(length=256), nullable=True))
    for name in SCORE_COSTS:
        op.add_column('scores', sa.Column(name, sa.Float(), nullable=True))
    for name in SAMPLED:
        op.add_column('generations', sa.Column(name, sa.Float(), nullable=True))
    op.add_column('generations', sa.Column('samples', sa.JSON(), nullable=True))
    op.add_column('generations', sa.Column('semantic_ids', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('generations', 'semantic_ids')
    op.drop_column('generations', 'samples')
    for name in reversed(SAMPLED):
        op.drop_column('generations', name)
    for name in reversed(SCORE_COSTS):
        op.drop_column('scores', name)
    op.drop_column('runs', 'entailment')
    op.drop_column('runs', 'num_generations')
