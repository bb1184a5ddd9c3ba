"""A faithful one-question-at-a-time generation loop in the style of the reference study's code.

Batch size 1, ``model.generate`` with ``output_scores`` and ``output_hidden_states``, a stopping
criterion that decodes the whole continuation at every step and looks for stop strings, then
``compute_transition_scores(normalize_logits=True)`` for the token log-probabilities and a search
for the stop sequence in the decoded text. Used by the benchmarks as the baseline.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList


class StoppingCriteriaSub(StoppingCriteria):
    """Stops when any stop string appears in the decoded continuation (re-decoded every step)."""

    def __init__(self, stops, tokenizer, initial_length):
        super().__init__()
        self.stops, self.tokenizer, self.initial_length = stops, tokenizer, initial_length

    def __call__(self, input_ids, scores, **kwargs):
        generation = self.tokenizer.decode(input_ids[0][self.initial_length :], skip_special_tokens=False)
        return any(stop in generation for stop in self.stops)


def reference_predict(model, tokenizer, prompt_text: str, stops, max_new_tokens: int, add_special_tokens=True):
    """(answer, log_likelihoods) for one prompt, as the reference code computed them."""
    inputs = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
    n_in = inputs["input_ids"].shape[1]
    criteria = StoppingCriteriaList([StoppingCriteriaSub(stops, tokenizer, n_in)])
    with torch.no_grad():
        outputs = model.generate(
            **inputs, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_scores=True,
            output_hidden_states=True, do_sample=False, stopping_criteria=criteria,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    full = tokenizer.decode(outputs.sequences[0][n_in:], skip_special_tokens=True)
    answer = full
    for stop in stops:
        if stop in answer:
            answer = answer[: answer.index(stop)]
    transition_scores = model.compute_transition_scores(outputs.sequences, outputs.scores, normalize_logits=True)
    log_likelihoods = [s.item() for s in transition_scores[0]]
    return answer.strip(), log_likelihoods
