import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh MLflow tracking store (SQLite) for one test; its URI is returned."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # mlflow.set_experiment exports it
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def smollm():
    from uqflow.models import MODELS, load_model

    return load_model(MODELS.get("SmolLM2-135M-Instruct"), "cpu")


@pytest.fixture(scope="session")
def gemma():
    from uqflow.models import MODELS, load_model

    return load_model(MODELS.get("Gemma-3-270M"), "cpu")


@pytest.fixture
def venv_env():
    """Environment for subprocesses: this interpreter's bin folder first on PATH."""
    env = dict(os.environ)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env
