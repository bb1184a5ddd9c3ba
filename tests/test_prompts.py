"""Prompt text per the reference protocol, chat rendering, and fitting to a context."""

from uqflow.data.examples import Example
from uqflow.prompts import (SHORT_PHRASE_INSTRUCTION, PromptOptions, build_messages, build_prompt_text,
                            build_prompts, draw_few_shot)

SHOTS = [Example("s1", "Capital of Spain?", ("Madrid",)), Example("s2", "Two plus two?", ("4", "four"))]
Q = Example("q", "Capital of Peru?", ("Lima",))
CQ = Example("c", "Who?", ("Ann",), context="Ann came.")


def test_brief_prompt_exact_text():
    text = build_prompt_text(Q, SHOTS, PromptOptions())
    assert text == (
        "Answer the following question as briefly as possible.\n"
        "Question: Capital of Spain?\nAnswer: Madrid\n\n"
        "Question: Two plus two?\nAnswer: 4\n\n"
        "Question: Capital of Peru?\nAnswer:"
    )


def test_study_protocol_options():
    opts = PromptOptions(instruction=SHORT_PHRASE_INSTRUCTION, instruction_per_block=True)
    text = build_prompt_text(CQ, [Example("s", "Who left?", ("Bo",), context="Bo left.")], opts)
    assert text == (SHORT_PHRASE_INSTRUCTION + "Context: Bo left.\nQuestion: Who left?\nAnswer: Bo\n\n"
                    + SHORT_PHRASE_INSTRUCTION + "Context: Ann came.\nQuestion: Who?\nAnswer:")
    no_ctx = build_prompt_text(CQ, [], PromptOptions(use_context=False))
    assert "Context:" not in no_ctx
    assert opts.template_hash() != PromptOptions().template_hash()


def test_chat_messages_alternate():
    msgs = build_messages(Q, SHOTS, PromptOptions())
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("Answer the following") and msgs[1]["content"] == "Madrid"
    assert msgs[-1]["content"] == "Question: Capital of Peru?"


def test_few_shot_draw_is_seeded_and_answerable():
    pool = [Example(f"p{i}", f"q{i}?", (f"a{i}",)) for i in range(30)] + [Example("u", "u?", (), answerable=False)]
    a, b = draw_few_shot(pool, 5, seed=10), draw_few_shot(pool, 5, seed=10)
    assert a == b and len(a) == 5 and all(ex.answerable for ex in a)
    assert draw_few_shot(pool, 5, seed=11) != a


class CharTokenizer:
    """One token per character: enough to test fitting without a model."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_prompt_that_does_not_fit_drops_shots_then_skips():
    tok = CharTokenizer()
    full = len(build_prompt_text(Q, SHOTS, PromptOptions()))
    one = len(build_prompt_text(Q, SHOTS[:1], PromptOptions()))
    prompts, skipped = build_prompts([Q], SHOTS, tok, instruct=False, opts=PromptOptions(), max_prompt_tokens=full - 1)
    assert prompts[0].num_shots == 1 and len(prompts[0].token_ids) == one and not skipped
    prompts, skipped = build_prompts([Q], SHOTS, tok, instruct=False, opts=PromptOptions(), max_prompt_tokens=10)
    assert not prompts and skipped[0][0] is Q and "exceeds" in skipped[0][1]
