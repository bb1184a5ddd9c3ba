"""One model x dataset run, end to end: examples -> prompts -> generation -> scores -> MLflow."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import random
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uqflow import lease, tracking
from uqflow.checks import resolve  # every check made before a run starts
from uqflow.config import RunConfig
from uqflow.console import inert
from uqflow.data import DATASETS, LoadedDataset
from uqflow.data.examples import Example
from uqflow.errors import ConfigError, UqflowError
from uqflow.generation import engine_of, load_for, make_engine, unload
from uqflow.generation.base import token_pieces
from uqflow.machine import machine_tags
from uqflow.models import LoadedModel, ModelSpec
from uqflow.models.loading import BATCHING, batch_dependence, cache_root
from uqflow.models.registry import asked_model, short_model_name
from uqflow.prompts import build_prompts, draw_few_shot, p_true_prompt
from uqflow.scoring import pipeline
from uqflow.scoring.cost import Cost
from uqflow.scoring.judges import make_judge
from uqflow.scoring.llm import ENTAILMENT_WORDS, llm_choose, llm_judge_generate, p_true_inputs
from uqflow.scoring.measures import PREVIEW, SAMPLED, SINGLE_PASS
from uqflow.scoring.semantic import make_entailment, parse_embedding_name
from uqflow.scoring.relevance import load_similarity, pair_similarity_model

log = logging.getLogger(__name__)


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
    if _local_file(cfg) and ds.few_shot_pool:
        notes.append(f"{len(ds.few_shot_pool)} of the file's {len(ds.examples) + len(ds.few_shot_pool)} questions are "
                     "held out as the few-shot pool and not evaluated")
    pool = ds.examples
    if cfg.answerable_only:
        pool = [ex for ex in pool if ex.answerable]
        if len(pool) < len(ds.examples):
            notes.append(f"{len(ds.examples) - len(pool)} unanswerable questions left out (answerable_only)")
    if not pool:
        raise ConfigError(f"dataset {ds.name!r} has no answerable questions; set answerable_only=false")
    if cfg.num_samples >= len(pool):
        if cfg.num_samples > len(pool):
            notes.append(f"num_samples={cfg.num_samples} but dataset {ds.name!r} has {len(pool)} questions: "
                         f"running on all {len(pool)}")
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


def _local_file(cfg: RunConfig) -> bool:
    """Whether the run's dataset is a file of the user's rather than a registered name."""
    return cfg.dataset not in DATASETS


def _dataset_label(cfg: RunConfig) -> str:
    """The dataset as a short name: its registry name, or a local file's name without its folder."""
    return Path(cfg.dataset).name if _local_file(cfg) else cfg.dataset


def run_name(cfg: RunConfig) -> str:
    """The run's name in MLflow: the model first, short, then the dataset ("SmolLM2-135M-8bit ·
    trivia_mini"); the full names are the run's ``model`` and ``dataset`` tags. A control or
    bidirectional character of a name (a file's right-to-left override) is shown as its escape, so
    the name reads in MLflow's UI and on a terminal as it is stored."""
    return inert(f"{short_model_name(cfg.model)} · {_dataset_label(cfg)}", one_line=True)


def run_identity(cfg: RunConfig, fingerprint: str | None, spec: ModelSpec | None = None) -> str:
    """The configuration hash that identifies a run's results (the ``config_hash`` tag, by which a
    grid knows a cell is done): every field that changes results and, for a local dataset file, the
    ``fingerprint`` of its content, since an edited file at the same path asks other questions.
    Registered datasets are identified by name, so a grid's dry run needs no hub access. For a model
    whose answers depend on the batch (bitsandbytes), the batch size and the way batches are
    composed (``BATCHING``) change results too."""
    extra = {"batch_size": cfg.batch_size, "batching": BATCHING} if spec is not None and batch_dependence(spec) else None
    return cfg.hash(fingerprint if _local_file(cfg) else None, extra)


