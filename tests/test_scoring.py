"""Scores, correctness and AUROC on hand-built values."""

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from uqflow.scoring.correctness import exact_match, f1_correct, max_f1, normalize_squad, token_f1
from uqflow.scoring.evaluation import OneClassWarning, auroc, auroc_with_ci
from uqflow.scoring.measures import score_row
from uqflow.scoring.uncertainty import g_nll, ln_g_nll, max_token_nll, mean_token_entropy, rw_g_nll


def test_g_nll_family_by_hand():
    lp = [math.log(0.5), math.log(0.25), math.log(1.0)]
    assert g_nll(lp) == pytest.approx(math.log(2) + math.log(4))
    assert ln_g_nll(lp) == pytest.approx((math.log(2) + math.log(4)) / 3)
    assert max_token_nll(lp) == pytest.approx(math.log(4))
    assert mean_token_entropy([0.1, 0.3]) == pytest.approx(0.2)


def test_empty_answer_scores():
    assert g_nll([]) == 0.0
    assert math.isnan(ln_g_nll([])) and math.isnan(max_token_nll([])) and math.isnan(rw_g_nll([], []))


def test_rw_g_nll_weights_without_rescaling():
    lp = [math.log(0.5), math.log(0.1)]
    nll = [math.log(2), math.log(10)]
    # weights used as given: 0.9 and 0.1 (a min-max rescale would turn them into 1 and 0)
    assert rw_g_nll(lp, [0.9, 0.1]) == pytest.approx((0.9 * nll[0] + 0.1 * nll[1]) / 1.0)
    assert rw_g_nll(lp, [0.2, 0.2]) == pytest.approx(ln_g_nll(lp))
    assert rw_g_nll(lp, [0.0, 0.0]) == pytest.approx(ln_g_nll(lp))
    with pytest.raises(ValueError, match="2 weights for 3 tokens"):
        rw_g_nll([0.0, 0.0, 0.0], [1.0, 1.0])


def test_score_row_reads_row_fields():
    row = {"token_logprobs": [-1.0, -2.0], "token_entropies": [0.5, 1.5], "relevance": [1.0, 0.0],
           "token_ids": [7, 8], "answer": " Leo Tolstoy"}
    s = score_row(row)
    assert s == {"g_nll": 3.0, "ln_g_nll": 1.5, "max_nll": 2.0, "mean_entropy": 1.0, "rw_g_nll": 1.0,
                 "answer_tokens": 2.0, "answer_chars": 11.0}


