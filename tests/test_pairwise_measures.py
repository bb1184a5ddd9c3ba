"""Sample-consistency measures (uqflow.scoring.pairwise) on hand-computed cases.

Every expected value below is worked out by hand in the comment beside it, or from an independent
closed form (eigen-decompositions of 2 x 2 and block matrices), never by calling the code under test.
"""

import math

import numpy as np
import pytest

from uqflow.scoring.pairwise import (
    cocoa_msp,
    cocoa_ppl,
    degmat,
    degmat_jaccard,
    eccentricity,
    eccentricity_jaccard,
    eigval_jaccard,
    eigval_laplacian,
    greedy_dissimilarity,
    jaccard_matrix,
    kernel_language_entropy,
    lexical_similarity,
    sar,
    sentence_sar,
)

LOG2 = math.log(2)


def _pair(a):
    """The symmetric 2 x 2 affinity [[1, a], [a, 1]]."""
    return [[1.0, a], [a, 1.0]]


def _object_rows(m):
    """A matrix as parquet hands it back: an object array of float arrays."""
    rows = np.empty(len(m), dtype=object)
    for i, r in enumerate(m):
        rows[i] = np.asarray(r, dtype=np.float64)
    return rows


# ---------------------------------------------------------------------------------------------- SAR


def test_sentence_sar_by_hand():
    # p1 = 0.5 (one token), p2 = 0.5 * 0.5 = 0.25; S is not symmetric: row i weighs p_j by S[i][j]
    lps = [[math.log(0.5)], [math.log(0.5), math.log(0.5)]]
    s = [[1.0, 0.8], [0.6, 1.0]]
    # t = 0.001: row 1: 0.5 + 0.8 * 0.25 / 0.001 = 200.5; row 2: 0.25 + 0.6 * 0.5 / 0.001 = 300.25
    assert sentence_sar(lps, s) == pytest.approx((-math.log(200.5) - math.log(300.25)) / 2, rel=1e-12)
    # t = 1: row 1: 0.5 + 0.8 * 0.25 = 0.7; row 2: 0.25 + 0.6 * 0.5 = 0.55
    assert sentence_sar(lps, s, t=1.0) == pytest.approx((-math.log(0.7) - math.log(0.55)) / 2, rel=1e-12)


def test_sentence_sar_ignores_the_diagonal_and_empty_sample_has_probability_one():
    # the diagonal of S never enters; an empty sample has log p = 0, p = 1
    lps = [[], [math.log(0.5)]]
    # row 1: 1 + 0.5 * 0.5 = 1.25; row 2: 0.5 + 0.5 * 1 = 1.0 (t = 1)
    expected = (-math.log(1.25) - math.log(1.0)) / 2
    assert sentence_sar(lps, [[1.0, 0.5], [0.5, 1.0]], t=1.0) == pytest.approx(expected)
    assert sentence_sar(lps, [[9.0, 0.5], [0.5, -3.0]], t=1.0) == pytest.approx(expected)


def test_sentence_sar_single_sample_is_its_nll():
    # N = 1: no other sample, SentenceSAR = -log p1 = 0.7 + 0.2
    assert sentence_sar([[-0.7, -0.2]], [[1.0]]) == pytest.approx(0.9)


def test_sentence_sar_stays_finite_where_probabilities_underflow():
    # exp(-800) underflows to 0 in float64; in log space:
    # row 1: log(e^-800 + 500 e^-900) = -800 + log(1 + 500 e^-100) ~= -800
    # row 2: log(e^-900 + 500 e^-800) ~= -800 + log 500
    lps = [[-400.0, -400.0], [-900.0]]
    value = sentence_sar(lps, _pair(0.5))
    assert value == pytest.approx(800 - math.log(500) / 2, rel=1e-12)


