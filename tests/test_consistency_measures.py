"""The measures of sample consistency end to end: a sampled run's pairwise record, the measures and
the field's PRR it logs, a run from before the record rescored into them, the results store
following the declarations (an older store upgraded, a measure of one's own added in one file).
The measures themselves are checked against hand-computed values in test_pairwise_measures.py and
against LM-Polygraph by bench/polygraph_agreement.py."""

import math
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pandas as pd
import pytest

from uqflow import tracking
from uqflow.scoring.measures import MEASURES, SAMPLED
from uqflow.scoring.pipeline import metric
from uqflow.tracking import run_metrics

#: what a sampled run keeps beside its samples, from which the new measures are computed
PAIRWISE = ("sample_entailment", "sample_similarity", "greedy_similarity", "sample_relevance")
#: the measures that read the pairwise record (the rest of the new ones read the texts alone)
RECORD_MEASURES = tuple(n for n, m in MEASURES.items() if set(m.fields) & set(PAIRWISE))
LEXICAL = ("degmat_jaccard", "eigval_jaccard", "eccentricity_jaccard", "lexical_similarity")


def _frame(run_id: str) -> pd.DataFrame:
    return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="generations.parquet"))


@pytest.mark.slow
def test_a_sampled_run_keeps_its_pairwise_record_and_logs_every_measure(sampled_run):
    run = mlflow.get_run(sampled_run.run_id)
    m, params = run_metrics(run), run.data.params
    assert params["pair_similarity"] == "auto" and params["pair_similarity_model"] == "all-MiniLM-L6-v2"
    frame = _frame(sampled_run.run_id)
    n = sampled_run.config.num_generations
    for _, row in frame.iterrows():
        entail = np.stack(row["sample_entailment"])
        sim = np.stack(row["sample_similarity"])
        assert entail.shape == sim.shape == (n, n) and len(row["greedy_similarity"]) == n
        assert np.allclose(np.diag(entail), 1) and np.allclose(np.diag(sim), 1) and np.allclose(sim, sim.T)
        # the LLM judge gives labels, not probabilities: its entailment record is 0 or 1
        assert set(np.unique(entail)) <= {0.0, 1.0}
        assert ((sim >= 0) & (sim <= 1)).all()
        # the samples with one normalised text entail each other without asking the judge
        texts = [s.strip().lower() for s in row["samples"]]
        assert all(entail[i, j] == 1 for i in range(n) for j in range(n) if texts[i] == texts[j])
        assert [len(r) for r in row["sample_relevance"]] == [len(t) for t in row["sample_token_ids"]]
    # every measure's AUROC, PRR and the field's PRR@50%, and its cost: the sum of its parts
    if frame["correct"].nunique() == 2:
        for name in SAMPLED:
            assert {metric("auroc", name), metric("prr", name), metric("prr50", name)} <= set(m), name
    for part in ("pairwise", "sample_relevance"):
        assert m[f"part_passes_{part}"] > 0 and m[f"part_seconds_{part}"] > 0, part
    assert m["cost_passes_sar"] == pytest.approx(m["part_passes_sampling"] + m["part_passes_pairwise"]
                                                 + m["part_passes_sample_relevance"])
    assert m["cost_passes_degmat_jaccard"] == pytest.approx(m["part_passes_sampling"])


def _log_as_before(source_id: str) -> str:
    """The run ``source_id`` as a version without the pairwise record logged it: the same tags,
    params, answers, samples and clusters, without the record, the measures made from it and their
    metrics."""
    source = tracking.get_run(source_id)
    new = set(RECORD_MEASURES) | set(LEXICAL)
    frame = _frame(source_id).drop(columns=[c for c in (*PAIRWISE, *new)])
    metrics = {k: v for k, v in run_metrics(source).items()
               if not any(k.endswith("_" + n) or f"_{n}_" in k for n in new)
               and not k.startswith("prr50_") and "pairwise" not in k and "sample_relevance" not in k}
    params = {k: v for k, v in source.data.params.items() if not k.startswith("pair_similarity")}
    tags = {k: v for k, v in source.data.tags.items()
            if not k.startswith(("mlflow.", tracking.CHECKSUM_TAG_PREFIX, "uqflow.lease", "uqflow.driver"))}
    with tracking.tracked_run("from before the pairwise record", tags) as run:
        tracking.log_params(params)
        tracking.log_metrics(metrics)
        tracking.log_frame(frame)
    return run.info.run_id


