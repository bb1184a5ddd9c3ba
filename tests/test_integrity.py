"""Nothing stored that contradicts itself: the one artifact check that aggregation and rescoring
share (row count, sampled answers and clusters against num_generations, G-NLL against its token
log-probabilities, accuracy against the run's metric), rescoring only FINISHED runs with settings
that apply to them, bounds checked before a model loads, credentials in no printed tracking URI,
and a large grid's cells checked with each name read once.

The runs are logged as `uqflow run` logs them (tests/store_fixtures.py: the real pipeline's metrics
from the rows) and then damaged where a test says so, as an edited or foreign file would be."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from store_fixtures import generations, log_run
from commands import invoke
from uqflow import tracking as tr
from uqflow.config import RunConfig
from uqflow.errors import ConfigError
from uqflow.scoring import pipeline
from uqflow.tracking import run_metrics



def artifact(run_id: str):
    from pathlib import Path

    return Path(mlflow.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "generations.parquet"


def damage(run_id: str, change) -> None:
    path = artifact(run_id)
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def sampled_frame(n: int, k: int, seed: int = 0) -> pd.DataFrame:
    """A scored table of a run that drew ``k`` answers per question (clusters and p(True) included)."""
    rng = np.random.default_rng(seed)
    frame = generations(n, seed)
    frame["samples"] = [[f"s{j}" for j in range(k)] for _ in range(n)]
    frame["sample_token_ids"] = [[[5, 6][: 1 + j % 2] for j in range(k)] for _ in range(n)]
    frame["sample_token_logprobs"] = [[(-rng.exponential(1.0, 1 + j % 2)).tolist() for j in range(k)] for _ in range(n)]
    frame["semantic_ids"] = [canonical(rng.integers(0, 2, k).tolist()) for _ in range(n)]
    frame["log_p_true"] = (-rng.exponential(1.0, n)).tolist()
    return pipeline.add_scores(frame)


def canonical(ids: list[int]) -> list[int]:
    """Cluster ids renumbered 0, 1, 2... in order of first appearance, as clustering numbers them."""
    first: dict[int, int] = {}
    return [first.setdefault(i, len(first)) for i in ids]


def log_sampled_run(n: int = 12, k: int = 3) -> str:
    """A FINISHED run that sampled ``k`` answers per question, logged as a run would be."""
    from uqflow.experiment import run_name, run_tags
    from uqflow.models import MODELS

    cfg = RunConfig(num_samples=n, num_generations=k, entailment="embedding:all-MiniLM-L6-v2", n_bootstrap=20, seed=0)
    frame = sampled_frame(n, k)
    with tr.tracked_run(run_name(cfg), run_tags(cfg, MODELS.get(cfg.model))) as run:
        tr.log_params(cfg.to_dict())
        tr.log_metrics(pipeline.evaluate(frame, n_bootstrap=20, seed=0))
        tr.log_frame(frame)
    return run.info.run_id


def _extra_rows(frame):
    more = frame.iloc[:2].copy()
    more["example_id"] = ["extra0", "extra1"]
    return pd.concat([frame, more], ignore_index=True)


def _short_semantic_ids(frame):
    frame = frame.copy()
    frame.at[4, "semantic_ids"] = list(frame.at[4, "semantic_ids"])[:2]
    return frame


def _null_logprobs(frame):
    frame = frame.copy()
    frame["token_logprobs"] = [[None] * len(lps) for lps in frame["token_logprobs"]]
    return frame


def _flip_correct(frame):
    frame = frame.copy()
    frame.at[0, "correct"] = not frame.at[0, "correct"]  # one verdict changed: the accuracy moves by 1/12
    return frame


def _samples_on_a_run_that_never_sampled(frame):
    frame = frame.copy()
    frame["samples"] = [["a", "b"]] * len(frame)
    return frame


#: (id, sampled run?, damage, the reason both aggregation and rescoring give)
CONTRADICTIONS = [
    ("more_rows_than_n", False, _extra_rows, "has 14 rows but the run reports n=12"),
    ("semantic_ids_shorter_than_samples", True, _short_semantic_ids, "row 4 has 2 semantic_ids but the run's "
                                                                     "num_generations is 3"),
    ("token_logprobs_null_beside_g_nll", False, _null_logprobs, "row 0 has g_nll"),
    ("correct_flipped", False, _flip_correct, "column 'correct' gives an accuracy of"),
    ("samples_without_sampling", False, _samples_on_a_run_that_never_sampled,
     "column 'samples' holds sampled answers in row 0, but the run's num_generations is 0"),
]


@pytest.mark.parametrize("sampled,change,reason", [pytest.param(*c[1:], id=c[0]) for c in CONTRADICTIONS])
def test_a_contradiction_is_refused_by_aggregation_and_rescoring_alike(tracking, tmp_path, sampled, change, reason):
    """Each case used to be stored (by rescoring, or by aggregation of the rescored run); now both
    name the run, column and row, and store or log nothing of it."""
    from uqflow.store import run_query

    source = log_sampled_run() if sampled else log_run(n=12)
    damage(source, change)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    res = invoke("aggregate", "--db", url)
    assert res.exit_code == 1 and f"skipped  {source}" in res.output and reason in res.output, res.output
    assert run_query(f"SELECT COUNT(*) FROM runs WHERE run_id = '{source}'", url).rows == [(0,)]
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    res = invoke("rescore", source, "--correctness", "em")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"Error: run {source}: " in res.output and reason in res.output and "cannot be rescored" in res.output
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before  # no run logged


def test_an_untouched_run_passes_the_check_and_rescores(tracking, tmp_path, monkeypatch):
    """The check refuses only contradictions: an intact sampled run aggregates and rescores."""
    monkeypatch.setattr("uqflow.experiment._similarity", lambda name, device: lambda pairs: np.full(len(pairs), 0.9))
    source = log_sampled_run()
    assert invoke("aggregate", "--db", f"sqlite:///{tmp_path / 'r.db'}").exit_code == 0
    # (strict_entailment would change nothing under this run's embedding judge, and is refused: test_sampling.py)
    res = invoke("rescore", source, "--correctness", "em", "--set", "n_bootstrap=200")
    assert res.exit_code == 0, res.output
    rescored = mlflow.get_run(res.output.split("Rescored run ")[1].split()[0])
    assert rescored.data.params["n_bootstrap"] == "200" and run_metrics(rescored)["n"] == 12


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_only_finished_runs_are_rescored(tracking, status):
    source = log_run(n=12)
    client = mlflow.MlflowClient()
    client.set_tag(source, tr.ERROR_TAG, "RuntimeError: out of memory")
    client.set_terminated(source, status)
    res = invoke("rescore", source, "--correctness", "em")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert (f"Error: run {source} is {status} (RuntimeError: out of memory); only FINISHED runs can be rescored"
            in res.output), res.output
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1


@pytest.mark.parametrize("setting", ["strict_entailment=true", "entailment=embedding:all-MiniLM-L6-v2"])
def test_sampling_settings_on_a_run_that_never_sampled_are_refused(tracking, setting):
    source = log_run(n=12)
    res = invoke("rescore", source, "--set", setting)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert (f"Error: run {source} sampled no answers (num_generations=0), so {setting.split('=')[0]} would change "
            "nothing" in res.output), res.output
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1


def test_the_check_recomputes_g_nll_exactly_and_allows_an_infinite_one():
    """G-NLL against its log-probabilities by hand: 0.5 + 1.25 = 1.75 passes, 1.76 does not; a token
    of probability zero gives +inf on both sides; a NaN log-probability leaves G-NLL undefined."""
    import pyarrow as pa

    from uqflow.artifact import ArtifactError
    from uqflow.scoring.consistency import check_run_table

    def table(lps, g):
        frame = generations(1, 0).assign(token_logprobs=[lps], token_ids=[list(range(len(lps)))], answer="x" * len(lps),
                                         references=[["x" * len(lps)]], correct=True, correctness_score=1.0,
                                         tokens=[["x"] * len(lps)], token_entropies=[[0.1] * len(lps)],
                                         relevance=[[0.5] * len(lps)])
        frame = pipeline.add_scores(frame).assign(g_nll=[g])  # every other score as the row implies it
        return pa.Table.from_pandas(frame, preserve_index=False)

    check_run_table(table([-0.5, -1.25], 1.75), {}, {"n": 1})
    check_run_table(table([-0.5, -math.inf], math.inf), {}, {"n": 1})
    check_run_table(table([-0.5, math.nan], math.nan), {}, {"n": 1})
    with pytest.raises(ArtifactError, match=r"row 0 has g_nll 1.76, but its token_logprobs sum to a G-NLL of 1.75"):
        check_run_table(table([-0.5, -1.25], 1.76), {}, {"n": 1})
    with pytest.raises(ArtifactError, match="row 0 has g_nll 1.75, but its token_logprobs sum to a G-NLL of nan"):
        check_run_table(table([-0.5, math.nan], 1.75), {}, {"n": 1})


@pytest.mark.parametrize("n,phrase", [
    (1, "num_generations must be 0 (no sampling) or between 2 and 256, got 1: with one sampled answer semantic "
        "entropy and the number of sets are constant"),
    (1000000, "num_generations must be 0 (no sampling) or between 2 and 256, got 1000000"),
])
def test_num_generations_is_0_or_at_least_2_and_bounded(tracking, tmp_path, n, phrase):
    """Refused by the configuration itself: before any model loads, in a run and in a grid's dry run."""
    res = invoke("run", "--set", f"num_generations={n}")
    assert res.exit_code == 1 and f"Error: {phrase}" in res.output and "Traceback" not in res.output, res.output
    grid = tmp_path / "g.yaml"
    grid.write_text(f"models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\nsettings: {{num_generations: {n}}}\n")
    res = invoke("grid", grid, "--dry-run")
    assert res.exit_code == 1 and phrase in res.output, res.output
    assert not (tmp_path / "mlflow.db").exists() or mlflow.search_runs(search_all_experiments=True,
                                                                       output_format="list") == []


