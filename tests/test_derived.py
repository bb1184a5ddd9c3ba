"""The results store holds only what a run's rows imply: aggregation and rescoring recompute every
score, rule verdict and per-run metric from the rows of ``generations.parquet`` and refuse a run
whose stored values or logged metrics disagree, naming column (or metric), row and both values;
the artifact's checksum is part of what aggregation compares; rescoring refuses deleted runs,
records its chain and writes into its source's experiment.

Each forged run is logged as `uqflow run` logs one (tests/store_fixtures.py: the real pipeline's
scores and metrics from the rows), then edited as a hostile or careless user would edit it. One
module-scoped tracking store holds one run per forgery and one intact run, and one aggregation
looks at them all, as a user's store would hold them."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from commands import invoke
from store_fixtures import log_run, mlflow_store
from test_integrity import artifact, damage, log_sampled_run
from uqflow import tracking as tr
from uqflow.scoring import pipeline
from uqflow.scoring.judges import make_judge
from uqflow.tracking import run_metrics


def log_judged_run(n: int = 12) -> str:
    """A FINISHED run with an extra judge's verdicts (``judge.contains``) beside its own."""
    from store_fixtures import generations
    from uqflow.config import RunConfig
    from uqflow.experiment import run_name, run_tags
    from uqflow.models import MODELS

    cfg = RunConfig(num_samples=n, seed=0, n_bootstrap=20, judges="contains")
    frame = pipeline.add_verdicts(generations(n, 0), {"contains": make_judge("contains")})
    with tr.tracked_run(run_name(cfg), run_tags(cfg, MODELS.get(cfg.model))) as run:
        tr.log_params(cfg.to_dict())
        tr.log_metrics(pipeline.evaluate(frame, n_bootstrap=20, seed=0))
        tr.log_frame(frame)
    return run.info.run_id


def _set(column, value):
    def change(frame):
        return frame.assign(**{column: [value] * len(frame)})
    return change


def _negate(column):
    def change(frame):
        return frame.assign(**{column: -frame[column]})
    return change


def _swap_verdicts(frame):
    """A right and a wrong answer's verdicts swapped: the accuracy stays as logged."""
    frame = frame.copy()
    right, wrong = frame.index[frame["correct"]][0], frame.index[~frame["correct"].astype(bool)][0]
    frame.loc[right, "correct"], frame.loc[wrong, "correct"] = False, True
    return frame


def _replace_references(frame):
    return frame.assign(references=[["something else"]] * len(frame))


def _answer_beside_its_tokens(frame):
    frame = frame.copy()
    frame.at[3, "answer"] = "Paris"
    return frame


def _flip_extra_judge(frame):
    frame = frame.copy()
    frame.at[0, "judge.contains"] = not frame.at[0, "judge.contains"]
    return frame


def _one_cluster(frame):
    return frame.assign(semantic_ids=[[0] * len(ids) for ids in frame["semantic_ids"]])


def _question_edited(frame):
    """An edit that leaves every score, verdict and metric as they were: only the checksum sees it."""
    frame = frame.copy()
    frame.at[0, "question"] = "a question the model was never asked?"
    return frame


