"""Greedy decoding (and sampling, for the sampled measures) with vLLM (optional extra ``uqflow[vllm]``, CUDA GPUs only).

Produces the same :class:`Generation` records as the Hugging Face engine: vLLM stops on the stop
strings (for speed) and returns every generated token id, then the same :func:`align_answer`
decides which tokens are answer tokens. Log-probabilities are vLLM's ``raw_logprobs`` (the
log-softmax of the unprocessed logits) of the chosen tokens. vLLM does not expose the full
distribution per step, so token entropies are NaN with this engine (mean-entropy AUROC is then
not defined); every other score is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from uqflow.errors import ModelLoadError
from uqflow.generation.base import Generation, align_answer, decoder
from uqflow.models.registry import ModelSpec
from uqflow.prompts import STOP_SEQUENCES


def require_vllm():
    """Import vllm or explain why it cannot be used here."""
    try:
        import vllm
    except ImportError:
        raise ModelLoadError(
            "backend 'vllm' needs the vllm package, which runs on CUDA GPUs only: pip install 'uqflow[vllm]'. "
            "Use backend=hf (the default) on this machine."
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError("backend 'vllm' needs a CUDA GPU and none is visible; use backend=hf")
    return vllm


class VLLMEngine:
    """Greedy generation with a vLLM ``LLM`` built from a registry spec."""

    name = "vllm"

    def __init__(self, spec: ModelSpec, *, max_new_tokens: int = 50, stop_sequences: Sequence[str] = STOP_SEQUENCES,
                 source: str | None = None, gpu_memory_utilization: float = 0.85, seed: int = 0):
        vllm = require_vllm()
        kwargs = {}
        if spec.quantization == "8bit":
            # vLLM quantizes in flight to NF4 only: an 8-bit entry would silently run 4-bit
            raise ModelLoadError(f"model {spec.name!r} is 8bit, and vLLM quantizes in flight to 4-bit only; run it with "
                                 "backend=hf, or serve a saved LLM.int8 checkpoint with `vllm serve` and register "
                                 "it as a served model (docs/serving.md)")
        if spec.quantization == "4bit":
            kwargs["quantization"] = "bitsandbytes"  # in-flight NF4 quantization of the bf16 weights
        self.llm = vllm.LLM(model=source or spec.source, dtype="bfloat16", trust_remote_code=spec.trust_remote_code,
                            seed=seed, enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                            logprobs_mode="raw_logprobs", **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.decode = decoder(self.tokenizer)  # token ids -> stored answer text
        self.max_new_tokens = max_new_tokens
        self.stop_sequences = tuple(stop_sequences)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.generation_seconds = 0.0
        #: forward passes (a prompt's prefill, shared by its n samples, then one per further token)
        #: and generated tokens, greedy and sampled apart (scoring/cost.py)
        self.passes = {"greedy": 0, "sampled": 0}
        self.tokens = {"greedy": 0, "sampled": 0}
        self.batch_size = 0  # vLLM schedules its own batches
        #: vLLM's answers may change with what it schedules beside them; uqflow cannot vary its
        #: batches (no batch spread), so this only says so
        self.batch_invariant = False

    def generate(self, prompts: Sequence[Sequence[int]], progress=None, *, shuffle: int = 0) -> list[Generation]:
        """Greedy answers; ``shuffle`` is accepted for the HF engine's interface (vLLM schedules its
        own batches, so batch compositions are not under uqflow's control here)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, stop=list(self.stop_sequences),
                                logprobs=1, include_stop_str_in_output=True)
        start = time.perf_counter()
        outputs = self._run(prompts, params)
        self.generation_seconds += time.perf_counter() - start
        gens = [self._record(prompt, out.outputs[0], "greedy") for prompt, out in zip(prompts, outputs)]
        self.passes["greedy"] += len(prompts)
        if progress is not None:  # vLLM decodes the whole call at once: its rows and tokens are told at its end
            progress(len(prompts), tokens=sum(len(out.outputs[0].token_ids) for out in outputs))
        return gens

    def sample(self, prompts: Sequence[Sequence[int]], n: int, *, temperature: float = 1.0, seed: int = 0,
               progress=None) -> list[list[Generation]]:
        """``n`` sampled answers per prompt with vLLM's own ``n`` (one prefill shared by the
        samples), seeded per request; stored like the HF engine's (raw log-probabilities, the
        same stop rules). vLLM's random streams differ from the HF engine's, so the two engines
        draw different samples from the same seed."""
        from vllm import SamplingParams

        if n < 1:
            return [[] for _ in prompts]
        outs = []
        for i, prompt in enumerate(prompts):  # a seed per request: reproducible whatever else is scheduled
            outs.append(SamplingParams(n=n, temperature=temperature, top_p=1.0, top_k=-1, seed=seed * 1_000_003 + i,
                                       max_tokens=self.max_new_tokens, stop=list(self.stop_sequences), logprobs=1,
                                       include_stop_str_in_output=True))
        outputs = self._run(prompts, outs)
        result = [[self._record(prompt, c, "sampled") for c in out.outputs] for prompt, out in zip(prompts, outputs)]
        self.passes["sampled"] += len(prompts)  # one prefill per prompt, shared by its n samples
        if progress is not None:
            progress(len(prompts) * n, tokens=sum(len(c.token_ids) for out in outputs for c in out.outputs))
        return result

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                              progress=None) -> list[float]:
        """log p(continuation | prompt), from vLLM's prompt log-probabilities of the joined sequence;
        ``progress`` hears of every pair at the end of the call."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self._run([list(p) + list(c) for p, c in zip(prompts, continuations)], params)
        out = []
        for p, c, o in zip(prompts, continuations, outputs):
            lps = o.prompt_logprobs  # one dict per prompt token (None for the first)
            out.append(float(sum(lps[len(p) + t][tok].logprob for t, tok in enumerate(c))))
        if progress is not None:
            progress(len(prompts))
        return out

    def _run(self, prompts, params):
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)

    def _record(self, prompt, comp, kind: str) -> Generation:
        ids = list(comp.token_ids)
        self.tokens[kind] += len(ids)
        self.passes[kind] += max(len(ids) - 1, 0)
        n, reason, dropped = align_answer(ids, self.decode, self.eos_ids, self.stop_sequences)
        logprobs = [float(comp.logprobs[t][tok].logprob) for t, tok in enumerate(ids[:n])]
        return Generation(
            prompt_token_ids=list(prompt), token_ids=ids[:n], token_logprobs=logprobs,
            token_entropies=[math.nan] * n, text=self.decode(ids[:n]).strip(), stop_reason=reason,
            dropped_text=dropped,
        )
