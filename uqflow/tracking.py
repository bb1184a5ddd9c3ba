"""Everything that talks to MLflow: the run's lifecycle, params, tags, metrics and artifacts.

The tracking URI is MLflow's own default unless ``MLFLOW_TRACKING_URI`` is set; the experiment is
``uqflow`` unless ``MLFLOW_EXPERIMENT_NAME`` is set. Under ``mlflow run`` the run that MLflow
Projects created (``MLFLOW_RUN_ID``) is used.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from uqflow import credentials
from uqflow.errors import CellTaken, ConfigError, TrackingError, UqflowError, stop_signal
from uqflow.artifact import CHECKSUM_TAG_PREFIX  # + an artifact's name: the SHA-256 of the file the run wrote

DEFAULT_EXPERIMENT = "uqflow"

# the tags uqflow sets beyond a run's dimensions (experiment.run_tags), declared once
ERROR_TAG = "uqflow.error"  # why a run ended FAILED or KILLED
SOURCE_RUN_TAG = "uqflow.source_run"  # on a rescored run: the run whose generations it rescored
GRID_TAG = "uqflow.grid"  # on a grid's parent run: the grid's name
GRID_CELLS_TAG = "uqflow.grid_cells"  # on a grid's parent run: its number of cells
ANALYSIS_TAG = "uqflow.analysis"  # on a report's run
GRID_RUN_TAG = "uqflow.grid_run"  # on a grid's cell: the id of the grid's run that ran it
VERSION_TAG = "uqflow_version"  # on every model x dataset run (and only those): how aggregation finds them
WORKER_TAG = "uqflow.worker"  # on a cell run on Ray: the host, process and Ray node that ran it
CLAIMS_TAG = "uqflow.claims"  # on a grid's run on Ray: the configuration hashes of the cells it claims
HEARTBEAT_TAG = "uqflow.heartbeat"  # on every run uqflow starts: unix time of its writer's last sign of life (uqflow.lease)
DRIVER_TAG = "uqflow.driver"  # on every run uqflow starts: "host pid" of the process writing it (on Ray, a grid's driver)
ORIGIN_RUN_TAG = "uqflow.origin_run"  # on a rescored run: the first run of its chain of rescores (never a rescore)


#: MLflow's HTTP client retries a failed request 7 times with growing waits (about 4 minutes) before
#: it gives up; a person waiting on a command is told within seconds instead. Set any of these
#: variables to keep MLflow's patience (a rate-limited hosted server may want it).
NETWORK_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def bound_network_waits() -> None:
    """Apply NETWORK_DEFAULTS to this process where the user has not set them."""
    for key, value in NETWORK_DEFAULTS.items():
        os.environ.setdefault(key, value)


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


@contextlib.contextmanager
def tracked_run(run_name: str, tags: Mapping[str, Any], *, experiment_id: str | None = None,
                active: bool = True) -> Iterator[Any]:
    """Start (or attach to) a run; end it FINISHED, FAILED with the error as a tag, or KILLED on an
    interruption (Ctrl-C, SIGTERM, SIGHUP) with its reason.

    Under ``mlflow run`` the run MLflow Projects created (``MLFLOW_RUN_ID``) is used, unless
    ``experiment_id`` asks for a new run there (a grid's cell, which goes where its grid's run is).
    ``active=False`` leaves the run out of MLflow's active-run stack (a grid's own run), so that the
    cells started meanwhile are top-level runs, each a row of MLflow's runs table, not folded under
    it. No run is ever left RUNNING by an exception that passes through here. A tracking store that
    cannot be reached, or that refuses a request, is reported as a ``TrackingError`` naming its URI.
    While it is open the run holds a lease (``uqflow.lease``): its writer's host and process, and a
    heartbeat that a daemon thread refreshes, so that a run whose process vanished can be told from
    a live one. A run given up to another process (``CellTaken``) ends KILLED with the reason.
    """
    import mlflow

    with reaching_store():
        client = mlflow.MlflowClient()
        attach = os.environ.get("MLFLOW_RUN_ID") if experiment_id is None else None
        if not attach and experiment_id is None:
            experiment_id = mlflow.set_experiment(experiment_name()).experiment_id
        if active:
            run = mlflow.start_run(run_id=attach) if attach else \
                mlflow.start_run(run_name=run_name, experiment_id=experiment_id)
        else:
            run = client.get_run(attach) if attach else client.create_run(experiment_id, run_name=run_name)
    run_id = run.info.run_id

    def end(status: str) -> None:
        if active:
            _end_run(status)
        else:
            with contextlib.suppress(Exception):  # the store may be what failed
                client.set_terminated(run_id, status)

    try:
        from mlflow.entities import RunTag

        # its lease (writer and first heartbeat) in the same write as its own tags
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in {**tags, **lease_tags()}.items()])
        _mark_experiment_kind(run.info.experiment_id)
        with Heartbeat(run_id):  # stopped before the run ends, however it ends
            yield run
    except KeyboardInterrupt as e:
        tag_error(run_id, f"interrupted ({stop_signal(e)[0]})")
        end("KILLED")
        raise
    except CellTaken as e:  # given up before any work, to the process that runs its cell
        tag_error(run_id, str(e))
        end("KILLED")
        raise
    except BaseException as e:
        tag_error(run_id, f"{type(e).__name__}: {e}")
        end("FAILED")
        if isinstance(e, _store_failures()):  # the store failed mid-run: said once, without a traceback
            raise TrackingError(_store_message(e)) from None
        raise
    else:
        with reaching_store():
            if active:
                mlflow.end_run("FINISHED")
            else:
                client.set_terminated(run_id, "FINISHED")


#: the lease of a run (uqflow.lease says what it decides), in seconds, unless UQFLOW_LEASE_SECONDS
#: says otherwise; its heartbeat beats three times per lease, so two missed beats lose nothing
LEASE_S = 90.0
LEASE_ENV = "UQFLOW_LEASE_SECONDS"


def lease_seconds() -> float:
    """How long after its last heartbeat a RUNNING run is still taken to be alive."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(f"{LEASE_ENV} must be a positive number of seconds, got {text[:40]!r}")
    return value


