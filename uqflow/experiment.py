"""One model x dataset run, end to end: examples -> prompts -> generation -> scores -> MLflow."""

from __future__ import annotations

import functools
import logging
import platform
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uqflow import tracking
from uqflow.config import RunConfig
from uqflow.data import LoadedDataset, load_dataset
from uqflow.data.examples import Example
from uqflow.errors import ConfigError
from uqflow.generation import make_engine
from uqflow.models import LoadedModel, ModelSpec, get_model, load_model, unload
from uqflow.prompts import build_prompts, draw_few_shot
from uqflow.scoring.correctness import f1_correct, max_f1
from uqflow.scoring.evaluation import auroc_with_ci
from uqflow.scoring.relevance import load_similarity, token_relevance
from uqflow.scoring.uncertainty import SCORES, score_row

log = logging.getLogger(__name__)

#: the scores whose AUROC is reported, in table order
REPORTED_SCORES = tuple(SCORES)


@dataclass
class RunResult:
    """What one run produced: its MLflow id, metrics and the per-example table."""

    run_id: str
    config: RunConfig
    metrics: dict[str, float]
    frame: Any  # pandas.DataFrame, one row per example (the generations.parquet artifact)
    notes: list[str] = field(default_factory=list)


def select_examples(ds: LoadedDataset, cfg: RunConfig) -> tuple[list[Example], list[str]]:
    """The evaluated questions: answerable ones only if asked, then ``num_samples`` drawn with the seed."""
    notes = []
    pool = ds.examples
    if cfg.answerable_only:
        pool = [ex for ex in pool if ex.answerable]
        if len(pool) < len(ds.examples):
            notes.append(f"{len(ds.examples) - len(pool)} unanswerable questions left out (answerable_only)")
    if not pool:
        raise ConfigError(f"dataset {ds.name!r} has no answerable questions; set answerable_only=false")
    if cfg.num_samples >= len(pool):
        if cfg.num_samples > len(pool):
            notes.append(f"num_samples={cfg.num_samples} but dataset {ds.name!r} has {len(pool)} questions: running on all {len(pool)}")
        return list(pool), notes
    return random.Random(cfg.seed).sample(pool, cfg.num_samples), notes


@functools.lru_cache(maxsize=2)
def _similarity(name: str, device: str):
    return load_similarity(name, device)


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_tags(cfg: RunConfig, spec: ModelSpec, ds: LoadedDataset) -> dict[str, Any]:
    import torch
    import transformers

    from uqflow import __version__

    return {
        "family": spec.family, "size_b": spec.size_b, "quantization": spec.quantization,
        "instruct": str(spec.instruct).lower(), "model": spec.name, "dataset": cfg.dataset,
        "config_hash": cfg.hash(), "dataset_fingerprint": ds.fingerprint,
        "prompt_template_hash": cfg.prompt_options.template_hash(),
        "uqflow_version": __version__, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "python_version": platform.python_version(),
    }


def resolve(cfg: RunConfig) -> tuple[ModelSpec, LoadedDataset]:
    """Check names and load the dataset before any run starts, so a typo creates no run."""
    return get_model(cfg.model, cfg.model_registry or None), load_dataset(cfg.dataset)


