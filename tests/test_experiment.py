"""Whole runs on the bundled models, logged to a throwaway MLflow store."""

import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from uqflow.config import RunConfig
from uqflow.experiment import run_experiment
from uqflow.scoring.correctness import f1_correct
from uqflow.rescore import rescore
from uqflow.scoring.measures import score_row
from uqflow.scoring.uncertainty import rw_g_nll
from uqflow.tracking import ERROR_TAG, run_metrics

CONTRACT_COLUMNS = {"example_id", "question", "prompt", "prompt_token_ids", "answer", "token_ids",
                    "token_logprobs", "relevance", "references", "answerable", "correct", "g_nll", "rw_g_nll"}


def _artifact_frame(run_id):
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="generations.parquet")
    return pd.read_parquet(path)


@pytest.mark.slow
def test_run_logs_the_contract(tracking, gemma):
    cfg = RunConfig(model="Gemma-3-270M", dataset="squad_mini", num_samples=12, max_new_tokens=24, n_bootstrap=200)
    assert_contract(run_experiment(cfg, lm=gemma).run_id, cfg, gemma)


@pytest.mark.slow
def test_a_finished_run_with_sampling_logs_the_contract(sampled_run, smollm):
    """The session's finished run (tests/conftest.py): SmolLM2 on trivia_mini, with sampled answers."""
    assert_contract(sampled_run.run_id, sampled_run.config, smollm)


def assert_contract(run_id: str, cfg: RunConfig, lm) -> None:
    """What every run logs: its tags, params and metrics, its plots, and a generations table whose
    every score is recomputable from its row."""
    model, n = cfg.model, cfg.num_samples
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["family"] == lm.spec.family and run.data.tags["size_b"] == str(lm.spec.size_b)
    assert run.data.tags["instruct"] == str(lm.spec.instruct).lower()
    assert run.data.tags["config_hash"] == cfg.hash()
    # how the engine decoded (speed and float rounding only, so not in the hash); kernels on a GPU only
    assert run.data.tags["decode_layout"] == "dynamic" and int(run.data.tags["engine_batch_size"]) > 0
    assert "sdpa_kernels" not in run.data.tags
    # its own colour in the UI's tables and charts: the model's hue, a shade per dataset
    from uqflow.plots import run_colour

    assert run.data.tags["mlflow.runColor"] == run_colour(cfg.model, cfg.dataset)
    assert run_colour(cfg.model, "squad_mini") != run_colour(cfg.model, "trivia_mini")
    assert run.data.params["model"] == model and run.data.params["num_samples"] == str(n)
    # its settings, and for a run that samples the similarity model its pair_similarity resolved to here
    assert set(run.data.params) == set(cfg.to_dict()) | ({"pair_similarity_model"} if cfg.num_generations else set())
    m = run_metrics(run)
    assert m["n"] == n and 0 <= m["accuracy"] <= 1
    assert {"accuracy", "generation_seconds", "peak_memory_mb", "aurac_g_nll", "acc_cov90_rw_g_nll"} <= set(m)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "plots")}
    assert artifacts == {"plots/roc.png", "plots/accuracy_rejection.png"}
    frame = _artifact_frame(run_id)
    assert CONTRACT_COLUMNS <= set(frame.columns) and len(frame) == n
    assert m["accuracy"] == pytest.approx(frame["correct"].mean())
    # every score is recomputable from its row
    for _, row in frame.iterrows():
        for name, value in score_row(row).items():
            assert row[name] == pytest.approx(value, nan_ok=True), name
        assert row["rw_g_nll"] == pytest.approx(rw_g_nll(row["token_logprobs"], row["relevance"]), nan_ok=True)
        assert row["correct"] == f1_correct(row["answer"], list(row["references"]))
        assert lm.tokenizer.decode(list(row["token_ids"]), skip_special_tokens=True).strip() == row["answer"]
        assert len(row["relevance"]) == len(row["token_ids"])
    if frame["correct"].nunique() == 2:  # AUROC logged only where defined
        from sklearn.metrics import roc_auc_score

        ok = np.isfinite(frame["g_nll"])
        assert m["auroc_g_nll"] == pytest.approx(roc_auc_score(~frame["correct"][ok], frame["g_nll"][ok]))
        assert m["auroc_g_nll_ci_low"] <= m["auroc_g_nll"] <= m["auroc_g_nll_ci_high"]
        assert "delong_p_g_nll_vs_rw_g_nll" in m
    else:
        assert "auroc_g_nll" not in m


