"""A grid's cells on a Ray cluster, its runs on a shared tracking store (``uqflow grid FILE --ray``).

Each model gets one Ray actor, which runs that model's cells in turn: the model loads once in that
worker process and is freed when the actor ends, right after its last cell, so the memory it held
(a GPU's included) goes back to the cluster at once. A task per cell with the model cached in its
worker would need Ray's worker reuse to land on the right process, and Ray ends a GPU task's worker
after each task. Models run side by side, as far as the cluster's resources allow; each actor asks
for what its model needs (:func:`cell_resources`, from the registry's size and quantization).

Workers log their runs straight to the tracking store: they get its URI and the experiment in the
job's runtime environment, and each cell's run is linked to the grid's run as an in-process cell's
is. Credentials (a password, a token, a password inside the tracking URI or inside any forwarded
URL such as ``UQFLOW_RESULTS_DB``, whatever the variable's name) never enter the runtime
environment, which Ray writes to its session logs (``runtime_env_agent.log``) and shows on its
dashboard: each actor receives them as an argument of its constructor (:class:`Secrets`, whose
``repr`` hides them) and puts them in its own process's environment. An argument travels in Ray's
own protocol to the worker and is written to no log; a file readable only by the user would have
to be on a filesystem every node shares, and would outlive a killed driver. The tracking URI
reaches workers without its login, which travels as MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, so MLflow's own "View run ... at: <url>" line in a worker's log shows no
password. ``--ray`` without an address
always starts a cluster of its own for the grid (Ray's ``local``), so credentials go only where an
address (or ``auto``) sends them. Three kinds of stop end with nothing left RUNNING:

- a worker (or its whole node) dies mid-cell: the run it left is marked KILLED with Ray's reason,
  and the cell runs again on a fresh actor, up to :data:`ATTEMPTS` times in all. uqflow starts the
  retry rather than Ray's actor restarts, whose task retries are spent within a second on "actor
  temporarily unavailable" errors while the cluster has not yet declared a killed node dead;
- Ctrl-C, SIGTERM or SIGHUP on the driver: every actor is killed and every cell run still RUNNING
  ends KILLED with the signal as its reason;
- a second driver on the same cells: cells are claimed through the tracking store (:class:`GridClaim`),
  so the later driver is refused with a message naming the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from uqflow import credentials, lease, tracking
from uqflow.config import RunConfig
from uqflow.errors import ClusterError, GridBusy, clip, stop_signal
from uqflow.grid import Cell, CellState, ModelSlot, cell_states, close_abandoned, run_cell
from uqflow.models import ModelSpec, get_model

log = logging.getLogger(__name__)

#: ``--ray`` without an address: a Ray cluster started on this machine for the grid's duration
LOCAL = "local"

#: how many times a cell is started on the cluster when the worker running it dies
ATTEMPTS = 3

#: bytes of weights per parameter on a GPU: bf16 (GGUF weights are dequantized to it), LLM.int8, NF4
GPU_BYTES_PER_PARAMETER = {"none": 2.0, "8bit": 1.0, "4bit": 0.5}
#: and on a CPU, where unquantized weights load in float32 (uqflow.models.loading._load_dtype)
CPU_BYTES_PER_PARAMETER = {"none": 4.0, "8bit": 1.0, "4bit": 0.5}
#: beyond the weights: 20% for activations and the KV cache of a batch, plus a fixed 1.5 GiB for the
#: CUDA context (or torch's own CPU memory) and the sentence-embedding model of RW-G-NLL
HEADROOM, BASE_GIB = 1.2, 1.5
#: memory of one of the cluster's GPUs, which Ray does not know; a cell asks for the fraction of a
#: GPU its model needs. 24 GiB (A10, L4, RTX 4090) errs on the safe side: on 40 or 80 GiB cards
#: set UQFLOW_GPU_MEMORY_GB and more cells share a GPU
DEFAULT_GPU_MEMORY_GB = 24.0

#: the claim on a grid's cells: a driver refreshes its heartbeat every HEARTBEAT_S seconds, and a
#: claim whose heartbeat is STALE_S seconds old (or whose driver process is gone, on the same host)
#: is taken over. SETTLE_S: the wait between making a claim and reading the others' (see GridClaim)
HEARTBEAT_S, STALE_S, SETTLE_S = 10.0, 60.0, 3.0

#: environment the workers get from the driver: the tracking store, its credentials and HTTP
#: patience, uqflow's own settings and Hugging Face's offline switches
FORWARDED = ("MLFLOW_", "UQFLOW_", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME")
#: the driver's own run and experiment id (under ``mlflow run``) are not the cells'
NOT_FORWARDED = {"MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"}
#: variables handed to each actor (:class:`Secrets`), never put in the runtime environment: those
#: named as credentials (:func:`uqflow.credentials.is_secret_name`) and those holding a URL with a
#: credential; HF_TOKEN lets workers load gated hub models (Llama) as the driver could
SECRET_EXTRA = credentials.SECRET_NAMES


class Secrets:
    """Environment variables that hold credentials, carried to a Ray actor as a constructor
    argument; shown as their names only, so that no log or error message prints a value."""

    def __init__(self, values: dict[str, str]):
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self._values)) or 'none'})"

    def apply(self) -> None:
        """Put the credentials in this process's environment (a worker's, before MLflow reads it)."""
        import sys

        os.environ.update(self._values)
        if "MLFLOW_TRACKING_URI" in self._values:  # a credential in its query: MLflow is not to print it
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
            if "mlflow" in sys.modules:
                import mlflow

                mlflow.set_tracking_uri(self._values["MLFLOW_TRACKING_URI"])


def _is_secret(name: str, value: str = "") -> bool:
    """Whether a variable is a credential: by its name, or by its value (a URL holding one)."""
    return credentials.is_secret_name(name) or credentials.holds_secret(value)


# --- resources ---------------------------------------------------------------------------------

def uses_gpu(cfg: RunConfig, cluster_has_gpus: bool, spec: ModelSpec | None = None) -> bool:
    """Whether a cell runs on a GPU: asked for (``cuda``, or an engine that runs on a GPU only), or
    ``auto`` on a cluster that has GPUs; never for a served model (its server holds the GPUs)."""
    from uqflow.generation import engine_of

    spec = spec or get_model(cfg.model, cfg.model_registry or None)
    kind = engine_of(cfg.backend, spec)
    if kind.served:
        return False
    if kind.gpu_only or cfg.device.startswith("cuda"):
        return True
    return cfg.device == "auto" and cluster_has_gpus


def memory_gib(spec: ModelSpec, gpu: bool) -> float | None:
    """Memory a model's cell needs, in GiB: its weights at the bytes per parameter of its
    quantization on that device, with headroom; None for a model of unknown size (a local folder)."""
    if not math.isfinite(spec.size_b):
        return None
    table = GPU_BYTES_PER_PARAMETER if gpu else CPU_BYTES_PER_PARAMETER
    weights = spec.size_b * 1e9 * table.get(spec.quantization, table["none"]) / 2**30
    return weights * HEADROOM + BASE_GIB


def cell_resources(spec: ModelSpec, cfg: RunConfig, cluster_has_gpus: bool,
                   gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB) -> dict[str, float]:
    """The Ray resources of a model's actor: a CPU, and on a GPU the fraction of one that its
    memory needs (rounded up to a twentieth; whole GPUs beyond one, and one for a model of unknown
    size), or on a CPU the memory (bytes) its weights need, so Ray never packs more models on a
    node than fit."""
    gpu = uses_gpu(cfg, cluster_has_gpus, spec)
    need = None if spec.served else memory_gib(spec, gpu)  # a served model's weights are its server's
    if gpu:
        share = 1.0 if need is None else need * 2**30 / (gpu_memory_gb * 1e9)
        return {"num_cpus": 1, "num_gpus": min(1.0, math.ceil(share * 20) / 20) if share <= 1 else float(math.ceil(share))}
    return {"num_cpus": 1, **({"memory": int(need * 2**30)} if need else {})}


def _fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return (request.get("num_cpus", 0) <= node.get("CPU", 0) and request.get("num_gpus", 0) <= node.get("GPU", 0)
            and request.get("memory", 0) <= node.get("memory", 0))


def _describe(request: dict[str, float]) -> str:
    parts = [f"{request['num_cpus']:g} CPU"]
    if request.get("num_gpus"):
        parts.append(f"{request['num_gpus']:g} GPU")
    if request.get("memory"):
        parts.append(f"{request['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts)


# --- connecting --------------------------------------------------------------------------------

def worker_env() -> dict[str, str]:
    """The runtime environment every worker of the job gets: the tracking store (as an absolute
    URI, since workers run elsewhere), the experiment, and the FORWARDED variables that are set
    here, less every credential (:func:`worker_secrets`)."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(FORWARDED) and k not in NOT_FORWARDED and not _is_secret(k, v)}
    env.update({k: v for k, v in tracking.NETWORK_DEFAULTS.items() if k not in env})
    bare = credentials.split_login(_absolute_uri(tracking.tracking_uri()))[0]  # its login is a secret
    if credentials.holds_secret(bare):  # a credential in its query: the whole URI is a secret
        env.pop("MLFLOW_TRACKING_URI", None)
    else:
        env["MLFLOW_TRACKING_URI"] = bare
    env["MLFLOW_EXPERIMENT_NAME"] = tracking.experiment_name()
    if "HF_HOME" in env:
        env["HF_HOME"] = str(Path(env["HF_HOME"]).resolve())
    return env


