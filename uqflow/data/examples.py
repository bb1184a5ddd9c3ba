"""The one Example type every dataset is adapted to, and the adapters from each source schema.

Each adapter takes one record in its source's own schema (as the Hugging Face ``datasets`` rows
or the JSON Lines files look) and returns an :class:`Example`. A missing field raises
``KeyError(field)``, which the loaders turn into a message naming the file, line and field.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One question to answer.

    ``references`` are every acceptable answer (aliases, spans); empty for an unanswerable
    question, in which case ``answerable`` is False.
    """

    id: str
    question: str
    references: tuple[str, ...]
    context: str | None = None
    answerable: bool = True
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


def _need(rec: Mapping[str, Any], key: str) -> Any:
    """``rec[key]`` with a ``KeyError`` that names the dotted path of the field; a null value is a
    ``ValueError`` (a question or answer that is ``null`` is not the text "None")."""
    cur: Any = rec
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise KeyError(key)
        cur = cur[part]
    if cur is None:
        raise ValueError(f"field {key!r} is null")
    return cur


def _list(rec: Mapping[str, Any], key: str) -> list[Any]:
    """``rec[key]``, which must be a list (a lone string would be read as a list of characters)."""
    value = _need(rec, key)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"field {key!r} must be a list, got {type(value).__name__}")
    return list(value)


def _dedup(items) -> tuple[str, ...]:
    out: list[str] = []
    for s in items:
        s = str(s).strip()
        if s and s not in out:
            out.append(s)
    return tuple(out)


def from_trivia_qa(rec: Mapping[str, Any]) -> Example:
    """TriviaQA (``mandarjoshi/trivia_qa``, rc.nocontext): answer.value plus answer.aliases."""
    value = _need(rec, "answer.value")
    aliases = _list(rec, "answer.aliases")
    return Example(
        id=str(_need(rec, "question_id")),
        question=str(_need(rec, "question")),
        references=_dedup([value, *aliases]),
    )


def from_squad(rec: Mapping[str, Any]) -> Example:
    """SQuAD v2 (``rajpurkar/squad_v2``): answers.text; an empty list means unanswerable."""
    texts = _dedup(_list(rec, "answers.text"))
    return Example(
        id=str(_need(rec, "id")),
        question=str(_need(rec, "question")),
        context=str(_need(rec, "context")),
        references=texts,
        answerable=bool(texts),
        meta={"title": rec.get("title", "")},
    )


def from_nq_open(rec: Mapping[str, Any]) -> Example:
    """Natural Questions open (``google-research-datasets/nq_open``): answer is a list."""
    question = str(_need(rec, "question"))
    # nq_open rows carry no id: derive a stable one from the question text
    ident = rec.get("id") or "nq_" + hashlib.sha1(question.encode()).hexdigest()[:12]
    return Example(id=str(ident), question=question, references=_dedup(_list(rec, "answer")))


def from_svamp(rec: Mapping[str, Any]) -> Example:
    """SVAMP (``ChilleD/SVAMP``): Body is the context, Answer a number."""
    answer = _need(rec, "Answer")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return Example(
        id=str(_need(rec, "ID")),
        question=str(_need(rec, "Question")),
        context=str(_need(rec, "Body")),
        references=(str(answer),),
    )


def from_bioasq(rec: Mapping[str, Any]) -> Example:
    """BioASQ Task B question (training JSON): exact_answer, possibly nested lists of synonyms."""
    exact = _need(rec, "exact_answer")
    flat: list[str] = []
    stack = [exact]
    while stack:
        cur = stack.pop(0)
        if isinstance(cur, list):
            stack[:0] = cur
        else:
            flat.append(str(cur))
    return Example(id=str(_need(rec, "id")), question=str(_need(rec, "body")), references=_dedup(flat))


#: schema name -> (adapter, fields whose presence identifies the schema)
SCHEMAS: dict[str, tuple[Callable[[Mapping[str, Any]], Example], tuple[str, ...]]] = {
    "trivia_qa": (from_trivia_qa, ("question_id", "answer")),
    "squad": (from_squad, ("context", "answers")),
    "nq_open": (from_nq_open, ("question", "answer")),
    "svamp": (from_svamp, ("Body", "Question", "Answer")),
    "bioasq": (from_bioasq, ("body", "exact_answer")),
}


def detect_schema(rec: Mapping[str, Any]) -> str | None:
    """The first schema whose identifying fields all appear in ``rec`` (order matters: TriviaQA
    and NQ both have ``question`` and ``answer``; TriviaQA's ``question_id`` tells them apart)."""
    for name, (_, keys) in SCHEMAS.items():
        if all(k in rec for k in keys):
            return name
    return None
