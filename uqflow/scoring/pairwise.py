"""Sample-consistency uncertainty: measures over the pairwise similarities of N sampled answers.

Each function here is a pure numpy/scipy function over one question's stored values and reproduces
the estimator of the same name in LM-Polygraph 0.7.0 (``lm_polygraph.estimators``) on the same
inputs; where it departs from it on purpose (inputs on which LM-Polygraph divides by zero, raises, or
overflows), the function's docstring says so. They follow the convention of
:mod:`uqflow.scoring.sampled`: **higher means more uncertain**, every function returns a Python
float, and NaN where the measure is undefined (always for N = 0 samples).

The row fields they take (N = number of sampled answers):

* ``samples``: the N sampled answer texts.
* ``sample_token_logprobs``: N lists of per-token log-probabilities (answer tokens only; an empty
  sample has log-likelihood 0, the empty sum).
* ``sample_relevance``: N lists, per token, R_t = 1 - sim(sample, sample without token t)
  (LM-Polygraph's ``sample_token_similarity`` is 1 - R_t).
* ``sample_similarity``: N x N similarity-model scores, entry [i][j] for the pair (sample i,
  sample j) (LM-Polygraph's ``sample_sentence_similarity``).
* ``greedy_similarity``: N similarities of the greedy answer to each sample
  (LM-Polygraph's ``greedy_sentence_similarity``).
* ``sample_entailment``: N x N, entry [i][j] = p(sample i entails sample j) from the entailment
  judge (LM-Polygraph's ``semantic_matrix_entail``); the ``affinity`` argument of the graph
  measures.
* ``token_logprobs``: the greedy answer's token log-probs (LM-Polygraph's ``greedy_log_likelihoods``).

Lists, numpy arrays and parquet's arrays of arrays (object arrays of float arrays) are all accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import scipy.linalg
from scipy.sparse.csgraph import laplacian as _graph_laplacian
from scipy.special import logsumexp

from uqflow.scoring.sampled import _sample_arrays

NAN = float("nan")

SAR_TEMPERATURE = 0.001  # LM-Polygraph's SAR / SentenceSAR ``self.t``
ECCENTRICITY_THRESHOLD = 0.9  # LM-Polygraph's Eccentricity ``thres``: eigenvectors with eigenvalue < 0.9
KLE_TIME = 0.3  # LM-Polygraph's KernelLanguageEntropy ``t`` (heat-kernel time, from the paper)
_KLE_DIAG_EPS = 1e-12  # added to sqrt(diag K) before the kernel is normalised (LM-Polygraph's EPS)
_KLE_EIG_CUTOFF = 1e-8  # eigenvalues with |e| <= 1e-8 add nothing to the von Neumann entropy


# --------------------------------------------------------------------------------------------------
# input conversion


def _vector(values: Sequence[float]) -> np.ndarray:
    """A flat float64 array (a list, a numpy array, or a parquet object array of scalars)."""
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _matrix(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """A square float64 matrix from a 2-D array, a list of lists, or parquet's array of arrays."""
    arrays = [np.asarray(r, dtype=np.float64).reshape(-1) for r in rows]
    if not arrays:
        return np.zeros((0, 0))
    if len({a.size for a in arrays}) != 1:
        raise ValueError("matrix rows have different lengths")
    m = np.stack(arrays)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square matrix, got {m.shape[0]} x {m.shape[1]}")
    return m


def _symmetrised(affinity: Sequence[Sequence[float]]) -> np.ndarray:
    w = _matrix(affinity)
    return (w + w.T) / 2


# --------------------------------------------------------------------------------------------------
# SAR (Duan et al., "Shifting Attention to Relevance", ACL 2024, arXiv:2307.01379)


def _token_sar(logprobs: np.ndarray, relevance: np.ndarray) -> float:
    """TokenSAR of one sample: sum_t (R_t / sum_s R_s) * (-log p_t); 0 for an empty sample."""
    if relevance.shape != logprobs.shape:
        raise ValueError(f"relevance has {relevance.size} weights for {logprobs.size} tokens")
    if logprobs.size == 0:
        return 0.0
    total = relevance.sum()
    weights = np.full(logprobs.size, 1.0 / logprobs.size) if total == 0 else relevance / total
    # a token of weight zero contributes nothing, even with log p = -inf (0 * inf taken as 0)
    terms = np.multiply(-logprobs, weights, out=np.zeros_like(weights), where=weights != 0)
    return float(terms.sum())


