"""Every check made before anything loads, for one run and for a grid of runs.

A run is checked whole before it starts (:func:`check`): the names it uses, its settings, its
dataset's records (read now), what its model needs of this machine (weights on disk or a reachable
hub, bitsandbytes, memory for its sampled answers), the similarity and entailment models, and the
answer length against the model's context. Every problem is found, not only the first, and said in
one message (:func:`resolve`, :func:`config_from_strings`).

A grid checks each of its cells the same way, each model, dataset and registry file once
(:func:`check_grid`), and keeps each distinct problem once, as a :class:`Problem` that lists the
cells it blocks, so the hub being unreachable for dataset 'squad' is one problem, not one per model.
A problem is of one of two kinds (:func:`kind_of`): a :data:`MISTAKE` of the user's input (an unknown
name, a malformed dataset file, a setting out of range), or a :data:`NEED`, something this machine
lacks (a model or hub dataset that is neither cached nor reachable, a GPU, memory). A grid with a
mistake cannot start; a grid whose cells only need what this machine lacks can still be listed
(``uqflow grid FILE --dry-run``), each cell naming its problems by number and each problem said once.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from uqflow import hub
from uqflow.config import RunConfig
from uqflow.console import inert
from uqflow.data import DATASETS, LoadedDataset, load_dataset
from uqflow.errors import ConfigError, DatasetError, ModelLoadError, UnknownChoice, UqflowError, short
from uqflow.generation import (backend_for, engine_needs, engine_problems, known_backend, server_problems,
                               unknown_backend_message)
from uqflow.models import ModelSpec, get_model
from uqflow.models.loading import known_context_length, sampling_memory_problem, unavailable
from uqflow.models.registry import asked_model
from uqflow.scoring.judges import ABSTENTION_RULES, JUDGES
from uqflow.scoring.relevance import pair_similarity_model, similarity_problem
from uqflow.scoring.semantic import ENTAILMENT_JUDGES, entailment_problems

#: a problem's kind: the user's input is wrong (a name, a setting, a dataset file): fix the input
MISTAKE = "mistake"
#: a problem's kind: this machine lacks what a run needs (a cached model or dataset, a reachable
#: hub, a GPU, memory): run it where these are, or bring them here
NEED = "need"
#: the heading of each kind's problems, in the order they are listed
KIND_HEADINGS = {MISTAKE: "Mistakes in the input", NEED: "What this machine lacks"}
#: how a cell's row names its problems' kind ("needs [1] [3]")
KIND_WORDS = {MISTAKE: "mistake", NEED: "needs"}
#: the cells of a problem named one by one, at most (then "and N more")
CELLS_SHOWN = 8


class Blocked(ConfigError):
    """A grid that cannot start: every problem found in its cells, each once with the cells it blocks."""

    def __init__(self, message: str, problems: Sequence[Problem]):
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Problem:
    """One problem found before anything loads: its message (what is wrong and the way out), its
    kind (:data:`MISTAKE` or :data:`NEED`) and, in a grid, the cells it blocks as (model, dataset)
    pairs, in the grid's order."""

    message: str
    kind: str
    cells: tuple[tuple[str, str], ...] = ()


def kind_of(error: UqflowError, cfg: RunConfig) -> str:
    """Whether ``error``, found checking ``cfg``, is a mistake of the input or something this
    machine lacks: a model that cannot be loaded here, or a registered dataset that cannot be read
    here (not cached, the hub unreachable), is a need; everything else (an unknown name, a
    malformed local file, a setting) is a mistake."""
    registered = cfg.dataset in DATASETS
    return NEED if isinstance(error, ModelLoadError) or (isinstance(error, DatasetError) and registered) else MISTAKE


# ---------------------------------------------------------------- one run

def name_problems(cfg: RunConfig) -> list[UqflowError]:
    """The engine, judges, abstention rule and entailment judge named by ``cfg`` that nothing registers."""
    named = [(JUDGES, j) for j in (cfg.correctness, *cfg.judge_names)]
    if cfg.num_generations:
        named.append((ENTAILMENT_JUDGES, cfg.entailment))
    problems: list[UqflowError] = [UnknownChoice(registry.unknown_message(name)) for registry, name in named
                                   if name not in registry]
    if not known_backend(cfg.backend):
        problems.insert(0, UnknownChoice(unknown_backend_message(cfg.backend)))
    if cfg.abstention not in ABSTENTION_RULES:
        problems.append(ConfigError(f"unknown abstention rule {short(cfg.abstention)}. "
                                    f"Known: {', '.join(ABSTENTION_RULES)}"))
    return problems


