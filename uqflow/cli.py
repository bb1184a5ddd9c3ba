"""The ``uqflow`` command line: a thin shell over the library (each command calls one function)."""

from __future__ import annotations

import logging
import sys

import click

from uqflow.errors import Terminated, UqflowError, clear_stop, stop_signal
from uqflow.progress import StageProgress, bar_size, library_bars_off

try:
    # the names in option help come from where they are registered
    from uqflow.generation import ENGINES
    from uqflow.scoring.judges import JUDGES
    from uqflow.scoring.measures import SINGLE_PASS
except UqflowError as e:  # a module of measures of one's own ($UQFLOW_MEASURES) that cannot be imported
    sys.exit(f"Error: {e}")


class UqflowGroup(click.Group):
    """Translates library errors into one-line messages and a non-zero exit, once, here."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UqflowError as e:
            from uqflow.console import inert  # a message may quote a name or value from the user's data

            raise click.ClickException(inert(e)) from None
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP raised as Terminated
            clear_stop()
            name, signum = stop_signal(e)
            click.echo("Interrupted." if name == "KeyboardInterrupt" else f"Terminated by {name}.", err=True)
            sys.exit(128 + signum)


@click.group(cls=UqflowGroup)
@click.option("-v", "--verbose", is_flag=True, help="Show debug logging.")
@click.version_option(package_name="uqflow")
def cli(verbose: bool) -> None:
    """Single-pass uncertainty (G-NLL, RW-G-NLL) of LLM answers, tracked in MLflow.

    Example: uqflow run --model SmolLM2-135M-Instruct --dataset trivia_mini --num-questions 50
    """
    from uqflow import tracking

    tracking.bound_network_waits()
    click.get_current_context().with_resource(tracking.login_out_of_uri())  # no password in what MLflow prints
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uqflow").setLevel(logging.DEBUG if verbose else logging.INFO)


def _parse_sets(sets: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in sets:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = v
    return out


# uqflow's own progress (uqflow.progress) is the only one a command shows: the libraries' bars (a
# model's "Loading weights", downloads, artifacts) are off in every command
library_bars_off()


def _progress_bar(label: str):
    bar = StageProgress(label)
    return bar, bar


def _print_results(results) -> None:
    """Each run's every measure: AUROC with its interval and what it cost beyond the greedy pass,
    then a warning where the run is too small for its AUROCs to rank anything."""
    from rich.console import Console

    from uqflow.console import DataTable, inert
    from uqflow.scoring.measures import label
    from uqflow.scoring.pipeline import measures_of, metric
    from uqflow.scoring.selective import small_sample_warning

    console = Console(width=200)
    for r in results:
        m = r.metrics
        acc = m.get("accuracy", float("nan"))
        decided = r.frame["correct"].dropna().astype(bool)
        # narrow enough for a 100-column terminal with every declared measure: what the columns mean
        # goes in the caption, not in headers that would widen every row
        click.echo(inert(f"{r.config.model} x {r.config.dataset}: n = {int(m['n'])}, accuracy "
                         f"{'n/a' if acc != acc else f'{acc:.3f}'} judged by {r.config.correctness}", one_line=True))
        table = DataTable()
        for col in ("measure", "AUROC [95% CI]", "extra s"):
            table.add_column(col)
        for name in measures_of(r.frame):
            v = m.get(metric("auroc", name), float("nan"))
            lo, hi = m.get(metric("ci_low", name), float("nan")), m.get(metric("ci_high", name), float("nan"))
            cost = m.get(metric("cost_seconds", name))
            k = r.frame.attrs.get("entropy_top_k") if name == "mean_entropy" else None  # a served model's top k
            table.add_row(label(name) + (f" (top-{k})" if k else ""), "n/a (one class)" if v != v else f"{v:.3f} [{lo:.3f}, {hi:.3f}]",
                          "" if cost is None else f"{cost:.3f}")
        console.print(table)
        click.echo("AUROC: wrong answer = positive (0.5 = chance); extra s: seconds/question beyond the greedy pass")
        click.echo(f"run {r.run_id}")
        warning = small_sample_warning(len(decided), int((~decided).sum()), int(decided.sum()))
        if warning:
            click.echo(f"Warning: {warning}", err=True)


def _where_to_look(run_id: str | None = None, next_steps: bool = True) -> None:
    """The run's (or the experiment's) place in MLflow and the UI page that shows it, and what to
    run next."""
    import mlflow

    from uqflow import tracking

    exp_id = None
    if run_id is None:
        with tracking.reaching_store():
            exp = mlflow.get_experiment_by_name(tracking.experiment_name())
        exp_id = exp.experiment_id if exp else None
    for line in tracking.ui_hint(run_id, exp_id):
        click.echo(line)
    if next_steps:
        click.echo("Next: `uqflow aggregate` (the runs into the SQL results store), then `uqflow report` (the figures).")


class SettingsCommand(click.Command):
    """A command that takes ``--set KEY=VALUE``: its help ends with every setting, its default and
    its meaning, read from the configuration's own declaration (config.settings_help)."""

    def format_epilog(self, ctx, formatter) -> None:
        from uqflow.config import settings_help

        super().format_epilog(ctx, formatter)
        with formatter.section("Settings (--set KEY=VALUE; default: meaning)"):
            formatter.write_dl([(name, f"{default}: {meaning}" if meaning else default)
                                for name, default, meaning in settings_help()])


