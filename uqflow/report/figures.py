"""The report's figures: each function takes a :class:`~uqflow.report.data.Study` and returns a
matplotlib ``Figure`` (built without pyplot, so no GUI backend or global state), used alike by
``uqflow report`` and the notebook.

Every figure is drawn to be read at its own size: at most :data:`WIDTH` inches wide at :data:`DPI`
(so ``report.html`` shows it at its natural pixel size, see
:data:`uqflow.report.build.FIGURE_DISPLAY_MAX_PX`), with no text smaller than :data:`SMALL` points.
Every AUROC axis runs from 0 to 1 (bars start at 0) with a dotted line at 0.5 = chance, and every
error bar says what interval it is (a run's 95% bootstrap interval, not adjusted for multiple
comparisons).
"""

from __future__ import annotations

import functools
import math
import textwrap

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from uqflow.report.data import Study
from uqflow.report.labels import label_points
from uqflow.report.stats import format_p
from uqflow.plots import rejection_figure, roc_figure  # noqa: F401  (re-exported for the notebook)
from uqflow.scoring.evaluation import incorrect_and_scores as ranked, rejection_curve
from uqflow.scoring.measures import LABELS, NAMES, SAMPLED, SHORT_LABELS, SINGLE_PASS, label


#: pixels per inch of the report's PNGs (``build._png`` saves at this resolution)
DPI = 110
#: the width of every figure, in inches: 715 px at DPI, shown 1:1 in report.html
WIDTH = 6.5
#: the figures' text size and the smallest text in any figure, in points (13.75 and 12.2 px at DPI)
TEXT, SMALL = 9.0, 8.0
#: how every AUROC axis is drawn, said on the figures that have one
AUROC_AXIS = "axis from 0; dotted line: 0.5 = chance"
#: what every error bar of a run's AUROC is
RUN_CI = "95% bootstrap CI per run, not adjusted for multiple comparisons"

_RC = {"font.size": TEXT, "axes.titlesize": 10.5, "axes.labelsize": TEXT, "xtick.labelsize": TEXT,
       "ytick.labelsize": TEXT, "legend.fontsize": SMALL, "legend.title_fontsize": SMALL, "figure.titlesize": 11}
_MARKERS = "osD^vP*X<>ph"
_CHANCE = {"ls": ":", "c": "grey", "lw": 1}


def _styled(fn):
    """Draw ``fn``'s figure with the report's text sizes."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with rc_context(_RC):
            return fn(*args, **kwargs)
    return wrapper


def _figure(height: float, width: float = WIDTH) -> Figure:
    """A figure at the report's resolution, with a canvas that can measure text."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _axes(height: float, width: float = WIDTH):
    """A figure with one set of axes."""
    fig = _figure(height, width)
    return fig, fig.add_subplot()


def _family_colours(study: Study) -> dict[str, tuple]:
    cmap = colormaps["tab10"]
    return {f: cmap(i % 10) for i, f in enumerate(study.families)}


def _dataset_styles(study: Study) -> dict[str, object]:
    """A line style per dataset (the dotted style is the chance line's, so not used here)."""
    return dict(zip(study.datasets, ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2))] * 5))


def _dataset_markers(study: Study) -> dict[str, str]:
    return dict(zip(study.datasets, "osD^v<>P" * 3))


def _model_markers(study: Study) -> dict[str, str]:
    """A marker per model, distinct within each family (the colour is the family's)."""
    out = {}
    for _, g in study.runs.sort_values(["family", "size_b", "model"]).groupby("family"):
        for i, m in enumerate(dict.fromkeys(g["model"])):
            out[m] = _MARKERS[i % len(_MARKERS)]
    return out


def _scores(study: Study, measure: str) -> pd.DataFrame:
    """:meth:`Study.measure` for the compared runs (one per model x dataset)."""
    s = study.measure(measure)
    return s[s["run_id"].isin(set(study.latest()["run_id"]))].reset_index(drop=True)


def _repeated_note(study: Study) -> str:
    """Where the store holds runs the study does not compare (:data:`~uqflow.report.data.SELECTION_RULE`), how many."""
    k = len(study.set_aside)
    return f" ({k} run{'s' if k != 1 else ''} set aside)" if k else ""


def _name(label: str) -> str:
    """A run's label as the figures write it: "model · dataset" (labels are unique among the compared runs)."""
    return label.replace(" × ", " · ")