def entailment_problems_of(cfg: RunConfig) -> list[UqflowError]:
    """What the entailment judge of a sampling run needs and lacks (a known one; unknown names are
    :func:`name_problems`')."""
    if not cfg.num_generations or cfg.entailment not in ENTAILMENT_JUDGES:
        return []
    return entailment_problems(cfg.entailment, cfg.model_registry or None)


def _once(memo: dict | None, key: tuple, fn: Callable, *args):
    """``fn(*args)``, computed once per ``key`` in ``memo`` (a grid's cells share their models,
    datasets and registry files); a raised error is remembered and raised again."""
    if memo is None:
        return fn(*args)
    if key not in memo:
        try:
            memo[key] = (True, fn(*args))
        except UqflowError as e:
            memo[key] = (False, e)
    ok, value = memo[key]
    if not ok:
        raise value
    return value


def check(cfg: RunConfig, memo: dict | None = None) -> tuple[ModelSpec | None, LoadedDataset | None, list[UqflowError]]:
    """Everything a run needs, checked before it starts: the names, the dataset's records (read
    now), what the model needs of this machine (weights on disk or a reachable hub, a GPU and
    bitsandbytes for a quantized model, memory for its sampled answers), the similarity and
    entailment models, and the answer length against the model's context. Returns the model, the
    dataset and every problem found, each once. ``memo`` (a dict kept across calls) checks each
    model, dataset, registry file and judge once for many configurations (a grid's cells)."""
    problems: list[UqflowError] = list(name_problems(cfg))
    spec = ds = None
    registry = cfg.model_registry or None
    try:
        spec = _once(memo, ("model", cfg.model, registry), get_model, cfg.model, registry)
    except UqflowError as e:
        problems.append(e)
    problems += _once(memo, ("entailment", cfg.entailment, bool(cfg.num_generations), registry),
                      entailment_problems_of, cfg)
    similarity = _once(memo, ("similarity", cfg.similarity), similarity_problem, cfg.similarity)
    if similarity:
        problems.append(ModelLoadError(similarity))
    if cfg.num_generations and cfg.pair_similarity != cfg.similarity:
        pairs = _once(memo, ("similarity", cfg.pair_similarity), similarity_problem,
                      pair_similarity_model(cfg.pair_similarity))
        if pairs:
            problems.append(ModelLoadError(f"pair_similarity: {pairs}"))
    entailment = cfg.entailment if cfg.num_generations else ""
    for judge in (cfg.correctness, *cfg.judge_names, entailment):
        if asked := asked_model(judge):
            try:  # the judge model must exist too, and load in this process (a judge reads its next-token scores)
                if _once(memo, ("model", asked, registry), get_model, asked, registry).served is not None:
                    problems.append(ConfigError(f"judge {judge!r} asks {asked}, which is served; a judge's model "
                                                "loads in this process: name one that does (uqflow models)"))
            except UqflowError as e:
                problems.append(e)
    backend = None  # the engine the run uses, once the model is known
    if spec is not None and known_backend(cfg.backend):  # an unknown backend is among the name problems
        try:
            backend = backend_for(cfg.backend, spec)
        except UqflowError as e:
            problems.append(e)
    if backend is not None:  # its settings from the environment, what it needs of this machine
        problems += _once(memo, ("engine settings", backend), engine_problems, backend)
        problems += [ModelLoadError(p) for p in _once(memo, ("engine needs", backend), engine_needs, backend)]
    try:
        ds = _once(memo, ("dataset", cfg.dataset), _read_dataset, cfg)
    except UqflowError as e:
        problems.append(e)
    if spec is not None and backend is not None:  # a served model's server: answering, serving it, with logprobs
        problems += [ModelLoadError(p) for p in _once(memo, ("server", spec, backend), server_problems, backend, spec)]
    if spec is not None:
        problems += [ModelLoadError(p) for p in _once(memo, ("machine", spec, cfg.device),
                                                      unavailable, spec, cfg.device)]
        sampling = _once(memo, ("sampling", spec, cfg.num_generations, cfg.device),
                         sampling_memory_problem, spec, cfg.num_generations, cfg.device)
        if sampling:
            problems.append(ModelLoadError(sampling))
        context = _once(memo, ("context", spec), known_context_length, spec)
        if context and cfg.max_new_tokens >= context:
            problems.append(ConfigError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in "
                                        f"{spec.name}'s context of {context} tokens; lower max_new_tokens"))
    return spec, ds, problems


