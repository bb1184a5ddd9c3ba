"""Sampled answers beside the greedy one, the measures made from them and what they cost, on the
bundled models (scoring/semantic.py's measures are checked against hand-computed values in
test_semantic.py)."""

import subprocess

import mlflow
import pandas as pd
import pytest

from commands import UQFLOW
from store_fixtures import log_run
from uqflow.config import RunConfig
from uqflow.data import load_dataset
from uqflow.errors import ConfigError
from uqflow.checks import check
from uqflow.scoring.llm import p_true_inputs
from uqflow.rescore import rescore
from uqflow.generation import make_engine
from uqflow.prompts import PromptOptions, build_prompts, draw_few_shot
from uqflow.scoring.cost import NEEDS, PARTS, UNITS, part_metric
from uqflow.scoring.measures import SAMPLED, score_sampled_row
from uqflow.tracking import run_metrics

JUDGE = "llm:SmolLM2-135M-Instruct"


def _prompts(lm, n=6, dataset="trivia_mini"):
    ds = load_dataset(dataset)
    shots = draw_few_shot(ds.few_shot_pool, 3, 10)
    prompts, _ = build_prompts(ds.examples[:n], shots, lm.tokenizer, instruct=lm.spec.instruct, opts=PromptOptions(),
                               max_prompt_tokens=2000)
    return [p.token_ids for p in prompts]


@pytest.mark.slow
def test_samples_are_reproducible_and_their_records_agree(smollm):
    ids = _prompts(smollm)
    engine = make_engine("hf", smollm, max_new_tokens=20)
    a = engine.sample(ids, 4, temperature=1.0, seed=3)
    b = make_engine("hf", smollm, max_new_tokens=20).sample(ids, 4, temperature=1.0, seed=3)
    c = make_engine("hf", smollm, max_new_tokens=20).sample(ids, 4, temperature=1.0, seed=4)
    assert [[s.text for s in row] for row in a] == [[s.text for s in row] for row in b]
    assert [[s.token_ids for s in row] for row in a] != [[s.token_ids for s in row] for row in c]
    assert all(len(row) == 4 for row in a)
    texts = {s.text for row in a for s in row}
    assert len(texts) > len(ids), "temperature 1 draws different answers to one question"
    # each sample's record agrees with itself as a greedy answer's does, and its stored log-probabilities
    # are the model's own: a teacher-forced pass over the sampled tokens gives the same total
    flat = [(p, s) for p, row in zip(ids, a) for s in row if s.token_ids]
    for _, s in flat:
        assert smollm.tokenizer.decode(s.token_ids, skip_special_tokens=True).strip() == s.text
        assert len(s.token_logprobs) == len(s.token_ids) and s.stop_reason in ("stop_sequence", "eos", "length")
    forced = engine.continuation_logprobs([p for p, _ in flat], [s.token_ids for _, s in flat])
    assert forced == pytest.approx([sum(s.token_logprobs) for _, s in flat], abs=2e-3)
    # a one-token continuation (p(True)'s "A") takes the prefill's path, with the same result
    first = engine.continuation_logprobs([p for p, _ in flat], [s.token_ids[:1] for _, s in flat])
    assert first == pytest.approx([s.token_logprobs[0] for _, s in flat], abs=2e-3)
    # every decoded token is counted: the samples' tokens at least, the stop tokens beyond them; and
    # the passes: one prefill per prompt, shared by its 4 answers, then one per further token
    tokens = engine.tokens["sampled"]
    assert tokens >= sum(len(s.token_ids) for row in a for s in row)
    assert engine.passes["sampled"] == tokens - len(ids) * (4 - 1)
    assert engine.passes["greedy"] == engine.tokens["greedy"] == 0


@pytest.mark.slow
def test_a_near_zero_temperature_samples_the_greedy_answer(smollm):
    ids = _prompts(smollm, 4)
    engine = make_engine("hf", smollm, max_new_tokens=20)
    greedy = engine.generate(ids)
    cold = engine.sample(ids, 2, temperature=1e-4, seed=0)
    assert [[s.token_ids for s in row] for row in cold] == [[g.token_ids, g.token_ids] for g in greedy]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm", "gemma"])
