"""A registry model asked as a judge: its greedy replies to judge prompts, its choice among a few
words by likelihood (the LLM entailment judge), and the token ids of the prompts and answer words
they score (p(True) and the word choice). The judges of :mod:`uqflow.scoring.judges` and the
entailment backends of :mod:`uqflow.scoring.semantic` take these as their ``generate``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from uqflow.generation import IN_PROCESS, make_engine, reusable_in_process
from uqflow.models import LoadedModel, get_model, load_model
from uqflow.prompts import PromptOptions, render_text
from uqflow.scoring.cost import Cost
from uqflow.scoring.semantic import LABELS as ENTAILMENT_LABELS


def _at_first_use(model: str, registry: str | None, device: str,
                  lm: LoadedModel | None) -> Callable[[], LoadedModel]:
    """The registry model ``model``, loaded when first asked for (a judge whose replies are all
    cached loads nothing), unless ``lm`` is that model already (a run judged by the model it
    evaluates)."""
    loaded = lm if lm is not None and lm.spec.name == model and reusable_in_process(lm) else None

    def get() -> LoadedModel:
        nonlocal loaded
        if loaded is None:
            loaded = load_model(get_model(model, registry), device)
        return loaded

    return get


def llm_judge_generate(model: str, registry: str | None = None, device: str = "auto",
                       lm: LoadedModel | None = None) -> Callable[[list[str]], list[str]]:
    """Greedy replies of the registry model ``model`` to judge prompts (through its chat template
    when it is an instruct model), at most 8 tokens up to a newline. The model is loaded at the first
    call, unless ``lm`` is that model already (a run judged by the model it evaluates)."""
    model_at_first_use = _at_first_use(model, registry, device, lm)

    def generate(prompts: list[str]) -> list[str]:
        loaded = model_at_first_use()
        engine = make_engine(IN_PROCESS, loaded, max_new_tokens=8, stop_sequences=("\n",))
        ids = []
        for text in prompts:
            rendered, special = render_text(text, loaded.tokenizer, loaded.spec.instruct, PromptOptions())
            ids.append(list(loaded.tokenizer(rendered, add_special_tokens=special)["input_ids"]))
        return [g.text for g in engine.generate(ids)]

    return generate


#: the words an LLM entailment judge chooses among
ENTAILMENT_WORDS = tuple(ENTAILMENT_LABELS)


def llm_choose(model: str, options: Sequence[str], registry: str | None = None, device: str = "auto",
               lm: LoadedModel | None = None, cost: Cost | None = None) -> Callable[[list[str]], list[str]]:
    """Replies of the registry model ``model`` to prompts that ask for one of a few words
    (``options``): for each prompt, the option whose first token the model finds most likely next
    (through its chat template when it is an instruct model), from one forward pass and no
    decoding. Asked to reply in a word, a small model often echoes the prompt instead (the bundled
    SmolLM2 does, for the entailment prompt); ranking the allowed words by likelihood always
    answers, and costs one pass per prompt. Options whose first tokens coincide are told apart by
    the log-probability of their whole text (one pass per option). ``cost`` adds up the passes."""
    model_at_first_use = _at_first_use(model, registry, device, lm)

    def choose(prompts: list[str]) -> list[str]:
        loaded = model_at_first_use()
        engine = make_engine(IN_PROCESS, loaded)
        ids, conts = answer_inputs(loaded.tokenizer, loaded.spec.instruct, prompts, options)
        firsts = [tuple(c[0] for c in per) for per in conts]
        scores: list[list[float]] = [[] for _ in prompts]
        passes = 0
        for group in dict.fromkeys(firsts):  # prompts whose options begin with the same tokens, batched
            rows = [i for i, f in enumerate(firsts) if f == group]
            if len(set(group)) == len(options):
                for i, lp in zip(rows, engine.next_token_logprobs([ids[i] for i in rows], group)):
                    scores[i] = lp
                passes += len(rows)
            else:
                per = [engine.continuation_logprobs([ids[i] for i in rows], [conts[i][k] for i in rows])
                       for k in range(len(options))]
                for j, i in enumerate(rows):
                    scores[i] = [per[k][j] for k in range(len(options))]
                passes += len(rows) * len(options)
        if cost is not None:
            cost.passes += passes
        return [options[max(range(len(options)), key=lambda k: s[k])] for s in scores]

    return choose


def p_true_inputs(tokenizer, instruct: bool, questions: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each p(True) prompt (one chat turn for an instruct model) and of the answer
    "A" that follows it (see :func:`answer_inputs`)."""
    prompts, conts = answer_inputs(tokenizer, instruct, questions, ["A"])
    return prompts, [c[0] for c in conts]


def answer_inputs(tokenizer, instruct: bool, questions: Sequence[str],
                  answers: Sequence[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Token ids of each prompt (one chat turn for an instruct model) and of each answer word
    after it, preceded by a space unless it follows a chat template's assistant header. An
    answer's tokens are those the prompt and answer tokenize to beyond the prompt's own, so that a
    tokenizer merging across the boundary is caught rather than scored on a token it would never
    produce."""
    prompts, conts = [], []
    for q in questions:
        rendered, special = render_text(q, tokenizer, instruct, PromptOptions())
        base = list(tokenizer(rendered, add_special_tokens=special)["input_ids"])
        per = []
        for word in answers:
            answer = word if rendered != q else f" {word}"  # after a chat template's assistant header: no space
            full = list(tokenizer(rendered + answer, add_special_tokens=special)["input_ids"])
            if full[:len(base)] != base or len(full) == len(base):
                full = base + list(tokenizer(answer, add_special_tokens=False)["input_ids"])
            per.append(full[len(base):])
        prompts.append(base)
        conts.append(per)
    return prompts, conts
