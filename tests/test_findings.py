"""Findings that survive the obvious objections: answer length as a zero-cost score, several
judges side by side, calibration and risk-coverage in the store, small-run warnings and power,
the reference code's conventions (a sampled most likely answer, few-shot p(True)) and the 8-bit
spread over batch compositions. Values are checked against hand computations where the behaviour
is arithmetic, and against the bundled models where it depends on them."""

from __future__ import annotations

import json
import math
from html import unescape

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


# ---------------------------------------------------------------- the first screen: findings with their caveats

def judged_right(right):
    """A transform for `log_run`: the answers ``right(i, tokens)`` calls right keep their reference and
    the others get another text, so the run's judge (token F1) decides them so, as aggregation will."""
    def transform(frame):
        frame = frame.copy()
        frame["references"] = [[a] if right(i, t) else [f"another answer {i}"]
                               for i, (a, t) in enumerate(zip(frame["answer"], frame["tokens"]))]
        return pipeline.add_correctness(frame, make_judge("f1"))
    return transform


def no_signal(frame):
    """A transform for `log_run`: log-probabilities drawn alike for right and wrong answers, so the
    run's G-NLL flags nothing (its scores recomputed from them, as aggregation will)."""
    rng = np.random.default_rng(0)
    frame = frame.copy()
    frame["token_logprobs"] = [(-rng.exponential(0.6, size=len(t))).tolist() for t in frame["tokens"]]
    return pipeline.add_scores(frame)


def _first_screen(url, tmp_path):
    """summary.json's findings, the study and report.html of a report over the store at ``url``."""
    from uqflow.report import build_report, load_study

    r = build_report(url, tmp_path / "rep", log_to_mlflow=False)
    return json.loads(r.summary.read_text())["findings"], load_study(url), r.html.read_text()


def test_report_findings_name_what_the_compared_models_differ_in(tracking, tmp_path):
    """Two families whose models differ in size, tuning and accuracy, one of them wrong on its long
    answers, on 60 questions each: the family finding carries each of those caveats, with the study's
    own numbers."""
    from uqflow.models import MODELS
    from uqflow.report.findings import LENGTH_SIGNAL
    from uqflow.store import aggregate

    rng = np.random.default_rng(3)
    noise = rng.random(400) < 0.1
    smol = log_run("SmolLM2-135M-Instruct", "trivia_mini", 60, 1,
                   transform=judged_right(lambda i, t: (len(t) <= 3) != noise[i]))  # its long answers wrong
    gemma = log_run("Gemma-3-270M", "trivia_mini", 60, 2, transform=judged_right(lambda i, t: i % 4 == 0))
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    rows, study, html = _first_screen(url, tmp_path)

    assert [r["key"] for r in rows] == ["family"]  # one size per family, one dataset: the family question only
    caveats = {c["kind"]: c["text"] for c in rows[0]["caveats"]}
    assert {"size", "tuning", "accuracy", "length", "n"} <= set(caveats), caveats
    runs = study.runs.set_index("run_id")
    for rid in (smol, gemma):
        spec = MODELS.get(runs.loc[rid, "model"])
        assert f"{spec.family} {spec.size_b:g}B" in caveats["size"]
        assert f"{spec.family} {'instruct' if spec.instruct else 'base'}" in caveats["tuning"]
        assert f"{spec.family} {runs.loc[rid, 'accuracy']:.2f}" in caveats["accuracy"]
    gap = abs(runs.loc[smol, "accuracy"] - runs.loc[gemma, "accuracy"])
    assert gap >= 0.1 and f"up to {gap:.2f} apart" in caveats["accuracy"]
    length = {r["run_id"]: r for r in json.loads((tmp_path / "rep" / "summary.json").read_text())["objections"][
        "length"] if r["measure"] == "g_nll"}
    assert length[smol]["length_auroc"] >= LENGTH_SIGNAL and length[gemma]["length_auroc"] < LENGTH_SIGNAL
    assert caveats["length"] == (f"in 1 of 2 runs: SmolLM2-135M-Instruct: length alone "
                                 f"{length[smol]['length_auroc']:.2f} vs G-NLL {length[smol]['auroc']:.2f}")
    assert "2 of 2 runs with too few answers to rank" in caveats["n"]  # 60 answers each
    assert rows[0]["not_checked"][0]["kind"] == "judge"  # no run stored a second judge: said, not passed
    first = html[html.index('id="first-screen"'):html.index('id="findings"')]
    assert 'id="fig-headline"' in first and 'class="caveats"' in first
    assert all(c["text"] in unescape(first) for c in rows[0]["caveats"])