#: (id, which run: plain | sampled | judged, edit, what the refusal names)
FORGERIES = [
    ("rw_g_nll_constant", "plain", _set("rw_g_nll", 0.5),
     "row 0 has rw_g_nll 0.5, but recomputed from its token_logprobs, relevance it is"),
    ("ln_g_nll_sign_flipped", "plain", _negate("ln_g_nll"), "has ln_g_nll -"),
    ("max_nll_constant", "plain", _set("max_nll", 1.0), "has max_nll 1, but recomputed from its token_logprobs it is"),
    ("mean_entropy_constant", "plain", _set("mean_entropy", 0.0),
     "has mean_entropy 0, but recomputed from its token_entropies it is"),
    ("answer_tokens_constant", "plain", _set("answer_tokens", 3.0),
     "answer_tokens 3, but recomputed from its token_ids it is"),
    ("answer_chars_sign_flipped", "plain", _negate("answer_chars"), "has answer_chars -"),
    ("verdicts_swapped_accuracy_unchanged", "plain", _swap_verdicts, "but judge 'f1' at threshold 0.5 gives"),
    ("references_replaced", "plain", _replace_references, "but judge 'f1' at threshold 0.5 gives False"),
    ("answer_changed_beside_its_tokens", "plain", _answer_beside_its_tokens,
     "row 3 has the answer 'Paris', but its tokens join to"),
    ("extra_judge_flipped", "judged", _flip_extra_judge, "row 0 has judge.contains"),
    ("one_cluster_beside_its_sets", "sampled", _one_cluster,
     "semantic_entropy 0.596055, but recomputed from its semantic_ids, sample_token_logprobs it is 0)"),
    ("predictive_entropy_constant", "sampled", _set("predictive_entropy", 1.0),
     "has predictive_entropy 1, but recomputed from its sample_token_logprobs it is"),
    ("p_true_constant", "sampled", _set("p_true", 0.5), "has p_true 0.5, but recomputed from its log_p_true it is"),
    ("question_edited", "plain", _question_edited, "is not the file the run wrote"),
]
LOGGERS = {"plain": lambda: log_run(n=12), "sampled": log_sampled_run, "judged": log_judged_run}


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """A tracking store with one run per forgery, one whose AUROC metric was edited in the tracking
    store, and one intact run; aggregated once. Yields (run ids by case, the aggregation's output,
    the results store's URL)."""
    folder = tmp_path_factory.mktemp("forged")
    with mlflow_store(folder):
        ids = {}
        for case, kind, change, _ in FORGERIES:
            ids[case] = LOGGERS[kind]()
            damage(ids[case], change)
        ids["auroc_metric_edited"] = log_run(n=12)
        mlflow.MlflowClient().log_metric(ids["auroc_metric_edited"], "auroc_g_nll", 0.123)
        ids["intact"] = log_run(n=12, seed=1)
        url = f"sqlite:///{folder / 'results.db'}"
        res = invoke("aggregate", "--db", url)
        yield ids, res, url, folder


@pytest.mark.parametrize("case,reason", [pytest.param(c[0], c[3], id=c[0]) for c in FORGERIES]
                         + [pytest.param("auroc_metric_edited", "its metric auroc_g_nll is 0.123, but its "
                                         "generations.parquet gives ", id="auroc_metric_edited")])
def test_a_forged_run_is_refused_naming_what_disagrees(forged, case, reason):
    from uqflow.store import run_query

    ids, res, url, _ = forged
    line = next((ln for ln in res.output.splitlines() if ids[case] in ln), "")
    assert line.lstrip().startswith("skipped") and reason in line, res.output
    assert run_query(f"SELECT COUNT(*) FROM runs WHERE run_id = '{ids[case]}'", url).rows == [(0,)]


def test_an_intact_run_beside_forged_ones_is_stored_as_its_rows_imply(forged):
    from uqflow.store import run_query

    ids, res, url, folder = forged
    assert res.exit_code == 1 and "1 added" in res.output, res.output  # stored; the others named
    with mlflow_store(folder):
        logged = run_metrics(mlflow.get_run(ids["intact"]))
    stored = dict(run_query(f"SELECT measure, auroc FROM scores WHERE run_id = '{ids['intact']}'", url).rows)
    assert stored["g_nll"] == pytest.approx(logged["auroc_g_nll"], abs=1e-12)
    frame = tr_frame(folder, ids["intact"])
    rows = run_query(f"SELECT rw_g_nll, answer_chars FROM generations WHERE run_id = '{ids['intact']}' "
                     "ORDER BY position", url).rows
    assert [r[0] for r in rows] == pytest.approx(frame["rw_g_nll"].tolist())
    assert [r[1] for r in rows] == pytest.approx(frame["answer_chars"].tolist())


def tr_frame(folder, run_id: str) -> pd.DataFrame:
    with mlflow_store(folder):
        return tr.load_frame(run_id)


