"""The model registry, user registry files, and the bundled models' conversion cache."""

import math

import pytest

from uqflow.errors import ModelLoadError, ModelRegistryError, UnknownModel
from uqflow.models import MODELS, get_model, load_registry_file
from uqflow.models.loading import _quantization_config

STUDY = ["Llama-3.2-1B", "Llama-3-8B-8bit", "Qwen2.5-1.5B", "Qwen2.5-7B-8bit", "Mistral-7B-v0.3-8bit",
         "Mistral-7B-Instruct-v0.3-8bit", "Llama-3.1-70B-Instruct-4bit", "Qwen2.5-72B-4bit",
         "Mixtral-8x7B-Instruct-v0.1-4bit", "SmolLM2-135M-Instruct", "Gemma-3-270M"]


@pytest.mark.parametrize("name", MODELS.names())
def test_every_entry_is_consistent(name):
    spec = MODELS.get(name)
    assert spec.name == name and spec.size_b > 0 and spec.family
    suffix = name.rsplit("-", 1)[-1]
    if suffix in ("8bit", "4bit"):
        assert spec.quantization == suffix
    elif spec.bundled:  # the GGUF quantization type, as the file name says
        assert spec.quantization.startswith("gguf-") and spec.quantization[5:] in spec.gguf_file.lower()
    else:
        assert spec.quantization == "none"
    assert spec.bundled == (spec.gguf_file is not None)
    assert not spec.trust_remote_code


def test_study_models_registered():
    assert set(STUDY) <= set(MODELS.names())
    assert MODELS.get("Mistral-7B-Instruct-v0.3-8bit").source == "mistralai/Mistral-7B-Instruct-v0.3"
    assert MODELS.get("Llama-3-8B-8bit").source == "meta-llama/Meta-Llama-3-8B"


def test_quantized_models_load_on_a_cpu_and_need_bitsandbytes(monkeypatch):
    """bitsandbytes (a dependency) quantizes on a CPU as on a GPU: no GPU is asked for; without it,
    or with a release whose kernels are CUDA-only, the way out is said."""
    import importlib.metadata

    from uqflow.models import loading

    q8 = _quantization_config(MODELS.get("Qwen2.5-7B-8bit"), "cpu")
    q4 = _quantization_config(MODELS.get("SmolLM2-135M-Instruct-4bit"), "cpu")
    assert q8.load_in_8bit and q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4"
    assert _quantization_config(MODELS.get("Qwen2.5-1.5B"), "cpu") is None
    for name in ("Qwen2.5-7B-8bit", "SmolLM2-135M-Instruct-8bit", "Gemma-3-270M-8bit"):
        assert not [p for p in loading.unavailable(MODELS.get(name), "cpu") if "bitsandbytes" in p or "GPU" in p]

    real = importlib.metadata.version
    installed = {"bitsandbytes": None}

    def version(dist):
        if dist == "bitsandbytes":
            if installed["bitsandbytes"] is None:
                raise importlib.metadata.PackageNotFoundError(dist)
            return installed["bitsandbytes"]
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    spec = MODELS.get("SmolLM2-135M-Instruct-8bit")
    [problem] = [p for p in loading.unavailable(spec, "cpu") if "bitsandbytes" in p]
    assert "needs bitsandbytes" in problem and "pip install 'bitsandbytes>=" in problem
    with pytest.raises(ModelLoadError, match="needs bitsandbytes"):
        _quantization_config(spec, "cpu")
    installed["bitsandbytes"] = "0.45.5"  # CUDA-only kernels: fine on a GPU, not on a CPU
    [problem] = [p for p in loading.unavailable(spec, "cpu") if "bitsandbytes" in p]
    assert "needs bitsandbytes>=0.49 (installed: 0.45.5" in problem and "pip install -U" in problem
    assert loading._bitsandbytes_problem(spec, "cuda") is None


