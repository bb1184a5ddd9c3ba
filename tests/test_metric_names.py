"""The names metrics have at MLflow: each of uqflow's flat names in a section MLflow's UI groups by
(the AUROCs first), read back under the flat name, and runs logged flat by earlier versions still
aggregated the same."""

from __future__ import annotations

import mlflow
import pytest
from sqlalchemy import select

from store_fixtures import generations, log_run
from uqflow import tracking as uq_tracking
from uqflow.scoring import pipeline
from uqflow.scoring.cost import Cost
from uqflow.store import aggregate
from uqflow.store.db import connect
from uqflow.store.schema import Run, Score
from uqflow.tracking import flat_metric, metric_key, run_metrics


def _all_names() -> list[str]:
    """Every metric name a single-pass run logs, with the costs and judges of a sampled one."""
    frame = generations(30, 0)
    names = list(pipeline.evaluate(frame, n_bootstrap=50, seed=0))
    names += pipeline.cost_metrics(frame, {"sampling": Cost(10, 100, 1.0), "p_true": Cost(5, 5, 0.5)})
    return names + ["judge/contains/accuracy", "batch_spread/compositions", "cost_sampling_seconds", "run_seconds"]


def test_every_name_reads_back_as_it_was_logged():
    names = _all_names()
    keys = [metric_key(n) for n in names]
    assert [flat_metric(k) for k in keys] == names
    assert len(set(keys)) == len(keys)  # no two names share a key
    assert metric_key("auroc_g_nll") == "auroc/g_nll" and metric_key("auroc_g_nll_ci_low") == "auroc_ci/g_nll_low"
    assert metric_key("prr50_rw_g_nll") == "selective/prr50_rw_g_nll" and metric_key("ece_g_nll") == "calibration/ece_g_nll"
    assert metric_key("cost_seconds_semantic_entropy") == "cost/seconds_semantic_entropy"
    assert metric_key("part_tokens_p_true") == "cost_parts/tokens_p_true"
    assert metric_key("accuracy") == "accuracy" and metric_key("judge/em/accuracy") == "judge/em/accuracy"
    # the legacy cost name (runs before parts had their own) keeps reading back to itself
    assert flat_metric(metric_key("cost_sampling_seconds")) == "cost_sampling_seconds"


def test_the_aurocs_are_the_first_section():
    """MLflow's run page orders its chart sections by name, ungrouped metrics last."""
    sections = sorted({k.split("/")[0] for k in map(metric_key, _all_names()) if "/" in k})
    assert sections[0] == "auroc" and {"judge", "cost", "calibration", "batch_spread"} <= set(sections)
    aurocs = [k for k in map(metric_key, _all_names()) if k.startswith("auroc/")]
    assert {"auroc/g_nll", "auroc/rw_g_nll"} <= set(aurocs)


@pytest.mark.parametrize("key", ["auroc/", "judge/em", "auroc_ci/g_nll", "n", "weird/a_b"])
def test_names_of_no_rule_are_kept(key):
    """A name no rule reads (another tool's metric, a section without a name) is left as logged."""
    assert flat_metric(key) == key


def test_a_run_logged_with_flat_names_aggregates_the_same(tracking, tmp_path, monkeypatch):
    """A run an earlier version logged (flat metric names) and the same run logged now give the
    same rows in the results store."""
    new = log_run(n=20, seed=3)
    logged = mlflow.MlflowClient().get_run(new).data.metrics
    assert "auroc/g_nll" in logged and "auroc_g_nll" not in logged
    with monkeypatch.context() as m:
        m.setattr(uq_tracking, "metric_key", lambda name: name)
        old = log_run(n=20, seed=3)
    assert "auroc_g_nll" in mlflow.MlflowClient().get_run(old).data.metrics
    assert run_metrics(mlflow.get_run(old)) == pytest.approx(run_metrics(mlflow.get_run(new)))

    url = f"sqlite:///{tmp_path / 'results.db'}"
    aggregate(url=url)
    engine = connect(url)
    with engine.connect() as conn:
        runs = {r.run_id: r for r in conn.execute(select(Run))}
        scores = {(s.run_id, s.measure): s for s in conn.execute(select(Score))}
    engine.dispose()
    assert runs[old].accuracy == runs[new].accuracy and runs[old].delong_p == pytest.approx(runs[new].delong_p)
    for measure in ("g_nll", "rw_g_nll", "answer_tokens"):
        a, b = scores[(old, measure)], scores[(new, measure)]
        assert (a.auroc, a.ci_low, a.ci_high, a.prr, a.ece) == pytest.approx((b.auroc, b.ci_low, b.ci_high, b.prr, b.ece))
