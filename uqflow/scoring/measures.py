"""Every uncertainty measure, declared once.

A :class:`Measure` names its function, the stored row fields it reads, its labels, what it costs
beyond the greedy pass (the parts of :mod:`uqflow.scoring.cost`) and whether it needs sampled
answers. Everything else reads the measures from :data:`MEASURES`: the scores a run computes and
evaluates (``scoring.pipeline``), the costs it logs, its preview table, the results store's score
columns, the CLI's help, and the report's labels and order. Adding a measure is one
:func:`declare` here: the results store gains its column by itself (``uqflow.store.db.sync_measure_columns``).

The functions are pure (:mod:`uqflow.scoring.uncertainty` for one pass, :mod:`uqflow.scoring.sampled`
for sampled answers) and follow one sign convention: **higher means more uncertain**.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from uqflow.errors import UnknownName
from uqflow.registry import Registry
from uqflow.scoring import pairwise as P, sampled as S, uncertainty as U

NAN = float("nan")


class UnknownMeasure(UnknownName):
    """A measure name that no declaration here knows."""


@dataclass(frozen=True)
class Measure:
    """One uncertainty measure.

    ``fields``: the generations row's fields ``fn`` takes, in order. ``label``: its name in tables,
    legends and the CLI; ``short``: a few characters, to label a point in a crowded figure.
    ``needs``: the cost parts beyond the greedy pass (``scoring.cost.PARTS``); a measure that needs
    the sampling is a measure of sampled answers (:attr:`sampled`). ``baseline``: a zero-cost
    length baseline, what a measure must beat. ``required``: every stored run holds it (the study's question, G-NLL
    against RW-G-NLL). ``preview``: decimals in the run's preview table (None: not shown there).
    """

    name: str
    fn: Callable[..., float]
    fields: tuple[str, ...]
    label: str
    short: str
    needs: tuple[str, ...] = ()
    baseline: bool = False
    required: bool = False
    preview: int | None = None

    @property
    def sampled(self) -> bool:
        """Whether it needs sampled answers (a run with num_generations > 0)."""
        return "sampling" in self.needs

    def score(self, row: Mapping) -> float:
        """The measure of one generations row (the row holds every field in ``fields``)."""
        return self.fn(*(row[f] for f in self.fields))


#: every measure, in the order tables and figures show them: single-pass scores, the length
#: baselines, then the measures of sampled answers
MEASURES: Registry[Measure] = Registry("measure", UnknownMeasure)


def declare(measure: Measure) -> Measure:
    return MEASURES.add(measure.name, measure)


# single pass: the greedy answer's own token statistics
declare(Measure("g_nll", U.g_nll, ("token_logprobs",), "G-NLL", "G-NLL", required=True, preview=4))
declare(Measure("ln_g_nll", U.ln_g_nll, ("token_logprobs",), "LN-G-NLL", "LN-G", preview=4))
declare(Measure("max_nll", U.max_token_nll, ("token_logprobs",), "max-token NLL", "max"))
declare(Measure("mean_entropy", U.mean_token_entropy, ("token_entropies",), "mean token entropy", "ent"))
declare(Measure("rw_g_nll", U.rw_g_nll, ("token_logprobs", "relevance"), "RW-G-NLL", "RW", needs=("relevance",),
                required=True, preview=4))
# zero-cost baselines
declare(Measure("answer_tokens", U.answer_tokens, ("token_ids",), "answer length (tokens)", "len", baseline=True))
declare(Measure("answer_chars", U.answer_chars, ("answer",), "answer length (characters)", "chars", baseline=True))
# measures of sampled answers (num_generations > 0)
declare(Measure("predictive_entropy", S.predictive_entropy, ("sample_token_logprobs",), "predictive entropy", "PE",
                needs=("sampling",)))
declare(Measure("ln_predictive_entropy", S.ln_predictive_entropy, ("sample_token_logprobs",), "LN predictive entropy",
                "LN-PE", needs=("sampling",)))
declare(Measure("semantic_entropy", S.semantic_entropy, ("semantic_ids", "sample_token_logprobs"), "semantic entropy",
                "SE", needs=("sampling", "entailment"), preview=4))
declare(Measure("discrete_semantic_entropy", S.discrete_semantic_entropy, ("semantic_ids",),
                "discrete semantic entropy", "DSE", needs=("sampling", "entailment")))
declare(Measure("num_semantic_sets", S.num_semantic_sets, ("semantic_ids",), "number of semantic sets", "#sets",
                needs=("sampling", "entailment"), preview=0))
declare(Measure("p_true", S.p_true_score, ("log_p_true",), "p(True)", "p(T)", needs=("sampling", "p_true"),
                preview=4))
# measures of sample consistency (scoring/pairwise.py), from the samples and their pairwise record:
# the entailment judge's probabilities (the clustering's judgments), the similarity model's scores,
# SAR's token relevance of each sample; the lexical ones from the texts alone
declare(Measure("sar", P.sar, ("sample_token_logprobs", "sample_relevance", "sample_similarity"), "SAR", "SAR",
                needs=("sampling", "pairwise", "sample_relevance")))
declare(Measure("sentence_sar", P.sentence_sar, ("sample_token_logprobs", "sample_similarity"), "sentence SAR",
                "sSAR", needs=("sampling", "pairwise")))
declare(Measure("degmat", P.degmat, ("sample_entailment",), "DegMat (entailment)", "Deg",
                needs=("sampling", "entailment")))
declare(Measure("eigval_laplacian", P.eigval_laplacian, ("sample_entailment",), "EigValLaplacian (entailment)",
                "EigV", needs=("sampling", "entailment")))
declare(Measure("eccentricity", P.eccentricity, ("sample_entailment",), "Eccentricity (entailment)", "Ecc",
                needs=("sampling", "entailment")))
declare(Measure("kle", P.kernel_language_entropy, ("sample_entailment",), "kernel language entropy", "KLE",
                needs=("sampling", "entailment")))
declare(Measure("degmat_jaccard", P.degmat_jaccard, ("samples",), "DegMat (Jaccard)", "DegJ", needs=("sampling",)))
declare(Measure("eigval_jaccard", P.eigval_jaccard, ("samples",), "EigValLaplacian (Jaccard)", "EigVJ",
                needs=("sampling",)))
declare(Measure("eccentricity_jaccard", P.eccentricity_jaccard, ("samples",), "Eccentricity (Jaccard)", "EccJ",
                needs=("sampling",)))
declare(Measure("lexical_similarity", P.lexical_similarity, ("samples",), "lexical similarity (ROUGE-L)", "LexSim",
                needs=("sampling",)))
declare(Measure("greedy_dissimilarity", P.greedy_dissimilarity, ("greedy_similarity",),
                "greedy-vs-sample dissimilarity", "Dis", needs=("sampling", "pairwise")))
declare(Measure("cocoa_msp", P.cocoa_msp, ("token_logprobs", "greedy_similarity"), "CoCoA-MSP", "CoCoA",
                needs=("sampling", "pairwise"), preview=4))
declare(Measure("cocoa_ppl", P.cocoa_ppl, ("token_logprobs", "greedy_similarity"), "CoCoA-PPL", "CoCoA-P",
                needs=("sampling", "pairwise")))

#: the environment variable naming modules (comma-separated) that declare more measures
PLUGINS_VAR = "UQFLOW_MEASURES"
#: the entry-point group under which an installed package declares more measures
ENTRY_POINT_GROUP = "uqflow.measures"


def _load_plugins() -> None:
    """Import the modules that declare more measures with :func:`declare`: those named by
    ``$UQFLOW_MEASURES`` and those installed under the entry-point group ``uqflow.measures``, before
    the name lists below are made, so a measure of one's own is one file: its function and its
    ``declare()``. Everything downstream (runs, the store's columns, the report) reads it from here."""
    import importlib
    import os
    from importlib.metadata import entry_points

    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VAR, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            from uqflow.errors import ConfigError

            raise ConfigError(f"{PLUGINS_VAR} names the module {module!r}, which cannot be imported ({e}); "
                              "put its folder on PYTHONPATH, or unset the variable") from None
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


_load_plugins()

#: the names, in order: every measure, the single-pass ones (every run has them), the sampled ones
NAMES = tuple(MEASURES)
SINGLE_PASS = tuple(n for n, m in MEASURES.items() if not m.sampled)
SAMPLED = tuple(n for n, m in MEASURES.items() if m.sampled)
BASELINES = tuple(n for n, m in MEASURES.items() if m.baseline)
REQUIRED = tuple(n for n, m in MEASURES.items() if m.required)
#: name -> label, and the short labels of crowded figures
LABELS = {n: m.label for n, m in MEASURES.items()}
SHORT_LABELS = {n: m.short for n, m in MEASURES.items()}
#: name -> the cost parts it needs beyond the greedy pass
NEEDS = {n: m.needs for n, m in MEASURES.items()}
#: the measures shown in a run's preview table, with their decimals
PREVIEW = {n: m.preview for n, m in MEASURES.items() if m.preview is not None}


def label(name: str) -> str:
    """A measure's label, or the name itself for one this version does not declare (an older or
    newer run's)."""
    return LABELS.get(name, name)


def score_row(row: Mapping) -> dict[str, float]:
    """Every single-pass score of one generations row (a mapping with the fields they read)."""
    return {n: MEASURES.get(n).score(row) for n in SINGLE_PASS}


def _field(row, name: str):
    """A row's field, or None where the row lacks it or holds a missing value (None, NaN)."""
    try:
        value = row[name]
    except (KeyError, IndexError):
        return None
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def score_sampled_row(row: Mapping) -> dict[str, float]:
    """Every sampled measure of one generations row (parquet's numpy arrays are accepted). A row
    without samples (no or empty ``sample_token_logprobs`` and ``semantic_ids``) gives NaN for every
    measure, p_true included (p(True) is asked with the samples); a measure whose field is missing
    is NaN."""
    samples, ids = _field(row, "sample_token_logprobs"), _field(row, "semantic_ids")
    if len(samples if samples is not None else ()) == 0 and len(ids if ids is not None else ()) == 0:
        return {n: NAN for n in SAMPLED}
    out = {}
    for n in SAMPLED:
        m = MEASURES.get(n)
        values = [_field(row, f) for f in m.fields]
        out[n] = NAN if any(v is None for v in values) else m.fn(*values)
    return out
