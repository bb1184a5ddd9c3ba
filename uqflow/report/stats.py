"""The study's five questions, answered from the results store with their tests — or a plain
statement that the runs present cannot answer them.

Comparisons of two models on the same dataset are paired: both answered the same questions (same
seed and sample size), so each bootstrap resample draws the same questions for both and the
questions' own difficulty cancels. Comparisons across datasets are unpaired. With three or more
families measured in the same blocks (dataset x size class), families are compared with
Friedman's test: each block measures every family once, there are few blocks, and AUROCs are
bounded and not normal, so a rank-based repeated-measures test fits; with two families, the paired
bootstrap per block is used instead (Friedman needs three groups).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from uqflow.report.data import Study, stored_tags
from uqflow.scoring.evaluation import auroc_difference

QUESTIONS = {
    "size": "Does size help?",
    "family": "Which family flags its errors best?",
    "dataset": "Does the dataset matter?",
    "instruct": "Does instruction tuning help?",
    "quantization": "What does 8-bit quantization cost?",
}
ALPHA = 0.05
#: the question the cost comparison answers (answer_cost)
COST_QUESTION = "Does G-NLL do what the sampling-based measures do, at their cost?"


@dataclass
class Answer:
    """One question's answer: a sentence with its numbers, the test behind it and why that test, and
    what its intervals and p-values are (``intervals``: whether they are adjusted for multiple
    comparisons); ``brief``: the answer in one sentence, its direction and size only, for the
    report's first screen (findings.py), "" where it cannot be answered."""

    key: str
    question: str
    answerable: bool
    answer: str
    test: str = ""
    why: str = ""
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    intervals: str = ""
    brief: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(obj):
    """JSON-safe: NaN becomes None, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_number(x: float | None, digits: int = 3) -> str:
    """A figure as the report writes it: ``digits`` decimals; "n/a" where undefined."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_p(p: float | None) -> str:
    """A p-value as the report writes it everywhere (text, tables, figures): three decimals, or
    "< 0.001"; "n/a" where undefined."""
    return "n/a" if p is None or not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _p(p: float) -> str:
    text = format_p(p)
    return text if text == "n/a" else f"p {text}" if text.startswith("<") else f"p = {text}"


def _slice_means(study: Study, key: str, measure: str) -> pd.Series:
    """Mean AUROC per family (or dataset, ...) over the compared runs (the study's slice views), like
    with like: the views are keyed by precision too (full, 8bit, 4bit), and the slices are compared at
    one precision they all have (full where every slice has full-precision runs; the study's large
    models are all 8-bit); only where they share none is each slice's mean pooled, weighted by runs.
    A family's mean is the mean over datasets of its runs' mean on each dataset, so each dataset
    counts once however many of the family's models ran on it."""
    per_dataset = key == "family"
    v = study.slices["family_dataset" if per_dataset else key]
    v = v[v["measure"] == measure]
    if "precision" in v.columns:
        shared = [q for q, g in v.groupby("precision") if g[key].nunique() == v[key].nunique()]
        if shared:  # a precision every slice has: full where possible, else the one with most runs
            q = "full" if "full" in shared else max(shared, key=lambda q: v.loc[v["precision"] == q, "n_runs"].sum())
            v = v[v["precision"] == q]
        else:
            v = v.assign(w=v["mean_auroc"] * v["n_runs"]).groupby([key, "dataset"] if per_dataset else key)[
                ["w", "n_runs"]].sum()
            v = (v["w"] / v["n_runs"]).rename("mean_auroc").reset_index()
    return v.groupby(key)["mean_auroc"].mean().sort_index()  # per family: the mean of its datasets' means


