"""Correctness judges: is a greedy answer right, given the references?"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

# Written out rather than imported: the official SQuAD v2 evaluation script is a standalone file,
# not a package, and the `evaluate` library fetches it from the hub at run time.


def normalize_squad(s: str) -> str:
    """SQuAD's official normalisation: lower case, drop punctuation and articles, fold whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def normalize_triviaqa(s: str) -> str:
    """TriviaQA's official normalisation (punctuation becomes a space; underscores too)."""
    s = s.replace("_", " ").lower()
    exclude = set(string.punctuation + "‘’´`")
    s = "".join(ch if ch not in exclude else " " for ch in s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split()).strip()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between two strings after normalisation (1.0 when both normalise to empty)."""
    pred = normalize_squad(prediction).split()
    ref = normalize_squad(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, references: Sequence[str]) -> float:
    """Best token F1 against any reference (0.0 when there are none)."""
    return max((token_f1(prediction, r) for r in references), default=0.0)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised answer equals any normalised reference."""
    p = normalize_squad(prediction)
    return float(any(p == normalize_squad(r) for r in references))


def contains_reference(prediction: str, references: Sequence[str]) -> float:
    """1.0 if a normalised reference occurs in the normalised answer as a run of whole words
    ("The Indian Rupee (INR) is the official currency" contains "Indian Rupee"): a judge that
    forgives wordy right answers, which token F1 >= 0.5 counts wrong. An empty reference never
    matches."""
    p = f" {normalize_squad(prediction)} "
    return float(any(r and f" {r} " in p for r in map(normalize_squad, references)))


def f1_correct(prediction: str, references: Sequence[str], threshold: float = 0.5) -> bool:
    """The reference protocol's judge: SQuAD token F1 >= threshold against the best reference."""
    return max_f1(prediction, references) >= threshold