@pytest.mark.slow
def test_a_run_records_its_machine_as_tags_outside_its_configuration_hash(sampled_run, tmp_path):
    """The CPU, its kernel level and flags, torch's threads, the library versions and their
    fingerprint are tags of the run and of its row in the results store; no param, and the
    configuration hash is the configuration's alone."""
    import json

    import bitsandbytes
    import torch
    import transformers

    from uqflow import machine
    from uqflow.store import aggregate, run_query

    run = mlflow.get_run(sampled_run.run_id)
    tags = run.data.tags
    assert tags[machine.DEVICE_TAG] == "cpu" and tags[machine.CPU_TAG] and tags[machine.CPU_FLAGS_TAG]
    assert tags[machine.CPU_CAPABILITY_TAG] == torch.backends.cpu.get_cpu_capability()
    assert tags[machine.THREADS_TAG] == str(torch.get_num_threads())
    assert (tags["torch_version"], tags["transformers_version"], tags[machine.BNB_VERSION_TAG]) == (
        torch.__version__, transformers.__version__, bitsandbytes.__version__)
    here = machine.machine_tags("cpu")[machine.FINGERPRINT_TAG]  # the same machine, so the same fingerprint
    assert tags[machine.FINGERPRINT_TAG] == machine.fingerprint(tags) == here
    assert not any(k.startswith("machine_") or k == machine.BNB_VERSION_TAG for k in run.data.params)
    assert tags["config_hash"] == sampled_run.config.hash()
    assert not machine.machine_dependent(tags)  # full precision: the same figures on any machine

    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    [row] = run_query(f"SELECT tags FROM runs WHERE run_id = '{sampled_run.run_id}'", url=url).rows
    stored = json.loads(row[0])
    assert {k: stored[k] for k in machine.FINGERPRINT_FACTS if k in tags} == {
        k: tags[k] for k in machine.FINGERPRINT_FACTS if k in tags}
    assert stored[machine.FINGERPRINT_TAG] == tags[machine.FINGERPRINT_TAG]


@pytest.mark.slow
def test_same_config_twice_gives_identical_results(tracking, smollm):
    cfg = RunConfig(num_samples=6, max_new_tokens=16, n_bootstrap=50)
    a, b = run_experiment(cfg, lm=smollm), run_experiment(cfg, lm=smollm)
    cols = ["answer", "g_nll", "rw_g_nll", "correct"]
    pd.testing.assert_frame_equal(a.frame[cols], b.frame[cols])


@pytest.mark.slow
def test_failure_ends_run_failed_with_error(tracking, smollm, monkeypatch):
    """A similarity model that is not there is refused before any run exists; one that fails to
    load mid-run (a damaged folder, say) ends the run FAILED with the error as its tag."""
    from uqflow.errors import ModelLoadError

    cfg = RunConfig(num_samples=3, max_new_tokens=8, similarity="/nonexistent/similarity-model")
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub model id"):
        run_experiment(cfg, lm=smollm)
    assert mlflow.search_experiments(filter_string="name = 'uqflow'") == []

    def broken(name, device):
        raise ModelLoadError(f"similarity model {name!r} could not be loaded: damaged weights")

    monkeypatch.setattr("uqflow.experiment._similarity", broken)
    with pytest.raises(ModelLoadError):
        run_experiment(RunConfig(num_samples=3, max_new_tokens=8), lm=smollm)
    runs = mlflow.search_runs(experiment_names=["uqflow"])
    assert list(runs["status"]) == ["FAILED"]
    assert "similarity model" in runs[f"tags.{ERROR_TAG}"].iloc[0]


def test_unknown_names_start_no_run(tracking):
    from uqflow.errors import UnknownModel

    with pytest.raises(UnknownModel):
        run_experiment(RunConfig(model="Smol"))
    assert mlflow.search_experiments(filter_string="name = 'uqflow'") == []


@pytest.mark.slow
def test_mlflow_run_entry_point(tracking, venv_env, tmp_path):
    """`mlflow run . --env-manager local -P ...`, the way a user runs the project."""
    from conftest import ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", "uqflow",
         "-P", "model=Gemma-3-270M", "-P", "dataset=squad_mini", "-P", "num_samples=4", "-P", "max_new_tokens=12"],
        env=venv_env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["uqflow"])
    assert list(runs["status"]) == ["FINISHED"]
    assert runs["params.model"].iloc[0] == "Gemma-3-270M" and runs["tags.family"].iloc[0] == "Gemma"
    assert runs["metrics.n"].iloc[0] == 4


@pytest.mark.slow
def test_headline_command_then_aggregate_and_query(tracking, venv_env, tmp_path):
    """The project's headline flow on a fresh tracking store, as README shows it: `mlflow run .`
    with a model and a dataset and no experiment named (MLflow puts the run in its Default
    experiment), then `uqflow aggregate` with no flags and a query. Before: the run was logged, and
    aggregate failed with "no experiment 'uqflow'"."""
    from conftest import ROOT

    def sh(*args, timeout=600):
        return subprocess.run(list(args), env=venv_env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    mlflow.search_experiments()  # the store is made here, so its default artifact root lies in tmp_path
    run = sh(sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-P", "model=SmolLM2-135M-Instruct",
             "-P", "dataset=trivia_mini", "-P", "num_samples=6", "-P", "max_new_tokens=12")
    assert run.returncode == 0, run.stderr[-3000:]
    [logged] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert logged.info.experiment_id == "0" and logged.info.status == "FINISHED"
    assert mlflow.get_experiment("0").tags["mlflow.experimentKind"] == "custom_model_development"  # the runs table
    assert (f"Open: http://127.0.0.1:5000/#/experiments/0/runs/{logged.info.run_id}?workflowType=machine_learning"
            in run.stdout + run.stderr)
    agg = sh("uqflow", "aggregate")
    assert agg.returncode == 0 and "1 added" in agg.stdout, agg.stdout + agg.stderr
    query = sh("uqflow", "query", "--format", "csv", "SELECT model, family, dataset, n FROM runs")
    assert query.stdout.splitlines() == ["model,family,dataset,n", "SmolLM2-135M-Instruct,SmolLM2,trivia_mini,6"]
    # the aggregate entry point: the run MLflow Projects makes for it says what it did, and is no model run
    project = sh(sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "aggregate",
                 "-P", f"db=sqlite:///{tmp_path / 'results.db'}")
    assert project.returncode == 0, project.stderr[-3000:]
    [made] = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.info.run_id != logged.info.run_id]
    assert made.info.run_name == "aggregate" and made.data.tags["uqflow.task"] == "aggregate"
    assert made.data.metrics["runs_unchanged"] == 1 and made.data.metrics["rows_runs"] == 1
    assert "1 unchanged" in made.data.tags["mlflow.note.content"]
    again = sh("uqflow", "aggregate")
    assert again.returncode == 0 and "1 unchanged" in again.stdout and "(of 1 runs looked at)" in again.stdout


