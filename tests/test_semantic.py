"""Sampling-based measures (predictive entropy, semantic entropy, p(True)) on hand-computed values,
the greedy semantic clustering, and the entailment models with scripted stand-ins (no download)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from uqflow.errors import ConfigError, ModelLoadError
from uqflow.scoring.measures import SAMPLED, score_sampled_row
from uqflow.scoring.sampled import (
    discrete_semantic_entropy, ln_predictive_entropy, num_semantic_sets, p_true_score, predictive_entropy,
    semantic_entropy,
)
from uqflow.scoring.semantic import (
    CONTRADICTION, ENTAILMENT, ENTAILMENT_MODELS, NEUTRAL, EntailmentModel, LLMEntailment, NLIEntailment, cluster,
    equivalent_labels, is_entailment_name, make_entailment, parse_entailment, semantic_clusters,
)

# three samples: log p = -0.3, -1.0, -1.5 (sums); mean token log-probs -0.15, -1.0, -0.5
LOGPROBS = [[-0.1, -0.2], [-1.0], [-0.5, -0.5, -0.5]]
IDS = [0, 0, 1]


def _entropy(ps):
    return -sum(p * math.log(p) for p in ps)


# ---------------------------------------------------------------- measures by hand

def test_predictive_entropy_by_hand():
    assert predictive_entropy(LOGPROBS) == pytest.approx((0.3 + 1.0 + 1.5) / 3)
    assert ln_predictive_entropy(LOGPROBS) == pytest.approx((0.15 + 1.0 + 0.5) / 3)


def test_ln_predictive_entropy_leaves_out_empty_samples():
    assert ln_predictive_entropy([[-1.0, -3.0], []]) == pytest.approx(2.0)  # the empty sample is not a 0
    assert math.isnan(ln_predictive_entropy([[], []]))
    assert predictive_entropy([[-1.0, -3.0], []]) == pytest.approx(2.0)  # the empty sum is 0: (4 + 0) / 2


def test_semantic_entropy_by_hand_length_normalised():
    e = [math.exp(-0.15), math.exp(-1.0), math.exp(-0.5)]
    z = sum(e)
    expected = _entropy([(e[0] + e[1]) / z, e[2] / z])
    assert semantic_entropy(IDS, LOGPROBS) == pytest.approx(expected)
    assert semantic_entropy(IDS, LOGPROBS, length_normalised=True) == pytest.approx(expected)


def test_semantic_entropy_by_hand_summed():
    e = [math.exp(-0.3), math.exp(-1.0), math.exp(-1.5)]
    z = sum(e)
    expected = _entropy([(e[0] + e[1]) / z, e[2] / z])
    assert semantic_entropy(IDS, LOGPROBS, length_normalised=False) == pytest.approx(expected)
    # the two aggregations differ on this example, so each is really used
    assert semantic_entropy(IDS, LOGPROBS, length_normalised=False) != pytest.approx(semantic_entropy(IDS, LOGPROBS))


def test_semantic_entropy_with_equal_likelihoods_is_the_discrete_one():
    same = [[-0.7], [-0.7], [-0.7], [-0.7]]
    for ids in ([0, 0, 1, 2], [0, 1, 0, 1], [3, 3, 3, 5]):  # ids need not start at 0
        assert semantic_entropy(ids, same) == pytest.approx(discrete_semantic_entropy(ids))
        assert semantic_entropy(ids, same, length_normalised=False) == pytest.approx(discrete_semantic_entropy(ids))


def test_one_cluster_has_zero_semantic_entropy():
    assert semantic_entropy([0, 0, 0], LOGPROBS) == pytest.approx(0.0)
    assert semantic_entropy([0, 0, 0], LOGPROBS, length_normalised=False) == pytest.approx(0.0)


def test_semantic_entropy_is_stable_for_improbable_samples():
    # sums near -2000: exp underflows to 0 without the log-sum-exp shift, which would give NaN
    lp = [[-1000.0, -1000.0], [-1000.0, -1001.0]]
    p = [1 / (1 + math.exp(-1.0)), math.exp(-1.0) / (1 + math.exp(-1.0))]
    assert semantic_entropy([0, 1], lp, length_normalised=False) == pytest.approx(_entropy(p))


def test_semantic_entropy_undefined_cases():
    assert math.isnan(semantic_entropy([], []))
    assert math.isnan(semantic_entropy([0, 1], [[], []]))  # no token to average
    assert semantic_entropy([0, 1], [[], []], length_normalised=False) == pytest.approx(math.log(2))  # both l = 0
    assert semantic_entropy([0, 1], [[-1.0], []]) == pytest.approx(0.0)  # the empty sample is left out
    assert math.isnan(semantic_entropy([0, 1], [[float("nan")], [-1.0]]))
    assert math.isnan(semantic_entropy([0, 1], [[-math.inf], [-math.inf]]))
    # a sample of probability zero adds nothing: the other cluster holds all the mass
    assert semantic_entropy([0, 1], [[-math.inf], [-1.0]]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="2 semantic ids for 3 samples"):
        semantic_entropy([0, 1], LOGPROBS)


def test_discrete_semantic_entropy_by_hand():
    assert discrete_semantic_entropy(IDS) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert discrete_semantic_entropy([4, 4, 4, 4]) == pytest.approx(0.0)
    assert discrete_semantic_entropy([0, 1, 2, 3, 4]) == pytest.approx(math.log(5))
    assert math.isnan(discrete_semantic_entropy([]))


def test_num_semantic_sets_and_p_true():
    assert num_semantic_sets(IDS) == 2.0 and isinstance(num_semantic_sets(IDS), float)
    assert num_semantic_sets([0, 1, 2, 1]) == 3.0
    assert math.isnan(num_semantic_sets([]))
    assert p_true_score(math.log(0.8)) == pytest.approx(-math.log(0.8))
    assert p_true_score(0.0) == 0.0  # p(True) = 1: certain
    assert math.isnan(p_true_score(float("nan")))


# ---------------------------------------------------------------- rows

def _expected_row_scores():
    return {
        "predictive_entropy": predictive_entropy(LOGPROBS),
        "ln_predictive_entropy": ln_predictive_entropy(LOGPROBS),
        "semantic_entropy": semantic_entropy(IDS, LOGPROBS),
        "discrete_semantic_entropy": discrete_semantic_entropy(IDS),
        "num_semantic_sets": 2.0,
        "p_true": -math.log(0.8),
    }


def _known(scores: dict) -> dict:
    """The scores the row's fields define; every other sampled measure must be NaN (a field it
    reads is missing: the pairwise record of a run from before it)."""
    expected = _expected_row_scores()
    assert all(math.isnan(v) for k, v in scores.items() if k not in expected), scores
    return {k: scores[k] for k in expected}


def test_score_sampled_row_reads_row_fields():
    row = {"sample_token_logprobs": LOGPROBS, "semantic_ids": IDS, "log_p_true": math.log(0.8)}
    assert _known(score_sampled_row(row)) == pytest.approx(_expected_row_scores())
    assert set(score_sampled_row(row)) == set(SAMPLED)


def test_score_sampled_row_after_a_parquet_round_trip(tmp_path):
    import pandas as pd

    rows = [{"example_id": "a", "sample_token_logprobs": LOGPROBS, "semantic_ids": IDS, "log_p_true": math.log(0.8)},
            {"example_id": "b", "sample_token_logprobs": [], "semantic_ids": [], "log_p_true": float("nan")}]
    pd.DataFrame(rows).to_parquet(tmp_path / "generations.parquet")
    back = pd.read_parquet(tmp_path / "generations.parquet")
    first, second = back.iloc[0], back.iloc[1]
    assert isinstance(first["semantic_ids"], np.ndarray)  # what the measures must accept
    assert _known(score_sampled_row(first)) == pytest.approx(_expected_row_scores())
    assert all(math.isnan(v) for v in score_sampled_row(second).values())


def test_row_without_samples_is_nan_everywhere():
    for row in ({"sample_token_logprobs": [], "semantic_ids": [], "log_p_true": math.log(0.5)},
                {"token_logprobs": [-1.0]}):  # a run without sampling has no such fields
        scores = score_sampled_row(row)
        assert set(scores) == set(SAMPLED) and all(math.isnan(v) for v in scores.values())
    # samples but no p(True) asked: p_true alone is NaN
    scores = score_sampled_row({"sample_token_logprobs": LOGPROBS, "semantic_ids": IDS})
    assert math.isnan(scores["p_true"]) and scores["num_semantic_sets"] == 2.0


# ---------------------------------------------------------------- clustering

def _relation(pairs):
    """equivalent(i, j) for a symmetric relation given as index pairs."""
    rel = {frozenset(p) for p in pairs}
    calls = []

    def equivalent(i, j):
        calls.append((i, j))
        return frozenset((i, j)) in rel

    return equivalent, calls


def test_cluster_reference_algorithm():
    eq, calls = _relation([(0, 2), (1, 3), (0, 4)])  # transitive: {0, 2, 4}, {1, 3}
    assert cluster(list("abcde"), eq) == [0, 1, 0, 1, 0]
    # seeds 0 and 1 compare with every later text that has no id yet, and nothing else
    assert calls == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 3)]
    assert cluster([], eq) == []
    assert cluster(list("abc"), lambda i, j: False) == [0, 1, 2]


def test_cluster_order_matters_for_a_non_transitive_relation():
    eq, _ = _relation([(0, 1), (1, 2)])  # a~b, b~c, not a~c: b joins a, c starts a new cluster
    assert cluster(list("abc"), eq) == [0, 0, 1]
    eq, _ = _relation([(0, 2), (1, 2)])  # a~c, b~c: c joins a and stays there when b starts cluster 1
    assert cluster(list("abc"), eq) == [0, 1, 0]


@pytest.mark.parametrize("l_ab", [CONTRADICTION, NEUTRAL, ENTAILMENT])
@pytest.mark.parametrize("l_ba", [CONTRADICTION, NEUTRAL, ENTAILMENT])
def test_equivalent_labels_truth_table(l_ab, l_ba):
    assert equivalent_labels(l_ab, l_ba, strict=True) == (l_ab == l_ba == ENTAILMENT)
    lenient = {(NEUTRAL, ENTAILMENT), (ENTAILMENT, NEUTRAL), (ENTAILMENT, ENTAILMENT)}
    assert equivalent_labels(l_ab, l_ba, strict=False) == ((l_ab, l_ba) in lenient)
    assert equivalent_labels(l_ab, l_ba) == equivalent_labels(l_ab, l_ba, strict=False)  # the released default


class ScriptedModel(EntailmentModel):
    """An entailment model whose labels come from a table of (premise, hypothesis) -> label
    (NEUTRAL otherwise); records every classify call."""

    name = "scripted"

    def __init__(self, table):
        self.table, self.batches, self.calls = table, [], 0

    def classify(self, items):
        self.batches.append(list(items))
        self.calls += len(items)
        return [self.table.get((p, h), NEUTRAL) for _, p, h in items]


def test_semantic_clusters_exact_matches_need_no_model():
    model = ScriptedModel({})
    ids, stats = semantic_clusters(["Capital of France?"], [["Paris", "paris.", " Paris "]], model)
    assert ids == [[0, 0, 0]]
    assert model.batches == [] and stats.pairs_classified == 0 and stats.model_calls == 0
    assert stats.exact_matches == 2 and stats.seconds >= 0


def test_semantic_clusters_one_batch_for_all_questions():
    both = lambda a, b, label: {(a, b): label, (b, a): label}  # noqa: E731
    table = {**both("Paris", "The city of Paris", ENTAILMENT), **both("Paris", "Lyon", CONTRADICTION),
             **both("Lyon", "The city of Paris", CONTRADICTION), ("1815", "in 1815"): ENTAILMENT}
    model = ScriptedModel(table)
    questions = ["Capital of France?", "When was Waterloo?"]
    samples = [["Paris", "Lyon", "The city of Paris", "paris"], ["1815", "in 1815", "1815."]]
    ids, stats = semantic_clusters(questions, samples, model)
    assert ids == [[0, 1, 0, 0], [0, 0, 0]]  # 1815 -> "in 1815" entailment, back neutral: equivalent (lenient)
    assert len(model.batches) == 1  # every question's pairs in one classify call
    assert stats.pairs_classified == 3 * 2 + 2 * 1 == len(model.batches[0]) == stats.model_calls
    assert stats.exact_matches == 1 + 1
    assert ("When was Waterloo?", "1815", "in 1815") in model.batches[0]
    strict_ids, _ = semantic_clusters(questions, samples, model, strict=True)
    assert strict_ids == [[0, 1, 0, 0], [0, 1, 0]]


# ---------------------------------------------------------------- LLM entailment

@pytest.mark.parametrize("reply,label", [
    ("Entailment.", ENTAILMENT),
    ("neutral", NEUTRAL),
    ("The answer is contradiction", CONTRADICTION),
    ("yes", NEUTRAL),  # names no label
    ("", NEUTRAL),
    ("Contradiction, not entailment", CONTRADICTION),  # the first named, by position
    ("  ENTAILMENT\nneutral", ENTAILMENT),
])
def test_parse_entailment(reply, label):
    assert parse_entailment(reply) == label


class ScriptedGenerate:
    """A stand-in for a model's greedy replies: the scripted reply for each prompt's premise
    ("neutral" otherwise); records the prompts of every call."""

    def __init__(self, replies):
        self.replies, self.prompts = replies, []

    def __call__(self, prompts):
        self.prompts.append(list(prompts))
        return [next((r for p, r in self.replies.items() if f"Possible Answer 1: {p}\n" in prompt), "neutral")
                for prompt in prompts]


def test_llm_entailment_parses_and_caches(tmp_path):
    generate = ScriptedGenerate({"Paris": "Entailment.", "Lyon": "The answer is contradiction", "Rome": "yes"})
    cache = tmp_path / "judgments.sqlite"
    model = LLMEntailment("llm:SmolLM2-135M-Instruct", generate, cache)
    items = [("Capital of France?", "Paris", "paris, France"), ("Capital of France?", "Lyon", "Paris"),
             ("Capital of France?", "Rome", "Paris"), ("Capital of France?", "Nice", "Paris")]
    assert model.classify(items) == [ENTAILMENT, CONTRADICTION, NEUTRAL, NEUTRAL]
    assert len(generate.prompts) == 1 and len(generate.prompts[0]) == 4  # one call for all items
    assert generate.prompts[0][0] == (
        'We are evaluating answers to the question "Capital of France?"\n'
        "Here are two possible answers:\nPossible Answer 1: Paris\nPossible Answer 2: paris, France\n"
        "Does Possible Answer 1 semantically entail Possible Answer 2? Respond only with entailment, "
        "contradiction, or neutral.\nResponse:")
    assert (model.calls, model.cache_hits) == (4, 0)
    assert model.classify(items) == [ENTAILMENT, CONTRADICTION, NEUTRAL, NEUTRAL]
    assert len(generate.prompts) == 1 and (model.calls, model.cache_hits) == (4, 4)  # no second call
    # a fresh instance reads the file; only the new item is sent
    again = LLMEntailment("llm:SmolLM2-135M-Instruct", generate, cache)
    assert again.classify([*items[:2], ("Capital of France?", "Paris", "Lyon")]) == [ENTAILMENT, CONTRADICTION,
                                                                                    ENTAILMENT]
    assert generate.prompts[1] == [generate.prompts[0][0].replace("2: paris, France", "2: Lyon")]
    assert (again.calls, again.cache_hits) == (1, 2)
    # another judge's name is another key
    other = LLMEntailment("llm:Gemma-3-270M", generate, cache)
    other.classify(items[:1])
    assert other.calls == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["judgments.sqlite"]


def test_llm_entailment_shares_the_judges_cache_file(tmp_path):
    import hashlib
    import json

    from uqflow.scoring.cache import ReplyCache
    from uqflow.scoring.judges import JUDGE_PROMPT_VERSION

    cache = tmp_path / "judgments.sqlite"
    judgments = ReplyCache(cache, "judgments")
    key = ReplyCache.key("llm:x", JUDGE_PROMPT_VERSION, "q", "a", ["r"])
    # the keys of the files written before the two caches were one: the same hash of the same parts
    assert key == hashlib.sha256(json.dumps(["llm:x", JUDGE_PROMPT_VERSION, "q", "a", ["r"]]).encode()).hexdigest()
    judgments.put_many([(key, "llm:x", "yes")])
    LLMEntailment("llm:x", ScriptedGenerate({}), cache).classify([("q", "a", "r")])
    assert judgments.get(key) == "yes"  # separate tables in one file
    with pytest.raises(ValueError, match="unknown reply table"):
        ReplyCache(cache, "verdicts; DROP TABLE judgments")


def test_llm_entailment_asks_a_repeated_item_once(tmp_path):
    generate = ScriptedGenerate({"Paris": "entailment"})
    model = LLMEntailment("llm:m", generate, tmp_path / "c.sqlite")
    assert model.classify([("q", "Paris", "x"), ("q", "Paris", "x")]) == [ENTAILMENT, ENTAILMENT]
    assert len(generate.prompts[0]) == 1 and (model.calls, model.cache_hits) == (1, 1)


def test_llm_entailment_refuses_a_short_reply_list(tmp_path):
    model = LLMEntailment("llm:m", lambda prompts: ["entailment"], tmp_path / "c.sqlite")
    with pytest.raises(RuntimeError, match="gave 1 replies to 2 prompts"):
        model.classify([("q", "a", "b"), ("q", "b", "a")])


def test_semantic_clusters_with_the_llm_judge_counts_cache_hits(tmp_path):
    generate = ScriptedGenerate({"Paris": "entailment", "The city of Paris": "entailment", "Lyon": "contradiction"})
    model = LLMEntailment("llm:m", generate, tmp_path / "judgments.sqlite")
    samples = [["Paris", "The city of Paris", "Lyon", "Paris."]]
    ids, stats = semantic_clusters(["Capital of France?"], samples, model)
    assert ids == [[0, 0, 1, 0]]
    assert (stats.pairs_classified, stats.model_calls, stats.exact_matches) == (6, 6, 1)
    ids_again, again = semantic_clusters(["Capital of France?"], samples, model)
    assert ids_again == ids and (again.pairs_classified, again.model_calls) == (6, 0)
    assert len(generate.prompts) == 1


# ---------------------------------------------------------------- names and the NLI model

def test_make_entailment_names(tmp_path):
    assert is_entailment_name("deberta-large-mnli") and is_entailment_name("llm:SmolLM2-135M-Instruct")
    assert not is_entailment_name("llm:") and not is_entailment_name("roberta")
    nli = make_entailment("deberta-large-mnli")
    assert isinstance(nli, NLIEntailment) and nli.model_id == ENTAILMENT_MODELS["deberta-large-mnli"]
    assert nli._model is None  # loaded lazily, on the first classify
    llm = make_entailment("llm:m", generate=ScriptedGenerate({}), cache_path=tmp_path / "c.sqlite")
    assert isinstance(llm, LLMEntailment) and llm.name == "llm:m"
    with pytest.raises(ConfigError, match=r"unknown entailment model 'deberta-mnli'\. Did you mean "
                                          r"'deberta-large-mnli'\? Known: deberta-large-mnli, llm:<model>"):
        make_entailment("deberta-mnli")
    with pytest.raises(ConfigError, match="Known: deberta-large-mnli, llm:<model>"):
        make_entailment("llm:")
    with pytest.raises(ConfigError, match="needs a model to ask"):
        make_entailment("llm:m")


def test_nli_offline_and_uncached_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads HF_HOME when first imported; point the already imported module there too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    model = make_entailment("deberta-large-mnli")
    with pytest.raises(ModelLoadError) as err:
        model.classify([("Capital of France?", "Paris", "Lyon")])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the hub is unreachable and microsoft/deberta-large-mnli is not in the local Hugging "
                              "Face cache; use entailment=embedding:all-MiniLM-L6-v2 or entailment=llm:<registry model> offline")
    assert model.classify([]) == []  # nothing to classify loads nothing


def test_module_does_not_import_torch():
    code = "import sys, uqflow.scoring.semantic; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny_nli(path, id2label):
    """A randomly initialised BERT sequence classifier saved at ``path`` whose prediction is always
    class 2 (zero weights, bias on class 2), with a word-level vocabulary: a local NLI model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "paris", "lyon", "capital", "of", "france", "?"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=3, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))
    model.save_pretrained(path)
    return str(path)