def test_sar_by_hand():
    # sample 1: NLLs (log 2, log 4), relevances (1, 3) -> weights (1/4, 3/4)
    #   TokenSAR = log 2 / 4 + 3 log 4 / 4 = 1.75 log 2, p~1 = 2^-1.75
    # sample 2: one token, p = 0.8 -> TokenSAR = -log 0.8, p~2 = 0.8
    lps = [[math.log(0.5), math.log(0.25)], [math.log(0.8)]]
    rel = [[1.0, 3.0], [0.5]]
    p1, p2 = 2 ** -1.75, 0.8
    s = _pair(0.5)
    assert sar(lps, rel, s, t=1.0) == pytest.approx(
        (-math.log(p1 + 0.5 * p2) - math.log(p2 + 0.5 * p1)) / 2, rel=1e-12)
    assert sar(lps, rel, s) == pytest.approx(
        (-math.log(p1 + 500 * p2) - math.log(p2 + 500 * p1)) / 2, rel=1e-12)


def test_sar_relevance_only_reweights_tokens():
    # relevance (1, 3) and (2, 6) give the same normalised weights; relevance (3, 1) does not
    lps = [[math.log(0.5), math.log(0.25)]]
    s = [[1.0]]
    assert sar(lps, [[2.0, 6.0]], s) == pytest.approx(1.75 * LOG2)
    assert sar(lps, [[1.0, 3.0]], s) == pytest.approx(1.75 * LOG2)
    # weights (3/4, 1/4): 3 log 2 / 4 + log 4 / 4 = 1.25 log 2
    assert sar(lps, [[3.0, 1.0]], s) == pytest.approx(1.25 * LOG2)


def test_sar_all_zero_relevance_weighs_tokens_equally():
    # by design (LM-Polygraph divides 0 by 0 there): equal weights, TokenSAR = mean NLL = 1.5 log 2
    lps = [[math.log(0.5), math.log(0.25)]]
    assert sar(lps, [[0.0, 0.0]], [[1.0]]) == pytest.approx(1.5 * LOG2)
    assert sar(lps, [[0.0, 0.0]], [[1.0]]) == pytest.approx(sar(lps, [[0.7, 0.7]], [[1.0]]))


def test_sar_empty_sample_and_zero_weight_infinite_token():
    # an empty sample: TokenSAR 0 (empty sum), p~ = 1; with sample 2 (p~ = 0.5) and t = 1:
    # row 1: 1 + 0.5 * 0.5 = 1.25; row 2: 0.5 + 0.5 * 1 = 1
    lps = [[], [math.log(0.5)]]
    assert sar(lps, [[], [1.0]], _pair(0.5), t=1.0) == pytest.approx(-math.log(1.25) / 2)
    # a token with log p = -inf and relevance 0 contributes nothing: TokenSAR = log 2
    assert sar([[math.log(0.5), -math.inf]], [[1.0, 0.0]], [[1.0]]) == pytest.approx(LOG2)


def test_sar_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        sar([[-1.0, -2.0]], [[1.0]], [[1.0]])
    with pytest.raises(ValueError):
        sentence_sar([[-1.0], [-2.0]], [[1.0]])


def test_sar_negative_similarity_sum_is_nan():
    # 0.5 + (-1) * 0.5 / 0.001 < 0 has no logarithm (LM-Polygraph's log gives NaN too)
    assert math.isnan(sentence_sar([[math.log(0.5)], [math.log(0.5)]], _pair(-1.0)))


# ------------------------------------------------------------------------------------- graph measures


@pytest.mark.parametrize("a", [0.0, 0.3, 0.5, 1.0])
def test_degmat_two_samples(a):
    # 1 - sum(W) / N^2 = 1 - (2 + 2a) / 4 = (1 - a) / 2
    assert degmat(_pair(a)) == pytest.approx((1 - a) / 2)


def test_degmat_symmetrises_and_extremes():
    # (A + A^T) / 2 has off-diagonal 0.4 -> (1 - 0.4) / 2 = 0.3
    assert degmat([[1.0, 0.2], [0.6, 1.0]]) == pytest.approx(0.3)
    assert degmat(np.ones((4, 4))) == pytest.approx(0.0)
    assert degmat(np.eye(3)) == pytest.approx(1 - 3 / 9)