def _old_name(new: str):
    """The callback of an option's old name: the value still counts, and one line on stderr says
    which name replaced it."""
    def said(ctx, param, value):
        if value is not None:
            click.echo(f"Warning: {param.opts[0]} is the old name of {new}, the number of questions to evaluate "
                       f"(the sampled answers per question are num_generations); use {new}", err=True)
        return value

    return said


@cli.command(cls=SettingsCommand)
@click.option("--model", default=None, help="Model registry name (see `uqflow models`).")
@click.option("--dataset", default=None, help="Dataset registry name or local file (see `uqflow datasets`).")
@click.option("--num-questions", default=None,
              help="Questions to evaluate, drawn with the seed (setting num_samples; the sampled answers per "
                   "question are num_generations). Its old name --num-samples still works.")
@click.option("--num-samples", "old_num_questions", default=None, hidden=True, callback=_old_name("--num-questions"),
              help="The old name of --num-questions (questions to evaluate).")
@click.option("--batch-size", default=None, help="Generation batch size (0 = automatic).")
@click.option("--backend", default=None, help=f"Generation engine: auto (the default: a served model's server, else "
              f"hf), {', '.join(ENGINES)}.")
@click.option("--correctness", default=None, help=f"Correctness judge: {', '.join(JUDGES)} (default f1).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other config field; repeatable.")
@click.option("--parent-run-id", default=None, hidden=True, help="Link the run to this grid's MLflow run (grid --isolate).")
def run(model, dataset, num_questions, old_num_questions, batch_size, backend, correctness, sets,
        parent_run_id) -> None:
    """Run one model x dataset experiment and log it to MLflow.

    \b
    Example: uqflow run --model Gemma-3-270M --dataset squad_mini --num-questions 50
    """
    from uqflow.checks import config_from_strings
    from uqflow.console import inert
    from uqflow.experiment import run_experiment

    if num_questions is not None and old_num_questions is not None:
        raise click.UsageError("--num-samples is the old name of --num-questions: give one of them")
    num_questions = num_questions if num_questions is not None else old_num_questions
    values = _parse_sets(sets)
    for key, val in (("model", model), ("dataset", dataset), ("num_samples", num_questions),
                     ("batch_size", batch_size), ("backend", backend), ("correctness", correctness)):
        if val is not None:
            values[key] = val
    cfg = config_from_strings(values)
    bar, update = _progress_bar(inert(f"{cfg.model} x {cfg.dataset}", one_line=True))
    try:
        result = run_experiment(cfg, progress=update, parent_run_id=parent_run_id)
    finally:
        bar.close()
    for note in result.notes:
        click.echo(f"note: {inert(note)}", err=True)
    _print_results([result])
    _where_to_look(result.run_id)


