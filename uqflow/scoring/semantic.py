"""Semantic clusters of a question's sampled answers, and the entailment backends that decide them.

Clusters come from bidirectional entailment (Farquhar et al. 2024): two answers mean the same when
each entails the other, as an entailment model judges them (an NLI classifier such as
DeBERTa-MNLI, a registry LLM asked a fixed prompt, its replies cached in SQLite, or sentence
embeddings above a similarity threshold). :func:`semantic_clusters` clusters every question's
samples with one batched ``classify`` call. The measures over the clusters and the samples are in
:mod:`uqflow.scoring.sampled`.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uqflow import hub
from uqflow.errors import ConfigError, ModelLoadError, UnknownChoice, UqflowError
from uqflow.models.registry import LLM_JUDGE_PREFIX, asked_model, get_model
from uqflow.registry import Registry
from uqflow.scoring.cache import ReplyCache

# ---------------------------------------------------------------- clustering

CONTRADICTION, NEUTRAL, ENTAILMENT = 0, 1, 2
LABELS = {"contradiction": CONTRADICTION, "neutral": NEUTRAL, "entailment": ENTAILMENT}


def equivalent_labels(l_ab: int, l_ba: int, strict: bool = False) -> bool:
    """Bidirectional entailment from the labels of a => b and b => a. ``strict``: both ENTAILMENT.
    Otherwise (the released code's default): neither is CONTRADICTION and not both are NEUTRAL."""
    if strict:
        return l_ab == ENTAILMENT and l_ba == ENTAILMENT
    return CONTRADICTION not in (l_ab, l_ba) and (l_ab, l_ba) != (NEUTRAL, NEUTRAL)


def cluster(texts: Sequence[str], equivalent: Callable[[int, int], bool]) -> list[int]:
    """Greedy clustering (Farquhar et al. 2024): in order, a text i with no id yet gets the next id
    (0, 1, 2... in order of first appearance), and every later text j with no id yet and
    ``equivalent(i, j)`` joins it. ``equivalent`` takes indices into ``texts``.

    The relation need not be transitive, so order matters: with a~b, b~c and not a~c the ids are
    [0, 0, 1]. The authors' released code also re-assigns a later text that already has an id
    (the last seed equivalent to it wins); that can split answers that are the same text (a~c,
    b~c: it gives [0, 1, 1] where this gives [0, 1, 0]), so texts already placed stay here. The
    two agree whenever the relation is transitive.
    """
    ids = [-1] * len(texts)
    next_id = 0
    for i in range(len(texts)):
        if ids[i] != -1:
            continue
        ids[i] = next_id
        for j in range(i + 1, len(texts)):
            if ids[j] == -1 and equivalent(i, j):
                ids[j] = next_id
        next_id += 1
    return ids


def normalise_answer(text: str) -> str:
    """The form in which two answers count as the same text: surrounding whitespace stripped,
    lower-cased, trailing punctuation and whitespace stripped (" Paris. " -> "paris")."""
    return text.strip().lower().rstrip(string.punctuation + string.whitespace)


class EntailmentModel:
    """Base: ``classify`` labels (question, premise, hypothesis) triples, many in one call, as
    CONTRADICTION, NEUTRAL or ENTAILMENT (does the premise entail the hypothesis?). ``calls``
    counts the items the model itself evaluated, ``cache_hits`` those answered without it."""

    name = "entailment"
    calls = 0
    cache_hits = 0

    def classify(self, items: Sequence[tuple[str, str, str]]) -> list[int]:
        raise NotImplementedError

    def judge(self, items: Sequence[tuple[str, str, str]]) -> tuple[list[int], list[float]]:
        """Each item's label and the judge's probability that the premise entails the hypothesis
        (the pairwise record's ``sample_entailment``). A judge that gives only labels: 1.0 for
        ENTAILMENT, else 0.0 (an LLM judge's chosen word)."""
        labels = self.classify(items)
        return labels, [1.0 if label == ENTAILMENT else 0.0 for label in labels]


# ---------------------------------------------------------------- LLM entailment

#: 2: the reply is the label word the model finds most likely after the prompt (scoring.llm.llm_choose)
ENTAILMENT_PROMPT_VERSION = "2"
#: the prompt of the semantic-uncertainty code for open (Hugging Face) models, EntailmentLlama
ENTAILMENT_PROMPT = (
    'We are evaluating answers to the question "{question}"\n'
    "Here are two possible answers:\n"
    "Possible Answer 1: {premise}\n"
    "Possible Answer 2: {hypothesis}\n"
    "Does Possible Answer 1 semantically entail Possible Answer 2? Respond only with entailment, "
    "contradiction, or neutral.\n"
    "Response:"
)
_LABEL_WORD = re.compile(r"entailment|contradiction|neutral")


def parse_entailment(reply: str) -> int:
    """The label named first in the lower-cased reply (by position: "entailment", "contradiction"
    or "neutral"); NEUTRAL when it names none (the released code's fallback)."""
    found = _LABEL_WORD.search(reply.lower())
    return LABELS[found.group()] if found else NEUTRAL


class LLMEntailment(EntailmentModel):
    """A language model asked ENTAILMENT_PROMPT; replies parsed by :func:`parse_entailment`.

    ``generate`` turns prompts into the model's greedy replies (the caller builds it from a registry
    model; a test can pass any function). Replies are cached at ``cache_path`` keyed by
    (name, prompt version, question, premise, hypothesis); only items the cache does not hold are
    sent, each distinct one once, in one ``generate`` call, so a fully cached run loads no model."""

    def __init__(self, name: str, generate: Callable[[list[str]], list[str]], cache_path: Path):
        self.name = name
        self.generate = generate
        self.cache = ReplyCache(cache_path, "entailments")
        self.calls = 0
        self.cache_hits = 0

    def classify(self, items):
        keys = [ReplyCache.key(self.name, ENTAILMENT_PROMPT_VERSION, *it) for it in items]
        replies = {k: r for k in dict.fromkeys(keys) if (r := self.cache.get(k)) is not None}
        todo = {k: it for k, it in zip(keys, items) if k not in replies}  # each distinct item once
        if todo:
            prompts = [ENTAILMENT_PROMPT.format(question=q, premise=p, hypothesis=h) for q, p, h in todo.values()]
            answers = list(self.generate(prompts))
            if len(answers) != len(prompts):
                raise RuntimeError(
                    f"entailment model {self.name!r} gave {len(answers)} replies to {len(prompts)} prompts")
            replies.update(zip(todo, answers))
            self.cache.put_many([(k, self.name, r) for k, r in zip(todo, answers)])
        self.calls += len(todo)
        self.cache_hits += len(items) - len(todo)
        return [parse_entailment(replies[k]) for k in keys]


# ---------------------------------------------------------------- NLI classifier


class NLIEntailment(EntailmentModel):
    """A sequence-classification NLI model (default microsoft/deberta-large-mnli) through
    transformers, loaded on the first ``classify``. Each item is classified as the pair
    (premise, hypothesis), or with ``with_question`` as ("question premise", "question hypothesis")
    (the released code's condition-on-question option); labels are read from ``config.id2label``
    by name, in batches of ``batch_size`` padded pairs."""

    def __init__(self, model_id: str = "microsoft/deberta-large-mnli", device: str = "cpu",
                 with_question: bool = False, batch_size: int = 32, name: str | None = None):
        self.model_id, self.device, self.with_question, self.batch_size = model_id, device, with_question, batch_size
        self.name = name or model_id
        self.calls = 0
        self._model = self._tokenizer = None
        self._labels: list[int] = []  # class index -> CONTRADICTION/NEUTRAL/ENTAILMENT

    def _load(self) -> None:
        if self._model is not None:
            return
        if (hub.is_hub_id(self.model_id) and not hub.model_cached(self.model_id)
                and (hub.offline_by_setting() or not hub.reachable())):
            raise ModelLoadError(
                f"the hub is unreachable and {self.model_id} is not in the local Hugging Face cache; use "
                "entailment=embedding:all-MiniLM-L6-v2 or entailment=llm:<registry model> offline (or download "
                "the model once where the hub is reachable)")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from uqflow.models.loading import resolve_device

        device = resolve_device(self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_id)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_id)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"entailment model {self.model_id!r} could not be loaded: {first}. Use "
                                 "entailment=embedding:all-MiniLM-L6-v2 or entailment=llm:<registry model> "
                                 "offline") from None
        names = {int(i): str(label).lower() for i, label in model.config.id2label.items()}
        if sorted(names.values()) != sorted(LABELS):
            raise ModelLoadError(f"entailment model {self.model_id!r} is not a 3-way NLI classifier: its labels are "
                                 f"{', '.join(names.values())}; expected contradiction, neutral, entailment")
        self._labels = [LABELS[names[i]] for i in range(len(names))]
        self._tokenizer, self._model, self.device = tokenizer, model.to(device).eval(), device

    def classify(self, items):
        return self.judge(items)[0]

    def judge(self, items):
        """The argmax class of each pair, and its softmax probability of entailment."""
        if not items:
            return [], []
        self._load()
        import torch

        out: list[int] = []
        p_entail: list[float] = []
        entail = self._labels.index(ENTAILMENT)
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            if self.with_question:
                premises = [f"{q} {p}" for q, p, _ in batch]
                hypotheses = [f"{q} {h}" for q, _, h in batch]
            else:
                premises, hypotheses = [p for _, p, _ in batch], [h for _, _, h in batch]
            enc = self._tokenizer(premises, hypotheses, padding=True, truncation=True, return_tensors="pt")
            enc = enc.to(self.device)
            with torch.inference_mode():
                logits = self._model(**enc).logits.float()  # (batch, 3)
            out.extend(self._labels[i] for i in logits.argmax(-1).tolist())
            p_entail.extend(logits.softmax(-1)[:, entail].tolist())
        self.calls += len(items)
        return out, p_entail