def heartbeat_seconds() -> float:
    """Seconds between two heartbeats of a run: a third of its lease."""
    return lease_seconds() / 3


def lease_tags() -> dict[str, str]:
    """The tags a run starts with: its writer ("host pid") and a first heartbeat (unix time)."""
    import socket
    import time

    return {DRIVER_TAG: f"{socket.gethostname()} {os.getpid()}", HEARTBEAT_TAG: f"{time.time():.0f}"}


class Heartbeat:
    """Refreshes a run's heartbeat tag from a daemon thread while the ``with`` block runs. A write
    that fails is skipped (a lease spans three beats): it never fails the run. The thread stops when
    the block ends, however it ends."""

    def __init__(self, run_id: str, interval: float | None = None):
        import threading

        self.run_id, self.interval = run_id, heartbeat_seconds() if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"uqflow-heartbeat-{run_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)  # a beat in flight to a slow server finishes on its own

    def _beat(self) -> None:
        import time

        import mlflow

        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                mlflow.MlflowClient().set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")


#: MLflow 3's UI opens an experiment on its GenAI traces view unless the experiment says it holds
#: model runs; uqflow's runs are evaluations, best seen in the runs table ("Model training")
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


#: The runs table as uqflow's links open it: MLflow 3's "share view" reads a view state (chosen
#: columns, their widths) from an experiment tag named after the ``viewStateShareKey`` of the link,
#: so the study's dimensions and AUROCs are columns from the first look and run names show whole.
#: MLflow offers no other way for a project to set the table's default columns; a view the user
#: changes afterwards is theirs (MLflow keeps it per browser).
RUNS_VIEW_KEY = "uqflow-study"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"
RUNS_VIEW_COLUMNS = {  # column -> width (px), in MLflow's column ids; the AUROCs first, whole (MLflow shows
    # metrics unrounded: 0.8921377551020408 takes about 140 px), in view at 1600 px
    "metrics.`auroc/g_nll`": 145, "metrics.`auroc/rw_g_nll`": 145, "metrics.`accuracy`": 85,
    "metrics.`auroc/answer_tokens`": 150, "metrics.`n`": 55, "attributes.`Dataset`": 170, "tags.`family`": 80,
    "tags.`size_b`": 65, "tags.`precision`": 80,
}
RUN_NAME_COLUMN, RUN_NAME_WIDTH = "attributes.`Run Name`", 250