def _yerr(g: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from a frame's ci_low/ci_high (0 where the interval is undefined)."""
    lo = (g["auroc"] - g["ci_low"]).clip(lower=0).fillna(0).to_numpy(dtype=float)
    hi = (g["ci_high"] - g["auroc"]).clip(lower=0).fillna(0).to_numpy(dtype=float)
    return np.vstack([lo, hi])


def _legend_below(fig: Figure, handles, ncols: int | None = None, **kw):
    """A figure legend under the axes (outside them, so it never covers data)."""
    if not handles:
        return None
    ncols = ncols or min(3, len(handles))
    return fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False, **kw)


def _legend_rows(n: int, ncols: int) -> float:
    """Inches a legend of ``n`` entries in ``ncols`` columns takes."""
    return 0.22 * math.ceil(n / max(ncols, 1)) + 0.15


def _wrap(label: str, width: int = 11) -> str:
    return textwrap.fill(label, width)


@_styled
def auroc_heatmap(study: Study, measures=None) -> Figure:
    """AUROC of each run (rows: model · dataset) for each measure (columns; by default every measure
    the store has), with its value printed; the colour scale runs from 0 to 1 and is white at 0.5
    (chance)."""
    measures = measures or study.measures
    runs = study.latest()
    auroc = study.scores.set_index(["run_id", "measure"])["auroc"]
    grid = np.array([[auroc.get((rid, m), np.nan) for m in measures] for rid in runs["run_id"]], dtype=float)
    fig, ax = _axes(0.3 * len(runs) + 2.4)
    cmap = colormaps["RdBu"]
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        dark = math.isfinite(v) and np.dot(cmap(v)[:3], (0.299, 0.587, 0.114)) < 0.5
        ax.text(j, i, "–" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=TEXT,
                color="white" if dark else "black")
    ax.xaxis.tick_top()
    if len(measures) > 8:  # the sampled measures too: slanted, so that the labels do not run together
        ax.set_xticks(range(len(measures)), [label(m) for m in measures], rotation=35, ha="left",
                      rotation_mode="anchor", fontsize=SMALL)
    elif len(measures) > 5:  # the length baselines beside the single-pass scores: upright labels, one line each
        ax.set_xticks(range(len(measures)), [label(m) for m in measures], rotation=90, ha="center",
                      va="bottom", fontsize=SMALL)
    else:
        ax.set_xticks(range(len(measures)), [_wrap(LABELS[m]) for m in measures])
    ax.set_yticks(range(len(runs)), [_name(r.label) for r in runs.itertuples()])
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, location="bottom", shrink=0.8, aspect=30, fraction=0.6 / (0.3 * len(runs) + 2.4),
                 label="AUROC, colour scale 0 to 1 (white = 0.5 = chance)")
    ax.set_title("AUROC by run and measure" + _repeated_note(study))
    return fig


@_styled
def family_bars(study: Study, measure: str = "g_nll") -> Figure:
    """AUROC of every run, grouped by family, as bars from 0 with each run's 95% bootstrap
    interval (unadjusted) as whiskers."""
    s = _scores(study, measure)
    colours = _family_colours(study)
    first = study.datasets[0]
    n_fams = s["family"].nunique()
    handles = [Patch(facecolor=c, label=f) for f, c in colours.items()]
    handles += [Patch(facecolor="0.8", edgecolor="0.3", hatch="//" if ds != first else None, label=ds)
                for ds in study.datasets]
    ncols = min(4, len(handles))
    fig, ax = _axes(0.3 * len(s) + 0.2 * n_fams + 2.1 + _legend_rows(len(handles), ncols))
    ys, ticks, pos = [], [], 0.0
    for fam, g in s.groupby("family", sort=True):
        for r in g.itertuples():
            ok = math.isfinite(r.auroc)
            ax.barh(pos, r.auroc if ok else 0.0, height=0.8, color=colours[fam], edgecolor="white", lw=0,
                    hatch="//" if r.dataset != first else None)
            if ok and math.isfinite(r.ci_low) and math.isfinite(r.ci_high):
                ax.errorbar(r.auroc, pos, xerr=[[max(r.auroc - r.ci_low, 0)], [max(r.ci_high - r.auroc, 0)]],
                            fmt="none", ecolor="black", elinewidth=1, capsize=3)
            elif not ok:
                ax.text(0.01, pos, "AUROC undefined (one class)", va="center", fontsize=SMALL)
            ys.append(pos)
            ticks.append(_name(r.label))
            pos += 1
        pos += 0.5
    ax.set_yticks(ys, ticks)
    ax.invert_yaxis()
    ax.axvline(0.5, **_CHANCE)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"AUROC ({LABELS[measure]}); bars start at 0, dotted line: 0.5 = chance")
    ax.set_title(f"Families: {LABELS[measure]} AUROC per run" + _repeated_note(study))
    _legend_below(fig, handles, ncols, title=f"whiskers: {RUN_CI}")
    return fig