#: entailment model name -> hub id of its NLI classifier (``llm:<model>`` names a registry LLM)
ENTAILMENT_MODELS = {"deberta-large-mnli": "microsoft/deberta-large-mnli"}
#: cosine similarity at which ``embedding:<model>`` takes two answers to mean the same
EMBEDDING_THRESHOLD = 0.8


class EmbeddingEquivalence(EntailmentModel):
    """Not entailment: two answers count as meaning the same when the cosine similarity of their
    sentence embeddings reaches ``threshold`` (ENTAILMENT both ways, else NEUTRAL, so strict and
    lenient equivalence agree). An offline stand-in where no NLI model is at hand and the
    registry's small LLMs cannot judge entailment (the bundled ones give one label to every pair);
    one embedding pass per distinct text. With the bundled all-MiniLM-L6-v2 and 0.8: "Paris" ~
    "Paris, France" (0.93), "Charles Darwin" ~ "Darwin" (0.92), but "1945" !~ "1944" (0.77) and
    "Paris" !~ "The capital of France is Paris" (0.70): it splits paraphrases an NLI model joins."""

    def __init__(self, name: str, similarity: Callable[[Sequence[tuple[str, str]]], np.ndarray],
                 threshold: float = EMBEDDING_THRESHOLD):
        self.name = name
        self.similarity = similarity
        self.threshold = threshold
        self.calls = 0
        self.cache_hits = 0

    def classify(self, items):
        return self.judge(items)[0]

    def judge(self, items):
        """Labels by the threshold, and as the probability of entailment the cosine similarity
        itself, clipped to [0, 1]: the judge's own degree of "same meaning"."""
        if not items:
            return [], []
        sims = np.asarray(self.similarity([(p, h) for _, p, h in items]), dtype=np.float64)
        self.calls += len({t for _, p, h in items for t in (p, h)})  # texts embedded
        return ([ENTAILMENT if s >= self.threshold else NEUTRAL for s in sims],
                np.clip(sims, 0.0, 1.0).tolist())


