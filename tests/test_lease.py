"""Leases: a RUNNING run with a fresh heartbeat is left to its process; one whose process vanished
(a stale heartbeat, or a process gone from this host) is closed KILLED by the next command that
meets it; two grids on one experiment share their cells instead of running them twice."""

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.entities import RunTag

from commands import UQFLOW
from uqflow import lease
from uqflow import tracking as tr
from uqflow.errors import CellTaken, ConfigError

HOST = socket.gethostname()


def _run(status="RUNNING", heartbeat=None, writer=None, start=None):
    """A run as MLflow's search returns it, without a store."""
    tags = {}
    if heartbeat is not None:
        tags[tr.HEARTBEAT_TAG] = f"{heartbeat:.0f}"
    if writer is not None:
        tags[tr.DRIVER_TAG] = writer
    start = time.time() if start is None else start
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=int(start * 1000), run_id="r1", run_name="x"),
                           data=SimpleNamespace(tags=tags))


def _dead_pid() -> int:
    """A process id that no process of this host has."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_a_fresh_heartbeat_is_live_and_a_stale_one_abandoned(monkeypatch):
    monkeypatch.setenv(tr.LEASE_ENV, "30")
    now = time.time()
    me = f"{HOST} {os.getpid()}"
    assert not lease.abandoned(_run(heartbeat=now - 5, writer=me), now)
    assert lease.abandoned(_run(heartbeat=now - 31, writer=me), now)  # alive, but silent past its lease
    assert not lease.abandoned(_run(heartbeat=now - 29, writer="other-host 1"), now)  # another host: the heartbeat decides
    assert lease.abandoned(_run(heartbeat=now - 31, writer="other-host 1"), now)
    assert not lease.abandoned(_run("FINISHED", heartbeat=now - 1000), now)  # an ended run is nobody's to close
    assert not lease.abandoned(_run(start=now - 10), now)  # no heartbeat (an older uqflow): its start counts
    assert lease.abandoned(_run(start=now - 100), now)
    reason = lease.abandoned_reason(_run(heartbeat=now - 45, writer="other-host 7"), now)
    assert reason.startswith("abandoned: process 7 on other-host sent no heartbeat for 45 s (lease 30 s); last seen ")
    assert reason.endswith(" UTC")


def test_a_writer_gone_from_this_host_is_abandoned_at_once(monkeypatch):
    monkeypatch.setenv(tr.LEASE_ENV, "3600")
    now, pid = time.time(), _dead_pid()
    run = _run(heartbeat=now, writer=f"{HOST} {pid}")
    assert lease.writer_gone(f"{HOST} {pid}") and lease.abandoned(run, now)
    assert f"abandoned: process {pid} on {HOST} no longer exists; last seen " in lease.abandoned_reason(run, now)
    assert not lease.writer_gone(f"{HOST} {os.getpid()}")  # this process
    assert not lease.writer_gone(f"elsewhere {pid}")  # another host's process cannot be looked up
    assert not lease.writer_gone("") and not lease.writer_gone(f"{HOST} 0") and not lease.writer_gone(f"{HOST} x")


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_lease_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv(tr.LEASE_ENV, value)
    with pytest.raises(ConfigError, match="UQFLOW_LEASE_SECONDS must be a positive number of seconds"):
        tr.lease_seconds()


def _beats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("uqflow-heartbeat")]


def test_a_run_beats_while_open_and_stops_on_every_exit(tracking, monkeypatch):
    """The heartbeat is refreshed while the run is open, stops however the run ends, and a write
    that fails never fails the run."""
    monkeypatch.setenv(tr.LEASE_ENV, "0.6")  # a beat every 0.2 s
    with tr.tracked_run("beating", {"config_hash": "h1"}) as run:
        first = mlflow.get_run(run.info.run_id).data.tags
        assert first[tr.DRIVER_TAG] == f"{HOST} {os.getpid()}"
        time.sleep(1.5)
        assert float(mlflow.get_run(run.info.run_id).data.tags[tr.HEARTBEAT_TAG]) > float(first[tr.HEARTBEAT_TAG])
        assert len(_beats()) == 1
    assert not _beats() and mlflow.get_run(run.info.run_id).info.status == "FINISHED"

    with pytest.raises(RuntimeError):
        with tr.tracked_run("failing", {}) as run:
            raise RuntimeError("boom")
    assert not _beats() and mlflow.get_run(run.info.run_id).info.status == "FAILED"

    real = mlflow.MlflowClient.set_tag

    def flaky(self, run_id, key, value, *args, **kwargs):
        if key == tr.HEARTBEAT_TAG:
            raise OSError("the store went away for a moment")
        return real(self, run_id, key, value, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "set_tag", flaky)
    with tr.tracked_run("unheard", {}, active=False) as run:
        time.sleep(0.8)
    assert not _beats() and mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def _other_run(exp: str, identity: str, *, age: float = 0.0, writer: str | None = None, status: str = "RUNNING"):
    """A run of the configuration ``identity`` that another process started ``age`` seconds ago."""
    client = mlflow.MlflowClient()
    start = int((time.time() - age - 1) * 1000)
    run = client.create_run(exp, start_time=start, run_name="other",
                            tags={"config_hash": identity, tr.HEARTBEAT_TAG: f"{time.time() - age:.0f}",
                                  tr.DRIVER_TAG: writer or f"elsewhere {os.getpid()}"})
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_a_claim_gives_a_cell_up_to_a_live_process_and_closes_an_abandoned_one(tracking, monkeypatch):
    monkeypatch.setattr(lease, "SETTLE_S", 0.05)
    monkeypatch.setenv(tr.LEASE_ENV, "30")
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("uqflow").experiment_id

    live = _other_run(exp, "h-live")
    with pytest.raises(CellTaken, match=f"another process runs this cell \\(run {live}, process"):
        with tr.tracked_run("mine", {"config_hash": "h-live"}, active=False) as mine:
            lease.claim(mine, "h-live", exclusive=True)
    assert client.get_run(mine.info.run_id).info.status == "KILLED"
    assert client.get_run(mine.info.run_id).data.tags[tr.ERROR_TAG].startswith(lease.TAKEN)
    assert client.get_run(live).info.status == "RUNNING"  # left to its process

    with tr.tracked_run("lone", {"config_hash": "h-live"}, active=False) as lone:
        lease.claim(lone, "h-live", exclusive=False)  # a lone `uqflow run` is only warned
    assert client.get_run(lone.info.run_id).info.status == "FINISHED"

    stale = _other_run(exp, "h-stale", age=100)
    gone = _other_run(exp, "h-stale", writer=f"{HOST} {_dead_pid()}")
    with tr.tracked_run("mine", {"config_hash": "h-stale"}, active=False) as mine:
        lease.claim(mine, "h-stale", exclusive=True)
    assert client.get_run(mine.info.run_id).info.status == "FINISHED"
    for run_id, why in ((stale, "sent no heartbeat for 10"), (gone, "no longer exists")):
        closed = client.get_run(run_id)
        assert closed.info.status == "KILLED" and why in closed.data.tags[tr.ERROR_TAG], closed.data.tags

    done = _other_run(exp, "h-done", status="FINISHED")
    with pytest.raises(CellTaken, match=f"its run {done} finished it"):
        with tr.tracked_run("late", {"config_hash": "h-done"}, active=False) as late:
            lease.claim(late, "h-done", exclusive=True)


def test_cell_states_tell_a_live_run_from_an_abandoned_one(tracking, tmp_path, monkeypatch):
    """A grid leaves a cell that another live process runs to it, and closes a run whose process is
    gone (before: every RUNNING run of a pending cell was marked KILLED and run again)."""
    from uqflow.grid import cell_states, checked_cells, close_abandoned, load_grid

    monkeypatch.setenv(tr.LEASE_ENV, "30")
    f = tmp_path / "g.yaml"
    f.write_text("name: t\nmodels: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini, squad_mini]\n")
    cells = checked_cells(load_grid(f))
    exp = mlflow.set_experiment("uqflow").experiment_id
    live = _other_run(exp, cells[0].identity)
    gone = _other_run(exp, cells[1].identity, writer=f"{HOST} {_dead_pid()}")
    states = cell_states(cells)
    assert [s.state for s in states] == ["running", "pending"]
    assert states[0].run_id == live and "another process: process" in states[0].error
    close_abandoned(states, claimed=False)
    client = mlflow.MlflowClient()
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(gone).info.status == "KILLED"
    assert "no longer exists" in client.get_run(gone).data.tags[tr.ERROR_TAG]


def test_aggregate_closes_the_abandoned_runs_it_meets(tracking, tmp_path, monkeypatch):
    from uqflow.store.aggregation import aggregate

    monkeypatch.setenv(tr.LEASE_ENV, "30")
    exp = mlflow.set_experiment("uqflow").experiment_id
    client = mlflow.MlflowClient()
    live, stale = _other_run(exp, "h1"), _other_run(exp, "h2", age=100)
    foreign = client.create_run(exp, start_time=int((time.time() - 1000) * 1000)).info.run_id  # another tool's run
    aggregate(url=f"sqlite:///{tmp_path / 'results.db'}")
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(foreign).info.status == "RUNNING"


def _one_cell_grid(tmp_path, dataset="trivia_mini"):
    from uqflow.grid import checked_cells, load_grid

    f = tmp_path / "g.yaml"
    f.write_text(f"name: t\nmodels: [SmolLM2-135M-Instruct]\ndatasets: [{dataset}]\n"
                 "settings: {num_samples: 3, max_new_tokens: 8, n_bootstrap: 20}\n")
    return load_grid(f), checked_cells(load_grid(f))[0]


def test_a_grid_waits_for_a_cell_another_process_runs_and_counts_it_done(tracking, tmp_path, monkeypatch, caplog):
    """A cell whose run another live process writes is not run again: the grid waits, saying so,
    and counts the cell done once that run FINISHED (no model is loaded here)."""
    from uqflow.grid import run_grid

    monkeypatch.setenv(tr.LEASE_ENV, "3")
    grid, cell = _one_cell_grid(tmp_path)
    exp = mlflow.set_experiment("uqflow").experiment_id
    other = _other_run(exp, cell.identity)
    client = mlflow.MlflowClient()

    def other_process():
        with tr.Heartbeat(other, 0.2):
            time.sleep(4)
        client.log_metric(other, "accuracy", 0.5)
        client.set_terminated(other, "FINISHED")

    worker = threading.Thread(target=other_process)
    worker.start()
    caplog.set_level("INFO", logger="uqflow")
    [state] = run_grid(grid)
    worker.join()
    assert state.state == "done" and state.run_id == other and state.metrics == {"accuracy": 0.5}
    assert "waiting for SmolLM2-135M-Instruct x trivia_mini: another process:" in caplog.text
    assert [r.info.run_id for r in _cell_runs()] == [other]  # nothing of its own was started


@pytest.mark.slow
@pytest.mark.subprocess_helper  # --isolate: the cell in a process of its own
def test_an_isolated_cell_left_to_a_process_that_goes_silent_is_taken_over(tracking, tmp_path, monkeypatch):
    """The cell's process gives the cell up to a live run (KILLED, "another process runs this
    cell"); once that run's heartbeat stops for longer than the lease, the grid closes it and runs
    the cell itself."""
    from uqflow.grid import run_grid

    monkeypatch.setenv(tr.LEASE_ENV, "3")
    grid, cell = _one_cell_grid(tmp_path)
    exp = mlflow.set_experiment("uqflow").experiment_id
    client = mlflow.MlflowClient()
    other = client.create_run(exp, start_time=int((time.time() - 1) * 1000), run_name="other").info.run_id

    def other_process():
        """Claims the cell once the grid has found it pending (the grid's run exists), so the cell's
        process finds it taken; beats until the cell is given up to it, then falls silent."""
        deadline = time.time() + 300
        while time.time() < deadline and not tr.search_runs(exp, f"tags.`{tr.GRID_TAG}` = 't'"):
            time.sleep(0.2)
        client.log_batch(other, tags=[RunTag("config_hash", cell.identity), RunTag(tr.DRIVER_TAG, "elsewhere 1"),
                                      RunTag(tr.HEARTBEAT_TAG, f"{time.time():.0f}")])
        with tr.Heartbeat(other, 0.2):
            while time.time() < deadline and not any(
                    r.data.tags.get(tr.ERROR_TAG, "").startswith(lease.TAKEN) for r in _cell_runs()):
                time.sleep(0.5)

    worker = threading.Thread(target=other_process)
    worker.start()
    [state] = run_grid(grid, isolate=True)
    worker.join()
    assert state.state == "finished", state
    runs = {r.info.run_id: r for r in _cell_runs()}
    assert runs[state.run_id].info.status == "FINISHED"
    assert runs[other].info.status == "KILLED" and "sent no heartbeat for" in runs[other].data.tags[tr.ERROR_TAG]
    given_up = [r for r in runs.values() if r.info.run_id not in (other, state.run_id)]
    assert len(given_up) == 1 and given_up[0].data.tags[tr.ERROR_TAG].startswith(f"{lease.TAKEN} (run {other}")


# --- real processes -----------------------------------------------------------------------------

QUICK = ("--set", "num_samples=4", "--set", "max_new_tokens=8", "--set", "n_bootstrap=20")


def _cell_runs() -> list:
    exp = mlflow.get_experiment_by_name("uqflow")
    return tr.search_runs(exp.experiment_id, "tags.config_hash != ''") if exp else []


@pytest.mark.slow
def test_two_grids_at_once_share_their_cells(tracking, tmp_path, venv_env):
    """Two `uqflow grid` processes started together on one experiment: both exit 0 and each cell has
    exactly one FINISHED run (before: both ran every cell, or one marked the other's live run
    KILLED and ran it again)."""
    f = tmp_path / "grid.yaml"
    f.write_text("name: shared\nmodels: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini, squad_mini]\n")
    env = {**venv_env, tr.LEASE_ENV: "15"}
    mlflow.set_experiment("uqflow")  # the store exists: two processes creating it at once race on its schema
    cmd = [*UQFLOW, "grid", str(f), *QUICK]
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    runs = _cell_runs()
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["dataset"] for r in finished) == ["squad_mini", "trivia_mini"], \
        [(r.info.run_name, r.info.status, r.data.tags.get(tr.ERROR_TAG)) for r in runs]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    others = [r for r in runs if r.info.status != "FINISHED"]
    assert all(r.data.tags[tr.ERROR_TAG].startswith(lease.TAKEN) for r in others), \
        [r.data.tags.get(tr.ERROR_TAG) for r in others]


@pytest.mark.slow
def test_a_lone_run_killed_by_sigkill_is_closed_by_the_next_run(tracking, tmp_path, venv_env):
    """`kill -9` of `uqflow run` leaves its run RUNNING; the next `uqflow run` of the same
    configuration closes it KILLED, naming the vanished process, and then finishes its own."""
    env = {**venv_env, tr.LEASE_ENV: "6"}
    cmd = [*UQFLOW, "run", "--model", "SmolLM2-135M-Instruct", "--dataset", "trivia_mini", *QUICK]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and proc.poll() is None:
        running = [r for r in _cell_runs() if r.info.status == "RUNNING"]
        if running:
            killed = running[0].info.run_id
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    proc.wait(timeout=30)
    assert killed is not None, "the run finished before it could be killed"
    assert mlflow.get_run(killed).info.status == "RUNNING"  # nothing else ends it

    out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    closed = mlflow.get_run(killed)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[tr.ERROR_TAG].startswith(f"abandoned: process {proc.pid} on {HOST} ")
    assert "last seen" in closed.data.tags[tr.ERROR_TAG]
    assert sorted(r.info.status for r in _cell_runs()) == ["FINISHED", "KILLED"]