@pytest.mark.parametrize("var,value,phrase", [
    ("UQFLOW_LAYOUT", "graph", "unknown decode layout 'graph' (UQFLOW_LAYOUT); choose one of dynamic, static, graphs"),
    ("UQFLOW_SDPA", "decode:flash,fast", "UQFLOW_SDPA='decode:flash,fast': 'flash,fast' is not a kernel list"),
    ("UQFLOW_SDPA", "step:auto", "UQFLOW_SDPA='step:auto': unknown phase 'step'"),
])
def test_engine_settings_from_the_environment_are_checked_before_loading(tracking, tmp_path, monkeypatch, var,
                                                                         value, phrase):
    """A misspelt UQFLOW_LAYOUT or UQFLOW_SDPA stops a run and a grid's dry run before any model
    loads, naming the variable and what it takes."""
    monkeypatch.setenv(var, value)
    monkeypatch.setattr("uqflow.experiment.load_for", lambda *a: pytest.fail("a model was loaded"))
    res = invoke("run", "--set", "num_samples=2")
    assert res.exit_code == 1 and f"Error: {phrase}" in res.output and "Traceback" not in res.output, res.output
    grid = tmp_path / "g.yaml"
    grid.write_text("models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n")
    res = invoke("grid", grid, "--dry-run")
    assert res.exit_code == 1 and phrase in res.output, res.output
    assert not (tmp_path / "mlflow.db").exists() or mlflow.search_runs(search_all_experiments=True,
                                                                       output_format="list") == []