@pytest.mark.slow
def test_rescoring_a_run_from_before_the_record_adds_the_new_measures_without_sampling(sampled_run, tmp_path):
    from uqflow.rescore import rescore
    from uqflow.store.aggregation import aggregate

    old = _log_as_before(sampled_run.run_id)
    # the store takes it as it is: the measures of its texts are derived, those of the record are not
    db = f"sqlite:///{tmp_path / 'results.db'}"
    aggregate(url=db)
    from sqlalchemy import create_engine, text

    with create_engine(db).connect() as conn:
        stored = conn.execute(text("SELECT degmat_jaccard, sar, cocoa_msp FROM generations WHERE run_id = :r"),
                              {"r": old}).all()
    assert len(stored) == 10
    assert all(r.degmat_jaccard is not None and r.sar is None and r.cocoa_msp is None for r in stored)

    again = rescore(old, {})
    m = run_metrics(mlflow.get_run(again.run_id))
    frame = again.frame
    assert all(c in frame.columns for c in PAIRWISE)
    assert [list(x) for x in frame["samples"]] == [list(x) for x in _frame(old)["samples"]]
    both = frame["correct"].nunique() == 2
    for name in RECORD_MEASURES:
        assert frame[name].notna().any(), name
        if both:
            assert metric("prr50", name) in m, name
    # nothing was sampled again: the sampling costs what it cost the source run
    src = run_metrics(mlflow.get_run(old))
    assert m["part_passes_sampling"] == pytest.approx(src["part_passes_sampling"])
    # and the values are the measures of the stored samples with the recomputed record
    row = frame.iloc[0]
    assert row["cocoa_msp"] == pytest.approx(-sum(row["token_logprobs"]) * np.mean(1 - np.asarray(row["greedy_similarity"])))


def test_a_store_from_before_upgrades_keeping_every_row(tmp_path, tracking):
    """A store aggregated at the revision before this one (runs, scores, generations) upgrades to
    head: every row kept, the field's PRR and the new measures' columns added, NULL until the runs
    are aggregated again; a downgrade takes them away again and keeps the rows."""
    from sqlalchemy import create_engine, inspect, text

    from store_fixtures import log_run
    from uqflow.store.aggregation import aggregate
    from uqflow.store.db import downgrade, head_revision, row_counts, upgrade

    db = f"sqlite:///{tmp_path / 'results.db'}"
    log_run(n=12, seed=1)
    log_run(dataset="squad_mini", n=9, seed=2)
    aggregate(url=db)
    before = row_counts(db)
    with create_engine(db).connect() as conn:
        g_nll = conn.execute(text("SELECT run_id, example_id, g_nll FROM generations ORDER BY 1, 2")).all()
    assert downgrade(db, "6649bb39c566") == "6649bb39c566"
    engine = create_engine(db)
    columns = {c["name"] for c in inspect(engine).get_columns("generations")}
    engine.dispose()
    assert "sar" not in columns and "g_nll" in columns and row_counts(db) == before

    assert upgrade(db) == head_revision()
    assert row_counts(db) == before
    engine = create_engine(db)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT run_id, example_id, g_nll FROM generations ORDER BY 1, 2")).all() == g_nll
        assert conn.execute(text("SELECT COUNT(*) FROM generations WHERE sar IS NOT NULL")).scalar_one() == 0
        assert conn.execute(text("SELECT COUNT(*) FROM scores WHERE prr50 IS NOT NULL")).scalar_one() == 0
        assert "prr50" in conn.execute(text("SELECT * FROM v_run_scores LIMIT 1")).keys()
    engine.dispose()
    aggregate(url=db)  # the upgrade marked every run stale: each is read again
    with create_engine(db).connect() as conn:
        filled = conn.execute(text("SELECT COUNT(*) FROM scores WHERE prr50 IS NOT NULL")).scalar_one()
    assert filled > 0 and row_counts(db) == before