def run_tags(cfg: RunConfig, spec: ModelSpec, ds: LoadedDataset | None = None) -> dict[str, Any]:
    import torch
    import transformers

    from uqflow import __version__
    from uqflow.plots import RUN_COLOUR_TAG, run_colour  # matplotlib, only once a run is made

    dependence = batch_dependence(spec, cfg.batch_size)
    tags = {
        "family": spec.family, "size_b": spec.size_b, "quantization": spec.quantization, "precision": spec.precision,
        "instruct": str(spec.instruct).lower(), "model": spec.name, "dataset": cfg.dataset,
        "batch_invariant": str(dependence is None).lower(), **({"batch_dependence": dependence} if dependence else {}),
        "config_hash": run_identity(cfg, ds.fingerprint if ds else None, spec),
        "prompt_template_hash": cfg.prompt_options.template_hash(),
        tracking.VERSION_TAG: __version__, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "python_version": platform.python_version(),
        RUN_COLOUR_TAG: run_colour(spec.name, cfg.dataset),
        # what its figures depend on beyond the configuration (an 8-bit model on a CPU: the CPU's
        # instruction set, threads, library versions), as tags, so the hash above stays the same
        **machine_tags(cfg.device),
    }
    if ds is not None:
        tags["dataset_fingerprint"] = ds.fingerprint
    return tags


def run_params(cfg: RunConfig) -> dict[str, Any]:
    """The params a run logs: its settings, and for a run that samples the similarity model its
    ``pair_similarity`` resolves to here (``pair_similarity_model``)."""
    params = cfg.to_dict()
    if cfg.num_generations:
        params["pair_similarity_model"] = pair_similarity_model(cfg.pair_similarity)
    return params


def engine_tags(engine) -> dict[str, str]:
    """Which engine answered and how it decodes, where it can choose (the HF engine): its batch
    size, its cache layout and, on a GPU, the attention kernels of each phase; what an engine tells
    of itself besides (``tags``: a served model's server). Only speed and float rounding depend on
    them, so they are tags, not part of the run's identity."""
    tags = {"engine": engine.name, **(getattr(engine, "tags", None) or {})}
    if not engine.batch_invariant:  # the engine's own word (a server, vLLM: their batches), beside the model's
        tags["batch_invariant"] = "false"
        if getattr(engine, "batch_dependence", None):
            tags["batch_dependence"] = engine.batch_dependence
    if getattr(engine, "batch_size", 0):
        tags["engine_batch_size"] = str(engine.batch_size)
    if getattr(engine, "layout", None):
        tags["decode_layout"] = engine.layout
    sdpa = getattr(engine, "sdpa", None)
    if sdpa and str(engine.lm.device).startswith("cuda"):
        tags["sdpa_kernels"] = "; ".join(f"{phase}: {','.join(k.lower() for k in names) if names else 'auto'}"
                                         for phase, names in sdpa.items())
    return tags


#: the columns of the generations preview, the table MLflow's UI shows on the run's page: the
#: question, answer and verdict, then the measures declared with a ``preview`` (scoring/measures.py)
PREVIEW_COLUMNS = ("example_id", "question", "answer", "references", "correct", *PREVIEW)


def preview(frame):
    """A readable table of the generations for the MLflow UI: references joined, scores rounded."""
    table = frame[[c for c in PREVIEW_COLUMNS if c in frame.columns]].copy()
    table["references"] = [" | ".join(map(str, refs)) for refs in table["references"]]
    table["correct"] = table["correct"].astype(object).where(table["correct"].notna(), None)
    for c, decimals in PREVIEW.items():
        if c in table:
            table[c] = table[c].round(decimals)
    return table


def _log_dataset(cfg: RunConfig, ds: LoadedDataset, examples: Sequence[Example]) -> None:
    """The evaluated questions as the run's MLflow dataset input."""
    import pandas as pd

    frame = pd.DataFrame([{"example_id": ex.id, "question": ex.question, "context": ex.context or "",
                           "references": list(ex.references), "answerable": ex.answerable} for ex in examples])
    tracking.log_dataset(frame, _dataset_label(cfg), ds.origin)


def describe(cfg: RunConfig, metrics: dict[str, float]) -> str:
    """The run's description (Markdown, shown on its MLflow page): what ran and how well each score
    flags wrong answers."""
    def auroc(name: str) -> str:
        v = metrics.get(pipeline.metric("auroc", name), float("nan"))
        if v != v:
            return "undefined (one class)"
        lo, hi = (metrics[pipeline.metric(k, name)] for k in ("ci_low", "ci_high"))
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

    acc = metrics.get("accuracy", float("nan"))
    measures = SINGLE_PASS + tuple(m for m in SAMPLED if pipeline.metric("auroc", m) in metrics)
    def cost(name: str) -> str:
        v = metrics.get(pipeline.metric("cost_seconds", name))
        return "–" if v is None else f"{v:.3f}"

    rows = "\n".join(f"| {name} | {auroc(name)} | {cost(name)} |" for name in measures)
    return (f"**{cfg.model}** on **{cfg.dataset}**: {int(metrics['n'])} questions, accuracy "
            f"{'n/a' if acc != acc else f'{acc:.3f}'} (judge `{cfg.correctness}`).\n\n"
            f"| score | AUROC [95% CI] (wrong answer = positive) | extra seconds per question |\n|---|---|---|\n"
            f"{rows}\n")