@cli.command(cls=SettingsCommand)
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting for every cell; repeatable.")
@click.option("--isolate", is_flag=True, help="Run each cell in its own process.")
@click.option("--dry-run", is_flag=True, help="List the cells and their state; run nothing.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the cells as Ray tasks: on the cluster at ADDRESS (auto, host:port), or on one started "
                   "here when no address is given.")
def grid(grid_file, sets, isolate, dry_run, ray_address) -> None:
    """Run every model x dataset cell of a grid file, skipping cells already done.

    Interrupted grids resume where they stopped when run again. The exit code is non-zero if any
    cell failed.

    Example: uqflow grid grids/cpu_demo.yaml --set num_samples=20 --ray auto
    """
    from rich.console import Console
    from tqdm import tqdm

    from uqflow.console import inert
    from uqflow.grid import cell_states, checked_cells, load_grid, run_grid

    if isolate and ray_address:
        raise click.UsageError("--isolate and --ray do not go together: on Ray each model's cells run in a process of their own")
    g = load_grid(grid_file)
    overrides = _parse_sets(sets)
    if dry_run:
        states = cell_states(checked_cells(g, overrides, dry_run=True))
    else:
        cells_bar = tqdm(total=len(g.models) * len(g.datasets), desc=f"grid {g.name}", unit="cell", disable=None,
                         **bar_size(None))
        q_bar, q_update = _progress_bar("")  # each cell names itself in its stages

        def on_cell(i, n, s):
            cells_bar.update(1)
            verb = {"done": "already done", "finished": "finished", "error": "FAILED"}[s.state]
            secs = f" in {s.metrics['cell_seconds']:.0f} s" if s.state == "finished" else ""
            tqdm.write(inert(f"[{i}/{n}] {s.config.model} x {s.config.dataset}: {verb}{secs}"
                             + (f" ({s.error})" if s.error else "")), file=sys.stderr)

        try:
            runner = None
            if ray_address:  # "" (the MLproject's default) runs here, as no --ray does
                from uqflow.cluster import RayCells

                runner = RayCells(ray_address)
            states = run_grid(g, overrides, isolate=isolate, runner=runner, on_cell=on_cell, progress=q_update)
        finally:
            cells_bar.close()
            q_bar.close()
    if dry_run:  # the table fits the terminal; each problem is said once, below it
        from uqflow.checks import numbered

        numbers = numbered(p for s in states for p in s.needs)
        width = _columns()
        Console(width=width).print(_grid_table(g.name, states, numbers, scores=False))
        for line in _grid_problems(states, numbers, width):
            click.echo(line)
    else:  # the whole table where the terminal is wide enough, else its narrow form: never wrapped rows
        from rich.measure import Measurement

        console = Console(width=_columns())
        table = _grid_table(g.name, states)
        if Measurement.get(console, console.options.update_width(10_000), table).maximum > console.width:
            table = _grid_table(g.name, states, narrow=True)
        console.print(table)
    _where_to_look(next_steps=not dry_run)
    failed = [s for s in states if s.state in ("error", "failed")]
    if failed and not dry_run:
        raise click.ClickException(f"{len(failed)} of {len(states)} cells failed; rerun the same command to retry them")


#: a grid of more cells is shown as one row per model (a table of 10,000 rows takes rich seconds
#: to lay out and nobody reads it)
GRID_TABLE_CELLS = 200