def test_nli_entailment_with_a_local_model(tmp_path):
    # class 2 is named "Contradiction" here: labels are read by name, not by position
    source = _tiny_nli(tmp_path / "nli", {0: "ENTAILMENT", 1: "neutral", 2: "Contradiction"})
    model = NLIEntailment(source, with_question=True, batch_size=2)
    sent = []
    items = [("capital of france ?", "paris", "lyon")] * 5
    assert model.classify(items[:1]) == [CONTRADICTION]
    tokenizer = model._tokenizer
    model._tokenizer = lambda a, b, **kw: sent.append((a, b)) or tokenizer(a, b, **kw)
    assert model.classify(items) == [CONTRADICTION] * 5
    assert [len(a) for a, _ in sent] == [2, 2, 1]  # batches of batch_size
    assert sent[0] == (["capital of france ? paris"] * 2, ["capital of france ? lyon"] * 2)  # question prepended
    assert model.calls == 6


def test_nli_entailment_refuses_a_model_without_nli_labels(tmp_path):
    source = _tiny_nli(tmp_path / "nli", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(ModelLoadError, match="not a 3-way NLI classifier: its labels are label_0"):
        NLIEntailment(source).classify([("q", "paris", "lyon")])


def test_embedding_names_parse_with_their_threshold():
    from uqflow.scoring.semantic import EMBEDDING_THRESHOLD, is_entailment_name, parse_embedding_name

    assert parse_embedding_name("embedding:all-MiniLM-L6-v2") == ("all-MiniLM-L6-v2", EMBEDDING_THRESHOLD)
    assert parse_embedding_name("embedding:all-MiniLM-L6-v2@0.9") == ("all-MiniLM-L6-v2", 0.9)
    for bad in ("embedding:", "embedding:m@x", "embedding:m@0", "embedding:m@1.5", "llm:m"):
        assert parse_embedding_name(bad) is None, bad
    assert is_entailment_name("embedding:m@0.7") and not is_entailment_name("embedding:m@2")


def test_the_bundled_embeddings_join_an_answer_and_its_paraphrase_only():
    from uqflow.scoring.relevance import load_similarity
    from uqflow.scoring.semantic import make_entailment, semantic_clusters

    judge = make_entailment("embedding:all-MiniLM-L6-v2", similarity=load_similarity("all-MiniLM-L6-v2", "cpu"))
    ids, stats = semantic_clusters(["Who wrote On the Origin of Species?", "Capital of France?"],
                                   [["Charles Darwin", "Darwin", "Alfred Wallace"], ["Paris", "Paris, France", "Lyon"]],
                                   judge)
    assert ids == [[0, 0, 1], [0, 0, 1]]
    assert stats.pairs_classified == 12 and stats.model_calls == 6  # six distinct texts embedded