@pytest.mark.slow
def test_headline_command_offline_fails_fast_and_says_why(tracking, venv_env, tmp_path):
    """The headline command exactly as written, where the hub cannot be reached: FAILED in seconds
    (before: 41 s of retries, 12 repeated warnings), every missing piece named at once, and the run
    MLflow made tagged with the reason."""
    import time

    from conftest import ROOT

    mlflow.search_experiments()
    env = {**venv_env, "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: the hub is unreachable
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
                           "-P", "model=Mistral-7B-v0.3-8bit", "-P", "dataset=trivia_qa"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"
    reason = run.data.tags[ERROR_TAG]
    for fact in ("not in the local Hugging Face cache", "dataset 'trivia_qa'"):  # 8bit needs no GPU, bitsandbytes is a dependency
        assert fact in reason, reason
        assert proc.stderr.count(fact) == 1, proc.stderr  # each fact once
    assert "Traceback" not in proc.stderr
    assert elapsed < 60, f"{elapsed:.0f} s"  # a guard against retry storms, not a benchmark


@pytest.mark.slow
def test_rescore_makes_a_linked_run_without_generating(sampled_run):
    source = sampled_run  # the session's finished run (tests/conftest.py)
    new = rescore(source.run_id, {"correctness": "rouge_l", "n_bootstrap": "50"})
    run = mlflow.get_run(new.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["uqflow.source_run"] == source.run_id
    assert run.data.params["correctness"] == "rouge_l" and run.data.tags["family"] == "SmolLM2"
    assert list(new.frame["answer"]) == list(source.frame["answer"])  # same generations
    for a, b in zip(new.frame["relevance"], source.frame["relevance"]):
        assert list(a) == pytest.approx(list(b), abs=1e-6)
    assert new.frame["g_nll"].tolist() == pytest.approx(source.frame["g_nll"].tolist())


def test_rescore_rejects_unknown_run_and_fields(tracking):
    from uqflow.errors import ConfigError, UqflowError

    with pytest.raises(ConfigError, match="rescore can change only"):
        rescore("abc", {"model": "x"})
    with pytest.raises(UqflowError, match="no run 'abc'"):
        rescore("abc", {})


@pytest.mark.slow
def test_llm_judge_with_a_bundled_model_and_cache(smollm, tmp_path):
    from uqflow.scoring.llm import llm_judge_generate
    from uqflow.scoring.judges import LLMJudge, parse_yes_no

    judge = LLMJudge("llm:SmolLM2-135M-Instruct", llm_judge_generate("SmolLM2-135M-Instruct", lm=smollm),
                     tmp_path / "j.sqlite")
    items = [("What is the capital of France?", "Paris", ["Paris"]),
             ("How many legs does a spider have?", "six", ["8", "eight"])]
    first = judge.judge_many(items)
    # every verdict is the parse of the model's own greedy reply, an unclear one undecided (None)
    assert all(v.raw.strip() and v.correct is parse_yes_no(v.raw) for v in first)
    # what this 135M model replies, greedily: no clear yes/no for Paris, and a wrong "yes" for a
    # six-legged spider, which is why a run records undecided verdicts and the judge it used
    assert [v.correct for v in first] == [None, True]
    assert first[0].raw.startswith('The answer "Paris"')
    rows = judge.cache.db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    assert rows == 2
    judge.generate = lambda prompts: pytest.fail("a cached judgment asked the model again")
    assert [v.raw for v in judge.judge_many(items)] == [v.raw for v in first]


def test_interrupt_ends_the_run_killed(tracking):
    from uqflow import tracking as tr

    with pytest.raises(KeyboardInterrupt):
        with tr.tracked_run("interrupted", {"family": "X"}) as run:
            raise KeyboardInterrupt
    got = mlflow.get_run(run.info.run_id)
    assert got.info.status == "KILLED" and "interrupted" in got.data.tags[ERROR_TAG]
    assert mlflow.active_run() is None
