"""Everything that talks to MLflow: the run's lifecycle, params, tags, metrics and artifacts.

The tracking URI is MLflow's own default unless ``MLFLOW_TRACKING_URI`` is set; the experiment is
``uqflow`` unless ``MLFLOW_EXPERIMENT_NAME`` is set. Under ``mlflow run`` the run that MLflow
Projects created (``MLFLOW_RUN_ID``) is used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "uqflow"
ERROR_TAG = "uqflow.error"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@contextlib.contextmanager
def tracked_run(run_name: str, tags: Mapping[str, Any]) -> Iterator[Any]:
    """Start (or attach to) a run; end it FINISHED, FAILED with the error as a tag, or KILLED on Ctrl-C.

    No run is ever left RUNNING by an exception that passes through here.
    """
    import mlflow

    if os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    else:
        mlflow.set_experiment(experiment_name())
        run = mlflow.start_run(run_name=run_name)
    try:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})
        yield run
    except KeyboardInterrupt:
        _record_error("interrupted (KeyboardInterrupt)")
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        _record_error(f"{type(e).__name__}: {e}")
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def _record_error(message: str) -> None:
    import mlflow

    with contextlib.suppress(Exception):  # the store may be what failed; ending the run matters more
        mlflow.set_tag(ERROR_TAG, message[:5000])


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})


def log_metrics(metrics: Mapping[str, float]) -> None:
    """Log finite metrics; NaN (an undefined AUROC) is left out rather than stored as a number."""
    import math

    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))})


def log_frame(frame, name: str = "generations.parquet") -> None:
    """Write a DataFrame as a Parquet artifact at the run's artifact root."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))


def log_text(text: str, name: str) -> None:
    import mlflow

    mlflow.log_text(text, name)


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
