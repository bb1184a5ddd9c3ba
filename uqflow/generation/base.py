"""The record every generation engine produces, the alignment of answers to stop sequences, and
how an engine reports its progress."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class Generation:
    """One greedy answer with its per-token statistics from the same forward pass.

    Answer tokens are the greedy tokens produced before the first stop sequence or EOS; stop and EOS
    tokens are not answer tokens, and ``decode(token_ids).strip() == text`` always holds.
    ``token_logprobs[t]`` is log p(y_t | x, y_<t) from the raw log-softmax of the logits and
    ``token_entropies[t]`` the entropy (nats) of that same distribution.
    """

    prompt_token_ids: list[int]
    token_ids: list[int]
    token_logprobs: list[float]
    token_entropies: list[float]
    text: str
    stop_reason: str  # stop_sequence | eos | length
    dropped_text: str = ""  # text of a token straddling the stop, before the stop (not in the answer)


#: seconds between two reports of tokens decoded (``Reports``): often enough for a bar to move
#: smoothly, seldom enough to cost nothing beside a decode step
TOKEN_REPORT_SECONDS = 0.5


class Reports:
    """An engine's reports to the ``progress`` callable its caller passed: ``progress(rows, tokens=0)``,
    ``rows`` answers (or scored prompts) finished and ``tokens`` tokens decoded since the last call.

    A decode step adds its tokens (``decoded``: a counter), passed on at the first step and then at
    most every TOKEN_REPORT_SECONDS, so that a batch whose rows all finish late still moves; a row
    that finishes is passed on at once (``finished``), with the tokens not yet reported. An engine
    that cannot see its tokens as they are decoded reports them with its rows, or not at all
    (``progress(rows)``): the display then shows questions only. Without a ``progress``, nothing."""

    __slots__ = ("progress", "pending", "due")

    def __init__(self, progress: Callable[..., None] | None):
        self.progress = progress
        self.pending = 0  # tokens decoded, not yet reported
        self.due = 0.0  # perf_counter time of the next report of tokens (0: the first step reports)

    def decoded(self, tokens: int) -> None:
        self.pending += tokens
        if self.progress is not None and time.perf_counter() >= self.due:
            self.flush()

    def finished(self, rows: int) -> None:
        if self.progress is None:
            return
        tokens, self.pending = self.pending, 0
        if tokens:
            self.progress(rows, tokens=tokens)
        else:
            self.progress(rows)

    def flush(self) -> None:
        """Report the tokens not yet reported (at a batch's end, or when due)."""
        if self.progress is not None and self.pending:
            tokens, self.pending = self.pending, 0
            self.progress(0, tokens=tokens)
        self.due = time.perf_counter() + TOKEN_REPORT_SECONDS


@runtime_checkable
class Engine(Protocol):
    """What the experiment asks of a generation engine (``uqflow.generation.hf.HFEngine``,
    ``uqflow.generation.vllm_engine.VLLMEngine``)."""

    name: str
    #: token ids -> the stored answer text (``decoder``)
    decode: Callable[[Sequence[int]], str]
    max_new_tokens: int
    batch_size: int  # 0 where the engine schedules its own batches
    #: whether an answer is the same whatever shares its batch (up to float rounding)
    batch_invariant: bool
    #: forward passes and generated tokens, greedy and sampled apart (scoring/cost.py)
    passes: dict[str, int]
    tokens: dict[str, int]
    generation_seconds: float  # greedy decoding

    def generate(self, prompts: Sequence[Sequence[int]], progress=None, *, shuffle: int = 0) -> list[Generation]:
        """One greedy answer per tokenized prompt, in the order given; ``progress(rows, tokens=0)``
        (``Reports``) hears of each answer and of the tokens decoded."""

    def sample(self, prompts: Sequence[Sequence[int]], n: int, *, temperature: float = 1.0, seed: int = 0,
               progress=None) -> list[list[Generation]]:
        """``n`` sampled answers per prompt, reproducible from ``seed``; ``progress`` counts answers."""

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                              progress=None) -> list[float]:
        """log p(continuation | prompt) for each pair, by teacher forcing; ``progress`` counts pairs."""


def align_answer(
    ids: Sequence[int], decode: Callable[[Sequence[int]], str], eos_ids: set[int], stops: Sequence[str]
) -> tuple[int, str, str]:
    """Number of answer tokens in ``ids`` (greedy continuation), the stop reason and dropped text.

    A token that straddles a stop sequence (``".\\n"`` with ``"\\n"`` a stop) is not an answer token:
    keeping it would put text after the stop into the answer, and cutting its text would make the
    text disagree with the token ids and their log-probabilities. The part of it before the stop is
    returned as ``dropped_text`` (usually punctuation or a space).
    """
    for k, tok in enumerate(ids):
        if tok in eos_ids:
            return k, "eos", ""
        text = decode(ids[: k + 1])
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            hit = min(hits)
            j = k
            while j > 0 and len(decode(ids[:j])) > hit:
                j -= 1
            return j, "stop_sequence", text[len(decode(ids[:j])) : hit]
    return len(ids), "length", ""


def decoder(tokenizer) -> Callable[[Sequence[int]], str]:
    """Token ids to text as every answer is stored: special tokens dropped. One definition for the
    engines, the token pieces and the relevance variants, so they cannot disagree."""
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


def token_pieces(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[str]:
    """Each answer token as the text it adds, so that the pieces join to the decoded answer.

    Decoding a lone token loses context (SentencePiece drops a leading space, byte-level BPE splits
    a multi-byte character), so each piece is the difference between decoding the first ``t + 1``
    and the first ``t`` tokens. Used for token-level views of an answer.
    """
    pieces, prev = [], ""
    for t in range(len(token_ids)):
        text = decode(token_ids[: t + 1])
        pieces.append(text[len(prev):] if text.startswith(prev) else text)
        prev = text
    return pieces
