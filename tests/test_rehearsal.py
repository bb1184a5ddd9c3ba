"""The reference study rehearsed offline through its real code paths: the hub ids of
grids/multi_family.yaml resolved through a Hugging Face cache (stand-in models in the study's
architectures, the real tokenizers and chat templates), TriviaQA and SQuAD v2 through `datasets`,
8-bit through bitsandbytes: the cache `make study-cache` builds, here in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import mlflow
import pytest

from conftest import ROOT
from rehearsal.build import build, environment, snapshot
from rehearsal.models import STAND_INS, STUDY_GRID
from uqflow.grid import load_grid
from uqflow.tracking import run_metrics

#: the slowest tests (the cache alone takes minutes to build): `make test-study` and CI run them,
#: `make test` leaves them out
pytestmark = [pytest.mark.slow, pytest.mark.study]

@pytest.fixture(scope="session")
def study_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-cache")
    build(root, log=lambda line: None)  # what `make study-cache` builds (fewer steps leave Mistral rambling)
    return root


@pytest.fixture
def rehearsal_env(tracking, study_cache, venv_env):  # tracking first: venv_env copies its MLFLOW_TRACKING_URI
    """The environment `make study-cache` prints, and nothing else changed (but for the path to the
    rehearsal package, which commands run from the repository find without it)."""
    return {**venv_env, **environment(study_cache), "PYTHONPATH": str(ROOT)}


def _sh(args, env, cwd, timeout=900):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_cache_is_where_the_libraries_look_and_is_built_once(study_cache, tmp_path):
    for repo in STAND_INS:
        files = {f.name for f in snapshot(study_cache, repo).iterdir()}
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json"} <= files, repo
    again = _sh([sys.executable, "-m", "rehearsal", "--out", str(study_cache)], {**os.environ, "PYTHONPATH": str(ROOT)},
                tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already there") == len(STAND_INS) + 2  # the models and both datasets
    assert f"export HF_HOME={study_cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in again.stdout


def test_headline_command_finishes_a_run_from_the_rehearsal_cache(rehearsal_env, tmp_path):
    """`mlflow run . -P model=Mistral-7B-v0.3-8bit -P dataset=trivia_qa`, as written (400 questions):
    the hub id through the cache, the SentencePiece tokenizer, LLM.int8 on a CPU, TriviaQA through
    `datasets`."""
    mlflow.search_experiments()  # the store is made here, so its default artifact root lies in tmp_path
    run = _sh([sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
               "-P", "model=Mistral-7B-v0.3-8bit", "-P", "dataset=trivia_qa"], rehearsal_env, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    [logged] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert logged.info.status == "FINISHED"
    tags, metrics = logged.data.tags, run_metrics(logged)
    assert (tags["model"], tags["family"], tags["quantization"], tags["dataset"]) == (
        "Mistral-7B-v0.3-8bit", "Mistral", "8bit", "trivia_qa")
    assert tags["batch_invariant"] == "false"  # LLM.int8's outlier columns depend on the batch
    assert metrics["n"] == 400
    assert 0 < metrics["mean_answer_tokens"] < 10  # brief answers that stop


def test_the_study_grid_runs_whole_then_aggregates_and_reports(rehearsal_env, tmp_path):
    mlflow.search_experiments()
    grid = _sh(["uqflow", "grid", str(ROOT / "grids" / "multi_family.yaml"), "--set", "num_samples=12"],
               rehearsal_env, tmp_path)
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    agg = _sh(["uqflow", "aggregate"], rehearsal_env, tmp_path)
    assert agg.returncode == 0 and "12 added" in agg.stdout, agg.stdout + agg.stderr
    query = _sh(["uqflow", "query", "--format", "csv", "SELECT family, size_b, quantization, dataset, n, accuracy "
                 "FROM runs ORDER BY family, size_b, model, dataset"], rehearsal_env, tmp_path)
    rows = [line.split(",") for line in query.stdout.splitlines()[1:]]
    assert [(r[0], r[3]) for r in rows] == [(f, d) for f in ("Llama", "Mistral", "Qwen") for _ in range(2)
                                            for d in ("squad", "trivia_qa")]
    assert {r[2] for r in rows} == {"none", "8bit"} and all(r[4] == "12" for r in rows)
    report = _sh(["uqflow", "report", "--out", "reports"], rehearsal_env, tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "reports" / "report.html").read_text()
    for family in ("Llama", "Qwen", "Mistral"):
        assert family in html
    # runs with only right or only wrong answers (a dozen questions each) are said to be undefined
    text = re.sub(r"data:[^\"']+", "", html)  # the figures are inlined as base64
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "a NaN reached the report's text"


def test_rehearsal_models_keep_the_records_contract(rehearsal_env, tmp_path):
    """For each grid model as registered (8-bit where the study quantizes) and each repository
    unquantized: records agree with the tokens; G-NLL equals a teacher-forced recomputation; batch 1
    against 16 gives the same records unquantized; a second pass repeats them exactly; base models
    stop at a newline, the instruct model at EOS after its chat turn; answers begin with a word start."""
    out = _sh([sys.executable, "-m", "rehearsal.checks", "16"], rehearsal_env, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = {r["model"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(load_grid(STUDY_GRID).models) <= set(results) and len(results) == 10
    for name, r in results.items():
        assert r["records_agree"] and r["reproducible"], r
        assert r["mean_answer_tokens"] < 12, r  # trained to answer briefly
        if r["quantization"] == "none":
            assert r["max_teacher_forced_diff"] < 1e-3, r
            assert r["answers_changed_batch_1_vs_n"] == 0 and r["max_g_nll_diff_batch_1_vs_n"] < 1e-3, r
        assert r["word_start_share"] > 0.5, r  # trained as the prompt or the chat template renders an answer
        ends = r["stop_reasons"]
        if "Instruct" in name:
            assert ends.get("eos", 0) > ends.get("length", 0), r
        else:
            assert ends.get("stop_sequence", 0) > ends.get("length", 0), r
