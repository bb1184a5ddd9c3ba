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


def _prompts(lm, dataset, n):
    from uqflow.data import load_dataset
    from uqflow.prompts import PromptOptions, build_prompts, draw_few_shot

    ds = load_dataset(dataset)
    shots = draw_few_shot(ds.few_shot_pool, 5, 10)
    examples = [ex for ex in ds.examples if ex.answerable][:n]
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct,
                               opts=PromptOptions(), max_prompt_tokens=4000)
    return [p.token_ids for p in prompts]


@pytest.mark.slow
@pytest.mark.parametrize("fixture,dataset,n", [
    ("smollm", "trivia_mini", 64), ("gemma", "trivia_mini", 64),
    ("gemma", "squad_mini", 16),  # passages longer than Gemma's sliding window: no shared prefix
])
def test_generation_aligned_and_batch_invariant(fixture, dataset, n, request):
    """Same answers and G-NLL within 1e-4 whether the batch size is 1 or 64."""
    from uqflow.generation.hf import HFEngine
    from uqflow.scoring.uncertainty import g_nll

    lm = request.getfixturevalue(fixture)
    ids = _prompts(lm, dataset, n)
    batched = HFEngine(lm, batch_size=64, max_new_tokens=12).generate(ids)
    single = HFEngine(lm, batch_size=1, max_new_tokens=12).generate(ids)
    _check_aligned(lm, batched)
    assert [g.text for g in batched] == [g.text for g in single]
    for a, b in zip(batched, single):
        assert a.token_ids == b.token_ids
        assert g_nll(a.token_logprobs) == pytest.approx(g_nll(b.token_logprobs), abs=1e-4)
    assert sum(bool(g.text) for g in batched) > n // 2  # the model answers


@pytest.mark.slow
def test_shared_prefix_cache_changes_nothing(smollm):
    from uqflow.generation.hf import HFEngine

    ids = _prompts(smollm, "trivia_mini", 24)
    shared = HFEngine(smollm, batch_size=12, max_new_tokens=16)
    assert len(shared._shared_prefix(ids)) > 100  # instruction and five examples
    plain = HFEngine(smollm, batch_size=12, max_new_tokens=16, share_prefix=False).generate(ids)
    for a, b in zip(shared.generate(ids), plain):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.token_entropies == pytest.approx(b.token_entropies, abs=1e-3)


@pytest.mark.slow
def test_sliding_window_model_shares_no_prefix_past_its_window(gemma):
    from uqflow.generation.hf import HFEngine

    engine = HFEngine(gemma, max_new_tokens=16)
    assert engine._sliding_window() == 512
    assert engine._shared_prefix(_prompts(gemma, "squad_mini", 4)) == []  # passages exceed the window
    assert len(engine._shared_prefix(_prompts(gemma, "trivia_mini", 4))) > 50


@pytest.mark.slow
def test_engine_agrees_with_transformers_generate(smollm):
    """An independent oracle: model.generate's greedy tokens and compute_transition_scores."""
    import torch

    from uqflow.generation.hf import HFEngine

    ids = _prompts(smollm, "trivia_mini", 6)
    gens = HFEngine(smollm, batch_size=6, max_new_tokens=10).generate(ids)
    model = smollm.model
    for prompt, g in zip(ids, gens):
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=len(g.token_ids) or 1,
                                 return_dict_in_generate=True, output_logits=True, pad_token_id=smollm.tokenizer.pad_token_id)
        new = out.sequences[0, len(prompt):].tolist()
        assert new[: len(g.token_ids)] == g.token_ids
        if g.token_ids:
            lp = torch.stack([torch.log_softmax(step[0].float(), -1)[t] for step, t in zip(out.logits, g.token_ids)])
            assert lp.tolist() == pytest.approx(g.token_logprobs, abs=1e-4)