@_styled
def size_effect(study: Study, measure: str = "g_nll") -> Figure:
    """AUROC against model size (log scale) within each family: colour = family, marker and line
    style = dataset (open markers: instruction-tuned models), one line per family, tuning and
    dataset; each run's 95% bootstrap interval (unadjusted) as error bars."""
    s = _scores(study, measure)
    s = s[np.isfinite(s["size_b"].astype(float))]
    colours, styles, markers = _family_colours(study), _dataset_styles(study), _dataset_markers(study)
    k = len(study.datasets)
    dodge = {ds: 10 ** (0.012 * (i - (k - 1) / 2)) for i, ds in enumerate(study.datasets)}  # side by side
    handles = [Line2D([], [], color=colours[f], lw=2.5, label=f) for f in sorted(s["family"].unique())]
    handles += [Line2D([], [], color="0.25", ls=styles[ds], marker=markers[ds], ms=6, lw=1.5, label=ds)
                for ds in study.datasets]
    if s["instruct"].nunique() == 2:
        handles.append(Line2D([], [], color="0.25", ls="none", marker="o", mfc="white", ms=6,
                              label="open: instruction-tuned"))
    ncols = min(3, len(handles))
    fig, ax = _axes(4.2 + _legend_rows(len(handles), ncols))
    for (fam, instruct, ds), g in s.groupby(["family", "instruct", "dataset"]):
        g = g.sort_values("size_b")
        ax.errorbar(g["size_b"] * dodge[ds], g["auroc"], yerr=_yerr(g), color=colours[fam], ls=styles[ds],
                    marker=markers[ds], ms=6, mfc="white" if instruct else colours[fam], capsize=3, lw=1.5,
                    elinewidth=1)
    ax.set_xscale("log")
    if len(s):
        ax.set_xlim(s["size_b"].min() / 1.6, s["size_b"].max() * 1.6)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0.5, **_CHANCE)
    ax.set_ylim(0, 1.02)
    one = s.groupby("family")["size_b"].nunique().max() < 2 if len(s) else True
    ax.set(xlabel="parameters (billions, log scale)",
           ylabel=f"AUROC ({LABELS[measure]})\n{AUROC_AXIS}",
           title="Size effect" + (" (one size per family in this store)" if one else "") + _repeated_note(study))
    _legend_below(fig, handles, ncols, handlelength=3.5, title=f"error bars: {RUN_CI}")
    return fig


@_styled
def dataset_effect(study: Study, measure: str = "g_nll") -> Figure:
    """Each model's AUROC on each dataset, joined by a line (a slope chart); colour = family,
    marker = model within its family."""
    s = _scores(study, measure)
    colours, markers = _family_colours(study), _model_markers(study)
    xs = {d: i for i, d in enumerate(study.datasets)}
    models = list(dict.fromkeys(s.sort_values(["family", "size_b", "model"], kind="mergesort")["model"]))
    ncols = 2
    fig, ax = _axes(4.2 + _legend_rows(len(models), ncols))
    handles = []
    for model in models:
        g = s[s["model"] == model].sort_values("dataset")
        (line,) = ax.plot([xs[d] for d in g["dataset"]], g["auroc"], marker=markers[model], ms=6,
                          color=colours[g["family"].iloc[0]], label=model)
        handles.append(line)
    ax.set_xticks(list(xs.values()), list(xs))
    ax.set_xlim(-0.4, len(xs) - 0.6)
    ax.axhline(0.5, **_CHANCE)
    ax.set_ylim(0, 1.02)
    ax.set(ylabel=f"AUROC ({LABELS[measure]})\n{AUROC_AXIS}", title="Dataset effect" + _repeated_note(study))
    _legend_below(fig, handles, ncols)
    return fig


