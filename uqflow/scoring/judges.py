"""Correctness judges: is a greedy answer right? Chosen by name with the ``correctness`` setting.

==========  ================================================================  ==================
name        rule                                                              default threshold
==========  ================================================================  ==================
f1          SQuAD token F1 against the best reference >= threshold (study)    0.5
em          normalised exact match with any reference                         -
contains    a normalised reference inside the normalised answer (whole words) -
alias       TriviaQA alias match (TriviaQA normalisation, any alias)          -
rouge_l     ROUGE-L F-measure (rouge-score) against the best reference        0.3
llm:<name>  a registry model asked whether the answer means the same as a      -
            reference (fixed prompt below); unclear replies are undecided
==========  ================================================================  ==================

A verdict is True, False or None (undecided: recorded as such, never silently counted as wrong).
SQuAD v2 unanswerable questions, when evaluated (``answerable_only=false``), are judged by
abstention alone, under the ``abstention`` setting: ``official`` (the empty answer, SQuAD v2's own
rule) or ``lenient`` (:func:`abstains_lenient`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from uqflow.errors import ConfigError, UnknownChoice
from uqflow.models.registry import LLM_JUDGE_PREFIX
from uqflow.registry import Registry
from uqflow.scoring.cache import ReplyCache
from uqflow.scoring.correctness import contains_reference, exact_match, max_f1, normalize_squad, normalize_triviaqa

DEFAULT_THRESHOLDS = {"f1": 0.5, "rouge_l": 0.3}

# ---------------------------------------------------------------- abstention (SQuAD v2 unanswerable)

#: lenient rule: one-word refusals, and short replies that negate knowing, answering or the text saying
_REFUSAL_WORDS = frozenset({"unanswerable", "unknown", "none", "na", "nothing", "unclear", "unsure"})
_NEGATIONS = frozenset({"no", "not", "none", "cannot", "cant", "dont", "doesnt", "isnt", "arent", "wasnt", "never",
                        "unable", "nothing", "neither", "nor"})
_ABOUT_ANSWERING = frozenset({"answer", "answers", "answered", "answerable", "know", "known", "knowledge", "sure",
                              "information", "info", "mention", "mentions", "mentioned", "say", "says", "said",
                              "state", "states", "stated", "specify", "specifies", "specified", "given", "provided",
                              "determine", "determined", "tell", "clear", "passage", "context", "text", "question"})
_LENIENT_MAX_WORDS = 12


def abstains_official(answer: str) -> bool:
    """SQuAD v2's own rule: an unanswerable question is answered correctly only by the empty answer
    (after SQuAD normalisation, so a lone full stop is empty too)."""
    return normalize_squad(answer) == ""


def abstains_lenient(answer: str) -> bool:
    """A rule consistent with itself, for models that say they cannot answer instead of staying
    silent: after SQuAD normalisation the reply is empty, or one refusal word ("unknown",
    "unanswerable", "none", ...), or at most 12 words holding both a negation ("no", "not", "cannot",
    "don't", ...) and a word about answering or the text ("answer", "know", "mentioned", "say",
    "passage", ...). So "There is no answer", "I don't know", "not mentioned" and "the passage does
    not say" all abstain, and "No" or "not Paris" do not."""
    words = normalize_squad(answer).split()
    if not words or (len(words) == 1 and words[0] in _REFUSAL_WORDS):
        return True
    return (len(words) <= _LENIENT_MAX_WORDS and any(w in _NEGATIONS for w in words)
            and any(w in _ABOUT_ANSWERING for w in words))


#: the ``abstention`` setting: which replies to an unanswerable question count as abstaining
ABSTENTION_RULES: dict[str, Callable[[str], bool]] = {"official": abstains_official, "lenient": abstains_lenient}


@dataclass(frozen=True)
class Verdict:
    """A judge's decision: ``correct`` is None when undecided; ``score`` is the graded value
    (F1, ROUGE-L) where the judge has one, else NaN."""

    correct: bool | None
    score: float = float("nan")
    raw: str = ""


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """Best ROUGE-L F-measure of the answer against any reference (rouge-score, stemming on)."""
    scorer = _rouge_scorer()
    return max((scorer.score(r, prediction)["rougeL"].fmeasure for r in references), default=0.0)


_SCORER = None


def _rouge_scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


class Judge:
    """Base: ``judge_many`` judges (question, answer, references) triples."""

    name = "judge"

    def judge(self, question: str, answer: str, references: Sequence[str]) -> Verdict:
        raise NotImplementedError

    def judge_many(self, items: Sequence[tuple[str, str, Sequence[str]]]) -> list[Verdict]:
        return [self.judge(*it) for it in items]


class RuleJudge(Judge):
    """A judge computed from the strings alone."""

    def __init__(self, name: str, fn: Callable[[str, Sequence[str]], float], threshold: float | None):
        self.name, self.fn, self.threshold = name, fn, threshold

    def judge(self, question, answer, references):
        value = float(self.fn(answer, references))
        if self.threshold is None:
            return Verdict(value >= 1.0, float("nan"))
        return Verdict(value >= self.threshold, value)


def alias_match(answer: str, references: Sequence[str]) -> float:
    """1.0 if the TriviaQA-normalised answer equals any normalised alias."""
    a = normalize_triviaqa(answer)
    return float(any(a == normalize_triviaqa(r) for r in references))


# ---------------------------------------------------------------- LLM judge

JUDGE_PROMPT_VERSION = "1"
JUDGE_PROMPT = (
    "We are assessing the quality of answers to the following question: {question}\n"
    "The following are expected answers to this question: {references}.\n"
    "The proposed answer is: {answer}\n"
    "Within the context of the question, does the proposed answer mean the same as any of the expected "
    "answers? Respond only with yes or no.\n"
    "Response:"
)


