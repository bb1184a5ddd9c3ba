"""The report's figures: each function takes a :class:`~uqflow.report.data.Study` and returns a
matplotlib ``Figure`` (built without pyplot, so no GUI backend or global state), used alike by
``uqflow report`` and the notebook."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from uqflow.report.data import Study
from uqflow.report.plots import LABELS, rejection_figure, roc_figure  # noqa: F401  (re-exported for the notebook)
from uqflow.scoring.evaluation import incorrect_and_scores as ranked, rejection_curve

MEASURES = tuple(LABELS)


def _family_colours(study: Study) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {f: cmap(i % 10) for i, f in enumerate(study.families)}


def _axes(width: float, height: float):
    """A figure with one set of axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def auroc_heatmap(study: Study, measures=MEASURES) -> Figure:
    """AUROC of each model (rows) on each dataset (columns), one panel per measure."""
    fig = Figure(figsize=(3.2 * len(measures) + 1, 0.45 * study.runs["model"].nunique() + 2.2), layout="constrained")
    axes = fig.subplots(1, len(measures), sharey=True, squeeze=False)[0]
    models = list(dict.fromkeys(study.runs.sort_values(["family", "size_b"])["model"]))
    for ax, m in zip(axes, measures):
        grid = study.measure(m).pivot_table(index="model", columns="dataset", values="auroc").reindex(index=models,
                                                                                                     columns=study.datasets)
        im = ax.imshow(grid.to_numpy(dtype=float), vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            ax.text(j, i, "–" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if math.isfinite(v) and v < 0.75 else "black", fontsize=8)
        ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), models)
        ax.set_title(LABELS[m])
    fig.colorbar(im, ax=axes, shrink=0.8, label="AUROC (0.5 = chance)")
    fig.suptitle("AUROC by model and dataset")
    return fig


def family_bars(study: Study, measure: str = "g_nll") -> Figure:
    """AUROC of every run, grouped by family, with 95% bootstrap intervals as error bars."""
    s = study.measure(measure)
    fig, ax = _axes(max(6, 0.7 * len(s) + 2), 4.2)
    colours = _family_colours(study)
    x, ticks, pos = [], [], 0.0
    for fam, g in s.groupby("family", sort=True):
        for _, r in g.iterrows():
            err = [[max(r.auroc - r.ci_low, 0)], [max(r.ci_high - r.auroc, 0)]] if math.isfinite(r.ci_low) else None
            ax.bar(pos, r.auroc, color=colours[fam], yerr=err, capsize=3,
                   hatch="//" if r.dataset != study.datasets[0] else None, edgecolor="white")
            x.append(pos)
            ticks.append(f"{r.model}\n{r.dataset}")
            pos += 1
        pos += 0.6
    ax.axhline(0.5, ls=":", c="grey")
    ax.set_xticks(x, ticks, rotation=35, ha="right", fontsize=7)
    ax.set(ylabel=f"AUROC ({LABELS[measure]})", ylim=(0.4, 1.0), title=f"Families: {LABELS[measure]} AUROC per run, 95% CI")
    for fam, c in colours.items():
        ax.bar(np.nan, np.nan, color=c, label=fam)
    for i, ds in enumerate(study.datasets):
        ax.bar(np.nan, np.nan, color="lightgrey", hatch="//" if i else None, edgecolor="white", label=ds)
    ax.legend(fontsize="small", ncols=min(4, len(colours) + len(study.datasets)))
    return fig


def size_effect(study: Study, measure: str = "g_nll") -> Figure:
    """AUROC against model size within each family (one line per family and dataset)."""
    s = study.measure(measure)
    fig, ax = _axes(6, 4.2)
    colours = _family_colours(study)
    styles = _dataset_styles(study)
    for (fam, ds), g in s.groupby(["family", "dataset"]):
        g = g.sort_values("size_b")
        ax.errorbar(g.size_b, g.auroc, yerr=[(g.auroc - g.ci_low).clip(lower=0), (g.ci_high - g.auroc).clip(lower=0)],
                    color=colours[fam], ls=styles[ds], marker="o", capsize=3, label=f"{fam} · {ds}")
    ax.set_xscale("log")
    ax.axhline(0.5, ls=":", c="grey")
    one = s.groupby("family")["size_b"].nunique().max() < 2
    ax.set(xlabel="parameters (billions, log scale)", ylabel=f"AUROC ({LABELS[measure]})",
           title="Size effect" + (" (one size per family in this store)" if one else ""))
    ax.legend(fontsize="x-small")
    return fig


def dataset_effect(study: Study, measure: str = "g_nll") -> Figure:
    """Each model's AUROC on each dataset, joined by a line (a slope chart)."""
    s = study.measure(measure)
    fig, ax = _axes(5.5, 4.2)
    colours = _family_colours(study)
    xs = {d: i for i, d in enumerate(study.datasets)}
    for model, g in s.groupby("model"):
        g = g.sort_values("dataset")
        ax.plot([xs[d] for d in g.dataset], g.auroc, marker="o", color=colours[g.family.iloc[0]], label=model)
    ax.set_xticks(list(xs.values()), list(xs))
    ax.set_xlim(-0.4, len(xs) - 0.6)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set(ylabel=f"AUROC ({LABELS[measure]})", title="Dataset effect")
    ax.legend(fontsize="x-small")
    return fig