def _sentence_relevance_energy(log_p: np.ndarray, similarity: Sequence[Sequence[float]],
                               t: float) -> float:
    """mean_i -log( p_i + (1/t) * sum_{j != i} S_ij p_j ), with p = exp(log_p), in log space."""
    n = log_p.size
    if n == 0:
        return NAN
    s = _matrix(similarity)
    if s.shape != (n, n):
        raise ValueError(f"similarity is {s.shape[0]} x {s.shape[1]} for {n} samples")
    b = s / t
    np.fill_diagonal(b, 1.0)
    # log sum_j b_ij exp(log p_j); a negative sum (possible with negative similarities) has no log
    with np.errstate(divide="ignore"):
        log_sum, sign = logsumexp(np.broadcast_to(log_p, (n, n)), b=b, axis=1, return_sign=True)
    log_sum = np.where(sign < 0, np.nan, log_sum)
    return float(np.mean(-log_sum))


def sar(sample_token_logprobs: Sequence[Sequence[float]], sample_relevance: Sequence[Sequence[float]],
        sample_similarity: Sequence[Sequence[float]], t: float = SAR_TEMPERATURE) -> float:
    """SAR (Duan et al., "Shifting Attention to Relevance: Towards the Predictive Uncertainty
    Quantification of Free-Form Large Language Models", ACL 2024), as LM-Polygraph's ``SAR``:

        TokenSAR_k = sum_t  R_kt / (sum_s R_ks) * (-log p(s_k,t | x, s_k,<t)),   p~_k = exp(-TokenSAR_k)
        SAR        = 1/N sum_i -log( p~_i + (1/t) sum_{j != i} S_ij p~_j )

    with R_kt the relevance of token t of sample k, S = ``sample_similarity`` (row i, column j, not
    symmetrised, as LM-Polygraph) and temperature t = 0.001 (LM-Polygraph's default).

    Differs from LM-Polygraph on purpose where it is undefined or overflows:

    * a non-empty sample whose relevances sum to 0 (every R_t = 0): LM-Polygraph divides 0 by 0 and
      returns NaN for the whole question; here its tokens are weighted equally (TokenSAR = the mean
      token NLL), the limit of TokenSAR when all relevances are equal;
    * a token of relevance 0 with log p = -inf contributes 0 here (NaN in LM-Polygraph);
    * the inner sum is computed in log space (log-sum-exp), so samples whose probabilities exp(-TokenSAR)
      all underflow to 0 give a finite value where LM-Polygraph gives +inf. Elsewhere the two agree to
      rounding.

    An empty sample has TokenSAR 0 (the empty sum), as in LM-Polygraph. NaN if N = 0.
    """
    logprobs = _sample_arrays(sample_token_logprobs)
    relevance = _sample_arrays(sample_relevance)
    if len(relevance) != len(logprobs):
        raise ValueError(f"{len(relevance)} relevance rows for {len(logprobs)} samples")
    log_p = np.array([-_token_sar(lp, r) for lp, r in zip(logprobs, relevance)], dtype=np.float64)
    return _sentence_relevance_energy(log_p, sample_similarity, t)


def sentence_sar(sample_token_logprobs: Sequence[Sequence[float]],
                 sample_similarity: Sequence[Sequence[float]], t: float = SAR_TEMPERATURE) -> float:
    """SentenceSAR (Duan et al., ACL 2024, arXiv:2307.01379), as LM-Polygraph's ``SentenceSAR``:

        SentenceSAR = 1/N sum_i -log( p_i + (1/t) sum_{j != i} S_ij p_j ),   p_k = exp(sum_t log p(s_k,t | ...))

    with S = ``sample_similarity`` (row i, column j) and t = 0.001. An empty sample has p = 1 (log p
    = 0, the empty sum). Computed in log space: where every p_j of a row underflows to 0 this is
    finite, where LM-Polygraph returns +inf (a difference by design); elsewhere they agree to
    rounding. NaN if N = 0.
    """
    log_p = np.array([lp.sum() for lp in _sample_arrays(sample_token_logprobs)], dtype=np.float64)
    return _sentence_relevance_energy(log_p, sample_similarity, t)