@pytest.mark.parametrize("pred,ref,f1", [
    ("Paris", "Paris", 1.0),
    ("The Paris.", "paris", 1.0),  # article, punctuation and case are normalised away
    ("Leo Tolstoy", "Tolstoy", 2 / 3),  # precision 1/2, recall 1
    ("a spider has eight legs", "eight", 0.4),  # 'a' dropped: precision 1/4, recall 1
    ("New York City", "York New", 0.8),  # bag of tokens: 2 shared, p=2/3, r=1
    ("", "Paris", 0.0),
    ("the", "a", 1.0),  # both normalise to empty: SQuAD counts that as a match
])
def test_token_f1_hand_worked(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_max_f1_exact_match_and_threshold():
    refs = ["William Shakespeare", "Shakespeare"]
    assert max_f1("Shakespeare", refs) == 1.0
    assert exact_match("shakespeare!", refs) == 1.0 and exact_match("Bill Shakespeare", refs) == 0.0
    assert f1_correct("Leo Tolstoy", ["Tolstoy"]) and not f1_correct("Count Leo Nikolayevich Tolstoy", ["Tolstoy"])
    assert max_f1("anything", []) == 0.0
    assert normalize_squad("  The  Beatles, an  Band ") == "beatles band"


def test_auroc_matches_sklearn_and_convention():
    rng = np.random.default_rng(1)
    correct = rng.random(200) < 0.5
    score = rng.normal(size=200) + (~correct) * 1.0  # wrong answers score higher
    assert auroc(correct, score) == pytest.approx(roc_auc_score(~correct, score))
    assert auroc(correct, score) > 0.7
    assert auroc([True, False], [0.0, 1.0]) == 1.0  # wrong answer more uncertain: perfect
    assert auroc([True, False], [1.0, 0.0]) == 0.0


def test_auroc_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    correct = rng.random(150) < 0.4
    score = rng.normal(size=150) + (~correct) * 0.7
    a = auroc_with_ci(correct, score, seed=3)
    b = auroc_with_ci(correct, score, seed=3)
    assert a == b
    assert a.ci_low < a.auroc < a.ci_high and 0 <= a.ci_low and a.ci_high <= 1
    assert a.n == 150 and a.n_incorrect == int((~correct).sum())


def test_one_class_gives_nan_and_warning_not_half():
    with pytest.warns(OneClassWarning):
        r = auroc_with_ci([True, True, True], [0.1, 0.2, 0.3])
    assert math.isnan(r.auroc) and math.isnan(r.ci_low) and math.isnan(r.ci_high)


def test_nan_scores_are_left_out():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auroc([True, False, False], [0.0, float("nan"), 1.0]) == 1.0


def test_interval_needs_two_of_each_class():
    r = auroc_with_ci([True, True, False], [0.1, 0.2, 0.9])
    assert r.auroc == 1.0 and math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert math.isnan(auroc_with_ci([True, False, True, False], [0, 1, 0, 1], n_resamples=0).ci_low)


# ---------------------------------------------------------------- selective prediction and DeLong

from uqflow.scoring.evaluation import (accuracy_at_coverage, aurac, delong_test, delong_variance, prr,
                                       rejection_curve)


def test_rejection_curve_by_hand():
    correct = [True, False, True, False]
    score = [0.1, 0.9, 0.2, 0.5]  # most confident first: T, T, F, F
    cov, acc = rejection_curve(correct, score)
    assert list(cov) == [0.25, 0.5, 0.75, 1.0]
    assert list(acc) == [1.0, 1.0, 2 / 3, 0.5]
    assert aurac(correct, score) == pytest.approx((1 + 1 + 2 / 3 + 0.5) / 4)
    assert accuracy_at_coverage(correct, score, 0.5) == 1.0
    assert accuracy_at_coverage(correct, score, 0.75) == pytest.approx(2 / 3)
    assert prr(correct, score) == pytest.approx(1.0)  # this ordering is the oracle's
    assert prr(correct, [0.9, 0.1, 0.5, 0.2]) == pytest.approx(-1.0)  # the reverse is the worst
    assert math.isnan(prr([True, True], [0.1, 0.2]))


def test_prr_of_random_scores_is_near_zero():
    rng = np.random.default_rng(5)
    correct = rng.random(4000) < 0.5
    assert abs(prr(correct, rng.random(4000))) < 0.05


# Hanley & McNeil (1982), Radiology 143:29-36, table 1: CT ratings (1 = definitely normal ...
# 5 = definitely abnormal) of 58 normal and 51 abnormal cases; published AUC 0.893, SE 0.032.
HM_NORMAL, HM_ABNORMAL = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]


def _hanley_mcneil():
    rating = [r + 1 for r, c in enumerate(HM_NORMAL) for _ in range(c)] + \
             [r + 1 for r, c in enumerate(HM_ABNORMAL) for _ in range(c)]
    correct = np.array([True] * 58 + [False] * 51)  # abnormal plays the role of "wrong answer"
    return correct, np.array(rating, dtype=float)


def test_auroc_and_delong_variance_on_published_ratings():
    correct, rating = _hanley_mcneil()
    assert auroc(correct, rating) == pytest.approx(0.893, abs=5e-4)
    se = math.sqrt(delong_variance(correct, rating))
    assert se == pytest.approx(0.032, rel=0.1)  # published SE is Hanley-McNeil's approximation