def test_p_true_prompts_end_where_the_answer_A_begins(request, fixture):
    lm = request.getfixturevalue(fixture)
    prompts, conts = p_true_inputs(lm.tokenizer, lm.spec.instruct, ["Question: What is 2+2?\nPossible answer: 4\n"
                                                                     "Is the possible answer:\nA) True\nB) False\n"
                                                                     "The possible answer is:"])
    assert lm.tokenizer.decode(conts[0]).strip() == "A"
    whole = lm.tokenizer.decode(prompts[0] + conts[0])
    assert whole.rstrip().endswith("A") and "The possible answer is:" in whole


def test_sampling_settings_leave_the_hash_of_runs_that_do_not_sample():
    base = RunConfig()
    assert RunConfig(temperature=0.5, entailment="llm:x", strict_entailment=True).hash() == base.hash()
    assert RunConfig(num_generations=5).hash() != base.hash()
    assert RunConfig(num_generations=5, temperature=0.5).hash() != RunConfig(num_generations=5).hash()
    with pytest.raises(ConfigError, match="num_generations"):
        RunConfig(num_generations=-1)
    with pytest.raises(ConfigError, match="temperature"):
        RunConfig(temperature=0)


def test_an_unknown_or_unreachable_entailment_model_is_refused_before_a_run(monkeypatch, tmp_path):
    _, _, problems = check(RunConfig(num_samples=2, num_generations=2, entailment="nosuch"))
    assert any("unknown entailment model 'nosuch'" in str(p) for p in problems)
    _, _, problems = check(RunConfig(num_samples=2, num_generations=2, entailment="llm:NoSuchModel"))
    assert any("NoSuchModel" in str(p) for p in problems)
    monkeypatch.setattr("uqflow.hub.model_cached", lambda repo: False)
    _, _, problems = check(RunConfig(num_samples=2, num_generations=2, entailment="deberta-large-mnli"))
    assert any("entailment=llm:" in str(p) for p in problems)
    # without sampling the entailment model is never used, so it is not checked
    assert not check(RunConfig(num_samples=2, entailment="nosuch"))[2]


def test_the_cli_says_in_one_line_that_the_entailment_model_is_unknown(tracking, venv_env):
    out = subprocess.run([*UQFLOW, "run", "--num-questions", "2", "--set", "num_generations=2",
                          "--set", "entailment=nosuch"], capture_output=True, text=True, env=venv_env, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "unknown entailment model 'nosuch'" in out.stderr


def _costs(m, measure):
    return {u: m[f"cost_{u}_{measure}"] for u in UNITS}


@pytest.mark.slow
def test_a_run_that_samples_logs_every_measure_with_its_cost_and_rescores(sampled_run):
    """The session's finished run (tests/conftest.py: 3 samples, the model asked as entailment judge,
    its judge cache empty at the start)."""
    assert sampled_run.config.num_generations == 3 and sampled_run.config.entailment == JUDGE
    m = run_metrics(mlflow.get_run(sampled_run.run_id))
    frame = pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=sampled_run.run_id,
                                                                artifact_path="generations.parquet"))
    # the samples and their clusters are stored, and every sampled measure is recomputable from its row
    assert all(len(s) == 3 and len(ids) == 3 and len(lp) == 3
               for s, ids, lp in zip(frame["samples"], frame["semantic_ids"], frame["sample_token_logprobs"]))
    for _, row in frame.iterrows():
        assert list(row["semantic_ids"])[0] == 0 and max(row["semantic_ids"]) < 3
        for name, value in score_sampled_row(row).items():
            assert row[name] == pytest.approx(value, nan_ok=True), name
        assert row["num_semantic_sets"] == len(set(row["semantic_ids"]))
        assert row["p_true"] == pytest.approx(-row["log_p_true"]) and row["log_p_true"] < 0
    if frame["correct"].nunique() == 2:
        assert all(f"auroc_{name}" in m for name in SAMPLED)
    # costs: nothing beyond the greedy pass for the single-pass scores; each measure the sum of its parts
    for name in ("g_nll", "ln_g_nll", "max_nll", "mean_entropy"):
        assert _costs(m, name) == {"passes": 0, "tokens": 0, "seconds": 0}
    parts = {p: {u: m[part_metric(p, u)] for u in UNITS} for p in PARTS}
    for name, need in NEEDS.items():
        for u in UNITS:
            assert m[f"cost_{u}_{name}"] == pytest.approx(sum(parts[p][u] for p in need)), (name, u)
    sampled_tokens = sum(len(ids) for row in frame["sample_token_ids"] for ids in row)
    assert parts["sampling"]["tokens"] * len(frame) >= sampled_tokens >= 1  # stop tokens are decoded too
    # one prefill per question for its 3 answers, then a pass per further token
    assert parts["sampling"]["passes"] == pytest.approx(parts["sampling"]["tokens"] - 2)
    assert parts["sampling"]["seconds"] > 0
    assert parts["p_true"] == {"passes": 1, "tokens": 0, "seconds": pytest.approx(parts["p_true"]["seconds"])}
    # the LLM judge picks a label word by likelihood: one pass per pair it judged, no generated tokens
    assert parts["entailment"]["passes"] > 0 and parts["entailment"]["tokens"] == 0
    assert parts["relevance"]["passes"] == pytest.approx(frame["token_ids"].map(len).mean() + 1)
    ratio = m["cost_passes_semantic_entropy"] / m["greedy_passes_per_question"]
    assert ratio > 3, "three samples and their clustering cost more than three greedy passes"

    # rescoring reclusters the stored samples with other entailment settings, without sampling again
    again = rescore(sampled_run.run_id, {"strict_entailment": "true"})
    m2 = run_metrics(mlflow.get_run(again.run_id))
    for u in UNITS:  # the sampling and p(True) cost what they cost in the source run
        assert m2[part_metric("sampling", u)] == pytest.approx(m[part_metric("sampling", u)])
        assert m2[part_metric("p_true", u)] == pytest.approx(m[part_metric("p_true", u)])
    assert m2["part_passes_entailment"] == 0, "every judgment is cached by the first run"
    strict = again.frame
    assert [list(x) for x in strict["samples"]] == [list(x) for x in frame["samples"]]
    # strict equivalence can only split clusters
    assert all(len(set(b)) >= len(set(a)) for a, b in zip(frame["semantic_ids"], strict["semantic_ids"]))