def _read_dataset(cfg: RunConfig) -> LoadedDataset:
    if cfg.dataset in DATASETS and DATASETS.get(cfg.dataset).hub_id:
        hub.reachable()  # offline: `datasets` reads its cache at once instead of retrying the hub
    return load_dataset(cfg.dataset)


#: the settings that name what a run uses: checked (:func:`check`) even when others cannot be read
NAMING_FIELDS = ("model", "dataset", "model_registry", "backend", "correctness", "judges")


def config_from_strings(values: dict[str, Any]) -> RunConfig:
    """``RunConfig.from_strings(values)``; where some settings cannot be read, the error also names
    every problem of what the readable naming settings name (an unknown model or dataset, a judge,
    an engine: :func:`check`, which loads nothing), so one message tells every mistake at once."""
    try:
        return RunConfig.from_strings(values)
    except ConfigError as e:
        text = str(e)
        found = [line.removeprefix("  - ") for line in text.splitlines()[1:]] if "\n" in text else [text]
        try:
            named = RunConfig.from_strings({k: v for k, v in values.items() if k in NAMING_FIELDS})
        except ConfigError:
            raise e from None
        named_problems = [str(p) for p in check(named)[2]]
        if not named_problems:
            raise e from None
        found += named_problems
        raise ConfigError(f"{len(found)} problems, found before anything ran:\n"
                          + "\n".join(f"  - {p}" for p in found)) from None


def resolve(cfg: RunConfig) -> tuple[ModelSpec, LoadedDataset]:
    """The model and dataset of ``cfg``, or one error naming every problem (see :func:`check`),
    raised before any run exists, so a mistake leaves nothing behind in MLflow."""
    spec, ds, problems = check(cfg)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError(f"{cfg.model} x {cfg.dataset} cannot run:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec, ds  # type: ignore[return-value]


# ---------------------------------------------------------------- a grid

@dataclass
class CellCheck:
    """One cell of a grid, checked: its configuration, its model and dataset where they could be
    found, and the grid's problems that block it (none: it can run here)."""

    config: RunConfig
    spec: ModelSpec | None
    dataset: LoadedDataset | None
    problems: tuple[Problem, ...] = ()


@dataclass
class GridCheck:
    """A grid's cells, checked, and each distinct problem once with the cells it blocks, numbered
    as listed: mistakes first, then needs, each in the order the cells met them."""

    name: str
    cells: list[CellCheck]
    problems: list[Problem] = field(default_factory=list)

    @property
    def mistakes(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == MISTAKE]

    @property
    def needs(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == NEED]

    def error(self) -> Blocked:
        """The one error that says why the grid cannot start: every problem once, with its cells."""
        return Blocked(grid_message(self.name, [(c.config.model, c.config.dataset) for c in self.cells],
                                    self.problems), self.problems)


def check_grid(configs: Sequence[RunConfig], name: str = "") -> GridCheck:
    """Each cell's configuration checked as a run checks it (:func:`check`), each model, dataset,
    registry file and judge once for all cells, and every problem found kept once (by its
    message) with the cells it blocks."""
    memo: dict = {}
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}  # message -> (kind, cells), in the order met
    per_cell = []
    for cfg in configs:
        spec, ds, errors = check(cfg, memo)
        mine = list(dict.fromkeys(str(e) for e in errors))
        for e in errors:
            kind, cells = found.setdefault(str(e), (kind_of(e, cfg), []))
            if (cfg.model, cfg.dataset) not in cells:
                cells.append((cfg.model, cfg.dataset))
        per_cell.append((cfg, spec, ds, mine))
    problems = {message: Problem(message, kind, tuple(cells)) for message, (kind, cells) in found.items()}
    ordered = numbered(problems.values())
    cells = [CellCheck(cfg, spec, ds, tuple(sorted((problems[m] for m in mine), key=ordered.__getitem__)))
             for cfg, spec, ds, mine in per_cell]
    return GridCheck(name, cells, list(ordered))


def numbered(problems: Iterable[Problem]) -> dict[Problem, int]:
    """Each distinct problem with its number as a grid lists it: mistakes first, then needs, each
    kind in the order given (the order the cells met them), from 1."""
    distinct = list(dict.fromkeys(problems))
    order = sorted(distinct, key=lambda p: list(KIND_HEADINGS).index(p.kind))  # stable: keeps the order met
    return {p: i for i, p in enumerate(order, 1)}


