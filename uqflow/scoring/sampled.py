"""Sampling-based uncertainty: measures over N answers sampled for a question, beside the greedy one.

Every measure here is a pure function over stored values (the samples' token log-probabilities,
their semantic cluster ids from :mod:`uqflow.scoring.semantic`, log p(True)), so any of them can be
recomputed from a stored row. They follow the convention of :mod:`uqflow.scoring.uncertainty`:
**higher means more uncertain**, and NaN where a measure is undefined (no samples), which
evaluation leaves out. A sample's token log-probabilities cover its answer tokens only, as the
greedy answer's do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def _sample_arrays(sample_logprobs: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Each sample's token log-probs as a float64 array (lists, or parquet's arrays of arrays)."""
    return [np.asarray(lp, dtype=np.float64).reshape(-1) for lp in sample_logprobs]


def predictive_entropy(sample_logprobs: Sequence[Sequence[float]]) -> float:
    """Predictive entropy, Monte-Carlo estimate over the N samples: PE = -1/N sum_k log p(s_k | x),
    with log p(s_k | x) = sum_t log p(s_k,t | x, s_k,<t) over sample k's answer tokens (an empty
    sample has log p = 0, the empty sum, as the greedy answer's G-NLL). NaN if N = 0."""
    samples = _sample_arrays(sample_logprobs)
    if not samples:
        return NAN
    return float(-np.mean([lp.sum() for lp in samples]))


def ln_predictive_entropy(sample_logprobs: Sequence[Sequence[float]]) -> float:
    """Length-normalised predictive entropy: LN-PE = -1/N sum_k (1/L_k) sum_t log p(s_k,t | ...),
    with L_k the number of answer tokens of sample k. An empty sample (L_k = 0) has no mean
    token log-prob and is left out of the mean (N counts the others); NaN if none is left."""
    means = [lp.mean() for lp in _sample_arrays(sample_logprobs) if lp.size]
    return float(-np.mean(means)) if means else NAN


def _logsumexp(x: np.ndarray) -> float:
    m = x.max()
    if not np.isfinite(m):  # all -inf (or +inf): nothing to shift by
        return float(m)
    return float(m + np.log(np.exp(x - m).sum()))


def semantic_entropy(semantic_ids: Sequence[int], sample_logprobs: Sequence[Sequence[float]],
                     length_normalised: bool = True) -> float:
    """Semantic entropy (Farquhar, Kossen, Kuhn & Gal, "Detecting hallucinations in large language
    models using semantic entropy", Nature 630, 2024):

        SE(x) = -sum_C p(C | x) log p(C | x),    p(C | x) = sum_{s_k in C} p~(s_k | x),
        p~(s_k | x) = exp(l_k) / sum_j exp(l_j)   (normalised over the N samples drawn),

    with C the semantic clusters (``semantic_ids[k]`` is sample k's) and l_k sample k's
    log-likelihood: by default its mean token log-prob (``length_normalised``, as the authors'
    released code aggregates), else the sum. The normalisation is computed with log-sum-exp.

    Length-normalised, an empty sample (no answer tokens, no mean) is left out, as in
    :func:`ln_predictive_entropy`; summed, its l_k is 0. NaN if no sample is left, if any l_k is
    NaN, or if every l_k is -inf (no probability to normalise). A single cluster gives 0.
    """
    ids = np.asarray(semantic_ids).reshape(-1)
    samples = _sample_arrays(sample_logprobs)
    if ids.size != len(samples):
        raise ValueError(f"{ids.size} semantic ids for {len(samples)} samples")
    if length_normalised:
        keep = [k for k, lp in enumerate(samples) if lp.size]
        ids = ids[keep]
        ll = np.array([samples[k].mean() for k in keep], dtype=np.float64)
    else:
        ll = np.array([lp.sum() for lp in samples], dtype=np.float64)
    if ll.size == 0 or np.isnan(ll).any() or np.all(ll == -np.inf):
        return NAN
    log_z = _logsumexp(ll)
    _, cluster_of = np.unique(ids, return_inverse=True)
    log_pc = np.array([_logsumexp(ll[cluster_of == c]) for c in range(cluster_of.max() + 1)]) - log_z
    held = np.isfinite(log_pc)  # a cluster of probability 0 adds 0 (0 log 0 = 0)
    return float(-np.sum(np.exp(log_pc[held]) * log_pc[held]))


def discrete_semantic_entropy(semantic_ids: Sequence[int]) -> float:
    """Discrete semantic entropy (Farquhar et al. 2024): the entropy -sum_C f_C log f_C of the
    empirical cluster frequencies f_C = |C| / N; needs no probabilities. 0 when every sample is in
    one cluster, ln N when all N are distinct; NaN if N = 0."""
    ids = np.asarray(semantic_ids).reshape(-1)
    if ids.size == 0:
        return NAN
    f = np.unique(ids, return_counts=True)[1] / ids.size
    return float(-np.sum(f * np.log(f)))


def num_semantic_sets(semantic_ids: Sequence[int]) -> float:
    """The number of distinct semantic clusters among the samples (as a float; NaN if N = 0)."""
    ids = np.asarray(semantic_ids).reshape(-1)
    return float(np.unique(ids).size) if ids.size else NAN


def p_true_score(log_p_true: float) -> float:
    """Uncertainty from p(True) (Kadavath et al., "Language Models (Mostly) Know What They Know",
    2022): -log p(True), the NLL of the model calling its own answer true; NaN passes through."""
    return -float(log_p_true)
