"""The one Example type every dataset is adapted to, and the adapters from each source schema.

Each adapter takes one record in its source's own schema (as the Hugging Face ``datasets`` rows
or the JSON Lines files look) and returns an :class:`Example`. A missing field raises
``KeyError(field)``, which the loaders turn into a message naming the file, line and field.
"""

from __future__ import annotations

import hashlib
import math
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


def _checked_text(value: Any, key: str) -> str:
    """``value`` if it is text that encodes as UTF-8: bytes (a Parquet binary column), a mapping, a
    list or a number would reach the prompt as its Python repr (``b'...'``, ``{'text': ...}``), and
    a lone surrogate (a JSON escape like ``\\ud800`` without its pair) would fail in the tokenizer."""
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"field {key!r} is not valid text (a lone surrogate \\u{ord(value[e.start]):04x} at character "
                         f"{e.start + 1}); a surrogate escape must come in a pair (\\ud83d\\ude00 is one character), "
                         "so fix or remove it") from None
    return value


def _text(rec: Mapping[str, Any], key: str) -> str:
    """``rec[key]``, which must be text (see :func:`_checked_text`)."""
    return _checked_text(_need(rec, key), key)


def _checked_ident(value: Any, key: str) -> str:
    """An id as text: datasets use both text and whole numbers (a number becomes its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} must be text or a whole number, got {type(value).__name__}")
    return _checked_text(value, key)


def _dedup(items: Iterable[Any], key: str) -> tuple[str, ...]:
    """The distinct non-blank answers among ``items`` (field ``key``), each of which must be text."""
    out: list[str] = []
    for i, s in enumerate(items):
        s = _checked_text(s, f"{key}[{i}]").strip()
        if s and s not in out:
            out.append(s)
    return tuple(out)


def from_trivia_qa(rec: Mapping[str, Any]) -> Example:
    """TriviaQA (``mandarjoshi/trivia_qa``, rc.nocontext): answer.value plus answer.aliases."""
    value = _text(rec, "answer.value")
    aliases = [_checked_text(a, f"answer.aliases[{i}]") for i, a in enumerate(_list(rec, "answer.aliases"))]
    return Example(
        id=_checked_ident(_need(rec, "question_id"), "question_id"),
        question=_text(rec, "question"),
        references=_dedup([value, *aliases], "answer"),
    )


def from_squad(rec: Mapping[str, Any]) -> Example:
    """SQuAD v2 (``rajpurkar/squad_v2``): answers.text; an empty list means unanswerable."""
    texts = _dedup(_list(rec, "answers.text"), "answers.text")
    return Example(
        id=_checked_ident(_need(rec, "id"), "id"),
        question=_text(rec, "question"),
        context=_text(rec, "context"),
        references=texts,
        answerable=bool(texts),
        meta={"title": rec.get("title", "")},
    )


def from_nq_open(rec: Mapping[str, Any]) -> Example:
    """Natural Questions open (``google-research-datasets/nq_open``): answer is a list."""
    question = _text(rec, "question")
    raw_id = rec.get("id")
    if raw_id is None or raw_id == "":  # nq_open rows carry no id: derive a stable one from the question text
        ident = "nq_" + hashlib.sha1(question.encode()).hexdigest()[:12]
    else:
        ident = _checked_ident(raw_id, "id")
    return Example(id=ident, question=question, references=_dedup(_list(rec, "answer"), "answer"))


def from_svamp(rec: Mapping[str, Any]) -> Example:
    """SVAMP (``ChilleD/SVAMP``): Body is the context, Answer a number."""
    answer = _need(rec, "Answer")
    if isinstance(answer, bool) or not isinstance(answer, (int, float, str)):
        raise TypeError(f"field 'Answer' must be a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise ValueError(f"field 'Answer' must be a finite number, got {answer}")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return Example(
        id=_checked_ident(_need(rec, "ID"), "ID"),
        question=_text(rec, "Question"),
        context=_text(rec, "Body"),
        references=(_checked_text(str(answer), "Answer"),),
    )


def from_bioasq(rec: Mapping[str, Any]) -> Example:
    """BioASQ Task B question (training JSON): exact_answer, text or (nested) lists of synonyms."""
    exact = _need(rec, "exact_answer")
    flat: list[Any] = []
    stack = [exact]
    while stack:
        cur = stack.pop(0)
        if isinstance(cur, list):
            stack[:0] = cur
        else:
            flat.append(cur)
    return Example(id=_checked_ident(_need(rec, "id"), "id"), question=_text(rec, "body"),
                   references=_dedup(flat, "exact_answer"))


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