def _grid_table(name: str, states, numbers=None, *, scores: bool = True, narrow: bool = False):
    """The grid's cells, one row each; for a large grid, one row per model with its cells counted
    by state. A cell that cannot run here names its problems by their numbers (``numbers``, else
    checks.numbered's: "needs [1] [3]"), each said once below the table (:func:`_grid_problems`).
    Columns no cell fills (run ids and scores before anything ran) are left out, and the scores
    too unless ``scores`` (a dry run's table lists states, in 100 columns with whole run ids).
    ``narrow``: for a terminal of 100 columns, short model names, run ids cut to their first 8
    characters (whole in MLflow, a link away) and short score headers, the AUROC named in the title."""
    from collections import Counter

    from uqflow.checks import numbered, problem_tags
    from uqflow.console import DataTable
    from uqflow.scoring.pipeline import metric

    numbers = numbers or numbered(p for s in states for p in s.needs)
    needs = any(s.needs for s in states)
    table = DataTable(title=f"grid {name}")
    if len(states) > GRID_TABLE_CELLS:
        by_model: dict[str, list] = {}
        for s in states:
            by_model.setdefault(s.config.model, []).append(s)
        for col in ("model", "cells", "done", "failed", "pending", *(["problems"] if needs else [])):
            table.add_column(col, overflow="fold")
        for model, mine in by_model.items():
            count = Counter("failed" if s.state in ("error", "failed") else
                            "done" if s.state in ("done", "finished") else "pending" for s in mine)
            lacks = dict.fromkeys(p for s in mine for p in s.needs)
            table.add_row(model, str(len(mine)), str(count["done"]), str(count["failed"]), str(count["pending"]),
                          *([problem_tags(lacks, numbers)] if needs else []))
        table.caption = f"{len(states):,} cells, one row per model (grids of up to {GRID_TABLE_CELLS} cells are shown cell by cell)"
        return table
    columns_of_scores = {"accuracy": "accuracy", "AUROC G-NLL": metric("auroc", "g_nll"),
                         "AUROC RW-G-NLL": metric("auroc", "rw_g_nll")}
    if narrow:
        columns_of_scores = {"acc.": "accuracy", "G-NLL": metric("auroc", "g_nll"), "RW-G-NLL": metric("auroc", "rw_g_nll")}
    scored = scores and any(k in s.metrics for s in states for k in columns_of_scores.values())
    run_ids = any(s.run_id for s in states)
    columns = ["model", "dataset", "state", *(["run id"] if run_ids else []), *(columns_of_scores if scored else []),
               *(["problems"] if needs else [])]
    if narrow:
        from uqflow.models.registry import short_model_name

        table.title = f"grid {name}" + (": accuracy, AUROC of G-NLL and RW-G-NLL" if scored else "")
        table.caption = "run ids: their first 8 characters (whole on the MLflow page below)" if run_ids else None
    for col in columns:
        table.add_column(col, overflow="fold")
    for s in states:
        m = s.metrics
        f = lambda k: "" if k not in m or m[k] != m[k] else f"{m[k]:.3f}"  # noqa: E731
        model, run_id = (short_model_name(s.config.model), s.run_id[:8]) if narrow else (s.config.model, s.run_id)
        table.add_row(model, s.config.dataset, s.state, *([run_id] if run_ids else []),
                      *([f(k) for k in columns_of_scores.values()] if scored else []),
                      *([problem_tags(s.needs, numbers)] if needs else []))
    return table


def _grid_problems(states, numbers, width: int) -> list[str]:
    """Below a dry run's table: each distinct problem once, numbered as the table names it, with
    the cells it blocks, wrapped to ``width`` columns."""
    from uqflow.checks import problem_lines

    return problem_lines(numbers, [(s.config.model, s.config.dataset) for s in states], width)


