"""Checks in a real headless browser (Chromium through selenium): the MLflow UI shows uqflow's runs
with the tags the study is sliced by, and the page report used for that can see a broken image."""

from __future__ import annotations

import base64
import re

import pytest

from browser import (current_page_report, keep_screenshots, page_report, server_output, start_mlflow_ui,
                     stop_process)

RUNS = (("SmolLM2-135M-Instruct", "trivia_mini"), ("Gemma-3-270M", "squad_mini"),
        ("SmolLM2-135M-Instruct-8bit", "trivia_mini"))
# Tags of the SmolLM2 run as the run page must show them (family and size from the model registry).
SMOLLM_TAGS = {"family": "SmolLM2", "size_b": "0.135", "dataset": "trivia_mini"}
# A 1x1 PNG.
PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _tags_section(text: str) -> str:
    """The run page's text from its "Tags" heading on (empty without one). Params come before it,
    so a param with a tag's name and value (``dataset``) cannot pass for the tag."""
    found = re.search(r"(?m)^Tags$", text)
    return text[found.end():] if found else ""


def _tag_shown(text: str, key: str, value: str) -> str | None:
    """Where the run page's Tags section shows ``key`` with ``value``, rendered "key: value" (key
    and value possibly on separate lines): the snippet as one line, or None."""
    found = re.search(rf"(?:^|\s)({re.escape(key)}\s*:\s*{re.escape(value)})(?:\s|$)", _tags_section(text))
    return " ".join(found.group(1).split()) if found else None


