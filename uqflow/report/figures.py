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
import html
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
from uqflow.report.stats import format_p
from uqflow.plots import LABELS, rejection_figure, roc_figure  # noqa: F401  (re-exported for the notebook)
from uqflow.scoring.evaluation import incorrect_and_scores as ranked, rejection_curve
from uqflow.scoring.semantic import SAMPLED_MEASURES as SAMPLED
from uqflow.scoring.uncertainty import SCORES

#: the single-pass scores every run has; the sampled measures come in where runs sampled
MEASURES = tuple(m for m in LABELS if m in SCORES)
ALL_MEASURES = tuple(LABELS)

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


def _latest(study: Study) -> pd.DataFrame:
    """One run per model x dataset: where one was run more than once, the later run (as the
    comparisons take), ordered by family, size, model, dataset."""
    return study.runs.drop_duplicates("label", keep="last").sort_values(
        ["family", "size_b", "model", "dataset"], kind="mergesort").reset_index(drop=True)


def _scores(study: Study, measure: str) -> pd.DataFrame:
    """:meth:`Study.measure` for the latest run of each model x dataset."""
    s = study.measure(measure)
    return s[s["run_id"].isin(set(_latest(study)["run_id"]))].reset_index(drop=True)


def _repeated_note(study: Study) -> str:
    return " (latest run of each model × dataset)" if study.runs["label"].duplicated().any() else ""


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