@pytest.mark.parametrize("case", ["verdicts_swapped_accuracy_unchanged", "one_cluster_beside_its_sets",
                                  "auroc_metric_edited"])
def test_rescoring_refuses_what_aggregation_refuses(forged, case):
    ids, _, _, folder = forged
    with mlflow_store(folder):
        before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
        res = invoke("rescore", ids[case], "--correctness", "em")
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert f"Error: run {ids[case]}: " in res.output and "cannot be rescored" in res.output, res.output
        assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_a_repaired_artifact_is_read_again(tracking, tmp_path):
    """A run from before artifacts carried their checksum: an edit no check can see is stored, and
    the repaired file is read again (its checksum is part of the run's digest), not left stale."""
    from uqflow.store import run_query

    run_id = log_run(n=12)
    mlflow.MlflowClient().delete_tag(run_id, tr.CHECKSUM_TAG_PREFIX + "generations.parquet")
    original = artifact(run_id).read_bytes()
    damage(run_id, _question_edited)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert "1 added" in invoke("aggregate", "--db", url).output
    question = f"SELECT question FROM generations WHERE run_id = '{run_id}' AND position = 0"
    assert run_query(question, url).rows == [("a question the model was never asked?",)]
    artifact(run_id).write_bytes(original)
    res = invoke("aggregate", "--db", url)
    assert res.exit_code == 0 and "1 updated" in res.output, res.output
    assert run_query(question, url).rows == [("question 0?",)]
    assert "1 unchanged" in invoke("aggregate", "--db", url).output


def test_a_forged_artifact_keeps_the_copy_stored_before_it(tracking, tmp_path):
    """Nothing already stored is lost: a run stored intact and then forged keeps its stored copy."""
    from uqflow.store import run_query

    run_id = log_run(n=12)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    assert "1 added" in invoke("aggregate", "--db", url).output
    damage(run_id, _set("rw_g_nll", 0.5))
    res = invoke("aggregate", "--db", url)
    assert res.exit_code == 1 and "has rw_g_nll 0.5" in res.output, res.output
    assert run_query(f"SELECT COUNT(*) FROM generations WHERE run_id = '{run_id}' AND rw_g_nll = 0.5", url).rows \
        == [(0,)]
    assert run_query(f"SELECT COUNT(*) FROM generations WHERE run_id = '{run_id}'", url).rows == [(12,)]


def test_a_deleted_run_is_not_rescored(tracking):
    run_id = log_run(n=12)
    mlflow.MlflowClient().delete_run(run_id)
    res = invoke("rescore", run_id, "--correctness", "em")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Error: run {run_id} is deleted; restore it first" in res.output, res.output
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list", run_view_type=3)) == 1


def test_a_rescore_goes_to_its_sources_experiment_and_names_the_origin(tracking, monkeypatch):
    """A rescore of a rescore names the run that generated the answers, and each lands in the
    source's experiment, whatever experiment is current."""
    run_id = log_run(n=12)
    source_experiment = mlflow.get_run(run_id).info.experiment_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "elsewhere")
    first = invoke("rescore", run_id, "--correctness", "em")
    assert first.exit_code == 0, first.output
    first_id = first.output.split("Rescored run ")[1].split()[0]
    second = invoke("rescore", first_id, "--correctness", "contains")
    assert second.exit_code == 0, second.output
    second_id = second.output.split("Rescored run ")[1].split()[0]
    for rid, source in ((first_id, run_id), (second_id, first_id)):
        run = mlflow.get_run(rid)
        assert run.info.experiment_id == source_experiment
        assert run.data.tags[tr.SOURCE_RUN_TAG] == source and run.data.tags[tr.ORIGIN_RUN_TAG] == run_id
    other = invoke("rescore", run_id, "--correctness", "em", "--experiment", "rescores")
    assert other.exit_code == 0, other.output
    other_id = other.output.split("Rescored run ")[1].split()[0]
    assert mlflow.get_run(other_id).info.experiment_id == mlflow.get_experiment_by_name("rescores").experiment_id