def run_experiment(cfg: RunConfig, lm: LoadedModel | None = None,
                   progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run ``cfg`` and log it to MLflow. Pass ``lm`` to reuse an already loaded model."""
    spec, ds = resolve(cfg)
    examples, notes = select_examples(ds, cfg)
    for n in notes:
        log.warning(n)
    t0 = time.perf_counter()
    with tracking.tracked_run(f"{cfg.model}__{cfg.dataset}", run_tags(cfg, spec, ds)) as run:
        tracking.log_params(cfg.to_dict())
        own = lm is None
        if own:
            lm = load_model(spec, cfg.device, cfg.backend)
        try:
            frame, metrics, skip_notes = _evaluate(cfg, lm, ds, examples, progress)
        finally:
            if own:
                unload(lm)
        notes += skip_notes
        metrics["run_seconds"] = time.perf_counter() - t0
        tracking.log_metrics(metrics)
        tracking.log_frame(frame)
        if notes:
            tracking.log_text("\n".join(notes) + "\n", "notes.txt")
        return RunResult(run.info.run_id, cfg, metrics, frame, notes)


def _evaluate(cfg: RunConfig, lm: LoadedModel, ds: LoadedDataset, examples: Sequence[Example],
              progress: Callable[[int, int], None] | None):
    import pandas as pd

    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, skipped = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct,
                                     opts=cfg.prompt_options, max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
    notes = [f"skipped {ex.id}: {why}" for ex, why in skipped]
    if not prompts:
        raise ConfigError("no prompt fits the model's context; lower num_few_shot or max_new_tokens")
    engine = make_engine(cfg.backend, lm, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress(done, len(prompts))

    gens = engine.generate([p.token_ids for p in prompts], progress=step)
    sim = _similarity(cfg.similarity, "cuda" if lm.device.startswith("cuda") else "cpu")
    t_rel = time.perf_counter()
    relevance = token_relevance([p.example.question for p in prompts], [g.token_ids for g in gens],
                                engine._decode, sim)  # the engine's decode: same text as the stored answers
    relevance_seconds = time.perf_counter() - t_rel

    rows = []
    for p, g, rel in zip(prompts, gens, relevance):
        ex = p.example
        row = {
            "example_id": ex.id, "question": ex.question, "context": ex.context, "prompt": p.text,
            "prompt_token_ids": p.token_ids, "num_shots": p.num_shots, "answer": g.text,
            "token_ids": g.token_ids, "token_logprobs": g.token_logprobs, "token_entropies": g.token_entropies,
            "relevance": rel, "stop_reason": g.stop_reason, "dropped_text": g.dropped_text,
            "references": list(ex.references), "answerable": ex.answerable,
        }
        row["f1"] = max_f1(g.text, ex.references)
        row["correct"] = f1_correct(g.text, ex.references, cfg.correctness_threshold)
        row.update(score_row(row))
        rows.append(row)
    frame = pd.DataFrame(rows)

    metrics: dict[str, float] = {
        "n": len(frame), "n_skipped": len(skipped), "accuracy": float(frame["correct"].mean()),
        "mean_answer_tokens": float(frame["token_ids"].map(len).mean()),
        "generation_seconds": engine.generation_seconds, "relevance_seconds": relevance_seconds,
        "questions_per_second": len(frame) / max(engine.generation_seconds, 1e-9),
        "peak_memory_mb": _peak_memory_mb(lm.device),
    }
    for name in REPORTED_SCORES:
        r = auroc_with_ci(frame["correct"], frame[name], n_resamples=cfg.n_bootstrap, seed=cfg.seed)
        metrics[f"auroc_{name}"] = r.auroc
        metrics[f"auroc_{name}_ci_low"] = r.ci_low
        metrics[f"auroc_{name}_ci_high"] = r.ci_high
    return frame, metrics, notes


def run_many(configs: Sequence[RunConfig], progress=None) -> list[RunResult]:
    """Run several configurations in one process, loading each model once for all its datasets and
    freeing it before the next."""
    specs = [resolve(cfg)[0] for cfg in configs]  # fail on any bad name before the first run starts
    results = []
    by_model: dict[tuple[ModelSpec, str, str], list[RunConfig]] = {}
    for spec, cfg in zip(specs, configs):
        by_model.setdefault((spec, cfg.device, cfg.backend), []).append(cfg)
    for (spec, device, backend), cfgs in by_model.items():
        lm = load_model(spec, device, backend)
        try:
            for cfg in cfgs:
                results.append(run_experiment(cfg, lm=lm, progress=progress))
        finally:
            unload(lm)
    return results