def _delong_direct(correct, a, b):
    """DeLong et al. (1988) written literally: O(m n) structural components."""
    y = ~np.asarray(correct)

    def comps(s):
        pos, neg = s[y], s[~y]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(1), psi.mean(0), psi.mean()

    v10a, v01a, A = comps(a)
    v10b, v01b, B = comps(b)
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    cov = s10 / m + s01 / n
    return A, B, (A - B) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_matches_direct_definition_with_ties():
    rng = np.random.default_rng(7)
    correct = rng.random(120) < 0.45
    a = np.round(rng.normal(size=120) + (~correct) * 1.0, 1)  # rounded: many ties
    b = np.round(a + rng.normal(scale=0.8, size=120), 1)
    r = delong_test(correct, a, b)
    A, B, z = _delong_direct(correct, a, b)
    assert (r.auroc_a, r.auroc_b, r.z) == pytest.approx((A, B, z))
    assert r.auroc_a == pytest.approx(auroc(correct, a))
    assert 0 < r.p_value < 1


def test_delong_same_scores_and_one_class():
    correct, rating = _hanley_mcneil()
    assert math.isnan(delong_test(correct, rating, rating).z)  # zero variance: no test
    assert math.isnan(delong_test([True] * 5, np.arange(5.0), np.arange(5.0)).p_value)


# ---------------------------------------------------------------- judges

from uqflow.errors import ConfigError
from uqflow.scoring.judges import (ABSTENTION_RULES, Verdict, abstains_lenient, abstains_official, judge_examples,
                                  make_judge, parse_yes_no)


@pytest.mark.parametrize("name,answer,refs,correct", [
    ("f1", "Leo Tolstoy", ["Tolstoy"], True),
    ("em", "the Beatles!", ["Beatles"], True),
    ("em", "Beatles band", ["Beatles"], False),
    ("alias", "U.S.A.", ["USA", "United States"], False),  # TriviaQA keeps letters apart: "u s a"
    ("alias", "united-states", ["United States"], True),
    ("rouge_l", "the capital city is Paris", ["Paris"], True),  # F 0.33 >= 0.3
    ("rouge_l", "it is the lovely old capital city Paris", ["Paris"], False),
])
def test_rule_judges(name, answer, refs, correct):
    assert make_judge(name).judge("q", answer, refs).correct is correct


def test_thresholds_and_unknown_judge():
    assert make_judge("f1", 0.8).judge("q", "Leo Tolstoy", ["Tolstoy"]).correct is False
    assert make_judge("rouge_l").threshold == 0.3 and make_judge("f1").threshold == 0.5
    with pytest.raises(ConfigError, match="unknown correctness judge 'bleu'"):
        make_judge("bleu")


@pytest.mark.parametrize("reply,verdict", [
    ("Yes", True), (" no.", False), ("YES, it does", True), ("No, they differ", False),
    ("The answer is yes", True), ("I think no", False), ("maybe", None), ("", None),
    ("yes or no? unclear", True), ("It could be yes or no", None),
])
def test_parse_yes_no(reply, verdict):
    assert parse_yes_no(reply) is verdict


# (reply, official, lenient). Before, an ad hoc list said yes to "unknown", "N/A" and "I don't know"
# but no to "There is no answer"; the official rule is the empty answer alone.
ABSTENTIONS = [
    ("", True, True), ("  . ", True, True), ("Unanswerable", False, True), ("unknown", False, True),
    ("N/A", False, True), ("None.", False, True), ("I don't know.", False, True), ("There is no answer", False, True),
    ("There is no answer to this question.", False, True), ("Not mentioned", False, True),
    ("The passage does not say.", False, True), ("It cannot be answered from the text", False, True),
    ("The context doesn't specify", False, True), ("No information is given", False, True),
    ("Paris", False, False), ("No", False, False), ("not Paris", False, False), ("none of the above wines", False, False),
    ("The treaty was not signed until 1648 because the parties could not agree on the terms", False, False),
]


@pytest.mark.parametrize("answer,official,lenient", ABSTENTIONS)
def test_abstention_rules(answer, official, lenient):
    assert abstains_official(answer) is official
    assert abstains_lenient(answer) is lenient
    assert set(ABSTENTION_RULES) == {"official", "lenient"}


