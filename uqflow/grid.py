"""A study as one resumable command: every model x dataset cell of a grid file.

One parent MLflow run per invocation, one child run per cell. A cell whose configuration hash
already has a FINISHED run in the experiment is skipped, so after any interruption (even
``kill -9``) the same command completes what is left without duplicating anything. A failing cell
ends FAILED with its error and the grid goes on. Cells run in one process, each model loaded once
for all its datasets and freed before the next; ``isolate`` runs each cell in its own process, and
a ``runner`` (``uqflow.cluster.RayCells``) runs them on a Ray cluster.

Two grids on one experiment share the work (``uqflow.lease``): a cell whose run another live
process is writing (a fresh heartbeat) is left to it. The grid runs its other cells first, then
waits for those, polling every few seconds: a cell that FINISHED there is done here too; one that
ended FAILED or KILLED there, or whose process stopped (its lease expired), is taken over. Each
cell's run claims its cell before it loads anything, so two grids that start the same cell at the
same moment do not both run it. A run left RUNNING by a vanished process is closed (KILLED, with
the reason) before its cell runs again.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uqflow import lease, tracking
from uqflow.config import RunConfig
from uqflow.yamlfile import read_yaml
from uqflow.errors import CellTaken, ConfigError, Terminated, UqflowError, clip, raise_if_stopped

if TYPE_CHECKING:
    from uqflow.checks import Problem

log = logging.getLogger(__name__)

_KEYS = {"name", "description", "models", "datasets", "settings"}


@dataclass(frozen=True)
class Grid:
    """A grid file: models x datasets with shared settings."""

    name: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def cells(self, overrides: dict[str, Any] | None = None) -> list[RunConfig]:
        """One configuration per cell, model-major (a model's cells are adjacent)."""
        values = {**self.settings, **(overrides or {})}
        return [RunConfig.from_strings({**values, "model": m, "dataset": d}) for m in self.models for d in self.datasets]


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid file (YAML, data only)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {p} does not exist (grids in this project: grids/*.yaml)")
    data = read_yaml(p, "grid file", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with keys models, datasets, settings")
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {clip(', '.join(sorted(map(str, unknown))))}; known: {', '.join(sorted(_KEYS))}")
    for key in ("models", "datasets"):
        v = data.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise ConfigError(f"{p}: {key} must be a non-empty list of names")
        twice = sorted({x for x in v if v.count(x) > 1})
        if twice:
            raise ConfigError(f"{p}: {key} lists {clip(', '.join(map(repr, twice)))} more than once")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{p}: settings must be a mapping of configuration fields")
    for key in ("model", "dataset"):
        if key in settings:
            raise ConfigError(f"{p}: settings.{key} is set by the grid's {key}s list")
    name = data.get("name") or p.stem
    if not isinstance(name, str):
        raise ConfigError(f"{p}: name must be text, got {type(name).__name__}")
    grid = Grid(name, tuple(data["models"]), tuple(data["datasets"]), settings)
    try:
        grid.cells()
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return grid


@dataclass(frozen=True)
class Cell:
    """One model x dataset cell: its configuration, its identity (the configuration hash its runs
    carry, experiment.run_identity) and what this machine lacks to run it (checks.Problem records,
    each shared by every cell it blocks)."""

    config: RunConfig
    identity: str
    needs: tuple[Problem, ...] = ()
    resolved: tuple[Any, Any] | None = field(default=None, compare=False)  # (ModelSpec, LoadedDataset) when runnable


@dataclass
class CellState:
    """A cell and where it stands: done | failed | pending | running (another live process writes
    its run) in the tracking store, or finished | error after this invocation ran it."""

    cell: Cell
    state: str
    run_id: str = ""
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    running: list = field(default_factory=list, repr=False)  # its RUNNING runs, as last read (MLflow Run)

    @property
    def config(self) -> RunConfig:
        return self.cell.config

    @property
    def needs(self) -> tuple[Problem, ...]:
        return self.cell.needs


def checked_cells(grid: Grid, overrides: dict[str, Any] | None = None, *, dry_run: bool = False) -> list[Cell]:
    """The grid's cells, each checked as a run would check it (uqflow.checks) before anything
    starts. A mistake (an unknown name, a malformed dataset file) stops the grid at once; what a
    cell needs of this machine (a model or hub dataset not cached offline, a GPU) stops it too or,
    in a dry run, is returned with each cell, so a dry run works offline. Either way the error
    names every distinct problem once, with the cells it blocks (checks.Blocked)."""
    from uqflow.checks import check_grid
    from uqflow.experiment import run_identity

    found = check_grid(grid.cells(overrides), grid.name)
    if found.mistakes or (found.needs and not dry_run):
        raise found.error()
    return [Cell(c.config, run_identity(c.config, c.dataset.fingerprint if c.dataset else None, c.spec), c.problems,
                 None if c.problems else (c.spec, c.dataset)) for c in found.cells]


#: up to this many cells a grid's runs are looked up cell by cell (a few runs of a large shared
#: experiment); beyond it, the experiment's runs that carry a configuration hash in one paged search
SEARCH_PER_CELL = 50


def cell_states(cells: list[Cell]) -> list[CellState]:
    """Each cell's state in the tracking store: done (a FINISHED run with its identity), running
    (another live process writes its run: uqflow.lease), failed (its latest run FAILED or KILLED) or
    pending. A run given up to another process (lease.TAKEN) says nothing of how the cell went."""
    import mlflow

    runs: dict[str, list] = {}
    identities = {c.identity for c in cells}
    with tracking.reaching_store():
        exp = mlflow.get_experiment_by_name(tracking.experiment_name())
        if exp is not None and len(identities) <= SEARCH_PER_CELL:
            for h in sorted(identities):  # tag filters take no IN (...)
                runs[h] = tracking.search_runs(exp.experiment_id, f"tags.config_hash = '{h}'")
        elif exp is not None:  # a large grid: one paged search instead of a round trip per cell
            for r in tracking.search_runs(exp.experiment_id, "tags.config_hash != ''"):
                h = r.data.tags.get("config_hash")
                if h in identities:
                    runs.setdefault(h, []).append(r)
    out = []
    for c in cells:
        mine = sorted(runs.get(c.identity, []), key=lambda r: r.info.start_time or 0)
        done = [r for r in mine if r.info.status == "FINISHED" and tracking.SOURCE_RUN_TAG not in r.data.tags]
        running = [r for r in mine if r.info.status == "RUNNING"]
        live = [r for r in running if not lease.abandoned(r)]
        tried = [r for r in mine if not r.data.tags.get(tracking.ERROR_TAG, "").startswith(lease.TAKEN)] or mine
        if done:
            out.append(CellState(c, "done", done[-1].info.run_id, metrics=tracking.run_metrics(done[-1])))
        elif live:
            out.append(CellState(c, "running", live[0].info.run_id, f"another process: {lease.describe(live[0])}",
                                 running=running))
        elif tried and tried[-1].info.status in ("FAILED", "KILLED"):
            out.append(CellState(c, "failed", tried[-1].info.run_id, tried[-1].data.tags.get(tracking.ERROR_TAG, ""),
                                 running=running))
        else:
            out.append(CellState(c, "pending", tried[-1].info.run_id if tried else "", running=running))
    return out


def close_abandoned(states: list[CellState], reason: str = "abandoned: the process running it stopped", *,
                    claimed: bool = True) -> None:
    """Close the runs that cells not done left RUNNING, before the cells run again: each run whose
    process is gone (uqflow.lease) is marked KILLED with its process and when it was last seen.
    ``claimed``: the caller holds the cells' claim (a Ray driver, cluster.GridClaim), so a run that
    still looks live is abandoned too, and marked KILLED with ``reason``; a local grid leaves it
    to its process."""
    for s in states:
        if s.state in ("done", "finished"):
            continue
        for r in s.running:
            if lease.abandoned(r):
                lease.close(r)
            elif claimed:
                lease.close(r, reason)


class CellLog:
    """Collects the uqflow log of one cell into a file, logged as the cell's artifact."""

    def __init__(self):
        self.path = Path(tempfile.mkstemp(prefix="uqflow-cell-", suffix=".log")[1])
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def __enter__(self):
        logging.getLogger("uqflow").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        logging.getLogger("uqflow").removeHandler(self.handler)
        self.handler.close()
        self.path.unlink(missing_ok=True)


class ModelSlot:
    """The one model loaded in this process: kept for the next cell of the same model, freed before
    another model loads, so a model's cells share one load and two models never share memory."""

    def __init__(self):
        self.lm, self.key = None, None

    def loader(self, cfg: RunConfig) -> Callable[[], Any]:
        """A function that returns ``cfg``'s model, loading it on its first call (inside the cell's
        run, so that a failure to load is recorded on the run)."""
        from uqflow.generation import load_for
        from uqflow.models import get_model

        key = (cfg.model, cfg.model_registry, cfg.device, cfg.backend)
        if key != self.key:  # the previous model is freed before the next loads
            self.free()

        def load():
            if self.lm is None:
                spec = get_model(cfg.model, cfg.model_registry or None)
                self.lm, self.key = load_for(spec, cfg.device, cfg.backend), key
            return self.lm

        return load

    def free(self) -> None:
        from uqflow.generation import unload

        unload(self.lm)
        self.lm, self.key = None, None


def _cell_progress(progress: Callable[..., None], cell: str) -> Callable[..., None]:
    """``progress`` with each stage named after the cell it belongs to."""
    def report(done, total, stage: str = "answers", **counts) -> None:
        progress(done, total, f"{cell}: {stage}", **counts)

    return report


def run_cell(s: CellState, parent_run_id: str, slot: ModelSlot,
             progress: Callable[..., None] | None = None) -> None:
    """Run one cell in this process as a run linked to the grid's run; ``s`` says how it ended
    (finished, or error with the error, which the cell's FAILED run records too)."""
    from uqflow.experiment import run_experiment

    cfg = s.config
    t0 = time.perf_counter()
    if progress is not None:  # each line says which cell it is about
        progress = _cell_progress(progress, f"{cfg.model} x {cfg.dataset}")
    try:
        with CellLog() as cell_log:
            result = run_experiment(cfg, lm=slot.loader(cfg), progress=progress, artifact_log=cell_log.path,
                                    parent_run_id=parent_run_id, resolved=s.cell.resolved)
        s.state, s.run_id, s.metrics = "finished", result.run_id, result.metrics
    except CellTaken as e:  # another live process runs it (its run says which): the grid waits for it
        s.state, s.error = "running", str(e)
        log.info("cell %s x %s left to %s", cfg.model, cfg.dataset, s.error)
        return
    except (UqflowError, RuntimeError, ValueError, OSError, MemoryError) as e:
        # recorded on the cell's run (FAILED, with the error); the grid goes on
        s.state, s.error = "error", f"{type(e).__name__}: {e}"
        s.run_id = _last_child_run_id(parent_run_id, s.cell.identity) or s.run_id
        log.error("cell %s x %s failed: %s", cfg.model, cfg.dataset, s.error)
    s.metrics.setdefault("cell_seconds", time.perf_counter() - t0)


#: runs a grid's cells elsewhere (uqflow.cluster.RayCells): given the checked cells, the grid's run id
#: and on_cell, it claims, runs and reports them, and returns each cell's final state
CellRunner = Callable[[list[Cell], str, Callable[[int, int, CellState], None] | None], list[CellState]]


def run_grid(grid: Grid, overrides: dict[str, Any] | None = None, *, isolate: bool = False,
             runner: CellRunner | None = None, on_cell: Callable[[int, int, CellState], None] | None = None,
             progress: Callable[..., None] | None = None) -> list[CellState]:
    """Run every cell that is not done yet; returns the final state of each cell.

    With a ``runner`` (cells on a Ray cluster) the cells run where it sends them: this machine need
    not be able to run them (each worker checks its own), and the runner itself finds which cells
    are done once it holds their claim, so two drivers never both run a cell."""
    import mlflow

    cells = checked_cells(grid, overrides, dry_run=runner is not None)
    with tracking.reaching_store():
        if mlflow.active_run() is None and not os.environ.get("MLFLOW_RUN_ID"):
            mlflow.set_experiment(tracking.experiment_name())
        if runner is None:
            states = cell_states(cells)
            close_abandoned(states, claimed=False)  # a cell another live process runs is left to it
    # the grid's run is not MLflow's active run, so its cells are top-level runs (rows of the runs
    # table) linked to it by a tag, not folded under it
    with tracking.tracked_run(f"grid:{grid.name}", {tracking.GRID_TAG: grid.name, tracking.GRID_CELLS_TAG: len(cells)},
                              active=False) as parent:
        tracking.log_params({"grid": grid.name, "models": ",".join(grid.models), "datasets": ",".join(grid.datasets),
                             **{f"set.{k}": v for k, v in (overrides or {}).items()}}, parent.info.run_id)
        if runner is not None:
            states = runner(cells, parent.info.run_id, on_cell)
        else:
            _run_here(states, parent.info.run_id, isolate, on_cell, progress)
        ok = sum(s.state in ("done", "finished") for s in states)
        tracking.log_metrics({"cells": len(states), "cells_ok": ok, "cells_failed": len(states) - ok,
                              "cells_run": sum(s.state != "done" for s in states)}, parent.info.run_id)
        _log_comparison(parent, [s.run_id for s in states if s.state in ("done", "finished") and s.run_id])
    return states


#: the grid run's table of its cells (plots.comparison_frame), shown by the MLflow UI as a table
COMPARISON_TABLE = "comparison.json"


def _log_comparison(parent, run_ids: list[str]) -> None:
    """The grid's finished cells side by side, as a table artifact of the grid's run; fetched in
    pages of 100 run ids, so a large grid costs a few searches."""
    from uqflow.plots import comparison_frame, comparison_row

    rows = []
    for i in range(0, len(run_ids), 100):
        ids = ", ".join(f"'{r}'" for r in run_ids[i:i + 100])
        for run in tracking.search_runs(parent.info.experiment_id, f"attributes.run_id IN ({ids})"):
            rows.append(comparison_row(run.data.tags, tracking.run_metrics(run), run.info.run_id))
    if rows:
        tracking.log_table(comparison_frame(rows), COMPARISON_TABLE, parent.info.run_id)
    tracking.set_description(grid_description(parent, rows), parent.info.run_id)


def grid_description(parent, rows: list[dict]) -> str:
    """The grid run's description (the first thing its MLflow page shows): its finished cells with
    accuracy and the study's two AUROCs, where the full table is, and what to run next."""
    from uqflow.console import inert

    def auroc(r, m):
        v = r["aurocs"].get(m, (None,))[0]
        return "–" if v is None else f"{v:.3f}"

    name = parent.data.tags.get(tracking.GRID_TAG, parent.info.run_name)
    lines = [f"**Grid {inert(name, one_line=True)}**: {len(rows)} finished cell(s), one run each below this run.", ""]
    if rows:
        lines += ["| model | dataset | n | accuracy | AUROC G-NLL | AUROC RW-G-NLL |", "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (str(r["model"]), str(r["dataset"]))):
            acc = r["accuracy"]
            lines.append(f"| {inert(str(r['model']), one_line=True)} | {inert(str(r['dataset']), one_line=True)} | "
                         f"{'–' if r['n'] is None else int(r['n'])} | {'–' if acc is None else f'{acc:.3f}'} | "
                         f"{auroc(r, 'g_nll')} | {auroc(r, 'rw_g_nll')} |")
        lines += ["", f"Every measure with its interval: the artifact `{COMPARISON_TABLE}`."]
    lines += ["", "Next: `uqflow aggregate` (the runs into the SQL results store), then `uqflow report` (the figures)."]
    return "\n".join(lines)


def _run_here(states: list[CellState], parent_id: str, isolate: bool,
              on_cell: Callable[[int, int, CellState], None] | None,
              progress: Callable[..., None] | None) -> None:
    """The cells in turn on this machine: in this process, each model loaded once for its cells,
    or each cell in a process of its own (``isolate``). A cell that another live process runs is
    left to it until the others are done, then waited for (:func:`_wait_for_others`)."""
    slot = ModelSlot()

    def run(s: CellState) -> None:
        raise_if_stopped()  # a stop signal a library swallowed during the last cell ends the grid here
        if isolate:
            t0 = time.perf_counter()
            _run_isolated(s.config, parent_id, s)
            s.metrics.setdefault("cell_seconds", time.perf_counter() - t0)
        else:
            run_cell(s, parent_id, slot, progress)

    elsewhere: list[tuple[int, CellState]] = []
    try:
        for i, s in enumerate(states, 1):
            if s.state not in ("done", "running"):
                run(s)
            if s.state == "running":
                elsewhere.append((i, s))
            elif on_cell:
                on_cell(i, len(states), s)
        if elsewhere:
            slot.free()  # nothing of this grid's own is left to run: the model's memory is not held while waiting
            _wait_for_others(elsewhere, len(states), run, on_cell)
    finally:
        slot.free()


def poll_seconds() -> float:
    """How often a grid looks again at the cells another process runs: every few seconds, and at
    least once per heartbeat."""
    return max(0.5, min(5.0, tracking.heartbeat_seconds()))


#: a grid waiting for another process says so again after this many seconds
WAIT_NOTICE_S = 60.0


def _wait_for_others(elsewhere: list[tuple[int, CellState]], total: int, run: Callable[[CellState], None],
                     on_cell: Callable[[int, int, CellState], None] | None) -> None:
    """Wait for the cells (numbered as the grid counts them) that another live process runs: one that
    FINISHED there is done; one that ended FAILED or KILLED there, or whose process stopped (its run
    abandoned, then closed), is taken over and run here."""
    said: dict[str, float] = {}
    while elsewhere:
        now = time.time()
        for _, s in elsewhere:
            if now - said.get(s.cell.identity, -math.inf) >= WAIT_NOTICE_S:
                said[s.cell.identity] = now
                log.info("waiting for %s x %s: %s", s.config.model, s.config.dataset, s.error or "another process runs it")
        time.sleep(poll_seconds())
        with tracking.reaching_store():
            fresh = {f.cell.identity: f for f in cell_states([s.cell for _, s in elsewhere])}
            close_abandoned(list(fresh.values()), claimed=False)
        still = []
        for i, s in elsewhere:
            f = fresh[s.cell.identity]
            if f.state == "running":
                s.run_id, s.error = f.run_id, f.error
                still.append((i, s))
                continue
            if f.state == "done":  # counted as done: the other process ran it
                s.state, s.run_id, s.error, s.metrics = "done", f.run_id, "", f.metrics
            else:
                log.info("taking over %s x %s: its run %s %s", s.config.model, s.config.dataset, f.run_id,
                         "ended " + (f.error or f.state) if f.state == "failed" else "was abandoned")
                s.state, s.error = f.state, ""
                run(s)
                if s.state == "running":  # yet another process claimed it first
                    still.append((i, s))
                    continue
            if on_cell:
                on_cell(i, total, s)
        elsewhere = still


def _last_child_run_id(parent_id: str, identity: str | None = None) -> str:
    """The latest run linked to the grid's run ``parent_id`` (of the cell ``identity``, if given)."""
    import mlflow

    cell = f" AND tags.config_hash = '{identity}'" if identity else ""
    runs = mlflow.search_runs(filter_string=f"tags.`{tracking.GRID_RUN_TAG}` = '{parent_id}'{cell}",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
                              search_all_experiments=True)
    return runs[0].info.run_id if runs else ""


def _run_isolated(cfg: RunConfig, parent_id: str, s: CellState) -> None:
    """Run one cell as ``python -m uqflow run`` in its own process, as a child of ``parent_id``."""
    args = [sys.executable, "-m", "uqflow", "run", "--parent-run-id", parent_id]
    for k, v in cfg.to_dict().items():
        args += ["--set", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    env["MLFLOW_EXPERIMENT_NAME"] = tracking.experiment_name()
    started_ms = int(time.time() * 1000) - 1000
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    except Terminated as e:  # the cell's process ends its run KILLED too, then this one stops
        proc.send_signal(e.signum)
        proc.communicate(timeout=120)
        raise
    import mlflow

    latest = _last_child_run_id(parent_id, s.cell.identity)
    mine = mlflow.get_run(latest) if latest else None
    if mine is not None and (mine.info.start_time or 0) < started_ms:
        mine = None  # an earlier try's run: this process made none
    if mine is not None:  # the cell's own output, as in-process cells keep their log
        s.run_id = mine.info.run_id
        mlflow.MlflowClient().log_text(s.run_id, out + err, "cell.log")
    if proc.returncode == 0:
        s.state, s.metrics = "finished", tracking.run_metrics(mine) if mine is not None else {}
    elif mine is not None and mine.data.tags.get(tracking.ERROR_TAG, "").startswith(lease.TAKEN):
        s.state, s.error = "running", mine.data.tags[tracking.ERROR_TAG]  # given up to another process, as run_cell does
    else:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        s.state, s.error = "error", lines[-1] if lines else f"exit code {proc.returncode}"