def worker_secrets(key_variables: Iterable[str] = ()) -> Secrets:
    """The credentials the workers need, kept out of the runtime environment: the FORWARDED
    variables that hold a secret (by name or value), HF_TOKEN, the variables that hold served
    models' API keys (``key_variables``, whatever their names), the login inside the tracking URI
    (as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, which win over the variables as
    requests lets a URL's login win), and the whole URI when its query holds a credential."""
    values = {k: v for k, v in os.environ.items()
              if _is_secret(k, v) and (k.startswith(FORWARDED) or k in SECRET_EXTRA) and k not in NOT_FORWARDED}
    values.update({k: os.environ[k] for k in key_variables if os.environ.get(k)})
    values.pop("MLFLOW_TRACKING_URI", None)
    bare, user, password = credentials.split_login(_absolute_uri(tracking.tracking_uri()))
    if password is not None:
        values.update(zip(tracking.LOGIN_VARIABLES, (user or "", password)))
    if credentials.holds_secret(bare):
        values["MLFLOW_TRACKING_URI"] = bare
    return Secrets(values)


def _absolute_uri(uri: str) -> str:
    """A local tracking store's URI with an absolute path (``sqlite:///mlflow.db`` means the driver's
    working folder, which a worker does not share)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri and ":" not in uri[:3]:  # a plain path: MLflow's file store
        return str(Path(uri).resolve())
    return uri


def _check_reachable(address: str) -> None:
    """A ``host:port`` address that refuses a TCP connection is reported at once: Ray's own
    client waits for minutes, printing warnings, before it gives up. ``auto`` is looked up as Ray
    looks it up (``RAY_ADDRESS``, else the cluster last started here), so that a cluster which has
    since stopped is reported at once too."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address  # Ray's own reading of "auto"

            address = canonicalize_bootstrap_address("auto") or address
        except Exception:  # a Ray without it: ray.init resolves "auto" itself
            pass
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or an address Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start one with "
                           "`ray start --head` or give the head node's address (host:6379)") from None


