"""Batched greedy decoding over a Hugging Face transformers model.

Prompts are sorted by length and decoded in left-padded batches. The decoding loop is written here
rather than taken from ``model.generate`` because generate keeps every sequence of a batch in the
forward pass until the last one stops: with brief answers most rows are finished long before the
longest one, and on a CPU that wasted work dominates. Here a row leaves the batch (and the key/value
cache) as soon as it meets EOS or a stop sequence, and the batch ends when no row is left. Each
step takes the raw logits of the last position only, and records the greedy token's log-softmax
value and the entropy of that distribution; no (steps, batch, vocab) tensor is kept.

Few-shot prompts share a long prefix (instruction and examples). Its key/value cache is computed
once per call and copied into every batch, so only each question's own tokens are prefilled; the
padding then sits between the shared prefix and each question, and position ids follow the
attention mask, so every sequence sees exactly the positions it would see alone. Sliding-window
attention counts cache slots, padding included, so for such models the prefix is shared only
while every sequence fits inside the window.

An answer is then the same whatever else shares its batch (up to float rounding), except with
bitsandbytes' models: LLM.int8 (``8bit``) chooses its outlier columns over the whole batch and NF4
(``4bit``) rounds in bf16 (``uqflow.models.loading.batch_dependence``). For those the batches are
kept a function of the configuration alone: the automatic batch size is the same on every device
and an out-of-memory error is not answered by shrinking the batch.

The running batch lives in one of two cache layouts (``uqflow.generation.batches``; ``UQFLOW_LAYOUT``):
dynamic, the default, where shapes follow the running rows, or static, where they are fixed so that a
GPU can replay each decode step as one captured CUDA graph (``graphs``). The attention kernels of
prefills and decode steps on a GPU are chosen apart (``UQFLOW_SDPA``).
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import time
from collections.abc import Sequence

from uqflow.errors import ConfigError, raise_if_stopped
from uqflow.generation.base import Generation, Reports, align_answer, decoder
from uqflow.generation.batches import DynamicBatch, StaticBatch, stack
from uqflow.models.loading import BATCH_DEPENDENT_AUTO_BATCH, LoadedModel
from uqflow.prompts import STOP_SEQUENCES

log = logging.getLogger(__name__)


def eos_token_ids(lm: LoadedModel) -> set[int]:
    ids = set()
    gen_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    for v in (lm.tokenizer.eos_token_id, gen_eos):
        if isinstance(v, int):
            ids.add(v)
        elif v:
            ids.update(int(x) for x in v)
    return ids


#: PyTorch's scaled-dot-product-attention kernels the engine allows on a GPU, in PyTorch's order of
#: preference. cuDNN's is left out: with the engine's left-padded masks PyTorch picks it for calls
#: where it is several times slower than the others (a bare decode step of Llama-3.2-1B at batch 64
#: took 77-115 ms with PyTorch's own choice against 14 ms with these three). Measured with
#: `bash bench/gpu_check.sh --models Llama-3.2-1B --n 64` on an H200 (torch 2.11, every answer 150
#: tokens): TriviaQA 3.40 -> 22.4 questions/s (511 -> 3,356 tokens/s), SQuAD 6.28 -> 17.7 (942 ->
#: 2,658). Qwen2.5-1.5B gained at 150 tokens (3.3 -> 10.4 and 6.1 -> 10.3 questions/s) but lost
#: at 16 (134 -> 92): cuDNN was the faster kernel for its early decode steps, so a per-call choice
#: would do better still. The math is the same attention in every kernel, so answers change only
#: by float rounding. UQFLOW_SDPA chooses others, per phase if need be (``sdpa_choice``); ``auto``
#: restores PyTorch's own choice. `bash bench/gpu_check.sh --sdpa-probe` times each phase (a prefill, a
#: decode step) under each kernel, which is what the choice per call is to be made from.
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")

#: The decoding loop's cache layouts (``uqflow.generation.batches``): ``dynamic`` keeps the running
#: rows alone in a cache that grows by a slot a step; ``static`` keeps fixed shapes (a StaticCache,
#: finished rows' slots refilled in place); ``graphs`` is static with the step compiled by
#: ``torch.compile`` (a CUDA graph on a GPU). UQFLOW_LAYOUT chooses for a process.
LAYOUTS = ("dynamic", "static", "graphs")


#: UQFLOW_SDPA's names of PyTorch's SDPA kernels (torch.nn.attention.SDPBackend)
SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH", "cudnn": "CUDNN_ATTENTION"}
#: the engine's calls by kind: a prefill (prompts, many query positions) and a decode step (one query a row)
SDPA_PHASES = ("prefill", "decode")


def sdpa_choice(value: str) -> dict[str, tuple[str, ...] | None]:
    """The SDPA kernels each phase may use on a GPU, from UQFLOW_SDPA: empty for the engine's own
    (SDPA_BACKENDS), ``auto`` for PyTorch's own choice, kernels by name (``flash,efficient``) for
    both phases, or per phase (``prefill:cudnn;decode:flash,efficient,math``; a phase left out keeps
    the engine's). A kernel set maps to SDPBackend names; None is PyTorch's choice."""
    choice: dict[str, tuple[str, ...] | None] = dict.fromkeys(SDPA_PHASES, SDPA_BACKENDS)
    value = value.strip().lower()
    if not value:
        return choice
    known = f"kernels {', '.join(SDPA_KERNELS)} or auto; phases {', '.join(SDPA_PHASES)}"
    for part in filter(None, (p.strip() for p in value.split(";"))):
        phase, _, names = part.rpartition(":")
        phases = [phase.strip()] if phase else list(SDPA_PHASES)
        if any(ph not in SDPA_PHASES for ph in phases):
            raise ConfigError(f"UQFLOW_SDPA={value!r}: unknown phase {phase.strip()!r} ({known})")
        kernels = [n.strip() for n in names.split(",") if n.strip()]
        if kernels == ["auto"]:
            chosen = None
        elif kernels and all(k in SDPA_KERNELS for k in kernels):
            chosen = tuple(SDPA_KERNELS[k] for k in kernels)
        else:
            raise ConfigError(f"UQFLOW_SDPA={value!r}: {names.strip()!r} is not a kernel list ({known}); "
                              "unset it for the engine's own choice")
        for ph in phases:
            choice[ph] = chosen
    return choice


def layout_choice(value: str) -> str:
    """The decode layout UQFLOW_LAYOUT asks for (LAYOUTS); empty: dynamic."""
    layout = value.strip().lower() or "dynamic"
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown decode layout {value.strip()!r} (UQFLOW_LAYOUT); choose one of "
                          f"{', '.join(LAYOUTS)}, or unset UQFLOW_LAYOUT for the default (dynamic)")
    return layout


def settings_problems() -> list[ConfigError]:
    """What is wrong with the engine's settings from the environment (UQFLOW_LAYOUT, UQFLOW_SDPA),
    found before a model loads."""
    problems = []
    for parse, var in ((layout_choice, "UQFLOW_LAYOUT"), (sdpa_choice, "UQFLOW_SDPA")):
        try:
            parse(os.environ.get(var, ""))
        except ConfigError as e:
            problems.append(e)
    return problems


def _decode_step(model, tokens, mask, positions, cache, cache_kwarg: str, last_logits: bool):
    """One decoding step of ``model``: (b, 1) tokens -> the next token's logits (b, V)."""
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                **{cache_kwarg: cache}, **({"logits_to_keep": 1} if last_logits else {}))
    return out.logits[:, -1, :]


