"""Rescoring: a FINISHED run's stored generations judged and scored again, without generating.

``uqflow rescore RUN --set correctness=em`` reads the run's ``generations.parquet``, checks it as
aggregation does (types, then every field against its row and its run: scoring/consistency.py),
recomputes relevance, correctness, the sampled answers' clusters and every score, and logs the
result as a new run tagged with its source. Only what can be recomputed from the stored rows may
change (``RESCORE_FIELDS``); a setting that would change nothing for this run (the entailment judge
of a run that sampled no answers) is refused rather than recorded as if it had been applied.

Only FINISHED runs that are not deleted are rescored. The new run goes into its source's experiment
(unless another is named), and names both its source (``uqflow.source_run``) and the first run of
the chain (``uqflow.origin_run``): a rescore of a rescore names the run that generated the answers.
"""

from __future__ import annotations

import time

from uqflow import tracking
from uqflow.artifact import ArtifactError
from uqflow.config import SAMPLING_FIELDS, RunConfig
from uqflow.errors import ConfigError, UqflowError, clip
from uqflow.checks import entailment_problems_of, name_problems
from uqflow.experiment import RunResult, _log_outputs, _score, run_identity, run_name, run_params
from uqflow.generation.base import decoder
from uqflow.models import get_model
from uqflow.scoring import pipeline
from uqflow.scoring.consistency import check_checksum, check_run_table, num_generations
from uqflow.scoring.cost import Cost, parts_from_metrics

#: the settings a rescore may change: those that act on stored rows only
RESCORE_FIELDS = ("correctness", "correctness_threshold", "judges", "similarity", "n_bootstrap", "answerable_only", "abstention",
                  "entailment", "strict_entailment", "pair_similarity")
#: the generations columns that rescoring reads
RESCORE_COLUMNS = ("example_id", "question", "answer", "token_ids", "token_logprobs", "token_entropies",
                   "references", "answerable")


class RescoreError(UqflowError):
    """A run that cannot be rescored: not finished, or settings that do not apply to it."""


def _source(run_id: str):
    """The run to rescore, refused unless it is a FINISHED uqflow model x dataset run: a failed or
    killed run's table is partial, and rescoring would turn it into a FINISHED one."""
    source = tracking.get_run(run_id)
    if source.info.lifecycle_stage == "deleted":
        raise RescoreError(f"run {run_id} is deleted; restore it first (`mlflow runs restore --run-id {run_id}`, "
                           "or the MLflow UI's trash) to rescore it")
    status = source.info.status
    if status != "FINISHED":
        why = source.data.tags.get(tracking.ERROR_TAG)
        raise RescoreError(f"run {run_id} is {status}" + (f" ({clip(why, 200)})" if why else "")
                           + "; only FINISHED runs can be rescored: run its configuration again "
                           "(`uqflow run`, or `uqflow grid` for a grid's cell)")
    if tracking.VERSION_TAG not in source.data.tags or "model" not in source.data.tags:
        raise RescoreError(f"run {run_id} is not a uqflow model x dataset run (no {tracking.VERSION_TAG} or model tag)")
    return source


def _check_overrides(run_id: str, overrides: dict[str, str], params: dict[str, str]) -> None:
    sampling = sorted(set(overrides) & set(SAMPLING_FIELDS))
    if sampling and not num_generations(params):
        raise RescoreError(f"run {run_id} sampled no answers (num_generations=0), so {', '.join(sampling)} would "
                           "change nothing; leave it out, or run the configuration again with "
                           "--set num_generations=N (N >= 2) to sample")


def _check_no_op(run_id: str, overrides: dict[str, str], base: RunConfig, cfg: RunConfig) -> None:
    """Refuse a setting that cannot change anything with the judge it would act with: strict
    equivalence under the embedding judge, which labels a pair entailment both ways or neutral both
    ways, so strict and lenient equivalence give the same clusters (scoring/semantic.py)."""
    from uqflow.scoring.semantic import parse_embedding_name

    if ("strict_entailment" in overrides and cfg.strict_entailment != base.strict_entailment
            and cfg.entailment == base.entailment and parse_embedding_name(cfg.entailment)):
        raise RescoreError(f"run {run_id} clustered its samples with the embedding judge {cfg.entailment}, which calls "
                           "a pair the same both ways or neither, so strict_entailment changes no cluster; set "
                           "entailment=deberta-large-mnli or llm:<model> with it, or leave it out")