def _label_points(ax, xy: np.ndarray, labels: list[str], fontsize: float = SMALL, marker_pt: float = 8.0):
    """Label each point with its text so that no two labels overlap and no label covers a marker.
    The first of three ways that fits: (1) every label right beside its point; (2) the labels in a
    column either side of the points, in the points' vertical order, each joined to its point by a
    thin leader line; (3) each label at the nearest free offset, with a leader line where it is set
    away. Deterministic: the same points always get the same labels."""
    fig = ax.figure
    fig.draw_without_rendering()  # settle the layout the labels must fit (they are kept out of it)
    lay = _Layout(ax, np.asarray(xy, dtype=float), labels, fontsize, marker_pt)
    plan = lay.beside() or lay.columns() or lay.greedy()
    out = []
    for i, (dx, dy, ha, va) in sorted(plan.items()):
        leader = ({"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 0, "shrinkB": lay.half / lay.px}
                  if math.hypot(dx, dy) > 7 else None)
        ann = ax.annotate(labels[i], tuple(lay.xy[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                          fontsize=fontsize, arrowprops=leader, annotation_clip=False)
        ann.set_in_layout(False)  # the layout was settled before the labels were placed
        out.append(ann)
    return out


class _Layout:
    """Where the labels of :func:`_label_points` go, in display pixels; each way of placing them
    returns {point index: (dx, dy, ha, va)} in points, or None where it does not fit."""

    def __init__(self, ax, xy, labels, fontsize, marker_pt):
        self.ax, self.xy, self.labels, self.fontsize = ax, xy, labels, fontsize
        self.renderer = ax.figure.canvas.get_renderer()
        self.px = ax.figure.dpi / 72
        self.pts = ax.transData.transform(xy)
        self.ok = np.isfinite(self.pts).all(axis=1)
        self.half = marker_pt * self.px / 2 + 1
        self.markers = [(x - self.half, y - self.half, x + self.half, y + self.half) for x, y in self.pts[self.ok]]
        self.box = ax.get_window_extent(self.renderer)
        self.centre = self.pts[self.ok].mean(axis=0) if self.ok.any() else np.zeros(2)

    def extent(self, i, dx, dy, ha, va):
        ann = self.ax.annotate(self.labels[i], tuple(self.xy[i]), xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=self.fontsize)
        bb = ann.get_window_extent(self.renderer)
        ann.remove()
        return (bb.x0 - 2, bb.y0 - 2, bb.x1 + 2, bb.y1 + 2)

    def outside(self, b) -> float:
        box = self.box
        return max(box.x0 - b[0], 0) + max(b[2] - box.x1, 0) + max(box.y0 - b[1], 0) + max(b[3] - box.y1, 0)

    @staticmethod
    def offset(r, a):
        dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
        return dx, dy, ("left" if dx > 0.5 else "right" if dx < -0.5 else "center"), \
            ("bottom" if dy > 0.5 else "top" if dy < -0.5 else "center")

    def beside(self):
        """Every label next to its point (no leader lines), or None."""
        plan, placed = {}, []
        for i in np.flatnonzero(self.ok):
            for a in (0, 180, 90, 270, 45, 135, 315, 225):
                dx, dy, ha, va = self.offset(5, a)
                b = self.extent(i, dx, dy, ha, va)
                if not self.outside(b) and not any(_overlap(b, o) for o in placed + self.markers):
                    plan[i] = (dx, dy, ha, va)
                    placed.append(b)
                    break
            else:
                return None
        return plan

    def columns(self):
        """The labels in a column left and right of the points (points left of their centre label
        on the left), or all on one side where one side has no room; None if none fits."""
        idx = list(np.flatnonzero(self.ok))
        left = [i for i in idx if self.pts[i, 0] < self.centre[0]]
        right = [i for i in idx if i not in left]
        for split in ((left, right), ([], idx), (idx, [])):
            plan = {}
            for side, members in zip((-1, 1), split):
                part = self._column(members, side)
                if part is None:
                    break
                plan.update(part)
            else:
                return plan
        return None

    def _column(self, members, side):
        if not members:
            return {}
        sizes = {i: self.extent(i, 0, 0, "left", "center") for i in members}
        step = max(b[3] - b[1] for b in sizes.values()) + 1
        width = max(b[2] - b[0] for b in sizes.values())
        if step * len(members) > self.box.height:
            return None
        order = sorted(members, key=lambda i: (-self.pts[i, 1], i))
        want = np.array([self.pts[i, 1] for i in order])
        ys = want.copy()
        for k in range(1, len(ys)):
            ys[k] = min(ys[k], ys[k - 1] - step)
        ys += (want.mean() - ys.mean())  # as near the points as the spacing allows
        ys -= max(ys[0] + step / 2 - self.box.y1, 0)
        ys += max(self.box.y0 - (ys[-1] - step / 2), 0)
        if ys[0] + step / 2 > self.box.y1 + 0.5:
            return None
        lo, hi = ys[-1] - step, ys[0] + step
        band = self.pts[self.ok & (self.pts[:, 1] >= lo) & (self.pts[:, 1] <= hi), 0]
        gap = 16 * self.px
        x = (band.max() + gap) if side > 0 else (band.min() - gap)
        if (side > 0 and x + width > self.box.x1) or (side < 0 and x - width < self.box.x0):
            return None
        ha = "left" if side > 0 else "right"
        return {i: ((x - self.pts[i, 0]) / self.px, (y - self.pts[i, 1]) / self.px, ha, "center")
                for i, y in zip(order, ys)}

    def greedy(self):
        """Each label, from the outermost point inwards, at the nearest offset (preferring to point
        away from the others) where it covers no label or marker and its leader line crosses no
        label or other leader line; else the least crowded one."""
        plan, placed, leaders = {}, [], []
        for i in np.argsort(-np.hypot(*(self.pts - self.centre).T), kind="stable"):
            if not self.ok[i]:
                continue
            p0 = self.pts[i]
            d = p0 - self.centre
            away = math.degrees(math.atan2(d[1], d[0])) if np.hypot(*d) > 1 else 270.0
            angles = sorted(range(0, 360, 30), key=lambda a: (abs((a - away + 180) % 360 - 180), a))
            best, best_cost = None, math.inf
            for r in (5, 12, 22, 34, 48, 64, 82, 104, 128):
                for a in angles:
                    dx, dy, ha, va = self.offset(r, a)
                    b = self.extent(i, dx, dy, ha, va)
                    seg = (p0, p0 + np.array([dx, dy]) * self.px)
                    cost = sum(_overlap(b, o) for o in placed + self.markers) + 1000 * self.outside(b)
                    cost += 400 * sum(_crosses(o, b) for o in leaders)
                    if r > 5:
                        cost += 400 * sum(_crosses(seg, o) for o in placed)
                        cost += 400 * sum(_segments_cross(seg, o) for o in leaders)
                    if cost < best_cost:
                        best, best_cost = (dx, dy, ha, va, b, seg, r), cost
                    if cost == 0:
                        break
                if best_cost == 0:
                    break
            dx, dy, ha, va, b, seg, r = best
            plan[i] = (dx, dy, ha, va)
            placed.append(b)
            if r > 5:
                leaders.append(seg)
        return plan


def _overlap(a, b) -> float:
    """The area two boxes (x0, y0, x1, y1) share."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _segments_cross(s, t) -> bool:
    """Whether two line segments ((x, y), (x, y)) cross (touching at an end does not count)."""
    (p, q), (r, u) = s, t

    def orient(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    return (orient(p, q, r) * orient(p, q, u) < 0) and (orient(r, u, p) * orient(r, u, q) < 0)


def _crosses(seg, b) -> bool:
    """Whether a segment passes through a box (x0, y0, x1, y1), sampled along its length."""
    (x0, y0), (x1, y1) = seg
    t = np.linspace(0.08, 0.92, 24)
    xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    return bool(((xs > b[0]) & (xs < b[2]) & (ys > b[1]) & (ys < b[3])).any())


@_styled
def auroc_heatmap(study: Study, measures=None) -> Figure:
    """AUROC of each run (rows: model · dataset) for each measure (columns; by default every measure
    the store has), with its value printed; the colour scale runs from 0 to 1 and is white at 0.5
    (chance)."""
    measures = measures or study.measures
    runs = _latest(study)
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
        ax.set_xticks(range(len(measures)), [LABELS.get(m, m) for m in measures], rotation=35, ha="left",
                      rotation_mode="anchor", fontsize=SMALL)
    elif len(measures) > 5:  # the length baselines beside the single-pass scores: upright labels, one line each
        ax.set_xticks(range(len(measures)), [LABELS.get(m, m) for m in measures], rotation=90, ha="center",
                      va="bottom", fontsize=SMALL)
    else:
        ax.set_xticks(range(len(measures)), [_wrap(LABELS[m]) for m in measures])
    ax.set_yticks(range(len(runs)), [f"{r.model} · {r.dataset}" for r in runs.itertuples()])
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
            ticks.append(f"{r.model} · {r.dataset}")
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
    _label_points(ax, s[["accuracy", "auroc"]].to_numpy(dtype=float), list(s["model"]))
    return fig


@_styled
def family_radar(study: Study, measures=MEASURES) -> Figure:
    """One radar per family: the mean AUROC of the family's runs for each measure (spokes), one
    polygon per dataset; the centre is 0, the outer ring 1, the dotted ring 0.5 = chance."""
    fams = study.families
    ncols = 1 if len(fams) == 1 else 2
    nrows = math.ceil(len(fams) / ncols)
    latest = set(_latest(study)["run_id"])
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
    """(run row, correct, score) of every run's decided answers (latest run of each model x
    dataset), in the runs' order."""
    for _, r in _latest(study).iterrows():
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

    n = len(_latest(study)) + 1
    fig, ax = _axes(5.2 + _legend_rows(n, 2))
    style = _run_style(study)
    handles = []
    for r, correct, score in _decided_per_run(study, measure):
        wrong, s = ranked(correct, score)  # NaN scores out, infinite ones ranked
        if wrong.all() or not wrong.any():
            continue
        fpr, tpr, _ = roc_curve(wrong, s)
        (line,) = ax.plot(fpr, tpr, markevery=0.2, lw=1.3, label=r.label.replace(" × ", " · "), **style(r))
        handles.append(line)
    (chance,) = ax.plot([0, 1], [0, 1], label="chance", **_CHANCE)
    ax.set(xlabel="false positive rate (right answers flagged)", ylabel="true positive rate (wrong answers flagged)",
           xlim=(0, 1), ylim=(0, 1.01), title=f"ROC, {LABELS[measure]}, every run" + _repeated_note(study))
    _legend_below(fig, handles + [chance], 2)
    return fig


@_styled
def rejection_overlay(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy-rejection curves of every run for one measure, overlaid."""
    n = len(_latest(study))
    fig, ax = _axes(4.6 + _legend_rows(n, 2))
    style = _run_style(study)
    handles = []
    for r, correct, score in _decided_per_run(study, measure):
        if correct.size:
            cov, acc = rejection_curve(correct, score)
            (line,) = ax.plot(1 - cov, acc, markevery=0.2, lw=1.3, label=r.label.replace(" × ", " · "), **style(r))
            handles.append(line)
    ax.set(xlabel="rejection rate (most uncertain first)", ylabel="accuracy of kept answers", xlim=(0, 1),
           ylim=(0, 1.02), title=f"Accuracy-rejection, {LABELS[measure]}, every run" + _repeated_note(study))
    _legend_below(fig, handles, 2)
    return fig


@_styled
def gnll_vs_rwgnll(study: Study) -> Figure:
    """G-NLL against RW-G-NLL, paired per run: both AUROCs with their 95% bootstrap intervals
    (unadjusted), and DeLong's p (unadjusted) on the right."""
    latest = _latest(study)
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
    ax.set_yticks(range(len(runs)), [f"{r.model} · {r.dataset}" for r in runs.itertuples()])
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
#: measures' names short enough to label a point
SHORT_LABELS = {"g_nll": "G-NLL", "ln_g_nll": "LN-G", "max_nll": "max", "mean_entropy": "ent", "rw_g_nll": "RW",
                "answer_tokens": "len", "answer_chars": "chars", "predictive_entropy": "PE",
                "ln_predictive_entropy": "LN-PE", "semantic_entropy": "SE", "discrete_semantic_entropy": "DSE",
                "num_semantic_sets": "#sets", "p_true": "p(T)"}


@_styled
def auroc_vs_cost(study: Study) -> Figure:
    """AUROC against what each measure cost beyond the greedy pass (seconds per question, log
    scale, one scale for every panel), one panel per model x dataset that sampled, one point per
    measure with its 95% interval. Measures that cost nothing more than the greedy pass (G-NLL and
    the other single-pass scores) sit at the left edge, marked "0"."""
    runs = _latest(study)
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
    colours = {m: colormaps["tab20"](i % 20) for i, m in enumerate(ALL_MEASURES)}
    order = {m: i for i, m in enumerate(ALL_MEASURES)}
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
                ax.errorbar([x], [s.auroc], yerr=err, fmt="o" if s.measure in MEASURES else "s", ms=4, capsize=2,
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
        ax.set_title(f"{r.model}\n{r.dataset}", fontsize=SMALL)
        ax.tick_params(labelsize=SMALL)
    for ax in axes[-1]:
        ax.set_xlabel("extra seconds per question", fontsize=SMALL)
    for ax in axes[:, 0]:
        ax.set_ylabel("AUROC (0.5 = chance)", fontsize=SMALL)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles = [Line2D([], [], marker="o" if m in MEASURES else "s", ls="", color=colours[m], label=LABELS[m])
               for m in ALL_MEASURES if m in set(sc_all["measure"])]
    _legend_below(fig, handles, ncols=3)
    fig.suptitle("AUROC against extra seconds per question (log scale; 0: single pass)\n"
                 "circles: single pass; squares: sampled; near-equal costs spread sideways", fontsize=TEXT)
    return fig


def draw_all(study: Study, measure: str = "g_nll") -> dict[str, Figure]:
    """Every figure of the report, by name; AUROC against cost where runs sampled."""
    figs = {name: fn(study) if name in _EVERY_MEASURE else fn(study, measure) for name, fn in FIGURES.items()}
    if any(m in SAMPLED for m in study.measures):
        figs["auroc_vs_cost"] = auroc_vs_cost(study)
    return figs


def token_pick_rule(measure: str = "g_nll", per_run: int = 2) -> str:
    """How :func:`pick_token_examples` chooses, in words (printed above the examples)."""
    what = (f"the wrong answer with the lowest {LABELS.get(measure, measure)} (its most confident wrong answer)"
            + (f" and the right answer with the highest {LABELS.get(measure, measure)} (its least confident "
               "right answer)" if per_run > 1 else ""))
    return (f"How these were chosen: for each run, in the order of the summary table (latest run of each "
            f"model × dataset), {what}, among the answers the judge decided whose tokens were stored. Ties go to "
            "the answer that came first in the run. The choice is deterministic: the same store always shows "
            "the same answers.")


def pick_token_examples(study: Study, per_run: int = 2, measure: str = "g_nll") -> pd.DataFrame:
    """A few answers worth looking at, chosen deterministically (see :func:`token_pick_rule`): per
    run, the most confident wrong answer (lowest ``measure``) and, with ``per_run`` > 1, the least
    confident right one (highest ``measure``), where the run stored its tokens; ties go to the
    earlier answer in the run."""
    picks = []
    for rid in _latest(study)["run_id"]:
        g = study.answers(rid)
        g = g[g.tokens.notna() & g.correct.notna() & (g.num_tokens > 0) & g[measure].notna()]
        g = g.assign(_score=g[measure].astype(float))
        wrong, right = g[~g.correct.astype(bool)], g[g.correct.astype(bool)]
        if len(wrong):
            picks.append(wrong.sort_values(["_score", "position"], kind="mergesort").head(1))
        if len(right) and per_run > 1:
            right = right.assign(_neg=-right["_score"])
            picks.append(right.sort_values(["_neg", "position"], kind="mergesort").head(1).drop(columns="_neg"))
    return pd.concat(picks).drop(columns="_score") if picks else study.generations.iloc[0:0]


def _references(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def token_view_html(study: Study, rows: pd.DataFrame | None = None, measure: str = "g_nll") -> str:
    """Answers token by token: each token's NLL as a red background and its RW-G-NLL relevance as
    a blue underline (darker = more relevant, relative to the answer's most relevant token, since
    only relative weights matter to RW-G-NLL), with the question, the reference answers and the
    verdict, under a line saying how the answers were chosen. Self-contained HTML."""
    chosen = rows is None
    rows = pick_token_examples(study, measure=measure) if rows is None else rows
    if rows.empty:
        return "<p>No stored answer has its tokens (runs made before token texts were recorded).</p>"
    labels = study.runs.set_index("run_id")["label"]
    out = ['<div class="tokens">',
           '<p class="legend">Background: token NLL (red, saturating at 5 nats). Underline: relevance '
           "(blue, relative to the answer's most relevant token). Hover a token for its numbers.</p>"]
    if chosen:
        out.append(f'<p class="legend pick-rule">{html.escape(token_pick_rule(measure))}</p>')
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
        refs = _references(r.get("reference_answers"))
        ref_html = ("; ".join(f"<q>{html.escape(x)}</q>" for x in refs) if refs else "<i>none stored</i>")
        scores = f"G-NLL {r.g_nll:.2f}, RW-G-NLL {r.rw_g_nll:.2f}"
        if measure not in ("g_nll", "rw_g_nll") and measure in r:
            scores += f", {LABELS.get(measure, measure)} {float(r[measure]):.2f}"
        out.append(f'<div class="example"><p><b>{html.escape(str(labels.get(r.run_id, r.run_id)))}</b> — '
                   f'{html.escape(str(r.question))}</p>'
                   f'<p class="answer-line"><span class="verdict {verdict}">{verdict}</span> ({scores}): '
                   + "".join(spans) + "</p>"
                   f'<p class="refs">Reference answer{"s" if len(refs) != 1 else ""}: {ref_html}</p></div>')
    out.append("</div>")
    return "\n".join(out)
