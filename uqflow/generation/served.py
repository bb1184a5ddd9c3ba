"""Answers from a model behind an OpenAI-compatible completions server: vLLM's ``vllm serve``,
SGLang, llama.cpp's ``llama-server``, a hosted API.

The prompts are the ones the in-process engine answers, sent as token ids (``prompt: [ids]``) so the
server sees exactly the tokens uqflow built, and the records are the same :class:`Generation`: the
returned token ids pass through the same :func:`align_answer` (stop sequences, EOS), their
log-probabilities are the server's (raw: llama.cpp and vLLM report the model's distribution before
temperature and sampling). What differs:

- **token entropy** is computed over the top ``k`` alternatives the server returns for each token
  (``top_logprobs``), with the mass left outside them counted as one more outcome: a lower bound of
  the full entropy (merging outcomes never raises entropy), tight when the top k hold nearly all the
  mass. Its k is a param of the run (``entropy_top_k``); k = 0 leaves token entropies undefined.
- **sampled answers** are one request each (``n: 1``) with a seed of their own, derived from the
  run's seed, the prompt and the sample's index (llama.cpp caps ``n`` at its slots), drawn from the
  whole distribution (a server's default truncations switched off: ``FULL_DISTRIBUTION``). The same
  seed gives the same samples where the server computes the same logits: a server that decodes
  requests side by side may round them differently with what shares its batch, and a draw near the
  boundary of two tokens then goes the other way (llama.cpp does; ``concurrency: 1`` keeps one
  request in flight, and its samples repeat exactly).
- **p(True)** (the log-probability of a continuation) is read from the next token's top-k
  alternatives, one request per continuation token; a token outside them is counted at the
  most it can weigh (the smaller of the k-th alternative's probability and the mass left outside the
  top k), and the run notes how often that happened.

Requests run ``concurrency`` at a time. A request answered 429 or 5xx, or not answered, is retried
with exponential backoff (longer where the server's ``Retry-After`` asks) until ``retry_s`` seconds are
spent; then the run fails with the last reason. A refused API key fails at once. The key is read from
the environment variable the entry names as each request is made, and never logged, tagged or
printed: every message that leaves this module has it masked.

Servers differ in small ways, told apart by the ``owned_by`` of ``/v1/models``: llama.cpp returns
token ids in its logprobs and is asked not to reuse its prompt cache (``cache_prompt: false``: a cached
prefix changes the reported log-probabilities a little, and the run's records must not depend on the
order of requests); vLLM is asked for token ids (``return_token_ids``, ``return_tokens_as_token_ids``)
and to keep the stop string's token (``include_stop_str_in_output``), as its in-process engine does.
A server that returns token strings only has them mapped by the model's tokenizer."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from uqflow.errors import ModelLoadError, raise_if_stopped
from uqflow.generation.base import Generation, Reports, align_answer, decoder
from uqflow.prompts import STOP_SEQUENCES

log = logging.getLogger(__name__)

#: seconds a check before the run waits for the server (it fails fast where nothing listens)
CHECK_TIMEOUT_S = 10.0
#: first and longest wait between two tries of a request
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
#: the servers told apart (``owned_by`` in /v1/models); anything else is spoken to as OpenAI's API
LLAMA_CPP, VLLM, OPENAI = "llama.cpp", "vllm", "openai"
#: what each kind of server is asked beyond OpenAI's fields (see the module's docstring)
EXTRA_FIELDS = {
    LLAMA_CPP: {"cache_prompt": False},
    VLLM: {"return_token_ids": True, "return_tokens_as_token_ids": True, "include_stop_str_in_output": True},
    OPENAI: {},
}
#: a sampled answer draws from the model's whole distribution at the temperature, as the in-process
#: engine's do: the truncations a server may apply by default are switched off (llama.cpp samples
#: with top-k 40, top-p 0.95 and min-p 0.05 unless told otherwise)
FULL_DISTRIBUTION = {
    LLAMA_CPP: {"top_p": 1.0, "top_k": 0, "min_p": 0.0},
    VLLM: {"top_p": 1.0, "top_k": -1, "min_p": 0.0},
    OPENAI: {"top_p": 1.0},
}


class ServerError(ModelLoadError):
    """The server refused, failed or stopped answering (after the retries its budget allows)."""


@dataclass
class Completion:
    """One choice of a completion: its token ids, each one's log-probability and top-k
    alternatives ((id, logprob) pairs, the chosen token among them where it is in the top k), the
    text the server returned and why it stopped (``stop`` or ``length``)."""

    ids: list[int]
    logprobs: list[float]
    tops: list[list[tuple[int, float]]]
    text: str
    finish: str


def _masked(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def api_base(url: str) -> str:
    """The API's base URL with its ``/v1`` (``http://host:8000`` -> ``http://host:8000/v1``)."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class Client:
    """Requests to one served model: JSON over HTTP with the API key from the environment, bounded
    retries and timeouts (see the module's docstring)."""

    def __init__(self, spec, *, check: bool = False):
        self.served = spec.served
        self.base = api_base(self.served.url)
        self.where = f"the server of {spec.name!r} at {self.base}"
        self._local = threading.local()
        self.kind = OPENAI
        self.check = check  # a check before the run: one try, a short timeout
        #: set when a call of many requests has failed: the requests still running give up at once
        self.abandoned = threading.Event()
        #: a returned token (a string) as its id, where the server gives no ids (:func:`token_mapper`)
        self.to_id: Callable[[str], int | None] = _token_id

    @property
    def key(self) -> str | None:
        return os.environ.get(self.served.api_key_env) or None

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer to one request, retried as the module's docstring says."""
        import requests

        key = self.key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = (min(CHECK_TIMEOUT_S, self.served.timeout_s), CHECK_TIMEOUT_S if self.check else self.served.timeout_s)
        deadline = time.monotonic() + (0.0 if self.check else self.served.retry_s)
        delay, tries = BACKOFF_FIRST_S, 0
        while True:
            raise_if_stopped()
            if self.abandoned.is_set():
                raise ServerError(f"{self.where}: request abandoned (another request of the call failed)")
            tries += 1
            wait = None
            try:
                r = self._session().request(method, self.base + path, json=body, headers=headers, timeout=timeout)
            except requests.Timeout:
                why = f"no answer within {timeout[1]:.0f} s (timeout_s)"
            except requests.ConnectionError as e:
                why = f"no connection ({_reason(e)})"
            else:
                if r.status_code in (401, 403):
                    state = "is not set" if key is None else "holds a key it does not accept"
                    raise ServerError(f"{self.where} refused the request (HTTP {r.status_code}: {_message(r, key)}); "
                                      f"${self.served.api_key_env} {state}: set it to the server's API key")
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise ServerError(f"{self.where} answered {path} with something other than JSON "
                                          f"({_masked(r.text[:120], key)!r}); is the url an OpenAI-compatible API?") from None
                why = f"HTTP {r.status_code}: {_message(r, key)}"
                if r.status_code != 429 and r.status_code < 500:
                    raise ServerError(f"{self.where} rejected {path} ({why})")
                wait = _retry_after(r)
            # the server's Retry-After where it asks for longer than the backoff; never less (a
            # server saying "0" under load would otherwise be asked again at once, and again)
            pause = min(max(wait or 0.0, delay * (0.5 + random.random())), BACKOFF_MAX_S)
            if time.monotonic() + pause > deadline:
                spent = "" if self.check else f" after {tries} tries in {self.served.retry_s:g} s (retry_s)"
                raise ServerError(f"{self.where} did not answer {path}{spent}: {why}")
            log.debug("%s: %s; trying again in %.1f s", self.where, why, pause)
            time.sleep(pause)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def complete(self, prompt: Sequence[int], *, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
                 stop: Sequence[str] = (), top: int | None = None) -> Completion:
        """One completion of the token-id ``prompt`` with its tokens' log-probabilities."""
        answer = self.request("POST", "/completions", self.body(prompt, max_tokens=max_tokens, temperature=temperature,
                                                               seed=seed, stop=stop, top=top))
        try:
            return parse_choice(answer["choices"][0], self.to_id)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ServerError(f"{self.where} answered a completion without {e.args[0] if e.args else 'its fields'} "
                              "(OpenAI's completions API with logprobs is needed)") from None

    def body(self, prompt: Sequence[int], *, max_tokens: int, temperature: float = 0.0, seed: int | None = None,
             stop: Sequence[str] = (), top: int | None = None) -> dict:
        """A completions request: the token-id prompt, greedy or sampled, with logprobs."""
        body = {"model": self.served.model, "prompt": list(prompt), "max_tokens": max_tokens,
                "temperature": temperature, "logprobs": self.served.top_logprobs if top is None else top,
                **EXTRA_FIELDS[self.kind]}
        if stop:
            body["stop"] = list(stop)[:4]  # OpenAI's API takes at most four
        if temperature > 0:
            body.update(FULL_DISTRIBUTION[self.kind])
        if seed is not None:
            body["seed"] = seed
        return body

    def served_models(self) -> list[dict]:
        return list(self.request("GET", "/models").get("data") or [])