def _log_outputs(cfg: RunConfig, frame, metrics: dict[str, float], notes: Sequence[str]) -> None:
    from uqflow.plots import rejection_figure, roc_figure

    title = f"{cfg.model} x {cfg.dataset}"
    tracking.log_metrics(metrics)
    tracking.set_description(describe(cfg, metrics))
    tracking.log_frame(frame)
    tracking.log_table(preview(frame), "generations_preview.json")
    measures = pipeline.measures_of(frame)
    tracking.log_figure(roc_figure(frame, measures, title), "plots/roc.png")
    tracking.log_figure(rejection_figure(frame, measures, title), "plots/accuracy_rejection.png")
    if notes:
        tracking.log_text("\n".join(notes) + "\n", "notes.txt")


def run_experiment(cfg: RunConfig, lm: LoadedModel | Callable[[], LoadedModel] | None = None,
                   progress: Callable[..., None] | None = None, *, parent_run_id: str | None = None,
                   artifact_log: str | os.PathLike | None = None,
                   resolved: tuple[ModelSpec, LoadedDataset] | None = None) -> RunResult:
    """Run ``cfg`` and log it to MLflow.

    ``lm`` reuses a loaded model, or is a function that returns one, called inside the run so that
    a failure to load is recorded on it. ``artifact_log`` names a log file that is stored with the
    run as ``cell.log``, whether the run succeeds or fails. ``resolved`` is the model and dataset
    that :func:`uqflow.checks.check` already found for ``cfg`` (a grid checks every cell before it starts).
    """
    try:
        spec, ds = resolved or resolve(cfg)
        examples, notes = select_examples(ds, cfg)
        dependence = batch_dependence(spec, cfg.batch_size)
        if dependence and engine_of(cfg.backend, spec).own_batches:
            notes.append(dependence)
    except UqflowError as e:
        if os.environ.get("MLFLOW_RUN_ID") and parent_run_id is None:  # `mlflow run` made the run: it says why
            tracking.tag_error(os.environ["MLFLOW_RUN_ID"], str(e))
        raise
    for n in notes:
        log.warning(n)
    t0 = time.perf_counter()
    tags = run_tags(cfg, spec, ds)
    experiment_id, exclusive = None, False
    if parent_run_id:  # a grid's cell: a run of its own beside the grid's run, linked by a tag
        tags[tracking.GRID_RUN_TAG] = parent_run_id
        grid_run = tracking.get_run(parent_run_id)
        experiment_id = grid_run.info.experiment_id
        # a local grid claims each cell; a Ray driver already holds its grid's cells (cluster.GridClaim)
        exclusive = tracking.CLAIMS_TAG not in grid_run.data.tags
    with tracking.tracked_run(run_name(cfg), tags, experiment_id=experiment_id) as run:
        # runs of this configuration left RUNNING by a vanished process are closed; a grid's cell
        # that another live process holds is given up (CellTaken) before anything is loaded
        lease.claim(run, tags["config_hash"], exclusive=exclusive)
        own = lm is None
        try:
            tracking.log_params(run_params(cfg))
            _log_dataset(cfg, ds, examples)
            log.info("run %s: %s x %s, %d questions", run.info.run_id, cfg.model, cfg.dataset, len(examples))
            if own or callable(lm):
                loading = f"loading {spec.name}"  # a stage of its own, timed (a first load converts: minutes)
                if progress:
                    progress(0, None, loading)
                lm = load_for(spec, cfg.device, cfg.backend) if own else lm()
                if progress:
                    progress(1, None, loading)
            try:
                frame, metrics, skip_notes = _evaluate(cfg, lm, ds, examples, progress)
            finally:
                if own:
                    unload(lm)
        finally:
            if artifact_log is not None and Path(artifact_log).exists():
                tracking.log_text(Path(artifact_log).read_text(encoding="utf-8", errors="replace"), "cell.log")
        notes += skip_notes
        metrics["run_seconds"] = time.perf_counter() - t0
        _log_outputs(cfg, frame, metrics, notes)
        return RunResult(run.info.run_id, cfg, metrics, frame, notes)