def _columns() -> int:
    """The terminal's width (``COLUMNS`` where set); 100 where the output is not a terminal."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


@cli.command()
@click.argument("run_id")
@click.option("--correctness", default=None, help=f"Correctness judge: {', '.join(JUDGES)}.")
@click.option("--similarity", default=None, help="Similarity model for RW-G-NLL's token relevance.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="correctness_threshold, n_bootstrap, answerable_only, abstention, entailment or strict_entailment (a run that sampled); repeatable.")
@click.option("--experiment", default=None, help="Experiment of the new run (default: the source run's).")
def rescore(run_id, correctness, similarity, sets, experiment) -> None:
    """Recompute scores and correctness from a run's stored generations, as a new linked run in
    the source run's experiment.

    Example: uqflow rescore 0123abcd --correctness rouge_l
    """
    from uqflow.rescore import rescore as rescore_run

    values = _parse_sets(sets)
    if correctness is not None:
        values["correctness"] = correctness
    if similarity is not None:
        values["similarity"] = similarity
    result = rescore_run(run_id, values, experiment)
    _print_results([result])
    click.echo(f"Rescored run {result.run_id} from source run {run_id}.")
    _where_to_look(result.run_id)


@cli.command()
@click.option("--registry", default=None, type=click.Path(dir_okay=False),
              help="YAML file of extra model entries (default: $UQFLOW_MODEL_REGISTRY).")
def models(registry) -> None:
    """List the model registry, with a registry file's entries if one is given.

    Example: uqflow models --registry my_models.yaml
    """
    from rich.console import Console

    from uqflow.console import DataTable
    from uqflow.models.registry import all_models

    MODELS = all_models(registry)

    table = DataTable(title="models")
    for col in ("name", "family", "size (B)", "quantization", "instruct", "source"):
        table.add_column(col)
    for name, s in MODELS.items():
        source = s.source if s.served is None else f"served: {s.served.url}"  # a served model's server
        table.add_row(name, s.family, f"{s.size_b:g}", s.quantization, "yes" if s.instruct else "no", source)
    Console(width=200).print(table)


@cli.command()
def datasets() -> None:
    """List the dataset registry (a local .jsonl/.json/.parquet path works too).

    Example: uqflow datasets
    """
    from rich.console import Console

    from uqflow.console import DataTable
    from uqflow.data import DATASETS

    table = DataTable(title="datasets")
    for col in ("name", "schema", "evaluated split", "few-shot pool", "context", "source"):
        table.add_column(col)
    for name, s in DATASETS.items():
        table.add_row(name, s.schema, s.eval_split, s.pool_split or "held out", "yes" if s.has_context else "no", s.source)
    Console(width=200).print(table)


_DB_HELP = "Results store URL (default: $UQFLOW_RESULTS_DB, else sqlite:///results.db)."


@cli.command()
@click.option("--experiment", default=None, help="Read this MLflow experiment only (default: uqflow's runs in every experiment).")
@click.option("--filter", "filter_string", default="", metavar="FILTER",
              help="MLflow filter string narrowing the runs, e.g. \"tags.family = 'Llama'\".")
@click.option("--db", default=None, help=_DB_HELP)
def aggregate(experiment, filter_string, db) -> None:
    """Copy FINISHED uqflow runs from MLflow into the SQL results store (idempotent; safe to rerun).

    uqflow's runs are found by their tags in every experiment of the tracking store, so runs of
    `mlflow run .` are found whichever experiment they went to.

    Example: uqflow aggregate --db sqlite:///results.db
    """
    from rich.console import Console

    from uqflow import tracking
    from uqflow.console import DataTable, inert
    from uqflow.store import ACTIONS, aggregate as aggregate_runs, db_url
    from uqflow.store.db import redact
    from uqflow.store.db import row_counts

    def on_run(o) -> None:
        if o.action in ("added", "updated", "skipped", "removed"):
            click.echo(inert(f"{o.action:>9}  {o.run_id}  {o.label}" + (f"  ({o.reason})" if o.reason else "")), err=True)

    url = db_url(db)
    outcomes = aggregate_runs(experiment or None, filter_string, url, on_run=on_run)
    problems = [o for o in outcomes if o.problem]
    counts = {a: sum(o.action == a for o in outcomes) for a in ACTIONS}
    done = ", ".join(f"{counts[a]} {a}" for a in ACTIONS)
    click.echo(f"{done} (of {len(outcomes)} runs looked at)")
    rows = row_counts(url)
    table = DataTable(title=f"results store {redact(url)}")
    for col in ("table", "rows"):
        table.add_column(col)
    for name, count in rows.items():
        table.add_row(name, str(count))
    Console(width=200).print(table)
    click.echo("Query it: uqflow query \"SELECT * FROM v_auroc_by_family WHERE measure = 'g_nll'\"" +
               ("" if db is None else f" --db {redact(url)}"))
    tracking.record_project_run(
        "aggregate", {"uqflow.task": "aggregate", "uqflow.results_store": redact(url)},
        {**{f"runs_{a}": counts[a] for a in ACTIONS}, **{f"rows_{t}": n for t, n in rows.items()}},
        f"`uqflow aggregate` into **{redact(url)}**: {done} of {len(outcomes)} runs looked at"
        + (f" (experiment {experiment!r})" if experiment else "") + (f", filter `{filter_string}`" if filter_string else "")
        + ". The store's tables: " + ", ".join(f"{t} {n}" for t, n in rows.items()) + ".")
    if problems:
        raise click.ClickException(f"{len(problems)} run(s) could not be stored (reasons above); the others are in "
                                   "the store. Fix or delete those runs in MLflow and aggregate again.")


@cli.command()
@click.argument("sql", required=False)
@click.option("--schema", "show_schema", is_flag=True, help="Print the store's tables, views and their columns; run nothing.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--timeout", default=120.0, show_default=True, type=float, help="Stop the query after this many seconds.")
@click.option("--max-memory", default=1024.0, show_default=True, type=float, metavar="MB",
              help="Stop the query when the database's memory, or the rows it returns, pass this many MB.")
@click.option("--max-rows", default=None, type=click.IntRange(min=0), metavar="N",
              help="Rows the table format shows (default 1000; 0: all); csv and json print every row.")
@click.option("--db", default=None, help=_DB_HELP)
def query(sql, show_schema, fmt, timeout, max_memory, max_rows, db) -> None:
    """Run one read-only SQL statement over the results store.

    Tables: runs, scores, generations; views: v_run_scores and v_auroc_by_{family,size,family_size,
    dataset,family_dataset,quantization,instruct}; --schema lists every column.

    Example: uqflow query "SELECT family, mean_auroc FROM v_auroc_by_family WHERE measure = 'g_nll'"
    """
    from uqflow.console import DataTable, inert
    from uqflow.store.query import TABLE_ROWS, run_query, schema, write

    if show_schema:
        for name, kind, columns in schema(db):
            click.echo(inert(f"{name} ({kind}): " + ", ".join(f"{c} {t}" for c, t in columns), one_line=True))
        return
    if not sql:
        raise click.UsageError("give one SQL statement, or --schema to list the tables, views and columns")
    result = run_query(sql, db, timeout=timeout, max_memory_mb=max_memory)
    if fmt == "table":
        from rich.console import Console

        limit = TABLE_ROWS if max_rows is None else max_rows or len(result.rows)
        table = DataTable(show_lines=False)  # values shown as stored: no markup, no terminal controls
        for col in result.columns:
            table.add_column(col)
        for row in result.rows[:limit]:
            table.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        Console(width=250).print(table)
        n = len(result.rows)
        shown = f"{n:,} row{'s' if n != 1 else ''}"
        if n > limit:
            shown = (f"showing {limit:,} of {n:,} rows; --max-rows 0 shows all, --format csv prints them all "
                     "as text, a LIMIT or WHERE asks for fewer")
        click.echo(f"({shown})", err=True)
    else:
        write(result, fmt, click.get_text_stream("stdout"))


@cli.command()
@click.option("--db", default=None, help=_DB_HELP)
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.html, summary.json and figures/.")
@click.option("--measure", default="g_nll", show_default=True,
              help=f"Primary measure of the answers: {', '.join(SINGLE_PASS)} (or a sampled measure of runs that sampled).")
@click.option("--no-mlflow", is_flag=True, help="Do not log the report as an MLflow analysis run.")
def report(db, out, measure, no_mlflow) -> None:
    """Figures, statistics and one self-contained report.html from the results store.

    Example: uqflow report --out reports
    """
    from uqflow.report import build_report

    r = build_report(db, out, measure=measure, log_to_mlflow=not no_mlflow)
    click.echo(f"Figures: {r.html.parent / 'figures'}/ ({len(r.figures)} PNG files); summary: {r.summary}")
    if r.analysis_run_id:
        click.echo(f"Logged as the MLflow analysis run {r.analysis_run_id}.")
    click.echo(f"Report: {r.html.resolve()}")


@cli.group()
def db() -> None:
    """Manage the results store's schema (Alembic migrations).

    Example: uqflow db upgrade --db sqlite:///results.db
    """


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--db", "url", default=None, help=_DB_HELP)
def db_upgrade(revision, url) -> None:
    """Create the results store, or migrate it to REVISION (default: the newest).

    Example: uqflow db upgrade --db postgresql+psycopg://me@localhost/uqflow
    """
    from uqflow.store import db_url, upgrade
    from uqflow.store.db import redact

    rev = upgrade(url, revision)
    click.echo(f"results store {redact(db_url(url))} is at schema revision {rev}")


@db.command("downgrade")
@click.argument("revision")
@click.option("--db", "url", default=None, help=_DB_HELP)
def db_downgrade(revision, url) -> None:
    """Undo migrations down to REVISION ("base" removes every table; the rows go with them).

    Example: uqflow db downgrade base --db sqlite:///scratch.db
    """
    from uqflow.store import db_url
    from uqflow.store.db import downgrade, redact

    rev = downgrade(url, revision)
    click.echo(f"results store {redact(db_url(url))} is at schema revision {rev}")


@db.command("current")
@click.option("--db", "url", default=None, help=_DB_HELP)
def db_current(url) -> None:
    """Print the results store's schema revision and the newest one this uqflow knows."""
    from uqflow.store.db import connect, current_revision, db_url, head_revision, redact

    engine = connect(db_url(url))
    try:
        cur = current_revision(engine)
    finally:
        engine.dispose()
    click.echo(f"{redact(db_url(url))}: revision {cur or 'none (empty)'}; newest: {head_revision()}")