def problem_tags(problems: Iterable[Problem], numbers: dict[Problem, int]) -> str:
    """A cell's problems in a few characters, by kind and number: "needs [1] [3]"."""
    by_kind: dict[str, list[int]] = {}
    for p in sorted(problems, key=numbers.__getitem__):
        by_kind.setdefault(p.kind, []).append(numbers[p])
    return " ".join(f"{KIND_WORDS[k]} " + " ".join(f"[{n}]" for n in ns) for k, ns in by_kind.items())


def cells_text(cells: Sequence[tuple[str, str]], grid: Sequence[tuple[str, str]] = ()) -> str:
    """The cells a problem blocks, short: "every cell", "every model x squad", "Qwen2.5-7B-8bit x
    every dataset", else "model x dataset" each, the first :data:`CELLS_SHOWN` named and the rest
    counted. ``grid`` is every (model, dataset) cell of the grid, which says what "every" covers."""
    mine = list(dict.fromkeys(cells))
    models = list(dict.fromkeys(m for m, _ in grid))
    datasets = list(dict.fromkeys(d for _, d in grid))
    if len(mine) > 1 and set(mine) == set(grid):
        return f"every cell ({len(mine)})"
    have = set(mine)
    parts, covered = [], set()
    if len(models) > 1:
        for d in datasets:
            if all((m, d) in have for m in models):
                parts.append(f"every model x {d}")
                covered |= {(m, d) for m in models}
    if len(datasets) > 1:
        for m in models:
            if all((m, d) in have for d in datasets) and not any((m, d) in covered for d in datasets):
                parts.append(f"{m} x every dataset")
                covered |= {(m, d) for d in datasets}
    parts += [f"{m} x {d}" for m, d in mine if (m, d) not in covered]
    if len(parts) > CELLS_SHOWN:
        parts = parts[:CELLS_SHOWN] + [f"and {len(parts) - CELLS_SHOWN} more"]
    return ", ".join(parts)


def problem_lines(problems: Iterable[Problem], grid: Sequence[tuple[str, str]] = (),
                  width: int | None = None) -> list[str]:
    """Each problem once, numbered (:func:`numbered`) under its kind's heading, with the cells it
    blocks (:func:`cells_text`); each line wrapped to ``width`` columns when given."""
    numbers = numbered(problems)
    lines: list[str] = []

    def add(text: str, first: str, rest: str) -> None:
        for k, paragraph in enumerate(text.splitlines() or [""]):
            lead = first if k == 0 else rest
            if width is None:
                lines.append(lead + paragraph)
            else:
                lines.extend(textwrap.wrap(paragraph, width, initial_indent=lead, subsequent_indent=rest,
                                           break_on_hyphens=False) or [lead.rstrip()])

    heading = None
    for p, n in numbers.items():
        if p.kind != heading:
            heading = p.kind
            lines.append(f"{KIND_HEADINGS[p.kind]}:")
        tag = f"  [{n}] "
        add(inert(p.message), tag, " " * len(tag))  # a message may quote a name or value from the user's data
        if p.cells:
            add(inert(f"blocks {cells_text(p.cells, grid)}"), " " * len(tag), " " * (len(tag) + 2))
    return lines


def grid_message(name: str, grid: Sequence[tuple[str, str]], problems: Sequence[Problem]) -> str:
    """Why the grid ``name`` of the cells ``grid`` cannot start: how many cells are blocked, then
    every problem once (:func:`problem_lines`)."""
    blocked = {c for p in problems for c in p.cells}
    mistakes = any(p.kind == MISTAKE for p in problems)
    where = "" if mistakes else " on this machine"
    head = (f"{len(blocked)} of {len(grid)} cells of grid {name!r} cannot run{where}; "
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''}, each once with the cells it blocks:")
    tail = [] if mistakes else ["(`uqflow grid FILE --dry-run` lists every cell with its state)"]
    return "\n".join([head, *problem_lines(problems, grid), *tail])


__all__ = ["MISTAKE", "NEED", "NAMING_FIELDS", "Blocked", "CellCheck", "GridCheck", "Problem", "check", "check_grid",
           "cells_text", "config_from_strings", "entailment_problems_of", "grid_message", "kind_of", "name_problems",
           "numbered", "problem_lines", "problem_tags", "resolve"]
