"""Batched greedy decoding with Hugging Face transformers.

Prompts are sorted by length and decoded in left-padded batches with ``model.generate``; a logits
processor placed in the loop records, at every step, the raw log-softmax's maximum (the greedy
token's log-probability), its argmax and the entropy, so no (steps, batch, vocab) tensor is kept.
A batch ends as soon as every sequence has met a stop sequence or EOS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from uqflow.generation.base import Generation, align_answer
from uqflow.models.loading import LoadedModel
from uqflow.prompts import STOP_SEQUENCES

log = logging.getLogger(__name__)


def _recorder_class():
    import torch
    from transformers import LogitsProcessor

    class StepRecorder(LogitsProcessor):
        """Records per-step statistics of the raw logits and returns them unchanged."""

        def __init__(self):
            self.logp_max: list[torch.Tensor] = []
            self.argmax: list[torch.Tensor] = []
            self.entropy: list[torch.Tensor] = []

        def __call__(self, input_ids, scores):
            logp = torch.log_softmax(scores.float(), dim=-1)  # (B, V), raw: no processor precedes this one
            top, idx = logp.max(dim=-1)  # (B,)
            self.logp_max.append(top)
            self.argmax.append(idx)
            self.entropy.append(torch.special.entr(logp.exp()).sum(-1))  # entr(0) = 0, so -inf logits are safe
            return scores

    return StepRecorder


def eos_token_ids(lm: LoadedModel) -> set[int]:
    ids = set()
    gen_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    for v in (lm.tokenizer.eos_token_id, gen_eos):
        if isinstance(v, int):
            ids.add(v)
        elif v:
            ids.update(int(x) for x in v)
    return ids


class HFEngine:
    """Greedy generation engine over a loaded transformers model."""

    name = "hf"

    def __init__(self, lm: LoadedModel, *, batch_size: int = 0, max_new_tokens: int = 50,
                 stop_sequences: Sequence[str] = STOP_SEQUENCES):
        from transformers import GenerationConfig

        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.stop_sequences = tuple(stop_sequences)
        self.eos_ids = eos_token_ids(lm)
        # 0 = automatic: large batches on GPU (halved on out-of-memory), moderate ones on CPU
        self.batch_size = batch_size or (64 if lm.device.startswith("cuda") else 16)
        tok = lm.tokenizer
        # A clean config: the hub's generation_config.json may carry sampling or penalty settings
        # that would change the greedy choice; generate() fills unset fields from the model's config.
        clean = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=sorted(self.eos_ids),
                                 pad_token_id=tok.pad_token_id)
        lm.model.generation_config = clean
        self.gen_config = GenerationConfig(
            do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, repetition_penalty=1.0,
            stop_strings=list(self.stop_sequences), eos_token_id=sorted(self.eos_ids),
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, return_dict_in_generate=True,
        )
        self.generation_seconds = 0.0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[Sequence[int]], progress=None) -> list[Generation]:
        """Greedy answers for tokenized prompts, in the order given."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        start = time.perf_counter()
        pos = 0
        while pos < len(order):
            idx = order[pos : pos + self.batch_size]
            try:
                gens = self._generate_batch([prompts[i] for i in idx])
            except Exception as e:  # torch.OutOfMemoryError, without importing torch at module level
                if type(e).__name__ != "OutOfMemoryError" or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory; retrying with batch size %d", self.batch_size)
                self._empty_cache()
                continue
            for i, g in zip(idx, gens):
                results[i] = g
            pos += len(idx)
            if progress is not None:
                progress(len(idx))
        self.generation_seconds += time.perf_counter() - start
        return results  # type: ignore[return-value]

    @staticmethod
    def _empty_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_batch(self, batch: Sequence[Sequence[int]]) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        tok, model = self.lm.tokenizer, self.lm.model
        enc = tok.pad({"input_ids": [list(p) for p in batch]}, padding=True, return_tensors="pt")
        input_ids = enc["input_ids"].to(model.device)  # (B, T) left-padded
        attention_mask = enc["attention_mask"].to(model.device)
        rec = _recorder_class()()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.gen_config,
                logits_processor=LogitsProcessorList([rec]), tokenizer=tok,
            )
        new = out.sequences[:, input_ids.shape[1] :].cpu()  # (B, S)
        steps = new.shape[1]
        logp = torch.stack(rec.logp_max[:steps], 1).cpu().double()  # (B, S)
        argmax = torch.stack(rec.argmax[:steps], 1).cpu()
        ent = torch.stack(rec.entropy[:steps], 1).cpu().double()
        gens = []
        for b, prompt in enumerate(batch):
            ids = new[b].tolist()
            n, reason, dropped = align_answer(ids, self._decode, self.eos_ids, self.stop_sequences)
            # every token up to and including the one that ended the answer was chosen by argmax
            upto = min(n + 1, steps)
            if not torch.equal(argmax[b, :upto], new[b, :upto]):
                raise RuntimeError("generated tokens differ from the argmax of the recorded logits")
            answer_ids = ids[:n]
            gens.append(Generation(
                prompt_token_ids=list(prompt), token_ids=answer_ids,
                token_logprobs=logp[b, :n].tolist(), token_entropies=ent[b, :n].tolist(),
                text=self._decode(answer_ids).strip(), stop_reason=reason, dropped_text=dropped,
            ))
        return gens