def parse_yes_no(reply: str) -> bool | None:
    """'yes' -> True, 'no' -> False, judged on the first word (punctuation and case ignored), else
    on the first line if exactly one of the two words occurs in it; anything else -> None."""
    text = reply.strip().lower()
    words = re.findall(r"[a-z]+", text)
    if words and words[0] in ("yes", "no"):
        return words[0] == "yes"
    first = text.splitlines()[0] if text else ""
    has_yes, has_no = bool(re.search(r"\byes\b", first)), bool(re.search(r"\bno\b", first))
    if has_yes != has_no:
        return has_yes
    return None


class LLMJudge(Judge):
    """A model asked JUDGE_PROMPT; replies parsed by :func:`parse_yes_no` and cached.

    ``generate`` turns prompts into the model's greedy replies (the experiment builds it from a
    registry model; a test can pass any function), and is called only for judgments the cache does
    not hold, so a fully cached run loads no model."""

    def __init__(self, name: str, generate: Callable[[list[str]], list[str]], cache_path: Path):
        self.name = name
        self.generate = generate
        self.cache = ReplyCache(cache_path, "judgments")

    def judge_many(self, items):
        keys = [ReplyCache.key(self.name, JUDGE_PROMPT_VERSION, q, a, list(refs)) for q, a, refs in items]
        replies = [self.cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(replies) if r is None]
        if todo:
            prompts = [JUDGE_PROMPT.format(question=items[i][0], answer=items[i][1], references="; ".join(items[i][2]))
                       for i in todo]
            for i, reply in zip(todo, self.generate(prompts)):
                replies[i] = reply
            self.cache.put_many([(keys[i], self.name, replies[i]) for i in todo])
        return [Verdict(parse_yes_no(r), float("nan"), r) for r in replies]


#: a judge's factory: (name, threshold or None, generate, cache_path) -> the judge
JudgeFactory = Callable[..., Judge]


def _rule(fn: Callable[..., float], thresholded: bool) -> JudgeFactory:
    return lambda name, thr, generate, cache_path: RuleJudge(name, fn, thr if thresholded else None)


def _llm(name: str, thr, generate, cache_path) -> Judge:
    if generate is None or cache_path is None:
        raise ConfigError(f"judge {name!r} needs a model to ask: pass generate= and cache_path=")
    return LLMJudge(name, generate, cache_path)


#: judge name -> its factory: the rules, then any registry model asked (``llm:<model>``)
JUDGES: Registry[JudgeFactory] = Registry("correctness judge", UnknownChoice)
JUDGES.add("f1", _rule(max_f1, True))
JUDGES.add("em", _rule(exact_match, False))
JUDGES.add("contains", _rule(contains_reference, False))
JUDGES.add("alias", _rule(alias_match, False))
JUDGES.add("rouge_l", _rule(rouge_l, True))
JUDGES.add_pattern(LLM_JUDGE_PREFIX, f"{LLM_JUDGE_PREFIX}<model>", _llm)


def make_judge(name: str, threshold: float = 0.0, generate: Callable[[list[str]], list[str]] | None = None,
               cache_path: Path | None = None) -> Judge:
    """The judge called ``name``; ``threshold`` 0 means the judge's default. An ``llm:<model>``
    judge asks ``generate`` (prompts -> replies) and caches its replies at ``cache_path``."""
    return JUDGES.get(name)(name, threshold or DEFAULT_THRESHOLDS.get(name), generate, cache_path)


def agreement(own: Sequence[bool | None], theirs: Sequence[bool | None]) -> dict[str, float]:
    """How a judge's verdicts (``theirs``) compare with the run's own, answer by answer (None =
    undecided): ``accuracy``, the share right among the answers it decided; ``agreement``, the share
    of answers both decided on which they agree; ``kappa``, Cohen's kappa over those answers (NaN
    where undefined: none decided by both, or one class in both)."""
    import math
    import warnings

    from sklearn.metrics import cohen_kappa_score

    decided = [bool(b) for b in theirs if b is not None]
    both = [(bool(a), bool(b)) for a, b in zip(own, theirs) if a is not None and b is not None]
    kappa = math.nan
    if both:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # one class in both: kappa undefined (NaN)
            kappa = float(cohen_kappa_score([a for a, _ in both], [b for _, b in both]))
    return {"accuracy": sum(decided) / len(decided) if decided else math.nan,
            "agreement": sum(a == b for a, b in both) / len(both) if both else math.nan, "kappa": kappa}


def judge_examples(judge: Judge, questions: Sequence[str], answers: Sequence[str],
                   references: Sequence[Sequence[str]], answerable: Sequence[bool],
                   abstention: str = "official") -> list[Verdict]:
    """Verdicts for a run's answers: answerable questions by the judge, unanswerable ones
    (SQuAD v2) by whether the model abstained, under the ``abstention`` rule (ABSTENTION_RULES)."""
    abstains = ABSTENTION_RULES[abstention]
    verdicts: list[Verdict | None] = [None] * len(answers)
    todo = []
    for i, (a, ok) in enumerate(zip(answers, answerable)):
        if not ok:
            verdicts[i] = Verdict(abstains(a), float("nan"), "abstention" if abstains(a) else "answered")
        else:
            todo.append(i)
    for i, v in zip(todo, judge.judge_many([(questions[i], answers[i], references[i]) for i in todo])):
        verdicts[i] = v
    return verdicts  # type: ignore[return-value]