# --------------------------------------------------------------------------------------------------
# graph measures (Lin, Trivedi & Sun, "Generating with Confidence: Uncertainty Quantification for
# Black-box Large Language Models", TMLR 2024, arXiv:2305.19187)


def degmat(affinity: Sequence[Sequence[float]]) -> float:
    """Degree-matrix uncertainty U_Deg (Lin et al., TMLR 2024), as LM-Polygraph's ``DegMat``:

        W = (A + A^T) / 2,   D = diag(W 1),   U_Deg = trace(N I - D) / N^2 = 1 - (sum_ij W_ij) / N^2

    with A the N x N affinity (the entailment matrix, or the Jaccard matrix, which is symmetric
    already); the diagonal is kept as given, as LM-Polygraph does. 0 when every pair has affinity 1,
    1 when every affinity is 0. NaN if N = 0.
    """
    w = _symmetrised(affinity)
    n = w.shape[0]
    if n == 0:
        return NAN
    return float(np.trace(n * np.eye(n) - np.diag(w.sum(axis=1))) / n**2)


def _normalised_laplacian(affinity: Sequence[Sequence[float]]) -> np.ndarray | None:
    """L = I - D^{-1/2} W D^{-1/2} with W = (A + A^T)/2 and D = diag(W 1), self-affinities included
    in W and D (scipy.sparse.csgraph.laplacian drops the diagonal, so it is not used here). None if
    N = 0, if W is not finite, or if a degree is 0 (LM-Polygraph's matrix inverse fails there)."""
    w = _symmetrised(affinity)
    if w.shape[0] == 0 or not np.all(np.isfinite(w)):
        return None
    degree = w.sum(axis=1)
    if np.any(degree <= 0):
        return None
    inv_sqrt = 1.0 / np.sqrt(degree)
    return np.eye(w.shape[0]) - inv_sqrt[:, None] * w * inv_sqrt[None, :]


def eigval_laplacian(affinity: Sequence[Sequence[float]]) -> float:
    """Sum of the graph Laplacian's eigenvalues U_EigV (Lin et al., TMLR 2024), as LM-Polygraph's
    ``EigValLaplacian``:

        L = I - D^{-1/2} W D^{-1/2},   U_EigV = sum_k max(0, 1 - lambda_k(L))

    with W = (A + A^T)/2 and D = diag(W 1): a continuous count of semantic sets (1 when all samples
    agree, N when W = I). NaN if N = 0, if A has a non-finite entry, or if a sample has degree 0
    (LM-Polygraph raises on the singular D there).
    """
    lap = _normalised_laplacian(affinity)
    if lap is None:
        return NAN
    eigenvalues = scipy.linalg.eigh(lap, eigvals_only=True)
    return float(np.clip(1.0 - eigenvalues, 0.0, None).sum())


def eccentricity(affinity: Sequence[Sequence[float]], thres: float = ECCENTRICITY_THRESHOLD) -> float:
    """Eccentricity U_Ecc (Lin et al., TMLR 2024), as LM-Polygraph's ``Eccentricity``:

        V = [u_k : lambda_k(L) < thres]  (N x K, unit eigenvectors of L = I - D^{-1/2} W D^{-1/2}),
        v_i = row i of V (sample i's embedding),   U_Ecc = || [v_1 - v_bar, ..., v_N - v_bar] ||_F

    with W = (A + A^T)/2 and LM-Polygraph's eigenvalue threshold thres = 0.9 (no fixed k). (LM-Polygraph
    centres each eigenvector rather than each embedding, which gives the same Frobenius norm.) 0 when
    all samples agree. NaN if N = 0, if A has a non-finite entry, or if a sample has degree 0.
    """
    lap = _normalised_laplacian(affinity)
    if lap is None:
        return NAN
    eigenvalues, eigenvectors = scipy.linalg.eigh(lap)
    v = eigenvectors[:, eigenvalues < thres]
    return float(np.linalg.norm(v - v.mean(axis=0)))


