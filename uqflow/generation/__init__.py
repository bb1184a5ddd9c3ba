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
    before the next model loads. ``served``: it answers from a model behind a server (a registry
    entry with ``served``), and only such models. ``server_problems(spec)``: what keeps the server of
    ``spec`` from serving a run (nothing answers, a refused key, no log-probabilities), asked before
    the run starts. Code outside this package asks these, never the backend's name."""

    load: Callable
    build: Callable[..., Engine]
    gpu_only: bool = False
    problems: Callable[[], list] = _no_problems
    own_batches: bool = False
    needs: Callable[[], list] = _no_problems
    in_process: bool = False
    unload: Callable | None = None
    served: bool = False
    server_problems: Callable[..., list] | None = None


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
                "'uqflow[vllm]'. Use backend=auto (the default) on this machine"]
    return []


def _unload_vllm(lm) -> None:
    if lm.model is not None:
        lm.model.llm = None  # vLLM frees its workers when the LLM object is collected


def _build_vllm(lm, **settings) -> Engine:
    engine = lm.model  # the VLLMEngine built at loading; vLLM schedules its own batches
    engine.max_new_tokens = settings.get("max_new_tokens", engine.max_new_tokens)
    return engine


def _load_served(spec, device: str):
    from uqflow.generation.served import connect

    return connect(spec)


def _build_served(lm, **settings) -> Engine:
    from uqflow.generation.served import ServedEngine

    return ServedEngine(lm, **settings)


def _served_problems(spec) -> list[str]:
    from uqflow.generation.served import server_problems

    return server_problems(spec)


#: backend name -> its engine: transformers (any device), vLLM in this process (GPU only), and any
#: OpenAI-compatible completions server (a served model)
ENGINES: Registry[Backend] = Registry("backend", UnknownChoice)
#: the engine of a model loaded in this process, which judges asking a registry model use
IN_PROCESS = "hf"
ENGINES.add(IN_PROCESS, Backend(_load_hf, _build_hf, problems=_hf_problems, own_batches=True, in_process=True))
ENGINES.add("vllm", Backend(_load_vllm, _build_vllm, gpu_only=True, needs=_vllm_needs, unload=_unload_vllm))
ENGINES.add("openai", Backend(_load_served, _build_served, served=True, server_problems=_served_problems))
#: the backend setting that leaves the choice to the model: its server's engine for a served model,
#: the in-process engine otherwise (the default)
AUTO = "auto"


def known_backend(backend: str) -> bool:
    return backend == AUTO or backend in ENGINES


def unknown_backend_message(backend: str) -> str:
    """The error for a backend setting that names no engine, listing :data:`AUTO` with the engines."""
    return ENGINES.unknown_message(backend).replace("Known: ", f"Known: {AUTO}, ", 1)


def backend_for(backend: str, spec) -> str:
    """The engine a run of ``spec`` uses under the ``backend`` setting (:data:`AUTO` resolved);
    ConfigError where the two do not go together (a served model with an in-process engine, or the
    served engine with a model that is not served)."""
    if backend == AUTO:
        return next(name for name, kind in ENGINES.items() if kind.served) if spec.served else IN_PROCESS
    kind = ENGINES.get(backend)
    if kind.served and spec.served is None:
        raise ConfigError(f"backend {backend!r} answers from a server, and model {spec.name!r} is not served; give "
                          "the model's url in a registry file (docs/serving.md), or use backend=auto")
    if spec.served is not None and not kind.served:
        raise ConfigError(f"model {spec.name!r} is served at {spec.served.url}, and backend {backend!r} loads models "
                          "in this process; use backend=auto (the default)")
    return backend


def engine_of(backend: str, spec) -> Backend:
    """The declaration of the engine a run of ``spec`` uses (:func:`backend_for`)."""
    return ENGINES.get(backend_for(backend, spec))


def load_for(spec, device: str = "auto", backend: str = AUTO):
    """The model ``spec`` loaded for ``backend``: its transformers weights for ``hf``, a vLLM
    engine (GPU only) for ``vllm``, a client of its server for a served model."""
    return engine_of(backend, spec).load(spec, device)


def server_problems(backend: str, spec) -> list[str]:
    """What keeps a served model's server from serving a run (asked before it starts); nothing for
    a model loaded in this process."""
    kind = engine_of(backend, spec)
    return kind.server_problems(spec) if kind.server_problems is not None else []


def engine_problems(backend: str) -> list:
    """What is wrong with ``backend``'s settings from the environment (before a model loads)."""
    return [] if backend == AUTO else ENGINES.get(backend).problems()


def engine_needs(backend: str) -> list[str]:
    """What this machine lacks to run ``backend`` at all (before a model loads)."""
    return [] if backend == AUTO else ENGINES.get(backend).needs()


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
    """The engine called ``backend`` (:data:`AUTO`: the model's own) over the loaded model ``lm``."""
    backend = backend_for(backend, lm.spec)
    if backend != lm.backend:
        raise ConfigError(f"backend {backend!r} needs the model loaded for it (it was loaded for {lm.backend!r})")
    return ENGINES.get(backend).build(lm, **settings)


__all__ = ["AUTO", "ENGINES", "IN_PROCESS", "Backend", "Engine", "Generation", "align_answer", "backend_for",
           "engine_needs", "engine_of", "engine_problems", "known_backend", "load_for", "make_engine",
           "reusable_in_process", "server_problems", "unknown_backend_message", "unload"]