def runs_view_state() -> str:
    """The shared view state of uqflow's runs table, as the experiment tag holds it (JSON)."""
    import json

    widths = {RUN_NAME_COLUMN: RUN_NAME_WIDTH, **RUNS_VIEW_COLUMNS}
    # the UI applies a width only to a column named in columnOrder
    return json.dumps({"selectedColumns": list(RUNS_VIEW_COLUMNS), "columnOrder": list(widths),
                       "columnWidths": widths}, sort_keys=True)


def _mark_experiment_kind(experiment_id: str) -> None:
    """The experiment's kind (so that the UI opens on its runs table) and uqflow's runs view."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:  # a kind the user chose is kept
        _set_experiment_tag(client, experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    view = runs_view_state()
    if tags.get(RUNS_VIEW_TAG) != view:
        _set_experiment_tag(client, experiment_id, RUNS_VIEW_TAG, view)


def _set_experiment_tag(client, experiment_id: str, key: str, value: str) -> None:
    """Set a tag that another process may be setting at the same moment (two drivers starting on one
    experiment): MLflow's SQL store inserts a new tag's row, and of two inserts at once one fails on
    the key (PostgreSQL's UniqueViolation, as a BAD_REQUEST from a server). The tag is then there;
    it is written once more, now as an update, unless it already holds ``value``."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        now = client.get_experiment(experiment_id).tags.get(key)
        if now is None:
            raise
        if now != value:
            client.set_experiment_tag(experiment_id, key, value)


def ui_page(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs table (or of one run), in its "Model training"
    view (MLflow 3 otherwise opens an experiment on its GenAI traces overview); the runs table in
    uqflow's view (``RUNS_VIEW_TAG``)."""
    page = f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + "?workflowType=machine_learning"
    return page if run_id else f"{page}&viewStateShareKey={RUNS_VIEW_KEY}"


def ui_hint(run_id: str | None = None, experiment_id: str | None = None) -> list[str]:
    """Where a run (or an experiment) is found: its experiment and store, the command that opens
    the MLflow UI on the store, and the page to open there."""
    import mlflow

    with reaching_store():
        if run_id:
            experiment_id = mlflow.get_run(run_id).info.experiment_id
        exp = mlflow.MlflowClient().get_experiment(experiment_id) if experiment_id else None
    uri = shown_uri()
    lines = [f"Tracking store: {uri}" + (f" (experiment '{exp.name}')" if exp else "")]
    if uri.startswith(("http://", "https://")):
        base = credentials.site(tracking_uri())  # a link for the browser, which asks for the login itself
    else:
        lines.append(f"Browse the runs: mlflow ui --backend-store-uri {uri} --app-name uqflow")
        base = "http://127.0.0.1:5000"
    if exp:
        lines.append(f"Open: {ui_page(base, exp.experiment_id, run_id)}")
    return lines


def _end_run(status: str) -> None:
    import mlflow

    with contextlib.suppress(Exception):  # the run is taken off the active stack even if the store is gone
        mlflow.end_run(status)


def _store_failures() -> tuple[type[BaseException], ...]:
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.exceptions.RequestException


_UNREACHABLE = (("connection refused", "connection refused"), ("timed out", "no answer in time"),
                ("timeout", "no answer in time"), ("name or service not known", "unknown host"),
                ("failed to resolve", "unknown host"), ("nodename nor servname", "unknown host"),
                ("max retries exceeded", "no connection"), ("connection aborted", "connection lost"),
                ("remote end closed", "connection lost"))


def _store_message(e: BaseException) -> str:
    uri = shown_uri()
    text = credentials.hide(str(e).strip().replace(tracking_uri(), uri))  # requests names the URL it failed on
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    refused = _access_message(getattr(e, "error_code", ""), uri, text)
    if refused:
        return refused
    reason = next((why for key, why in _UNREACHABLE if key in text.lower()), None)
    if reason is not None:
        return (f"cannot reach the MLflow tracking store {uri} ({reason}); check MLFLOW_TRACKING_URI "
                "and that the tracking server is running")
    return (f"the MLflow tracking store {uri} refused the request: {first[:500]} (check MLFLOW_TRACKING_URI and "
            "MLFLOW_EXPERIMENT_NAME)")


def _access_message(error_code: str, uri: str, text: str) -> str | None:
    """What a tracking server with authentication (MLflow's basic-auth app) refused, and what to do,
    in one line; None for any other error. ``text`` is MLflow's message, which names the endpoint:
    a refused read (``.../get``, ``.../search``) lacks read permission, anything else write permission."""
    user = login_user()
    if error_code == "UNAUTHENTICATED":
        if not user:
            return (f"the MLflow tracking server {uri} needs a login: set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD to a user of that server")
        where = ("the user and password in MLFLOW_TRACKING_URI" if login_source() == "uri"
                 else "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        return (f"the MLflow tracking server {uri} refused the login of user {user!r} (wrong name or password); "
                f"check {where}")
    if error_code == "PERMISSION_DENIED":
        who = f"user {user!r}" if user else "this user"
        endpoint = text.split("endpoint ", 1)[-1].split(" ", 1)[0] if "endpoint " in text else ""
        if any(word in endpoint for word in ("/get", "/search", "/list")):
            return (f"{who} lacks read permission on experiment {experiment_name()!r} of the MLflow tracking server "
                    f"{uri}; ask an admin of the server for READ permission on it")
        return (f"{who} lacks write permission on experiment {experiment_name()!r} of the MLflow tracking server "
                f"{uri}, so no run can be logged there; ask an admin of the server for EDIT permission on it, or "
                "set MLFLOW_EXPERIMENT_NAME to a new experiment of your own")
    return None


@contextlib.contextmanager
def reaching_store() -> Iterator[None]:
    """Reports a tracking store that cannot be reached or refuses a request as a
    :class:`~uqflow.errors.TrackingError` naming its URI, instead of MLflow's or requests' own
    exception."""
    try:
        yield
    except _store_failures() as e:
        raise TrackingError(_store_message(e)) from None


def tag_error(run_id: str, message: str) -> None:
    """Record why a run failed or was stopped, as its error tag (never raises: the store may be
    what failed, and ending the run matters more)."""
    import mlflow

    with contextlib.suppress(Exception):  # the message matters more; the run ends FAILED either way
        mlflow.MlflowClient().set_tag(run_id, ERROR_TAG, credentials.hide(message)[:5000])


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log the configuration (to the active run, or ``run_id``). Under ``mlflow run`` MLflow
    Projects has already logged the entry point's parameters as typed on the command line ("50" for
    50.0); those are kept as they are."""
    import mlflow
    from mlflow.entities import Param

    run_id = run_id or mlflow.active_run().info.run_id
    existing = mlflow.get_run(run_id).data.params
    mlflow.MlflowClient().log_batch(run_id, params=[Param(k, str("" if v is None else v))
                                                    for k, v in params.items() if k not in existing])


#: MLflow's UI draws a run's metrics as charts grouped in sections by the part of each name before
#: "/" (sections in alphabetical order, names without one last, under "Model metrics"), and the
#: runs table names its columns the same way. uqflow's own names stay flat (``auroc_g_nll``: the
#: results store's columns, the code's keys); at MLflow each gets its section so that a run's page
#: opens on the AUROCs, then their intervals, the batch spread, calibration, costs, the paired test,
#: the judges and the selective-prediction figures. Each rule: the section, uqflow's name and the
#: name within the section, as templates of the fields in :data:`_METRIC_FIELDS`; one table read
#: both ways, and runs logged before with flat names are read as they are.
METRIC_SECTIONS = (
    ("auroc_ci", "auroc_{m}_ci_{b}", "{m}_{b}"),
    ("auroc", "auroc_{m}", "{m}"),
    ("selective", "{s}_{m}", "{s}_{m}"),
    ("calibration", "{c}_{m}", "{c}_{m}"),
    ("cost_parts", "part_{m}", "{m}"),
    ("cost", "cost_{m}", "{m}"),
    ("delong", "delong_{m}", "{m}"),
)
#: what each field of a template matches: a measure (or part) name, an interval's end, the
#: selective-prediction and calibration figures
_METRIC_FIELDS = {"m": ".+", "b": "low|high", "s": r"aurac|prr50|prr|acc_cov\d+|aurc", "c": "ece|brier"}


def _template(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\{(\w)\}", lambda f: f"(?P<{f[1]}>{_METRIC_FIELDS[f[1]]})", template))


#: (section, uqflow's name as a pattern, its template, the name in the section as a pattern, its template)
_METRIC_RULES = [(section, _template(flat), flat, _template(inner), inner) for section, flat, inner in METRIC_SECTIONS]


def metric_key(name: str) -> str:
    """The name a metric is logged under at MLflow: ``auroc_g_nll`` is ``auroc/g_nll``,
    ``auroc_g_nll_ci_low`` is ``auroc_ci/g_nll_low``, ``prr_g_nll`` is ``selective/prr_g_nll``
    (:data:`METRIC_SECTIONS`); a name with a section already (``judge/...``) or of no section
    (``accuracy``, ``n``) is kept."""
    if "/" not in name:
        for section, flat, _, _, inner in _METRIC_RULES:
            if found := flat.fullmatch(name):
                return f"{section}/{inner.format(**found.groupdict())}"
    return name


def flat_metric(key: str) -> str:
    """uqflow's name of a metric read from MLflow: the inverse of :func:`metric_key` (a name logged
    flat by an earlier version, or of no rule, is its own)."""
    section, _, rest = key.partition("/")
    for name, _, flat, inner, _ in _METRIC_RULES:
        if name == section and (found := inner.fullmatch(rest)):
            return flat.format(**found.groupdict())
    return key


def run_metrics(run) -> dict[str, float]:
    """A run's metrics (an MLflow ``Run``) by uqflow's names, whichever version logged them."""
    return {flat_metric(k): v for k, v in run.data.metrics.items()}


def log_metrics(metrics: Mapping[str, float], run_id: str | None = None) -> None:
    """Log finite metrics (to the active run, or ``run_id``) under their MLflow names
    (:func:`metric_key`); NaN (an undefined AUROC) is left out rather than stored as a number."""
    import math
    import time

    import mlflow
    from mlflow.entities import Metric

    run_id = run_id or mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(run_id, metrics=[Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items()
                                                     if v is not None and math.isfinite(float(v))])


def log_frame(frame, name: str = "generations.parquet") -> None:
    """Write a DataFrame as a Parquet artifact at the run's artifact root, and its SHA-256 as the
    run's tag ``uqflow.sha256.<name>``: aggregation refuses a file that is not the one the run wrote."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))
        mlflow.set_tag(CHECKSUM_TAG_PREFIX + name, file_sha256(path))


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_dataset(frame, name: str, origin: Mapping[str, Any]) -> None:
    """Log the evaluated questions as the run's dataset input (MLflow's Dataset column and filter):
    its name, digest, schema and where it came from (a hub dataset's id, config and split, or a file)."""
    import warnings

    import mlflow

    if origin.get("hub_id"):
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        source: Any = HuggingFaceDatasetSource(path=origin["hub_id"], config_name=origin.get("config"),
                                               split=origin.get("split"))
    elif origin.get("path"):
        source = origin["path"]  # MLflow resolves a file path to a local dataset source
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"uqflow.dataset": name})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "can be interpreted in multiple ways": a local file
        dataset = mlflow.data.from_pandas(frame, source=source, name=name)
    mlflow.log_input(dataset, context="evaluation")


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags of the active run, known only once it is under way (the engine's settings)."""
    import mlflow

    mlflow.set_tags(dict(tags))


def record_project_run(name: str, tags: Mapping[str, str], metrics: Mapping[str, float], description: str) -> str | None:
    """Under ``mlflow run`` (``MLFLOW_RUN_ID`` set), what a command that makes no run of its own
    (``-e aggregate``) did, in the run MLflow Projects made for it: its name, tags, metrics and
    description, so the run says what it was instead of standing empty among the study's runs. It
    carries no :data:`VERSION_TAG`, so aggregation never takes it for a model run. Returns its id,
    or None outside ``mlflow run``."""
    import mlflow

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    with reaching_store():
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "mlflow.runName", name)
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        log_metrics(metrics, run_id)
        set_description(description, run_id)
    return run_id