def jaccard_matrix(samples: Sequence[str]) -> np.ndarray:
    """Pairwise Jaccard similarity |A_i & A_j| / |A_i | A_j| of the samples' sets of lower-cased
    whitespace-separated words (LM-Polygraph's ``compute_sim_score``): 1 on the diagonal, 0 for a
    pair whose union is empty (two empty samples off the diagonal). An N x N float array."""
    words = [set(str(s).lower().split()) for s in samples]
    n = len(words)
    sim = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            union = len(words[i] | words[j])
            sim[i, j] = sim[j, i] = len(words[i] & words[j]) / union if union else 0.0
    return sim


def degmat_jaccard(samples: Sequence[str]) -> float:
    """:func:`degmat` on the Jaccard matrix of the samples (LM-Polygraph ``DegMat_Jaccard_score``)."""
    return degmat(jaccard_matrix(samples))


def eigval_jaccard(samples: Sequence[str]) -> float:
    """:func:`eigval_laplacian` on the Jaccard matrix (LM-Polygraph ``EigValLaplacian_Jaccard_score``)."""
    return eigval_laplacian(jaccard_matrix(samples))


def eccentricity_jaccard(samples: Sequence[str]) -> float:
    """:func:`eccentricity` on the Jaccard matrix (LM-Polygraph ``Eccentricity_Jaccard_score``)."""
    return eccentricity(jaccard_matrix(samples))


# --------------------------------------------------------------------------------------------------
# lexical similarity (Fomicheva et al., "Unsupervised Quality Estimation for Neural Machine
# Translation", TACL 2020; the baseline of Kuhn et al., arXiv:2302.09664)


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def lexical_similarity(samples: Sequence[str]) -> float:
    """Lexical similarity, as LM-Polygraph's ``LexicalSimilarity`` with its default metric:

        LexSim = -2 / (N (N - 1)) sum_{i < j} ROUGE-L_F(s_i, s_j)

    the negated mean ROUGE-L F-measure (``rouge-score``, Porter stemmer on, its default tokenizer)
    over the unordered pairs, scored as ``score(target=s_i, prediction=s_j)`` for i < j. In [-1, 0].
    NaN if N < 2 (no pair; LM-Polygraph's mean of nothing is NaN too).
    """
    texts = list(samples)
    if len(texts) < 2:
        return NAN
    scorer = _rouge_l_scorer()
    sims = [scorer.score(texts[i], texts[j])["rougeL"].fmeasure
            for i in range(len(texts)) for j in range(i + 1, len(texts))]
    return 0.0 - float(np.mean(sims))  # 0.0, not -0.0, when no pair shares a word


# --------------------------------------------------------------------------------------------------
# CoCoA (Vashurin et al., "Uncertainty Quantification for LLMs through Minimum Bayes Risk: Bridging
# Confidence and Consistency", 2025, arXiv:2502.04964)


def greedy_dissimilarity(greedy_similarity: Sequence[float]) -> float:
    """CoCoA's consistency term alone: 1/N sum_k (1 - sim(greedy, s_k)). NaN if N = 0."""
    sim = _vector(greedy_similarity)
    return float(np.mean(1.0 - sim)) if sim.size else NAN


def cocoa_msp(token_logprobs: Sequence[float], greedy_similarity: Sequence[float]) -> float:
    """CoCoA-MSP (Vashurin et al. 2025), as LM-Polygraph's ``CocoaMSP``:

        CoCoA_MSP = (-sum_t log p(y_t | x, y_<t)) * 1/N sum_k (1 - sim(y, s_k))

    the greedy answer y's NLL times its mean dissimilarity to the N samples. An empty greedy answer
    has NLL 0 (the empty sum), so 0. NaN if N = 0.
    """
    lp = _vector(token_logprobs)
    nll = -float(lp.sum()) if lp.size else 0.0  # not -0.0 for the empty answer
    return float(nll * greedy_dissimilarity(greedy_similarity))