def compare_runs(study: Study, run_a: str, run_b: str, measure: str, *, seed: int = 0,
                 n_resamples: int = 2000) -> dict[str, Any]:
    """AUROC(b) - AUROC(a) for ``measure``: paired over the questions both runs answered (and the
    judge decided) when they share questions, unpaired otherwise."""
    ga, gb = study.answers(run_a), study.answers(run_b)
    ga, gb = ga[ga["correct"].notna()], gb[gb["correct"].notna()]
    shared = ga.merge(gb, on="example_id", suffixes=("_a", "_b"))
    paired = len(shared) >= 0.8 * min(len(ga), len(gb)) and len(shared) > 0
    if paired:
        d = auroc_difference(shared["correct_a"].astype(bool), shared[f"{measure}_a"], shared["correct_b"].astype(bool),
                             shared[f"{measure}_b"], paired=True, seed=seed, n_resamples=n_resamples)
    else:
        d = auroc_difference(ga["correct"].astype(bool), ga[measure], gb["correct"].astype(bool), gb[measure],
                             paired=False, seed=seed, n_resamples=n_resamples)
    ra, rb = (study.runs.set_index("run_id").loc[r] for r in (run_a, run_b))
    sa = study.scores[(study.scores.run_id == run_a) & (study.scores.measure == measure)]
    sb = study.scores[(study.scores.run_id == run_b) & (study.scores.measure == measure)]
    return {"a": ra["label"], "b": rb["label"], "run_a": run_a, "run_b": run_b,
            "auroc_a": float(sa["auroc"].iloc[0]) if len(sa) else math.nan,
            "auroc_b": float(sb["auroc"].iloc[0]) if len(sb) else math.nan,
            "difference": d.difference, "ci_low": d.ci_low, "ci_high": d.ci_high, "p_value": d.p_value,
            "paired": d.paired, "n": d.n_a if d.paired else d.n_a + d.n_b}


def _mean(v: float) -> str:
    return f"{v:.3f}" if math.isfinite(v) else "undefined (every run with only right or only wrong answers)"


#: a comparison with a run whose AUROC is undefined
UNDEFINED = "undefined (a run with only right or only wrong answers)"


def _direction(comps: list[dict[str, Any]], a_name: str, b_name: str) -> str:
    """Which way the comparisons go, in one sentence: how many favour ``b_name``, and the mean difference."""
    diffs = [c["difference"] for c in comps if math.isfinite(c["difference"])]
    if not diffs:
        return "Every comparison was undefined (a run with only right or only wrong answers)."
    up = sum(d > 0 for d in diffs)
    return (f"AUROC is higher for {b_name} than for {a_name} in {up} of {len(diffs)} comparisons "
            f"(mean ΔAUROC {np.mean(diffs):+.3f}).")


def _summarise(comps: list[dict[str, Any]], a_name: str, b_name: str) -> str:
    text = _direction(comps, a_name, b_name)
    if not any(math.isfinite(c["difference"]) for c in comps):
        return text
    text += " "
    sig_up = sum(c["ci_low"] > 0 for c in comps if math.isfinite(c["ci_low"]))
    sig_down = sum(c["ci_high"] < 0 for c in comps if math.isfinite(c["ci_high"]))
    if sig_up == sig_down == 0:
        return text + "No unadjusted 95% interval excludes zero."
    return text + (f"The unadjusted 95% interval excludes zero in {sig_up} comparison(s) in favour of {b_name} and "
                   f"{sig_down} in favour of {a_name}.")


#: the comparisons' interval, as summary.json records it on each comparison
CI_LEVEL = 0.95


def _pairs_intervals(n: int) -> str:
    return (f"Each interval is a 95% percentile bootstrap interval of one comparison's AUROC difference and each p "
            f"is that comparison's two-sided bootstrap p-value; neither is adjusted for the {n} comparison"
            f"{'s' if n != 1 else ''} made here.")


def _pairs_answer(study, key, measure, pairs, a_name, b_name, why, cannot) -> Answer:
    comps = [compare_runs(study, a, b, measure) for a, b in pairs]
    if not comps:
        return Answer(key, QUESTIONS[key], False, cannot)
    test = "paired bootstrap of the AUROC difference over shared questions (2,000 resamples)"
    if not all(c["paired"] for c in comps):
        test = "bootstrap of the AUROC difference (paired over shared questions where the runs share them)"
    for c in comps:
        c.update({"ci_level": CI_LEVEL, "ci_adjusted": False, "p_adjustment": "none"})
    lines = "; ".join(f"{c['b']} vs {c['a']}: " + (
        f"{c['difference']:+.3f}, unadjusted 95% CI [{format_number(c['ci_low'])}, {format_number(c['ci_high'])}], unadjusted "
        f"{_p(c['p_value'])}" if math.isfinite(c["difference"]) else UNDEFINED) for c in comps)
    return Answer(key, QUESTIONS[key], True, f"{_summarise(comps, a_name, b_name)} Per comparison: {lines}.", test,
                  why, comps, {"mean_difference": float(np.nanmean([c["difference"] for c in comps])),
                               "comparisons": len(comps)}, _pairs_intervals(len(comps)),
                  _direction(comps, a_name, b_name))