def _reason(error: Exception) -> str:
    """The innermost reason of a connection error, in a few words."""
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "Connection reset", "Remote end closed",
                   "timed out", "No route to host"):
        if marker in text:
            return marker.lower()
    return type(error).__name__


def _message(response, key: str | None) -> str:
    """The error message of a server's answer (OpenAI's ``{"error": {"message"}}``, FastAPI's
    ``{"detail"}``), masked and cut short."""
    try:
        data = response.json()
        err = data.get("error", data.get("detail", data)) if isinstance(data, dict) else data
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        text = response.text or response.reason or ""
    return _masked(" ".join(str(text).split())[:200], key)


def _retry_after(response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _token_id(token) -> int | None:
    """vLLM's ``token_id:1234`` strings (``return_tokens_as_token_ids``) as ids."""
    if isinstance(token, str) and token.startswith("token_id:"):
        try:
            return int(token[len("token_id:"):])
        except ValueError:
            return None
    return None


def token_mapper(tokenizer) -> Callable[[str], int | None]:
    """vLLM's ``token_id:N`` strings as ids, else a token string as the tokenizer's vocabulary
    holds it (OpenAI's legacy shape names tokens as ``convert_ids_to_tokens`` does); None where
    it is not in the vocabulary."""
    unknown = tokenizer.unk_token_id

    def to_id(token) -> int | None:
        found = _token_id(token)
        if found is not None or not isinstance(token, str):
            return found
        i = tokenizer.convert_tokens_to_ids(token)
        return i if isinstance(i, int) and i != unknown else None

    return to_id


def parse_choice(choice: dict, to_id: Callable[[str], int | None] = _token_id) -> Completion:
    """A completion's choice in either shape servers use: llama.cpp's (``logprobs.content``, as
    chat completions, token ids included) or OpenAI's legacy one (``tokens``, ``token_logprobs``,
    ``top_logprobs``), whose tokens are ids where vLLM is asked for them (``token_ids``,
    ``token_id:N``) and are otherwise mapped by ``to_id``. Raises KeyError naming what is missing."""
    lp = choice.get("logprobs")
    if not lp:
        raise KeyError("logprobs")
    text, finish = choice.get("text") or "", choice.get("finish_reason") or "length"
    if "content" in lp:  # llama.cpp
        entries = lp["content"] or []
        ids = [int(e["id"]) for e in entries]
        return Completion(ids, [float(e["logprob"]) for e in entries],
                          [[(int(t["id"]), float(t["logprob"])) for t in e.get("top_logprobs") or []] for e in entries],
                          text, finish)
    tokens, logprobs = lp.get("tokens"), lp.get("token_logprobs")
    if tokens is None or logprobs is None:
        raise KeyError("logprobs.token_logprobs")
    ids = choice.get("token_ids") or [to_id(t) for t in tokens]
    if any(i is None for i in ids) or len(ids) != len(tokens):
        raise ValueError("token ids for its tokens")
    tops = []
    for alts in lp.get("top_logprobs") or [None] * len(tokens):
        pairs = [(to_id(t), float(v)) for t, v in (alts or {}).items()]
        tops.append([(i, v) for i, v in pairs if i is not None])
    return Completion([int(i) for i in ids], [float(v) if v is not None else math.nan for v in logprobs], tops,
                      text, finish)


def top_k_entropy(tops: Sequence[tuple[int, float]]) -> float:
    """Entropy (nats) of a token's distribution seen through its top-k alternatives: theirs, with
    the mass outside them as one more outcome (a lower bound of the full entropy); NaN without any."""
    if not tops:
        return math.nan
    ps = [math.exp(v) for _, v in tops]
    rest = max(0.0, 1.0 - sum(ps))
    return -sum(p * math.log(p) for p in ps if p > 0) - (rest * math.log(rest) if rest > 0 else 0.0)


def sample_seed(seed: int, prompt: Sequence[int], k: int) -> int:
    """The server's seed of sample ``k`` of ``prompt`` under the run's ``seed`` (31 bits: every
    server takes it)."""
    blob = f"{seed}:{k}:" + ",".join(map(str, prompt))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:4], "little") & 0x7FFFFFFF


