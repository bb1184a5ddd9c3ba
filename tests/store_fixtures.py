"""MLflow runs shaped exactly like `uqflow run`'s (same tags, params, metrics and generations
columns, metrics computed by the real pipeline from the rows), without running a model: the store
only reads what MLflow recorded, so these tell the truth about aggregation at a fraction of the
cost. `tests/test_experiment.py::test_headline_command_then_aggregate_and_query` aggregates and
queries a run made by a real model. :func:`mlflow_store` points this process at a store of a
test's own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uqflow import tracking
from uqflow.config import RunConfig
from uqflow.models import MODELS
from uqflow.scoring import pipeline


#: what MLflow reads from the environment about where a run goes
MLFLOW_RUN_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@contextlib.contextmanager
def mlflow_store(folder: Path, uri: str | None = None, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """This process (and the processes it starts) logs to ``uri`` (by default a SQLite store in
    ``folder``), in ``folder`` as its working directory, where MLflow puts a store's default
    artifact root (./mlruns); no run or experiment is inherited. ``env``: more variables (a
    server's credentials). Everything is as before on leaving. Yields the URI."""
    import mlflow

    uri = uri or f"sqlite:///{Path(folder) / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for name in MLFLOW_RUN_VARIABLES:
            mp.delenv(name, raising=False)
        for name, value in {"MLFLOW_TRACKING_URI": uri, **(env or {})}.items():
            mp.setenv(name, value)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it
            mlflow.set_tracking_uri(before)


def generations(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 6))
        correct = bool(rng.random() < 0.5)
        lp = -rng.exponential(0.2 if correct else 1.0, size=k)
        answer = " ".join(f"w{j}" for j in range(k))
        rows.append({
            "example_id": f"q{i}", "question": f"question {i}?", "context": None, "prompt": f"Q: question {i}?\nA:",
            "prompt_token_ids": [1, 2, 3], "num_shots": 0, "answer": answer,
            "token_ids": list(range(10, 10 + k)), "tokens": [f" w{j}" for j in range(k)],
            "token_logprobs": lp.tolist(), "token_entropies": rng.random(k).tolist(), "stop_reason": "eos",
            # a right answer's reference is the answer itself, a wrong one's another text: the
            # verdict is what the run's judge (token F1) gives, as aggregation recomputes it
            "dropped_text": "", "references": [answer if correct else f"answer {i}"], "answerable": True,
            "relevance": rng.random(k).tolist(), "correct": correct, "correctness_score": float(correct),
            "judge_reply": "",
        })
    frame = pd.DataFrame(rows)
    frame["correct"] = frame["correct"].astype("boolean")
    return pipeline.add_scores(frame)


def log_run(model: str = "SmolLM2-135M-Instruct", dataset: str = "trivia_mini", n: int = 30, seed: int = 0,
            parent_run_id: str | None = None, settings: Mapping[str, object] | None = None,
            transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> str:
    """Log one finished run the way `uqflow run` does (tags, params, dataset input, metrics, the
    generations and their preview); returns its run id. ``seed`` draws the synthetic answers and is
    the run's seed setting unless ``settings`` (more RunConfig fields, by name) sets another.
    ``transform`` changes the scored table before its metrics are computed and it is logged (extra
    judges' verdicts, say), so the run stays what its rows imply."""
    from uqflow.data import load_dataset
    from uqflow.experiment import _log_dataset, preview, run_name, run_tags

    cfg = RunConfig(**{"model": model, "dataset": dataset, "num_samples": n, "seed": seed, "n_bootstrap": 50,
                       **(settings or {})})
    spec = MODELS.get(model)
    frame = generations(n, seed)
    if transform is not None:
        frame = transform(frame)
    tags = run_tags(cfg, spec)
    if parent_run_id:
        tags[tracking.GRID_RUN_TAG] = parent_run_id
    experiment_id = tracking.get_run(parent_run_id).info.experiment_id if parent_run_id else None
    with tracking.tracked_run(run_name(cfg), tags, experiment_id=experiment_id) as run:
        tracking.log_params(cfg.to_dict())
        ds = load_dataset(dataset)
        _log_dataset(cfg, ds, ds.examples[:n])
        tracking.log_metrics(pipeline.evaluate(frame, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed))
        tracking.log_frame(frame)
        tracking.log_table(preview(frame), "generations_preview.json")
    return run.info.run_id


def log_grid_parent() -> str:
    with tracking.tracked_run("grid:test", {tracking.GRID_TAG: "test"}, active=False) as run:
        pass
    return run.info.run_id


#: two families on two datasets: the study the browser tests open the report of
TWO_FAMILIES = (("SmolLM2-135M-Instruct", "trivia_mini"), ("SmolLM2-135M-Instruct", "squad_mini"),
                ("Gemma-3-270M", "trivia_mini"), ("Gemma-3-270M", "squad_mini"))


def report_of_two_families(folder: Path):
    """:data:`TWO_FAMILIES` logged (40 questions each) to the current tracking store, aggregated into
    a results store in ``folder`` and reported there (not logged to MLflow); the build's result."""
    from uqflow.report import build_report
    from uqflow.store import aggregate

    for i, (model, dataset) in enumerate(TWO_FAMILIES):
        log_run(model, dataset, 40, seed=i)
    url = f"sqlite:///{folder / 'results.db'}"
    aggregate(url=url)
    return build_report(url, folder / "rep", log_to_mlflow=False)
