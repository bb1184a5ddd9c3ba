"""Leases: which RUNNING runs a live process is still writing, and which were abandoned.

Every run uqflow starts carries a lease (``tracking.tracked_run``): the host and process id of the
process writing it (tag ``uqflow.driver``, "host pid") and a heartbeat (tag ``uqflow.heartbeat``,
unix time) that a daemon thread (``tracking.Heartbeat``) refreshes every third of the lease (30 s)
while the run is open. The lease lasts ``tracking.lease_seconds()``: 90 s, or ``UQFLOW_LEASE_SECONDS``.

A RUNNING run is *abandoned* when its heartbeat is older than the lease, or when its writer is on
this host and its process no longer exists (``kill -9``, a crash, an out-of-memory kill). Nothing
else ends such a run, so the next command that meets it closes it: KILLED, with a reason naming the
vanished process and when it was last seen. The commands that meet runs: ``uqflow run`` (the runs of
its own configuration), a grid (the runs of its cells) and ``uqflow aggregate`` (every uqflow run it
searches). A RUNNING run with a fresh heartbeat belongs to a live process and is left alone.

A local grid shares its cells with another live process instead of repeating them. Before a cell's
run does any work it claims the cell (:func:`claim`): its run already carries the cell's
configuration hash and heartbeat; it reads the cell's other runs, waits SETTLE_S seconds and reads
them again. If one of them FINISHED, or one that is live started earlier (start time, then run id),
the cell is another process's: this run ends KILLED ("another process runs this cell") and the grid
waits for that process (grid.py). Two claimants reach the same verdict, because a run that started
earlier than this one was visible by the second read, as long as the hosts' clocks differ by less
than SETTLE_S. A Ray driver claims its grid's cells as a whole instead (``cluster.GridClaim``, the
same tags on the grid's run), so its cells are not claimed one by one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime

from uqflow import tracking
from uqflow.errors import CellTaken

log = logging.getLogger(__name__)

#: seconds between a claim's two reads of the cell's runs: longer than a run takes from its start
#: time to its tags being visible in the store, plus the hosts' clock difference
SETTLE_S = 2.0

#: how a run given up to another process ends (its error tag starts so)
TAKEN = "another process runs this cell"


def last_seen(run) -> float:
    """Unix time of a run's last sign of life: its heartbeat, else its start."""
    try:
        return float(run.data.tags[tracking.HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return (run.info.start_time or 0) / 1000


def _split(who: str) -> tuple[str, int | None]:
    host, _, pid = who.rpartition(" ")
    return host, int(pid) if pid.isdigit() and int(pid) > 0 else None


def writer_gone(who: str) -> bool:
    """True only for a writer known to be gone: its process no longer exists on this very host."""
    host, pid = _split(who)
    if pid is None or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process; a number no process has
        return False
    return False


def abandoned(run, now: float | None = None) -> bool:
    """Whether a RUNNING run's writer has stopped: its heartbeat is older than the lease, or its
    process is gone from this host. A run that has ended is not abandoned."""
    if run.info.status != "RUNNING":
        return False
    now = time.time() if now is None else now
    return now - last_seen(run) > tracking.lease_seconds() or writer_gone(run.data.tags.get(tracking.DRIVER_TAG, ""))


def describe(run, now: float | None = None) -> str:
    """A run's writer and its last sign of life, for messages: "process 12 on host, heartbeat 3 s ago"."""
    now = time.time() if now is None else now
    host, pid = _split(run.data.tags.get(tracking.DRIVER_TAG, ""))
    who = f"process {pid} on {host}" if pid is not None else "an unknown process"
    return f"{who}, heartbeat {max(0.0, now - last_seen(run)):.0f} s ago"


def abandoned_reason(run, now: float | None = None) -> str:
    """Why an abandoned run is closed: its vanished process and when it was last seen."""
    now = time.time() if now is None else now
    host, pid = _split(run.data.tags.get(tracking.DRIVER_TAG, ""))
    who = f"process {pid} on {host}" if pid is not None else "its process"
    seen = last_seen(run)
    at = datetime.fromtimestamp(seen, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    why = ("no longer exists" if writer_gone(run.data.tags.get(tracking.DRIVER_TAG, ""))
           else f"sent no heartbeat for {now - seen:.0f} s (lease {tracking.lease_seconds():g} s)")
    return f"abandoned: {who} {why}; last seen {at}"


def close(run, reason: str | None = None) -> bool:
    """Mark a run KILLED with ``reason`` (by default why it was abandoned), unless it ended
    meanwhile; returns whether it was closed."""
    import mlflow

    client = mlflow.MlflowClient()
    current = client.get_run(run.info.run_id)  # read again: it may have ended since it was searched
    if current.info.status != "RUNNING":
        return False
    reason = reason or abandoned_reason(current)
    tracking.tag_error(run.info.run_id, reason)
    client.set_terminated(run.info.run_id, "KILLED")
    log.warning("run %s (%s) was left RUNNING: marked KILLED (%s)", run.info.run_id,
                run.info.run_name or "unnamed", reason)
    return True


def close_abandoned(runs: list) -> list:
    """Close every abandoned run of ``runs``; returns those closed."""
    return [r for r in runs if abandoned(r) and close(r)]


def close_abandoned_in(experiment_ids: list[str]) -> list:
    """Close the abandoned uqflow runs (those with a heartbeat or uqflow's version tag) of these
    experiments; returns those closed. Runs of other tools are never touched, and a run this user
    may not write (a tracking server that grants read permission only) is left as it is."""
    from mlflow.exceptions import MlflowException

    if not experiment_ids:
        return []
    running = tracking.search_runs(experiment_ids, "attributes.status = 'RUNNING'")
    closed = []
    for r in running:
        if (tracking.HEARTBEAT_TAG in r.data.tags or tracking.VERSION_TAG in r.data.tags) and abandoned(r):
            try:
                if close(r):
                    closed.append(r)
            except MlflowException as e:
                log.warning("run %s was abandoned but the tracking store refused to close it (%s)", r.info.run_id,
                            getattr(e, "error_code", "") or type(e).__name__)
    return closed


def _order(run) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def claim(run, identity: str, *, exclusive: bool) -> None:
    """Before the run ``run`` of the configuration ``identity`` does any work: close the abandoned
    runs of that configuration. ``exclusive`` (a grid's cell): raise :class:`CellTaken` if the cell
    is another process's, a run of it FINISHED or a live one started earlier (the module's
    docstring says why two reads SETTLE_S apart decide it); otherwise (a lone ``uqflow run``) a live
    run of the same configuration is only warned about."""
    def others() -> list:
        found = tracking.search_runs(run.info.experiment_id, f"tags.config_hash = '{identity}'")
        return [r for r in found if r.info.run_id != run.info.run_id and tracking.SOURCE_RUN_TAG not in r.data.tags]

    with tracking.reaching_store():
        rivals = others()
        close_abandoned(rivals)
        if not exclusive:
            for r in rivals:
                if r.info.status == "RUNNING" and not abandoned(r):
                    log.warning("another process runs the same configuration: run %s (%s)", r.info.run_id, describe(r))
            return
        _refuse_if_taken(run, rivals)
        time.sleep(SETTLE_S)
        _refuse_if_taken(run, others())


def _refuse_if_taken(run, rivals: list) -> None:
    for r in rivals:
        if r.info.status == "FINISHED":
            raise CellTaken(f"{TAKEN}: its run {r.info.run_id} finished it")
    live = sorted((r for r in rivals if r.info.status == "RUNNING" and not abandoned(r)
                   and _order(r) < _order(run)), key=_order)
    if live:
        raise CellTaken(f"{TAKEN} (run {live[0].info.run_id}, {describe(live[0])})")