def _wait_for_text(driver, needles, timeout: float = 60.0, until=None) -> str:
    """The page's visible text once every one of ``needles`` is in it and ``until(text)``, when
    given, is true (fails after ``timeout`` s)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def text_now(d) -> str:
        return d.execute_script("return document.body ? document.body.innerText : ''") or ""

    def shown(d) -> bool:
        text = text_now(d)
        return all(n in text for n in needles) and (until is None or until(text))

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(shown)
    except TimeoutException:
        text = text_now(driver)
        missing = [n for n in needles if n not in text]
        pytest.fail(f"{driver.current_url}: not shown within {timeout:.0f} s: {missing or until.__doc__}\n"
                    f"--- page text ---\n{text[:3000]}")
    return text_now(driver)


def _settled(driver, loaded: dict, needles, until=None) -> dict:
    """The report of a single-page app's page once its data has rendered: the text and images as
    they are when every one of ``needles`` is shown (and ``until(text)``), the console errors from
    loading on."""
    _wait_for_text(driver, needles, until=until)
    now = current_page_report(driver)
    return {**now, "console_errors": loaded["console_errors"] + now["console_errors"]}


def _names_cut(driver, names: list[str], where: str = "[role=row] *") -> dict[str, str]:
    """Whether each run name shows whole in the runs table: "whole", "cut" (its element, or one of
    the few around it, is narrower than its text: an ellipsis) or "missing"."""
    return driver.execute_script("""
        const out = {};
        for (const name of arguments[0]) {
          const els = Array.from(document.querySelectorAll(arguments[1]))
            .filter(e => e.children.length === 0 && (e.innerText || '').trim() === name);
          if (!els.length) { out[name] = 'missing'; continue; }
          const cut = els.some(e => { for (let x = e, i = 0; x && i < 4; x = x.parentElement, i++)
                                        if (x.scrollWidth > x.clientWidth + 1) return true; return false; });
          out[name] = cut ? 'cut' : 'whole';
        }
        return out;""", names, where)


@pytest.mark.slow
def test_mlflow_ui_as_a_researcher_meets_it(tracking, browser, tmp_path, monkeypatch):
    """The MLflow UI over a grid's runs, from the link uqflow prints: the runs table (not MLflow 3's
    GenAI overview) with every cell a row of its own (not folded under the grid's run) whose name
    tells it apart within the name column's width, the Dataset column and filter filled from the
    logged dataset input, the run page's tags, and the generations preview rendered as a table."""
    import mlflow

    from store_fixtures import generations, log_grid_parent, log_run
    from uqflow import tracking as uq_tracking
    from uqflow.report import build_report
    from uqflow.store import aggregate
    from uqflow.experiment import run_name
    from uqflow.models.registry import short_model_name
    from uqflow.config import RunConfig

    monkeypatch.chdir(tmp_path)  # the experiment's artifact root (./mlruns) is made under the test's folder
    grid_id = log_grid_parent()
    run_ids = {run_name(RunConfig(model=m, dataset=d)): log_run(m, d, n=10, seed=i, parent_run_id=grid_id)
               for i, (m, d) in enumerate(RUNS)}
    experiment = mlflow.get_experiment_by_name(uq_tracking.experiment_name())
    [printed] = [ln for ln in uq_tracking.ui_hint(experiment_id=experiment.experiment_id) if ln.startswith("Open: ")]

    proc, base_url = start_mlflow_ui(tracking)
    try:
        link = printed.removeprefix("Open: ").replace("http://127.0.0.1:5000", base_url)
        runs_page = _settled(browser, page_report(browser, link), ["grid:test", *run_ids, "Dataset"])
        text = runs_page["text"]
        assert "No data available" not in text and "Run Name" in text  # the runs table, not the traces overview
        assert "Ask questions about your experiments" not in text  # MLflow's assistant waits to be opened
        # every cell is a row of its own whose name, model first with its quantization, shows whole
        rows = browser.execute_script(
            "return Array.from(document.querySelectorAll('[role=row]')).map(r => r.innerText.replace(/\\n/g, ' '))")
        for name in run_ids:
            assert any(name in row for row in rows), (name, rows)
        assert _names_cut(browser, list(run_ids)) == {name: "whole" for name in run_ids}
        # uqflow's view of the table (the link's shared view state): the AUROCs are columns at once
        header = text.split("Run Name", 1)[1][:600]
        assert "auroc/g_nll" in header and "auroc/rw_g_nll" in header and "accuracy" in header, header
        assert "trivia_mini" in text.split("Run Name", 1)[1] and "squad_mini" in text  # the Dataset column
        browser.find_element("xpath", "//button[contains(., 'Datasets')]").click()  # the Datasets filter
        filter_menu = _wait_for_text(browser, ["trivia_mini", "squad_mini"])
        assert "trivia_mini" in filter_menu

        smollm = run_name(RunConfig(model=RUNS[0][0], dataset=RUNS[0][1]))
        run_url = uq_tracking.ui_page(base_url, experiment.experiment_id, run_ids[smollm])

        def all_tags_shown(text: str) -> bool:
            """all of the tags family, size_b and dataset with their values in the Tags section"""
            return all(_tag_shown(text, k, v) for k, v in SMOLLM_TAGS.items())

        # a run opened from the runs table, as a researcher opens one: MLflow's own link drops the
        # `workflowType` of uqflow's, and the page stays in the "Model training" view (uqflow's UI app,
        # uqflow/mlflow_app.py), not MLflow 3's GenAI one ("Evaluations", Judges, Prompts)
        browser.find_element("xpath", f"//a[normalize-space(.)='{smollm}']").click()
        run_page = _settled(browser, current_page_report(browser), [smollm, "Overview"], until=all_tags_shown)
        assert browser.current_url.split("?")[0].endswith(f"/runs/{run_ids[smollm]}"), browser.current_url
        assert "workflowType" not in browser.current_url  # MLflow's link, not one of uqflow's
        sidebar = run_page["text"].split(smollm, 1)[0]
        assert "Model registry" in sidebar and not {"Evaluation runs", "Judges", "Evaluations"} & set(sidebar.splitlines())
        assert browser.execute_script("return localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'
        browser.save_screenshot(str(tmp_path / "run_page_from_table.png"))
        # its charts open on the AUROCs: MLflow draws one section per metric-name prefix, in name order
        browser.find_element("xpath", "//*[normalize-space(text())='Model metrics']").click()
        charts = _wait_for_text(browser, ["auroc", "g_nll"])
        sections = re.findall(r"(?m)^([a-z_]+)\n\((\d+)\)$", charts)
        assert sections and sections[0][0] == "auroc", charts[:1500]
        first = charts.split(f"auroc\n({sections[0][1]})", 1)[1]
        if len(sections) > 1:
            first = first.split(f"\n{sections[1][0]}\n({sections[1][1]})", 1)[0]
        assert "g_nll" in first.splitlines(), first[:800]  # G-NLL's chart among the first (charts draw as they scroll into view)
        browser.save_screenshot(str(tmp_path / "run_charts.png"))
        keep_screenshots(tmp_path, ["run_page_from_table.png", "run_charts.png"])
        browser.get(run_url)
        run_page = _settled(browser, current_page_report(browser), [smollm], until=all_tags_shown)
        tags_shown = {k: v for k, v in SMOLLM_TAGS.items() if _tag_shown(run_page["text"], k, v)}
        assert tags_shown == SMOLLM_TAGS, f"tags not shown as key/value: {run_page['text'][:3000]}"

        preview_url = run_url.replace("?", "/artifacts/generations_preview.json?")
        preview = _settled(browser, page_report(browser, preview_url), ["generations_preview.json", "question", "g_nll"])
        first = generations(10, 0).iloc[0]  # the SmolLM2 run's first row (seed 0)
        assert "question 0?" in preview["text"] and first["references"][0] in preview["text"]  # rows, not raw JSON
        assert '"columns"' not in preview["text"]
        # the report's analysis run: the study in one table, one click from its page
        url = f"sqlite:///{tmp_path / 'results.db'}"
        aggregate(url=url)
        analysis = build_report(url, tmp_path / "report").analysis_run_id
        table_url = uq_tracking.ui_page(base_url, experiment.experiment_id, analysis).replace(
            "?", "/artifacts/comparison.json?")
        table = _settled(browser, page_report(browser, table_url), ["comparison.json", "AUROC G-NLL", "accuracy"])
        labels = sorted({short_model_name(m) for m, _ in RUNS} | {d for _, d in RUNS})
        for label in labels:  # each run named by its model and dataset, both whole in MLflow's fixed-width columns
            assert label in table["text"].splitlines(), label
        assert _names_cut(browser, labels, "td, td *, [role=cell], [role=cell] *, [role=gridcell], [role=gridcell] *") == {x: "whole" for x in labels}
        browser.save_screenshot(str(tmp_path / "comparison.png"))
        keep_screenshots(tmp_path, ["comparison.png"])
        assert re.search(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", table["text"])  # AUROC [interval], rounded
        assert '"columns"' not in table["text"]  # a table, not raw JSON
        for page in (runs_page, run_page, preview, table):
            assert page["broken_images"] == [], page["title"]
        print(f"\n[browser] runs table rows: {rows}")
    except BaseException:
        print(f"--- mlflow ui output ---\n{server_output(proc)[-5000:]}")
        raise
    finally:
        stop_process(proc)


def test_page_report_sees_broken_images(browser, tmp_path):
    page = tmp_path / "page.html"
    data_uri = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()
    page.write_text(f"""<!doctype html><html><head><title>images</title></head><body>
<p>two images</p>
<img id="ok" src="{data_uri}" alt="ok">
<img id="missing" src="missing.png" alt="missing">
</body></html>""")

    report = page_report(browser, page.as_uri())

    assert report["title"] == "images"
    assert "two images" in report["text"]
    assert report["images"] == 2
    assert report["broken_images"] == [(tmp_path / "missing.png").as_uri()[:80]]


# Per figure <img> of report.html: its natural size, its displayed box, whether it loaded.
_FIGURES_JS = """
return Array.from(document.querySelectorAll('img.figure')).map(img => {
    const r = img.getBoundingClientRect();
    return {id: img.id, complete: img.complete, naturalWidth: img.naturalWidth, width: r.width,
            left: r.left, right: r.right};
});
"""


def test_report_figures_load_and_fit_at_two_widths(tracking, browser, tmp_path):
    """report.html at 1400 and 800 px wide in headless Chromium: every figure loads, none is wider
    than the viewport, the page does not scroll sideways, and each figure is shown 1:1 up to
    FIGURE_DISPLAY_MAX_PX wide, which is what the unit test of figure text sizes assumes
    (tests/test_report.py::test_figure_text_is_legible_at_its_displayed_size)."""
    from store_fixtures import report_of_two_families
    from uqflow.report.build import FIGURE_DISPLAY_MAX_PX

    report = report_of_two_families(tmp_path)
    original = browser.get_window_size()
    try:
        for width in (1400, 800):
            browser.set_window_size(width, 1000)
            seen = page_report(browser, report.html.resolve().as_uri())
            figures = browser.execute_script(_FIGURES_JS)
            inner, client, scroll = browser.execute_script(
                "const d = document.documentElement; return [window.innerWidth, d.clientWidth, d.scrollWidth]")
            browser.save_screenshot(str(tmp_path / f"report_{width}.png"))
            print(f"\n[browser] {width} px: inner {inner}, client {client}, scroll {scroll}; figures "
                  + ", ".join(f"{f['id']} {f['naturalWidth']}->{f['width']:.0f}" for f in figures))
            assert seen["broken_images"] == [] and len(figures) == 11
            assert scroll <= inner and scroll <= client, f"the page scrolls sideways at {width} px"
            for f in figures:
                assert f["complete"] and f["naturalWidth"] > 0, f["id"]
                assert f["left"] >= 0 and f["right"] <= client, f"{f['id']} is wider than the viewport at {width} px"
                shown = min(f["naturalWidth"], FIGURE_DISPLAY_MAX_PX)
                assert abs(f["width"] - shown) <= 1, f"{f['id']} shown {f['width']} px wide, not {shown}"
    finally:
        browser.set_window_size(original["width"], original["height"])