def answer_size(study: Study, measure: str = "g_nll") -> Answer:
    runs = study.runs
    pairs, confounded = [], set()
    for _, g in runs.groupby(["family", "dataset"]):
        sizes = sorted(g["size_b"].unique())
        if len(sizes) < 2:
            continue
        small, large = g[g.size_b == sizes[0]].iloc[-1], g[g.size_b == sizes[-1]].iloc[-1]
        pairs.append((small.run_id, large.run_id))
        if small.quantization != large.quantization:
            confounded.add("quantization")
        if small.instruct != large.instruct:
            confounded.add("instruction tuning")
    cannot = ("The runs present cannot answer this: every family in the store has runs of one size only "
              f"({', '.join(f'{f}: {runs[runs.family == f].size_b.iloc[0]:g}B' for f in study.families)}). "
              "Run two sizes of a family (grids/multi_family.yaml does) and aggregate again.")
    a = _pairs_answer(study, "size", measure, pairs, "the smaller model", "the larger model",
                      "The two sizes of a family answer the same questions, so the comparison is paired, which "
                      "cancels the questions' own difficulty.", cannot)
    if a.answerable and confounded:
        a.answer += (f" Caution: within these pairs the two sizes also differ in {' and '.join(sorted(confounded))}, "
                     "so that difference is part of what is measured.")
    return a


def answer_dataset(study: Study, measure: str = "g_nll") -> Answer:
    pairs = []
    for _, g in study.runs.groupby("model"):
        ds = sorted(g["dataset"].unique())
        for i in range(1, len(ds)):
            pairs.append((g[g.dataset == ds[0]].iloc[-1].run_id, g[g.dataset == ds[i]].iloc[-1].run_id))
    cannot = (f"The runs present cannot answer this: no model has runs on two datasets (datasets: "
              f"{', '.join(study.datasets)}).")
    first = study.datasets[0]
    second = study.datasets[1] if len(study.datasets) == 2 else "the other dataset"
    a = _pairs_answer(study, "dataset", measure, pairs, first, second,
                      "Different datasets have different questions, so each run is resampled on its own "
                      "(unpaired bootstrap); the model is held fixed.", cannot)
    if a.answerable:
        a.test = "unpaired bootstrap of the AUROC difference, per model (2,000 resamples)"
        by_ds = _slice_means(study, "dataset", measure)
        a.numbers["mean_auroc_by_dataset"] = by_ds.to_dict()
        a.brief = "Mean AUROC by dataset: " + ", ".join(f"{d} {_mean(v)}" for d, v in by_ds.items()) + "."
        a.answer = a.brief + " " + a.answer
    return a


def answer_instruct(study: Study, measure: str = "g_nll") -> Answer:
    pairs = []
    for _, g in study.runs.groupby(["family", "size_b", "quantization", "dataset"]):
        if g["instruct"].nunique() == 2:
            pairs.append((g[~g.instruct].iloc[-1].run_id, g[g.instruct].iloc[-1].run_id))
    kinds = ", ".join(f"{m} ({'instruct' if i else 'base'})"
                      for m, i in study.runs[["model", "instruct"]].drop_duplicates().itertuples(index=False))
    cannot = ("The runs present cannot answer this: no family has a base and an instruction-tuned model of the same "
              f"size and quantization on the same dataset (models: {kinds}). Comparing across families would "
              "confound tuning with the family.")
    return _pairs_answer(study, "instruct", measure, pairs, "the base model", "the instruction-tuned model",
                         "Base and instruct versions of one model answer the same questions: paired comparison.",
                         cannot)


#: quantizations applied by bitsandbytes as a model loads; every other value (``none``, or a
#: ``gguf-*`` file de-quantized on load) is the model's unquantized baseline
BNB_QUANTIZATIONS = ("8bit", "4bit")