@contextlib.contextmanager
def connected(address: str) -> Iterator[Any]:
    """This process connected to the Ray cluster at ``address`` (``auto``, ``host:port``,
    ``ray://host:port``, or :data:`LOCAL` for one started here) for the duration; yields ``ray``."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray, which is not installed here: pip install 'uqflow[cluster]'") from None
    if address != LOCAL:
        _check_reachable(address)
    stops = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)}
    try:
        # "local" is Ray's own word for a new cluster here, never the one RAY_ADDRESS or `ray start` left
        ray.init(address=address, runtime_env={"env_vars": worker_env()},
                 log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False if address == LOCAL else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {clip(str(e).strip().splitlines()[0], 300)}"
                           " (start one with `ray start --head`, or drop the address to start one here)") from None
    finally:
        for name, handler in stops.items():  # Ray sets its own; uqflow's end runs KILLED, as without Ray
            if handler is not None:
                signal.signal(getattr(signal, name), handler)
    try:
        yield ray
    finally:
        ray.shutdown()


# --- claims ------------------------------------------------------------------------------------

class GridClaim:
    """A driver's claim on its cells, held by the grid's own run in the tracking store while it runs.

    The grid's run carries the configuration hashes of its cells (``uqflow.claims``), its driver's
    host and process, and a heartbeat refreshed every HEARTBEAT_S seconds. After making its claim a
    driver waits SETTLE_S seconds, then reads every RUNNING claim in the experiment: of two live
    claims on a common cell the older run (start time, then run id) keeps it and the other driver
    is refused (:class:`~uqflow.errors.GridBusy`). Both drivers reach the same verdict: each sees
    the other's claim, because a claim made before another driver read the claims is visible to
    that read, and one made after it is newer, as long as the two hosts' clocks differ by less than
    SETTLE_S. A claim whose heartbeat is STALE_S seconds old, or whose driver process no longer
    exists on this host, is abandoned: its run is marked KILLED and its cells are taken over.
    """

    def __init__(self, run_id: str, identities: list[str]):
        self.run_id, self.identities = run_id, set(identities)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> GridClaim:
        import mlflow
        from mlflow.entities import RunTag

        client = mlflow.MlflowClient()
        with tracking.reaching_store():
            client.log_batch(self.run_id, tags=[RunTag(tracking.CLAIMS_TAG, ",".join(sorted(self.identities))),
                                                RunTag(tracking.DRIVER_TAG, f"{socket.gethostname()} {os.getpid()}"),
                                                RunTag(tracking.HEARTBEAT_TAG, f"{time.time():.0f}")])
            self._beat = threading.Thread(target=self._heartbeat, name="uqflow-heartbeat", daemon=True)
            self._beat.start()
            try:
                time.sleep(SETTLE_S)
                self._check_rivals(client)
            except BaseException:  # refused or interrupted: a run that ends stops beating
                self._stop.set()
                raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        import mlflow

        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # one missed beat is no loss; STALE_S allows several
                mlflow.MlflowClient().set_tag(self.run_id, tracking.HEARTBEAT_TAG, f"{time.time():.0f}")

    def _check_rivals(self, client) -> None:
        me = client.get_run(self.run_id)
        claims = tracking.search_runs(me.info.experiment_id,
                                      f"attributes.status = 'RUNNING' AND tags.`{tracking.CLAIMS_TAG}` != ''")
        for other in claims:
            if other.info.run_id == self.run_id:
                continue
            common = self.identities & set(other.data.tags.get(tracking.CLAIMS_TAG, "").split(","))
            if not common:
                continue
            age, driver = claim_age(other), other.data.tags.get(tracking.DRIVER_TAG, "?")
            if age > STALE_S or lease.writer_gone(driver):
                tracking.tag_error(other.info.run_id, f"abandoned: its driver ({driver}) stopped {age:.0f} s after its "
                                                      f"last heartbeat; its cells were taken over by grid run {self.run_id}")
                client.set_terminated(other.info.run_id, "KILLED")
                log.warning("took over %d cell(s) from grid run %s, whose driver (%s) stopped", len(common),
                            other.info.run_id, driver)
            elif (other.info.start_time, other.info.run_id) < (me.info.start_time, me.info.run_id):
                raise GridBusy(f"{len(common)} of this grid's cells are being run by another driver (grid run "
                               f"{other.info.run_id}, {driver}, heartbeat {age:.0f} s ago); wait for it to finish, "
                               f"or stop it (its claim is taken over once its heartbeat is {STALE_S:.0f} s old)")


def claim_age(run) -> float:
    """Seconds since a claiming grid run's last heartbeat."""
    try:
        return time.time() - float(run.data.tags.get(tracking.HEARTBEAT_TAG, ""))
    except ValueError:
        return math.inf