def server_problems(spec) -> list[str]:
    """What keeps ``spec``'s server from serving a run, asked before the run starts, each in one
    line with the way out: nothing answers, the API key is refused, the model is not among those it
    serves, or its completions carry no log-probabilities (G-NLL needs them)."""
    client = Client(spec, check=True)
    try:
        served = client.served_models()
    except ServerError as e:
        return [f"{e}; start the server (docs/serving.md) or fix the url of model {spec.name!r}"
                if "did not answer" in str(e) else str(e)]
    names = [str(m.get("id")) for m in served]
    if spec.served.model not in names:
        return [f"{client.where} serves {', '.join(names) or 'no model'}, not {spec.served.model!r}; set served_name "
                "in the model's registry entry to one of those"]
    client.kind = server_kind(served, spec.served.model)
    try:
        answer = client.request("POST", "/completions", client.body([0], max_tokens=1))
    except ServerError as e:
        return [f"{e}; uqflow asks completions for logprobs={spec.served.top_logprobs} (G-NLL needs them; a server "
                "that allows fewer alternatives takes a lower top_logprobs in the model's registry entry)"]
    choices = answer.get("choices") if isinstance(answer, dict) else None
    logprobs = choices[0].get("logprobs") if choices and isinstance(choices[0], dict) else None
    if not logprobs or not (logprobs.get("content") or any(v is not None for v in logprobs.get("token_logprobs") or ())):
        return [f"{client.where} returns no log-probabilities with its completions; G-NLL needs them "
                "(vLLM, SGLang and llama.cpp's llama-server return them)"]
    return []