def quantization_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(baseline run, quantized run) pairs: the same family, size, tuning and dataset, the one run by
    bitsandbytes (``8bit``/``4bit``) and the other not. A quantized model is paired with the model of
    its own name less the suffix (``SmolLM2-135M-Instruct-8bit`` with ``SmolLM2-135M-Instruct``, whose
    quantization is ``gguf-q4_1``), else with an unquantized (``none``) model of its group; the later run
    of each model is taken."""
    pairs = []
    for _, g in runs.groupby(["family", "size_b", "instruct", "dataset"]):
        quantized = g[g.quantization.isin(BNB_QUANTIZATIONS)]
        base = g[~g.quantization.isin(BNB_QUANTIZATIONS)]
        if quantized.empty or base.empty:
            continue
        for model in sorted(quantized.model.unique()):
            q = quantized[quantized.model == model].iloc[-1]
            same = base[base.model == model.removesuffix(f"-{q.quantization}")]
            if same.empty:
                same = base[base.quantization == "none"]
            if not same.empty:
                pairs.append((same.iloc[-1].run_id, q.run_id))
    return pairs


def answer_quantization(study: Study, measure: str = "g_nll") -> Answer:
    pairs = quantization_pairs(study.runs)
    quants = ", ".join(f"{m}: {q}" for m, q in study.runs[["model", "quantization"]].drop_duplicates().itertuples(index=False))
    cannot = ("The runs present cannot answer this: no model was run both quantized and unquantized on the same "
              f"dataset ({quants}). In the reference study only the large models are quantized, so there size and "
              "quantization are confounded; run one large model in bf16 beside its 8-bit run to measure the cost, "
              "or a bundled model beside its -8bit variant (SmolLM2-135M-Instruct and SmolLM2-135M-Instruct-8bit).")
    a = _pairs_answer(study, "quantization", measure, pairs, "full precision", "the quantized model",
                      "The quantized and full-precision versions of one model answer the same questions: "
                      "paired comparison.", cannot)
    by_id = study.runs.set_index("run_id")
    spread = quantization_spread(study, pairs) if a.answerable else []
    if spread:
        a.numbers["batch_spread"] = spread
        a.answer += " " + " ".join(_spread_text(r) for r in spread)
    elif a.answerable:
        a.answer += (" Each quantized figure comes from one batch composition (its answers depend on which questions "
                     "share a batch); set batch_compositions=3 or more to measure how much that moves it.")
    gguf = sorted({f"{by_id.loc[b, 'model']} ({by_id.loc[b, 'quantization']})" for b, _ in pairs
                   if str(by_id.loc[b, "quantization"]).startswith("gguf-")})
    if a.answerable and gguf:
        a.answer += (f" Here full precision means weights read from a GGUF file and de-quantized to float "
                     f"({', '.join(gguf)}); the quantized runs quantize those same weights with bitsandbytes.")
    if a.answerable:
        machines = quantization_machines(study, pairs)
        a.numbers["machines"] = machines
        a.answer += _machines_text(machines)
    return a


def quantization_machines(study: Study, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The machines behind the compared runs, from their tags (uqflow/machine.py): each run's
    machine fingerprint (None where the run predates the record), the quantized runs whose figures
    hold for their machine only (bitsandbytes on a CPU) with that machine's facts, and the distinct
    fingerprints among all the runs compared."""
    from uqflow import machine

    by_id = study.runs.set_index("run_id")

    def tags(run_id: str) -> dict[str, str]:
        return stored_tags(by_id.loc[run_id, "tags"] if "tags" in by_id.columns else None)

    runs = list(dict.fromkeys(r for pair in pairs for r in pair))
    fingerprints = {by_id.loc[r, "label"]: tags(r).get(machine.FINGERPRINT_TAG) for r in runs}
    dependent = {}
    for _, quant in pairs:
        t = tags(quant)
        if machine.machine_dependent(t):
            dependent[by_id.loc[quant, "label"]] = {
                "fingerprint": t.get(machine.FINGERPRINT_TAG), "cpu": t.get(machine.CPU_TAG),
                "cpu_capability": t.get(machine.CPU_CAPABILITY_TAG), "threads": t.get(machine.THREADS_TAG),
                "bitsandbytes": t.get(machine.BNB_VERSION_TAG)}
    return {"fingerprints": fingerprints, "machine_dependent": dependent,
            "distinct": sorted({f for f in fingerprints.values() if f})}


def _machines_text(m: dict[str, Any]) -> str:
    text = ""
    if m["machine_dependent"]:
        where = sorted({f"machine {d['fingerprint']}: {d['cpu']}, {d['cpu_capability']} kernels, {d['threads']} "
                        f"threads, bitsandbytes {d['bitsandbytes']}" if d["fingerprint"] else "not recorded: the runs predate uqflow's machine tags"
                        for d in m["machine_dependent"].values()})
        text += (f" The quantized figures hold for the machine{'s' if len(where) > 1 else ''} that made them "
                 f"({'; '.join(where)}): bitsandbytes' int8 and NF4 kernels on a CPU answer differently with the "
                 "instruction set, the threads and the library versions, as they do with the batch's composition, so "
                 "another machine gives other quantized figures, by about as much as the batch-composition spread; "
                 "the full-precision figures agree across machines up to float rounding.")
    distinct, unknown = m["distinct"], [label for label, f in m["fingerprints"].items() if not f]
    if len(distinct) > 1:
        groups = "; ".join(f"{fp}: {', '.join(label for label, f in m['fingerprints'].items() if f == fp)}"
                           for fp in distinct)
        text += (f" The runs compared come from {len(distinct)} different machines ({groups}), so their differences "
                 "include the machines'.")
    if unknown and distinct:
        text += f" {len(unknown)} of the runs compared record no machine ({', '.join(unknown)})."
    return text


