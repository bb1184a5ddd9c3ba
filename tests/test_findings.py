"""Findings that survive the obvious objections: answer length as a zero-cost score, several
judges side by side, calibration and risk-coverage in the store, small-run warnings and power,
the reference code's conventions (a sampled most likely answer, few-shot p(True)) and the 8-bit
spread over batch compositions. Values are checked against hand computations where the behaviour
is arithmetic, and against the bundled models where it depends on them."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from store_fixtures import generations, log_run
from commands import invoke
from uqflow import tracking as tr
from uqflow.config import RunConfig
from uqflow.scoring import pipeline
from uqflow.scoring.correctness import contains_reference
from uqflow.scoring.cost import NEEDS
from uqflow.scoring.judges import make_judge
from uqflow.scoring.measures import SINGLE_PASS, score_row
from uqflow.tracking import run_metrics



# ---------------------------------------------------------------- length as a score

def test_answer_length_is_a_zero_cost_score_recomputed_from_the_row():
    row = {"token_ids": [5, 6, 7], "answer": "  New Delhi ", "token_logprobs": [-0.1, -0.2, -0.3],
           "token_entropies": [0.1, 0.1, 0.1], "relevance": [1.0, 1.0, 1.0]}
    s = score_row(row)
    assert s["answer_tokens"] == 3.0 and s["answer_chars"] == 9.0  # "New Delhi": 8 letters and a space
    assert NEEDS["answer_tokens"] == () and NEEDS["answer_chars"] == ()  # nothing beyond the greedy pass
    frame = generations(40, 3)
    m = pipeline.evaluate(frame, n_bootstrap=0)
    wrong = ~frame["correct"].astype(bool).to_numpy()
    length = frame["token_ids"].map(len).to_numpy()
    # AUROC by hand: the share of (wrong, right) pairs where the wrong answer is longer, ties half
    pairs = [(a > b) + 0.5 * (a == b) for a in length[wrong] for b in length[~wrong]]
    assert m["auroc_answer_tokens"] == pytest.approx(np.mean(pairs))


def test_defaults_keep_the_hash_runs_were_recorded_with():
    """Settings added since (judges, most_likely, p_true_few_shot, batch_compositions) leave the
    configuration hash alone at their defaults, so a grid does not run its finished cells again."""
    assert RunConfig().hash() == "1a41de9cd46d7b47"
    assert RunConfig(judges="em").hash() != RunConfig().hash()
    assert RunConfig(batch_compositions=3).hash() != RunConfig().hash()


# ---------------------------------------------------------------- judges side by side

@pytest.mark.parametrize("answer,refs,expected", [
    ("The Indian Rupee (INR) is the official currency of India.", ["Indian rupee", "INR"], 1.0),
    ("Parisian cafes", ["Paris"], 0.0),  # whole words only
    ("the 1919 Paris Olympics in 1910.", ["1920"], 0.0),
    ("Vitamin A", ["Vitamin D", "D"], 0.0),  # token F1 >= 0.5 calls this right
    ("anything", [""], 0.0),  # an empty reference never matches
])
def test_containment_judge(answer, refs, expected):
    assert contains_reference(answer, refs) == expected
    assert make_judge("contains").judge("q", answer, refs).correct is bool(expected)


def test_extra_judges_agreement_by_hand():
    """The run's verdicts [T, T, F, F] and em's [T, F, F, F]: accuracy 0.25, agreement 0.75, and
    Cohen's kappa (0.75 - 0.5) / (1 - 0.5) = 0.5, with chance agreement 0.5*0.25 + 0.5*0.75 = 0.5."""
    frame = pd.DataFrame({"question": ["q"] * 4, "answer": ["a", "b c", "d", "e"],
                          "references": [["a"], ["b"], ["x"], ["y"]], "answerable": [True] * 4})
    frame["correct"] = pd.array([True, True, False, False], dtype="boolean")
    frame = pipeline.add_verdicts(frame, {"em": make_judge("em")})
    assert frame["judge.em"].tolist() == [True, False, False, False]
    m = pipeline.judge_metrics(frame)
    assert m == pytest.approx({"judge/em/accuracy": 0.25, "judge/em/agreement": 0.75, "judge/em/kappa": 0.5})
    # an undecided verdict (pandas' NA, whose truth value raises) is left out of both counts
    frame["judge.em"] = pd.array([True, None, False, False], dtype="boolean")
    assert pipeline.verdict_list(frame["judge.em"]) == [True, None, False, False]
    m = pipeline.judge_metrics(frame)
    assert m["judge/em/accuracy"] == pytest.approx(1 / 3) and m["judge/em/agreement"] == pytest.approx(1.0)