def set_description(markdown: str, run_id: str | None = None) -> None:
    """A run's description (the active run's unless ``run_id``), which MLflow's run page shows first."""
    import mlflow

    if run_id is None:
        mlflow.set_tag("mlflow.note.content", markdown)
    else:
        mlflow.MlflowClient().set_tag(run_id, "mlflow.note.content", markdown)


def log_table(frame, name: str, run_id: str | None = None) -> None:
    """A table artifact the MLflow UI shows as a table (its artifact view and evaluation tab), on
    the active run or ``run_id``."""
    import mlflow

    mlflow.log_table(data=frame, artifact_file=name, run_id=run_id)


def log_text(text: str, name: str) -> None:
    import mlflow

    mlflow.log_text(text, name)


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI (``uri``, else the current one) as it may be printed, logged or stored: a
    password in its user part (``http://user:secret@host``) and credentials in its query replaced
    by ``***``, the user kept (:func:`uqflow.credentials.mask`). While :func:`login_out_of_uri`
    holds the URI's login, the current URI is shown as it was given."""
    if uri is None:
        uri = tracking_uri()
        if _given_uri is not None and uri == _given_uri[0]:
            return _given_uri[1]
    return credentials.mask(uri)


#: while :func:`login_out_of_uri` holds: the URI MLflow is given, the URI as given (masked), and the
#: user whose login it moved into MLflow's variables (None: it moved none)
_given_uri: tuple[str, str, str | None] | None = None
LOGIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@contextlib.contextmanager
def login_out_of_uri() -> Iterator[None]:
    """For the duration, a login inside the tracking URI (``http://user:password@host``) travels in
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (which MLflow's HTTP client sends as basic
    auth) and MLflow is given the URI without it. MLflow prints the URI it has ("View run ... at:"
    when a run ends) and passes it to every process started from here (a grid's cells, Ray's
    workers), so no password inside it reaches a console, a log or a cell's log. The URI's login
    replaces the variables, as requests lets a URL's login win over MLflow's header. A credential
    in the URI's query stays in the URI (the server reads it there), and MLflow's "View run" line
    is then turned off."""
    import sys

    global _given_uri
    # before MLflow is imported (a command that never needs it), its URI can only be the variable
    uri = tracking_uri() if "mlflow" in sys.modules else os.environ.get("MLFLOW_TRACKING_URI", "")
    bare, user, password = credentials.split_login(uri)
    if password is None and not credentials.holds_secret(uri):
        yield
        return
    import mlflow

    saved = {k: os.environ.get(k) for k in (*LOGIN_VARIABLES, "MLFLOW_TRACKING_URI", _QUIET_URL)}
    before = _given_uri
    if password is not None:
        os.environ.update(zip(LOGIN_VARIABLES, (user or "", password)))
        mlflow.set_tracking_uri(bare)
    if credentials.holds_secret(bare):
        os.environ[_QUIET_URL] = "true"
    _given_uri = (bare, credentials.mask(uri), user if password is not None else None)
    try:
        yield
    finally:
        _given_uri = before
        mlflow.set_tracking_uri(uri)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: MLflow's switch for its "View run ... at: <url>" line
_QUIET_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def login_source() -> str | None:
    """Where the login the tracking server is sent comes from: ``"uri"`` (the user part of
    MLFLOW_TRACKING_URI, which requests sends in preference to MLflow's variables), ``"env"``
    (MLFLOW_TRACKING_USERNAME), or None."""
    uri = tracking_uri()
    if (_given_uri is not None and _given_uri[0] == uri and _given_uri[2] is not None) or credentials.user_of(uri):
        return "uri"
    return "env" if os.environ.get("MLFLOW_TRACKING_USERNAME") else None


def login_user() -> str | None:
    """The user name the tracking server is sent: the user part of the tracking URI (which requests
    sends as basic auth in preference to MLflow's variables), else MLFLOW_TRACKING_USERNAME."""
    uri = tracking_uri()
    if _given_uri is not None and _given_uri[0] == uri and _given_uri[2] is not None:
        return _given_uri[2]
    return credentials.user_of(uri) or os.environ.get("MLFLOW_TRACKING_USERNAME") or None


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

    try:
        return mlflow.get_run(run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(_store_message(e)) from None
        raise UqflowError(f"no run {run_id!r} in the tracking store {shown_uri()}") from None
    except _store_failures() as e:
        raise TrackingError(_store_message(e)) from None


def _said(e: BaseException) -> str:
    """An exception as "Type: its first line" (cut to 300 characters), for one-line messages."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def download_artifact(run_id: str, name: str) -> Path:
    """A local copy of one of a run's artifacts (a temporary folder for remote artifact stores)."""
    import mlflow
    import requests

    from uqflow.artifact import ArtifactError

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run is noise
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name))
    except requests.exceptions.RequestException as e:
        raise TrackingError(_store_message(e)) from None
    except Exception as e:  # a missing artifact: MlflowException or OSError, by artifact store
        raise ArtifactError(f"run {run_id}: cannot read its {name} ({_said(e)})") from None