@pytest.mark.slow
def test_sampled_measures_and_costs_reach_the_store_and_the_report(sampled_run, tmp_path):
    from uqflow.report.build import build_report
    from uqflow.store.aggregation import aggregate

    result = sampled_run
    log_run(dataset="squad_mini", n=10)  # a run that did not sample, beside it
    db = f"sqlite:///{tmp_path / 'results.db'}"
    aggregate(url=db)
    from sqlalchemy import create_engine, text

    with create_engine(db).connect() as conn:
        rows = {r.measure: r for r in conn.execute(text(
            "SELECT measure, auroc, cost_passes, cost_tokens, cost_seconds FROM scores WHERE run_id = :r"),
            {"r": result.run_id})}
        run = conn.execute(text("SELECT num_generations, entailment FROM runs WHERE run_id = :r"),
                           {"r": result.run_id}).one()
        gens = conn.execute(text("SELECT semantic_entropy, samples, semantic_ids FROM generations WHERE run_id = :r"),
                            {"r": result.run_id}).all()
        plain = conn.execute(text("SELECT num_generations, entailment FROM runs WHERE run_id != :r"),
                             {"r": result.run_id}).one()
    assert tuple(run) == (3, JUDGE) and tuple(plain) == (0, None)
    assert set(SAMPLED) <= set(rows) or run_metrics(mlflow.get_run(result.run_id))["accuracy"] in (0, 1)
    assert rows["g_nll"].cost_seconds == 0 and rows["rw_g_nll"].cost_passes > 0
    if "semantic_entropy" in rows:
        assert rows["semantic_entropy"].cost_seconds > rows["predictive_entropy"].cost_seconds > 0
    assert len(gens) == 10 and all(g.samples is not None and g.semantic_ids is not None for g in gens)
    report = build_report(db, tmp_path / "report", log_to_mlflow=False)
    html = report.html.read_text()
    assert "AUROC against cost" in html and "cheapest adequate measure" in html
    assert "auroc_vs_cost" in report.figures


def test_a_rescore_setting_that_changes_nothing_is_refused(tracking):
    """strict_entailment under the embedding judge gives the same clusters (it labels a pair the same
    both ways or neither): refused before anything is read or logged, not recorded as applied."""
    from uqflow.rescore import RescoreError

    run = log_run(n=6, settings={"num_generations": 2, "entailment": "embedding:all-MiniLM-L6-v2"})
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with pytest.raises(RescoreError, match="strict_entailment changes no cluster"):
        rescore(run, {"strict_entailment": "true"})
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before