#: what a scheduler (Slurm, Kubernetes, `timeout`) or a closed terminal sends to stop a process
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def _stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated`, so they end runs KILLED as Ctrl-C does.
    The first one starts the orderly stop; repeats are ignored while it finishes recording. Every
    stop signal, Ctrl-C's too, is also remembered (``errors.note_stop``), so that one a library
    swallowed is raised again by the next long loop (``errors.raise_if_stopped``)."""
    import signal

    from uqflow.errors import note_stop

    def handler(signum, _frame):
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        note_stop(signum)
        raise Terminated(signum)

    def interrupt(signum, _frame):
        note_stop(signum)
        raise KeyboardInterrupt

    for name in STOP_SIGNALS:
        if hasattr(signal, name):  # SIGHUP does not exist on Windows
            signal.signal(getattr(signal, name), handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores it
        signal.signal(signal.SIGINT, interrupt)
    default_hook = sys.unraisablehook

    def unraisable(info):
        # the stop lost inside a weakref callback or __del__ is raised again (raise_if_stopped):
        # its "Exception ignored" traceback would only alarm
        if not (info.exc_type and issubclass(info.exc_type, KeyboardInterrupt)):
            default_hook(info)

    sys.unraisablehook = unraisable


def _one_line_warnings() -> None:
    """uqflow's own warnings (an AUROC undefined on one class, ...) as one line each, "Warning:
    <what>", as the command line's other warnings read; a library's keep Python's form (its file
    and line are what its maintainers would ask for)."""
    import warnings

    python_form = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("uqflow"):
            from uqflow.console import inert

            click.echo(f"Warning: {inert(message)}", err=True)
        else:
            python_form(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main() -> None:
    _stop_on_signals()
    _one_line_warnings()
    cli(prog_name="uqflow")


if __name__ == "__main__":
    main()
