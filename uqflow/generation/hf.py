"""Batched greedy decoding with Hugging Face transformers.

Prompts are sorted by length and decoded in left-padded batches with ``model.generate``; a logits
processor placed in the loop records, at every step, the raw log-softmax's maximum (the greedy
token's log-probability), its argmax and the entropy, so no (steps, batch, vocab) tensor is kept.
A batch ends as soon as every sequence has met a stop sequence or EOS.

Few-shot prompts share a long prefix (instruction and examples). Its key/value cache is computed
once per call and copied into every batch, so only each question's own tokens are prefilled; the
padding then sits between the shared prefix and each question, and position ids follow the
attention mask, so every sequence sees exactly the positions it would see alone. Sliding-window
attention counts cache slots, padding included, so for such models the prefix is shared only
while every sequence fits inside the window.
"""

from __future__ import annotations

import copy
import inspect
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

    #: shortest shared prefix worth caching (tokens)
    MIN_SHARED_PREFIX = 16

    def __init__(self, lm: LoadedModel, *, batch_size: int = 0, max_new_tokens: int = 50,
                 stop_sequences: Sequence[str] = STOP_SEQUENCES, share_prefix: bool = True):
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
        self.share_prefix = share_prefix
        # transformers 5 renamed generate()'s `past_key_values` to `cache`
        self._cache_kwarg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
        self.generation_seconds = 0.0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[Sequence[int]], progress=None) -> list[Generation]:
        """Greedy answers for tokenized prompts, in the order given."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        start = time.perf_counter()
        prefix = self._shared_prefix(prompts) if self.share_prefix else []
        prefix_cache = self._prefix_cache(prefix) if prefix else None
        pos = 0
        while pos < len(order):
            idx = order[pos : pos + self.batch_size]
            try:
                gens = self._generate_batch([prompts[i] for i in idx], prefix, prefix_cache)
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

    def _sliding_window(self) -> int | None:
        cfg = self.lm.model.config
        cfg = getattr(cfg, "text_config", cfg)
        if getattr(cfg, "use_sliding_window", True) is False:  # Qwen2 configs carry an unused window
            return None
        return getattr(cfg, "sliding_window", None) or None

    def _shared_prefix(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Longest common token prefix of all prompts, leaving each at least one token of its own;
        empty when sharing would change results (a sliding window shorter than the sequences)."""
        if len(prompts) < 2:
            return []
        window = self._sliding_window()
        if window is not None and max(len(p) for p in prompts) + self.max_new_tokens > window:
            return []
        first, n = prompts[0], min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            k = 0
            while k < n and p[k] == first[k]:
                k += 1
            n = k
        return list(first[:n]) if n >= self.MIN_SHARED_PREFIX else []

    def _prefix_cache(self, prefix: Sequence[int]):
        """Key/value cache of the shared prefix (batch of one)."""
        import torch
        from transformers import DynamicCache

        model = self.lm.model
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([list(prefix)], device=model.device)
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{self._cache_kwarg: cache})
        return cache

    def _generate_batch(self, batch: Sequence[Sequence[int]], prefix: Sequence[int] = (),
                        prefix_cache=None) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        tok, model = self.lm.tokenizer, self.lm.model
        P = len(prefix)
        enc = tok.pad({"input_ids": [list(p[P:]) for p in batch]}, padding=True, return_tensors="pt")
        input_ids = enc["input_ids"]  # (B, T) question tokens, left-padded
        attention_mask = enc["attention_mask"]
        extra = {}
        if P:
            B = len(batch)
            # (B, P + T): [shared prefix][padding][question]; the prefix comes from the cache
            input_ids = torch.cat([torch.tensor([list(prefix)] * B), input_ids], 1)
            attention_mask = torch.cat([torch.ones(B, P, dtype=attention_mask.dtype), attention_mask], 1)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(B)
            extra[self._cache_kwarg] = cache
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        rec = _recorder_class()()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=self.gen_config,
                logits_processor=LogitsProcessorList([rec]), tokenizer=tok, **extra,
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