@_styled
def accuracy_vs_auroc(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy against AUROC per run: does a model that is right more often also know when it is
    wrong? Colour = family, marker = dataset; each point is labelled with its model, placed so
    that no two labels overlap."""
    s = _scores(study, measure)
    colours, markers = _family_colours(study), _dataset_markers(study)
    handles = [Line2D([], [], ls="none", marker="o", ms=7, color=c, label=f) for f, c in colours.items()]
    handles += [Line2D([], [], ls="none", marker=mk, ms=7, color="0.35", label=d) for d, mk in markers.items()]
    ncols = min(4, len(handles))
    fig, ax = _axes(4.6 + _legend_rows(len(handles), ncols))
    for r in s.itertuples():
        ax.scatter(r.accuracy, r.auroc, color=colours[r.family], marker=markers[r.dataset], s=45, zorder=3)
    ax.axhline(0.5, **_CHANCE)
    ax.set(xlabel="accuracy", ylabel=f"AUROC ({LABELS[measure]})\n{AUROC_AXIS}", xlim=(0, 1), ylim=(0, 1.02),
           title="Accuracy against AUROC" + _repeated_note(study))
    _legend_below(fig, handles, ncols)
    label_points(ax, s[["accuracy", "auroc"]].to_numpy(dtype=float), list(s["model"]), fontsize=SMALL)
    return fig


@_styled
def family_radar(study: Study, measures=SINGLE_PASS) -> Figure:
    """One radar per family: the mean AUROC of the family's runs for each measure (spokes), one
    polygon per dataset; the centre is 0, the outer ring 1, the dotted ring 0.5 = chance."""
    fams = study.families
    ncols = 1 if len(fams) == 1 else 2
    nrows = math.ceil(len(fams) / ncols)
    latest = set(study.latest()["run_id"])
    fig = _figure(3.2 * nrows + 0.9)
    angles = np.linspace(0, 2 * np.pi, len(measures), endpoint=False)
    ring = np.linspace(0, 2 * np.pi, 200)
    colours = {ds: f"C{i}" for i, ds in enumerate(study.datasets)}
    markers = _dataset_markers(study)
    for i, fam in enumerate(fams):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="polar")
        ax.set_theta_offset(np.pi / 2)
        ax.set_theta_direction(-1)
        s = study.scores[(study.scores["family"] == fam) & study.scores["run_id"].isin(latest)]
        ax.plot(ring, np.full_like(ring, 0.5), **_CHANCE)
        for ds, g in s.groupby("dataset"):
            vals = g.groupby("measure")["auroc"].mean().reindex(measures).to_numpy(dtype=float)
            ax.plot(np.append(angles, angles[0]), np.append(vals, vals[0]), marker=markers[ds], ms=5,
                    color=colours[ds], lw=1.5)
        ax.set_ylim(0, 1)
        ax.set_yticks([0.25, 0.5, 0.75, 1.0], [])  # the rings' values are in the title, clear of the data
        ax.set_xticks(angles, [_wrap(LABELS[m], 10) for m in measures], fontsize=SMALL)
        ax.tick_params(axis="x", pad=9)
        for lab, a in zip(ax.get_xticklabels(), angles):  # labels grow away from the circle
            x = math.sin(a)  # clockwise from the top
            lab.set_horizontalalignment("left" if x > 0.2 else "right" if x < -0.2 else "center")
        ax.set_title(fam, pad=18, fontsize=10)
    handles = [Line2D([], [], color=colours[ds], marker=markers[ds], ms=5, label=ds) for ds in study.datasets]
    handles.append(Line2D([], [], label="0.5 = chance", **_CHANCE))
    fig.suptitle("Mean AUROC of each measure per family\ncentre 0; rings at 0.25, 0.5 (dotted: chance), 0.75 and 1"
                 + _repeated_note(study))
    _legend_below(fig, handles, min(4, len(handles)))
    return fig


def _decided_per_run(study: Study, measure: str):
    """(run row, correct, score) of every compared run's decided answers (one per model x
    dataset), in the runs' order."""
    for _, r in study.latest().iterrows():
        g, correct = study.decided(r.run_id)
        yield r, correct, g[measure].astype(float).to_numpy()


def _run_style(study: Study):
    """Colour = family, line style = dataset, marker = model within its family: no two runs'
    legend entries look alike."""
    colours, styles, markers = _family_colours(study), _dataset_styles(study), _model_markers(study)
    return lambda r: {"color": colours[r.family], "ls": styles[r.dataset], "marker": markers[r.model], "ms": 5}