def server_kind(models: Sequence[dict], name: str) -> str:
    """Which server this is (LLAMA_CPP, VLLM, else OPENAI), from its ``/v1/models`` entry."""
    entry = next((m for m in models if str(m.get("id")) == name), {})
    owner = str(entry.get("owned_by", "")).lower()
    return LLAMA_CPP if owner == "llamacpp" else VLLM if owner == "vllm" else OPENAI


#: what a served run's answers depend on beyond its configuration (its ``batch_dependence`` tag)
BATCH_DEPENDENCE = ("the server decodes requests side by side as they arrive, and its kernels may round the logits "
                    "differently with what shares a batch, so an answer may change with the server's load and "
                    "concurrency; the same configuration gives the same records only where the server computes alike")


class ServedEngine:
    """Greedy answers, samples and continuation log-probabilities from a served model (see the
    module's docstring); ``lm`` is a ``LoadedModel`` whose ``model`` is the :class:`Client`."""

    name = "openai"
    batch_size = 0  # the server schedules its own batches
    #: the server batches requests as they arrive; its kernels may round differently with the batch
    batch_invariant = False
    batch_dependence = BATCH_DEPENDENCE  # the run's tag of that name

    def __init__(self, lm, *, batch_size: int = 0, max_new_tokens: int = 50,
                 stop_sequences: Sequence[str] = STOP_SEQUENCES, **_):
        self.lm, self.client = lm, lm.model
        self.decode = decoder(lm.tokenizer)
        self.max_new_tokens = max_new_tokens
        self.stop_sequences = tuple(stop_sequences)
        eos = lm.tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        self.top_k = lm.spec.served.top_logprobs
        self.generation_seconds = 0.0
        self.passes = {"greedy": 0, "sampled": 0}
        self.tokens = {"greedy": 0, "sampled": 0}
        self.outside_top_k = 0  # continuation tokens not among the top k (p(True)'s bound used)
        self._count = threading.Lock()

    @property
    def tags(self) -> dict[str, str]:
        """Where the answers came from: the server's API base (never a key), its kind, the served
        name, the requests in flight and the k of token entropy."""
        served = self.lm.spec.served
        return {"served_url": self.client.base, "served_model": served.model, "server": self.client.kind,
                "served_concurrency": str(served.concurrency), "entropy_top_k": str(self.top_k)}

    @property
    def params(self) -> dict[str, str]:
        """What changes a served run's scores beyond its configuration: the k of token entropy."""
        return {"entropy_top_k": str(self.top_k)}

    # ------------------------------------------------------------------ the engine's interface

    def generate(self, prompts: Sequence[Sequence[int]], progress=None, *, shuffle: int = 0) -> list[Generation]:
        """Greedy answers (temperature 0), in the order given; ``shuffle`` has no meaning here (the
        server composes its own batches). ``progress`` hears of each answer with its tokens."""
        start = time.perf_counter()
        try:
            return self._map(prompts, lambda p: self._answer(p, "greedy", temperature=0.0), progress)
        finally:
            self.generation_seconds += time.perf_counter() - start

    def sample(self, prompts: Sequence[Sequence[int]], n: int, *, temperature: float = 1.0, seed: int = 0,
               progress=None) -> list[list[Generation]]:
        """``n`` sampled answers per prompt, one request each with its own seed (:func:`sample_seed`)."""
        if n < 1:
            return [[] for _ in prompts]
        jobs = [(p, k) for p in prompts for k in range(n)]
        flat = self._map(jobs, lambda job: self._answer(job[0], "sampled", temperature=temperature,
                                                        seed=sample_seed(seed, job[0], job[1])), progress)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def continuation_logprobs(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                              progress=None) -> list[float]:
        """log p(continuation | prompt), token by token from the next token's top-k alternatives
        (see the module's docstring); ``progress`` counts pairs."""
        return self._map(list(zip(prompts, continuations)), lambda pair: self._continuation(*pair), progress,
                         tokens=False)

    # ------------------------------------------------------------------ one request

    def _answer(self, prompt: Sequence[int], kind: str, *, temperature: float, seed: int | None = None) -> Generation:
        c = self.client.complete(prompt, max_tokens=self.max_new_tokens, temperature=temperature, seed=seed,
                                 stop=self.stop_sequences)
        with self._count:
            self.tokens[kind] += len(c.ids)
            self.passes[kind] += max(len(c.ids), 1)  # the prompt's prefill, then a pass per further token
        n, reason, dropped = align_answer(c.ids, self.decode, self.eos_ids, self.stop_sequences)
        if reason == "length" and c.finish == "stop":
            # the server stopped and left out what stopped it: a stop sequence's token (llama.cpp
            # drops it; the text it returned holds the part of it before the stop) or an EOS
            decoded = self.decode(c.ids)
            tail = c.text[len(decoded):] if c.text.startswith(decoded) else ""
            reason, dropped = ("stop_sequence", tail) if tail or self.client.kind == LLAMA_CPP else ("eos", "")
        return Generation(prompt_token_ids=list(prompt), token_ids=c.ids[:n], token_logprobs=c.logprobs[:n],
                          token_entropies=[top_k_entropy(t) for t in c.tops[:n]],
                          text=self.decode(c.ids[:n]).strip(), stop_reason=reason, dropped_text=dropped)

    def _continuation(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        total = 0.0
        for t, token in enumerate(continuation):
            c = self.client.complete([*prompt, *continuation[:t]], max_tokens=1, temperature=0.0,
                                     top=max(self.top_k, 1))
            first = c.tops[0] if c.tops else [(c.ids[0], c.logprobs[0])] if c.ids else []
            found = dict(first).get(token)
            if found is None:  # outside the top k: at most the k-th's probability, and at most what is left
                with self._count:
                    self.outside_top_k += 1
                rest = 1.0 - sum(math.exp(v) for _, v in first)
                found = min(min((v for _, v in first), default=0.0), math.log(rest) if rest > 0 else -math.inf)
            total += found
        return total

    def _map(self, jobs: Sequence, fn: Callable, progress, *, tokens: bool = True) -> list:
        """``fn`` over ``jobs``, ``concurrency`` at a time, results in order; the first failure (or a
        stop signal) ends the call: the requests not yet sent are dropped, those in flight give up
        at their next try. The workers are daemon threads (not ``concurrent.futures``' pool), so a
        request hanging on a server that stopped answering never keeps the process from exiting."""
        import queue

        reports = Reports(progress)
        results: list = [None] * len(jobs)
        todo: queue.SimpleQueue = queue.SimpleQueue()
        done: queue.SimpleQueue = queue.SimpleQueue()
        for item in enumerate(jobs):
            todo.put(item)
        client = self.client
        client.abandoned.clear()

        def work() -> None:
            while not client.abandoned.is_set():
                try:
                    i, job = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, fn(job), None))
                except BaseException as e:  # noqa: BLE001 - handed to the calling thread, which raises it
                    done.put((i, None, e))
                    return

        workers = [threading.Thread(target=work, daemon=True, name=f"uqflow-served-{k}")
                   for k in range(min(self.lm.spec.served.concurrency, len(jobs)))]
        for w in workers:
            w.start()
        try:
            for _ in range(len(jobs)):
                while True:
                    raise_if_stopped()
                    try:
                        i, out, error = done.get(timeout=0.5)
                        break
                    except queue.Empty:
                        continue
                if error is not None:
                    raise error
                results[i] = out
                if tokens:
                    reports.decoded(len(out.token_ids))
                reports.finished(1)
        except BaseException:
            client.abandoned.set()
            raise
        reports.flush()
        return results


