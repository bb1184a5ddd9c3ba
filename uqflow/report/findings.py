"""The report's first screen: each finding in one line, beside the caveats that apply to it.

A finding is an answered question of stats.py (or the cost summary); its caveats are the
differences, other than the one the question is about, between the runs it compares, and the
objections of objections.py as they bear on those runs:

- **size, tuning, precision**: the compared sides' models differ in size (``size_b``), instruction
  tuning or precision (full, 8bit, 4bit, as the store's slice views read it from the quantization), so
  that difference is part of what is measured. Tuning is
  read from the run's ``instruct`` tag (the model registry's ``instruct``); a run without the tag,
  or of a local model directory (which the registry does not describe), is "not recorded", never
  taken for a base model.
- **accuracy**: the sides' accuracies differ by :data:`ACCURACY_GAP` or more. AUROC ranks the wrong
  answers against the right ones, and which answers are wrong changes with how many are: a model
  right a quarter of the time errs on questions another model gets right, so their AUROCs are not
  measured on like errors.
- **length**: in a compared run, answer length alone flags errors (AUROC of :data:`LENGTH_SIGNAL` or
  more) and reaches the measure's AUROC or comes within :data:`LENGTH_MARGIN` of it
  (objections.length_rows), so the measure may rank little but length.
- **judge**: where runs stored other judges' verdicts, the comparison's direction (or the families'
  order) under each other judge; a reversal is the caveat.
- **n**: a comparison whose 95% interval includes 0 (or, for families, whose adjusted p is not
  below 0.05), Friedman's test that cannot reach p < 0.05 with its blocks, and runs too small to
  rank anything (objections.power_rows).

Every number comes from the answers, the objections and the study's runs; a finding with no caveat
says what was checked. Rows are plain dicts for summary.json and the HTML.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from uqflow.report.data import Study, stored_tags
from uqflow.report.stats import ALPHA, COST_QUESTION, format_number, format_p
from uqflow.scoring.measures import label

#: accuracies of the compared sides this far apart (absolute) are a caveat
ACCURACY_GAP = 0.10
#: answer length alone within this much of the measure's AUROC (or above it) is a caveat, where length
#: alone flags errors at all (an AUROC of LENGTH_SIGNAL or more): a measure at chance beside a length
#: at chance ranks nothing, length included
LENGTH_MARGIN, LENGTH_SIGNAL = 0.05, 0.6
#: flagged comparisons (or models) named in one caveat; the others are counted, to keep the row short
SHOWN = 1

#: each caveat's name in the table, what it checks, and the section of the report with its detail
CAVEATS = {
    "size": ("size", "model size (size_b)", "#fig-size_effect"),
    "tuning": ("tuning", "instruction tuning", "#fig-size_effect"),
    "quantization": ("precision", "precision (full, 8bit, 4bit)", "#runs"),
    "accuracy": ("accuracy", f"accuracy gap of {ACCURACY_GAP:.2f} or more", "#summary"),
    "length": ("length", f"answer length alone within {LENGTH_MARGIN:.2f} of the measure's AUROC", "#length"),
    "judge": ("judge", "the finding under other judges", "#judge"),
    "n": ("small n", "small n (the difference's interval, the test's power, the runs' size)", "#power"),
}
#: the difference each question is about, which is therefore no caveat of its own finding
VARIABLE = {"size": "size", "instruct": "tuning", "quantization": "quantization"}
#: checks that apply within runs (the cost finding compares measures on one run's answers)
WITHIN_RUN = ("length", "n")


def tuning(run) -> str | None:
    """ "instruct" or "base" as the run's ``instruct`` tag records it (from the model registry);
    None where nothing records it (a run predating the tag, a local model directory)."""
    value = stored_tags(getattr(run, "tags", None)).get("instruct")
    if value is None or run.family == "local":
        return None
    return "instruct" if str(value).lower() == "true" else "base"


def _size(run) -> str | None:
    """The model's size as the table writes it ("0.135B"); None where unknown (a local model directory)."""
    return f"{run.size_b:g}B" if _finite(run.size_b) else None