def test_report_findings_of_alike_models_have_none_of_those_caveats(tracking, tmp_path):
    """A model against its own 8-bit variant on the same 200 answers (same size, tuning and accuracy),
    the 8-bit run's G-NLL flagging nothing: the quantization finding has no caveat, and says what was
    checked."""
    from uqflow.report.findings import CAVEATS
    from uqflow.store import aggregate

    log_run("SmolLM2-135M-Instruct", "trivia_mini", 200, 1)
    log_run("SmolLM2-135M-Instruct-8bit", "trivia_mini", 200, 1, transform=no_signal)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    rows, study, html = _first_screen(url, tmp_path)

    assert study.runs["accuracy"].nunique() == 1 and study.runs["size_b"].nunique() == 1
    (row,) = [r for r in rows if r["key"] == "quantization"]
    assert row["caveats"] == []
    assert row["checked"] == ["size", "tuning", "accuracy", "length", "n"]  # the precision is what it compares
    cell = html[html.index('href="#q-quantization"'):]
    cell = unescape(cell[:cell.index("</tr>")])
    assert "None found; checked: " + "; ".join(CAVEATS[k][1] for k in row["checked"]) in cell


def _hand_built_study(tags, aurocs):
    """A study of two runs, A (family F, accuracy 0.5) and B (family G, accuracy 0.55), 200 answers
    each, as a `Study` built by hand: ``tags`` per run, ``aurocs`` {(run, judge): G-NLL AUROC}."""
    from uqflow.report.data import Study

    runs = pd.DataFrame({"run_id": ["A", "B"], "model": ["m-a", "m-b"], "family": ["F", "G"], "size_b": [1.0, 1.0],
                         "quantization": ["none", "none"], "dataset": ["d", "d"], "accuracy": [0.5, 0.55],
                         "label": ["m-a × d", "m-b × d"], "tags": [json.dumps(tags[r]) for r in "AB"]})
    scores = pd.DataFrame({"run_id": ["A", "B"], "precision": ["full", "full"]})
    objections = {
        "length": [], "power": [{"run_id": r, "label": r, "n": 200, "wrong": 100, "right": 100, "warning": None}
                                for r in "AB"],
        "judges": [{"run_id": r, "judge": "f1", "own": True} for r in "AB"],
        "judge_aurocs": [{"run_id": r, "judge": j, "measure": "g_nll", "auroc": a} for (r, j), a in aurocs.items()],
    }
    return Study("hand-built", runs, scores, pd.DataFrame(), {}), objections


def test_a_report_finding_another_judge_reverses_is_flagged_and_an_unrecorded_tuning_is_not_guessed():
    """Pure rows: the judge em ranks the families the other way round from the runs' own judge; run
    A predates the instruct tag, so tuning is "not recorded", neither base nor instruct."""
    from uqflow.report.findings import finding_row

    study, objections = _hand_built_study(
        {"A": {}, "B": {"instruct": "false"}},
        {("A", "f1"): 0.8, ("B", "f1"): 0.7, ("A", "em"): 0.6, ("B", "em"): 0.75})
    answer = {"key": "family", "comparisons": [], "numbers": {}}
    row = finding_row(study, "family", "q", "F 0.8, G 0.7", "#q-family", [[("F", ["A"]), ("G", ["B"])]], answer,
                      objections, "g_nll")
    caveats = {c["kind"]: c["text"] for c in row["caveats"]}
    assert caveats == {"judge": "the order changes under em: G 0.75, F 0.60"}
    assert {c["kind"]: c["why"] for c in row["not_checked"]} == {
        "tuning": "not recorded for m-a",
        "length": "no compared run has a length test of G-NLL"}  # no length rows: not tested, not passed
    assert {"size", "accuracy", "n"} <= set(row["checked"])

    agree = {("A", "f1"): 0.8, ("B", "f1"): 0.7, ("A", "em"): 0.78, ("B", "em"): 0.72}
    study, objections = _hand_built_study({"A": {"instruct": "true"}, "B": {"instruct": "false"}}, agree)
    row = finding_row(study, "family", "q", "", "#q-family", [[("F", ["A"]), ("G", ["B"])]], answer, objections,
                      "g_nll")
    assert {c["kind"]: c["text"] for c in row["caveats"]} == {"tuning": "F instruct vs G base"}
    assert "judge" in row["checked"]

    # the cost finding compares measures within each run: only what bears on one run is checked
    row = finding_row(study, "cost", "q", "", "#q-cost-summary", [[("m-a × d", ["A"])]], None, objections, "g_nll")
    assert row["caveats"] == [] and row["checked"] == ["n"] and [c["kind"] for c in row["not_checked"]] == ["length"]


# ---------------------------------------------------------------- the bundled models

@pytest.mark.slow
def test_reference_conventions_run_offline_on_the_bundled_model(tracking):
    """most_likely=sampled (one sample at T = 0.1) and few-shot p(True) on SmolLM2: the run logs
    them, a 16-question run warns that it is small, and few-shot p(True) costs more than zero-shot."""
    common = ["run", "--num-questions", "16", "--set", "max_new_tokens=16", "--set", "num_generations=2",
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
    args = ["--num-questions", "24", "--set", "max_new_tokens=16", "--set", "batch_compositions=3", "--set", "n_bootstrap=0"]
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
