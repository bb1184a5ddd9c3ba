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
from uqflow.report.data import Study, load_study
from uqflow.report.stats import QUESTIONS, answer_all, best_performers, delong_table

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


def summarise(study: Study, measure: str = "g_nll") -> dict:
    """The numbers behind the report, as data: per-run figures from the store, its slice views, the
    five answers, the best performers and the G-NLL/RW-G-NLL tests."""
    from uqflow.report.stats import _clean

    runs = []
    for _, r in study.runs.iterrows():
        sc = study.scores[study.scores.run_id == r.run_id]
        runs.append({
            "run_id": r.run_id, "model": r.model, "family": r.family, "size_b": r.size_b, "size_class": r.size_class,
            "quantization": r.quantization, "instruct": bool(r.instruct), "dataset": r.dataset, "n": int(r.n),
            "accuracy": r.accuracy, "delong_z": r.delong_z, "delong_p": r.delong_p,
            "scores": {s.measure: {"auroc": s.auroc, "ci_low": s.ci_low, "ci_high": s.ci_high, "aurac": s.aurac,
                                   "prr": s.prr} for s in sc.itertuples()},
        })
    slices = {key: view.to_dict("records") for key, view in study.slices.items()}
    return _clean({
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "store": study.url, "measure": measure,
        "n_runs": len(study.runs), "families": study.families, "datasets": study.datasets, "runs": runs,
        "slices": slices, "answers": {a.key: a.to_dict() for a in answer_all(study, measure)},
        "answers_rw_g_nll": {a.key: a.to_dict() for a in answer_all(study, "rw_g_nll")} if measure != "rw_g_nll" else {},
        "best": best_performers(study), "delong_g_nll_vs_rw_g_nll": delong_table(study).to_dict("records"),
        "intervals": INTERVALS, "figure_axes": FIGURE_AXES, "token_examples": F.token_pick_rule(measure),
    })



