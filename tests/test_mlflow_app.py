"""uqflow's app for MLflow's UI server (``mlflow ui --app-name uqflow``): MLflow's pages, with the
browser's view switch defaulting to "Model training" (the clicks through it are in test_browser.py)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

from uqflow import mlflow_app


def test_the_app_is_registered_where_mlflow_looks_for_apps():
    [app] = [e for e in entry_points(group="mlflow.app") if e.name == "uqflow"]
    assert app.value == "uqflow.mlflow_app:create_app"


def test_the_defaults_run_first_and_keep_a_stored_choice():
    page = "<!doctype html><html><head><meta charset='utf-8'/><script src='main.js'></script></head></html>"
    html = mlflow_app.index_html(page)
    assert html.index(mlflow_app.DEFAULT_SCRIPT) < html.index("main.js")  # before MLflow's scripts read the switch
    assert html.replace(mlflow_app.DEFAULT_SCRIPT, "") == page
    assert "===null" in mlflow_app.DEFAULT_SCRIPT  # set only where the browser has no value of its own
    assert json.loads(mlflow_app.DEFAULTS[mlflow_app.WORKFLOW_KEY]) == "machine_learning"
    assert mlflow_app.index_html("<html>no head</html>") == "<html>no head</html>"  # another page: left as it is


def test_mlflow_serves_its_index_page_with_the_defaults():
    from mlflow.server import app as flask_app

    original = flask_app.view_functions["serve"]
    try:
        mlflow_app.create_app()
        page = flask_app.test_client().get("/")
        assert page.status_code == 200 and page.mimetype == "text/html"
        html = page.get_data(as_text=True)
        assert html.startswith("<!doctype html>") and mlflow_app.DEFAULT_SCRIPT in html
        assert html.count("<script") > 1  # MLflow's own scripts still there
    finally:
        flask_app.view_functions["serve"] = original
