"""MLflow's own UI server, opening uqflow's runs in MLflow's "Model training" view.

``mlflow ui --app-name uqflow`` (or ``mlflow server --app-name uqflow``) serves MLflow's UI
unchanged but for one default. Since 3.x the UI keeps a per-browser switch between its "GenAI" and
"Model training" views: the page's ``workflowType`` URL parameter, else the browser's
``localStorage`` entry ``mlflow.workflowType_v1``, else "genai". Nothing in the tracking store
(not the experiment's ``mlflow.experimentKind`` tag, not a run's tags or inputs) changes it. uqflow's
links carry ``workflowType=machine_learning``, but the links MLflow draws itself (a run's name in the
runs table, the breadcrumb) drop the parameter, so a fresh browser lands on a run page framed as a
GenAI evaluation (Traces, Judges, Prompts; the breadcrumb "Evaluations").

This app stores "machine_learning" as that switch in a browser that has no choice stored yet, before
MLflow's scripts read it (and keeps MLflow's assistant panel from opening by itself over the runs
table); a choice the user makes with the switch or the panel is kept. It is registered as the
``uqflow`` entry of MLflow's ``mlflow.app`` entry points (pyproject.toml), the hook MLflow offers for
serving its UI through another app (as its ``basic-auth`` app does).
"""

from __future__ import annotations

import json

#: the browser's stored switch as MLflow's UI names it (its ``useLocalStorage`` hook appends the
#: version ``_v1``) and the value of its "Model training" side
WORKFLOW_KEY, WORKFLOW_VALUE = "mlflow.workflowType_v1", "machine_learning"
#: MLflow's assistant panel opens by itself on a browser's first visit and takes a third of a
#: 1280-pixel window from the runs table; marked as already shown, it waits to be opened
ASSISTANT_SHOWN_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
#: what a browser without a stored value of its own gets (values as the UI stores them: JSON)
DEFAULTS = {WORKFLOW_KEY: json.dumps(WORKFLOW_VALUE), ASSISTANT_SHOWN_KEY: json.dumps(True)}
#: run before MLflow's scripts: store each default where the browser stores no value (a browser
#: that refuses storage shows MLflow's own defaults)
DEFAULT_SCRIPT = ("<script>try{var d=%s;for(var k in d){if(localStorage.getItem(k)===null)localStorage.setItem(k,d[k])}}"
                  "catch(e){}</script>" % json.dumps(DEFAULTS, sort_keys=True))


def index_html(html: str) -> str:
    """MLflow's index page with :data:`DEFAULT_SCRIPT` as the first thing its ``<head>`` runs."""
    at = html.find("<head>")
    if at < 0:  # not the page this was written for: served as MLflow ships it
        return html
    at += len("<head>")
    return html[:at] + DEFAULT_SCRIPT + html[at:]


def create_app():
    """MLflow's server app (FastAPI over its Flask app, as ``mlflow server`` runs it under uvicorn)
    with its index page served through :func:`index_html`."""
    from pathlib import Path

    from flask import Response
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    serve = flask_app.view_functions["serve"]  # MLflow's index route: every UI page loads through it
    index = Path(flask_app.static_folder) / "index.html"

    def serve_index():
        if not index.exists():  # a source install without the built UI: MLflow's own explanation
            return serve()
        return Response(index_html(index.read_text(encoding="utf-8")), mimetype="text/html")

    flask_app.view_functions["serve"] = serve_index
    return create_fastapi_app(flask_app)
