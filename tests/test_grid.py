"""Grids: files, resumption after SIGKILL, failing cells, dry runs."""

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from commands import invoke, UQFLOW
from uqflow.errors import ConfigError
from uqflow.grid import cell_states, checked_cells, load_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["multi_family", "small", "large", "validation", "cpu_demo"])
def test_shipped_grids_load(name):
    g = load_grid(ROOT / "grids" / f"{name}.yaml")
    cells = g.cells()
    assert len(cells) == len(g.models) * len(g.datasets)
    if name == "multi_family":
        assert len(cells) == 12 and {c.num_samples for c in cells} == {400}
        assert all(c.instruction_per_block and c.max_new_tokens == 150 for c in cells)
        assert set(g.models) == set(load_grid(ROOT / "grids/small.yaml").models) | set(load_grid(ROOT / "grids/large.yaml").models)


@pytest.mark.parametrize("text,message", [
    ("models: [SmolLM2-135M-Instruct]\n", "datasets must be a non-empty list"),
    ("models: []\ndatasets: [trivia_mini]\n", "models must be a non-empty list"),
    ("models: [a]\ndatasets: [b]\ncolour: red\n", "unknown key(s) colour"),
    ("models: [a]\ndatasets: [b]\nsettings: {num_samples: many}\n", "num_samples must be a whole number"),
    ("models: [a]\ndatasets: [b]\nsettings: {num_samples: [1]}\n", "num_samples must be of type int"),
    ("models: [a]\ndatasets: [b]\nsettings: {num_samples: -3}\n", "num_samples must lie in [1, 10000000]"),
    ("models: [a]\ndatasets: [b]\nsettings: {top_p: 1}\n", "unknown setting 'top_p'"),
    ("models: [a]\ndatasets: [b]\nsettings: {model: x}\n", "settings.model is set by the grid"),
    ("- just a list\n", "expected a mapping"),
    ("models: [a\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_grid_files(tmp_path, text, message):
    f = tmp_path / "g.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_grid(f)
    assert message in str(err.value)


def test_grid_cli_errors(tracking, tmp_path):
    res = invoke("grid", str(tmp_path / "none.yaml"))
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    f = tmp_path / "g.yaml"
    f.write_text("models: [Smol]\ndatasets: [trivia_mini]\n")
    res = invoke("grid", str(f))
    assert res.exit_code == 1 and "unknown model 'Smol'" in res.output
    assert mlflow.search_experiments(filter_string="name = 'uqflow'") == []  # nothing started


def _grid_file(tmp_path, models, datasets, **settings):
    f = tmp_path / "grid.yaml"
    lines = ["name: t", f"models: [{', '.join(models)}]", f"datasets: [{', '.join(datasets)}]", "settings:"]
    lines += [f"  {k}: {v}" for k, v in settings.items()]
    f.write_text("\n".join(lines) + "\n")
    return f


def _runs():
    return mlflow.search_runs(experiment_names=["uqflow"], filter_string="tags.config_hash != ''") \
        if mlflow.get_experiment_by_name("uqflow") else None


def _trivia_file(path, answers: dict[int, str]) -> None:
    import json

    path.write_text("".join(json.dumps({"question_id": f"q{i}", "question": f"What is {i} plus one?",
                                        "answer": {"value": answers.get(i, str(i + 1)), "aliases": []}}) + "\n"
                            for i in range(30)), encoding="utf-8")


def test_an_edited_local_dataset_file_is_a_new_cell(tracking, tmp_path):
    """A cell's identity covers a local dataset file's content, not only its path: once the file is
    edited, a cell that was done is pending again (before: skipped as done, with stale answers);
    with the content restored it is done again."""
    from uqflow import tracking as tr
    from uqflow.data import load_dataset
    from uqflow.experiment import run_tags
    from uqflow.models import MODELS

    data = tmp_path / "qa.jsonl"
    _trivia_file(data, {})
    f = _grid_file(tmp_path, ["SmolLM2-135M-Instruct"], [str(data)], num_samples=5)
    [cell] = checked_cells(load_grid(f))
    cfg, identity = cell.config, cell.identity
    with tr.tracked_run("cell", run_tags(cfg, MODELS.get(cfg.model), load_dataset(str(data)))):
        pass  # a finished run of the cell, tagged as `uqflow run` tags it
    assert [s.state for s in cell_states(checked_cells(load_grid(f)))] == ["done"]
    _trivia_file(data, {7: "eight (8)"})
    assert checked_cells(load_grid(f))[0].identity != identity
    assert [s.state for s in cell_states(checked_cells(load_grid(f)))] == ["pending"]
    _trivia_file(data, {})
    assert [s.state for s in cell_states(checked_cells(load_grid(f)))] == ["done"]


def test_registered_datasets_keep_their_identity():
    """Registered datasets are identified by name, so the hashes of existing runs stay valid."""
    from uqflow.config import RunConfig
    from uqflow.data import load_dataset
    from uqflow.experiment import run_identity

    cfg = RunConfig(dataset="trivia_mini")
    assert run_identity(cfg, load_dataset("trivia_mini").fingerprint) == cfg.hash()


def test_a_batch_dependent_models_identity_holds_its_batching():
    """A bitsandbytes model's answers depend on how its batches are composed, so runs batched
    another way (an earlier engine's fixed batches, another batch size) are other runs; a
    batch-invariant model's identity is its configuration's alone."""
    from uqflow.config import RunConfig
    from uqflow.experiment import run_identity
    from uqflow.models import MODELS
    from uqflow.models.loading import BATCHING

    quantized = RunConfig(model="SmolLM2-135M-Instruct-8bit", dataset="trivia_mini")
    spec = MODELS.get(quantized.model)
    assert run_identity(quantized, None, spec) == quantized.hash(None, {"batch_size": 0, "batching": BATCHING})
    assert run_identity(quantized, None, spec) != quantized.hash(None, {"batch_size": 0})  # the fixed batches'
    plain = RunConfig(model="SmolLM2-135M-Instruct", dataset="trivia_mini")
    assert run_identity(plain, None, MODELS.get(plain.model)) == plain.hash()


@pytest.mark.slow
def test_sigkill_during_second_cell_then_resume(tracking, tmp_path, venv_env):
    """kill -9 in the middle of cell 2; the same command then completes the rest, no duplicates."""
    f = _grid_file(tmp_path, ["SmolLM2-135M-Instruct"], ["trivia_mini", "squad_mini"], num_samples=40, max_new_tokens=24, n_bootstrap=50)
    cmd = [*UQFLOW, "grid", str(f)]
    proc = subprocess.Popen(cmd, env=venv_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    killed_run = None
    while time.time() < deadline and proc.poll() is None:
        runs = _runs()
        if runs is not None and len(runs):
            second = runs[(runs["tags.mlflow.runName"] == "SmolLM2-135M · squad_mini")
                          & (runs["status"] == "RUNNING")]
            if len(second):
                killed_run = second["run_id"].iloc[0]
                os.kill(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert killed_run is not None, "the grid finished before its second cell could be killed"
    runs = _runs()
    assert (runs["status"] == "FINISHED").sum() == 1  # the first cell only

    out = subprocess.run(cmd, env=venv_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "already done" in out.stderr
    runs = _runs()
    finished = runs[runs["status"] == "FINISHED"]
    assert sorted(finished["tags.mlflow.runName"]) == ["SmolLM2-135M · squad_mini",
                                                       "SmolLM2-135M · trivia_mini"]
    assert mlflow.get_run(killed_run).info.status == "KILLED"  # the abandoned run is closed, not left RUNNING
    # the grid's run shows its cells side by side, as a table the MLflow UI renders
    grid_runs = mlflow.search_runs(experiment_names=["uqflow"], filter_string="tags.`uqflow.grid` != ''")
    grid_run = grid_runs.sort_values("start_time").iloc[-1]  # the invocation that finished the grid
    table = mlflow.artifacts.load_dict(f"runs:/{grid_run['run_id']}/comparison.json")
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(r["dataset"] for r in rows) == ["squad_mini", "trivia_mini"]
    for r in rows:
        cell = finished[finished["tags.dataset"] == r["dataset"]].iloc[0]
        assert (r["model"], r["full model name"]) == ("SmolLM2-135M", "SmolLM2-135M-Instruct") and r["family"] == "SmolLM2"
        assert r["n"] == "40"
        assert r["accuracy"] == f"{cell['metrics.accuracy']:.3f}"
        lo, hi = cell["metrics.auroc_ci/g_nll_low"], cell["metrics.auroc_ci/g_nll_high"]
        assert r["AUROC G-NLL"] == f"{cell['metrics.auroc/g_nll']:.3f} [{lo:.3f}, {hi:.3f}]"
    assert "AUROC RW-G-NLL" in table["columns"] and "outputs: " not in str(table["columns"])
    # and its description, the first thing its MLflow page shows, lists the cells and the next commands
    note = mlflow.get_run(grid_run["run_id"]).data.tags["mlflow.note.content"]
    assert "2 finished cell(s)" in note and "Next: `uqflow aggregate`" in note
    for r in rows:
        cell = finished[finished["tags.dataset"] == r["dataset"]].iloc[0]
        assert f"| SmolLM2-135M-Instruct | {r['dataset']} | 40 | {cell['metrics.accuracy']:.3f} | " \
               f"{cell['metrics.auroc/g_nll']:.3f} | {cell['metrics.auroc/rw_g_nll']:.3f} |" in note, note
    # the console said what each stage was doing and what to run next
    assert "greedy answers" in out.stderr and "judging and scoring" in out.stderr
    assert "Next: `uqflow aggregate`" in out.stdout
    # a third invocation has nothing to do
    assert [s.state for s in cell_states(checked_cells(load_grid(f)))] == ["done", "done"]


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_grid_goes_on(tracking, tmp_path, monkeypatch):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    reg = tmp_path / "models.yaml"
    reg.write_text(f"models:\n  - {{name: Broken, source: '{broken}', family: X, size_b: 1, instruct: false}}\n")
    monkeypatch.setenv("UQFLOW_MODEL_REGISTRY", str(reg))
    f = _grid_file(tmp_path, ["Broken", "SmolLM2-135M-Instruct"], ["trivia_mini"], num_samples=4,
                   max_new_tokens=8, n_bootstrap=20)
    res = invoke("grid", str(f))
    assert res.exit_code == 1 and "1 of 2 cells failed" in res.output
    runs = _runs()
    by_model = dict(zip(runs["tags.model"], runs["status"]))
    assert by_model == {"Broken": "FAILED", "SmolLM2-135M-Instruct": "FINISHED"}
    failed = runs[runs["tags.model"] == "Broken"].iloc[0]
    assert "could not be loaded" in failed["tags.uqflow.error"]
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(failed["run_id"])]
    assert "cell.log" in arts
    dry = invoke("grid", str(f), "--dry-run")
    assert dry.exit_code == 0 and "failed" in dry.output and "done" in dry.output


@pytest.mark.slow
@pytest.mark.subprocess_helper  # --isolate: each cell in a process of its own
def test_isolated_cells_are_linked_to_the_grid_run(tracking, tmp_path):
    f = _grid_file(tmp_path, ["SmolLM2-135M-Instruct"], ["trivia_mini"], num_samples=3, max_new_tokens=8,
                   n_bootstrap=20)
    res = invoke("grid", str(f), "--isolate")
    assert res.exit_code == 0, res.output
    runs = mlflow.search_runs(experiment_names=["uqflow"])
    parent = runs[runs["tags.uqflow.grid"] == "t"].iloc[0]
    child = runs[runs["tags.config_hash"].notna()].iloc[0]
    assert child["tags.uqflow.grid_run"] == parent["run_id"] and child["status"] == "FINISHED"
    assert "tags.mlflow.parentRunId" not in runs or runs["tags.mlflow.parentRunId"].isna().all()  # not folded
    assert "cell.log" in [a.path for a in mlflow.MlflowClient().list_artifacts(child["run_id"])]


def test_dry_run_offline_says_what_each_cell_needs(tracking):
    """The reference study's grid on a machine without hub access or GPU: the dry run lists every
    cell with the numbers of what it needs (before: it failed after 27 s), and each of those once
    below the table; running it refuses at once, naming each problem once with the cells it
    blocks, and starts nothing."""
    import time

    t0 = time.perf_counter()
    dry = invoke("grid", str(ROOT / "grids" / "multi_family.yaml"), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("pending") == 12 and "│ needs [1] [2] │" in dry.output
    assert "needs a CUDA GPU" not in dry.output  # 8bit/4bit run on a CPU too
    assert dry.output.count("] model '") == 6 and "] model 'Llama-3.2-1B' (meta-llama/Llama-3.2-1B) is not in" in dry.output
    assert dry.output.count("] dataset '") == 2  # one problem per model and per hub dataset, each once
    res = invoke("grid", str(ROOT / "grids" / "multi_family.yaml"))
    assert res.exit_code == 1 and "12 of 12 cells of grid 'multi_family' cannot run on this machine; 8 problems" in res.output
    assert "] model 'Mistral-7B-v0.3-8bit' (mistralai/Mistral-7B-v0.3) is not in the local" in res.output
    assert "blocks Mistral-7B-v0.3-8bit x every dataset" in res.output and "blocks every model x squad" in res.output
    assert res.output.count("dataset 'squad' (rajpurkar/squad_v2") == 1
    assert "Traceback" not in res.output
    assert time.perf_counter() - t0 < 60  # a guard against hub retries, not a benchmark
    assert mlflow.get_experiment_by_name("uqflow") is None  # nothing started