def test_verdicts_are_stored_and_checked_like_correct(tracking, tmp_path):
    """A run's extra judges' verdicts reach the store as {judge: verdict}; verdicts written as text
    are refused like `correct` written as text."""
    from uqflow.store import run_query

    judge = "llm:SmolLM2-135M-Instruct"  # a model's verdicts: undecided ones are kept as such
    url = f"sqlite:///{tmp_path / 'r.db'}"
    good = log_run(n=10, seed=1, settings={"judges": judge}, transform=lambda frame: frame.assign(
        **{f"judge.{judge}": pd.array([True, None] + [False] * 8, dtype="boolean")}))
    assert invoke("aggregate", "--db", url).exit_code == 0
    stored = run_query("SELECT verdicts FROM generations ORDER BY position LIMIT 2", url).rows
    assert [json.loads(v) if isinstance(v, str) else v for (v,) in stored] == [{judge: True}, {judge: None}]
    path = mlflow.get_run(good).info.artifact_uri.removeprefix("file://") + "/generations.parquet"
    frame = pd.read_parquet(path)
    frame[f"judge.{judge}"] = frame[f"judge.{judge}"].astype(str)
    frame.to_parquet(path, index=False)  # the changed file is read again (its checksum is in the run's digest)
    res = invoke("aggregate", "--db", url)
    assert res.exit_code == 1 and f"column 'judge.{judge}' holds text, expected true/false" in res.output, res.output


def test_unknown_extra_judge_is_refused_before_loading(tracking):
    res = invoke("run", "--set", "judges=em,exact")
    assert res.exit_code == 1 and "unknown correctness judge 'exact'" in res.output, res.output
    res = invoke("run", "--set", "judges=em,,em")
    assert res.exit_code == 1 and "judges must be judge names separated by commas, each once" in res.output
    # the run's own judge may be listed among them: it is judged once, as the run's
    assert RunConfig(judges="f1, em").judge_names == ("em",) and RunConfig(judges="em,f1,contains").judge_names == (
        "em", "contains")


# ---------------------------------------------------------------- the report's objections

@pytest.fixture
def small_store(tracking, tmp_path):
    """Three runs as `uqflow run` logs them, one with extra judges' verdicts, aggregated."""
    from uqflow.store import aggregate

    from uqflow.scoring import pipeline
    from uqflow.scoring.judges import make_judge

    def em_disagrees_thrice(frame):
        """The first three answers' reference gains a word: token F1 still counts them right, exact
        match does not, so em disagrees with the run's judge on those three, as a real em would."""
        frame = frame.copy()
        frame["references"] = [[f"{a} x"] if i < 3 else list(r)
                               for i, (a, r) in enumerate(zip(frame["answer"], frame["references"]))]
        frame = pipeline.add_correctness(frame, make_judge("f1"))
        return pipeline.add_verdicts(frame, {"em": make_judge("em")})

    url = f"sqlite:///{tmp_path / 'r.db'}"
    judged = log_run("SmolLM2-135M-Instruct", "trivia_mini", 30, 1, settings={"judges": "em"},
                     transform=em_disagrees_thrice)
    log_run("Gemma-3-270M", "trivia_mini", 120, 2)
    log_run("SmolLM2-135M-Instruct-8bit", "trivia_mini", 30, 3)
    aggregate(url=url)
    return url, judged


def test_objections_rows_from_the_store(small_store):
    from uqflow.report.data import load_study
    from uqflow.report.objections import objections

    url, judged = small_store
    o = objections(load_study(url))
    assert {r["measure"] for r in o["length"]} == {"g_nll", "ln_g_nll", "max_nll", "mean_entropy", "rw_g_nll"}
    assert all(0 <= r["p_value"] <= 1 for r in o["length"] if math.isfinite(r["p_value"]))
    em = [j for j in o["judges"] if j["judge"] == "em"]
    assert len(em) == 1 and em[0]["run_id"] == judged and em[0]["agreement"] == pytest.approx(27 / 30)
    assert len(o["judge_disagreements"]) == 3  # the three flipped answers, each shown
    assert {a["judge"] for a in o["judge_aurocs"]} == {"em", "f1"}
    warned = {p["label"] for p in o["power"] if p["warning"]}
    assert warned == {"SmolLM2-135M-Instruct × trivia_mini", "SmolLM2-135M-Instruct-8bit × trivia_mini"}
    for p in o["power"]:  # at 400 questions a smaller difference is detectable than at the run's own n
        assert 0 < p["min_detectable_difference_at_400"] < p["min_detectable_difference"] or p["n"] >= 400
    assert {c["measure"] for c in o["calibration"]} >= {"g_nll", "answer_tokens"}
    assert all(0 <= c["ece"] <= 1 and 0 <= c["brier"] <= 1 for c in o["calibration"] if c["ece"] == c["ece"])