def parse_embedding_name(name: str) -> tuple[str, float] | None:
    """``embedding:<similarity model>[@threshold]`` as (model, threshold), or None if ``name`` is not one."""
    if not name.startswith("embedding:"):
        return None
    model, _, threshold = name[len("embedding:"):].partition("@")
    try:
        t = float(threshold) if threshold else EMBEDDING_THRESHOLD
    except ValueError:
        return None
    return (model, t) if model and 0.0 < t <= 1.0 else None


@dataclass(frozen=True)
class EntailmentKind:
    """One kind of entailment judge: ``make(name, **resources)`` builds it (see
    :func:`make_entailment`); ``problems(name, registry_file)`` says what it lacks on this machine,
    before any run starts (empty when it can run)."""

    make: Callable[..., EntailmentModel]
    problems: Callable[[str, str | None], list[UqflowError]]


def _nli(name, *, device="cpu", with_question=False, **_) -> EntailmentModel:
    return NLIEntailment(ENTAILMENT_MODELS[name], device=device, with_question=with_question, name=name)


def _nli_problems(name: str, registry_file: str | None) -> list[UqflowError]:
    repo = ENTAILMENT_MODELS[name]
    if not hub.model_cached(repo) and (hub.offline_by_setting() or not hub.reachable()):
        return [ModelLoadError(f"entailment model {name} ({repo}) is not in the local Hugging Face cache "
                               "and the hub is unreachable; offline, set entailment=embedding:all-MiniLM-L6-v2 "
                               "(the bundled sentence embeddings) or entailment=llm:<registry model>")]
    return []