def test_sdpa_choice_per_phase():
    from uqflow.generation.hf import SDPA_BACKENDS, sdpa_choice

    assert sdpa_choice("") == {"prefill": SDPA_BACKENDS, "decode": SDPA_BACKENDS}
    assert sdpa_choice("auto") == {"prefill": None, "decode": None}
    assert sdpa_choice(" Flash, efficient ") == dict.fromkeys(("prefill", "decode"), ("FLASH_ATTENTION", "EFFICIENT_ATTENTION"))
    assert sdpa_choice("prefill:cudnn; decode:auto") == {"prefill": ("CUDNN_ATTENTION",), "decode": None}
    assert sdpa_choice("decode:math") == {"prefill": SDPA_BACKENDS, "decode": ("MATH",)}


def test_sampling_memory_is_compared_with_the_machine_before_loading(monkeypatch):
    """On a machine of 1 GiB, 256 answers over Gemma 3's 262,144-token vocabulary (20 bytes a logit:
    1.25 GiB a step) do not fit; the way out names a number that does."""
    import os

    from uqflow.checks import check
    from uqflow.models.loading import sampling_memory_problem
    from uqflow.models import MODELS

    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda k: 2**30 // 4096 if k == "SC_PHYS_PAGES" else
                        4096 if k == "SC_PAGE_SIZE" else real(k))
    spec = MODELS.get("Gemma-3-270M")
    problem = sampling_memory_problem(spec, 256, "cpu")
    assert problem is not None and "need at least 1.2 GiB at each step, more than half of this machine's 1.0 GiB" in problem
    assert problem.endswith("use num_generations=102 or fewer"), problem
    assert sampling_memory_problem(spec, 102, "cpu") is None
    _, _, problems = check(RunConfig(model="Gemma-3-270M", num_generations=256, device="cpu",
                                     entailment="embedding:all-MiniLM-L6-v2"))
    assert [str(p) for p in problems] == [problem]


@pytest.mark.parametrize("setting,phrase", [
    ("entailment=embedding:NoSuchSim", "entailment judge embedding:NoSuchSim: similarity model 'NoSuchSim' is not "
                                       "in the local Hugging Face cache"),
    ("similarity=NoSuchSim", "similarity model 'NoSuchSim' is not in the local Hugging Face cache"),
])
def test_an_unknown_similarity_model_is_found_before_the_model_loads(tracking, monkeypatch, setting, phrase):
    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("uqflow.generation.load_for", no_load)
    res = invoke("run", "--num-questions", "2", "--set", "num_generations=2", "--set", setting)
    assert res.exit_code == 1 and phrase in res.output and "Traceback" not in res.output, res.output


