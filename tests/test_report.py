"""The report: the five answers follow from the runs present (or say they cannot), summary.json
equals the SQL store, report.html is self-contained, the analysis run is logged, and the notebook
runs on the same functions."""

from __future__ import annotations

import json
import os
import re

import mlflow
import pytest

from store_fixtures import log_run, mlflow_store
from commands import invoke
from uqflow.scoring.measures import SINGLE_PASS
from uqflow.report import build_report, load_study
from uqflow.report.stats import answer_all
from uqflow.store import aggregate, run_query

STUDY = ["Llama-3.2-1B", "Llama-3-8B-8bit", "Qwen2.5-1.5B", "Qwen2.5-7B-8bit", "Mistral-7B-v0.3-8bit",
         "Mistral-7B-Instruct-v0.3-8bit"]
DATASETS = ["trivia_mini", "squad_mini"]


def _logged_store(tmp_path_factory, name: str, cells):
    """A results store aggregated from synthetic runs shaped like uqflow's (no model is run): one
    run per (model, dataset, n, seed) in ``cells``."""
    tmp = tmp_path_factory.mktemp(name)
    url = f"sqlite:///{tmp / 'results.db'}"
    with mlflow_store(tmp) as uri:
        for model, dataset, n, seed in cells:
            log_run(model, dataset, n, seed=seed)
        aggregate(url=url)
        yield {"url": url, "tracking": uri, "tmp": tmp}


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """The reference study's 12 cells, as runs shaped like uqflow's (no model is run), aggregated."""
    yield from _logged_store(tmp_path_factory, "study", [(m, d, 80, 10 * i + j) for i, m in enumerate(STUDY)
                                                         for j, d in enumerate(DATASETS)])


@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory):
    """Two models, each run on two datasets: SmolLM2's two runs land at nearby points of
    accuracy against AUROC (the case where its two labels were printed on top of each other)."""
    yield from _logged_store(tmp_path_factory, "two_models", [
        ("SmolLM2-135M-Instruct", "trivia_mini", 60, 3), ("SmolLM2-135M-Instruct", "squad_mini", 60, 4),
        ("Gemma-3-270M", "trivia_mini", 60, 5), ("Gemma-3-270M", "squad_mini", 60, 6)])


DEMO = ["SmolLM2-135M-Instruct", "Gemma-3-270M", "SmolLM2-135M-Instruct-8bit"]


@pytest.fixture(scope="module")
def demo_and_quick_store(tmp_path_factory):
    """`make demo`'s six cells (its three models x both datasets, 100 questions each, one seed, as
    grids/cpu_demo.yaml runs them), then README's first example: Gemma-3-270M x squad_mini again
    with 50 questions, the latest run in the store. Runs shaped like uqflow's (no model is run)."""
    tmp = tmp_path_factory.mktemp("demo_and_quick")
    url = f"sqlite:///{tmp / 'results.db'}"
    with mlflow_store(tmp) as uri:
        demo = {(m, d): log_run(m, d, 100, seed=10 * i + j + 1, settings={"seed": 10})
                for i, m in enumerate(DEMO) for j, d in enumerate(DATASETS)}
        quick = log_run("Gemma-3-270M", "squad_mini", 50, seed=99, settings={"seed": 10})
        aggregate(url=url)
        yield {"url": url, "tracking": uri, "tmp": tmp, "demo": demo, "quick": quick}


def test_the_study_answers_what_it_can(study_store):
    answers = {a.key: a for a in answer_all(load_study(study_store["url"]))}
    assert answers["size"].answerable and answers["size"].numbers["comparisons"] == 4  # Llama, Qwen x 2 datasets
    assert "quantization" in answers["size"].answer  # the large models are 8-bit: confounded, and said so
    assert answers["family"].answerable and answers["family"].test.startswith("Friedman")
    assert "blocks" in answers["family"].answer
    assert answers["dataset"].answerable and answers["dataset"].numbers["comparisons"] == 6
    assert answers["instruct"].answerable and answers["instruct"].numbers["comparisons"] == 2  # Mistral base/instruct
    assert not answers["quantization"].answerable
    assert "cannot answer" in answers["quantization"].answer
    for a in answers.values():
        for c in a.comparisons:
            assert c["ci_low"] <= c["difference"] <= c["ci_high"]
            assert 0 < c["p_value"] <= 1


