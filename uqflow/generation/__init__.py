"""Generation engines: one greedy answer per prompt, with per-token statistics."""

from uqflow.generation.base import Generation, align_answer

ENGINES = ("hf", "vllm")


def make_engine(backend: str, lm, **kwargs):
    """The engine called ``backend`` over the loaded model ``lm``."""
    from uqflow.errors import ConfigError

    if backend == "hf":
        from uqflow.generation.hf import HFEngine

        return HFEngine(lm, **kwargs)
    raise ConfigError(f"unknown backend {backend!r}. Known: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Generation", "align_answer", "make_engine"]
