"""What the bundled models are held to, measured on the rehearsal's models through their real code paths.

Run in a process whose environment points at a rehearsal cache (``rehearsal.build.environment``):
``python -m rehearsal.checks [N]`` prints one JSON line per model. For each of the study grid's
models, as registered (8-bit where the study quantizes), and for each repository unquantized too:

- the engine's records agree with themselves: the stored text is the decoded answer tokens, one
  log-prob and one entropy per token, no stop sequence inside an answer;
- G-NLL against a teacher-forced recomputation (one forward pass over prompt and answer, batch 1);
- batch 1 against batch ``N``: the share of changed answers and the largest G-NLL difference;
- a second pass at the same batch size: identical records (reproducibility);
- the share of answers whose first token starts a word, as the real models' answers do.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from rehearsal.models import STUDY_GRID, study_cell
MAX_NEW_TOKENS = 24


def specs():
    """The grid's registry entries, and an unquantized entry for each 8-bit one's repository."""
    from uqflow.grid import load_grid
    from uqflow.models.registry import MODELS

    out = []
    for name in load_grid(STUDY_GRID).models:
        spec = MODELS.get(name)
        out.append(spec)
        if spec.quantization != "none":
            out.append(dataclasses.replace(spec, name=name.removesuffix("-8bit") + " (unquantized)", quantization="none"))
    return out


def _prompts(lm, n: int):
    from uqflow.data import load_dataset
    from uqflow.prompts import build_prompts, draw_few_shot

    cell = study_cell()
    ids = []
    for dataset in ("trivia_qa", "squad"):
        ds = load_dataset(dataset)
        shots = draw_few_shot(ds.few_shot_pool, cell.num_few_shot, cell.seed)
        prompts, _ = build_prompts(ds.examples[: n // 2], shots, lm.tokenizer, instruct=lm.spec.instruct,
                                   opts=cell.prompt_options, max_prompt_tokens=4000)
        ids += [p.token_ids for p in prompts]
    return ids


def teacher_forced_nll(lm, prompt: list[int], answer: list[int]) -> float:
    import torch

    x = torch.tensor([prompt + answer], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=x).logits[0, len(prompt) - 1: -1].float()
    lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(answer, device=lm.device)[:, None])[:, 0]
    return float(-lp.sum())


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def check(spec, n: int) -> dict:
    from uqflow.generation.hf import HFEngine
    from uqflow.models.loading import load_model, unload
    from uqflow.prompts import STOP_SEQUENCES
    from uqflow.scoring.uncertainty import g_nll

    lm = load_model(spec, "cpu")
    try:
        ids = _prompts(lm, n)
        batched = HFEngine(lm, batch_size=n, max_new_tokens=MAX_NEW_TOKENS).generate(ids)
        again = HFEngine(lm, batch_size=n, max_new_tokens=MAX_NEW_TOKENS).generate(ids)
        single = HFEngine(lm, batch_size=1, max_new_tokens=MAX_NEW_TOKENS).generate(ids)
        tok = lm.tokenizer
        agree = all(
            tok.decode(g.token_ids, skip_special_tokens=True).strip() == g.text
            and len(g.token_ids) == len(g.token_logprobs) == len(g.token_entropies)
            and not any(s in g.text for s in STOP_SEQUENCES)
            and all(lp <= 0 for lp in g.token_logprobs)
            for g in batched)
        teacher = [abs(teacher_forced_nll(lm, p, g.token_ids) - g_nll(g.token_logprobs))
                   for p, g in zip(ids, single) if g.token_ids]
        drift = [abs(g_nll(a.token_logprobs) - g_nll(b.token_logprobs)) for a, b in zip(batched, single)
                 if a.token_ids == b.token_ids]
        reasons = [g.stop_reason for g in batched]
        return {
            "model": spec.name, "repo": spec.source, "quantization": spec.quantization, "prompts": len(ids),
            "records_agree": agree,
            "max_teacher_forced_diff": max(teacher, default=0.0),
            "answers_changed_batch_1_vs_n": sum(a.token_ids != b.token_ids for a, b in zip(batched, single)) / len(ids),
            "max_g_nll_diff_batch_1_vs_n": max(drift, default=0.0),
            "reproducible": [(g.token_ids, g.token_logprobs) for g in batched]
                            == [(g.token_ids, g.token_logprobs) for g in again],
            "stop_reasons": {r: reasons.count(r) for r in sorted(set(reasons))},
            "mean_answer_tokens": sum(len(g.token_ids) for g in batched) / len(ids),
            # answers whose first token starts a word ("▁Leo", "ĠLeo"), as the real models' do after
            # their prompt or chat turn: the path through the first token the study measures
            "word_start_share": _share([tok.convert_ids_to_tokens(g.token_ids[0]).startswith(("▁", "Ġ"))
                                        for g in batched if g.token_ids]),
            "examples": [g.text for g in batched[:3]],
        }
    finally:
        unload(lm)


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 16
    for spec in specs():
        result = check(spec, n)
        print(json.dumps(result, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