@pytest.mark.parametrize("a", [0.1, 0.5, 0.9, 1.0])
def test_eigval_two_samples(a):
    # L = I - W / (1 + a) has eigenvalues 0 (on (1, 1)) and 2a / (1 + a) (on (1, -1)):
    # U = 1 + 1 - 2a / (1 + a) = 2 / (1 + a)
    assert eigval_laplacian(_pair(a)) == pytest.approx(2 / (1 + a))


def test_eigval_and_eccentricity_symmetrise_the_affinity():
    # (A + A^T) / 2 = [[1, 0.4], [0.4, 1]]: EigV = 2 / 1.4; Ecc keeps (1, -1) (0.8 / 1.4 < 0.9) -> 1,
    # but with the upper entry alone (a = 0.85) it would drop it
    assert eigval_laplacian([[1.0, 0.2], [0.6, 1.0]]) == pytest.approx(2 / 1.4)
    assert eccentricity([[1.0, 0.85], [0.0, 1.0]]) == pytest.approx(1.0)


def test_eigval_counts_semantic_sets():
    assert eigval_laplacian(np.eye(4)) == pytest.approx(4.0)  # four sets
    assert eigval_laplacian(np.ones((3, 3))) == pytest.approx(1.0)  # one set
    # two identical samples and one unrelated: D^-1/2 W D^-1/2 = blocks [[.5, .5], [.5, .5]] and [1]
    # with eigenvalues 1, 0, 1 -> L's are 0, 1, 0 -> U = 1 + 0 + 1 = 2
    assert eigval_laplacian([[1, 1, 0], [1, 1, 0], [0, 0, 1]]) == pytest.approx(2.0)


@pytest.mark.parametrize("a, expected", [(0.0, 1.0), (0.5, 1.0), (0.8, 1.0), (0.85, 0.0), (1.0, 0.0)])
def test_eccentricity_two_samples(a, expected):
    # eigenvectors (1, 1)/sqrt2 (eigenvalue 0, centred norm 0) and (1, -1)/sqrt2 (eigenvalue
    # 2a / (1 + a), centred norm 1), the latter kept while 2a / (1 + a) < 0.9, i.e. a < 9/11 ~ 0.818
    assert eccentricity(_pair(a)) == pytest.approx(expected, abs=1e-12)


def test_eccentricity_threshold_and_closed_forms():
    # a = 0.5: second eigenvalue 2/3 is dropped under thres = 0.5
    assert eccentricity(_pair(0.5), thres=0.5) == pytest.approx(0.0, abs=1e-12)
    # W = I: L = 0, every eigenvector kept; ||P V||_F^2 = trace(P) = N - 1 for any orthonormal V
    assert eccentricity(np.eye(3)) == pytest.approx(math.sqrt(2))
    assert eccentricity(np.eye(5)) == pytest.approx(2.0)
    # blocks {1, 2} and {3}: null space of L spanned by (1, 1, 0)/sqrt2 and (0, 0, 1); their centred
    # squared norms are 1 - 2/3 and 1 - 1/3, eigenvalue-1 vector dropped -> U = sqrt(1) = 1
    assert eccentricity([[1, 1, 0], [1, 1, 0], [0, 0, 1]]) == pytest.approx(1.0)
    assert eccentricity(np.ones((4, 4))) == pytest.approx(0.0, abs=1e-12)


def test_graph_measures_undefined_cases():
    for f in (degmat, eigval_laplacian, eccentricity, kernel_language_entropy):
        assert math.isnan(f([]))
    # a sample with degree 0 (LM-Polygraph's inverse of D fails) and a NaN entry
    for m in ([[0.0, 0.0], [0.0, 1.0]], [[1.0, math.nan], [0.5, 1.0]]):
        assert math.isnan(eigval_laplacian(m)) and math.isnan(eccentricity(m))
    with pytest.raises(ValueError):
        degmat([[1.0, 0.5, 0.2], [0.5, 1.0, 0.1]])


def test_single_sample_graph_measures():
    # N = 1: W = [[w]]; DegMat = 1 - w, L = 0 -> EigV = 1, Ecc = 0
    assert degmat([[0.75]]) == pytest.approx(0.25)
    assert eigval_laplacian([[0.75]]) == pytest.approx(1.0)
    assert eccentricity([[0.75]]) == pytest.approx(0.0)


