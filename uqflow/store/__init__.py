"""The results store: SQLAlchemy tables, aggregation from MLflow, read-only queries."""

from uqflow.store.aggregation import ACTIONS, Outcome, aggregate
from uqflow.store.db import DEFAULT_URL, connect, db_url, require_schema, upgrade
from uqflow.store.query import FORMATS, QueryResult, run_query
from uqflow.store.schema import Base, Generation, Run, Score

#: the study's slices, as views created by the migrations (filter on measure = 'g_nll', ...)
SLICE_VIEWS = ("v_auroc_by_family", "v_auroc_by_size", "v_auroc_by_family_size", "v_auroc_by_dataset",
               "v_auroc_by_family_dataset", "v_auroc_by_quantization", "v_auroc_by_instruct")

__all__ = ["ACTIONS", "DEFAULT_URL", "FORMATS", "SLICE_VIEWS", "Base", "Generation", "Outcome", "QueryResult", "Run",
           "Score", "aggregate", "connect", "db_url", "require_schema", "run_query", "upgrade"]