def quantization_spread(study: Study, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each (baseline, quantized) pair whose quantized run measured its batch spread (the
    ``batch_compositions`` setting): the quantized model's G-NLL AUROC and accuracy over its batch
    compositions (min, max), the baseline's, and whether the baseline lies outside that range (the
    difference exceeds what the batching alone moves)."""
    import json

    out = []
    by_id = study.runs.set_index("run_id")
    for base, quant in pairs:
        m = by_id.loc[quant, "metrics"]
        m = json.loads(m) if isinstance(m, str) else (m or {})
        lo, hi = m.get("batch_spread/auroc_g_nll_min"), m.get("batch_spread/auroc_g_nll_max")
        if lo is None or hi is None:
            continue
        b = study.scores[(study.scores.run_id == base) & (study.scores.measure == "g_nll")]["auroc"]
        b_auroc = float(b.iloc[0]) if len(b) else math.nan
        out.append({"label": by_id.loc[quant, "label"], "baseline": by_id.loc[base, "label"],
                    "compositions": int(m.get("batch_spread/compositions", 0)), "auroc_min": lo, "auroc_max": hi,
                    "accuracy_min": m.get("batch_spread/accuracy_min"), "accuracy_max": m.get("batch_spread/accuracy_max"),
                    "changed_answers": m.get("batch_spread/changed_answers"), "baseline_auroc": b_auroc,
                    "baseline_accuracy": float(by_id.loc[base, "accuracy"]),
                    "exceeds_spread": bool(math.isfinite(b_auroc) and not lo <= b_auroc <= hi)})
    return out


def _spread_text(r: dict[str, Any]) -> str:
    verdict = ("lies outside that range, so the difference exceeds what the batching alone moves" if r["exceeds_spread"]
               else "lies inside that range, so the difference is within what the batching alone moves")
    if not math.isfinite(r["baseline_auroc"]):
        verdict = "is undefined (only right or only wrong answers), so nothing can be compared with the spread"
    return (f"{r['label']}: over {r['compositions']} batch compositions its G-NLL AUROC ranged {format_number(r['auroc_min'])}-"
            f"{format_number(r['auroc_max'])} and its accuracy {format_number(r['accuracy_min'])}-{format_number(r['accuracy_max'])} "
            f"({100 * (r['changed_answers'] or 0):.0f}% of answers changed with the composition); the full-precision "
            f"AUROC {format_number(r['baseline_auroc'])} {verdict}.")


def family_differences(study: Study, measure: str = "g_nll", *, n_resamples: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per dataset and pair of families: the difference in the families' mean AUROC over their runs
    on that dataset, with a bootstrap over the questions that every run on the dataset answered and
    the judge decided. All runs are resampled with the same questions, so the comparison is paired.
    p-values are two-sided bootstrap tail probabilities, then adjusted across all pairs and datasets
    with Benjamini-Hochberg (``p_adjusted``)."""
    import warnings
    from itertools import combinations

    from scipy.stats import false_discovery_control

    from uqflow.scoring.evaluation import _aurocs

    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    out: list[dict[str, Any]] = []
    for ds in study.datasets:
        runs = study.runs[study.runs.dataset == ds]
        fams = sorted(runs.family.unique())
        if len(fams) < 2:
            continue
        frames = [study.answers(r).set_index("example_id") for r in runs.run_id]
        usable = [set(f.index[f.correct.notna() & f[measure].astype(float).notna()]) for f in frames]
        ids = sorted(set.intersection(*usable))
        if len(ids) < 10:
            continue
        wrong = np.stack([~f.loc[ids, "correct"].astype(bool).to_numpy() for f in frames])  # (runs, questions)
        score = np.stack([f.loc[ids, measure].astype(float).to_numpy() for f in frames])
        idx = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
        point, boot = _aurocs(wrong, score), _aurocs(wrong[:, idx], score[:, idx])  # (runs,), (runs, resamples)
        family = runs.family.to_numpy()
        for fa, fb in combinations(fams, 2):
            a, b = family == fa, family == fb
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a family whose runs are all one-class
                diff = float(np.nanmean(point[b]) - np.nanmean(point[a]))
                d = np.nanmean(boot[b], axis=0) - np.nanmean(boot[a], axis=0)
            d = d[np.isfinite(d)]
            if not math.isfinite(diff) or d.size < n_resamples // 2:
                continue
            lo, hi = np.quantile(d, [alpha, 1 - alpha])
            p = min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1 / d.size))
            out.append({"dataset": ds, "a": fa, "b": fb, "runs_a": int(a.sum()), "runs_b": int(b.sum()),
                        "difference": diff, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p),
                        "n": len(ids), "paired": True, "ci_level": confidence, "ci_adjusted": False})
    if out:
        adjusted = false_discovery_control([c["p_value"] for c in out], method="bh")
        for c, q in zip(out, adjusted):
            c["p_adjusted"] = float(q)
            c["p_adjustment"] = f"Benjamini-Hochberg over {len(out)} comparisons (p_adjusted)"
    return out


