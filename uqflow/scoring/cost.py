"""What each uncertainty measure costs beyond the greedy pass, per question.

G-NLL's promise is that one greedy pass flags wrong answers about as well as measures that sample
many answers, at a fraction of their cost; a measure's AUROC means little without its price. Every
run records, for every measure, three costs beyond the greedy answer (which every measure shares):

- ``passes``: sequence forward passes of any model, counted the same way everywhere: a prompt's
  prefill is one pass and each further generated token one more (so decoding an answer of L tokens,
  its stop tokens included, is L passes, and N sampled answers of one prompt share its prefill); a
  teacher-forced or classifier pass over one sequence is one; the similarity model's embedding of
  one text is one;
- ``tokens``: tokens generated (sampled answers, an LLM entailment judge's replies), stop and EOS
  tokens included;
- ``seconds``: wall time.

They add up from the parts a measure needs (its ``needs``, :mod:`uqflow.scoring.measures`): G-NLL, LN-G-NLL, max-token NLL and
mean token entropy come from the greedy pass itself and cost nothing more; RW-G-NLL needs its
relevance passes; predictive entropy needs the sampled answers; semantic entropy, its discrete
form and the number of semantic sets need the samples and the entailment judge's clustering;
p(True) needs the samples (shown as brainstorm) and one more pass over its prompt. The measures of
sample consistency (scoring/pairwise.py) need the samples and, as each reads them, the entailment
judge's probabilities (from the clustering's judgments), the pairwise similarity record
(``pairwise``: every pair of samples and the greedy answer against each, by the similarity model)
and SAR's token relevance of every sample (``sample_relevance``); the lexical ones (Jaccard,
ROUGE-L) need the samples alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from uqflow.scoring.measures import NEEDS

#: the parts a measure's cost is made of
PARTS = ("relevance", "sampling", "entailment", "pairwise", "sample_relevance", "p_true")
UNITS = ("passes", "tokens", "seconds")


@dataclass
class Cost:
    """Totals over a run: forward passes, generated tokens, seconds."""

    passes: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.passes + other.passes, self.tokens + other.tokens, self.seconds + other.seconds)


#: a part's cost per question, as a run logs it: ``part_seconds_sampling``; the same order as a
#: measure's (``cost_seconds_semantic_entropy``, ``scoring.pipeline.MEASURE_METRICS``): what, unit, whose
PART_METRIC = "part_{unit}_{part}"
#: the name runs logged it under before (``cost_sampling_seconds``), read when a run has no other
LEGACY_PART_METRIC = "cost_{part}_{unit}"


def part_metric(part: str, unit: str) -> str:
    return PART_METRIC.format(part=part, unit=unit)


def part_metrics(parts: Mapping[str, Cost], n: int) -> dict[str, float]:
    """Each part's cost per question, as metrics :data:`PART_METRIC` (kept so that a rescored run
    can reuse the parts it does not redo, such as the sampling)."""
    n = max(n, 1)
    return {part_metric(p, u): getattr(c, u) / n for p, c in parts.items() for u in UNITS}


def parts_from_metrics(metrics: Mapping[str, float], names: Iterable[str] = PARTS) -> dict[str, Cost]:
    """The per-question part costs a run logged (:func:`part_metrics`), for the parts it has; a
    run logged under the earlier names is read as well."""
    out = {}
    for p in names:
        for pattern in (PART_METRIC, LEGACY_PART_METRIC):
            keys = [pattern.format(part=p, unit=u) for u in UNITS]
            if all(k in metrics for k in keys):
                out[p] = Cost(*(float(metrics[k]) for k in keys))
                break
    return out


def measure_costs(parts: Mapping[str, Cost], measures: Iterable[str]) -> dict[str, Cost]:
    """Each measure's cost: the sum of the parts it needs. A measure whose parts were not all
    measured is left out rather than under-counted."""
    out = {}
    for m in measures:
        need = NEEDS.get(m)
        if need is None or any(p not in parts for p in need):
            continue
        total = Cost()
        for p in need:
            total = total + parts[p]
        out[m] = total
    return out
