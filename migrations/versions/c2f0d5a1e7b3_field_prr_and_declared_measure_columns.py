"""The field's PRR, and per-example measure columns that follow the declarations.

Revision ID: c2f0d5a1e7b3
Revises: 6649bb39c566
Create Date: 2026-12-07 04:30:00

``scores`` gains ``prr50``: PRR up to 50% of the answers rejected, normalised against random and
oracle, as LM-Polygraph and CoCoA report it; ``v_run_scores`` shows it. From this revision on,
``generations`` has one float column per measure declared in ``uqflow/scoring/measures.py``: this
revision adds those it lacks (the measures of sample consistency, the first declared after it), and
every later ``uqflow db upgrade`` (and ``uqflow aggregate``) adds a newly declared measure's column
the same way (``uqflow.store.db.sync_measure_columns``), so a new measure needs no migration. Rows
stored before keep NULL there until the next ``uqflow aggregate``, which reads every stored run again
(they are marked stale).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'c2f0d5a1e7b3'
down_revision: str | None = '6649bb39c566'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: the measure columns the revisions before this one made (a downgrade keeps them)
EARLIER_MEASURES = ('g_nll', 'ln_g_nll', 'max_nll', 'mean_entropy', 'rw_g_nll', 'answer_tokens', 'answer_chars',
                    'predictive_entropy', 'ln_predictive_entropy', 'semantic_entropy', 'discrete_semantic_entropy',
                    'num_semantic_sets', 'p_true')

_SIZE_CLASS = """
CASE
  WHEN (SELECT MIN(f.size_b) FROM runs f WHERE f.family = r.family)
     = (SELECT MAX(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'only'
  WHEN r.size_b = (SELECT MIN(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'small'
  WHEN r.size_b = (SELECT MAX(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'large'
  ELSE 'medium'
END"""
_PRECISION = "CASE WHEN r.quantization IN ('8bit', '4bit') THEN r.quantization ELSE 'full' END"
_SLICE = """
SELECT {keys}, measure, COUNT(*) AS n_runs, SUM(n) AS n_questions, AVG(auroc) AS mean_auroc,
       MIN(auroc) AS min_auroc, MAX(auroc) AS max_auroc, AVG(accuracy) AS mean_accuracy
FROM v_run_scores GROUP BY {keys}, measure"""


def _views(prr50: bool) -> dict[str, str]:
    extra = ", s.prr50" if prr50 else ""
    return {
        "v_run_scores": f"""
SELECT r.run_id, r.model, r.family, r.size_b, {_SIZE_CLASS} AS size_class, r.quantization,
       {_PRECISION} AS precision, r.instruct, r.dataset, r.correctness, r.n, r.accuracy, s.measure, s.auroc,
       s.ci_low, s.ci_high, s.aurac, s.prr, s.aurc, s.ece, s.brier{extra}
FROM runs r JOIN scores s ON s.run_id = r.run_id""",
        "v_auroc_by_family": _SLICE.format(keys="family, precision"),
        "v_auroc_by_size": _SLICE.format(keys="size_class, precision"),
        "v_auroc_by_family_size": _SLICE.format(keys="family, size_class, size_b, precision"),
        "v_auroc_by_dataset": _SLICE.format(keys="dataset, precision"),
        "v_auroc_by_family_dataset": _SLICE.format(keys="family, dataset, precision"),
        "v_auroc_by_quantization": _SLICE.format(keys="quantization"),
        "v_auroc_by_instruct": _SLICE.format(keys="instruct, precision"),
    }


def _replace_views(old: dict[str, str], new: dict[str, str]) -> None:
    for name in reversed(old):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, sql in new.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def upgrade() -> None:
    from uqflow.store.db import mark_stale, sync_measure_columns

    for name in reversed(_views(False)):  # they read scores, which gains a column
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.add_column('scores', sa.Column('prr50', sa.Float(), nullable=True))
    sync_measure_columns(op.get_bind())
    mark_stale(op.get_bind())  # the next aggregation reads every run again and fills the new columns
    for name, sql in _views(True).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(_views(True)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    columns = {c["name"]: c["type"] for c in sa.inspect(op.get_bind()).get_columns('generations')}
    for name in sorted(_declared() - set(EARLIER_MEASURES)):  # the measure columns made from this revision on
        if name in columns:
            op.drop_column('generations', name)
    op.drop_column('scores', 'prr50')
    for name, sql in _views(False).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def _declared() -> set[str]:
    from uqflow.scoring.measures import MEASURES

    return set(MEASURES)