def test_summary_json_equals_the_sql_store(study_store, tmp_path):
    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    assert summary["n_runs"] == 12
    stored = {(rid, m): (a, lo, hi) for rid, m, a, lo, hi in
              run_query("SELECT run_id, measure, auroc, ci_low, ci_high FROM scores", study_store["url"]).rows}
    seen = 0
    for run in summary["runs"]:
        for m, v in run["scores"].items():
            assert (v["auroc"], v["ci_low"], v["ci_high"]) == stored[(run["run_id"], m)]
            seen += 1
    assert seen == len(stored) == len(summary["runs"]) * len(SINGLE_PASS)
    acc = dict(run_query("SELECT run_id, accuracy FROM runs", study_store["url"]).rows)
    assert {r["run_id"]: r["accuracy"] for r in summary["runs"]} == acc
    fam = {(f, q): v for f, q, v in run_query("SELECT family, precision, mean_auroc FROM v_auroc_by_family "
                                              "WHERE measure = 'g_nll'", study_store["url"]).rows}
    for row in summary["slices"]["family"]:
        if row["measure"] == "g_nll":
            assert row["mean_auroc"] == pytest.approx(fam[row["family"], row["precision"]], rel=1e-12)
    # families compared like with like: Mistral has 8-bit runs only, so the families are compared at 8-bit
    assert {q for _, q in fam} == {"full", "8bit"} and ("Mistral", "full") not in fam
    at_8bit = {f: v for (f, q), v in fam.items() if q == "8bit"}
    assert summary["answers"]["family"]["numbers"]["mean_auroc_by_family"] == pytest.approx(at_8bit, rel=1e-12)