# --- workers -----------------------------------------------------------------------------------

class _WorkerSlot(ModelSlot):
    """The model slot of a Ray worker, which tags each cell's run with the worker running it as
    the run starts (before its model loads), so that a worker's death can be told on its run."""

    def loader(self, cfg: RunConfig) -> Callable[[], Any]:
        load = super().loader(cfg)

        def tagged():
            import mlflow
            import ray

            node = ray.get_runtime_context().get_node_id()
            mlflow.set_tag(tracking.WORKER_TAG, f"{socket.gethostname()} pid {os.getpid()} (Ray node {node[:12]})")
            return load()

        return tagged


class CellWorker:
    """A Ray actor holding one model: runs that model's cells in turn, loading it once."""

    def __init__(self, secrets: Secrets | None = None):
        if secrets is not None:
            secrets.apply()
        self.slot = _WorkerSlot()

    def run(self, cell: Cell, parent_run_id: str) -> CellState:
        s = CellState(cell, "pending")
        run_cell(s, parent_run_id, self.slot)
        return s


# --- the driver --------------------------------------------------------------------------------

@dataclasses.dataclass
class _Model:
    """One model's cells on the cluster: those not yet finished, in order, and the actor running them."""

    key: tuple
    resources: dict[str, float]
    queue: list[CellState]
    actor: Any = None
    attempts: dict[str, int] = dataclasses.field(default_factory=dict)  # cell identity -> starts so far


