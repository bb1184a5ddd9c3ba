import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a server a test starts, or one it
    expects to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Tiers by resource, declared once here from what a test uses, so that `make test` runs what a
#: developer needs between commits and `make test-all` (CI) runs every test:
#:   server      a PostgreSQL server, a headless browser, the MLflow UI or llama.cpp's server (fixtures)
#:   subprocess  another Python process: the command line as a user runs it, signals, exit codes
#:   cluster     a Ray cluster and an MLflow server (tests/test_cluster.py)
#:   study       the offline rehearsal of the reference study (its own cache; make test-study)
#: `slow` (a real model or a whole experiment in this process) is marked by hand where it applies.
SERVER_FIXTURES = {"postgres_server", "browser", "llama_server"}
SUBPROCESS_FIXTURES = {"venv_env"}
SUBPROCESS_CALLS = ("subprocess.", "Popen(", "sys.executable", "*UQFLOW", "start_mlflow_ui(")
CLUSTER_MODULES = {"test_cluster.py"}


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if item.path.name in CLUSTER_MODULES:
            item.add_marker(pytest.mark.cluster)
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        try:
            body = inspect.getsource(item.function)
        except (OSError, TypeError):
            body = ""
        if names & SUBPROCESS_FIXTURES or any(call in body for call in SUBPROCESS_CALLS) \
                or item.get_closest_marker("subprocess_helper"):
            item.add_marker(pytest.mark.subprocess)


@pytest.fixture
def tracking(tmp_path):
    """A fresh MLflow tracking store (SQLite) for one test; its URI is returned. The test runs in
    its temporary folder, where MLflow puts the store's default artifact root (./mlruns)."""
    from store_fixtures import mlflow_store

    with mlflow_store(tmp_path) as uri:
        yield uri


@pytest.fixture(scope="session")
def smollm():
    from uqflow.models import MODELS, load_model

    return load_model(MODELS.get("SmolLM2-135M-Instruct"), "cpu")


@pytest.fixture(scope="session")
def gemma():
    from uqflow.models import MODELS, load_model

    return load_model(MODELS.get("Gemma-3-270M"), "cpu")


#: the shared run: SmolLM2 on trivia_mini, 3 sampled answers per question clustered by the model
#: itself asked as the entailment judge (the LLM path: its choice among label words, its cache)
FINISHED_RUN = {"num_samples": 10, "max_new_tokens": 24, "n_bootstrap": 100, "num_generations": 3,
                "entailment": "llm:SmolLM2-135M-Instruct"}


@dataclass(frozen=True)
class FinishedRun:
    """A real run, FINISHED in an MLflow store of its own (see :func:`finished_run`)."""

    run_id: str
    config: Any  # its RunConfig
    store: Path  # its mlflow.db (the artifacts beside it)
    cache: Path  # the judges' replies it cached
    frame: Any  # its generations table, as the run returned it


@pytest.fixture(scope="session")
def finished_run(smollm, tmp_path_factory) -> FinishedRun:
    """One real run with sampling, made once per session and read by the tests of what a finished
    run holds, rescoring, aggregation and the report (through :func:`sampled_run`, which gives each
    test a copy of its store)."""
    from uqflow.config import RunConfig
    from uqflow.experiment import run_experiment

    from store_fixtures import mlflow_store

    root = tmp_path_factory.mktemp("finished-run")
    cfg = RunConfig(**FINISHED_RUN)
    with mlflow_store(root), pytest.MonkeyPatch.context() as mp:
        mp.setattr("uqflow.experiment.cache_root", lambda: root / "cache")
        result = run_experiment(cfg, lm=smollm)
    return FinishedRun(result.run_id, cfg, root / "mlflow.db", root / "cache", result.frame)


@pytest.fixture
def sampled_run(finished_run, tracking, tmp_path, monkeypatch) -> FinishedRun:
    """The session's finished run in this test's own MLflow store (a copy: what a test adds, such
    as a rescored run, stays its own) and with a copy of the judges' cache it filled."""
    shutil.copy(finished_run.store, tmp_path / "mlflow.db")
    shutil.copytree(finished_run.cache, tmp_path / "cache")
    monkeypatch.setattr("uqflow.experiment.cache_root", lambda: tmp_path / "cache")
    return finished_run


@pytest.fixture
def venv_env():
    """Environment for subprocesses: this interpreter's bin folder first on PATH."""
    env = dict(os.environ)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _postgres_bin() -> Path | None:
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's package) started on loopback for the test session; yields
    a function that creates a fresh database and returns its SQLAlchemy URL.

    `.ci/run` installs the package; where it is missing locally these tests are skipped, unless
    UQFLOW_REQUIRE_POSTGRES=1 (set by CI), when they fail instead.
    """
    import shutil
    import subprocess
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("UQFLOW_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql package")
        pytest.skip("PostgreSQL server not installed (Debian package postgresql); CI installs it")
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="uqflow-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "uqflow", "--no-sync", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "server.log"), "-w", "-o",
        f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -F", "start")
    counter = iter(range(10**6))

    def new_database() -> str:
        name = f"t{next(counter)}"
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "uqflow", name)
        return f"postgresql+psycopg://uqflow@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's chromium and chromium-driver packages) driven through selenium
    for the test session, with a fresh temporary profile; yields the selenium driver.

    Where the browser, its driver or selenium is missing these tests are skipped, unless
    UQFLOW_REQUIRE_CHROMIUM=1, when they fail instead.
    """
    import shutil
    import tempfile

    from browser import CHROMEDRIVER, CHROMIUM, start_chromium

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    if missing:
        if os.environ.get("UQFLOW_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"headless browser not found ({', '.join(missing)}); install Debian's chromium and "
                        "chromium-driver packages and selenium")
        pytest.skip(f"headless browser not installed ({', '.join(missing)} missing; Debian packages chromium "
                    "and chromium-driver, Python package selenium)")
    profile = tempfile.mkdtemp(prefix="uqflow-chromium-")
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _untracked(root: Path) -> set[str]:
    """Files in the repository that git does not track (ignored ones included), less the
    environment's own: the virtualenv, caches and the installed package's metadata."""
    import subprocess

    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=root,
                         capture_output=True, text=True)
    if out.returncode:  # not a git checkout (an installed copy of the tests): nothing to compare
        return set()
    own = (".venv/", ".pytest_cache/", "uqflow.egg-info/", ".study-cache/", ".whl/", ".gl/", ".polygraph-venv/")
    paths = {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}
    # a new source file is someone writing code, not a test's output
    return {p for p in paths if not p.startswith(own) and "__pycache__/" not in p and not p.endswith((".py", ".md"))}


@pytest.fixture(scope="session", autouse=True)
def repository_stays_clean():
    """Tests write only inside their temporary folders: a run's artifacts, a results store or a
    report that lands in the repository fails the session (reported as an error at its end)."""
    before = _untracked(ROOT)
    yield
    new = sorted(_untracked(ROOT) - before)
    assert not new, f"the tests wrote into the repository: {', '.join(new[:10])}"
