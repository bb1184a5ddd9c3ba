"""Answer alignment at stop sequences, and greedy generation on the bundled models."""

import pytest

from uqflow.generation.base import align_answer
from uqflow.prompts import STOP_SEQUENCES


def decode_pieces(pieces):
    return lambda ids: "".join(pieces[i] for i in ids)


@pytest.mark.parametrize("pieces,n,reason,dropped", [
    ([" Paris", "\n", "Question"], 1, "stop_sequence", ""),
    ([" Paris", ".\n", "Q"], 1, "stop_sequence", "."),  # straddling token: not an answer token
    ([" Paris", " Question", ":"], 1, "stop_sequence", " "),  # multi-token stop sequence
    ([" Leo", " Tol", "stoy", "<eos>", "x"], 3, "eos", ""),
    ([" one", " two", " three"], 3, "length", ""),
    (["\n", "Paris"], 0, "stop_sequence", ""),  # empty answer
])
def test_align_answer(pieces, n, reason, dropped):
    eos = {pieces.index("<eos>")} if "<eos>" in pieces else set()
    got = align_answer(list(range(len(pieces))), decode_pieces(pieces), eos, STOP_SEQUENCES)
    assert got == (n, reason, dropped)


def _check_aligned(lm, gens):
    tok = lm.tokenizer
    for g in gens:
        assert len(g.token_ids) == len(g.token_logprobs) == len(g.token_entropies)
        assert tok.decode(g.token_ids, skip_special_tokens=True).strip() == g.text
        assert not any(s in g.text for s in STOP_SEQUENCES)
        assert all(lp <= 0 for lp in g.token_logprobs)
        assert all(h >= 0 for h in g.token_entropies)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm", "gemma"])
def test_generation_aligned_and_batch_invariant(fixture, request):
    """Same answers and G-NLL within 1e-4 whether prompts are decoded one at a time or in a batch."""
    from uqflow.data import load_dataset
    from uqflow.generation.hf import HFEngine
    from uqflow.prompts import PromptOptions, build_prompts, draw_few_shot
    from uqflow.scoring.uncertainty import g_nll

    lm = request.getfixturevalue(fixture)
    ds = load_dataset("squad_mini" if fixture == "gemma" else "trivia_mini")
    shots = draw_few_shot(ds.few_shot_pool, 5, 10)
    prompts, _ = build_prompts(ds.examples[:8], shots, lm.tokenizer, instruct=lm.spec.instruct,
                               opts=PromptOptions(), max_prompt_tokens=4000)
    ids = [p.token_ids for p in prompts]
    batched = HFEngine(lm, batch_size=8, max_new_tokens=24).generate(ids)
    single = HFEngine(lm, batch_size=1, max_new_tokens=24).generate(ids)
    _check_aligned(lm, batched)
    assert [g.text for g in batched] == [g.text for g in single]
    for a, b in zip(batched, single):
        assert a.token_ids == b.token_ids
        assert g_nll(a.token_logprobs) == pytest.approx(g_nll(b.token_logprobs), abs=1e-4)
    assert any(g.text for g in batched)  # not all empty: the model answers