@pytest.mark.parametrize("rule,expected", [("official", [False, True, False, True]), ("lenient", [True, True, False, True])])
def test_unanswerable_judged_by_abstention(rule, expected):
    v = judge_examples(make_judge("f1"), ["q1", "q2", "q3", "q4"], ["unknown", "", "Paris", "Paris"],
                       [[], [], [], ["Paris"]], [False, False, False, True], abstention=rule)
    assert [x.correct for x in v] == expected
    assert isinstance(v[0], Verdict)


def test_abstention_rule_is_a_recorded_setting():
    """The rule is part of the configuration (logged as a param) and of the hash where it can change
    results: with unanswerable questions evaluated, not when they are left out."""
    from uqflow.config import RunConfig
    from uqflow.checks import name_problems

    assert RunConfig().to_dict()["abstention"] == "official"
    assert [str(p) for p in name_problems(RunConfig(abstention="loose"))] == [
        "unknown abstention rule 'loose'. Known: official, lenient"]
    assert RunConfig(abstention="lenient").hash() == RunConfig().hash()
    assert (RunConfig(answerable_only=False, abstention="lenient").hash()
            != RunConfig(answerable_only=False).hash())


def test_undecided_judgments_are_counted_and_left_out():
    import pandas as pd

    from uqflow.scoring.pipeline import evaluate

    frame = pd.DataFrame({
        "correct": pd.array([True, False, None, True, False], dtype="boolean"),
        "answerable": [True] * 5, "token_ids": [[1], [1, 2], [1], [1], [1, 2, 3]],
        **{s: [0.1, 0.9, 5.0, 0.2, 0.8] for s in ("g_nll", "ln_g_nll", "max_nll", "mean_entropy", "rw_g_nll",
                                                   "answer_tokens", "answer_chars")},
    })
    m = evaluate(frame, n_bootstrap=0)
    assert m["n"] == 5 and m["n_undecided"] == 1 and m["accuracy"] == 0.5
    assert m["auroc_g_nll"] == 1.0  # the undecided row (score 5.0) is not counted as wrong


def test_llm_judge_asks_only_for_what_its_cache_lacks(tmp_path):
    """The LLM judge is pure scoring: it formats its prompt, asks the ``generate`` it was given,
    parses the replies and caches them; a second judge over the same cache asks nothing."""
    from uqflow.scoring.judges import JUDGE_PROMPT, LLMJudge

    asked = []

    def generate(prompts):
        asked.extend(prompts)
        return ["Yes." if "Paris" in p.split("proposed answer is:")[1] else "No, they differ" for p in prompts]

    items = [("Capital of France?", "Paris", ["Paris"]), ("Capital of France?", "Lyon", ["Paris"])]
    judge = LLMJudge("llm:fake", generate, tmp_path / "cache.sqlite")
    assert [v.correct for v in judge.judge_many(items)] == [True, False]
    assert asked == [JUDGE_PROMPT.format(question=q, answer=a, references="; ".join(r)) for q, a, r in items]
    again = LLMJudge("llm:fake", lambda prompts: pytest.fail("asked again"), tmp_path / "cache.sqlite")
    assert [v.raw for v in again.judge_many(items)] == ["Yes.", "No, they differ"]


def test_each_measure_is_declared_once_and_everything_reads_it_from_there():
    """One declaration per measure (scoring/measures.py): what cannot be derived from it (the results
    store's columns, the artifact's other columns, the cost parts) agrees with it."""
    from uqflow.artifact import GENERATION_COLUMNS
    from uqflow.scoring import measures as M
    from uqflow.scoring.cost import PARTS
    from uqflow.store.schema import Generation

    assert M.NAMES == M.SINGLE_PASS + M.SAMPLED, "single-pass measures are declared before the sampled ones"
    # every field a measure reads is a declared column of the artifact (checked by type on the way in)
    assert {f for _, m in M.MEASURES.items() for f in m.fields} <= {c.name for c in GENERATION_COLUMNS}
    assert all(m.sampled == ("sampling" in m.needs) for _, m in M.MEASURES.items())
    assert len(set(M.LABELS.values())) == len(set(M.SHORT_LABELS.values())) == len(M.NAMES)
    stored = {c.name for c in Generation.__table__.columns}  # the Alembic migrations' schema
    for name, m in M.MEASURES.items():
        assert set(m.needs) <= set(PARTS), name
        assert name in stored, f"{name} has no column in the results store"
        assert name not in {c.name for c in GENERATION_COLUMNS}, f"{name} is declared twice"
    assert set(M.REQUIRED) == {"g_nll", "rw_g_nll"}
    assert M.label("some_later_measure") == "some_later_measure"