@_styled
def roc_overlay(study: Study, measure: str = "g_nll") -> Figure:
    """ROC curves of every run for one measure, overlaid."""
    from sklearn.metrics import roc_curve

    n = len(study.latest()) + 1
    fig, ax = _axes(5.2 + _legend_rows(n, 2))
    style = _run_style(study)
    handles = []
    for r, correct, score in _decided_per_run(study, measure):
        wrong, s = ranked(correct, score)  # NaN scores out, infinite ones ranked
        if wrong.all() or not wrong.any():
            continue
        fpr, tpr, _ = roc_curve(wrong, s)
        (line,) = ax.plot(fpr, tpr, markevery=0.2, lw=1.3, label=_name(r.label), **style(r))
        handles.append(line)
    (chance,) = ax.plot([0, 1], [0, 1], label="chance", **_CHANCE)
    ax.set(xlabel="false positive rate (right answers flagged)", ylabel="true positive rate (wrong answers flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title=f"ROC, {LABELS[measure]}, every run" + _repeated_note(study))
    _legend_below(fig, handles + [chance], 2)
    return fig


@_styled
def rejection_overlay(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy-rejection curves of every run for one measure, overlaid."""
    n = len(study.latest())
    fig, ax = _axes(4.6 + _legend_rows(n, 2))
    style = _run_style(study)
    handles = []
    for r, correct, score in _decided_per_run(study, measure):
        if correct.size:
            cov, acc = rejection_curve(correct, score)
            (line,) = ax.plot(1 - cov, acc, markevery=0.2, lw=1.3, label=_name(r.label), **style(r))
            handles.append(line)
    ax.set(xlabel="rejection rate (most uncertain first)", ylabel="accuracy of kept answers", xlim=(0, 1),
           ylim=(0, 1.02), title=f"Accuracy-rejection, {LABELS[measure]}, every run" + _repeated_note(study))
    _legend_below(fig, handles, 2)
    return fig


@_styled
def gnll_vs_rwgnll(study: Study) -> Figure:
    """G-NLL against RW-G-NLL, paired per run: both AUROCs with their 95% bootstrap intervals
    (unadjusted), and DeLong's p (unadjusted) on the right."""
    latest = study.latest()
    g = study.measure("g_nll").set_index("run_id")
    rw = study.measure("rw_g_nll").set_index("run_id")
    runs = latest[latest["run_id"].isin(g.index)].set_index("run_id")
    fig, ax = _axes(0.36 * len(runs) + 2.4)
    for i, rid in enumerate(runs.index):
        a = g.loc[rid]
        b = rw.loc[rid] if rid in rw.index else None
        ax.plot([a.ci_low, a.ci_high], [i - 0.14] * 2, c="C0", lw=1.2)
        ax.plot(a.auroc, i - 0.14, "o", c="C0", ms=5)
        if b is not None:
            ax.plot([b.ci_low, b.ci_high], [i + 0.14] * 2, c="C1", lw=1.2)
            ax.plot(b.auroc, i + 0.14, "s", c="C1", ms=5)
    ax.set_yticks(range(len(runs)), [_name(r.label) for r in runs.itertuples()])
    ax.set_ylim(len(runs) - 0.5, -0.5)
    ax.axvline(0.5, **_CHANCE)
    ax.set(xlim=(0, 1), title="G-NLL against RW-G-NLL, per run" + _repeated_note(study),
           xlabel=f"AUROC ({AUROC_AXIS})")
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())

    right.set_yticks(range(len(runs)), [format_p(p) for p in runs["delong_p"]])
    right.set_ylabel("DeLong p (per run, unadjusted)")
    right.tick_params(length=0)
    handles = [Line2D([], [], marker="o", c="C0", label="G-NLL"), Line2D([], [], marker="s", c="C1", label="RW-G-NLL")]
    _legend_below(fig, handles, 2, title=f"lines: {RUN_CI}")
    return fig


#: the report's figures in order; the ones that take a measure draw the primary one
FIGURES = {
    "auroc_heatmap": auroc_heatmap, "family_bars": family_bars, "size_effect": size_effect,
    "dataset_effect": dataset_effect, "accuracy_vs_auroc": accuracy_vs_auroc, "family_radar": family_radar,
    "roc_overlay": roc_overlay, "rejection_overlay": rejection_overlay, "gnll_vs_rwgnll": gnll_vs_rwgnll,
}
_EVERY_MEASURE = {"auroc_heatmap", "family_radar", "gnll_vs_rwgnll"}  # these show several measures at once


#: the sideways factor between measures of one cost in the cost figure (log axis)
DODGE = 1.5


@_styled
def auroc_vs_cost(study: Study) -> Figure:
    """AUROC against what each measure cost beyond the greedy pass (seconds per question, log
    scale, one scale for every panel), one panel per model x dataset that sampled, one point per
    measure with its 95% interval. Measures that cost nothing more than the greedy pass (G-NLL and
    the other single-pass scores) sit at the left edge, marked "0"."""
    runs = study.latest()
    runs = runs[runs["run_id"].isin(study.scores.loc[study.scores["measure"].isin(SAMPLED), "run_id"])]
    n = len(runs)
    cols = min(2, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    sc_all = study.scores[study.scores["run_id"].isin(runs["run_id"]) & study.scores["auroc"].notna()]
    finite = sc_all[np.isfinite(sc_all["cost_seconds"].astype(float))]
    positive = finite["cost_seconds"][finite["cost_seconds"] > 0]
    lowest = positive.min() if len(positive) else 1e-2
    # the single-pass measures (cost 0) are drawn in a band of their own left of the lowest cost,
    # wide enough for all of them side by side, behind a divider; x ticks right of it only
    free = int((finite["cost_seconds"] == 0).groupby(finite["run_id"]).sum().max() or 1)
    zero_x = lowest / DODGE ** (free + 2)
    divider = zero_x * DODGE ** (free / 2 + 0.5)
    top = (positive.max() if len(positive) else 1.0) * DODGE ** 4
    fig = _figure(3.0 * rows + 1.3)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    colours = {m: colormaps["tab20"](i % 20) for i, m in enumerate(NAMES)}
    order = {m: i for i, m in enumerate(NAMES)}
    for ax, r in zip(axes.flat, runs.itertuples()):
        points = sorted(finite[finite["run_id"] == r.run_id].itertuples(),
                        key=lambda s: (float(s.cost_seconds), order.get(s.measure, 99)))
        # measures of about one cost (the sampled ones share their samples' seconds) would sit on
        # one x: costs within a factor of 1.6 of a cluster's first form one cluster, spread sideways
        # by a constant factor on the log axis around its centre; each point is labelled (rotated,
        # under its whisker) with its short name
        clusters: list[list] = []
        for s in points:
            c = float(s.cost_seconds)
            if clusters and (c == 0) == (float(clusters[-1][0].cost_seconds) == 0) and (
                    c == 0 or c <= float(clusters[-1][0].cost_seconds) * 1.6):
                clusters[-1].append(s)
            else:
                clusters.append([s])
        for cluster in clusters:
            costs = [float(s.cost_seconds) for s in cluster]
            centre = zero_x if costs[0] == 0 else math.exp(sum(math.log(c) for c in costs) / len(costs))
            for k, s in enumerate(sorted(cluster, key=lambda s: order.get(s.measure, 99))):
                x = centre * DODGE ** (k - (len(cluster) - 1) / 2)
                lo, hi = s.auroc - s.ci_low, s.ci_high - s.auroc
                err = [[max(lo, 0)], [max(hi, 0)]] if math.isfinite(lo) and math.isfinite(hi) else None
                colour = colours.get(s.measure, "grey")
                ax.errorbar([x], [s.auroc], yerr=err, fmt="o" if s.measure in SINGLE_PASS else "s", ms=4, capsize=2,
                            color=colour)
                bottom = s.ci_low if math.isfinite(s.ci_low) else s.auroc
                ax.annotate(SHORT_LABELS.get(s.measure, s.measure), (x, bottom), xytext=(0, -3),
                            textcoords="offset points", ha="center", va="top", rotation=90, fontsize=SMALL - 2,
                            color=colour, annotation_clip=False)
        ax.set_xscale("log")
        ax.set(xlim=(zero_x / DODGE ** (free / 2 + 1), top), ylim=(0, 1.02))
        ax.axhline(0.5, ls=":", c="grey", lw=0.8)
        ax.axvline(divider, ls="-", c="lightgrey", lw=0.6)
        decades = [10.0 ** e for e in range(math.ceil(math.log10(divider)), math.floor(math.log10(top)) + 1)]
        ax.set_xticks([zero_x, *decades], ["0", *(f"{d:g}" for d in decades)])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(r.label.replace(" × ", "\n"), fontsize=SMALL)
        ax.tick_params(labelsize=SMALL)
    for ax in axes[-1]:
        ax.set_xlabel("extra seconds per question", fontsize=SMALL)
    for ax in axes[:, 0]:
        ax.set_ylabel("AUROC (0.5 = chance)", fontsize=SMALL)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o" if m in SINGLE_PASS else "s", ls="", color=colours[m], label=LABELS[m])
               for m in NAMES if m in set(sc_all["measure"])]
    _legend_below(fig, handles, ncols=3)
    fig.suptitle("AUROC against extra seconds per question (log scale; 0: single pass)\n"
                 "circles: single pass; squares: sampled; near-equal costs spread sideways", fontsize=TEXT)
    return fig


#: the headline figure's width in inches (506 px at DPI): beside the findings table on a 1280 px screen
HEADLINE_WIDTH = 4.6
#: the headline figure's height per run and its most, in inches: at most 540 px, so that it fits a
#: 1280 x 800 screen under the report's title; more runs than fit at the smallest row are drawn closer
HEADLINE_ROW, HEADLINE_MAX = 0.26, 4.9
#: the length baseline drawn beside the measure in the headline figure
LENGTH_BASELINE = "answer_tokens"


@_styled
def headline(study: Study, measure: str = "g_nll") -> Figure:
    """The report's first figure: each compared run's AUROC of ``measure`` with its 95% bootstrap
    interval (unadjusted), answer length alone beside it (an open diamond, where the runs scored it)
    and the run's accuracy on the right, so the two caveats a reader needs first are in view. Drawn
    compact (:data:`HEADLINE_WIDTH`, at most :data:`HEADLINE_MAX` inches tall) for the report's
    first screen."""
    s = _scores(study, measure)
    length = study.scores[study.scores["measure"] == LENGTH_BASELINE].set_index("run_id")["auroc"]
    n = len(s)
    fig, ax = _axes(min(HEADLINE_MAX, 1.75 + HEADLINE_ROW * n), HEADLINE_WIDTH)
    ys = np.arange(n)
    ok = s["auroc"].notna().to_numpy()
    ax.errorbar(s["auroc"][ok], ys[ok], xerr=_yerr(s[ok]), fmt="o", color="C0", ms=5, capsize=3, elinewidth=1.2,
                zorder=3, clip_on=False)  # a point at 1 shows whole
    for y, r in zip(ys, s.itertuples()):
        if not math.isfinite(r.auroc):
            ax.text(0.02, y, "undefined (one class)", va="center", fontsize=SMALL)
    base = s["run_id"].map(length).to_numpy(dtype=float)
    ax.plot(base, ys, "D", mfc="white", mec="0.35", ms=5, zorder=2, clip_on=False)
    ax.set_yticks(ys, [_name(r.label) for r in s.itertuples()], fontsize=SMALL)
    ax.set_ylim(n - 0.5, -0.5)
    ax.axvline(0.5, **_CHANCE)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"AUROC ({AUROC_AXIS})", fontsize=SMALL)
    fig.suptitle(f"{LABELS[measure]}: AUROC per run" + _repeated_note(study), fontsize=_RC["axes.titlesize"])
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    right.set_yticks(ys, [f"{a:.2f}" if math.isfinite(a) else "–" for a in s["accuracy"].astype(float)],
                     fontsize=SMALL)
    right.set_ylabel("accuracy", fontsize=SMALL)
    right.tick_params(length=0)
    handles = [Line2D([], [], marker="o", color="C0", ms=5, label=f"{LABELS[measure]}, {RUN_CI}")]
    if np.isfinite(base).any():
        handles.append(Line2D([], [], marker="D", ls="none", mfc="white", mec="0.35", ms=5,
                              label=f"{LABELS[LENGTH_BASELINE]} alone"))
    _legend_below(fig, handles, 1)
    return fig


def draw_all(study: Study, measure: str = "g_nll") -> dict[str, Figure]:
    """Every figure of the report, by name; AUROC against cost where runs sampled."""
    figs = {name: fn(study) if name in _EVERY_MEASURE else fn(study, measure) for name, fn in FIGURES.items()}
    if any(m in SAMPLED for m in study.measures):
        figs["auroc_vs_cost"] = auroc_vs_cost(study)
    return figs
