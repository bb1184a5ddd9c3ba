"""``uqflow report``: the results store into figures, ``summary.json`` and one self-contained
``report.html`` (figures embedded as data URIs), also logged as the artifacts of an MLflow run
tagged ``uqflow.analysis``."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from uqflow import tracking
from uqflow.report import figures as F
from uqflow.report import selective_figures as SF
from uqflow.report import tokens as T
from uqflow.report.findings import CAVEATS, findings
from uqflow.report.objections import objections
from uqflow.report.publish import REPORT_FILES, publish, staging
from uqflow.report.data import SELECTION_RULE, Study, load_study
from uqflow.report.stats import answer_all, answer_cost, best_performers, delong_table, format_p
from uqflow.scoring.measures import MEASURES, label

log = logging.getLogger(__name__)
ANALYSIS_TAG = tracking.ANALYSIS_TAG

#: the widest a figure is shown in report.html, in CSS pixels (the CSS ``max-width`` of its <img>). Figures are
#: drawn at most this wide (``figures.WIDTH`` x ``figures.DPI``), so the page shows them 1:1 at natural size, and a
#: viewport of 800 px (less its scrollbar and the page's padding) still has room for this width. A figure text of
#: ``s`` points is displayed ``s * DPI / 72 * min(1, FIGURE_DISPLAY_MAX_PX / png_width)`` px tall.
FIGURE_DISPLAY_MAX_PX = 720

#: what the intervals and p-values in the report and in summary.json are (summary.json's "intervals")
INTERVALS = {
    "runs.scores.ci_low/ci_high": "95% stratified percentile bootstrap interval of one run's AUROC; per run, "
                                  "not adjusted for multiple comparisons",
    "best.run_per_measure.ci_low/ci_high": "the best run's own 95% bootstrap interval, not adjusted for multiple "
                                           "comparisons or for having been selected as the best",
    "answers.*.comparisons.ci_low/ci_high": "95% percentile bootstrap interval of the AUROC difference; not adjusted "
                                            "for multiple comparisons (see each comparison's ci_adjusted)",
    "answers.*.comparisons.p_value": "two-sided bootstrap p-value of one comparison, unadjusted",
    "answers.family.comparisons.p_adjusted": "p_value adjusted with Benjamini-Hochberg across every family pair and "
                                             "dataset; the family comparisons' intervals are not adjusted, so one "
                                             "can exclude zero while p_adjusted is above 0.05",
    "delong_g_nll_vs_rw_g_nll.delong_p": "DeLong's paired test per run, unadjusted",
}

#: how the figures draw AUROC (summary.json's "figure_axes", and said in report.html)
FIGURE_AXES = ("Every AUROC axis runs from 0 to 1 (bars start at 0) with a dotted line at 0.5 = chance; the heatmap's "
               "colour scale runs from 0 to 1, white at 0.5. Error bars are each run's 95% bootstrap interval, not "
               "adjusted for multiple comparisons.")


@dataclass(frozen=True)
class ReportResult:
    html: Path
    summary: Path
    figures: dict[str, Path]
    analysis_run_id: str | None


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=F.DPI)
    return buf.getvalue()


def _when(t) -> str | None:
    """A run's start time as summary.json and report.html write it (UTC, to the second)."""
    import pandas as pd

    t = pd.to_datetime(t, errors="coerce")
    return None if pd.isna(t) else t.strftime("%Y-%m-%d %H:%M:%S")


def summarise(study: Study, measure: str = "g_nll") -> dict:
    """The numbers behind the report, as data: per-run figures from the store (the runs compared, one
    per cell, and the runs set aside with why), its slice views over the compared runs, the five
    answers, the findings with their caveats (findings.py), the best performers and the
    G-NLL/RW-G-NLL tests."""
    from uqflow.report.stats import _clean

    runs = []
    for _, r in study.runs.iterrows():
        sc = study.scores[study.scores.run_id == r.run_id]
        runs.append({
            "run_id": r.run_id, "label": r.label, "run_name": r.run_name, "start_time": _when(r.start_time),
            "model": r.model, "family": r.family, "size_b": r.size_b, "size_class": r.size_class,
            "quantization": r.quantization, "instruct": bool(r.instruct), "dataset": r.dataset, "n": int(r.n),
            "accuracy": r.accuracy, "delong_z": r.delong_z, "delong_p": r.delong_p,
            "settings_differ": r.settings_differ,  # "" where it shares the study's settings
            "scores": {s.measure: {"auroc": s.auroc, "ci_low": s.ci_low, "ci_high": s.ci_high, "aurac": s.aurac,
                                   "prr": s.prr, "prr50": s.prr50, "aurc": s.aurc, "ece": s.ece, "brier": s.brier,
                                   "cost_seconds": s.cost_seconds, "cost_passes": s.cost_passes,
                                   "cost_tokens": s.cost_tokens} for s in sc.itertuples()},
        })
    slices = {key: view.to_dict("records") for key, view in study.slices.items()}
    answers = {a.key: a.to_dict() for a in answer_all(study, measure)}
    cost, objected = answer_cost(study), objections(study, measure)
    set_aside = [{"run_id": r.run_id, "run_name": r.run_name, "label": r.label, "model": r.model,
                  "quantization": r.quantization, "dataset": r.dataset, "n": int(r.n),
                  "start_time": _when(r.start_time), "reason": r.reason, "compared_run_id": r.compared_run_id}
                 for r in study.set_aside.itertuples()]
    return _clean({
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "store": study.url, "measure": measure,
        "n_runs": len(study.runs), "families": study.families, "datasets": study.datasets, "runs": runs,
        "selection": {"rule": SELECTION_RULE, "study_settings": study.settings}, "set_aside": set_aside,
        "slices": slices, "answers": answers, "findings": findings(study, answers, cost, objected, measure),
        "answers_rw_g_nll": {a.key: a.to_dict() for a in answer_all(study, "rw_g_nll")} if measure != "rw_g_nll" else {},
        "best": best_performers(study), "delong_g_nll_vs_rw_g_nll": delong_table(study).to_dict("records"),
        "cost": cost, "measures": list(study.measures),
        "intervals": INTERVALS, "figure_axes": FIGURE_AXES, "token_examples": T.token_pick_rule(measure),
        "objections": objected,
    })