def connect(spec):
    """A served model ready to answer: a ``LoadedModel`` whose ``model`` is the :class:`Client` (the
    kind of server known), with the model's tokenizer (prompts are built and answers decoded in
    this process) and the context the server serves where it says (llama.cpp's ``meta.n_ctx``,
    vLLM's ``max_model_len``), else the registry's."""
    import dataclasses

    from uqflow.models.loading import LoadedModel, load_tokenizer

    client = Client(spec)
    models = client.served_models()
    client.kind = server_kind(models, spec.served.model)
    entry = next((m for m in models if str(m.get("id")) == spec.served.model), None)
    if entry is None:
        raise ServerError(f"{client.where} does not serve {spec.served.model!r} (it serves "
                          f"{', '.join(str(m.get('id')) for m in models) or 'no model'})")
    served_context = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx")
    if isinstance(served_context, int) and served_context > 0:
        spec = dataclasses.replace(spec, context_length=min(served_context, spec.context_length or served_context))
    tokenizer = load_tokenizer(spec)
    client.to_id = token_mapper(tokenizer)
    return LoadedModel(spec, client, tokenizer, "server", backend=ServedEngine.name)


def agreement(reference: Sequence[Generation], served: Sequence[Generation]) -> dict[str, float]:
    """How a served engine's records agree with another engine's on the same prompts: the share of
    identical answers (same token ids), and where they are identical the per-token log-probability
    difference (median, 99th percentile, largest), G-NLL's (the sum over the answer; largest,
    median), in nats, and the rank correlation of G-NLL over those questions (Spearman)."""
    import numpy as np
    from scipy.stats import spearmanr

    same = [(a, b) for a, b in zip(reference, served) if a.token_ids == b.token_ids]
    per_token = np.array([abs(x - y) for a, b in same for x, y in zip(a.token_logprobs, b.token_logprobs)])
    g = np.array([(sum(a.token_logprobs), sum(b.token_logprobs)) for a, b in same]).reshape(-1, 2)
    diffs = np.abs(g[:, 0] - g[:, 1])
    nan = math.nan
    return {"n": float(len(reference)), "identical": len(same) / max(len(reference), 1),
            "token_median_diff": float(np.median(per_token)) if per_token.size else nan,
            "token_p99_diff": float(np.percentile(per_token, 99)) if per_token.size else nan,
            "token_max_diff": float(per_token.max()) if per_token.size else nan,
            "g_nll_max_diff": float(diffs.max()) if diffs.size else nan,
            "g_nll_median_diff": float(np.median(diffs)) if diffs.size else nan,
            "g_nll_spearman": float(spearmanr(g[:, 0], g[:, 1]).statistic) if len(g) > 2 else nan}