def _evaluate(cfg: RunConfig, lm: LoadedModel, ds: LoadedDataset, examples: Sequence[Example],
              progress: Callable[..., None] | None):
    import pandas as pd

    shots = draw_few_shot(ds.few_shot_pool, cfg.num_few_shot, cfg.seed)
    prompts, skipped = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct,
                                     opts=cfg.prompt_options, max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
    notes = [f"skipped {ex.id}: {why}" for ex, why in skipped]
    if not prompts:
        raise ConfigError("no prompt fits the model's context; lower num_few_shot or max_new_tokens")
    engine = make_engine(cfg.backend, lm, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens)
    tracking.set_tags(engine_tags(engine))
    if getattr(engine, "params", None):  # what changes a score beyond the configuration (a served model's top k)
        tracking.log_params(engine.params)
    answering = "greedy answers" if cfg.most_likely == "greedy" else "most likely answers"
    step = _StageCount(progress, len(prompts), answering)

    def stage(name: str):
        """Report a stage that has no finer progress: at its start and at its end."""
        if progress:
            progress(0, len(prompts), name)
        return (lambda: progress(len(prompts), len(prompts), name)) if progress else (lambda: None)

    judges = _judges(cfg, lm)  # made once: an LLM judge loads its model at its first call
    step(0)
    gens, answer_passes, answer_seconds = _answers(cfg, engine, [p.token_ids for p in prompts], step.reports)
    sampled, parts = ({}, {}) if not cfg.num_generations else _sample(cfg, engine, lm, prompts, gens, progress,
                                                                      ds, shots, judges[cfg.correctness])
    frame = pd.DataFrame([{
        "example_id": p.example.id, "question": p.example.question, "context": p.example.context,
        "prompt": p.text, "prompt_token_ids": p.token_ids, "num_shots": p.num_shots, "answer": g.text,
        "token_ids": g.token_ids, "tokens": token_pieces(g.token_ids, engine.decode),
        "token_logprobs": g.token_logprobs, "token_entropies": g.token_entropies,
        "stop_reason": g.stop_reason, "dropped_text": g.dropped_text,
        "references": list(p.example.references), "answerable": p.example.answerable,
    } for p, g in zip(prompts, gens)])
    for col, values in sampled.items():
        frame[col] = values
    if getattr(engine, "params", None):  # a served model's token entropies are over its top k (the console says so)
        frame.attrs.update(engine.params)
    t = time.perf_counter()
    scored = stage("judging and scoring")
    frame, score_seconds, scored_parts = _score(cfg, frame, engine.decode, lm, judges)
    scored()
    parts.update(scored_parts)
    metrics = pipeline.evaluate(frame, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    metrics.update(pipeline.cost_metrics(frame, parts))
    if cfg.batch_compositions > 1 and not engine.batch_invariant and engine_of(cfg.backend, lm.spec).own_batches:
        spread = stage(f"{cfg.batch_compositions - 1} more batch compositions")
        metrics.update(_batch_spread(cfg, engine, judges[cfg.correctness], prompts, frame, progress))
        spread()
    metrics.update({
        "n_skipped": float(len(skipped)), "generation_seconds": answer_seconds,
        "greedy_passes_per_question": answer_passes / max(len(frame), 1),
        "scoring_seconds": time.perf_counter() - t, "relevance_seconds": score_seconds,
        "questions_per_second": len(frame) / max(answer_seconds, 1e-9),
        "peak_memory_mb": _peak_memory_mb(lm.device),
    })
    return frame, metrics, notes


#: the reference code's "most likely answer": one sample at this temperature (most_likely=sampled)
MOST_LIKELY_TEMPERATURE = 0.1
#: added to the run's seed for that sample's stream, so it never shares a stream with the N samples
MOST_LIKELY_SEED_OFFSET = 1_000_003


@contextlib.contextmanager
def _counted_apart(engine):
    """Work on ``engine`` that its own counters must not show (they feed the greedy pass's and the
    samples' costs): yields a Cost that holds, once the block ends, the passes, tokens and seconds
    the block took, and the counters are put back as they were."""
    before = {k: (engine.passes[k], engine.tokens[k]) for k in engine.passes}
    cost, t = Cost(), time.perf_counter()
    try:
        yield cost
    finally:
        cost.passes = float(sum(engine.passes[k] - p for k, (p, _) in before.items()))
        cost.tokens = float(sum(engine.tokens[k] - n for k, (_, n) in before.items()))
        cost.seconds = time.perf_counter() - t
        for k, (passes, tokens) in before.items():
            engine.passes[k], engine.tokens[k] = passes, tokens


def _answers(cfg: RunConfig, engine, ids: list[list[int]], step) -> tuple[list, float, float]:
    """The answer of each prompt that is judged and scored, with the passes and seconds it took:
    the greedy answer, or (``most_likely=sampled``) one sample at temperature 0.1, as the
    semantic-entropy reference code takes its "most likely" answer. Either way its stored
    log-probabilities are the model's raw ones (temperature 1), so G-NLL means the same."""
    if cfg.most_likely == "greedy":
        gens = engine.generate(ids, progress=step)
        return gens, engine.passes["greedy"], engine.generation_seconds
    with _counted_apart(engine) as cost:  # the N samples' cost is counted apart
        samples = engine.sample(ids, 1, temperature=MOST_LIKELY_TEMPERATURE, seed=cfg.seed + MOST_LIKELY_SEED_OFFSET,
                                progress=step)
    return [ss[0] for ss in samples], cost.passes, cost.seconds


class _StageCount:
    """A stage's progress from an engine's reports (rows done and tokens decoded since the last
    report, ``generation.base.Reports``): the sums passed on as ``progress(questions, total, stage,
    tokens=...)``, ``per`` rows a question (N sampled answers). ``reports`` is what an engine is
    given: this, or None where nobody listens."""

    def __init__(self, progress, total: int, stage: str, per: int = 1):
        self.progress, self.total, self.stage, self.per = progress, total, stage, per
        self.rows = self.tokens = 0
        self.reports = self if progress is not None else None

    def __call__(self, rows: int, tokens: int = 0) -> None:
        self.rows, self.tokens = self.rows + rows, self.tokens + tokens
        if self.progress is not None:
            self.progress(self.rows // self.per, self.total, self.stage, tokens=self.tokens)


def _batch_spread(cfg: RunConfig, engine, judge, prompts, frame, progress=None) -> dict[str, float]:
    """For a model whose answers depend on the batch: the questions answered greedily again in
    ``batch_compositions - 1`` more batch compositions (the prompts shuffled with seeds 1, 2, ...
    instead of sorted by length), each judged like the run's answers, and the spread of accuracy
    and of G-NLL's AUROC over all compositions, the run's own included, with the share of answers
    that differ from the run's (``batch_spread/*`` metrics). The run's own answers stay the
    default composition's; this pass is analysis, not counted in any measure's cost."""
    from uqflow.scoring.evaluation import auroc_with_ci
    from uqflow.scoring.judges import judge_examples
    from uqflow.scoring.uncertainty import g_nll

    ids = [p.token_ids for p in prompts]
    more = cfg.batch_compositions - 1  # the stage counts questions, once over all its compositions
    step = _StageCount(progress, len(ids), f"{more} more batch compositions", per=more)

    outcomes = [(pipeline.verdict_list(frame["correct"]), frame["g_nll"].tolist(), frame["answer"].tolist())]
    with _counted_apart(engine) as cost:
        for k in range(1, cfg.batch_compositions):
            gens = engine.generate(ids, step.reports, shuffle=k)
            verdicts = judge_examples(judge, list(frame["question"]), [g.text for g in gens],
                                      [list(r) for r in frame["references"]], list(frame["answerable"]), cfg.abstention)
            outcomes.append(([v.correct for v in verdicts], [g_nll(g.token_logprobs) for g in gens],
                             [g.text for g in gens]))
    accuracy, auroc, changed = [], [], []
    for correct, scores, answers in outcomes:
        keep = [i for i, c in enumerate(correct) if c is not None]
        c = np.array([bool(correct[i]) for i in keep])
        accuracy.append(float(c.mean()) if c.size else math.nan)
        auroc.append(auroc_with_ci(c, np.array([scores[i] for i in keep], dtype=float), n_resamples=0).auroc)
        changed.append(float(np.mean([a != b for a, b in zip(answers, outcomes[0][2])])))
    au = np.array(auroc, dtype=float)
    ok = au[np.isfinite(au)]
    return {"batch_spread/compositions": float(len(outcomes)),
            "batch_spread/accuracy_min": float(np.nanmin(accuracy)), "batch_spread/accuracy_max": float(np.nanmax(accuracy)),
            "batch_spread/auroc_g_nll_min": float(ok.min()) if ok.size else math.nan,
            "batch_spread/auroc_g_nll_max": float(ok.max()) if ok.size else math.nan,
            "batch_spread/auroc_g_nll_sd": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
            "batch_spread/changed_answers": float(np.mean(changed[1:])) if len(changed) > 1 else 0.0,
            "batch_spread/seconds": cost.seconds}


def _sample(cfg: RunConfig, engine, lm: LoadedModel, prompts, gens, progress, ds: LoadedDataset | None = None,
            shots: Sequence[Example] = (), judge=None) -> tuple[dict[str, list], dict[str, Cost]]:
    """``num_generations`` sampled answers per question and p(True) of each answer, as
    generations columns, with what each part cost (scoring/cost.py); p(True) few-shot where
    ``p_true_few_shot`` asks (:func:`_p_true_shots`, its cost counted in p(True)'s)."""
    n = cfg.num_generations
    before, before_tokens, t = engine.passes["sampled"], engine.tokens["sampled"], time.perf_counter()
    step = _StageCount(progress, len(prompts), f"sampling {n} answers each", per=n)  # questions, N answers each
    step(0)
    samples = engine.sample([p.token_ids for p in prompts], n, temperature=cfg.temperature, seed=cfg.seed,
                            progress=step.reports)
    parts = {"sampling": Cost(engine.passes["sampled"] - before, engine.tokens["sampled"] - before_tokens,
                              time.perf_counter() - t)}
    texts = [[s.text for s in ss] for ss in samples]
    ask = _StageCount(progress, len(prompts), "p(True)")  # questions asked, and the tokens of its few-shot part
    ask(0)
    prefix, shots_cost = ("", Cost()) if not cfg.p_true_few_shot else _p_true_shots(cfg, engine, lm, ds, shots, judge,
                                                                                     ask.reports)
    questions = [prefix + p_true_prompt(p.example.question, ts, g.text, p.example.context if cfg.use_context else None)
                 for p, ts, g in zip(prompts, texts, gens)]
    ids, conts = p_true_inputs(lm.tokenizer, lm.spec.instruct, questions)
    t = time.perf_counter()
    log_p_true = engine.continuation_logprobs(ids, conts, progress=ask.reports)
    if getattr(engine, "outside_top_k", 0):  # a served model: tokens of "A" outside the top k, bounded
        tracking.set_tags({"p_true_outside_top_k": str(engine.outside_top_k)})
    if ask.rows < len(prompts):  # an engine that tells of no pairs: the stage ends here
        ask(len(prompts) - ask.rows)
    parts["p_true"] = Cost(len(ids), 0, time.perf_counter() - t) + shots_cost
    return {"samples": texts, "sample_token_ids": [[s.token_ids for s in ss] for ss in samples],
            "sample_token_logprobs": [[s.token_logprobs for s in ss] for ss in samples],
            "sample_stop_reasons": [[s.stop_reason for s in ss] for ss in samples],
            "log_p_true": log_p_true}, parts


def _p_true_shots(cfg: RunConfig, engine, lm: LoadedModel, ds: LoadedDataset | None,
                  shots: Sequence[Example], judge, progress=None) -> tuple[str, Cost]:
    """The few-shot part of every p(True) prompt, as the semantic-entropy reference code builds it:
    ``p_true_few_shot`` questions of the few-shot pool (not those shown as the answer prompt's own
    examples), each answered (as the run answers), sampled ``num_generations`` times and judged
    with the run's judge, then written as a p(True) question followed by its verdict, " A" (true)
    or " B" (false). Returns the text and what making it cost. ``progress`` (an engine's) hears of
    the tokens decoded only: these questions are not the run's."""
    from uqflow.scoring.judges import judge_examples

    used = {ex.id for ex in shots}
    pool = [ex for ex in (ds.few_shot_pool if ds else []) if ex.id not in used]
    examples = draw_few_shot(pool, cfg.p_true_few_shot, cfg.seed + 1)
    if not examples:
        return "", Cost()
    prompts, _ = build_prompts(examples, shots, lm.tokenizer, instruct=lm.spec.instruct, opts=cfg.prompt_options,
                               max_prompt_tokens=lm.context_length - cfg.max_new_tokens)
    ids = [p.token_ids for p in prompts]

    def tokens_only(_k: int, tokens: int = 0) -> None:  # these answers are not the run's questions
        progress(0, tokens=tokens)

    with _counted_apart(engine) as cost:  # p(True)'s cost, not the answers' or the samples'
        answers, _, _ = _answers(cfg, engine, ids, tokens_only if progress is not None else None)
        samples = engine.sample(ids, cfg.num_generations, temperature=cfg.temperature, seed=cfg.seed + 1,
                                progress=tokens_only if progress is not None else None)
        verdicts = judge_examples(judge, [p.example.question for p in prompts], [a.text for a in answers],
                                  [list(p.example.references) for p in prompts],
                                  [p.example.answerable for p in prompts], cfg.abstention)
    blocks = [p_true_prompt(p.example.question, [s.text for s in ss], a.text,
                            p.example.context if cfg.use_context else None) + (" A" if v.correct else " B") + "\n\n"
              for p, ss, a, v in zip(prompts, samples, answers, verdicts)]
    return "".join(blocks), cost


def _judges(cfg: RunConfig, lm: LoadedModel | None) -> dict:
    """The run's judges by name, its own (``correctness``) first, then the extra ``judges``;
    ``correctness_threshold`` applies to its own only. An LLM judge loads its model at its first
    call, unless it is the run's model (``lm``)."""
    out = {}
    for name in (cfg.correctness, *cfg.judge_names):
        asked = asked_model(name)
        generate = llm_judge_generate(asked, cfg.model_registry or None, cfg.device, lm) if asked else None
        threshold = cfg.correctness_threshold if name == cfg.correctness else 0.0
        out[name] = make_judge(name, threshold, generate=generate, cache_path=cache_root() / "judgments.sqlite")
    return out


def _score(cfg: RunConfig, frame, decode, lm: LoadedModel | None, judges: dict | None = None):
    """Relevance, correctness, semantic clusters (a run that sampled) and scores for a table of
    generations, judged by ``judges`` (:func:`_judges`, made here when not given). Returns (frame,
    relevance seconds, the cost of the relevance and clustering parts)."""
    device = "cuda" if lm is not None and lm.device.startswith("cuda") else "cpu"
    t = time.perf_counter()
    frame = pipeline.add_relevance(frame, decode, _similarity(cfg.similarity, device))
    relevance_seconds = time.perf_counter() - t
    # one similarity pass per text embedded: each answer whole and without each of its tokens
    parts = {"relevance": Cost(float(sum(len(t) + 1 for t in frame["token_ids"])), 0, relevance_seconds)}
    judges = judges or _judges(cfg, lm)
    frame = pipeline.add_correctness(frame, judges[cfg.correctness], cfg.abstention)
    frame = pipeline.add_verdicts(frame, {k: j for k, j in judges.items() if k != cfg.correctness}, cfg.abstention)
    if cfg.num_generations and pipeline.sampled(frame):
        judge_cost = Cost()
        entail_generate = None
        if asked := asked_model(cfg.entailment):
            entail_generate = llm_choose(asked, ENTAILMENT_WORDS, cfg.model_registry or None, cfg.device, lm,
                                         cost=judge_cost)
        embedding = parse_embedding_name(cfg.entailment)
        entailment = make_entailment(cfg.entailment, generate=entail_generate,
                                     cache_path=cache_root() / "judgments.sqlite", device=device,
                                     similarity=_similarity(embedding[0], device) if embedding else None)
        frame, clustering = pipeline.add_semantic_ids(frame, entailment, cfg.strict_entailment)
        if entail_generate is not None:  # an LLM judge: its passes and tokens, not its number of pairs
            clustering = Cost(judge_cost.passes, judge_cost.tokens, clustering.seconds)
        parts["entailment"] = clustering
        frame, pairwise = pipeline.add_pairwise(frame, decode, _similarity(pair_similarity_model(cfg.pair_similarity),
                                                                            device))
        parts.update(pairwise)
    return pipeline.add_scores(frame), relevance_seconds, parts


__all__ = ["RunResult", "run_experiment", "run_identity", "select_examples"]