def load_table(run_id: str, name: str = "generations.parquet"):
    """A run's per-example table as a pyarrow Table, read back from its artifact."""
    return load_table_and_checksum(run_id, name)[0]


def load_table_and_checksum(run_id: str, name: str = "generations.parquet"):
    """A run's per-example table as a pyarrow Table, and the SHA-256 of the file it was read from."""
    import pyarrow.parquet as pq

    from uqflow.artifact import ArtifactError

    path = download_artifact(run_id, name)
    try:
        return pq.read_table(path), file_sha256(path)
    except Exception as e:  # a damaged Parquet file: pyarrow raises ArrowInvalid, OSError, ...
        raise ArtifactError(f"run {run_id}: cannot read its {name} ({_said(e)})") from None


def load_frame(run_id: str, name: str = "generations.parquet"):
    """A run's per-example table as a DataFrame, read back from its artifact."""
    return load_table(run_id, name).to_pandas()


def _all_pages(search, **kwargs) -> list:
    """Every item of a paged MLflow search (``search_runs``, ``search_experiments``)."""
    out, token = [], None
    while True:
        page = search(max_results=1000, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def search_runs(experiment_ids: str | list[str], filter_string: str = "") -> list:
    """Every run of the experiment(s) matching ``filter_string``, all pages."""
    import mlflow

    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    return _all_pages(mlflow.MlflowClient().search_runs, experiment_ids=ids, filter_string=filter_string)


def all_experiments() -> list:
    """Every experiment of the tracking store, deleted ones included."""
    import mlflow
    from mlflow.entities import ViewType

    return _all_pages(mlflow.MlflowClient().search_experiments, view_type=ViewType.ALL)