def _llm(name, *, generate=None, cache_path=None, **_) -> EntailmentModel:
    if generate is None or cache_path is None:
        raise ConfigError(f"entailment model {name!r} needs a model to ask: pass generate= and cache_path=")
    return LLMEntailment(name, generate, cache_path)


def _llm_problems(name: str, registry_file: str | None) -> list[UqflowError]:
    try:
        get_model(asked_model(name), registry_file)
    except UqflowError as e:
        return [e]
    return []


def _embedding(name, *, similarity=None, **_) -> EntailmentModel:
    if similarity is None:
        raise ConfigError(f"entailment model {name!r} needs a similarity model: pass similarity=")
    return EmbeddingEquivalence(name, similarity, parse_embedding_name(name)[1])


def _embedding_problems(name: str, registry_file: str | None) -> list[UqflowError]:
    from uqflow.scoring.relevance import similarity_problem  # loaded as RW-G-NLL's similarity model is

    problem = similarity_problem(parse_embedding_name(name)[0])
    return [ModelLoadError(f"entailment judge {name}: {problem}")] if problem else []


#: entailment judge name -> its kind: the NLI classifiers, any registry model asked
#: (``llm:<model>``), and embedding similarity (``embedding:<similarity model>[@threshold]``)
ENTAILMENT_JUDGES: Registry[EntailmentKind] = Registry("entailment model", UnknownChoice)
for _name in ENTAILMENT_MODELS:
    ENTAILMENT_JUDGES.add(_name, EntailmentKind(_nli, _nli_problems))
ENTAILMENT_JUDGES.add_pattern(LLM_JUDGE_PREFIX, f"{LLM_JUDGE_PREFIX}<model>", EntailmentKind(_llm, _llm_problems))
ENTAILMENT_JUDGES.add_pattern("embedding:", "embedding:<similarity model>[@threshold]",
                       EntailmentKind(_embedding, _embedding_problems),
                       accepts=lambda rest: parse_embedding_name("embedding:" + rest) is not None)


def is_entailment_name(name: str) -> bool:
    """Whether ``name`` names an entailment model (without loading anything)."""
    return name in ENTAILMENT_JUDGES


def entailment_problems(name: str, registry_file: str | None = None) -> list[UqflowError]:
    """What the entailment judge ``name`` needs and lacks here (an unknown name: that it is unknown)."""
    try:
        kind = ENTAILMENT_JUDGES.get(name)
    except UqflowError as e:
        return [e]
    return kind.problems(name, registry_file)


def make_entailment(name: str, *, generate: Callable[[list[str]], list[str]] | None = None,
                    cache_path: Path | None = None, device: str = "cpu", with_question: bool = False,
                    similarity: Callable[[Sequence[tuple[str, str]]], np.ndarray] | None = None) -> EntailmentModel:
    """The entailment model called ``name``: an NLI classifier of ENTAILMENT_MODELS (loaded on first
    use, on ``device``); ``llm:<model>``, which asks ``generate`` (prompts -> replies) and caches
    its replies at ``cache_path``; or ``embedding:<model>[@threshold]``, embedding similarity
    through ``similarity`` (pairs -> cosine similarities; see :class:`EmbeddingEquivalence`)."""
    return ENTAILMENT_JUDGES.get(name).make(name, generate=generate, cache_path=cache_path, device=device,
                                     with_question=with_question, similarity=similarity)


def _pair_equivalence(forms: list[str], distinct: list[str], labels: list[int], offset: int,
                      strict: bool) -> Callable[[int, int], bool]:
    """equivalent(i, j) over one question's samples, from the labels of its distinct texts' pairs
    (``labels[offset:]``, both directions of every pair a != b, in row-major order)."""
    pos = {form: i for i, form in enumerate(distinct)}
    u = len(distinct)

    def label(a: int, b: int) -> int:  # the label of distinct text a => b
        return labels[offset + a * (u - 1) + (b if b < a else b - 1)]

    def equivalent(i: int, j: int) -> bool:
        a, b = pos[forms[i]], pos[forms[j]]
        return a == b or equivalent_labels(label(a, b), label(b, a), strict)

    return equivalent


