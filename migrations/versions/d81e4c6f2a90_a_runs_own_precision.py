"""A run's own precision: the precision its model computed in, as the run recorded it.

Revision ID: d81e4c6f2a90
Revises: c2f0d5a1e7b3
Create Date: 2026-12-07 11:20:00

Until this revision the slice views derived ``precision`` from ``quantization`` (bitsandbytes'
``8bit`` and ``4bit`` as such, everything else ``full``), which holds for models loaded in uqflow's
process (GGUF files are de-quantized to float as they load) but not for a model behind a server,
which computes in its server's quantization (llama.cpp's GGUF types, vLLM's fp8 or AWQ). ``runs``
gains ``precision``, filled from each run's ``precision`` tag (``uqflow aggregate``); the views read it,
and fall back on the old rule for a row that has none (rows stored before, until the next
aggregation reads them again: they are marked stale).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'd81e4c6f2a90'
down_revision: str | None = 'c2f0d5a1e7b3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SIZE_CLASS = """
CASE
  WHEN (SELECT MIN(f.size_b) FROM runs f WHERE f.family = r.family)
     = (SELECT MAX(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'only'
  WHEN r.size_b = (SELECT MIN(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'small'
  WHEN r.size_b = (SELECT MAX(f.size_b) FROM runs f WHERE f.family = r.family) THEN 'large'
  ELSE 'medium'
END"""
_DERIVED = "CASE WHEN r.quantization IN ('8bit', '4bit') THEN r.quantization ELSE 'full' END"
_SLICE = """
SELECT {keys}, measure, COUNT(*) AS n_runs, SUM(n) AS n_questions, AVG(auroc) AS mean_auroc,
       MIN(auroc) AS min_auroc, MAX(auroc) AS max_auroc, AVG(accuracy) AS mean_accuracy
FROM v_run_scores GROUP BY {keys}, measure"""


def _views(precision: str) -> dict[str, str]:
    return {
        "v_run_scores": f"""
SELECT r.run_id, r.model, r.family, r.size_b, {_SIZE_CLASS} AS size_class, r.quantization,
       {precision} AS precision, r.instruct, r.dataset, r.correctness, r.n, r.accuracy, s.measure, s.auroc,
       s.ci_low, s.ci_high, s.aurac, s.prr, s.aurc, s.ece, s.brier, s.prr50
FROM runs r JOIN scores s ON s.run_id = r.run_id""",
        "v_auroc_by_family": _SLICE.format(keys="family, precision"),
        "v_auroc_by_size": _SLICE.format(keys="size_class, precision"),
        "v_auroc_by_family_size": _SLICE.format(keys="family, size_class, size_b, precision"),
        "v_auroc_by_dataset": _SLICE.format(keys="dataset, precision"),
        "v_auroc_by_family_dataset": _SLICE.format(keys="family, dataset, precision"),
        "v_auroc_by_quantization": _SLICE.format(keys="quantization"),
        "v_auroc_by_instruct": _SLICE.format(keys="instruct, precision"),
    }


def _drop_views() -> None:
    for name in reversed(_views(_DERIVED)):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    from uqflow.store.db import mark_stale

    _drop_views()
    op.add_column('runs', sa.Column('precision', sa.String(length=32), nullable=True))
    mark_stale(op.get_bind())  # the next aggregation fills it from each run's tag
    for name, sql in _views(f"COALESCE(r.precision, {_DERIVED})").items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    _drop_views()
    op.drop_column('runs', 'precision')
    for name, sql in _views(_DERIVED).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