def answer_family(study: Study, measure: str = "g_nll") -> Answer:
    from scipy.stats import chi2, friedmanchisquare

    s = study.measure(measure)
    fams = study.families
    means = _slice_means(study, "family", measure)
    ranking = ", ".join(f"{f} {_mean(v)}" for f, v in means.sort_values(ascending=False).items())
    numbers: dict[str, Any] = {"mean_auroc_by_family": means.to_dict()}
    if len(fams) < 2:
        return Answer("family", QUESTIONS["family"], False,
                      f"The runs present cannot answer this: the store holds one family only ({fams[0]}, mean AUROC "
                      f"{means.iloc[0]:.3f}).", numbers=numbers)
    pairs = family_differences(study, measure)
    parts, tests = [f"Mean AUROC by family: {ranking}."], []
    blocks = s.pivot_table(index=["dataset", "size_class"], columns="family", values="auroc", aggfunc="mean").dropna()
    block_kind = "dataset × size class"
    if len(blocks) < 2:  # e.g. a family with one size: its runs cannot be matched by size, so by dataset only
        blocks = s.pivot_table(index="dataset", columns="family", values="auroc", aggfunc="mean").dropna()
        block_kind = "dataset, each family's mean over its runs"
    # a family whose every AUROC is undefined (only right or only wrong answers) has no column here
    if len(blocks.columns) >= 3 and len(blocks) >= 2:
        stat, p = friedmanchisquare(*[blocks[f].to_numpy() for f in blocks.columns])
        k, n = len(blocks.columns), len(blocks)
        p_min = float(chi2.sf(n * (k - 1), k - 1))  # all blocks ranking the families alike
        numbers.update({"friedman_chi2": float(stat), "p_value": float(p), "blocks": n, "block_kind": block_kind,
                        "friedman_smallest_possible_p": p_min})
        parts.append(f"Friedman's test over {n} blocks ({block_kind}): χ² = {stat:.2f}, {_p(p)}"
                     + (f"; with {n} blocks it cannot reach p < {ALPHA} whatever the data (smallest possible "
                        f"p = {p_min:.3f}), so the pairwise comparisons below carry the evidence." if p_min >= ALPHA
                        else (": the families differ." if p < ALPHA else ": the data do not show the families differ.")))
        tests.append(f"Friedman test (blocks: {block_kind})")
    intervals = ""
    if pairs:
        sig = [c for c in pairs if c["p_adjusted"] < ALPHA]
        parts.append(f"Pairwise, per dataset, on the questions all its runs share: {len(sig)} of {len(pairs)} "
                     f"differences in mean AUROC are distinguishable from zero after Benjamini-Hochberg adjustment "
                     f"(adjusted p < {ALPHA}). "
                     + "; ".join(_family_pair_text(c) for c in pairs) + ".")
        intervals = (f"The family comparisons' p-values are adjusted with Benjamini-Hochberg across all {len(pairs)} "
                     "family pairs and datasets; their 95% bootstrap intervals are not adjusted, so an interval can "
                     f"exclude zero while the adjusted p is above {ALPHA} — such a difference is not distinguishable "
                     "after adjustment."
                     + (" Friedman's p is one test, unadjusted." if "friedman_chi2" in numbers else ""))
        tests.append("paired bootstrap of the difference in family-mean AUROC over shared questions, per dataset "
                     "(2,000 resamples, Benjamini-Hochberg adjusted)")
    if not tests:
        return Answer("family", QUESTIONS["family"], False,
                      f"The runs present cannot answer this: the families were not run on a common dataset "
                      f"(mean AUROC {ranking}).", numbers=numbers)
    why = ("Friedman's test fits the design — every block measures every family once, blocks are few, and AUROC is "
           "bounded and not normal, so ranks within blocks are the safe statistic — but a handful of blocks gives it "
           "little power. Every run on a dataset answers the same questions, so resampling those questions jointly "
           "gives paired, much tighter comparisons of the families themselves." if len(tests) == 2 else
           "Friedman's test needs three families and two blocks; every run on a dataset answers the same questions, "
           "so resampling them jointly compares the families directly (paired).")
    return Answer("family", QUESTIONS["family"], True, " ".join(parts), "; ".join(tests), why, pairs, numbers,
                  intervals or "Friedman's p is one test, unadjusted.", parts[0])