def test_report_html_is_self_contained(study_store, tmp_path):
    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    html = r.html.read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert len(srcs) == len(r.figures) == 12  # the headline figure of the first screen, and the 11 below
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(http|//|file:)', html)
    for q in ("Does size help?", "Which family flags its errors best?", "Does the dataset matter?",
              "Does instruction tuning help?", "What does 8-bit quantization cost?"):
        assert q in html
    assert "cannot answer" in html and "Friedman" in html and "DeLong" in html
    assert all(p.stat().st_size > 5000 for p in r.figures.values())


def test_runs_whose_intervals_are_all_undefined_still_report(study_store, tmp_path):
    """A store whose AUROC intervals are NULL in every row (runs with one right answer, say) reads
    back as NaN, not None: the report draws them without intervals instead of failing."""
    import shutil
    import sqlite3

    db = tmp_path / "r.db"
    shutil.copy(study_store["url"].removeprefix("sqlite:///"), db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE scores SET ci_low = NULL, ci_high = NULL")
    r = build_report(f"sqlite:///{db}", tmp_path / "rep", log_to_mlflow=False)
    assert len(r.figures) == 12
    assert load_study(f"sqlite:///{db}").scores["ci_low"].isna().all()


def test_one_family_cannot_answer_the_family_question(tracking, tmp_path):
    log_run("Llama-3.2-1B", "trivia_mini", 40, 1)
    log_run("Llama-3-8B-8bit", "trivia_mini", 40, 2)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    answers = {a.key: a for a in answer_all(load_study(url))}
    assert not answers["family"].answerable and "one family only (Llama" in answers["family"].answer
    assert not answers["dataset"].answerable and answers["size"].answerable


def test_a_bundled_model_and_its_8bit_variant_answer_the_quantization_question(tracking, tmp_path):
    """SmolLM2-135M-Instruct (GGUF weights de-quantized on load: quantization gguf-q4_1) and
    SmolLM2-135M-Instruct-8bit (the same weights, LLM.int8) are the same model quantized and not;
    Gemma-3-270M beside them is a different model and pairs with neither."""
    base = log_run("SmolLM2-135M-Instruct", "trivia_mini", 40, 1)
    quantized = log_run("SmolLM2-135M-Instruct-8bit", "trivia_mini", 40, 2)
    log_run("Gemma-3-270M", "trivia_mini", 40, 3)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    answers = {a.key: a for a in answer_all(load_study(url))}
    q = answers["quantization"]
    assert q.answerable and "cannot answer" not in q.answer, q.answer
    assert q.numbers["comparisons"] == 1
    [c] = q.comparisons
    assert (c["run_a"], c["run_b"]) == (base, quantized)
    assert (c["a"], c["b"]) == ("SmolLM2-135M-Instruct × trivia_mini", "SmolLM2-135M-Instruct-8bit × trivia_mini")
    assert c["paired"] and "gguf-q4_1" in q.answer  # the baseline's own quantization is said
    assert not answers["instruct"].answerable and not answers["size"].answerable


def test_report_is_logged_as_an_analysis_run(tracking, tmp_path):
    log_run("SmolLM2-135M-Instruct", "trivia_mini", 30, 1)
    log_run("Gemma-3-270M", "trivia_mini", 30, 2)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    aggregate(url=url)
    r = build_report(url, tmp_path / "rep")
    run = mlflow.get_run(r.analysis_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["uqflow.analysis"] == "true"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(r.analysis_run_id)}
    assert {"report.html", "summary.json", "figures", "comparison.json"} <= names
    # the study at a glance, one row per run as the store holds it
    table = mlflow.artifacts.load_dict(f"runs:/{r.analysis_run_id}/comparison.json")
    rows = {r["full model name"]: r for r in (dict(zip(table["columns"], row)) for row in table["data"])}
    assert set(rows) == {"SmolLM2-135M-Instruct", "Gemma-3-270M"}
    for model, row in rows.items():
        (acc, auroc, lo, hi), = run_query(
            "SELECT r.accuracy, s.auroc, s.ci_low, s.ci_high FROM runs r JOIN scores s ON s.run_id = r.run_id "
            f"WHERE r.model = '{model}' AND s.measure = 'g_nll'", url).rows
        assert row["accuracy"] == f"{acc:.3f}" and row["n"] == "30" and row["dataset"] == "trivia_mini"
        assert row["AUROC G-NLL"] == f"{auroc:.3f} [{lo:.3f}, {hi:.3f}]"
    assert rows["Gemma-3-270M"]["family"] == "Gemma" and rows["Gemma-3-270M"]["size (B)"] == "0.27"
    assert rows["SmolLM2-135M-Instruct"]["model"] == "SmolLM2-135M"  # as the runs table names it
    assert table["columns"][:5] == ["model", "dataset", "n", "accuracy", "AUROC G-NLL"]  # the AUROCs in view first
    # aggregating again leaves the analysis run out: aggregation looks only for runs carrying the
    # tag of uqflow's model x dataset runs, which an analysis run lacks
    out = {o.run_id: o for o in aggregate(url=url)}
    assert r.analysis_run_id not in out
    stored = {rid for (rid,) in run_query("SELECT run_id FROM runs", url).rows}
    assert r.analysis_run_id not in stored and len(stored) == 2


def test_report_on_an_empty_or_missing_store_says_so(tmp_path):
    

    res = invoke("report", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--no-mlflow")
    assert res.exit_code == 1 and "uqflow aggregate" in res.output and "Traceback" not in res.output
    res = invoke("report", "--measure", "nope", "--no-mlflow")
    assert res.exit_code == 1 and "unknown measure 'nope'" in res.output


@pytest.mark.slow
def test_notebook_runs_on_the_same_functions(study_store, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from conftest import ROOT

    nb = nbformat.read(ROOT / "notebooks" / "multi_family_comparison.ipynb", as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "import matplotlib" not in source and "plt." not in source  # no second copy of plotting code
    os.environ["UQFLOW_RESULTS_DB"] = study_store["url"]
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["UQFLOW_RESULTS_DB"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 9
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "Does size help?" in text and "Friedman" in text


def test_report_renders_in_a_real_browser(study_store, tmp_path, browser):
    """Headless Chromium opens report.html: every figure loads and every question is on the page."""
    from browser import page_report

    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    seen = page_report(browser, r.html.resolve().as_uri())
    print(f"\nbrowser: title {seen['title']!r}, {seen['images']} images, broken {seen['broken_images']}, "
          f"{len(seen['text'])} characters of text")
    assert seen["title"] == "uqflow report"
    assert seen["images"] == 12 and seen["broken_images"] == []  # the headline figure and the 11 below
    import json

    answers = json.loads(r.summary.read_text())["answers"].values()
    page = r.html.read_text()
    for q in ("Does size help?", "Which family flags its errors best?", "Does the dataset matter?",
              "Does instruction tuning help?", "What does 8-bit quantization cost?"):
        assert q in page
    # findings first and shown; what cannot be answered folded under one line that says so
    shown = [a["question"] for a in answers if a["answerable"]]
    folded = [a["question"] for a in answers if not a["answerable"]]
    assert shown and all(q in seen["text"] for q in shown)
    assert not any(q in seen["text"] for q in folded)
    if folded:
        assert f"{len(folded)} question{'s' if len(folded) != 1 else ''} these runs cannot answer yet" in seen["text"]
    assert seen["text"].index("Findings") < seen["text"].index("Before believing a ranking")
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert all(w > 300 for w in widths)


# ---------------------------------------------------------------- the figures at their displayed size

def _drawn_texts(fig):
    """Every piece of text the figure draws, once drawn: tick labels of the ticks in view (not the
    spare ones matplotlib keeps), titles, axis labels, legends, annotations, cell values."""
    from matplotlib.text import Text

    fig.canvas.draw()
    tick_labels, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.majorTicks + axis.minorTicks:
                tick_labels |= {id(tick.label1), id(tick.label2)}
            if not (ax.axison and axis.get_visible()):
                continue
            for tick in axis._update_ticks():
                drawn += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text().strip()]
    drawn += [t for t in fig.findobj(Text) if id(t) not in tick_labels and t.get_visible() and t.get_text().strip()]
    return drawn


def _text_box(t, renderer):
    """The text's own box (an annotation's ``get_window_extent`` also spans its leader line)."""
    from matplotlib.text import Text

    return Text.get_window_extent(t, renderer)


def _figures(url):
    from uqflow.report import figures as F
    from uqflow.report.build import _png

    study = load_study(url)
    for name, fig in {"headline": F.headline(study), **F.draw_all(study)}.items():
        png = _png(fig)
        yield name, fig, int.from_bytes(png[16:20], "big")  # the PNG's width, from its IHDR chunk


@pytest.mark.parametrize("store", ["study_store", "two_model_store", "demo_and_quick_store"])
def test_figure_text_is_legible_at_its_displayed_size(store, request):
    """No text in any figure is under 9 px as report.html shows it: points x DPI / 72, scaled by how
    the page's CSS sizes the image (at most FIGURE_DISPLAY_MAX_PX wide, never enlarged)."""
    from uqflow.report.build import FIGURE_DISPLAY_MAX_PX
    from uqflow.report.figures import DPI

    for name, fig, width in _figures(request.getfixturevalue(store)["url"]):
        texts = _drawn_texts(fig)
        assert texts, name
        smallest = min(t.get_fontsize() for t in texts)
        shown = min(1.0, FIGURE_DISPLAY_MAX_PX / width)
        px = smallest * DPI / 72 * shown
        print(f"{name}: {width} px wide, shown at {shown:.2f}, smallest text {smallest:g} pt = {px:.1f} px")
        assert px >= 9, f"{name}: smallest text {smallest} pt is {px:.1f} px as displayed"
        assert width <= FIGURE_DISPLAY_MAX_PX, f"{name} is {width} px wide: report.html would shrink it"


@pytest.mark.parametrize("store", ["study_store", "two_model_store", "demo_and_quick_store"])
def test_figure_texts_neither_overlap_nor_leave_the_figure(store, request):
    from itertools import combinations

    for name, fig, _ in _figures(request.getfixturevalue(store)["url"]):
        renderer = fig.canvas.get_renderer()
        boxes = [(t.get_text(), _text_box(t, renderer)) for t in _drawn_texts(fig)]
        for text, b in boxes:
            assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= fig.bbox.x1 + 1 and b.y1 <= fig.bbox.y1 + 1, \
                f"{name}: {text!r} is cut off at the figure's edge"
        for (ta, a), (tb, b) in combinations(boxes, 2):
            w, h = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert not (w > 1 and h > 1), f"{name}: {ta!r} overlaps {tb!r}"


def test_auroc_axes_start_at_zero_and_say_so(study_store):
    from uqflow.report import figures as F

    figs = F.draw_all(load_study(study_store["url"]))
    bars = figs["family_bars"].axes[0]
    assert bars.get_xlim() == (0.0, 1.0) and "bars start at 0" in bars.get_xlabel()
    for name in ("size_effect", "dataset_effect", "accuracy_vs_auroc"):
        ax = figs[name].axes[0]
        assert ax.get_ylim()[0] == 0 and "axis from 0" in ax.get_ylabel(), name
    assert figs["accuracy_vs_auroc"].axes[0].get_xlim() == (0.0, 1.0)
    assert figs["gnll_vs_rwgnll"].axes[0].get_xlim() == (0.0, 1.0)
    for ax in figs["family_radar"].axes:
        if ax.name == "polar":
            assert ax.get_ylim() == (0.0, 1.0)
    assert "centre 0" in figs["family_radar"].get_suptitle()
    heat = figs["auroc_heatmap"].axes[0].images[0]
    assert (heat.norm.vmin, heat.norm.vmax) == (0.0, 1.0)


def test_size_plot_tells_the_datasets_apart_by_marker_and_line_style(study_store):
    from uqflow.report import figures as F

    fig = F.size_effect(load_study(study_store["url"]))
    entries = {t.get_text(): h for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    a, b = (entries[d] for d in DATASETS)
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels(which="minor") if t.get_visible()]
    assert not any(labels), "minor ticks of the log axis are labelled"


def test_two_runs_of_one_model_get_labels_apart(two_model_store):
    """SmolLM2's two runs (two datasets, nearby points): both labelled, neither label on the other
    or on a marker."""
    from itertools import combinations

    import numpy as np
    from matplotlib.transforms import Bbox

    from uqflow.report import figures as F

    fig = F.accuracy_vs_auroc(load_study(two_model_store["url"]))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [(a.get_text(), _text_box(a, renderer)) for a in ax.texts]
    assert sorted(t for t, _ in labels) == ["Gemma-3-270M"] * 2 + ["SmolLM2-135M-Instruct"] * 2
    for (_, a), (_, b) in combinations(labels, 2):
        assert not a.overlaps(b)
    half = (45 ** 0.5) / 2 * fig.dpi / 72  # the markers' radius (scatter size 45 pt²), in pixels
    centres = np.concatenate([ax.transData.transform(c.get_offsets()) for c in ax.collections if len(c.get_offsets())])
    assert len(centres) == 4
    for text, box in labels:
        for x, y in centres:
            assert not box.overlaps(Bbox.from_extents(x - half, y - half, x + half, y + half)), \
                f"{text!r} covers the marker at {x:.0f}, {y:.0f}"


def test_every_interval_says_whether_it_is_adjusted(study_store, tmp_path):
    r = build_report(study_store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    assert "not adjusted" in summary["intervals"]["runs.scores.ci_low/ci_high"]
    assert "0 to 1" in summary["figure_axes"]
    for key, a in summary["answers"].items():
        if not a["answerable"]:
            continue
        assert "adjusted" in a["intervals"], key
        for c in a["comparisons"]:
            assert c["ci_adjusted"] is False and c["ci_level"] == 0.95, key
            if key == "family":
                assert "Benjamini-Hochberg" in c["p_adjustment"] and "p_adjusted" in c
            else:
                assert c["p_adjustment"] == "none"
        if a["comparisons"]:
            assert "[" not in a["answer"].replace("unadjusted 95% CI [", ""), key  # no bare interval
    html = r.html.read_text()
    assert "not adjusted for" in html and "AUROC [95% CI, unadjusted]" in html and "p (unadjusted)" in html


def test_an_unadjusted_interval_beside_an_adjusted_p_is_explained():
    from uqflow.report.stats import _family_pair_text

    c = {"a": "Llama", "b": "Qwen", "dataset": "trivia_mini", "difference": 0.05, "ci_low": 0.01, "ci_high": 0.09,
         "p_adjusted": 0.12}
    text = _family_pair_text(c)
    assert "unadjusted 95% CI [0.010, 0.090]" in text and "adjusted p = 0.120" in text
    assert "not distinguishable from zero" in text
    assert "not distinguishable" not in _family_pair_text({**c, "p_adjusted": 0.01})


def test_token_examples_say_how_they_were_chosen_and_show_the_references(two_model_store, tmp_path):
    from uqflow.report import tokens as T

    study = load_study(two_model_store["url"])
    picks = T.pick_token_examples(study)
    assert picks.equals(T.pick_token_examples(study))  # deterministic
    for rid, g in picks.groupby("run_id", sort=False):
        answers = study.answers(rid)
        answers = answers[answers.correct.notna() & answers.tokens.notna()]
        wrong, right = g[~g.correct.astype(bool)], g[g.correct.astype(bool)]
        assert wrong.g_nll.iloc[0] == answers[~answers.correct.astype(bool)].g_nll.min()
        assert right.g_nll.iloc[0] == answers[answers.correct.astype(bool)].g_nll.max()
    r = build_report(two_model_store["url"], tmp_path / "rep", log_to_mlflow=False)
    html = r.html.read_text()
    assert "How these were chosen" in html and "most confident wrong answer" in html and "deterministic" in html
    for ref in picks.reference_answers:
        assert f"<q>{ref[0]}</q>" in html
    assert html.count("Reference answer") == len(picks)
    assert json.loads(r.summary.read_text())["token_examples"] == T.token_pick_rule("g_nll")


def test_comparison_table_orders_measures_and_leaves_undefined_values_blank():
    from uqflow.plots import comparison_frame, comparison_row

    tags = {"model": "Gemma-3-270M", "family": "Gemma", "size_b": "0.27", "quantization": "gguf-q4_k_m",
            "dataset": "squad_mini"}
    metrics = {"n": 12.0, "accuracy": 0.25, "auroc_rw_g_nll": 0.6, "auroc_rw_g_nll_ci_low": 0.41,
               "auroc_rw_g_nll_ci_high": 0.8, "auroc_g_nll": float("nan"), "auroc_g_nll_ci_low": float("nan"),
               "auroc_g_nll_ci_high": float("nan"), "batch_spread/auroc_g_nll_max": 0.7}
    frame = comparison_frame([comparison_row(tags, metrics)])
    assert list(frame.columns) == ["model", "dataset", "n", "accuracy", "AUROC G-NLL", "AUROC RW-G-NLL", "precision",
                                   "family", "size (B)", "full model name"]
    assert (frame.iloc[0]["model"], frame.iloc[0]["dataset"], frame.iloc[0]["precision"]) == (
        "Gemma-3-270M", "squad_mini", "full")  # a GGUF file is de-quantized as it loads: full precision
    row = frame.iloc[0].to_dict()
    assert row["AUROC G-NLL"] == "" and row["AUROC RW-G-NLL"] == "0.600 [0.410, 0.800]"
    assert (row["n"], row["accuracy"], row["size (B)"]) == ("12", "0.250", "0.27")


def test_comparison_labels_are_short_and_tell_every_run_apart():
    """MLflow shows the table's columns about 16 characters wide: a run is named by its short model
    name and its dataset, and two runs of one model and dataset by their run ids as well."""
    from uqflow.plots import comparison_frame, comparison_row

    def row(model, dataset, run_id, quantization="8bit"):
        return comparison_row({"model": model, "family": "SmolLM2", "size_b": "0.135", "quantization": quantization,
                               "dataset": dataset}, {"n": 10.0, "accuracy": 0.5}, run_id)

    frame = comparison_frame([row("SmolLM2-135M-Instruct-8bit", "trivia_mini", "aaaaaa11"),
                              row("SmolLM2-135M-Instruct-8bit", "squad_mini", "bbbbbb22"),
                              row("SmolLM2-135M-Instruct-8bit", "squad_mini", "cccccc33"),
                              row("SmolLM2-135M-Instruct", "squad_mini", "dddddd44", "gguf-q4_1")])
    labels = list(zip(frame["model"], frame["dataset"]))
    assert len(set(labels)) == len(labels) and all(len(m) <= 24 and len(d) <= 16 for m, d in labels)
    assert ("SmolLM2-135M-8bit", "trivia_mini") in labels and ("SmolLM2-135M", "squad_mini") in labels
    assert {"SmolLM2-135M-8bit bbbbbb", "SmolLM2-135M-8bit cccccc"} <= set(frame["model"])
    assert dict(zip(frame["model"], frame["precision"]))["SmolLM2-135M"] == "full"


# ---------------------------------------------------------------- one run per cell

def test_the_report_compares_one_run_per_cell_and_lists_the_run_it_set_aside(demo_and_quick_store, tmp_path):
    """After `make demo` and README's quick Gemma x SQuAD run of 50 questions, the report compares
    the demo's six runs (the quick one is the latest of its cell, but its settings are not the
    study's) and names the quick run as set aside, with why; nothing else in it uses that run."""
    store = demo_and_quick_store
    r = build_report(store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    assert summary["n_runs"] == 6
    assert {x["run_id"] for x in summary["runs"]} == set(store["demo"].values())
    assert all(x["n"] == 100 and x["settings_differ"] == "" for x in summary["runs"])
    [aside] = summary["set_aside"]
    assert aside["run_id"] == store["quick"] and (aside["model"], aside["dataset"], aside["n"]) == (
        "Gemma-3-270M", "squad_mini", 50)
    assert aside["reason"] == "its settings differ from the study's: num_samples=50 against 100"
    assert aside["compared_run_id"] == store["demo"]["Gemma-3-270M", "squad_mini"] and aside["start_time"]
    assert summary["selection"]["study_settings"]["num_samples"] == "100"
    assert "seed" in summary["selection"]["study_settings"] and "model" not in summary["selection"]["study_settings"]
    rest = json.dumps({k: v for k, v in summary.items() if k != "set_aside"})
    assert store["quick"] not in rest  # no answer, table or mean draws on it
    html = r.html.read_text()
    assert "6 runs compared" in html and "1 set aside" in html and 'id="runs"' in html
    row = re.search(rf"<tr><td>[^<]*</td><td>{store['quick']}</td>.*?</tr>", html)
    assert row and "num_samples=50 against 100" in row.group(0) and "<td>50</td>" in row.group(0)


def test_no_two_runs_in_the_report_share_a_label(demo_and_quick_store, tmp_path):
    from uqflow.report import figures as F

    r = build_report(demo_and_quick_store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    html = r.html.read_text()
    table = re.search(r'<table class="summary"><tr><th>measure</th>(.*?)</tr>', html).group(1)
    columns = re.findall(r"<th>(.*?)</th>", table)
    assert len(columns) == len(set(columns)) == 6, columns
    delong = [d["label"] for d in summary["delong_g_nll_vs_rw_g_nll"]]
    assert len(delong) == len(set(delong)) == 6
    labels = [x["label"] for x in summary["runs"]]
    assert sorted(labels) == sorted(delong)
    study = load_study(demo_and_quick_store["url"])
    figs = F.draw_all(study)
    for name in ("auroc_heatmap", "family_bars", "gnll_vs_rwgnll"):
        ticks = [t.get_text() for t in figs[name].axes[0].get_yticklabels()]
        assert len(ticks) == len(set(ticks)) == 6, (name, ticks)
    for name in ("roc_overlay", "rejection_overlay"):
        entries = [t.get_text() for t in figs[name].legends[0].get_texts()]
        assert len(entries) == len(set(entries)), (name, entries)
    assert "1 run set aside" in figs["auroc_heatmap"].axes[0].get_title()


def test_a_family_mean_counts_each_dataset_once(demo_and_quick_store, tmp_path):
    """Gemma's family mean is the mean of its two compared runs (one per dataset), not of three
    runs with SQuAD counted twice; the slice views in summary.json count each run once too."""
    store = demo_and_quick_store
    auroc = dict(run_query("SELECT run_id, auroc FROM scores WHERE measure = 'g_nll'", store["url"]).rows)
    trivia, squad = (auroc[store["demo"]["Gemma-3-270M", d]] for d in DATASETS)
    r = build_report(store["url"], tmp_path / "rep", log_to_mlflow=False)
    summary = json.loads(r.summary.read_text())
    means = summary["answers"]["family"]["numbers"]["mean_auroc_by_family"]
    assert means["Gemma"] == pytest.approx((trivia + squad) / 2, rel=1e-12)
    assert means["Gemma"] != pytest.approx((trivia + squad + auroc[store["quick"]]) / 3)  # the fixture tells apart
    gemma = [v for v in summary["slices"]["family"] if v["family"] == "Gemma" and v["measure"] == "g_nll"]
    assert [(v["n_runs"], v["n_questions"]) for v in gemma] == [(2, 200)]
    [best] = [b for b in summary["best"]["family_per_measure"] if b["measure"] == "g_nll"]
    assert best["auroc"] == pytest.approx(max(means.values()), rel=1e-12)


def _runs(*rows):
    """A runs table as the results store holds it: (run_id, model, quantization, dataset, started, params)."""
    import pandas as pd

    return pd.DataFrame([{"run_id": rid, "model": m, "quantization": q, "dataset": d, "start_time": pd.Timestamp(t),
                          "end_time": pd.Timestamp(t), "params": json.dumps(p)} for rid, m, q, d, t, p in rows])


def test_selection_takes_the_latest_run_with_the_study_settings_else_flags_the_latest():
    from uqflow.report.data import select_runs

    common = {"num_samples": "100", "seed": "10", "correctness": "f1", "device": "cpu"}
    runs = _runs(
        ("a1", "M", "none", "trivia", "2026-01-01", common),
        ("a2", "M", "none", "trivia", "2026-01-02", {**common, "device": "cuda"}),  # where it ran: not a setting
        ("b1", "M", "none", "squad", "2026-01-01", common),
        ("b2", "M", "none", "squad", "2026-01-03", {**common, "num_samples": "50"}),
        ("c1", "N", "none", "trivia", "2026-01-01", {**common, "correctness": "em"}),
        ("c2", "N", "none", "trivia", "2026-01-02", {**common, "correctness": "em", "seed": "11"}),
        ("d1", "N", "8bit", "trivia", "2026-01-01", common))
    selected, aside, settings = select_runs(runs)
    assert settings == {"correctness": "f1", "num_samples": "100", "seed": "10"}
    assert sorted(selected["run_id"]) == ["a2", "b1", "c2", "d1"]
    flagged = selected.set_index("run_id")["settings_differ"]
    assert flagged["c2"] == "correctness=em against f1, seed=11 against 10" and flagged["a2"] == ""
    why = aside.set_index("run_id")["reason"].to_dict()
    assert why == {"a1": "an earlier run of the cell",
                   "b2": "its settings differ from the study's: num_samples=50 against 100",
                   "c1": "an earlier run of the cell (its settings differ from the study's too: correctness=em "
                         "against f1)"}
    assert aside.set_index("run_id")["compared_run_id"].to_dict() == {"a1": "a2", "b2": "b1", "c1": "c2"}


def test_a_setting_most_cells_do_not_share_is_not_the_study_setting():
    """Every cell with a seed of its own: no seed is the study's, so none is flagged; a run that does
    not record a setting (older than it) is not flagged for it either."""
    from uqflow.report.data import select_runs

    runs = _runs(("a", "M", "none", "trivia", "2026-01-01", {"seed": "1", "judges": "em"}),
                 ("b", "M", "none", "squad", "2026-01-01", {"seed": "2", "judges": "em"}),
                 ("c", "N", "none", "squad", "2026-01-01", {"seed": "3"}))
    selected, aside, settings = select_runs(runs)
    assert settings == {"judges": "em"} and aside.empty
    assert (selected["settings_differ"] == "").all()


def test_labels_tell_apart_one_model_name_at_two_precisions():
    import pandas as pd

    from uqflow.report.data import run_labels

    runs = pd.DataFrame({"run_id": ["r1", "r2", "r3"], "model": ["M", "M", "N"],
                         "quantization": ["none", "8bit", "none"], "dataset": ["trivia"] * 3})
    assert list(run_labels(runs)) == ["M (none) × trivia", "M (8bit) × trivia", "N × trivia"]
