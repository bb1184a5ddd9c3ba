"""The report: the five answers follow from the runs present (or say they cannot), summary.json
equals the SQL store, report.html is self-contained, the analysis run is logged, and the notebook
runs on the same functions."""

from __future__ import annotations

import json
import os
import re

import mlflow
import pytest

from store_fixtures import log_run
from uqflow.report import build_report, load_study
from uqflow.report.stats import answer_all
from uqflow.store import aggregate, run_query

STUDY = ["Llama-3.2-1B", "Llama-3-8B-8bit", "Qwen2.5-1.5B", "Qwen2.5-7B-8bit", "Mistral-7B-v0.3-8bit",
         "Mistral-7B-Instruct-v0.3-8bit"]
DATASETS = ["trivia_mini", "squad_mini"]


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """The reference study's 12 cells, as runs shaped like uqflow's (no model is run), aggregated."""
    tmp = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(k, raising=False)
        mlflow.set_tracking_uri(uri)
        for i, m in enumerate(STUDY):
            for j, d in enumerate(DATASETS):
                log_run(m, d, 80, seed=10 * i + j)
        url = f"sqlite:///{tmp / 'results.db'}"
        aggregate(url=url)
        yield {"url": url, "tracking": uri, "tmp": tmp}
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_the_study_answers_what_it_can(study_store):
    answers = {a.key: a for a in answer_all(load_study(study_store["url"]))}
    assert answers["size"].answerable and answers["size"].numbers["comparisons"] == 4  # Llama, Qwen x 2 datasets
    assert "quantization" in answers["size"].answer  # the large models are 8-bit: confounded, and said so
    assert answers["family"].answerable and answers["family"].test.startswith("Friedman")
    assert "blocks" in answers["family"].answer
    assert answers["dataset"].answerable and answers["dataset"].numbers["comparisons"] == 6
    assert answers["instruct"].answerable and answers["instruct"].numbers["comparisons"] == 2  # Mistral base/instruct
    assert not answers["quantization"].answerable
    assert "cannot answer" in answers["quantization"].answer
    for a in answers.values():
        for c in a.comparisons:
            assert c["ci_low"] <= c["difference"] <= c["ci_high"]
            assert 0 < c["p_value"] <= 1


def test_summary_json_equals_the_sql_store(study_store, tmp_path):
    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    assert summary["n_runs"] == 12
    stored = {(rid, m): (a, lo, hi) for rid, m, a, lo, hi in
              run_query("SELECT run_id, measure, auroc, ci_low, ci_high FROM scores", study_store["url"]).rows}
    seen = 0
    for run in summary["runs"]:
        for m, v in run["scores"].items():
            assert (v["auroc"], v["ci_low"], v["ci_high"]) == stored[(run["run_id"], m)]
            seen += 1
    assert seen == len(stored) == 60
    acc = dict(run_query("SELECT run_id, accuracy FROM runs", study_store["url"]).rows)
    assert {r["run_id"]: r["accuracy"] for r in summary["runs"]} == acc
    fam = {f: v for f, v in run_query("SELECT family, mean_auroc FROM v_auroc_by_family WHERE measure = 'g_nll'",
                                      study_store["url"]).rows}
    for row in summary["slices"]["family"]:
        if row["measure"] == "g_nll":
            assert row["mean_auroc"] == pytest.approx(fam[row["family"]], rel=1e-12)
    assert summary["answers"]["family"]["numbers"]["mean_auroc_by_family"] == pytest.approx(fam, rel=1e-12)


def test_report_html_is_self_contained(study_store, tmp_path):
    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    html = r.html.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(srcs) == len(r.figures) == 9
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(http|//|file:)', html)
    for q in ("Does size help?", "Which family flags its errors best?", "Does the dataset matter?",
              "Does instruction tuning help?", "What does 8-bit quantization cost?"):
        assert q in html
    assert "cannot answer" in html and "Friedman" in html and "DeLong" in html
    assert all(p.stat().st_size > 5000 for p in r.figures.values())


def test_one_family_cannot_answer_the_family_question(tracking, tmp_path):
    log_run("Llama-3.2-1B", "trivia_mini", 40, 1)
    log_run("Llama-3-8B-8bit", "trivia_mini", 40, 2)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    answers = {a.key: a for a in answer_all(load_study(url))}
    assert not answers["family"].answerable and "one family only (Llama" in answers["family"].answer
    assert not answers["dataset"].answerable and answers["size"].answerable


def test_report_is_logged_as_an_analysis_run(tracking, tmp_path):
    log_run("SmolLM2-135M-Instruct", "trivia_mini", 30, 1)
    log_run("Gemma-3-270M", "trivia_mini", 30, 2)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    r = build_report(url, tmp_path / "rep")
    run = mlflow.get_run(r.analysis_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["uqflow.analysis"] == "true"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(r.analysis_run_id)}
    assert {"report.html", "summary.json", "figures"} <= names
    # aggregating again leaves the analysis run out, with its reason
    out = {o.run_id: o for o in aggregate(url=url)}
    assert out[r.analysis_run_id].action == "skipped" and "analysis" in out[r.analysis_run_id].reason


def test_report_on_an_empty_or_missing_store_says_so(tmp_path):
    from click.testing import CliRunner

    from uqflow.cli import cli

    res = CliRunner().invoke(cli, ["report", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--no-mlflow"])
    assert res.exit_code == 1 and "uqflow aggregate" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["report", "--measure", "nope", "--no-mlflow"])
    assert res.exit_code == 1 and "unknown measure 'nope'" in res.output


@pytest.mark.slow
def test_notebook_runs_on_the_same_functions(study_store, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from conftest import ROOT

    nb = nbformat.read(ROOT / "notebooks" / "multi_family_comparison.ipynb", as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import matplotlib" not in source and "plt." not in source  # no second copy of plotting code
    os.environ["UQFLOW_RESULTS_DB"] = study_store["url"]
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["UQFLOW_RESULTS_DB"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 9
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "Does size help?" in text and "Friedman" in text


def test_report_renders_in_a_real_browser(study_store, tmp_path, browser):
    """Headless Chromium opens report.html: every figure loads and every question is on the page."""
    from browser import page_report

    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    seen = page_report(browser, r.html.resolve().as_uri())
    print(f"\nbrowser: title {seen['title']!r}, {seen['images']} images, broken {seen['broken_images']}, "
          f"{len(seen['text'])} characters of text")
    assert seen["title"] == "uqflow report"
    assert seen["images"] == 9 and seen["broken_images"] == []
    for q in ("Does size help?", "Which family flags its errors best?", "Does the dataset matter?",
              "Does instruction tuning help?", "What does 8-bit quantization cost?"):
        assert q in seen["text"]
    assert "cannot answer" in seen["text"]
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert all(w > 300 for w in widths)