def test_the_report_shows_the_objections_and_the_new_figures(small_store, tmp_path):
    from uqflow.report import build_report

    url, _ = small_store
    r = build_report(url, tmp_path / "rep", log_to_mlflow=False)
    html = r.html.read_text()
    for phrase in ("Before believing a ranking", "Beyond answer length", "The correctness judge",
                   "Calibration and selective prediction", "Statistical power", "Small runs:",
                   "fewer than 100 answers or 10 of a class"):
        assert phrase in html, phrase
    assert {"reliability_diagram", "risk_coverage"} <= set(r.figures)
    summary = json.loads(r.summary.read_text())
    assert summary["runs"][0]["scores"]["g_nll"]["ece"] is not None


def test_calibration_and_risk_coverage_are_queryable_like_auroc(small_store):
    from uqflow.store import run_query

    url, judged = small_store
    rows = run_query(f"SELECT measure, ece, brier, aurc FROM v_run_scores WHERE run_id = '{judged}'", url).frame()
    assert set(rows["measure"]) == set(SINGLE_PASS)
    run = mlflow.get_run(judged)
    g = rows.set_index("measure").loc["g_nll"]
    assert g["aurc"] == pytest.approx(run_metrics(run)["aurc_g_nll"]) and g["ece"] == pytest.approx(
        run_metrics(run)["ece_g_nll"])


# ---------------------------------------------------------------- the bundled models

@pytest.mark.slow
def test_reference_conventions_run_offline_on_the_bundled_model(tracking):
    """most_likely=sampled (one sample at T = 0.1) and few-shot p(True) on SmolLM2: the run logs
    them, a 16-question run warns that it is small, and few-shot p(True) costs more than zero-shot."""
    common = ["run", "--num-samples", "16", "--set", "max_new_tokens=16", "--set", "num_generations=2",
              "--set", "entailment=embedding:all-MiniLM-L6-v2", "--set", "n_bootstrap=50"]
    res = invoke(*common, "--set", "most_likely=sampled", "--set", "p_true_few_shot=3")
    assert res.exit_code == 0, res.output
    assert "Warning: n=16 (" in res.output and "fewer than 100 answers" in res.output
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    shot = runs[0]
    assert shot.data.params["most_likely"] == "sampled" and shot.data.params["p_true_few_shot"] == "3"
    assert invoke(*common).exit_code == 0
    zero = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
            if r.info.run_id != shot.info.run_id][0]
    assert run_metrics(shot)["part_tokens_p_true"] > run_metrics(zero)["part_tokens_p_true"] == 0
    assert run_metrics(shot)["part_passes_p_true"] > run_metrics(zero)["part_passes_p_true"]
    frames = [tr.load_frame(r.info.run_id) for r in (shot, zero)]
    same = np.mean([a == b for a, b in zip(frames[0]["answer"], frames[1]["answer"])])
    assert same >= 0.5, same  # at T = 0.1 the sampled answer is mostly the greedy one (11 of 16 here)
    for f in frames:  # G-NLL stays the sum of the stored raw log-probabilities
        assert f["g_nll"].tolist() == pytest.approx([-sum(lp) for lp in f["token_logprobs"]])


@pytest.mark.slow
def test_the_8bit_spread_over_batch_compositions(tracking):
    """An 8-bit model answers again in two more batch compositions and logs the spread; an
    unquantized model, whose answers do not depend on the batch, ignores the setting."""
    args = ["--num-samples", "24", "--set", "max_new_tokens=16", "--set", "batch_compositions=3", "--set", "n_bootstrap=0"]
    assert invoke("run", "--model", "SmolLM2-135M-Instruct-8bit", *args).exit_code == 0
    assert invoke("run", "--model", "SmolLM2-135M-Instruct", *args).exit_code == 0
    by_model = {r.data.tags["model"]: run_metrics(r) for r in mlflow.search_runs(search_all_experiments=True,
                                                                                   output_format="list")}
    q = by_model["SmolLM2-135M-Instruct-8bit"]
    assert q["batch_spread/compositions"] == 3
    assert q["batch_spread/auroc_g_nll_min"] <= q["auroc_g_nll"] <= q["batch_spread/auroc_g_nll_max"]
    assert q["batch_spread/accuracy_min"] <= q["accuracy"] <= q["batch_spread/accuracy_max"]
    assert 0 <= q["batch_spread/changed_answers"] <= 1
    assert not any(k.startswith("batch_spread/") for k in by_model["SmolLM2-135M-Instruct"])
