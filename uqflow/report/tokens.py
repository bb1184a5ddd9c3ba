"""Answers token by token: a few answers chosen deterministically per run, each token's NLL and
relevance shown as colour, as self-contained HTML for the report and the notebook."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from uqflow.scoring.measures import label
from uqflow.report.data import Study


def token_pick_rule(measure: str = "g_nll", per_run: int = 2) -> str:
    """How :func:`pick_token_examples` chooses, in words (printed above the examples)."""
    what = (f"the wrong answer with the lowest {label(measure)} (its most confident wrong answer)"
            + (f" and the right answer with the highest {label(measure)} (its least confident "
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
    for rid in study.latest()["run_id"]:
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
            scores += f", {label(measure)} {float(r[measure]):.2f}"
        out.append(f'<div class="example"><p><b>{html.escape(str(labels.get(r.run_id, r.run_id)))}</b> — '
                   f'{html.escape(str(r.question))}</p>'
                   f'<p class="answer-line"><span class="verdict {verdict}">{verdict}</span> ({scores}): '
                   + "".join(spans) + "</p>"
                   f'<p class="refs">Reference answer{"s" if len(refs) != 1 else ""}: {ref_html}</p></div>')
    out.append("</div>")
    return "\n".join(out)