_COMPILED_STEPS: dict[bool, object] = {}


def compiled_decode_step(cuda: bool):
    """``_decode_step`` compiled by ``torch.compile`` once per process (on a CUDA device with
    ``mode="reduce-overhead"``: CUDA graphs), shared by every engine: its guards tell models and
    shapes apart, so engines over one model reuse what was compiled for a shape. A study compiles a
    shape per model, batch width and cache length; the recompile limit is raised to hold them."""
    if cuda not in _COMPILED_STEPS:
        import torch
        import torch._dynamo.config as dynamo

        dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
        _COMPILED_STEPS[cuda] = torch.compile(_decode_step, mode="reduce-overhead" if cuda else None, dynamic=False)
    return _COMPILED_STEPS[cuda]


class HFEngine:
    """Greedy generation engine over a loaded transformers model."""

    name = "hf"

    #: shortest shared prefix worth caching (tokens)
    MIN_SHARED_PREFIX = 16

    def __init__(self, lm: LoadedModel, *, batch_size: int = 0, max_new_tokens: int = 50,
                 stop_sequences: Sequence[str] = STOP_SEQUENCES, share_prefix: bool = True, layout: str = "auto"):
        self.lm = lm
        self.decode = decoder(lm.tokenizer)  # token ids -> stored answer text
        self.max_new_tokens = max_new_tokens
        self.stop_sequences = tuple(stop_sequences)
        self.eos_ids = eos_token_ids(lm)
        # 0 = automatic: 64 rows decode together on a GPU (halved on out-of-memory), 128 on a CPU,
        # where larger matrix products pay off most, prefilled 16 at a time. Models whose chunks
        # cannot be stacked (sliding-window caches) prefill a whole batch at once, so on a CPU
        # they decode 16 at a time, which measured fastest for them.
        from transformers import DynamicCache

        stackable = self._mergeable(DynamicCache(config=lm.model.config)) and self._sliding_window() is None
        cpu = not lm.device.startswith("cuda")
        #: whether an answer is the same whatever else shares its batch; where it is not (bitsandbytes'
        #: models), the batches must follow from the configuration: one automatic size for every device
        self.batch_invariant = lm.batch_invariant
        if not self.batch_invariant:
            auto = BATCH_DEPENDENT_AUTO_BATCH
        else:
            auto = 64 if not cpu else 128 if stackable else 16
        self.batch_size = batch_size or auto
        self.prefill_chunk = 16 if stackable else None  # None: the whole batch in one prefill
        #: whether waiting prompts join a running batch as its rows finish (caches that can be stacked)
        self.refill = stackable
        #: tokens decoded at each step to look for a stop sequence: enough for the longest to fit
        #: whole, however its characters fall on tokens (bytes of one character split across several)
        self._stop_span = 2 * max((len(s) for s in self.stop_sequences), default=0) + 4
        self.share_prefix = share_prefix
        self.layout = self._layout(layout)
        #: the SDPA kernels of each phase on a GPU (sdpa_choice: UQFLOW_SDPA, else SDPA_BACKENDS)
        self.sdpa = sdpa_choice(os.environ.get("UQFLOW_SDPA", ""))
        self._compiled = None  # the static layout's decoding step (compiled for layout="graphs"), once per engine
        self._static = None  # ((rows, slots), StaticCache): the static layout's cache, reused while its shape holds
        params = inspect.signature(lm.model.forward).parameters
        # transformers 5 renamed the forward argument `past_key_values` to `cache`
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.generation_seconds = 0.0  # greedy decoding
        #: sequence forward passes and generated tokens (stop and EOS tokens included), greedy and
        #: sampled apart: a prompt's prefill is one pass (shared by its sampled answers), each
        #: further token of an answer one more
        self.passes = {"greedy": 0, "sampled": 0}
        self.tokens = {"greedy": 0, "sampled": 0}

    def generate(self, prompts: Sequence[Sequence[int]], progress=None, *, shuffle: int = 0) -> list[Generation]:
        """Greedy answers for tokenized prompts, in the order given. ``shuffle`` k > 0 batches the
        prompts in an order shuffled with seed k instead of by length: another batch composition,
        which changes only the answers of a model that is not batch-invariant (bitsandbytes').
        ``progress(rows, tokens=0)`` hears of each answer as it is done and of the tokens decoded,
        at every step's pace (``Reports``)."""
        start = time.perf_counter()
        try:
            return [g for (g,) in self._decode(prompts, None, progress, shuffle=shuffle)]
        finally:
            self.generation_seconds += time.perf_counter() - start

    def sample(self, prompts: Sequence[Sequence[int]], n: int, *, temperature: float = 1.0, seed: int = 0,
               progress=None) -> list[list[Generation]]:
        """``n`` sampled answers per prompt, decoded like greedy answers (the shared prefix computed
        once, rows leaving as they stop, the same stop-sequence rules); a prompt is prefilled once
        and its cache copied for its ``n`` answers.

        Each answer draws from its own random stream, seeded by ``seed``, its prompt's tokens and its
        index ``k < n``, so an answer's random numbers do not depend on which other prompts or
        samples share its batch. A token is
        drawn by inverse-CDF sampling from softmax(logits / temperature) with one uniform number
        per step (written here because ``torch.multinomial`` draws a whole batch from one generator,
        which would tie a row's answer to its batch). The same configuration and batch size give
        the same samples; another batch size can change a few of them, since float rounding of the
        logits (which greedy answers shrug off) can move a draw across the boundary between two
        tokens, and the answer then goes its own way. The stored log-probabilities are the raw
        log-softmax of the sampled tokens (temperature 1: the model's own probability of the
        answer), as for greedy answers; token entropies likewise."""
        if n < 1:
            return [[] for _ in prompts]
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive to sample, got {temperature}")
        rngs = [sample_rng(seed, p, k) for p in prompts for k in range(n)]  # answer k of prompt i: i * n + k
        return self._decode(prompts, (rngs, temperature), progress, group=n)  # progress counts answers

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                              progress=None) -> list[float]:
        """log p(continuation | prompt) for each pair (the sum over the continuation's tokens of the
        raw log-softmax), by teacher forcing: one forward pass per sequence, batched and left-padded.
        p(True) asks for the probability of the answer "A" after its question. ``progress(rows)``
        hears of the pairs as each forward pass ends (a pass itself cannot report as it goes)."""
        import torch

        if continuations and all(len(c) == 1 for c in continuations):  # one token each (p(True)'s "A"):
            # its log-probability after the prompt, from a prefill that shares the prompts' common prefix
            tokens = sorted({c[0] for c in continuations})
            lps = self.next_token_logprobs(prompts, tokens, progress)
            return [lp[tokens.index(c[0])] for lp, c in zip(lps, continuations)]
        reports = Reports(progress)
        tok, model = self.lm.tokenizer, self.lm.model
        out: list[float] = [0.0] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
        step = max(1, min(self.batch_size, 16))
        with torch.inference_mode():
            for b in range(0, len(order), step):
                idx = order[b:b + step]
                seqs = [list(prompts[i]) + list(continuations[i]) for i in idx]
                enc = tok.pad({"input_ids": seqs}, padding=True, return_tensors="pt")
                mask = enc["attention_mask"]
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                k = max(len(continuations[i]) for i in idx)
                dev = model.device
                # only the last k + 1 positions' logits: the whole sequence's would be (b, T, vocab)
                keep = {"logits_to_keep": k + 1} if self._last_logits else {}
                with self._kernels("prefill"):
                    logits = model(input_ids=enc["input_ids"].to(dev), attention_mask=mask.to(dev),
                                   position_ids=pos.to(dev), **keep).logits[:, -(k + 1):-1, :].float()
                logp = torch.log_softmax(logits, dim=-1)  # (b, k, V): position j predicts token j + 1
                for r, i in enumerate(idx):
                    cont = list(continuations[i])
                    first = k - len(cont)  # left padding: the continuation ends every row
                    out[i] = float(sum(logp[r, first + t, c].item() for t, c in enumerate(cont)))
                reports.finished(len(idx))
        return out

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int],
                            progress=None) -> list[list[float]]:
        """log p(token | prompt) of each of ``token_ids`` after each prompt: one prefill per prompt
        (batched, the shared prefix computed once), no decoding. A judge that picks one of a few
        words by likelihood needs only this. ``progress(rows)`` hears of the prompts as each prefill
        chunk ends (``prefill_chunk`` rows; a whole batch where chunks cannot be stacked, as with
        sliding-window models: one forward pass cannot report within itself)."""
        import torch

        reports = Reports(progress)
        out: list[list[float]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        prefix = self._shared_prefix(prompts) if self.share_prefix else []
        prefix_cache = self._prefix_cache(prefix) if prefix else None
        cand = list(token_ids)
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                logits = self._prefill([prompts[i] for i in idx], prefix, prefix_cache, reports.finished)[0]
                logp = torch.log_softmax(logits, dim=-1)[:, cand]
                for r, i in enumerate(idx):
                    out[i] = logp[r].tolist()
        return out

    def _decode(self, prompts: Sequence[Sequence[int]], sampling, progress, group: int = 1,
                shuffle: int = 0) -> list[list[Generation]]:
        """Decode every prompt (sorted by length) ``group`` times: greedy (group 1), or sampled with
        ``sampling`` = (one random stream per answer, prompt-major; temperature). A prompt's answers
        share one prefill: its cache is copied ``group`` times, so a prompt is prefilled once however
        many answers are drawn from it. ``progress`` hears of each prompt's answers once all are done
        (``group`` at a time) and of the tokens decoded (an attempt lost to out-of-memory included)."""
        reports = Reports(progress)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        if shuffle:
            import random

            random.Random(shuffle).shuffle(order)
        results: list[list[Generation] | None] = [None] * len(prompts)
        prefix = self._shared_prefix(prompts) if self.share_prefix else []
        prefix_cache = self._prefix_cache(prefix) if prefix else None
        while True:
            waiting = [i for i in order if results[i] is None]
            if not waiting:
                return results  # type: ignore[return-value]
            try:
                self._stream(prompts, waiting, prefix, prefix_cache, sampling, group, results, reports)
            except Exception as e:  # torch.OutOfMemoryError, without importing torch at module level
                if type(e).__name__ != "OutOfMemoryError" or self.batch_size == 1:
                    raise
                if not self.batch_invariant:
                    raise ConfigError(
                        f"out of memory generating {self.batch_size} answers at once with {self.lm.spec.name}; its "
                        f"answers depend on which questions share a batch ({self.lm.spec.quantization}, bitsandbytes), "
                        f"so the batch is not shrunk behind the run's back: set batch_size={max(1, self.batch_size // 2)} "
                        "(or smaller) and run again") from None
                # finished answers stand; the unfinished ones start again in smaller batches
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory; retrying with batch size %d", self.batch_size)
                self._static = None  # the static layout's cache, sized for the larger batch
                self._empty_cache()
                if sampling is not None:  # their streams were advanced by the failed attempt: restart them
                    for i in order:
                        if results[i] is None:
                            for k in range(group):
                                sampling[0][i * group + k].reset()

    def _layout(self, layout: str) -> str:
        """The cache layout of the decoding loop (LAYOUTS); "auto" reads UQFLOW_LAYOUT and
        defaults to dynamic. A static layout needs caches that can be stacked and answers that do not
        depend on their batch (a finished row stays in the batch until its slot is refilled, which
        would change the batches of a bitsandbytes model): other models decode dynamically."""
        layout = layout_choice(os.environ.get("UQFLOW_LAYOUT", "") if layout == "auto" else layout)
        if layout != "dynamic" and not (self.refill and self.batch_invariant):
            why = "its caches cannot be stacked (sliding-window layers)" if not self.refill else \
                f"its answers depend on their batch ({self.lm.spec.quantization}, bitsandbytes)"
            log.info("%s decodes with a dynamic cache, not %s: %s", self.lm.spec.name, layout, why)
            return "dynamic"
        return layout

    def _logits(self, tokens, mask, positions, cache):
        """One decoding step of every row: (b, 1) tokens -> the next token's logits (b, V) as the model gives them."""
        return _decode_step(self.lm.model, tokens, mask, positions, cache, self._cache_kwarg, bool(self._last_logits))

    def _forward(self, tokens, mask, positions, cache):
        with self._kernels("decode"):
            return self._logits(tokens, mask, positions, cache).float()

    def _step_fn(self):
        """The decoding step of a static batch, float32 logits in a tensor of their own: the model's
        forward as it is (static), or compiled (graphs: ``compiled_decode_step``, which on a CUDA
        device captures the step in a CUDA graph and replays it with one launch; a replay
        overwrites its output, hence the copy)."""
        import torch

        if self._compiled is None:
            eager = self._logits
            step, failures = {"call": eager}, ()
            if self.layout == "graphs":
                from torch._dynamo.exc import TorchDynamoException

                compiled = compiled_decode_step(str(self.lm.device).startswith("cuda"))
                model, kwarg, last = self.lm.model, self._cache_kwarg, bool(self._last_logits)
                step["call"] = lambda *args: compiled(model, *args, kwarg, last)
                failures = TorchDynamoException

            def run(*args):
                with self._kernels("decode"):
                    try:
                        logits = step["call"](*args)
                    except failures as e:  # compiling failed (a machine without a C++ compiler or Triton)
                        log.warning("%s: the compiled decode step failed (%s); decoding on with the static layout "
                                    "uncompiled", self.lm.spec.name, str(e).strip().splitlines()[0][:200] if str(e).strip()
                                    else type(e).__name__)
                        step["call"] = eager
                        logits = eager(*args)  # nothing was written: a step that failed to compile never ran
                    return logits.to(torch.float32, copy=True)

            self._compiled = run
        return self._compiled

    def _static_cache(self, rows: int, capacity: int, like):
        """A StaticCache of ``rows`` x ``capacity`` slots for the layers of the prefilled cache
        ``like``; the engine's last one again where it has that shape (a captured step replays on
        the tensors it was captured with)."""
        import torch
        from transformers import StaticCache

        if self._static is not None and self._static[0] == (rows, capacity):
            return self._static[1]
        cache = StaticCache(config=self.lm.model.config, max_cache_len=capacity)
        for layer, part in zip(cache.layers, like.layers):
            k, v = part.keys, part.values
            layer.lazy_initialization(torch.empty((rows, k.shape[1], 1, k.shape[3]), dtype=k.dtype, device=k.device),
                                      torch.empty((rows, v.shape[1], 1, v.shape[3]), dtype=v.dtype, device=v.device))
        self._static = ((rows, capacity), cache)
        return cache

    def _kernels(self, phase: str):
        """The SDPA kernels a ``phase`` (SDPA_PHASES) of this engine may use (``sdpa``) on a CUDA
        model; on any other device, or where ``sdpa`` leaves it to PyTorch, PyTorch's own choice."""
        import contextlib

        names = self.sdpa[phase]
        if names is None or not str(self.lm.device).startswith("cuda"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, name) for name in names])

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
        with torch.inference_mode(), self._kernels("prefill"):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **{self._cache_kwarg: cache})
        return cache

    def _mergeable(self, cache) -> bool:
        """Whether chunk caches can be padded and stacked: plain dynamic layers only (sliding-window
        layers crop and count their own length)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    def _prefill(self, batch: Sequence[Sequence[int]], prefix: Sequence[int], prefix_cache, chunk_done=None):
        """Prefill ``batch`` (sorted by length) in chunks, each padded only to its own longest
        prompt, then stack the chunks into one decoding batch by left-padding their caches.
        Returns (last-position logits (B, V), cache, attention mask (B, S), last positions (B, 1)).
        ``chunk_done(rows)``, if given, is called as each chunk's forward pass ends."""
        import torch
        from transformers import DynamicCache

        tok, model = self.lm.tokenizer, self.lm.model
        dev, P = model.device, len(prefix)
        parts = []
        step = self.prefill_chunk or len(batch)
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            b = len(chunk)
            enc = tok.pad({"input_ids": [list(p[P:]) for p in chunk]}, padding=True, return_tensors="pt")
            feed, mask = enc["input_ids"], enc["attention_mask"]  # (b, T) own tokens, left-padded
            if P:
                # (b, P + T): [shared prefix][padding][question]; the prefix is already in the cache
                mask = torch.cat([torch.ones(b, P, dtype=mask.dtype), mask], 1)
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(b)
            else:
                cache = DynamicCache(config=model.config)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real positions, padding ignored
            mask = mask.to(dev)
            with self._kernels("prefill"):
                out = model(input_ids=feed.to(dev), attention_mask=mask, position_ids=pos[:, P:].to(dev),
                            use_cache=True, **{self._cache_kwarg: cache}, **self._last_logits)
            parts.append((out.logits[:, -1, :].float(), cache, mask, pos[:, -1:].to(dev)))
            if chunk_done is not None:
                chunk_done(b)
        return parts[0] if len(parts) == 1 else stack(parts)

    def _stream(self, prompts: Sequence[Sequence[int]], waiting: list[int], prefix: Sequence[int], prefix_cache,
                sampling, group: int, results: list, reports: Reports) -> None:
        """Decode the ``waiting`` prompts (in that order), each ``group`` times, into ``results``,
        telling ``reports`` of the tokens of each step and of each prompt done.

        Rows leave the batch (and the cache) as they stop. Where caches can be stacked, waiting
        prompts take the places of finished rows once a quarter of the batch is free (prefilled
        together, their caches left-padded onto the running batch's), so a long answer never holds
        a batch of finished ones; otherwise the next batch starts when the last row of this one stops.
        Each row attends only to its own prompt and answer, at its own positions, whatever joins or
        leaves around it."""
        import collections

        import torch

        model = self.lm.model
        dev = model.device
        kind = "greedy" if sampling is None else "sampled"
        width = max(1, self.batch_size // group) * group  # rows decoding together
        refill_at = max(group, width // 4) if self.refill else width  # free rows that call for a refill
        queue = collections.deque(waiting)
        done: dict[int, list] = {}  # prompt -> its answers so far, in sample order

        def admit(free: int):
            """Prefill as many waiting prompts as ``free`` rows hold: (logits, cache, mask, positions, rows)."""
            idx = [queue.popleft() for _ in range(min(free // group, len(queue)))]
            logits, cache, mask, pos = self._prefill([prompts[i] for i in idx], prefix, prefix_cache)
            if group > 1:  # each prompt's answers start from one copy of its prefill
                logits, mask, pos = (t.repeat_interleave(group, 0) for t in (logits, mask, pos))
                cache.batch_repeat_interleave(group)
            self.passes[kind] += len(idx)  # one prefill per prompt, shared by its answers
            return logits, cache, mask, pos, [_Row(i, k) for i in idx for k in range(group)]

        with torch.inference_mode():
            batch = self._batch(admit(width), prompts, len(waiting) * group, width)
            while batch.rows:
                raise_if_stopped()  # a stop signal a library swallowed is acted on within a step
                rows, logits = batch.rows, batch.logits
                logp = torch.log_softmax(logits, dim=-1)  # (b, V) from the raw logits
                if sampling is None:
                    top, nxt = logp.max(dim=-1)  # greedy token and its log-probability, (b,)
                else:
                    nxt = _draw(logits, [sampling[0][r.prompt * group + r.k] for r in rows], sampling[1])
                    top = logp.gather(-1, nxt[:, None])[:, 0]
                ent = torch.special.entr(logp.exp()).sum(-1)  # entr(0) = 0: masked logits are safe
                reports.decoded(len(rows))  # a token per running row (a counter; reported at a timed pace)
                keep = []
                for j, (row, t, lp, h) in enumerate(zip(rows, nxt.tolist(), top.tolist(), ent.tolist())):
                    row.ids.append(t)
                    row.logps.append(lp)
                    row.ents.append(h)
                    if not self._row_done(row):
                        keep.append(j)
                    else:
                        self._finish(row, prompts[row.prompt], group, done, results, reports, kind)
                if len(keep) < len(rows):  # finished rows leave the batch
                    if not keep:
                        if not queue:
                            break
                        batch = self._batch(admit(width), prompts, len(waiting) * group, width)
                        continue
                    batch.drop(keep)
                    nxt = nxt[torch.tensor(keep, device=dev)]
                batch.step(nxt)
                if queue and width - len(batch.rows) >= refill_at:
                    batch.admit(admit(width - len(batch.rows)))
        reports.flush()

    def _batch(self, first, prompts, answers: int, width: int):
        """The running batch that starts with the prefill ``first``, in the engine's cache layout:
        a StaticBatch with ``layout`` static or graphs, else a DynamicBatch."""
        if self.layout == "dynamic":
            return DynamicBatch(self._forward, first, trim_unused=self.refill)
        rows = min(width, answers)
        # every row finishes in place: the longest prompt, then room for a running row's answer and
        # a new one's (StaticBatch shifts its slots to keep within them); rounded, so that runs of
        # similar prompts share one shape (and one captured graph)
        longest = max(len(p) for p in prompts)
        capacity = -(-(longest + 2 * self.max_new_tokens) // 128) * 128
        cache = self._static_cache(rows, capacity, first[1])
        return StaticBatch(self._step_fn(), cache, first, width=rows, capacity=capacity,
                           max_new_tokens=self.max_new_tokens)

    def _row_done(self, row: _Row) -> bool:
        """Whether a row's answer is finished: its token budget spent or a stop met."""
        return len(row.ids) >= self.max_new_tokens or self._stopped(row.ids)

    def _stopped(self, ids: list[int]) -> bool:
        """Whether the answer so far ends in EOS or holds a stop sequence. Only its last tokens are
        decoded (decoding the whole answer at every step made the check grow with the answer): a
        stop sequence that was not there a token ago ends within them. A stop seen there is
        confirmed on the whole answer, which is what ``align_answer`` cuts."""
        if ids[-1] in self.eos_ids:
            return True
        tail = self.decode(ids[-self._stop_span:])
        return any(stop in tail for stop in self.stop_sequences) and (
            len(ids) <= self._stop_span or any(stop in self.decode(ids) for stop in self.stop_sequences))

    def _finish(self, row: _Row, prompt: Sequence[int], group: int, done: dict, results: list, reports: Reports,
                kind: str) -> None:
        """Store a finished row's answer; a prompt's answers go to ``results`` once all are in."""
        self.tokens[kind] += len(row.ids)
        self.passes[kind] += len(row.ids) - 1  # each token after the first is one more pass
        n, reason, dropped = align_answer(row.ids, self.decode, self.eos_ids, self.stop_sequences)
        answers = done.setdefault(row.prompt, [None] * group)
        answers[row.k] = Generation(
            prompt_token_ids=list(prompt), token_ids=row.ids[:n], token_logprobs=row.logps[:n],
            token_entropies=row.ents[:n], text=self.decode(row.ids[:n]).strip(), stop_reason=reason,
            dropped_text=dropped,
        )
        if all(a is not None for a in answers):
            results[row.prompt] = done.pop(row.prompt)
            reports.finished(group)


class _Row:
    """One answer being decoded: answer ``k`` of prompt ``prompt``, its tokens and their statistics."""

    __slots__ = ("prompt", "k", "ids", "logps", "ents")

    def __init__(self, prompt: int, k: int):
        self.prompt, self.k = prompt, k
        self.ids: list[int] = []
        self.logps: list[float] = []
        self.ents: list[float] = []


class SampleStream:
    """The random stream of one sampled answer: uniform numbers in [0, 1) from numpy's PCG64,
    seeded by the run's seed, the prompt's tokens and the sample's index, restartable."""

    def __init__(self, key: int):
        import numpy as np

        self.key = key
        self._rng = np.random.default_rng(key)

    def reset(self) -> None:
        import numpy as np

        self._rng = np.random.default_rng(self.key)

    def random(self) -> float:
        return float(self._rng.random())


def sample_rng(seed: int, prompt: Sequence[int], k: int) -> SampleStream:
    """The stream of sample ``k`` of ``prompt`` under ``seed``: the same whatever else is sampled."""
    import hashlib

    blob = f"{seed}:{k}:" + ",".join(map(str, prompt))
    return SampleStream(int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "little"))


def _draw(logits, streams: Sequence[SampleStream], temperature: float):
    """One token per row by inverse-CDF sampling from softmax(logits / temperature), (b,) ids."""
    import torch

    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.tensor([s.random() for s in streams], dtype=cdf.dtype, device=cdf.device)[:, None]
    # right=True: the first index whose cumulative mass exceeds u, never a token of probability 0;
    # u is scaled by the total mass, which rounding can leave a little under 1
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0]
    return idx.clamp(max=probs.shape[-1] - 1)
