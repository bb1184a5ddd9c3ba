"""Single-pass uncertainty scores: pure functions over one answer's per-token statistics.

Every score here takes arrays over the answer tokens only (see ``Generation``), does no I/O and no
model calls, and follows one sign convention: **higher means more uncertain**. An empty answer
(zero answer tokens) has G-NLL 0 (the empty sum) and NaN for the per-token scores, which
evaluation leaves out as undefined.

Non-finite log-probabilities are not errors here: a log-probability of -inf (a token the model gave
probability zero) makes every score that includes that token +inf, the most uncertain value, and
evaluation ranks it above every finite score; a NaN log-probability (a numerical failure upstream)
makes the scores that include it NaN, left out like an empty answer's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

def _nll(logprobs: Sequence[float]) -> np.ndarray:
    return -np.asarray(logprobs, dtype=np.float64)


def g_nll(logprobs: Sequence[float]) -> float:
    """G-NLL = -sum_t log p(y_t | x, y_<t) over the greedy answer's tokens. Needs token log-probs."""
    return float(_nll(logprobs).sum())


def ln_g_nll(logprobs: Sequence[float]) -> float:
    """Length-normalised G-NLL: G-NLL / number of answer tokens (NaN for an empty answer)."""
    nll = _nll(logprobs)
    return float(nll.mean()) if nll.size else float("nan")


def max_token_nll(logprobs: Sequence[float]) -> float:
    """The largest single-token NLL of the answer (NaN for an empty answer)."""
    nll = _nll(logprobs)
    return float(nll.max()) if nll.size else float("nan")


def mean_token_entropy(entropies: Sequence[float]) -> float:
    """Mean entropy (nats) of the predictive distributions at the answer's positions."""
    h = np.asarray(entropies, dtype=np.float64)
    return float(h.mean()) if h.size else float("nan")


def rw_g_nll(logprobs: Sequence[float], relevance: Sequence[float]) -> float:
    """RW-G-NLL = sum_t R_t * NLL_t / sum_t R_t, with R_t the relevance of token t (TokenSAR).

    Relevance weights are used as given (no rescaling: a min-max rescale flattens them). If every
    weight is zero the tokens are weighted equally, which gives LN-G-NLL. A token of weight zero
    contributes nothing, even with an infinite NLL (0 * inf is taken as 0).
    """
    nll = _nll(logprobs)
    r = np.clip(np.asarray(relevance, dtype=np.float64), 0.0, None)
    if nll.size == 0:
        return float("nan")
    if r.shape != nll.shape:
        raise ValueError(f"relevance has {r.size} weights for {nll.size} tokens")
    total = r.sum()
    if total <= 0:
        return float(nll.mean())
    return float((r * np.where(r > 0, nll, 0.0)).sum() / total)


def answer_tokens(token_ids: Sequence[int]) -> float:
    """Answer length in tokens: a baseline that needs no model output at all. G-NLL sums over the
    answer's tokens, so a long answer scores as uncertain whatever the model believes; a measure
    is worth its cost only where it flags wrong answers beyond what length alone does (the report's
    "beyond length" test). Higher (longer) = more uncertain, the direction wrong answers lean."""
    return float(len(token_ids))


def answer_chars(answer: str) -> float:
    """Answer length in characters (surrounding whitespace left out), the tokenizer-free baseline."""
    return float(len(answer.strip()))
