"""The report's first screen in headless Chromium: at a 1280 x 800 viewport, report.html opens on the
headline figure and the table of findings with their caveats, both whole on screen before any
scrolling. The screenshot is kept in the test's folder, and copied to $UQFLOW_SCREENSHOTS where set."""

from __future__ import annotations

import pytest

from browser import keep_screenshots, page_report, set_viewport

#: the screen a newcomer opens the report on: a laptop's browser window, in CSS pixels
VIEWPORT = (1280, 800)

# The headline figure, the findings table and its first caveat cell: their boxes in the viewport,
# whether the figure loaded, and how far the page is scrolled.
_FIRST_SCREEN_JS = """
const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
                    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
const img = document.querySelector('img#fig-headline');
const table = document.getElementById('findings-summary');
const cell = table ? table.querySelector('td.caveats') : null;
return {scrollY: window.scrollY, img: box(img), loaded: !!img && img.complete && img.naturalWidth > 0,
        naturalWidth: img ? img.naturalWidth : 0, table: box(table), cell: box(cell),
        cellText: cell ? cell.innerText : '', cellLinks: cell ? cell.querySelectorAll('a').length : 0};
"""


@pytest.mark.slow
def test_the_first_screen_holds_the_headline_figure_and_the_findings_with_their_caveats(tracking, browser,
                                                                                          tmp_path):
    from store_fixtures import report_of_two_families

    report = report_of_two_families(tmp_path)
    original = browser.get_window_size()
    try:
        assert set_viewport(browser, *VIEWPORT) == VIEWPORT
        seen = page_report(browser, report.html.resolve().as_uri())
        browser.execute_script("window.scrollTo(0, 0)")
        screen = browser.execute_script(_FIRST_SCREEN_JS)
        shot = tmp_path / "report_first_screen.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.set_window_size(original["width"], original["height"])
    keep_screenshots(tmp_path, [shot.name])
    print(f"\n[browser] first screen at {VIEWPORT}: figure {screen['img']}, table {screen['table']}; screenshot {shot}")

    assert seen["broken_images"] == [] and screen["scrollY"] == 0
    assert screen["loaded"] and screen["naturalWidth"] > 0, "the headline figure did not load"
    assert screen["cell"] is not None and screen["cellText"].strip() and screen["cellLinks"] > 0, \
        "the findings table has no caveat cell"
    width, height = VIEWPORT
    for name in ("img", "table", "cell"):
        b = screen[name]
        assert b["top"] >= 0 and b["bottom"] <= height, f"{name} is not whole on the first screen: {b}"
        assert b["left"] >= 0 and b["right"] <= width, f"{name} runs off the first screen sideways: {b}"