# ---------------------------------------------------------------------------------------------- Jaccard


def test_jaccard_matrix_by_hand():
    m = jaccard_matrix(["A b", "b  c", ""])
    # {a, b} vs {b, c}: 1 / 3; anything with the empty set: union {..} -> 0 / 2 = 0
    expected = [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]]
    np.testing.assert_allclose(m, expected)
    # two empty samples: union empty -> 0 off the diagonal, 1 on it
    np.testing.assert_allclose(jaccard_matrix(["", ""]), np.eye(2))
    assert jaccard_matrix(["The cat", "cat THE the"])[0, 1] == 1.0
    assert jaccard_matrix([]).shape == (0, 0)


def test_jaccard_compositions():
    same = ["Paris", "paris", "PARIS"]
    assert degmat_jaccard(same) == pytest.approx(0.0)
    assert eigval_jaccard(same) == pytest.approx(1.0)
    assert eccentricity_jaccard(same) == pytest.approx(0.0, abs=1e-12)
    disjoint = ["Paris", "Lyon"]
    assert degmat_jaccard(disjoint) == pytest.approx(0.5)
    assert eigval_jaccard(disjoint) == pytest.approx(2.0)
    assert eccentricity_jaccard(disjoint) == pytest.approx(1.0)
    # {a, b} vs {b, c}: Jaccard 1/3 -> DegMat (1 - 1/3)/2 = 1/3, EigV 2/(4/3) = 1.5
    assert degmat_jaccard(["a b", "b c"]) == pytest.approx(1 / 3)
    assert eigval_jaccard(["a b", "b c"]) == pytest.approx(1.5)
    for f in (degmat_jaccard, eigval_jaccard, eccentricity_jaccard):
        assert math.isnan(f([]))


# ------------------------------------------------------------------------------------ lexical similarity


def test_lexical_similarity_by_hand():
    assert lexical_similarity(["the cat sat", "the cat sat"]) == pytest.approx(-1.0)
    # LCS(the cat sat, the cat ran) = 2 of 3 tokens each way: P = R = F = 2/3
    assert lexical_similarity(["the cat sat", "the cat ran"]) == pytest.approx(-2 / 3)
    # unordered pairs: (1, 2) = 1, (1, 3) = 0, (2, 3) = 0 -> mean 1/3
    assert lexical_similarity(["a b", "a b", "c d"]) == pytest.approx(-1 / 3)
    no_overlap = lexical_similarity(["alpha", "beta"])
    assert no_overlap == 0.0 and math.copysign(1.0, no_overlap) == 1.0


def test_lexical_similarity_uses_stemming_and_lower_case():
    # Porter stemming: "running" and "runs" both become "run"; rouge-score lower-cases
    assert lexical_similarity(["running", "runs"]) == pytest.approx(-1.0)
    assert lexical_similarity(["Paris", "paris."]) == pytest.approx(-1.0)


def test_lexical_similarity_needs_two_samples():
    assert math.isnan(lexical_similarity([]))
    assert math.isnan(lexical_similarity(["only one"]))


# ------------------------------------------------------------------------------------------------ CoCoA


