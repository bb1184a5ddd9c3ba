"""Generation engines: one greedy answer per prompt, with per-token statistics."""

from uqflow.generation.base import Engine, Generation, align_answer

ENGINES = ("hf", "vllm")


def load_for(spec, device: str = "auto", backend: str = "hf"):
    """The model ``spec`` loaded for ``backend``: its transformers weights for ``hf``, a vLLM
    engine (GPU only) for ``vllm``."""
    from uqflow.models.loading import LoadedModel, ensure_converted, load_model

    if backend != "vllm":
        return load_model(spec, device)
    from uqflow.generation.vllm_engine import VLLMEngine, require_vllm

    require_vllm()
    engine = VLLMEngine(spec, source=str(ensure_converted(spec)) if spec.bundled else spec.source)
    return LoadedModel(spec, engine, engine.tokenizer, "cuda", backend="vllm")


def make_engine(backend: str, lm, **kwargs) -> Engine:
    """The engine called ``backend`` over the loaded model ``lm``."""
    from uqflow.errors import ConfigError

    if backend not in ENGINES:
        raise ConfigError(f"unknown backend {backend!r}. Known: {', '.join(ENGINES)}")
    if backend != lm.backend:
        raise ConfigError(f"backend {backend!r} needs the model loaded for it (it was loaded for {lm.backend!r})")
    if backend == "vllm":
        engine = lm.model  # the VLLMEngine built by load_model; vLLM schedules its own batches
        engine.max_new_tokens = kwargs.get("max_new_tokens", engine.max_new_tokens)
        return engine
    from uqflow.generation.hf import HFEngine

    return HFEngine(lm, **kwargs)


__all__ = ["ENGINES", "Engine", "Generation", "align_answer", "load_for", "make_engine"]