def test_a_grid_checks_each_registry_file_and_dataset_once(tracking, tmp_path, monkeypatch):
    """A 4 x 2 grid with a user registry file: the file is read once, not once per cell (a 10,000-cell
    dry run spent 37 of 43 s re-reading it; bench/grid_dry_run.py times one)."""
    import uqflow.data.datasets as datasets
    import uqflow.models.registry as registry

    reg = tmp_path / "models.yaml"
    reg.write_text("models:\n" + "".join(f"  - {{name: m{i}, source: org/m{i}, family: F, size_b: 1, "
                                         "instruct: false}\n" for i in range(4)))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"models: [m0, m1, m2, m3]\ndatasets: [trivia_mini, squad_mini]\n"
                    f"settings: {{model_registry: {reg}}}\n")
    reads, loads = [], []
    real_read, real_load = registry.read_yaml, datasets.load_dataset
    monkeypatch.setattr(registry, "read_yaml", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    monkeypatch.setattr("uqflow.checks.load_dataset", lambda name: loads.append(name) or real_load(name))
    res = invoke("grid", grid, "--dry-run")
    assert res.exit_code == 0, res.output
    assert len(reads) == 1 and sorted(loads) == ["squad_mini", "trivia_mini"], (reads, loads)
    assert res.output.count("org/m") == 4  # each model's need (the hub model, offline) listed once, with its cells


def test_no_password_in_a_printed_tracking_uri(tracking, tmp_path, monkeypatch):
    """A password inside MLFLOW_TRACKING_URI never reaches a printed line; the user name does."""
    assert tr.shown_uri("http://alice:s3cret@mlflow.example:5000") == "http://alice:***@mlflow.example:5000"
    assert tr.shown_uri("https://tok:x%2Fy@h/path") == "https://tok:***@h/path"
    assert tr.shown_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert tr.shown_uri("http://alice@h:5000") == "http://alice@h:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")  # nothing listens there
    mlflow.set_tracking_uri("http://alice:s3cret@127.0.0.1:9")
    res = invoke("aggregate", "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert res.exit_code == 1 and "s3cret" not in res.output and "http://alice:***@127.0.0.1:9" in res.output, res.output


def test_the_query_table_shows_a_bounded_number_of_rows(tmp_path):
    """A large result is drawn as at most 1000 table rows with the way to see the rest; csv prints
    every row, a line at a time."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert invoke("db", "upgrade", "--db", url).exit_code == 0
    sql = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) SELECT i, i * 0.5 AS h FROM c"
    res = invoke("query", "--db", url, sql)
    assert res.exit_code == 0, res.output
    assert "(showing 1,000 of 200,000 rows; --max-rows 0 shows all" in res.output
    assert res.output.count("\n") < 1100
    res = invoke("query", "--db", url, "--max-rows", "5", "SELECT 1 AS a UNION ALL SELECT 2")
    assert "(2 rows)" in res.output
    res = invoke("query", "--db", url, "--format", "csv", sql)
    lines = res.output.splitlines()
    assert lines[0] == "i,h" and lines[1] == "1,0.5" and lines[-1] == "200000,100000.0" and len(lines) == 200001
    res = invoke("query", "--db", url, "--format", "json", "SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, NULL")
    import json

    assert json.loads(res.output) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]


def test_config_rejects_one_generation_directly():
    with pytest.raises(ConfigError, match="between 2 and 256, got 1"):
        RunConfig(num_generations=1)
    assert RunConfig(num_generations=2).num_generations == 2 and RunConfig(num_generations=256).num_generations == 256


def test_two_drivers_setting_the_experiment_tags_at_once_both_go_on(tracking, monkeypatch):
    """Two processes starting on one new experiment both write its kind and runs-view tags; the SQL
    store inserts a new tag, and the second insert fails on the key (PostgreSQL's UniqueViolation,
    seen with two grid drivers on a tracking server). Simulated here: the other process's write lands
    first, then this one's insert is refused; the run still starts and the tags are uqflow's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from uqflow import tracking as tr

    real = mlflow.MlflowClient.set_experiment_tag
    refused = []

    def raced(self, experiment_id, key, value):
        if key not in refused:  # the first write of each tag: another process's wins the insert
            refused.append(key)
            real(self, experiment_id, key, value)
            raise MlflowException('duplicate key value violates unique constraint "experiment_tag_pk"')
        return real(self, experiment_id, key, value)

    monkeypatch.setattr(mlflow.MlflowClient, "set_experiment_tag", raced)
    with tr.tracked_run("r", {}) as run:
        pass
    tags = mlflow.MlflowClient().get_experiment(run.info.experiment_id).tags
    assert refused == [tr.EXPERIMENT_KIND_TAG, tr.RUNS_VIEW_TAG]
    assert tags[tr.RUNS_VIEW_TAG] == tr.runs_view_state() and tags[tr.EXPERIMENT_KIND_TAG] == tr.EXPERIMENT_KIND
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