def test_bundled_quantized_variants_share_their_base_models_weights():
    """The -8bit/-4bit variants of a bundled model read its GGUF file, and bitsandbytes quantizes the
    same de-quantized copy (one conversion cached for all of them)."""
    from uqflow.models.loading import batch_dependence, converted_dir

    for name, base in [("SmolLM2-135M-Instruct-8bit", "SmolLM2-135M-Instruct"),
                       ("SmolLM2-135M-Instruct-4bit", "SmolLM2-135M-Instruct"), ("Gemma-3-270M-8bit", "Gemma-3-270M")]:
        spec, b = MODELS.get(name), MODELS.get(base)
        assert (spec.source, spec.gguf_file, spec.family, spec.size_b, spec.instruct, spec.context_length) == \
               (b.source, b.gguf_file, b.family, b.size_b, b.instruct, b.context_length)
        assert spec.quantization == name[-4:] and spec.bundled
        assert converted_dir(spec) == converted_dir(b)
    # bitsandbytes' models are not batch-invariant, and their runs say so
    assert batch_dependence(MODELS.get("SmolLM2-135M-Instruct-8bit")).startswith("LLM.int8 (8bit): outlier columns")
    assert batch_dependence(MODELS.get("Qwen2.5-72B-4bit")).startswith("NF4 (4bit): bf16")
    assert "batch_size=32" in batch_dependence(MODELS.get("Llama-3-8B-8bit"), 32)
    assert "batch_size=0, i.e. 64 on every device" in batch_dependence(MODELS.get("Gemma-3-270M-8bit"))
    for name in ("SmolLM2-135M-Instruct", "Gemma-3-270M", "Llama-3.2-1B"):
        assert batch_dependence(MODELS.get(name)) is None


def test_registry_file_adds_models(tmp_path, monkeypatch):
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  - {name: Phi-mini, source: microsoft/Phi-3.5-mini-instruct, family: Phi,"
                 " size_b: 3.8, instruct: true, quantization: 8bit}\n")
    spec = get_model("Phi-mini", str(f))
    assert (spec.family, spec.size_b, spec.instruct, spec.quantization) == ("Phi", 3.8, True, "8bit")
    monkeypatch.setenv("UQFLOW_MODEL_REGISTRY", str(f))
    assert get_model("Phi-mini").source == "microsoft/Phi-3.5-mini-instruct"
    assert get_model("Gemma-3-270M").family == "Gemma"


@pytest.mark.parametrize("text,message", [
    ("models: 3\n", "expected a list of models"),
    ("models:\n  - {name: X, source: org/s, family: F, instruct: true}\n", "missing field(s) size_b"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: 0, instruct: true}\n", "size_b must be a positive"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: -2, instruct: true}\n", "size_b must be a positive"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: big, instruct: true}\n", "size_b must be of type number"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: yes please}\n", "instruct must be of type bool"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: true, quantization: 3bit}\n", "quantization must be one of"),
    ("models:\n  - {name: X, source: org/s, family: F, size_b: 1, instruct: true, code: 'import os'}\n", "unknown field(s) code"),
    ("models:\n  - {name: Gemma-3-270M, source: org/s, family: F, size_b: 1, instruct: true}\n", "clash with built-in"),
    ("models: [unclosed\n", "not valid YAML"),
    ("models:\n  - !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
])
def test_bad_registry_files(tmp_path, text, message):
    f = tmp_path / "models.yaml"
    f.write_text(text)
    with pytest.raises(ModelRegistryError) as err:
        load_registry_file(f)
    assert message in str(err.value)


def test_missing_registry_file_and_unknown_model(tmp_path):
    with pytest.raises(ModelRegistryError, match="does not exist"):
        get_model("X", str(tmp_path / "none.yaml"))
    with pytest.raises(UnknownModel, match="Did you mean 'Gemma-3-270M'"):
        get_model("gemma")


def test_local_model_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    spec = get_model(str(tmp_path))
    assert spec.source == str(tmp_path) and spec.family == "local" and math.isnan(spec.size_b)


@pytest.mark.slow
def test_cached_conversion_equals_gguf_load(smollm):
    """The cached safetensors copy gives the same logits as de-quantizing the GGUF file again."""
    import torch
    from transformers import AutoModelForCausalLM

    from uqflow.models.loading import bundled_gguf

    gguf = bundled_gguf(smollm.spec)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    ids = smollm.tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, smollm.model(ids).logits)
