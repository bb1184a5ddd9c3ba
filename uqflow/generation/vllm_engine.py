"""Greedy decoding with vLLM (optional extra ``uqflow[vllm]``, CUDA GPUs only).

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
        if spec.quantization in ("8bit", "4bit"):
            kwargs["quantization"] = "bitsandbytes"  # in-flight bitsandbytes quantization of the bf16 weights
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
        self.batch_size = 0  # vLLM schedules its own batches

    def generate(self, prompts: Sequence[Sequence[int]], progress=None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, stop=list(self.stop_sequences),
                                logprobs=1, include_stop_str_in_output=True)
        start = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        self.generation_seconds += time.perf_counter() - start
        gens = []
        for prompt, out in zip(prompts, outputs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            n, reason, dropped = align_answer(ids, self.decode, self.eos_ids, self.stop_sequences)
            logprobs = [float(comp.logprobs[t][tok].logprob) for t, tok in enumerate(ids[:n])]
            gens.append(Generation(
                prompt_token_ids=list(prompt), token_ids=ids[:n], token_logprobs=logprobs,
                token_entropies=[math.nan] * n, text=self.decode(ids[:n]).strip(), stop_reason=reason,
                dropped_text=dropped,
            ))
        if progress is not None:
            progress(len(prompts))
        return gens