def _family_pair_text(c: dict[str, Any]) -> str:
    """One family comparison in words: the difference, its unadjusted interval, its adjusted p, and a
    note where the two disagree."""
    if not math.isfinite(c["difference"]):
        return f"{c['b']} − {c['a']} on {c['dataset']}: {UNDEFINED}"
    text = (f"{c['b']} − {c['a']} on {c['dataset']}: {c['difference']:+.3f}, unadjusted 95% CI "
            f"[{format_number(c['ci_low'])}, {format_number(c['ci_high'])}], Benjamini-Hochberg adjusted {_p(c['p_adjusted'])}")
    excludes = (math.isfinite(c["ci_low"]) and c["ci_low"] > 0) or (math.isfinite(c["ci_high"]) and c["ci_high"] < 0)
    if excludes and c["p_adjusted"] >= ALPHA:
        text += " (the unadjusted interval excludes zero, but after adjustment this is not distinguishable from zero)"
    return text


def answer_all(study: Study, measure: str = "g_nll") -> list[Answer]:
    return [answer_size(study, measure), answer_family(study, measure), answer_dataset(study, measure),
            answer_instruct(study, measure), answer_quantization(study, measure)]


def best_performers(study: Study) -> dict[str, Any]:
    """The best run per measure, the best measure per run, and the best family per measure (by the
    family means the family question gives: like with like, each dataset counted once)."""
    s = study.scores.dropna(subset=["auroc"])
    best_run = s.loc[s.groupby("measure")["auroc"].idxmax(), ["measure", "label", "auroc", "ci_low", "ci_high"]]
    best_measure = s.loc[s.groupby("run_id")["auroc"].idxmax(), ["label", "measure", "auroc"]]
    best_family = []
    for m in sorted(s["measure"].unique()):
        means = _slice_means(study, "family", m).dropna()
        if len(means):
            best_family.append({"measure": m, "family": means.idxmax(), "auroc": float(means.max())})
    return _clean({"run_per_measure": best_run.to_dict("records"), "measure_per_run": best_measure.to_dict("records"),
                   "family_per_measure": best_family})


def delong_table(study: Study) -> pd.DataFrame:
    """G-NLL against RW-G-NLL per run: both AUROCs and DeLong's paired test (from the store)."""
    g, rw = study.measure("g_nll").set_index("run_id"), study.measure("rw_g_nll").set_index("run_id")
    r = study.runs.set_index("run_id")
    out = pd.DataFrame({"label": r["label"], "auroc_g_nll": g["auroc"], "auroc_rw_g_nll": rw["auroc"],
                        "delong_z": r["delong_z"], "delong_p": r["delong_p"]})
    return out.reset_index().sort_values("label").reset_index(drop=True)


