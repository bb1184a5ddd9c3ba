"""A grid on a Ray cluster into a shared MLflow tracking server, with real processes on loopback:
a Ray head and a second node started by `ray start`, an `mlflow server` on PostgreSQL with proxied
artifacts and MLflow's basic-auth app. SIGKILL of the second node mid-cell, Ctrl-C on the driver,
two drivers at once, aggregation over HTTP, and writes the server refuses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from commands import invoke, UQFLOW
from store_fixtures import mlflow_store
from uqflow import cluster
from uqflow import tracking as tr
from uqflow.config import RunConfig
from uqflow.errors import GridBusy
from uqflow.models import MODELS

BIN = Path(sys.executable).parent
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1234"
READER, READER_PASSWORD = "reader", "reader-password-1234"
#: few questions and short answers: the cells are real runs of the bundled models, kept short
QUICK = ["--set", "num_samples=4", "--set", "max_new_tokens=16", "--set", "n_bootstrap=20"]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on this machine."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out[int(d.name)] = (ppid, cmd)
    return out


def _tree(roots: set[int]) -> set[int]:
    """``roots`` and all their descendants."""
    procs, found = _processes(), set(roots)
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RayCluster:
    """A Ray head and a second node on this machine, one CPU each; their processes are found by the
    cluster's own temporary folder (every one of them names it, or descends from one that does)."""

    def __init__(self, env: dict[str, str]):
        self.temp = tempfile.mkdtemp(prefix="uqr")  # short: Ray's socket paths must fit 107 characters
        self.port, self.node2_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        # a killed node is declared dead within seconds rather than Ray's default half minute
        self.env = {**env, "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                    "RAY_health_check_initial_delay_ms": "1000"}
        self._ray("start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                  f"--temp-dir={self.temp}", "--include-dashboard=false", "--disable-usage-stats")
        self.start_second_node()

    def _ray(self, *args: str) -> None:
        out = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]

    def start_second_node(self) -> None:
        if self.node2_raylet() is None:
            self._ray("start", f"--address={self.address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      f"--node-manager-port={self.node2_port}", "--disable-usage-stats")

    def node2_raylet(self) -> int | None:
        return next((pid for pid, (_, cmd) in _processes().items()
                     if "raylet" in cmd.split(" ")[0] and f"--node_manager_port={self.node2_port}" in cmd), None)

    def kill_second_node(self) -> None:
        """SIGKILL the second node: its raylet and everything under it (its workers, its agents)."""
        raylet = self.node2_raylet()
        assert raylet is not None
        _kill(_tree({raylet}))

    def stop(self) -> None:
        own = {pid for pid, (_, cmd) in _processes().items() if self.temp in cmd}
        _kill(_tree(own))
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    """Environment of every process these tests start: this interpreter's uqflow and binaries, a
    home inside the test's folder, the bundled models' cache where the user's is."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(ROOT),
                "UQFLOW_CACHE": os.environ.get("UQFLOW_CACHE", str(Path.home() / ".cache" / "uqflow")),
                "HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if "HF_HOME" not in env:
        env["HF_HOME"] = str(Path.home() / ".cache" / "huggingface")
    return env


@pytest.fixture(scope="module")
def ray_cluster(base_env):
    c = RayCluster(base_env)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres_server, tmp_path_factory, base_env):
    """`mlflow server` on a fresh PostgreSQL database, artifacts proxied into a temporary folder,
    MLflow's basic-auth app on (admin, and a user who may only read); yields its URL."""
    import requests

    from mlflow.server import get_app_client

    folder = tmp_path_factory.mktemp("mlflow-server")
    ini = folder / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{folder / 'auth.db'}\n"
                   f"admin_username = {ADMIN}\nadmin_password = {ADMIN_PASSWORD}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**base_env, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", postgres_server(),
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--app-name", "basic-auth", "--workers", "2"],
                            env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.time() < deadline, (folder / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, ADMIN_PASSWORD
        try:
            get_app_client("basic-auth", tracking_uri=url).create_user(READER, READER_PASSWORD)
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.fixture
def on_server(mlflow_server, tmp_path):
    """This process (and the environment of the processes it starts) logs to the server as its admin,
    in an experiment of the test's own."""
    import mlflow

    experiment = f"t{time.time_ns()}"
    login = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    with mlflow_store(tmp_path, mlflow_server, {**login, "MLFLOW_EXPERIMENT_NAME": experiment}):
        mlflow.set_experiment(experiment)
        yield experiment


def _env(base_env, **extra) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                       "MLFLOW_EXPERIMENT_NAME") if k in os.environ}
    return {**base_env, **keep, **extra}


def _grid(tmp_path, models, datasets, name="t") -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(f"name: {name}\nmodels: [{', '.join(models)}]\ndatasets: [{', '.join(datasets)}]\n")
    return f


def _cell_runs(experiment: str) -> list:
    import mlflow

    exp = mlflow.get_experiment_by_name(experiment)
    return tr.search_runs(exp.experiment_id, "tags.config_hash != ''")


def _one_finished_run_per_cell(runs, cells: int) -> None:
    finished = [r for r in runs if r.info.status == "FINISHED"]
    hashes = [r.data.tags["config_hash"] for r in finished]
    assert len(finished) == cells and len(set(hashes)) == cells, [(r.info.run_name, r.info.status) for r in runs]
    assert not [r for r in runs if r.info.status == "RUNNING"]


# --- without processes: resources, claims, bad input ------------------------------------------

def test_resources_follow_size_and_quantization():
    """GPU share from the registry's size and quantization (bf16 2, 8-bit 1, 4-bit 0.5 bytes per
    parameter, with headroom), whole GPUs beyond one; CPU cells ask for a CPU and their memory."""
    def res(name, gpus=True, device="auto", gb=80.0):
        return cluster.cell_resources(MODELS.get(name), RunConfig(model=name, device=device), gpus, gb)

    # 1.24B x 2 bytes x 1.2 + 1.5 GiB = 4.6 GB of 80 GB: 0.057, rounded up to a twentieth
    assert res("Llama-3.2-1B") == {"num_cpus": 1, "num_gpus": 0.1}
    assert res("Llama-3-8B-8bit") == {"num_cpus": 1, "num_gpus": 0.15}  # 8.03B x 1 byte: 11.2 GB
    assert res("Llama-3.1-70B-Instruct-4bit") == {"num_cpus": 1, "num_gpus": 0.55}  # 70.6B x 0.5 byte: 43.9 GB
    assert res("Llama-3.1-70B-Instruct-4bit", gb=24.0) == {"num_cpus": 1, "num_gpus": 2.0}
    cpu = res("SmolLM2-135M-Instruct", gpus=False)
    assert set(cpu) == {"num_cpus", "memory"} and 1.5 * 2**30 < cpu["memory"] < 2.5 * 2**30
    assert "num_gpus" not in res("Llama-3.2-1B", device="cpu")  # asked for a CPU: no GPU even where there are some
    assert res("Llama-3.2-1B", gpus=False, device="cuda")["num_gpus"] > 0


def test_claims_refuse_a_live_driver_and_take_over_a_stale_one(tracking, monkeypatch):
    """Of two live claims on a cell the older grid run keeps it; a claim whose heartbeat is stale
    is taken over, its run ended KILLED with the reason."""
    import mlflow

    monkeypatch.setattr(cluster, "SETTLE_S", 0.1)
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("uqflow").experiment_id
    rival = client.create_run(exp, run_name="grid:rival").info.run_id
    client.set_tag(rival, tr.CLAIMS_TAG, "aaa,bbb")
    client.set_tag(rival, tr.DRIVER_TAG, "elsewhere 1")
    client.set_tag(rival, tr.HEARTBEAT_TAG, f"{time.time():.0f}")
    mine = client.create_run(exp, run_name="grid:mine").info.run_id
    with pytest.raises(GridBusy, match=f"1 of this grid's cells are being run by another driver \\(grid run {rival}"):
        with cluster.GridClaim(mine, ["bbb", "ccc"]):
            pass
    with cluster.GridClaim(mine, ["ccc"]):  # no common cell: no conflict
        pass
    client.set_tag(rival, tr.HEARTBEAT_TAG, f"{time.time() - cluster.STALE_S - 5:.0f}")
    with cluster.GridClaim(mine, ["bbb"]):
        pass
    assert client.get_run(rival).info.status == "KILLED"
    assert "abandoned: its driver (elsewhere 1) stopped" in client.get_run(rival).data.tags[tr.ERROR_TAG]


def test_bad_ray_input_is_one_line(tracking, tmp_path, monkeypatch):
    f = _grid(tmp_path, ["SmolLM2-135M-Instruct"], ["trivia_mini"])
    t0 = time.perf_counter()
    res = invoke("grid", str(f), "--ray", f"127.0.0.1:{free_port()}")
    assert res.exit_code == 1 and "Error: cannot reach the Ray cluster at 127.0.0.1:" in res.output
    assert "Traceback" not in res.output and time.perf_counter() - t0 < 30  # not Ray's minutes of retries
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    res = invoke("grid", str(f), "--ray")
    assert res.exit_code == 1 and "pip install 'uqflow[cluster]'" in res.output
    res = invoke("grid", str(f), "--ray", "--isolate")
    assert res.exit_code == 2 and "--isolate and --ray do not go together" in res.output


# --- the cluster and the server ---------------------------------------------------------------

@pytest.mark.slow
def test_cpu_demo_grid_across_both_nodes_into_the_server(ray_cluster, on_server, base_env, tmp_path):
    """The cpu_demo grid (3 models x 2 datasets, few questions) on the two-node cluster into the
    tracking server over HTTP: one FINISHED run per cell, each linked to the grid's run, run by
    workers on both nodes; the driver prints the same lines and table as without Ray; run again,
    every cell is already done."""
    cmd = [*UQFLOW, "grid", str(ROOT / "grids" / "cpu_demo.yaml"), "--ray", ray_cluster.address, *QUICK]
    out = subprocess.run(cmd, env=_env(base_env), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[6/6]" in out.stderr and out.stdout.count("finished") == 6, out.stdout + out.stderr[-2000:]
    runs = _cell_runs(on_server)
    _one_finished_run_per_cell(runs, 6)
    import mlflow

    grid_run = mlflow.search_runs(experiment_names=[on_server], filter_string="tags.`uqflow.grid` = 'cpu_demo'",
                                  output_format="list")[0]
    assert {r.data.tags[tr.GRID_RUN_TAG] for r in runs} == {grid_run.info.run_id}
    nodes = {r.data.tags[tr.WORKER_TAG].split("(Ray node ")[1] for r in runs}
    assert len(nodes) == 2, nodes  # both nodes ran cells
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # proxied by the server
    assert "cell.log" in [a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)]
    again = subprocess.run(cmd, env=_env(base_env), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count("already done") == 6, again.stderr[-2000:]


@pytest.mark.slow
def test_sigkill_of_the_second_node_mid_cell(ray_cluster, on_server, base_env, tmp_path):
    """The second node is SIGKILLed (raylet, workers, agents) while one of its workers runs a cell:
    that run ends KILLED with the reason, the cell runs again on the head node, and the grid ends
    with exactly one FINISHED run per cell."""
    import mlflow

    ray_cluster.start_second_node()
    f = _grid(tmp_path, ["SmolLM2-135M-Instruct", "Gemma-3-270M"], ["trivia_mini"], name="kill")  # one model a node
    cmd = [*UQFLOW, "grid", str(f), "--ray", ray_cluster.address, "--set", "num_samples=8",
           "--set", "max_new_tokens=16", "--set", "n_bootstrap=20"]
    proc = subprocess.Popen(cmd, env=_env(base_env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        raylet = ray_cluster.node2_raylet()
        exp = mlflow.get_experiment_by_name(on_server)
        for r in tr.search_runs(exp.experiment_id, "attributes.status = 'RUNNING'") if exp else []:
            where = r.data.tags.get(tr.WORKER_TAG, "")
            pid = int(where.split(" pid ")[1].split()[0]) if " pid " in where else None
            if pid and pid in _tree({raylet}):  # a cell running on the second node
                ray_cluster.kill_second_node()
                killed = r.info.run_id
                break
        time.sleep(0.3)
    out, err = proc.communicate(timeout=600)
    assert killed is not None, "no cell ran on the second node: " + err[-2000:]
    assert proc.returncode == 0, err[-3000:]
    _one_finished_run_per_cell(_cell_runs(on_server), 2)
    run = mlflow.get_run(killed)
    assert run.info.status == "KILLED"
    assert run.data.tags[tr.ERROR_TAG].startswith("worker died: "), run.data.tags[tr.ERROR_TAG]
    print("killed run's reason:", run.data.tags[tr.ERROR_TAG])


@pytest.mark.slow
def test_two_drivers_at_once(ray_cluster, on_server, base_env, tmp_path):
    """Two drivers started together on one grid and server: one runs it, the other is refused in
    one line naming the first; each cell has exactly one run."""
    ray_cluster.start_second_node()
    f = _grid(tmp_path, ["SmolLM2-135M-Instruct"], ["trivia_mini", "squad_mini"], name="twice")
    cmd = [*UQFLOW, "grid", str(f), "--ray", ray_cluster.address, *QUICK]
    procs = [subprocess.Popen(cmd, env=_env(base_env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [e[-2000:] for _, e in outs]
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 1)
    errors = [ln for ln in refused.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "being run by another driver (grid run " in errors[0], refused[-2000:]
    assert "Traceback" not in refused
    print(errors[0])
    runs = _cell_runs(on_server)
    assert len(runs) == 2
    _one_finished_run_per_cell(runs, 2)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,reason", [(signal.SIGINT, 130, "KeyboardInterrupt"), (signal.SIGTERM, 143, "SIGTERM")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_on_the_driver_ends_running_cells_killed(ray_cluster, on_server, base_env, tmp_path,
                                                               signum, code, reason):
    """Ctrl-C, or SIGTERM from a scheduler, while cells run: every run ends KILLED with the signal
    that stopped the driver (Ray's ray.wait turns any interruption into a plain KeyboardInterrupt,
    which once made SIGTERM read as Ctrl-C), and the exit code is 128 + that signal."""
    import mlflow

    ray_cluster.start_second_node()
    f = _grid(tmp_path, ["SmolLM2-135M-Instruct", "Gemma-3-270M"], ["trivia_mini"], name="stop")
    cmd = [*UQFLOW, "grid", str(f), "--ray", ray_cluster.address, "--set", "num_samples=40"]
    proc = subprocess.Popen(cmd, env=_env(base_env), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        exp = mlflow.get_experiment_by_name(on_server)
        running = tr.search_runs(exp.experiment_id, "attributes.status = 'RUNNING' AND tags.config_hash != ''") if exp else []
        if running:
            break
        time.sleep(0.3)
    assert running, "no cell started"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    runs = _cell_runs(on_server)
    assert runs and all(r.info.status == "KILLED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert all(r.data.tags[tr.ERROR_TAG].startswith(f"interrupted ({reason})") for r in runs), \
        [r.data.tags[tr.ERROR_TAG] for r in runs]
    grid_run = mlflow.search_runs(experiment_names=[on_server], filter_string="tags.`uqflow.grid` = 'stop'",
                                  output_format="list")[0]
    assert grid_run.info.status == "KILLED"


@pytest.mark.slow
def test_aggregation_over_http_into_postgresql_matches_the_local_path(on_server, postgres_server, tmp_path, monkeypatch):
    """The same runs logged to the server (HTTP, proxied artifacts) and to a local SQLite tracking
    store, aggregated into PostgreSQL and into SQLite: the same rows."""
    import mlflow

    from store_fixtures import log_run
    from uqflow.store import aggregate, run_query

    cases = [("SmolLM2-135M-Instruct", "trivia_mini", 0), ("Gemma-3-270M", "squad_mini", 1),
             ("SmolLM2-135M-Instruct-8bit", "trivia_mini", 2)]
    pg = postgres_server()
    for m, d, seed in cases:
        log_run(m, d, n=25, seed=seed)
    assert all(o.action == "added" for o in aggregate(on_server, url=pg))
    local = f"sqlite:///{tmp_path / 'local-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local)
    mlflow.set_tracking_uri(local)
    mlflow.set_experiment(on_server)
    for m, d, seed in cases:
        log_run(m, d, n=25, seed=seed)
    results = f"sqlite:///{tmp_path / 'results.db'}"
    assert all(o.action == "added" for o in aggregate(on_server, url=results))
    queries = [
        "SELECT model, family, size_b, quantization, instruct, dataset, n, accuracy FROM runs ORDER BY model, dataset",
        "SELECT r.model, r.dataset, s.measure, s.auroc, s.ci_low, s.ci_high, s.aurac, s.prr FROM scores s "
        "JOIN runs r ON r.run_id = s.run_id ORDER BY r.model, r.dataset, s.measure",
        "SELECT r.model, g.example_id, g.answer, g.correct, g.g_nll, g.rw_g_nll FROM generations g "
        "JOIN runs r ON r.run_id = g.run_id ORDER BY r.model, r.dataset, g.example_id",
    ]
    for q in queries:
        over_http, here = run_query(q, pg).rows, run_query(q, results).rows
        assert len(over_http) > 0 and _rounded(over_http) == _rounded(here), q


def _rounded(rows):
    return [tuple(round(v, 9) if isinstance(v, float) else bool(v) if isinstance(v, bool) else v for v in row)
            for row in rows]


@pytest.mark.slow
def test_no_credential_reaches_rays_logs_or_the_console_and_ray_without_address_starts_its_own(
        ray_cluster, on_server, postgres_server, base_env, tmp_path):
    """A grid on `--ray` with no address, while RAY_ADDRESS names the running test cluster: the
    driver starts a cluster of its own (in its own RAY_TMPDIR) and the cell runs there. It runs as a
    user whose password holds `/#?@:`, percent-encoded inside MLFLOW_TRACKING_URI (whose login wins
    over MLFLOW_TRACKING_USERNAME/PASSWORD, which hold the admin's), with UQFLOW_RESULTS_DB holding
    a password too: no password, raw or percent-encoded, appears in Ray's session folder (its
    runtime-environment log and workers' logs included), in anything printed (MLflow's own "View
    run" line included), in the runs' params and tags, or in the cell's log. Then the store's URL
    is shown masked by `uqflow aggregate`, and a wrong password inside the URI is told as such."""
    import mlflow
    from urllib.parse import quote

    from mlflow.server import get_app_client

    host = on_server_url(_env(base_env))
    user, password, db_password = "secretive", "p/a#s?s@w:rd-9071", "d/b#p?w@x:yz-4410"
    auth = get_app_client("basic-auth", tracking_uri=host)
    with contextlib.suppress(Exception):  # made by an earlier run of this test in the module
        auth.create_user(user, password)
    auth.update_user_admin(user, True)  # may write to the admin's experiment
    secrets = [p for s in (password, db_password, ADMIN_PASSWORD) for p in (s, quote(s, safe=""), quote(s))]
    results = postgres_server().replace("://uqflow@", f"://uqflow:{quote(db_password, safe='')}@")  # trust: any password
    ray_tmp = Path(tempfile.mkdtemp(prefix="uqo"))  # short: Ray's socket paths must fit 107 characters
    try:
        f = _grid(tmp_path, ["SmolLM2-135M-Instruct"], ["trivia_mini"], name="secret")
        env = _env(base_env, RAY_TMPDIR=str(ray_tmp), RAY_ADDRESS=ray_cluster.address, UQFLOW_RESULTS_DB=results,
                   MLFLOW_TRACKING_URI=host.replace("://", f"://{user}:{quote(password, safe='')}@"))
        cmd = [*UQFLOW, "grid", str(f), "--ray", *QUICK, "--set", "num_samples=2"]
        out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert list(ray_tmp.rglob("session_*")), "no cluster of its own was started"
        runs = _cell_runs(on_server)
        _one_finished_run_per_cell(runs, 1)
        leaks = [(str(p), s) for p in ray_tmp.rglob("*") if p.is_file() and not p.is_socket()
                 for s in secrets if s.encode() in p.read_bytes()]
        assert leaks == [] and not [s for s in secrets if s in out.stdout + out.stderr], leaks
        assert any(p.name == "runtime_env_agent.log" for p in ray_tmp.rglob("*.log"))  # the log that once held it
        assert f"View run grid:secret at: {host}/#/experiments/" in out.stdout, out.stdout  # MLflow's own line
        assert f"Tracking store: http://{user}:***@" in out.stdout, out.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    grid_run = mlflow.search_runs(experiment_names=[on_server], filter_string="tags.`uqflow.grid` = 'secret'",
                                  output_format="list")[0]
    for run in [*runs, grid_run]:
        stored = repr(run.data.params) + repr(run.data.tags)
        assert not [s for s in secrets if s in stored], stored
    cell_log = Path(mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="cell.log",
                                                        dst_path=str(tmp_path / "artifacts"))).read_text()
    assert not [s for s in secrets if s in cell_log], cell_log[-2000:]
    agg = subprocess.run([*UQFLOW, "aggregate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, agg.stderr[-2000:]
    assert "resultsstorepostgresql+psycopg://uqflow:***@127.0.0.1:" in "".join(agg.stdout.split()), agg.stdout  # wrapped
    assert not [s for s in secrets if s in agg.stdout + agg.stderr]
    in_uri = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    dry = [*UQFLOW, "grid", str(f), "--dry-run"]
    ok = subprocess.run(dry, env={**in_uri, "MLFLOW_TRACKING_URI": host.replace("://", f"://{ADMIN}:{ADMIN_PASSWORD}@")},
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ADMIN_PASSWORD not in ok.stdout + ok.stderr and f"Tracking store: http://{ADMIN}:***@" in ok.stdout, ok.stdout
    assert f"Open: {host}/#/experiments/" in ok.stdout
    # a wrong password in the URI, while the variables hold a good login: the URI's is the one sent
    bad = subprocess.run(dry, env={**env, "MLFLOW_TRACKING_URI": host.replace("://", f"://{READER}:wrong%2F-pw-77@")},
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "wrong/-pw-77" not in bad.stdout + bad.stderr, bad.stderr[-2000:]
    assert "wrong%2F-pw-77" not in bad.stdout + bad.stderr
    assert (f"refused the login of user '{READER}' (wrong name or password); check the user and password in "
            "MLFLOW_TRACKING_URI") in bad.stderr, bad.stderr[-2000:]


def on_server_url(env: dict[str, str]) -> str:
    return env["MLFLOW_TRACKING_URI"].rstrip("/")


def test_a_write_without_credentials_or_permission_is_refused_in_one_line(on_server, base_env, tmp_path):
    """Without credentials, with a wrong password, and as a user who may only read the experiment:
    `uqflow run` exits non-zero with one line saying what is missing and what to do."""
    cmd = [*UQFLOW, "run", "--model", "SmolLM2-135M-Instruct", "--dataset", "trivia_mini",
           "--num-questions", "2"]
    env = _env(base_env)
    cases = {
        "needs a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD":
            {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")},
        "refused the login of user 'reader' (wrong name or password)":
            {**env, "MLFLOW_TRACKING_USERNAME": READER, "MLFLOW_TRACKING_PASSWORD": "wrong"},
        f"user 'reader' lacks write permission on experiment '{on_server}'":
            {**env, "MLFLOW_TRACKING_USERNAME": READER, "MLFLOW_TRACKING_PASSWORD": READER_PASSWORD},
    }
    for expected, case_env in cases.items():
        out = subprocess.run(cmd, env=case_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("Error:")]
        assert out.returncode == 1 and len(errors) == 1 and expected in errors[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        print(errors[0])
    import mlflow

    assert _cell_runs(on_server) == [] and mlflow.get_experiment_by_name(on_server) is not None