@dataclass
class ClusterStats:
    """The cost of clustering: ``pairs_classified`` items sent to ``classify``, ``model_calls`` the
    items the model itself evaluated (less the LLM judge's cache hits; an NLI model evaluates them
    all), ``exact_matches`` samples placed without the model because an earlier sample of the same
    question had the same normalised text, ``seconds`` of wall time."""

    pairs_classified: int = 0
    model_calls: int = 0
    exact_matches: int = 0
    seconds: float = 0.0


def semantic_clusters(questions: Sequence[str], samples: Sequence[Sequence[str]], model: EntailmentModel,
                      strict: bool = False) -> tuple[list[list[int]], ClusterStats]:
    """Semantic cluster ids of every question's samples and what they cost (:func:`cluster_samples`
    without the entailment matrices)."""
    ids, _, stats = cluster_samples(questions, samples, model, strict)
    return ids, stats


def cluster_samples(questions: Sequence[str], samples: Sequence[Sequence[str]], model: EntailmentModel,
                    strict: bool = False) -> tuple[list[list[int]], list[list[list[float]]], ClusterStats]:
    """Semantic cluster ids of every question's samples (:func:`cluster` with bidirectional
    entailment, :func:`equivalent_labels`), each question's entailment matrix (entry [i][j]: the
    judge's probability that sample i entails sample j, :meth:`EntailmentModel.judge`; 1 where the
    two have the same normalised text, the diagonal included), and what they cost.

    Samples with the same normalised text (:func:`normalise_answer`) are equivalent without asking
    the model: a text entails itself, and it saves model calls. For the remaining pairs the model is
    asked once, in one ``judge`` call over all questions: both directions of every pair of
    distinct normalised texts of a question (at most N(N-1) items for N samples; each text is sent
    as its first sample's, stripped). The reference algorithm asks sequentially and may skip pairs
    whose texts already have an id; asking all pairs trades those few extra items for one batched
    call, and gives the same ids, since :func:`cluster` then runs locally on the labels; the same
    call gives the entailment matrices that the graph measures read (scoring/pairwise.py).
    """
    if len(questions) != len(samples):
        raise ValueError(f"{len(questions)} questions for {len(samples)} lists of samples")
    start, calls_before = time.perf_counter(), model.calls
    stats = ClusterStats()
    items: list[tuple[str, str, str]] = []
    plans = []  # per question: (each sample's normalised form, index of its first pair in items, its distinct forms)
    for question, texts in zip(questions, samples):
        forms = [normalise_answer(t) for t in texts]
        first = {}  # normalised form -> its first sample's text, in order of first appearance
        for text, form in zip(texts, forms):
            first.setdefault(form, text.strip())
        stats.exact_matches += len(forms) - len(first)
        plans.append((forms, len(items), list(first)))
        items.extend((question, first[a], first[b]) for a in first for b in first if a != b)
    labels, p_entail = model.judge(items) if items else ([], [])
    if len(labels) != len(items) or len(p_entail) != len(items):
        raise RuntimeError(f"entailment model {model.name!r} gave {len(labels)} labels for {len(items)} pairs")
    ids = [cluster(forms, _pair_equivalence(forms, distinct, labels, offset, strict))
           for forms, offset, distinct in plans]
    matrices = [_entailment_matrix(forms, distinct, p_entail, offset) for forms, offset, distinct in plans]
    stats.pairs_classified = len(items)
    stats.model_calls = model.calls - calls_before
    stats.seconds = time.perf_counter() - start
    return ids, matrices, stats


def _entailment_matrix(forms: list[str], distinct: list[str], p_entail: list[float], offset: int) -> list[list[float]]:
    """One question's N x N entailment probabilities from those of its distinct texts' pairs
    (laid out as in :func:`_pair_equivalence`)."""
    pos = {form: i for i, form in enumerate(distinct)}
    u = len(distinct)

    def p(a: int, b: int) -> float:
        return 1.0 if a == b else float(p_entail[offset + a * (u - 1) + (b if b < a else b - 1)])

    return [[p(pos[fi], pos[fj]) for fj in forms] for fi in forms]
