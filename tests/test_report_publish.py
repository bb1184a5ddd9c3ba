"""A report replaces the last one whole or not at all: interrupted while its figures are written,
it leaves the previous report.html, summary.json and figures/ as they were, nothing half-written
beside them, and the user's other files in the folder untouched."""

from __future__ import annotations

import os

import pytest

from store_fixtures import log_run, mlflow_store
from commands import invoke
from uqflow.report import build as B
from uqflow.report import build_report
from uqflow.report.publish import STAGING_PREFIX
from uqflow.store import aggregate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs shaped like uqflow's (no model is run), aggregated into a results store."""
    tmp = tmp_path_factory.mktemp("publish")
    url = f"sqlite:///{tmp / 'results.db'}"
    with mlflow_store(tmp):
        log_run("SmolLM2-135M-Instruct", "trivia_mini", 40, seed=1)
        log_run("Gemma-3-270M", "trivia_mini", 40, seed=2)
        aggregate(url=url)
    return url


def old_report(out):
    """A previous report (and a file of the user's) in ``out``; returns every file's bytes by path."""
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "auroc_heatmap.png").write_bytes(b"old heatmap")
    (out / "figures" / "retired_figure.png").write_bytes(b"a figure the new report no longer draws")
    (out / "summary.json").write_text('{"old": true}\n')
    (out / "report.html").write_text("<p>old report</p>\n")
    (out / "notes.txt").write_text("the user's own file\n")
    return snapshot(out)


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def interrupt_after(monkeypatch, figures: int, error=KeyboardInterrupt):
    """Make the report stop with ``error`` once ``figures`` figures were drawn into PNG files."""
    drawn = []
    png = B._png

    def stopping(fig):
        if len(drawn) == figures:
            raise error()
        drawn.append(fig)
        return png(fig)

    monkeypatch.setattr(B, "_png", stopping)
    return drawn


def test_an_interrupted_report_leaves_the_previous_one_whole(store, tmp_path, monkeypatch):
    out = tmp_path / "reports"
    before = old_report(out)
    drawn = interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_report(store, out, log_to_mlflow=False)
    assert len(drawn) == 3  # stopped with figures written, as a SIGTERM mid-report does
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", "notes.txt", "report.html", "summary.json"]


def test_an_error_while_writing_leaves_the_previous_one_whole(store, tmp_path, monkeypatch):
    out = tmp_path / "reports"
    before = old_report(out)
    interrupt_after(monkeypatch, 5, error=lambda: OSError(28, "No space left on device"))
    res = invoke("report", "--db", store, "--out", out, "--no-mlflow")
    assert res.exit_code == 1 and res.output == f"Error: cannot write the report to {out}: No space left on device\n"
    assert snapshot(out) == before


def test_a_first_report_interrupted_leaves_no_folder(store, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        build_report(store, tmp_path / "new" / "reports", log_to_mlflow=False)
    assert not (tmp_path / "new" / "reports").exists()


def test_a_finished_report_replaces_only_its_own_files(store, tmp_path):
    out = tmp_path / "reports"
    before = old_report(out)
    r = build_report(store, out, log_to_mlflow=False)
    after = snapshot(out)
    assert after["notes.txt"] == before["notes.txt"]
    assert "figures/retired_figure.png" not in after  # figures/ is the new report's alone
    assert after["report.html"] != before["report.html"] and after["summary.json"] != before["summary.json"]
    assert {f"figures/{name}.png" for name in r.figures} == {k for k in after if k.startswith("figures/")}
    assert all(after[f"figures/{name}.png"] == p.read_bytes() for name, p in r.figures.items())
    assert sorted(p.name for p in out.iterdir()) == ["figures", "notes.txt", "report.html", "summary.json"]


def test_a_killed_reports_staging_folder_is_removed_by_the_next(store, tmp_path):
    out = tmp_path / "reports"
    dead = 2**22 + 1  # above Linux's largest process id: no process has it, as one killed while writing
    stale = out / f"{STAGING_PREFIX}{dead}.abc123"
    (stale / "figures").mkdir(parents=True)
    (stale / "figures" / "auroc_heatmap.png").write_bytes(b"half")
    live = out / f"{STAGING_PREFIX}{os.getppid()}.def456"  # a report still being written beside this one
    live.mkdir()
    build_report(store, out, log_to_mlflow=False)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["figures", "report.html", "summary.json", live.name])