def cheapest_adequate(study: Study, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Per run that sampled: the best measure by AUROC, and the cheapest measure (extra seconds per
    question beyond the greedy pass, then forward passes) that is not significantly worse than it:
    DeLong's paired test over the run's own decided answers (every measure scores the same
    questions), two-sided at ``alpha``, unadjusted. G-NLL's standing against the best is given too.
    Runs whose AUROCs are undefined (one class) are left out."""
    from uqflow.scoring.evaluation import delong_test
    from uqflow.scoring.measures import SAMPLED

    rows = []
    latest = study.latest()  # one run per cell
    for r in latest.itertuples():
        sc = study.scores[(study.scores["run_id"] == r.run_id) & study.scores["auroc"].notna()]
        if sc.empty or not set(sc["measure"]) & set(SAMPLED):
            continue
        g = study.answers(r.run_id)
        g = g[g["correct"].notna()]
        correct = g["correct"].astype(bool).to_numpy()
        best = sc.loc[sc["auroc"].idxmax()]
        tests = {}
        for s in sc.itertuples():
            if s.measure == best.measure:
                tests[s.measure] = (math.nan, 1.0)
                continue
            d = delong_test(correct, g[best.measure].to_numpy(dtype=float), g[s.measure].to_numpy(dtype=float))
            tests[s.measure] = (d.z, d.p_value)

        def adequate(s) -> bool:
            p = tests[s.measure][1]
            return s.auroc >= best.auroc or not (p < alpha)  # an undefined test (NaN) is no evidence of worse

        ok = [s for s in sc.itertuples() if adequate(s)]
        cheapest = min(ok, key=lambda s: (s.cost_seconds if math.isfinite(s.cost_seconds) else math.inf,
                                          s.cost_passes if math.isfinite(s.cost_passes) else math.inf, -s.auroc))
        gn = sc[sc["measure"] == "g_nll"]
        rows.append(_clean({
            "label": r.label, "run_id": r.run_id, "n": len(g), "best": best.measure, "best_auroc": best.auroc,
            "best_cost_seconds": best.cost_seconds, "cheapest": cheapest.measure, "cheapest_auroc": cheapest.auroc,
            "cheapest_cost_seconds": cheapest.cost_seconds, "cheapest_cost_passes": cheapest.cost_passes,
            "cheapest_p": tests[cheapest.measure][1],
            "g_nll_auroc": float(gn["auroc"].iloc[0]) if len(gn) else math.nan,
            "g_nll_p": tests.get("g_nll", (math.nan, math.nan))[1],
            "g_nll_adequate": bool(len(gn) and adequate(next(gn.itertuples()))),
        }))
    return rows


def sampled_against_g_nll(study: Study) -> list[dict[str, Any]]:
    """Per run that sampled, G-NLL and each sampled measure on the same decided answers: the AUROC
    with its interval (the run's), PRR at 50% rejection normalised (the field's metric) with a
    bootstrap interval over the answers, the AUROC's difference from G-NLL's (measure - G-NLL),
    DeLong's paired test against G-NLL (two-sided, unadjusted) and what the measure cost beyond
    the greedy pass per question."""
    from uqflow.scoring.evaluation import delong_test, prr_with_ci
    from uqflow.scoring.measures import SAMPLED

    rows = []
    for r in study.latest().itertuples():  # one run per cell
        sc = study.scores[study.scores["run_id"] == r.run_id]
        sampled = sc[sc["measure"].isin(SAMPLED)]
        gn = sc[sc["measure"] == "g_nll"]
        if sampled.empty or gn.empty:
            continue
        g = study.answers(r.run_id)
        g = g[g["correct"].notna()]
        correct = g["correct"].astype(bool).to_numpy()
        g_auroc = float(gn["auroc"].iloc[0])
        for s in pd.concat([gn, sampled]).itertuples():
            scores = g[s.measure].to_numpy(dtype=float)
            prr50, prr_low, prr_high = prr_with_ci(correct, scores, seed=0)
            d = delong_test(correct, scores, g["g_nll"].to_numpy(dtype=float))
            own = s.measure == "g_nll"
            rows.append(_clean({"label": r.label, "run_id": r.run_id, "measure": s.measure, "auroc": s.auroc,
                                "ci_low": s.ci_low, "ci_high": s.ci_high, "prr50": prr50, "prr50_low": prr_low,
                                "prr50_high": prr_high, "g_nll_auroc": g_auroc,
                                "difference": math.nan if own else s.auroc - g_auroc,
                                "p_value": math.nan if own else d.p_value,
                                "cost_seconds": s.cost_seconds, "cost_passes": s.cost_passes}))
    return rows


def answer_cost(study: Study, alpha: float = 0.05) -> dict[str, Any]:
    """What a sampling-based measure buys over G-NLL, and at what cost: the table of
    :func:`cheapest_adequate`, each sampled measure against G-NLL, and one sentence."""
    rows = cheapest_adequate(study, alpha)
    if not rows:
        return {"question": COST_QUESTION, "rows": [], "versus_g_nll": [],
                "answer": "No run sampled answers (num_generations = 0), so no sampling-based measure "
                          "can be compared; run a grid such as grids/cpu_baselines.yaml."}
    k = sum(r["g_nll_adequate"] for r in rows)
    zero = sum(r["cheapest_cost_seconds"] == 0 for r in rows)
    return {"question": COST_QUESTION, "rows": rows, "versus_g_nll": sampled_against_g_nll(study), "answer": (
        f"In {k} of {len(rows)} runs that sampled, G-NLL (no cost beyond the greedy pass) is not significantly "
        f"worse than the best measure (DeLong's paired test, two-sided, alpha = {alpha}, unadjusted); in {zero} of "
        f"{len(rows)} the cheapest adequate measure costs nothing beyond the greedy pass.")}