TITLES = {
    "auroc_heatmap": "AUROC heatmap (run = model × dataset, per measure)", "family_bars": "Family comparison",
    "size_effect": "Size effect", "dataset_effect": "Dataset effect", "accuracy_vs_auroc": "Accuracy against AUROC",
    "family_radar": "Radar per family", "roc_overlay": "ROC curves", "rejection_overlay": "Accuracy-rejection curves",
    "gnll_vs_rwgnll": "G-NLL against RW-G-NLL, paired per run",
    "auroc_vs_cost": "AUROC against cost: G-NLL and the sampling-based measures",
    **SF.TITLES,
}
#: the figure the report opens with (figures.headline), apart from the others: the first screen shows it
HEADLINE = "headline"


def render_html(study: Study, summary: dict, pngs: dict[str, bytes]) -> str:
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup

    def f(x, digits=3):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


    fam_best = {b["measure"]: b for b in summary["best"]["family_per_measure"]}
    env = Environment(loader=PackageLoader("uqflow.report", "templates"), autoescape=True)
    # a check no row could make for the same reason (no second judge anywhere) is said once, under the table
    reasons = [{(c["name"], c["why"]) for c in r["not_checked"]} for r in summary["findings"]]
    shared = set.intersection(*reasons) if len(reasons) > 1 else set()
    own = {r["key"]: [c for c in r["not_checked"] if (c["name"], c["why"]) not in shared] for r in summary["findings"]}
    uris = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in pngs.items()}
    images = [(k, TITLES[k], uri) for k, uri in uris.items() if k != HEADLINE]
    return env.get_template("report.html").render(
        s=summary, measures=study.measures, label=label, f=f, pval=format_p, images=images,
        headline=uris.get(HEADLINE), checks=CAVEATS, not_checked_by_all=sorted(shared), not_checked=own,
        family_best=lambda m: fam_best.get(m, {"family": "–", "auroc": None}), figure_max_px=FIGURE_DISPLAY_MAX_PX,
        tokens=Markup(T.token_view_html(study, measure=summary.get("measure", "g_nll"))))


def build_report(url: str | None = None, out: str | Path = "reports", *, measure: str = "g_nll",
                 log_to_mlflow: bool = True) -> ReportResult:
    """Read the store, write ``out/report.html``, ``out/summary.json`` and ``out/figures/*.png``,
    and (by default) log them as an ``analysis`` run in MLflow. The report is written whole into a
    staging folder first and then replaces the last one's files, so an interrupted report leaves
    the last one as it was (report/publish.py); other files in ``out`` are left alone."""
    MEASURES.get(measure)  # an unknown name is refused with the known ones, before the store is read
    study = load_study(url)
    out = Path(out)
    pngs = {}
    with staging(out) as tmp:
        (tmp / "figures").mkdir()
        figures = {HEADLINE: F.headline(study, measure), **F.draw_all(study, measure),
                   **{name: fn(study, measure) for name, fn in SF.FIGURES.items()}}
        for name, fig in figures.items():
            pngs[name] = _png(fig)
            (tmp / "figures" / f"{name}.png").write_bytes(pngs[name])
        summary = summarise(study, measure)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
        (tmp / "report.html").write_text(render_html(study, summary, pngs), encoding="utf-8")
        publish(tmp, out)
    paths = {name: out / "figures" / f"{name}.png" for name in pngs}
    run_id = log_analysis_run(out, study.url, summary["runs"]) if log_to_mlflow else None
    return ReportResult(out / "report.html", out / "summary.json", paths, run_id)


def log_analysis_run(out: Path, store: str, runs: list[dict]) -> str:
    """Log the report's files in ``out`` as the artifacts of a run named ``analysis``, with the
    study's runs side by side as a table (``comparison.json``) that the MLflow UI shows as one."""
    import mlflow

    from uqflow.plots import comparison_frame

    rows = [{**r, "aurocs": {m: (s.get("auroc"), s.get("ci_low"), s.get("ci_high")) for m, s in r["scores"].items()}}
            for r in runs]
    with tracking.tracked_run("analysis", {ANALYSIS_TAG: "true", "uqflow.results_store": store}) as run:
        for name in REPORT_FILES:  # the report's own: the user's other files in ``out`` stay private
            path = out / name
            if path.is_dir():
                mlflow.log_artifacts(str(path), name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        if rows:
            tracking.log_table(comparison_frame(rows), "comparison.json")
    return run.info.run_id