_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>uqflow report</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; overflow-wrap: anywhere; }
.answer { border-left: 4px solid #3a7; padding: 0.3em 1em; margin: 1em 0; background: #f6fbf8; overflow-wrap: anywhere; }
.answer.cannot { border-color: #c93; background: #fdf8ee; }
.test { color: #555; font-size: 0.9em; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img.figure { display: block; width: auto; height: auto; max-width: min(100%, {{ figure_max_px }}px); margin: 0.5em 0;
  box-shadow: 0 0 0 1px #eee; }
.tokens { overflow-wrap: anywhere; } .example { margin: 0.8em 0; } .example p { margin: 0.15em 0; }
.tok { font-family: ui-monospace, monospace; padding: 1px 0; } .verdict.right { color: #2a7; } .verdict.wrong { color: #c33; }
.refs { color: #444; font-size: 0.9em; }
.legend, .note { color: #666; font-size: 0.85em; }
</style></head><body>
<h1>uqflow report</h1>
<p class="meta">{{ s.n_runs }} runs · families: {{ s.families|join(", ") }} · datasets: {{ s.datasets|join(", ") }}
· store {{ s.store }} · {{ s.generated_at }} · primary measure {{ label(s.measure) }} (AUROC: positive class = wrong answer, 0.5 = chance)</p>

<h2>The study's questions</h2>
{% for key, a in s.answers.items() %}
<div class="answer{% if not a.answerable %} cannot{% endif %}" id="q-{{ key }}">
<h3>{{ a.question }}</h3>
<p>{{ a.answer }}</p>
{% if a.test %}<p class="test"><b>Test:</b> {{ a.test }}. <b>Why:</b> {{ a.why }}</p>{% endif %}
{% if a.intervals %}<p class="test"><b>Intervals and p-values:</b> {{ a.intervals }}</p>{% endif %}
{% if s.answers_rw_g_nll.get(key) and s.answers_rw_g_nll[key].answerable %}
<p class="test"><b>With RW-G-NLL:</b> {{ s.answers_rw_g_nll[key].answer }}</p>{% endif %}
</div>
{% endfor %}

<h2>Summary and best performers</h2>
<p class="note">AUROC [95% CI]: each run's AUROC with its 95% stratified bootstrap interval, per run, not adjusted for
multiple comparisons (nor, for the best run, for having been picked as the best).</p>
<div class="scroll"><table><tr><th>run</th><th>n</th><th>accuracy</th>{% for m in measures %}<th>{{ label(m) }}</th>{% endfor %}</tr>
{% for r in s.runs %}<tr><td>{{ r.model }} × {{ r.dataset }}</td><td>{{ r.n }}</td><td>{{ f(r.accuracy) }}</td>
{% for m in measures %}{% set x = r.scores.get(m) %}<td>{% if x %}{{ f(x.auroc) }} [{{ f(x.ci_low) }}, {{ f(x.ci_high) }}]{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table></div>
<div class="scroll"><table><tr><th>measure</th><th>best run</th><th>AUROC [95% CI, unadjusted]</th><th>best family (mean AUROC)</th></tr>
{% for b in s.best.run_per_measure %}{% set fam = family_best(b.measure) %}<tr><td>{{ label(b.measure) }}</td><td>{{ b.label }}</td>
<td>{{ f(b.auroc) }} [{{ f(b.ci_low) }}, {{ f(b.ci_high) }}]</td><td>{{ fam.family }} ({{ f(fam.auroc) }})</td></tr>{% endfor %}</table></div>

<h2>G-NLL against RW-G-NLL (DeLong's paired test per run)</h2>
<p class="note">p: DeLong's test per run, not adjusted for testing {{ s.delong_g_nll_vs_rw_g_nll|length }} runs.</p>
<div class="scroll"><table><tr><th>run</th><th>G-NLL</th><th>RW-G-NLL</th><th>z</th><th>p (unadjusted)</th></tr>
{% for d in s.delong_g_nll_vs_rw_g_nll %}<tr><td>{{ d.label }}</td><td>{{ f(d.auroc_g_nll) }}</td><td>{{ f(d.auroc_rw_g_nll) }}</td>
<td>{{ f(d.delong_z, 2) }}</td><td>{{ pval(d.delong_p) }}</td></tr>{% endfor %}</table></div>

<h2>Figures</h2>
<p class="note">{{ s.figure_axes }}</p>
{% for name, title, uri in images %}<h3>{{ title }}</h3><img class="figure" src="{{ uri }}" alt="{{ title }}" id="fig-{{ name }}">
{% endfor %}

<h2>Answers token by token</h2>
{{ tokens }}
</body></html>
"""

TITLES = {
    "auroc_heatmap": "AUROC heatmap (run = model × dataset, per measure)", "family_bars": "Family comparison",
    "size_effect": "Size effect", "dataset_effect": "Dataset effect", "accuracy_vs_auroc": "Accuracy against AUROC",
    "family_radar": "Radar per family", "roc_overlay": "ROC curves", "rejection_overlay": "Accuracy-rejection curves",
    "gnll_vs_rwgnll": "G-NLL against RW-G-NLL, paired per run",
}


def render_html(study: Study, summary: dict, pngs: dict[str, bytes]) -> str:
    from jinja2 import Environment
    from markupsafe import Markup

    def f(x, digits=3):
        return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"

    def pval(p):
        return "–" if p is None or not math.isfinite(p) else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")

    fam_best = {b["measure"]: b for b in summary["best"]["family_per_measure"]}
    env = Environment(autoescape=True)
    images = [(k, TITLES[k], "data:image/png;base64," + base64.b64encode(v).decode()) for k, v in pngs.items()]
    return env.from_string(_TEMPLATE).render(
        s=summary, measures=F.MEASURES, label=lambda m: F.LABELS.get(m, m), f=f, pval=pval, images=images,
        family_best=lambda m: fam_best.get(m, {"family": "–", "auroc": None}), figure_max_px=FIGURE_DISPLAY_MAX_PX,
        tokens=Markup(F.token_view_html(study, measure=summary.get("measure", "g_nll"))))


def build_report(url: str | None = None, out: str | Path = "reports", *, measure: str = "g_nll",
                 log_to_mlflow: bool = True) -> ReportResult:
    """Read the store, write ``out/report.html``, ``out/summary.json`` and ``out/figures/*.png``,
    and (by default) log them as an ``analysis`` run in MLflow."""
    from uqflow.errors import UqflowError

    if measure not in F.MEASURES:
        raise UqflowError(f"unknown measure {measure!r}; choose one of {', '.join(F.MEASURES)}")
    study = load_study(url)
    out = Path(out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UqflowError(f"cannot write the report to {out}: {e.strerror}") from None
    pngs, paths = {}, {}
    for name, fig in F.draw_all(study, measure).items():
        pngs[name] = _png(fig)
        paths[name] = out / "figures" / f"{name}.png"
        paths[name].write_bytes(pngs[name])
    summary = summarise(study, measure)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "report.html").write_text(render_html(study, summary, pngs), encoding="utf-8")
    run_id = log_analysis_run(out, study.url) if log_to_mlflow else None
    return ReportResult(out / "report.html", out / "summary.json", paths, run_id)


def log_analysis_run(out: Path, store: str) -> str:
    """Log the report folder as the artifacts of a run named ``analysis``."""
    import mlflow


    with tracking.tracked_run("analysis", {ANALYSIS_TAG: "true", "uqflow.results_store": store}) as run:
        mlflow.log_artifacts(str(out))
    return run.info.run_id