def _mean(values: list[float]) -> float:
    """The mean of the finite values; NaN where there are none."""
    finite = [v for v in values if _finite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _span(values: list[float]) -> str:
    """A range of numbers as the table writes it: "0.82" or "0.82 to 0.87" (which a line breaks
    between words, not inside a number)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "n/a"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f} to {hi:.2f}"


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}{'s' if k != 1 else ''}"


def _more(texts: list[str], noun: str, total: int | None = None) -> str:
    """The first :data:`SHOWN` texts (duplicates dropped), and how many more ``noun``s there are."""
    texts = list(dict.fromkeys(texts))
    rest = (total if total is not None else len(texts)) - min(len(texts), SHOWN)
    return "; ".join(texts[:SHOWN]) + (f" (and {_count(rest, 'more ' + noun)})" if rest > 0 else "")


# ---------------------------------------------------------------- what each finding compares

def contrasts(study: Study, answer: dict[str, Any]) -> list[list[tuple[str, list[str]]]]:
    """The sides each finding compares: per comparison, its groups as (name, run ids). A paired
    question compares two runs at a time, named by what tells them apart (the model where they share
    a dataset, the dataset where they share a model); the family question compares every family's
    runs at once."""
    runs = study.runs.set_index("run_id")
    if answer["key"] == "family":  # in the finding's order: the best family first
        means = answer["numbers"].get("mean_auroc_by_family", {})
        order = sorted(study.families, key=lambda f: -means[f] if _finite(means.get(f)) else math.inf)
        return [[(f, list(study.runs.loc[study.runs["family"] == f, "run_id"])) for f in order]]
    out = []
    for c in answer["comparisons"]:
        a, b = runs.loc[c["run_a"]], runs.loc[c["run_b"]]
        field = "model" if a.dataset == b.dataset and a.model != b.model else (
            "dataset" if a.model == b.model and a.dataset != b.dataset else "label")
        out.append([(str(a[field]), [c["run_a"]]), (str(b[field]), [c["run_b"]])])
    return out


def _attribute(study: Study, groups, kind: str) -> dict[str, Any]:
    """Whether the groups differ in ``kind`` (size, tuning, quantization): {"differ": bool,
    "text": each group's values, "unknown": runs that do not record it}."""
    runs = study.runs.set_index("run_id")
    precision = study.scores.drop_duplicates("run_id").set_index("run_id")["precision"]  # full, 8bit, 4bit

    def read(rid: str) -> str | None:
        r = runs.loc[rid]
        if kind == "quantization":
            return str(precision.get(rid, r.quantization))
        return _size(r) if kind == "size" else tuning(r)

    values, unknown = [], []
    for _, ids in groups:
        read_ = {rid: read(rid) for rid in ids}
        values.append({v for v in read_.values() if v is not None})
        unknown += [str(runs.loc[rid, "model"]) for rid, v in read_.items() if v is None]
    known = [v for v in values if v]
    differ = len({frozenset(v) for v in known}) > 1
    text = " vs ".join(f"{name} {'/'.join(sorted(v)) or 'not recorded'}" for (name, _), v in zip(groups, values))
    return {"differ": differ, "text": text, "unknown": sorted(set(unknown))}


def _accuracy(study: Study, groups) -> dict[str, Any]:
    """The groups' accuracies (each group's runs' range) and whether their means lie
    :data:`ACCURACY_GAP` or more apart."""
    acc = study.runs.set_index("run_id")["accuracy"].astype(float)
    per = [[acc[r] for r in ids] for _, ids in groups]
    finite = [m for m in map(_mean, per) if math.isfinite(m)]
    gap = max(finite) - min(finite) if len(finite) > 1 else 0.0
    text = " vs ".join(f"{name} {_span(v)}" for (name, _), v in zip(groups, per))
    return {"differ": gap >= ACCURACY_GAP, "gap": gap, "text": text}


# ---------------------------------------------------------------- the caveats

def _confound(study: Study, sides, kind: str) -> tuple[str | None, str | None]:
    """(caveat, why it was not checked) for size, tuning or quantization over a finding's comparisons."""
    checks = [_attribute(study, groups, kind) for groups in sides]
    unknown = sorted({m for c in checks for m in c["unknown"]})
    flagged = [c["text"] for c in checks if c["differ"]]
    caveat = None
    if flagged:
        where = f"in {len(flagged)} of {len(checks)} comparisons: " if 1 < len(checks) != len(flagged) else ""
        caveat = f"{where}{_more(flagged, 'comparison', len(flagged))}"
    missing = f"not recorded for {', '.join(unknown)}" if unknown else None
    return caveat, missing


def _accuracy_caveat(study: Study, sides) -> str | None:
    checks = [_accuracy(study, groups) for groups in sides]
    flagged = [c for c in sorted(checks, key=lambda c: -c["gap"]) if c["differ"]]
    if not flagged:
        return None
    where = f"in {len(flagged)} of {len(checks)} comparisons, " if 1 < len(checks) != len(flagged) else ""
    return f"{where}up to {flagged[0]['gap']:.2f} apart: " + _more([c["text"] for c in flagged], "comparison", len(flagged))


def _length_caveat(study: Study, run_ids: set[str], objections: dict[str, Any],
                   measure: str) -> tuple[str | None, str | None]:
    """Runs whose answer length alone flags errors and comes within :data:`LENGTH_MARGIN` of the
    measure's AUROC, by model: the two AUROCs' ranges over those runs."""
    rows = [r for r in objections["length"] if r["run_id"] in run_ids and r["measure"] == measure]
    rows = [r for r in rows if _finite(r["auroc"]) and _finite(r["length_auroc"])]
    if not rows:
        return None, f"no compared run has a length test of {label(measure)}"
    close = [r for r in rows if r["length_auroc"] >= max(r["auroc"] - LENGTH_MARGIN, LENGTH_SIGNAL)]
    if not close:
        return None, None
    models = study.runs.set_index("run_id")["model"]
    by_model: dict[str, list] = {}
    for r in close:
        by_model.setdefault(models[r["run_id"]], []).append(r)
    texts = [f"{m}: length alone {_span([r['length_auroc'] for r in rs])} vs {label(measure)} "
             f"{_span([r['auroc'] for r in rs])}" for m, rs in by_model.items()]
    where = f"in {len(close)} of {len(rows)} runs: " if len(close) != len(rows) else ""
    return where + _more(texts, "model"), None


def _finite(x) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def _judge_caveat(study: Study, sides, objections: dict[str, Any], measure: str) -> tuple[str | None, str | None]:
    """Where every run of a comparison has another judge's verdicts: does that judge reverse the
    comparison (two sides) or reorder the groups (more)? Group AUROCs are plain means over their
    runs, under the run's own judge and under the other alike."""
    own = {j["run_id"]: j["judge"] for j in objections["judges"] if j["own"]}
    auroc = {(r["run_id"], r["judge"]): r["auroc"] for r in objections["judge_aurocs"] if r["measure"] == measure}
    others = {(rid, j) for rid, j in auroc if own.get(rid) != j}
    flips, checked = [], 0
    for groups in sides:
        ids = [r for _, rs in groups for r in rs]
        for j in sorted({j for _, j in others}):
            if not all((r, j) in others for r in ids):
                continue
            mean_own = [_mean([auroc.get((r, own.get(r)), math.nan) for r in rs]) for _, rs in groups]
            mean_j = [_mean([auroc[(r, j)] for r in rs]) for _, rs in groups]
            if not all(math.isfinite(x) for x in mean_own + mean_j):
                continue
            checked += 1
            if list(np.argsort(mean_own, kind="stable")) != list(np.argsort(mean_j, kind="stable")):
                order = sorted(zip([n for n, _ in groups], mean_j), key=lambda t: -t[1])
                flips.append(f"under {j}: " + ", ".join(f"{n} {v:.2f}" for n, v in order))
    if flips:
        return f"the order changes {_more(flips, 'judge')}", None
    if not checked:
        return None, "no compared run stored another judge's verdicts; the judges setting stores them"
    return None, None


def _n_caveat(answer: dict[str, Any] | None, sides, run_ids: set[str], objections: dict[str, Any]) -> str | None:
    """Comparisons whose interval includes 0 (or whose adjusted p is not below :data:`ALPHA`),
    Friedman's test that cannot reach significance, and runs too small to rank anything."""
    parts = []
    family = answer is not None and answer["key"] == "family"
    comps = answer["comparisons"] if answer else []
    if family:
        names = [(c["b"], c["a"]) for c in comps]
    else:  # a paired question's sides are its comparisons, in order: named as the sides are
        names = [(groups[1][0], groups[0][0]) for groups in sides[:len(comps)]]

    def loose(c) -> bool:
        """Not distinguishable from 0: an undefined interval, an interval with spread that holds 0, or
        (families) an adjusted p of ALPHA or more."""
        lo, hi, p = c["ci_low"], c["ci_high"], c.get("p_adjusted")
        return (not (_finite(lo) and _finite(hi)) or lo <= 0 <= hi and hi > lo) or (_finite(p) and p >= ALPHA)

    loose = [(c, n) for c, n in zip(comps, names) if _finite(c.get("difference")) and loose(c)]
    if loose:
        def one(c, names):
            where = f" ({c['dataset']})" if family else ""
            p = f", adjusted p {format_p(c['p_adjusted'])}" if _finite(c.get("p_adjusted")) else ""
            return (f"{names[0]} − {names[1]}{where} {c['difference']:+.3f}, 95% CI [{format_number(c['ci_low'])}, "
                    f"{format_number(c['ci_high'])}], n = {c['n']}{p}")
        parts.append(f"{len(loose)} of {_count(len(comps), 'difference')} not distinguishable from 0: "
                     + _more([one(c, n) for c, n in loose], "difference", len(loose)))
    p_min = (answer or {}).get("numbers", {}).get("friedman_smallest_possible_p")
    if _finite(p_min) and p_min >= ALPHA:
        blocks = answer["numbers"]["blocks"]
        parts.append(f"Friedman's test cannot reach p < {ALPHA} with {blocks} blocks")
    small = [p for p in objections["power"] if p["run_id"] in run_ids and p["warning"]]
    if small:
        parts.append(f"{len(small)} of {_count(len(run_ids), 'run')} with too few answers to rank: "
                     + _more([f"{p['label']}, {p['n']} answers, {p['wrong']} wrong" for p in small], "run"))
    return ". ".join(parts) or None


# ---------------------------------------------------------------- the rows

def finding_row(study: Study, key: str, question: str, brief: str, href: str, sides, answer: dict[str, Any] | None,
                objections: dict[str, Any], measure: str) -> dict[str, Any]:
    """One finding with its caveats: ``caveats`` (kind, name, text, href), ``checked`` (the kinds of
    the checks that found nothing) and ``not_checked`` (kind, name, why)."""
    run_ids = {r for groups in sides for _, rs in groups for r in rs}
    found: dict[str, str | None] = {}
    missing: dict[str, str | None] = {}
    kinds = WITHIN_RUN if answer is None else tuple(k for k in CAVEATS if k != VARIABLE.get(key))
    for kind in kinds:
        if kind in ("size", "tuning", "quantization"):
            found[kind], missing[kind] = _confound(study, sides, kind)
        elif kind == "accuracy":
            found[kind] = _accuracy_caveat(study, sides)
        elif kind == "length":
            found[kind], missing[kind] = _length_caveat(study, run_ids, objections, measure)
        elif kind == "judge":
            found[kind], missing[kind] = _judge_caveat(study, sides, objections, measure)
        else:
            found[kind] = _n_caveat(answer, sides, run_ids, objections)
    caveats = [{"kind": k, "name": CAVEATS[k][0], "text": t, "href": CAVEATS[k][2]} for k, t in found.items() if t]
    not_checked = [{"kind": k, "name": CAVEATS[k][0], "why": w} for k, w in missing.items() if w and not found.get(k)]
    checked = [k for k in kinds if not found.get(k) and not missing.get(k)]
    return {"key": key, "question": question, "finding": brief, "href": href, "caveats": caveats,
            "checked": checked, "not_checked": not_checked}


def findings(study: Study, answers: dict[str, dict[str, Any]], cost: dict[str, Any], objections: dict[str, Any],
             measure: str = "g_nll") -> list[dict[str, Any]]:
    """The report's findings, each with its caveats (:func:`finding_row`): every answered question
    (``answers``: summary.json's, by key), then the cost summary where runs sampled (``cost``:
    stats.answer_cost)."""
    rows = []
    for key, a in answers.items():
        if a["answerable"]:
            rows.append(finding_row(study, key, a["question"], a["brief"] or a["answer"], f"#q-{key}",
                                    contrasts(study, a), a, objections, measure))
    if cost.get("rows"):  # measures compared within each run, G-NLL against the sampled ones
        sides = [[(r["label"], [r["run_id"]])] for r in cost["rows"]]
        rows.append(finding_row(study, "cost", COST_QUESTION, cost["answer"], "#q-cost-summary", sides, None,
                                objections, "g_nll"))
    return rows
