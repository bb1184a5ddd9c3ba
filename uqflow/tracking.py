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

    if mlflow.active_run() is not None:  # a cell of a grid: a child of the grid's run
        run = mlflow.start_run(run_name=run_name, nested=True)
    elif os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`: the run MLflow Projects created
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
    """Log the configuration. Under ``mlflow run`` MLflow Projects has already logged the entry
    point's parameters as typed on the command line ("50" for 50.0); those are kept as they are."""
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    mlflow.log_params({k: ("" if v is None else v) for k, v in params.items() if k not in existing})


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


def log_figure(fig, name: str) -> None:
    import mlflow

    mlflow.log_figure(fig, name)


def get_run(run_id: str):
    """The MLflow run ``run_id``, or a clear error when it does not exist in the tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from uqflow.errors import UqflowError

    try:
        return mlflow.get_run(run_id)
    except MlflowException:
        raise UqflowError(f"no run {run_id!r} in the tracking store {tracking_uri()}") from None


def load_frame(run_id: str, name: str = "generations.parquet"):
    """A run's per-example table, read back from its artifact."""
    import mlflow
    import pandas as pd

    from uqflow.errors import UqflowError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run is noise
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name)
        return pd.read_parquet(path)
    except Exception as e:  # missing artifact (MlflowException, OSError) or a damaged Parquet file (ArrowInvalid)
        raise UqflowError(f"run {run_id}: cannot read its {name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def search_runs(experiment_id: str, filter_string: str = "") -> list:
    """Every run of an experiment matching ``filter_string``, all pages."""
    import mlflow

    client = mlflow.MlflowClient()
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
