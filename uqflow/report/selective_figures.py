"""Figures of calibration and selective prediction, one panel per run: the reliability diagram of a
measure mapped to P(correct), and its risk-coverage curve beside answer length's."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from uqflow.report.data import Study
from uqflow.report.figures import SMALL, TEXT, _figure, _legend_below, _styled
from uqflow.scoring.measures import LABELS, label
from uqflow.scoring.pipeline import CALIBRATION
from uqflow.scoring.selective import confidence_probabilities, reliability_bins, risk_coverage

#: the baseline every measure's risk-coverage curve is drawn against
BASELINE = "answer_tokens"


def _panels(study: Study):
    runs = study.latest()
    n = len(runs)
    cols = min(3, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(2.4 * rows + 1.3)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes, runs


def _label_panels(axes, runs, xlabel: str, ylabel: str) -> None:
    """Every panel on the unit square, titled by its run; axis labels on the outer panels."""
    for ax, r in zip(axes.flat, runs.itertuples()):
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=(0, 0.5, 1))  # three ticks: neighbours' 1 and 0 do not meet
        ax.set_title(f"{r.model}\n{r.dataset}", fontsize=SMALL)
        ax.tick_params(labelsize=SMALL)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=SMALL)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=SMALL)


@_styled
def reliability_diagram(study: Study, measure: str = "g_nll") -> Figure:
    """Accuracy against predicted P(correct) in ten equal-width bins, per run, for ``measure``
    mapped to P(correct) by a 5-fold cross-fitted isotonic fit inside the run; marker area follows
    the bin's answers, the diagonal is perfect calibration."""
    fig, axes, runs = _panels(study)
    for ax, r in zip(axes.flat, runs.itertuples()):
        d, correct = study.decided(r.run_id)
        if measure in d:
            prob = confidence_probabilities(correct, d[measure].to_numpy(dtype=float), method=CALIBRATION)
            b = reliability_bins(correct, prob)
            ok = b.count > 0
            ax.scatter(b.confidence[ok], b.accuracy[ok], s=12 + 60 * b.count[ok] / max(b.count.sum(), 1),
                       color="C0", zorder=3)
            ax.plot(b.confidence[ok], b.accuracy[ok], color="C0", lw=1)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    _label_panels(axes, runs, "predicted P(correct)", "accuracy")
    fig.suptitle(f"Reliability of {label(measure)} mapped to P(correct)\n"
                 f"({CALIBRATION} fit, 5-fold cross-fitted per run; dotted: perfect calibration)", fontsize=TEXT)
    return fig


@_styled
def risk_coverage_curves(study: Study, measure: str = "g_nll") -> Figure:
    """Error rate among the most confident answers against the share of answers kept, per run, for
    ``measure`` and for answer length alone (the zero-cost baseline); lower is better."""
    fig, axes, runs = _panels(study)
    for ax, r in zip(axes.flat, runs.itertuples()):
        d, correct = study.decided(r.run_id)
        for name, style in ((measure, "-"), (BASELINE, "--")):
            column = "num_tokens" if name == BASELINE and BASELINE not in d else name
            if column in d and len(d):
                cov, risk = risk_coverage(correct, d[column].to_numpy(dtype=float))
                if len(cov):
                    ax.plot(cov, risk, ls=style, lw=1.2, color="C0" if name == measure else "C1")
        if len(correct):
            ax.axhline(1 - correct.mean(), ls=":", c="grey", lw=0.8)
    _label_panels(axes, runs, "coverage (share of answers kept)", "risk (error rate)")
    handles = [Line2D([], [], color="C0", label=label(measure)),
               Line2D([], [], color="C1", ls="--", label=LABELS[BASELINE]),
               Line2D([], [], color="grey", ls=":", label="error rate of all answers")]
    _legend_below(fig, handles, ncols=3)
    fig.suptitle(f"Risk against coverage: {label(measure)} and answer length", fontsize=TEXT)
    return fig


FIGURES = {"reliability_diagram": reliability_diagram, "risk_coverage": risk_coverage_curves}
TITLES = {"reliability_diagram": "Calibration: reliability diagram per run",
          "risk_coverage": "Selective prediction: risk against coverage, beside answer length"}

__all__ = ["FIGURES", "TITLES", "reliability_diagram", "risk_coverage_curves"]
