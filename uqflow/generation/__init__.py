"""Generation engines: one greedy answer per prompt, with per-token statistics.

An engine is registered in :data:`ENGINES` by its ``backend`` name with how it loads a model and
how it is built over the loaded model; runs, judges and benchmarks go through :func:`load_for`
and :func:`make_engine`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from uqflow.errors import ConfigError, UnknownChoice
from uqflow.generation.base import Engine, Generation, align_answer
from uqflow.registry import Registry


def _no_problems() -> list:
    return []


@dataclass(frozen=True)
class Backend:
    """A generation engine: ``load(spec, device)`` gives the loaded model it runs over (a
    ``models.loading.LoadedModel`` whose ``backend`` is this one's name), ``build(lm, **settings)``
    the engine itself (batch size, answer length, stop sequences). ``gpu_only``: it runs on a GPU
    whatever the ``device`` setting says. ``problems()``: what is wrong with its settings from the
    environment, found before a model loads. ``own_batches``: it forms the batches itself, so a
    model whose answers depend on its batch (bitsandbytes' 8-bit and 4-bit) is noted as such and
    can be answered again in other batch compositions (the ``batch_compositions`` spread)."""

    load: Callable
    build: Callable[..., Engine]
    gpu_only: bool = False
    problems: Callable[[], list] = _no_problems
    own_batches: bool = False


def _load_hf(spec, device: str):
    from uqflow.models.loading import load_model

    return load_model(spec, device)


def _hf_problems() -> list:
    from uqflow.generation.hf import settings_problems

    return settings_problems()  # the decode layout and attention kernels (UQFLOW_LAYOUT, UQFLOW_SDPA)


def _build_hf(lm, **settings) -> Engine:
    from uqflow.generation.hf import HFEngine

    return HFEngine(lm, **settings)


def _load_vllm(spec, device: str):
    from uqflow.generation.vllm_engine import VLLMEngine, require_vllm
    from uqflow.models.loading import LoadedModel, ensure_converted

    require_vllm()
    engine = VLLMEngine(spec, source=str(ensure_converted(spec)) if spec.bundled else spec.source)
    return LoadedModel(spec, engine, engine.tokenizer, "cuda", backend="vllm")


def _build_vllm(lm, **settings) -> Engine:
    engine = lm.model  # the VLLMEngine built at loading; vLLM schedules its own batches
    engine.max_new_tokens = settings.get("max_new_tokens", engine.max_new_tokens)
    return engine


#: backend name -> its engine: transformers (any device) and vLLM (GPU only)
ENGINES: Registry[Backend] = Registry("backend", UnknownChoice)
ENGINES.add("hf", Backend(_load_hf, _build_hf, problems=_hf_problems, own_batches=True))
ENGINES.add("vllm", Backend(_load_vllm, _build_vllm, gpu_only=True))


def load_for(spec, device: str = "auto", backend: str = "hf"):
    """The model ``spec`` loaded for ``backend``: its transformers weights for ``hf``, a vLLM
    engine (GPU only) for ``vllm``."""
    return ENGINES.get(backend).load(spec, device)


def engine_problems(backend: str) -> list:
    """What is wrong with ``backend``'s settings from the environment (before a model loads)."""
    return ENGINES.get(backend).problems()


def make_engine(backend: str, lm, **settings) -> Engine:
    """The engine called ``backend`` over the loaded model ``lm``."""
    kind = ENGINES.get(backend)
    if backend != lm.backend:
        raise ConfigError(f"backend {backend!r} needs the model loaded for it (it was loaded for {lm.backend!r})")
    return kind.build(lm, **settings)


__all__ = ["ENGINES", "Backend", "Engine", "Generation", "align_answer", "engine_problems", "load_for", "make_engine"]