TOY = '''
"""A measure of one's own, in one file: its function and its declaration."""
from uqflow.scoring.measures import Measure, declare


def chars_per_token(answer, token_ids):
    return len(answer) / max(1, len(token_ids))


declare(Measure("chars_per_token", chars_per_token, ("answer", "token_ids"), "characters per token", "c/t"))
'''


@pytest.mark.subprocess
def test_a_measure_of_ones_own_is_one_file(tmp_path, venv_env):
    """Declared in a module named by $UQFLOW_MEASURES: a run logs it, the store gains its column by
    itself and holds its values, and the CLI's query reads them."""
    (tmp_path / "toy_measure.py").write_text(TOY)
    env = {**venv_env, "UQFLOW_MEASURES": "toy_measure", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": f"{tmp_path}:{sys.path[0]}"}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from store_fixtures import log_run
        from uqflow.store.aggregation import aggregate
        log_run(n=15, seed=3)
        aggregate(url={f"sqlite:///{tmp_path / 'results.db'}"!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    query = subprocess.run(["uqflow", "query", "SELECT answer, token_ids, chars_per_token FROM generations",
                            "--db", f"sqlite:///{tmp_path / 'results.db'}", "--format", "json"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert query.returncode == 0, query.stderr
    import json

    rows = json.loads(query.stdout)
    assert len(rows) == 15
    for r in rows:
        ids = json.loads(r["token_ids"]) if isinstance(r["token_ids"], str) else r["token_ids"]
        assert r["chars_per_token"] == pytest.approx(len(r["answer"]) / max(1, len(ids)))
    scores = subprocess.run(["uqflow", "query", "SELECT measure, auroc FROM scores WHERE measure = 'chars_per_token'",
                             "--db", f"sqlite:///{tmp_path / 'results.db'}", "--format", "json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert scores.returncode == 0 and len(json.loads(scores.stdout)) == 1, scores.stdout + scores.stderr
    # a module that cannot be imported is a clear error, not a traceback
    bad = subprocess.run(["uqflow", "query", "SELECT 1", "--db", f"sqlite:///{tmp_path / 'results.db'}"],
                         cwd=tmp_path, env={**env, "UQFLOW_MEASURES": "no_such_module"}, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "UQFLOW_MEASURES" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_prr_at_50_percent_by_hand():
    """PRR@50% as LM-Polygraph computes it, on cases worked by hand: 4 answers, m = 2 levels (keep
    the 3 or the 4 most confident), random = the accuracy."""
    from uqflow.scoring.evaluation import prr_at

    # right, wrong, right, wrong by rising score: A = (2/3 + 2/4) / 2 = 7/12; oracle keeps right, right,
    # wrong first: (2/3 + 2/4) / 2 = 7/12 as well; random 1/2 -> (7/12 - 1/2) / (7/12 - 1/2) = 1
    assert prr_at([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    # the reverse order: A = (1/3 + 2/4) / 2 = 5/12 -> (5/12 - 6/12) / (1/12) = -1
    assert prr_at([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(-1.0)
    # 6 answers, m = 3: scores put right, wrong, wrong, right, wrong, right in order;
    # A = (acc4 + acc5 + acc6) / 3 = (2/4 + 2/5 + 3/6) / 3 = 0.4666...; oracle: (3/4 + 3/5 + 3/6) / 3 = 0.6166...
    got = prr_at([1, 0, 0, 1, 0, 1], [1, 2, 3, 4, 5, 6])
    assert got == pytest.approx((1.4 / 3 - 0.5) / (1.85 / 3 - 0.5))
    # undefined: one class, or too few answers for the oracle to beat random over the levels counted
    assert math.isnan(prr_at([1, 1, 1, 1], [1, 2, 3, 4])) and math.isnan(prr_at([1, 0], [1, 2]))