class RayCells:
    """Runs a grid's cells on the Ray cluster at ``address``: a :data:`uqflow.grid.CellRunner`."""

    def __init__(self, address: str = LOCAL):
        self.address = address or LOCAL

    def __call__(self, cells: list[Cell], parent_run_id: str,
                 on_cell: Callable[[int, int, CellState], None] | None = None) -> list[CellState]:
        # the driver's machine need not run the cells: each worker checks (and resolves) its own
        cells = [dataclasses.replace(c, needs=(), resolved=None) for c in cells]
        with connected(self.address) as ray, GridClaim(parent_run_id, [c.identity for c in cells]):
            with tracking.reaching_store():
                states = cell_states(cells)  # read once the claim is held: a finished rival's cells are done
                close_abandoned(states)
            report = _Reporter(len(states), on_cell)
            for s in states:
                if s.state == "done":
                    report(s)
            models = self._plan(ray, [s for s in states if s.state != "done"])
            try:
                self._run(ray, models, parent_run_id, report)
            except KeyboardInterrupt as e:
                self._stop(ray, models, parent_run_id, e)
                raise
        return states

    def _plan(self, ray, todo: list[CellState]) -> list[_Model]:
        """The pending cells by model, each model with the resources of its actor; a model that no
        node of the cluster can hold is refused before anything starts."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        has_gpus = any(n.get("GPU", 0) > 0 for n in nodes)
        gpu_gb = float(os.environ.get("UQFLOW_GPU_MEMORY_GB") or DEFAULT_GPU_MEMORY_GB)
        models: dict[tuple, _Model] = {}
        for s in todo:
            cfg = s.config
            key = (cfg.model, cfg.model_registry, cfg.device, cfg.backend)
            if key not in models:
                request = cell_resources(get_model(cfg.model, cfg.model_registry or None), cfg, has_gpus, gpu_gb)
                if not any(_fits(request, n) for n in nodes):
                    raise ClusterError(f"no node of the Ray cluster can hold {cfg.model}'s cells, which need "
                                       f"{_describe(request)}; its nodes offer "
                                       + "; ".join(_describe({"num_cpus": n.get("CPU", 0), "num_gpus": n.get("GPU", 0),
                                                             "memory": n.get("memory", 0)}) for n in nodes))
                models[key] = _Model(key, request, [])
            models[key].queue.append(s)
        return list(models.values())

    def _run(self, ray, models: list[_Model], parent_id: str, report: Callable[[CellState], None]) -> None:
        """Every model's actor at once (Ray starts each as resources free up), its cells queued on
        it in order; results taken as they come, a dead worker's cells started again."""
        inflight: dict[Any, tuple[_Model, CellState]] = {}
        worker = ray.remote(CellWorker)
        served = [get_model(m.key[0], m.key[1] or None).served for m in models]
        secrets = worker_secrets({s.api_key_env for s in served if s is not None})

        def start(m: _Model) -> None:
            m.actor = worker.options(**m.resources, max_restarts=0, max_task_retries=0).remote(secrets)
            for s in m.queue:
                inflight[m.actor.run.remote(s.cell, parent_id)] = (m, s)

        for m in models:
            start(m)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)  # a timeout, so Ctrl-C gets through
            for ref in ready:
                if ref not in inflight:
                    continue  # a dead actor's cell, already started again
                m, s = inflight.pop(ref)
                try:
                    done = ray.get(ref)
                except ray.exceptions.RayError as e:
                    self._worker_died(ray, m, inflight, parent_id, e, report, start)
                    continue
                s.state, s.run_id, s.error, s.metrics = done.state, done.run_id, done.error, done.metrics
                m.queue.remove(s)
                report(s)
                if not m.queue:  # the model's last cell: its actor (and the memory it holds) goes
                    ray.kill(m.actor)

    def _worker_died(self, ray, m: _Model, inflight: dict, parent_id: str, error: BaseException,
                     report: Callable[[CellState], None], start: Callable[[_Model], None]) -> None:
        """The actor of ``m`` died (its worker or its node): the run it left RUNNING ends KILLED with
        Ray's reason, and its unfinished cells start again on a new actor, the interrupted one only
        while it has attempts left."""
        reason = "worker died: " + _first_line(error)
        ray.kill(m.actor)  # a worker Ray only lost touch with must not go on beside its replacement
        for ref in [r for r, (owner, _) in inflight.items() if owner is m]:
            del inflight[ref]
        with tracking.reaching_store():
            for s in m.queue:
                _kill_running(parent_id, reason, s.cell.identity)
        current = m.queue[0]
        m.attempts[current.cell.identity] = m.attempts.get(current.cell.identity, 1) + 1
        if m.attempts[current.cell.identity] > ATTEMPTS:
            current.state, current.error = "error", f"{reason} ({ATTEMPTS} attempts)"
            current.run_id = _latest_run(parent_id, current.cell.identity)
            m.queue.pop(0)
            report(current)
        else:
            log.warning("%s x %s: %s; starting it again (attempt %d of %d)", current.config.model,
                        current.config.dataset, reason, m.attempts[current.cell.identity], ATTEMPTS)
        if m.queue:
            start(m)

    def _stop(self, ray, models: list[_Model], parent_id: str, interruption: KeyboardInterrupt) -> None:
        """Ctrl-C (or SIGTERM, SIGHUP): every actor is killed, then every cell run of this grid still
        RUNNING ends KILLED with the signal as its reason."""
        busy = [m.actor for m in models if m.actor is not None and m.queue]
        for actor in busy:
            ray.kill(actor)
        _wait_dead(ray, busy)
        signame = stop_signal(interruption)[0]
        with contextlib.suppress(Exception):  # the store may be what failed; the grid's run still ends KILLED
            _kill_running(parent_id, f"interrupted ({signame}): the grid's driver was stopped")