def accuracy_vs_auroc(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy against AUROC per run: does a model that is right more often also know when it is wrong?"""
    s = study.measure(measure)
    fig, ax = _axes(5.5, 4.5)
    colours = _family_colours(study)
    markers = dict(zip(study.datasets, "osD^v<>"))
    for _, r in s.iterrows():
        ax.scatter(r.accuracy, r.auroc, color=colours[r.family], marker=markers[r.dataset], s=50)
        ax.annotate(r.model, (r.accuracy, r.auroc), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for fam, c in colours.items():
        ax.scatter([], [], color=c, label=fam)
    for d, mk in markers.items():
        ax.scatter([], [], color="grey", marker=mk, label=d)
    ax.axhline(0.5, ls=":", c="grey")
    ax.set(xlabel="accuracy", ylabel=f"AUROC ({LABELS[measure]})", xlim=(0, 1), title="Accuracy against AUROC")
    ax.legend(fontsize="x-small")
    return fig


def family_radar(study: Study, measures=MEASURES) -> Figure:
    """One radar per family: AUROC of each measure (spokes), one polygon per dataset."""
    fams = study.families
    fig = Figure(figsize=(3.6 * len(fams), 3.9), layout="constrained")
    angles = np.linspace(0, 2 * np.pi, len(measures), endpoint=False)
    for i, fam in enumerate(fams):
        ax = fig.add_subplot(1, len(fams), i + 1, projection="polar")
        s = study.scores[study.scores.family == fam]
        for ds, g in s.groupby("dataset"):
            vals = g.groupby("measure")["auroc"].mean().reindex(measures).to_numpy(dtype=float)
            ax.plot(np.append(angles, angles[0]), np.append(vals, vals[0]), marker="o", label=ds)
        ax.set_xticks(angles, [LABELS[m] for m in measures], fontsize=7)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(fam, pad=14)
        ax.legend(fontsize="x-small", loc="lower right", bbox_to_anchor=(1.25, -0.15))
    fig.suptitle("AUROC of each measure, per family")
    return fig


def _dataset_styles(study: Study) -> dict[str, str]:
    return dict(zip(study.datasets, ["-", "--", ":", "-."] * 5))


def _decided_per_run(study: Study, measure: str):
    """(run row, correct, score) of every run's decided answers, in the runs' order."""
    for _, r in study.runs.iterrows():
        g = study.answers(r.run_id)
        g = g[g.correct.notna()]
        yield r, g.correct.astype(bool).to_numpy(), g[measure].astype(float).to_numpy()


def roc_overlay(study: Study, measure: str = "g_nll") -> Figure:
    """ROC curves of every run for one measure, overlaid."""
    from sklearn.metrics import roc_curve

    fig, ax = _axes(5.5, 5)
    colours, styles = _family_colours(study), _dataset_styles(study)
    for r, correct, score in _decided_per_run(study, measure):
        wrong, s = ranked(correct, score)  # NaN scores out, infinite ones ranked
        if wrong.all() or not wrong.any():
            continue
        fpr, tpr, _ = roc_curve(wrong, s)
        ax.plot(fpr, tpr, color=colours[r.family], ls=styles[r.dataset], label=r.label)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (wrong answers flagged)", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, {LABELS[measure]}, every run")
    ax.legend(fontsize="x-small", loc="lower right")
    return fig


def rejection_overlay(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy-rejection curves of every run for one measure, overlaid."""
    fig, ax = _axes(5.5, 4.5)
    colours, styles = _family_colours(study), _dataset_styles(study)
    for r, correct, score in _decided_per_run(study, measure):
        if correct.size:
            cov, acc = rejection_curve(correct, score)
            ax.plot(1 - cov, acc, color=colours[r.family], ls=styles[r.dataset], label=r.label)
    ax.set(xlabel="rejection rate (most uncertain first)", ylabel="accuracy of kept answers", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Accuracy-rejection, {LABELS[measure]}, every run")
    ax.legend(fontsize="x-small")
    return fig


def gnll_vs_rwgnll(study: Study) -> Figure:
    """G-NLL against RW-G-NLL, paired per run: both AUROCs with intervals, and DeLong's p."""
    g, rw = study.measure("g_nll").set_index("run_id"), study.measure("rw_g_nll").set_index("run_id")
    runs = study.runs.set_index("run_id").loc[g.index]
    fig, ax = _axes(7, 0.45 * len(g) + 1.6)
    for i, rid in enumerate(g.index):
        a, b = g.loc[rid], rw.loc[rid] if rid in rw.index else None
        ax.plot([a.ci_low, a.ci_high], [i - 0.12] * 2, c="C0", lw=1)
        ax.plot(a.auroc, i - 0.12, "o", c="C0")
        if b is not None:
            ax.plot([b.ci_low, b.ci_high], [i + 0.12] * 2, c="C1", lw=1)
            ax.plot(b.auroc, i + 0.12, "s", c="C1")
        p = runs.loc[rid, "delong_p"]
        ax.annotate("DeLong " + ("n/a" if p is None or not math.isfinite(p) else f"p={p:.3g}"), (1.0, i),
                    fontsize=7, va="center", ha="right")
    ax.plot([], [], "o", c="C0", label="G-NLL")
    ax.plot([], [], "s", c="C1", label="RW-G-NLL")
    ax.set_yticks(range(len(g)), runs["label"])
    ax.axvline(0.5, ls=":", c="grey")
    ax.set(xlabel="AUROC with 95% CI", xlim=(0.4, 1.0), title="G-NLL against RW-G-NLL, per run")
    ax.legend(fontsize="small", loc="lower left")
    return fig


#: the report's figures in order; the ones that take a measure draw the primary one
FIGURES = {
    "auroc_heatmap": auroc_heatmap, "family_bars": family_bars, "size_effect": size_effect,
    "dataset_effect": dataset_effect, "accuracy_vs_auroc": accuracy_vs_auroc, "family_radar": family_radar,
    "roc_overlay": roc_overlay, "rejection_overlay": rejection_overlay, "gnll_vs_rwgnll": gnll_vs_rwgnll,
}
_EVERY_MEASURE = {"auroc_heatmap", "family_radar", "gnll_vs_rwgnll"}  # these show several measures at once


def draw_all(study: Study, measure: str = "g_nll") -> dict[str, Figure]:
    """Every figure of the report, by name."""
    return {name: fn(study) if name in _EVERY_MEASURE else fn(study, measure) for name, fn in FIGURES.items()}


def pick_token_examples(study: Study, per_run: int = 2) -> pd.DataFrame:
    """A few answers worth looking at: per run, the most confident wrong answer and the least
    confident right one (by G-NLL), where the run stored its tokens."""
    picks = []
    for rid in study.runs.run_id:
        g = study.answers(rid)
        g = g[g.tokens.notna() & g.correct.notna() & (g.num_tokens > 0)]
        wrong, right = g[~g.correct.astype(bool)], g[g.correct.astype(bool)]
        if len(wrong):
            picks.append(wrong.nsmallest(1, "g_nll"))
        if len(right) and per_run > 1:
            picks.append(right.nlargest(1, "g_nll"))
    return pd.concat(picks) if picks else study.generations.iloc[0:0]


def token_view_html(study: Study, rows: pd.DataFrame | None = None) -> str:
    """Answers token by token: each token's NLL as a red background and its RW-G-NLL relevance as
    a blue underline (darker = more relevant, relative to the answer's most relevant token, since
    only relative weights matter to RW-G-NLL), with the question and the verdict. Self-contained HTML."""
    rows = pick_token_examples(study) if rows is None else rows
    if rows.empty:
        return "<p>No stored answer has its tokens (runs made before token texts were recorded).</p>"
    labels = study.runs.set_index("run_id")["label"]
    out = ['<div class="tokens">']
    for _, r in rows.iterrows():
        nll = -np.asarray(r.token_logprobs, dtype=float)
        rel = np.asarray(r.relevance if r.relevance is not None else [np.nan] * len(nll), dtype=float)
        spans = []
        top = np.nanmax(rel) if np.isfinite(rel).any() and np.nanmax(rel) > 0 else 1.0
        for tok, n, rv in zip(r.tokens, nll, rel):
            a = 1.0 if n == math.inf else 0.0 if not math.isfinite(n) else min(n / 5.0, 1.0)
            b = 0.0 if not math.isfinite(rv) else min(max(rv / top, 0.0), 1.0)
            spans.append(f'<span class="tok" style="background: rgba(220,40,40,{a:.2f}); '
                         f'border-bottom: 3px solid rgba(30,80,220,{b:.2f})" title="NLL {n:.3f} · relevance {rv:.3f}">'
                         f"{html.escape(tok).replace(' ', '&nbsp;')}</span>")
        verdict = "right" if bool(r.correct) else "wrong"
        out.append(f'<p><b>{html.escape(str(labels.get(r.run_id, r.run_id)))}</b> — {html.escape(str(r.question))}<br>'
                   f'<span class="verdict {verdict}">{verdict}</span> G-NLL {r.g_nll:.2f}, RW-G-NLL {r.rw_g_nll:.2f}: '
                   + "".join(spans) + "</p>")
    out.append('<p class="legend">Background: token NLL (red, saturating at 5 nats). Underline: relevance '
               "(blue, relative to the answer's most relevant token). Hover a token for its numbers.</p></div>")
    return "\n".join(out)