def _experiment_id(source, experiment: str | None) -> str:
    """Where the rescored run goes: the experiment named ``experiment`` (made if missing), else its
    source's, refused if that experiment was deleted."""
    import mlflow

    if experiment:
        return mlflow.set_experiment(experiment).experiment_id
    exp = mlflow.MlflowClient().get_experiment(source.info.experiment_id)
    if exp.lifecycle_stage == "deleted":
        raise RescoreError(f"run {source.info.run_id}'s experiment {exp.name!r} is deleted; restore it, or name "
                           "another with --experiment")
    return exp.experiment_id


def origin_of(source) -> str:
    """The first run of ``source``'s chain of rescores: the run that generated its answers."""
    tags = source.data.tags
    return tags.get(tracking.ORIGIN_RUN_TAG) or tags.get(tracking.SOURCE_RUN_TAG) or source.info.run_id


def rescore(run_id: str, overrides: dict[str, str], experiment: str | None = None) -> RunResult:
    """Recompute relevance, correctness, scores and metrics from a FINISHED run's stored
    generations, without generating again; logged as a new run tagged with its source run, in the
    source's experiment unless ``experiment`` names another.
    Everything is checked before the new run starts, so a refusal leaves nothing behind."""
    import pandas as pd

    bad = set(overrides) - set(RESCORE_FIELDS)
    if bad:
        raise ConfigError(f"rescore can change only {', '.join(RESCORE_FIELDS)}; not {', '.join(sorted(bad))}")
    source = _source(run_id)
    params = {k: v for k, v in source.data.params.items() if k in RunConfig.__dataclass_fields__}
    _check_overrides(run_id, overrides, source.data.params)
    base = RunConfig.from_strings(params)
    cfg = RunConfig.from_strings({**params, **overrides})
    _check_no_op(run_id, overrides, base, cfg)
    problems = name_problems(cfg) + entailment_problems_of(cfg)
    if problems:
        raise problems[0]
    table, checksum = tracking.load_table_and_checksum(run_id)
    source_metrics = tracking.run_metrics(source)
    try:  # the check aggregation makes: types, row count against n, every field against its row and run
        check_run_table(table, source.data.params, source_metrics, required=RESCORE_COLUMNS)
        check_checksum(source.data.tags, checksum)
    except ArtifactError as e:
        raise ArtifactError(f"run {run_id}: {e}; it cannot be rescored") from None
    frame = table.to_pandas()
    if not cfg.answerable_only and base.answerable_only:
        raise ConfigError("the source run evaluated answerable questions only; unanswerable ones were never generated")
    if cfg.answerable_only:
        frame = frame[frame["answerable"]].reset_index(drop=True)
    spec = get_model(cfg.model, cfg.model_registry or None)
    from uqflow.models.loading import load_tokenizer

    tokenizer = load_tokenizer(spec)
    tags = {**source.data.tags, tracking.SOURCE_RUN_TAG: run_id, tracking.ORIGIN_RUN_TAG: origin_of(source),
            "config_hash": run_identity(cfg, source.data.tags.get("dataset_fingerprint"), spec)}
    tags = {k: v for k, v in tags.items()
            if not k.startswith(("mlflow.", tracking.CHECKSUM_TAG_PREFIX)) and k != tracking.ERROR_TAG}
    experiment_id = _experiment_id(source, experiment)
    t0 = time.perf_counter()
    with tracking.tracked_run(f"{run_name(cfg)} (rescored)", tags, experiment_id=experiment_id) as run:
        tracking.log_params(run_params(cfg))
        try:
            frame, rel_s, parts = _score(cfg, pd.DataFrame(frame), decoder(tokenizer), None)
        except (TypeError, ValueError, KeyError) as e:
            raise UqflowError(f"run {run_id}: its generations.parquet has a malformed row "
                              f"({type(e).__name__}: {e})") from None
        metrics = pipeline.evaluate(frame, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
        # the samples and p(True) were not made again: their cost is the source run's
        n_source = source_metrics.get("n", len(frame))
        kept = {p: Cost(c.passes * n_source, c.tokens * n_source, c.seconds * n_source)  # per question -> totals
                for p, c in parts_from_metrics(source_metrics, ("sampling", "p_true")).items()}
        metrics.update(pipeline.cost_metrics(frame, {**kept, **parts}))
        metrics.update({"relevance_seconds": rel_s, "run_seconds": time.perf_counter() - t0})
        _log_outputs(cfg, frame, metrics, [f"rescored from run {run_id}"])
        return RunResult(run.info.run_id, cfg, metrics, frame, [])


__all__ = ["RESCORE_FIELDS", "RescoreError", "rescore"]