def _wait_dead(ray, actors: list, timeout: float = 15.0) -> None:
    """Wait (up to ``timeout`` seconds in all) until the killed ``actors`` are dead, so that none of
    them records anything after the driver has closed its runs."""
    deadline = time.time() + timeout
    for actor in actors:
        while time.time() < deadline:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=1.0)
            except ray.exceptions.RayActorError:
                break
            except ray.exceptions.GetTimeoutError:
                continue
            time.sleep(0.2)


class _Reporter:
    """Counts finished cells for ``on_cell`` (cells finish in any order on a cluster)."""

    def __init__(self, total: int, on_cell: Callable[[int, int, CellState], None] | None):
        self.total, self.on_cell, self.count = total, on_cell, 0

    def __call__(self, s: CellState) -> None:
        self.count += 1
        if self.on_cell:
            self.on_cell(self.count, self.total, s)


def _kill_running(parent_id: str, reason: str, identity: str | None = None) -> None:
    """End KILLED, with ``reason``, every run of the grid run ``parent_id`` (of one cell, if
    ``identity`` is given) that is still RUNNING."""
    import mlflow

    client = mlflow.MlflowClient()
    filt = f"attributes.status = 'RUNNING' AND tags.`{tracking.GRID_RUN_TAG}` = '{parent_id}'"
    if identity:
        filt += f" AND tags.config_hash = '{identity}'"
    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in tracking.search_runs(experiment_id, filt):
        where = run.data.tags.get(tracking.WORKER_TAG)
        tracking.tag_error(run.info.run_id, reason + (f" (it ran on {where})" if where else ""))
        client.set_terminated(run.info.run_id, "KILLED")


def _latest_run(parent_id: str, identity: str) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    runs = tracking.search_runs(client.get_run(parent_id).info.experiment_id,
                                f"tags.`{tracking.GRID_RUN_TAG}` = '{parent_id}' AND tags.config_hash = '{identity}'")
    return max(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else ""


def _first_line(error: BaseException) -> str:
    """Ray's error as "Type: its first line", cut to 300 characters."""
    text = credentials.hide(str(error).strip())
    return f"{type(error).__name__}: " + clip(text.splitlines()[0] if text else "", 300)