def test_a_wrong_type_in_a_measure_column_is_refused():
    """The artifact check takes the measures' columns from their declaration (numbers)."""
    import pyarrow as pa

    from uqflow.artifact import ArtifactError
    from uqflow.scoring.consistency import check_run_table

    row = {"example_id": "q1", "question": "q", "answer": "a", "token_ids": [1], "token_logprobs": [-0.5],
           "references": ["a"], "answerable": True, "correct": True, "relevance": [1.0], "g_nll": 0.5, "rw_g_nll": 0.5}
    check_run_table(pa.Table.from_pylist([row]), {}, {"n": 1})
    with pytest.raises(ArtifactError, match="column 'semantic_entropy' holds text"):
        check_run_table(pa.Table.from_pylist([{**row, "semantic_entropy": "high"}]), {}, {"n": 1})
    with pytest.raises(ArtifactError, match="lacks the column.*rw_g_nll"):
        check_run_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "rw_g_nll"}]), {}, {"n": 1})


def test_part_costs_are_read_under_the_names_earlier_runs_logged():
    from uqflow.scoring.cost import Cost, part_metrics, parts_from_metrics

    parts = {"sampling": Cost(10, 40, 2.0), "p_true": Cost(4, 0, 0.5)}
    logged = part_metrics(parts, 2)
    assert logged["part_seconds_sampling"] == 1.0 and logged["part_passes_p_true"] == 2.0
    assert parts_from_metrics(logged) == {"sampling": Cost(5, 20, 1.0), "p_true": Cost(2, 0, 0.25)}
    earlier = {"cost_sampling_passes": 5.0, "cost_sampling_tokens": 20.0, "cost_sampling_seconds": 1.0}
    assert parts_from_metrics(earlier) == {"sampling": Cost(5, 20, 1.0)}


def test_engines_judges_and_entailment_judges_are_named_by_one_registry():
    """Every part a setting names is looked up, listed and explained by the same Registry,
    patterns (``llm:<model>``) included."""
    from uqflow.errors import ConfigError, UnknownChoice
    from uqflow.generation import ENGINES, make_engine
    from uqflow.registry import Registry
    from uqflow.scoring.judges import JUDGES
    from uqflow.scoring.semantic import ENTAILMENT_JUDGES, entailment_problems

    for registry in (ENGINES, JUDGES, ENTAILMENT_JUDGES):
        assert isinstance(registry, Registry)
    assert ENGINES.names() == ["hf", "vllm", "openai"]
    assert JUDGES.names()[-1] == "llm:<model>" and "llm:Qwen2.5-7B-Instruct" in JUDGES and "llm:" not in JUDGES
    assert "embedding:all-MiniLM-L6-v2@0.9" in ENTAILMENT_JUDGES and "embedding:m@2" not in ENTAILMENT_JUDGES
    assert "Did you mean 'llm:<model>'?" in JUDGES.unknown_message("llm:")
    from types import SimpleNamespace

    from uqflow.models import MODELS

    loaded = SimpleNamespace(spec=MODELS.get("SmolLM2-135M-Instruct"), backend="hf")  # no weights needed to refuse
    with pytest.raises(UnknownChoice, match=r"unknown backend 'tgi'\. Known: hf, vllm, openai") as e:
        make_engine("tgi", loaded)
    assert isinstance(e.value, ConfigError)
    [problem] = entailment_problems("llm:NoSuchModel")
    assert "unknown model 'NoSuchModel'" in str(problem)
    assert entailment_problems("embedding:all-MiniLM-L6-v2") == []  # the bundled similarity model


def test_the_model_a_judge_asks_is_read_from_its_name():
    from uqflow.models.registry import asked_model

    assert asked_model("llm:SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert asked_model("llm:") is None and asked_model("f1") is None and asked_model("embedding:m") is None
