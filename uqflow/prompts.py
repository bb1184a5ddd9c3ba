"""Few-shot "answer briefly" prompts, as the reference protocol builds them.

::

    {instruction}
    [Context: {c}\\n]Question: {q}\\nAnswer: {a}\\n\\n      (x num_few_shot)
    [Context: {c}\\n]Question: {q}\\nAnswer:

With ``instruction_per_block`` the instruction precedes every block (the study's grid); otherwise it
appears once. Instruct models get the same content through their chat template, each few-shot
block as a user turn (instruction, context, question) and an assistant turn (the answer), so that
the model sees answers in the length and form it is asked for.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from uqflow.data.examples import Example

BRIEF_INSTRUCTION = "Answer the following question as briefly as possible.\n"
#: the study grid's instruction
SHORT_PHRASE_INSTRUCTION = (
    "Answer the following question in a few words or a short phrase, not a full sentence.\n"
)
STOP_SEQUENCES = ("\n\n\n\n", "\n\n\n", "\n\n", "\n", "Question:", "Context:")


@dataclass(frozen=True)
class PromptOptions:
    """The knobs of the prompt protocol, recorded with each run."""

    instruction: str = BRIEF_INSTRUCTION
    use_context: bool = True  # include the passage for datasets that have one
    instruction_per_block: bool = False
    chat_template: bool = True  # only applies to instruct models

    def template_hash(self) -> str:
        """Hash of everything that shapes the prompt text apart from the examples themselves."""
        key = repr((self.instruction, self.use_context, self.instruction_per_block, self.chat_template,
                    "Context: {c}\n", "Question: {q}\nAnswer:", " {a}\n\n", "chat: user/assistant turns"))
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def draw_few_shot(pool: Sequence[Example], k: int, seed: int) -> list[Example]:
    """``k`` answerable examples from the pool, drawn with a fixed seed (fewer if the pool is small)."""
    answerable = [ex for ex in pool if ex.answerable and ex.references]
    return random.Random(seed).sample(answerable, min(k, len(answerable)))


def _block(ex: Example, opts: PromptOptions, answer: str | None) -> str:
    text = opts.instruction if opts.instruction_per_block else ""
    if opts.use_context and ex.context:
        text += f"Context: {ex.context}\n"
    text += f"Question: {ex.question}\nAnswer:"
    if answer is not None:
        text += f" {answer}\n\n"
    return text


def build_prompt_text(ex: Example, shots: Sequence[Example], opts: PromptOptions) -> str:
    """The raw prompt text for one question (before any chat template)."""
    head = "" if opts.instruction_per_block else opts.instruction
    return head + "".join(_block(s, opts, s.references[0]) for s in shots) + _block(ex, opts, None)


def build_messages(ex: Example, shots: Sequence[Example], opts: PromptOptions) -> list[dict[str, str]]:
    """The same content as :func:`build_prompt_text`, as chat turns."""
    messages: list[dict[str, str]] = []
    for i, block in enumerate([*shots, ex]):
        text = opts.instruction if (opts.instruction_per_block or i == 0) else ""
        if opts.use_context and block.context:
            text += f"Context: {block.context}\n"
        messages.append({"role": "user", "content": text + f"Question: {block.question}"})
        if block is not ex:
            messages.append({"role": "assistant", "content": block.references[0]})
    return messages


def render(ex: Example, shots: Sequence[Example], tokenizer, instruct: bool, opts: PromptOptions) -> tuple[str, bool]:
    """The prompt string for one question. Returns (prompt, add_special_tokens): a prompt rendered
    through a chat template already carries its special tokens."""
    if instruct and opts.chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(build_messages(ex, shots, opts), tokenize=False,
                                                 add_generation_prompt=True)
        return rendered, False
    return build_prompt_text(ex, shots, opts), True


def render_text(text: str, tokenizer, instruct: bool, opts: PromptOptions) -> tuple[str, bool]:
    """A free-standing prompt (e.g. a judge's question) as one user turn for instruct models."""
    if instruct and opts.chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True), False
    return text, True


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt and its token ids; ``num_shots`` may be below the configured number
    when the full prompt would not fit the model's context."""

    example: Example
    text: str
    token_ids: list[int]
    num_shots: int


def build_prompts(
    examples: Sequence[Example], shots: Sequence[Example], tokenizer, *, instruct: bool,
    opts: PromptOptions, max_prompt_tokens: int,
) -> tuple[list[Prompt], list[tuple[Example, str]]]:
    """Render and tokenize every prompt, dropping few-shot examples (last first) until each fits
    ``max_prompt_tokens``. Returns (prompts, skipped) where skipped pairs an example with the reason."""
    prompts: list[Prompt] = []
    skipped: list[tuple[Example, str]] = []
    for ex in examples:
        for k in range(len(shots), -1, -1):
            text, special = render(ex, shots[:k], tokenizer, instruct, opts)
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            if len(ids) <= max_prompt_tokens:
                prompts.append(Prompt(ex, text, list(ids), k))
                break
        else:
            skipped.append((ex, f"prompt of {len(ids)} tokens exceeds the {max_prompt_tokens} available even without few-shot examples"))
    return prompts, skipped


#: the p(True) question (Kadavath et al., 2022, "Language models (mostly) know what they know"), as
#: the semantic-entropy code asks it: the sampled answers shown as brainstorm, then the greedy answer
P_TRUE_PROMPT = ("{context}Question: {question}\nBrainstormed Answers: {brainstorm}\nPossible answer: {answer}\n"
                 "Is the possible answer:\nA) True\nB) False\nThe possible answer is:")


def p_true_prompt(question: str, samples: Sequence[str], answer: str, context: str | None = None) -> str:
    """The zero-shot p(True) prompt of one question; the model's probability of " A" next is p(True)."""
    return P_TRUE_PROMPT.format(context=f"Context: {context}\n" if context else "", question=question,
                                brainstorm="".join(f"{s}\n" for s in samples), answer=answer)