def cocoa_ppl(token_logprobs: Sequence[float], greedy_similarity: Sequence[float]) -> float:
    """CoCoA-PPL (Vashurin et al. 2025), as LM-Polygraph's ``CocoaPPL``:

        CoCoA_PPL = (-1/L sum_t log p(y_t | x, y_<t)) * 1/N sum_k (1 - sim(y, s_k))

    the greedy answer's mean token NLL (log-perplexity) times its mean dissimilarity to the samples.
    NaN for an empty greedy answer (L = 0, no mean) or N = 0.
    """
    lp = _vector(token_logprobs)
    if lp.size == 0:
        return NAN
    return float(-lp.mean() * greedy_dissimilarity(greedy_similarity))


# --------------------------------------------------------------------------------------------------
# Kernel Language Entropy (Nikitin, Kossen, Gal & Marttinen, "Kernel Language Entropy: Fine-grained
# Uncertainty Quantification for LLMs from Semantic Similarities", NeurIPS 2024, arXiv:2405.20003)


def kernel_language_entropy(affinity: Sequence[Sequence[float]], t: float = KLE_TIME, *,
                            contradiction: Sequence[Sequence[float]] | None = None,
                            normalize: bool = True, scale: bool = True, jitter: float = 0.0) -> float:
    """Kernel Language Entropy KLE(K_heat) (Nikitin et al., NeurIPS 2024), as LM-Polygraph's
    ``KernelLanguageEntropy`` (defaults t = 0.3, normalize, scale, jitter 0):

        E = A + A^T,  C = P + P^T,  W = E + 0.5 (2 - E - C)    (weights 1 / 0.5 / 0 for entailment /
                                                                neutral / contradiction, both ways)
        L = D - W  (D = diag of degrees),   K = expm(-t L)
        K' = K / (d d^T) / N,  d_i = sqrt(K_ii) + 1e-12         (normalize: unit diagonal, trace 1)
        KLE = -sum_{|e| > 1e-8} e log e  over the eigenvalues e of K' + jitter I,
              divided by log N                                   (scale: into [0, 1])

    with A = ``affinity`` (entry [i][j] = p(i entails j)) and P = ``contradiction`` (p(i contradicts
    j)). Self-loops do not enter L (D - W cancels them), so scipy's graph Laplacian is used.

    Differs from LM-Polygraph on purpose:

    * LM-Polygraph needs the contradiction matrix as well; with ``contradiction`` given the two agree
      to rounding. Without it (the stored rows hold the entailment matrix only) the neutral mass is
      taken as 0, i.e. P = 1 - A, so W = A + A^T: the entailment graph alone. This equals
      LM-Polygraph's value exactly when the judge gives no neutral probability.
    * N = 1 gives 0.0 (a single sample has von Neumann entropy 0); LM-Polygraph divides by log 1 = 0
      there and returns -inf.

    The eigenvalues come from ``numpy.linalg.eigvalsh`` (K' is symmetric; LM-Polygraph's general
    ``eig`` gives the same values up to rounding). NaN if N = 0 or if an input entry is not finite.
    """
    entail = _matrix(affinity)
    n = entail.shape[0]
    if n == 0:
        return NAN
    e = entail + entail.T
    if contradiction is None:
        weights = e
    else:
        contra = _matrix(contradiction)
        if contra.shape != entail.shape:
            raise ValueError(f"contradiction is {contra.shape} for an affinity of {entail.shape}")
        c = contra + contra.T
        weights = e + 0.5 * (2.0 - e - c)
    if not np.all(np.isfinite(weights)):
        return NAN
    if n == 1:
        return 0.0
    kernel = scipy.linalg.expm(-t * _graph_laplacian(weights))
    if normalize:
        d = np.sqrt(np.diag(kernel)) + _KLE_DIAG_EPS
        kernel = kernel / np.outer(d, d) / n
    eigenvalues = np.linalg.eigvalsh(kernel + jitter * np.eye(n))
    kept = eigenvalues[np.abs(eigenvalues) > _KLE_EIG_CUTOFF]
    entropy = -float(np.sum(kept * np.log(kept)))
    return float(entropy / np.log(n)) if scale else entropy
