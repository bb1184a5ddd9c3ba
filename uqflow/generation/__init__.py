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
    can be answered again in other batch compositions (the ``batch_compositions`` spread).
    ``needs()``: what this machine lacks to run the engine at all (a package), as messages, found
    before a model loads. ``in_process``: its loaded model is transformers weights in this process,
    which a judge asking the same model can use as they are. ``unload(lm)``: frees what it holds
    before the next model loads. Code outside this package asks these, never the backend's name."""

    load: Callable
    build: Callable[..., Engine]
    gpu_only: bool = False
    problems: Callable[[], list] = _no_problems
    own_batches: bool = False
    needs: Callable[[], list] = _no_problems
    in_process: bool = False
    unload: Callable | None = None


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
    import dataclasses

    from uqflow.generation.vllm_engine import VLLMEngine, require_vllm
    from uqflow.models.loading import LoadedModel, ensure_converted

    require_vllm()
    engine = VLLMEngine(spec, source=str(ensure_converted(spec)) if spec.bundled else spec.source)
    if not spec.context_length:  # the context vLLM serves, read once the engine exists
        spec = dataclasses.replace(spec, context_length=engine.context_length)
    return LoadedModel(spec, engine, engine.tokenizer, "cuda", backend="vllm")


def _vllm_needs() -> list[str]:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return ["backend 'vllm' needs the vllm package, which runs on CUDA GPUs only: pip install "
                "'uqflow[vllm]'. Use backend=hf (the default) on this machine"]
    return []


def _unload_vllm(lm) -> None:
    if lm.model is not None:
        lm.model.llm = None  # vLLM frees its workers when the LLM object is collected


def _build_vllm(lm, **settings) -> Engine:
    engine = lm.model  # the VLLMEngine built at loading; vLLM schedules its own batches
    engine.max_new_tokens = settings.get("max_new_tokens", engine.max_new_tokens)
    return engine


#: backend name -> its engine: transformers (any device) and vLLM (GPU only)
ENGINES: Registry[Backend] = Registry("backend", UnknownChoice)
#: the engine of a model loaded in this process, which judges asking a registry model use
IN_PROCESS = "hf"
ENGINES.add(IN_PROCESS, Backend(_load_hf, _build_hf, problems=_hf_problems, own_batches=True, in_process=True))
ENGINES.add("vllm", Backend(_load_vllm, _build_vllm, gpu_only=True, needs=_vllm_needs, unload=_unload_vllm))


def load_for(spec, device: str = "auto", backend: str = "hf"):
    """The model ``spec`` loaded for ``backend``: its transformers weights for ``hf``, a vLLM
    engine (GPU only) for ``vllm``."""
    return ENGINES.get(backend).load(spec, device)


def engine_problems(backend: str) -> list:
    """What is wrong with ``backend``'s settings from the environment (before a model loads)."""
    return ENGINES.get(backend).problems()


def engine_needs(backend: str) -> list[str]:
    """What this machine lacks to run ``backend`` at all (before a model loads)."""
    return ENGINES.get(backend).needs()


def unload(lm) -> None:
    """Free a loaded model (``load_for``'s) before the next one loads: what its engine holds, then
    the weights and the GPU cache."""
    from uqflow.models.loading import unload as free

    kind = ENGINES.get(lm.backend) if lm is not None and lm.backend in ENGINES else None
    if kind is not None and kind.unload is not None:
        kind.unload(lm)
    free(lm)


def reusable_in_process(lm) -> bool:
    """Whether ``lm`` holds transformers weights in this process that the in-process engine
    (:data:`IN_PROCESS`) can run, as a judge asking the same model does."""
    return lm is not None and lm.backend in ENGINES and ENGINES.get(lm.backend).in_process


def make_engine(backend: str, lm, **settings) -> Engine:
    """The engine called ``backend`` over the loaded model ``lm``."""
    kind = ENGINES.get(backend)
    if backend != lm.backend:
        raise ConfigError(f"backend {backend!r} needs the model loaded for it (it was loaded for {lm.backend!r})")
    return kind.build(lm, **settings)


__all__ = ["ENGINES", "IN_PROCESS", "Backend", "Engine", "Generation", "align_answer", "engine_needs", "engine_problems",
           "load_for", "make_engine", "reusable_in_process", "unload"]