def test_cocoa_by_hand():
    assert greedy_dissimilarity([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    lp = [math.log(0.5), math.log(0.5)]
    # NLL = 2 log 2, mean NLL = log 2, dissimilarity mean(0.5, 0.3) = 0.4
    assert cocoa_msp(lp, [0.5, 0.7]) == pytest.approx(0.8 * LOG2)
    assert cocoa_ppl(lp, [0.5, 0.7]) == pytest.approx(0.4 * LOG2)
    # a greedy answer every sample agrees with fully: 0 whatever its NLL
    assert cocoa_msp(lp, [1.0, 1.0]) == 0.0 and cocoa_ppl(lp, [1.0, 1.0]) == 0.0


def test_cocoa_empty_cases():
    assert cocoa_msp([], [0.5]) == 0.0 and math.copysign(1.0, cocoa_msp([], [0.5])) == 1.0
    assert math.isnan(cocoa_ppl([], [0.5]))
    for f in (cocoa_msp, cocoa_ppl):
        assert math.isnan(f([-1.0], []))
    assert math.isnan(greedy_dissimilarity([]))


# -------------------------------------------------------------------------------------------------- KLE


def _kle_two(w, t=0.3):
    """KLE of two samples with graph weight w between them, in closed form. L = [[w, -w], [-w, w]]
    has eigenvalues 0 and 2w, so expm(-tL) = [[1+q, 1-q], [1-q, 1+q]] / 2 with q = exp(-2tw); with a
    unit diagonal and divided by N = 2 it is [[1, r], [r, 1]] / 2, r = (1-q)/(1+q), whose eigenvalues
    are (1 +- r) / 2; the entropy is scaled by log 2."""
    q = math.exp(-2 * t * w)
    r = (1 - q) / (1 + q)
    eig = [(1 + r) / 2, (1 - r) / 2]
    return -sum(e * math.log(e) for e in eig if e > 1e-8) / LOG2


def test_kle_two_samples_entailment_only():
    # no contradiction matrix: the graph is A + A^T, here w = 0.6 + 0.2 = 0.8
    a = [[1.0, 0.6], [0.2, 1.0]]
    assert kernel_language_entropy(a) == pytest.approx(_kle_two(0.8), rel=1e-9)
    assert kernel_language_entropy(a, t=1.0) == pytest.approx(_kle_two(0.8, t=1.0), rel=1e-9)
    # no entailment either way: w = 0, K' = I / 2, entropy log 2 -> scaled 1
    assert kernel_language_entropy(np.eye(2)) == pytest.approx(1.0)


def test_kle_two_samples_with_contradiction():
    # E12 = 0.6 + 0.2 = 0.8, C12 = 0.1 + 0.3 = 0.4, neutral 2 - 0.8 - 0.4 = 0.8 -> w = 0.8 + 0.4 = 1.2
    a = [[1.0, 0.6], [0.2, 1.0]]
    c = [[0.0, 0.1], [0.3, 0.0]]
    assert kernel_language_entropy(a, contradiction=c) == pytest.approx(_kle_two(1.2), rel=1e-9)
    # contradiction = 1 - A leaves no neutral mass: the entailment-only graph
    c_rest = (1 - np.asarray(a)).tolist()
    assert kernel_language_entropy(a, contradiction=c_rest) == pytest.approx(kernel_language_entropy(a))


def test_kle_three_samples_closed_forms():
    # W = 2 J (all entail all): L = 2 (3I - J), eigenvalues 0, 6, 6; K = J/3 + q (I - J/3), q = e^-1.8;
    # the normalised kernel's eigenvalues are 1/(1+2q) and q/(1+2q) twice
    q = math.exp(-6 * 0.3)
    eig = [1 / (1 + 2 * q), q / (1 + 2 * q), q / (1 + 2 * q)]
    expected = -sum(e * math.log(e) for e in eig) / math.log(3)
    assert kernel_language_entropy(np.ones((3, 3))) == pytest.approx(expected, rel=1e-9)
    # no edges: K = I, K' = I / 3, entropy log 3 -> scaled 1; unscaled it stays log 3
    assert kernel_language_entropy(np.eye(3)) == pytest.approx(1.0)
    assert kernel_language_entropy(np.eye(3), scale=False) == pytest.approx(math.log(3))


def test_kle_edge_cases():
    assert kernel_language_entropy([[1.0]]) == 0.0  # by design: LM-Polygraph gives -inf (0 / log 1)
    assert math.isnan(kernel_language_entropy([[1.0, math.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        kernel_language_entropy(np.eye(2), contradiction=np.eye(3))


# ---------------------------------------------------------------------------------- properties


def _random_row(rng, n):
    lps = [np.log(rng.uniform(0.05, 1.0, size=int(rng.integers(1, 5)))) for _ in range(n)]
    rel = [rng.uniform(0.0, 1.0, size=lp.size) for lp in lps]
    sim = rng.uniform(0.0, 1.0, size=(n, n))
    ent = rng.uniform(0.0, 1.0, size=(n, n))
    greedy = rng.uniform(0.0, 1.0, size=n)
    words = "the cat sat on a mat in paris france".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 5)))) for _ in range(n)]
    return lps, rel, sim, ent, greedy, texts


def _all_measures(lps, rel, sim, ent, greedy, texts):
    return [
        sar(lps, rel, sim), sentence_sar(lps, sim), degmat(ent), eigval_laplacian(ent), eccentricity(ent),
        degmat_jaccard(texts), eigval_jaccard(texts), eccentricity_jaccard(texts),
        lexical_similarity(texts), greedy_dissimilarity(greedy), cocoa_msp([-0.3, -1.2], greedy),
        cocoa_ppl([-0.3, -1.2], greedy), kernel_language_entropy(ent),
    ]


def test_every_measure_is_invariant_under_permuting_samples():
    rng = np.random.default_rng(7)
    for _ in range(5):
        lps, rel, sim, ent, greedy, texts = _random_row(rng, 5)
        base = _all_measures(lps, rel, sim, ent, greedy, texts)
        perm = rng.permutation(5)
        permuted = _all_measures([lps[k] for k in perm], [rel[k] for k in perm], sim[np.ix_(perm, perm)],
                                 ent[np.ix_(perm, perm)], greedy[perm], [texts[k] for k in perm])
        assert all(isinstance(v, float) for v in base)
        np.testing.assert_allclose(permuted, base, rtol=1e-9, atol=1e-12)


def test_parquet_arrays_of_arrays_are_accepted():
    rng = np.random.default_rng(3)
    lps, rel, sim, ent, greedy, texts = _random_row(rng, 4)
    as_lists = _all_measures([lp.tolist() for lp in lps], [r.tolist() for r in rel], sim.tolist(),
                             ent.tolist(), greedy.tolist(), texts)
    obj_lps, obj_rel = _object_rows(lps), _object_rows(rel)
    as_parquet = _all_measures(obj_lps, obj_rel, _object_rows(sim), _object_rows(ent),
                               np.asarray(greedy, dtype=object), np.asarray(texts, dtype=object))
    np.testing.assert_allclose(as_parquet, as_lists, rtol=1e-12)


def test_no_samples_gives_nan_everywhere():
    values = [sar([], [], []), sentence_sar([], []), degmat([]), eigval_laplacian([]), eccentricity([]),
              degmat_jaccard([]), eigval_jaccard([]), eccentricity_jaccard([]), lexical_similarity([]),
              greedy_dissimilarity([]), cocoa_msp([-1.0], []), cocoa_ppl([-1.0], []),
              kernel_language_entropy([])]
    assert all(isinstance(v, float) and math.isnan(v) for v in values)


def test_consistent_samples_score_lower_than_inconsistent_ones():
    lps = [[math.log(0.6)], [math.log(0.5)], [math.log(0.4)]]
    rel = [[1.0], [1.0], [1.0]]
    agree = np.full((3, 3), 0.95)
    disagree = np.full((3, 3), 0.05)
    np.fill_diagonal(agree, 1.0)
    np.fill_diagonal(disagree, 1.0)
    for f in (degmat, eigval_laplacian, kernel_language_entropy):
        assert f(agree) < f(disagree), f.__name__
    # eccentricity: 0 when one eigenvector is kept, sqrt(N - 1) when all are
    assert eccentricity(agree) < eccentricity(disagree)
    assert sar(lps, rel, agree) < sar(lps, rel, disagree)
    assert sentence_sar(lps, agree) < sentence_sar(lps, disagree)
    same, mixed = ["Paris is the capital"] * 3, ["Paris is the capital", "Lyon maybe", "I do not know"]
    for f in (degmat_jaccard, eigval_jaccard, eccentricity_jaccard, lexical_similarity):
        assert f(same) < f(mixed), f.__name__
    lp = [math.log(0.7)]
    assert cocoa_msp(lp, [0.9, 0.95, 0.9]) < cocoa_msp(lp, [0.2, 0.1, 0.3])
    assert cocoa_ppl(lp, [0.9, 0.95, 0.9]) < cocoa_ppl(lp, [0.2, 0.1, 0.3])
    assert greedy_dissimilarity([0.9, 0.95]) < greedy_dissimilarity([0.2, 0.1])
