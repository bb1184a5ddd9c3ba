"""The results store read into pandas, once, for the report and the notebook."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from uqflow.scoring.measures import NAMES as MEASURE_NAMES
from uqflow.store import SLICE_VIEWS
from uqflow.store.db import connect, db_url, redact, require_schema, store_failure

#: generations columns the report uses (the prompt and token ids stay in the store)
GENERATION_COLUMNS = ("run_id", "example_id", "position", "question", "answer", "reference_answers", "correct", "verdicts",
                      "answerable", "num_tokens", "tokens", "token_logprobs", "relevance", *MEASURE_NAMES)


@dataclass
class Study:
    """Every run in the store with its dimensions, scores and generations.

    ``runs``: one row per run (with ``label`` = "model x dataset" and ``size_class`` within its
    family); ``scores``: one row per run and measure, joined to the run's dimensions (the view
    ``v_run_scores``); ``generations``: one row per run and example; ``slices``: the store's
    ``v_auroc_by_*`` views as they are. Where a model x dataset was run more than once, the later
    run comes last in ``runs``, which the comparisons take.
    """

    url: str
    runs: pd.DataFrame
    scores: pd.DataFrame
    generations: pd.DataFrame
    slices: dict[str, pd.DataFrame]  # the store's slice views, by what they slice: "family", "size", ...

    @property
    def families(self) -> list[str]:
        return sorted(self.runs["family"].unique())

    @property
    def datasets(self) -> list[str]:
        return sorted(self.runs["dataset"].unique())

    @property
    def measures(self) -> tuple[str, ...]:
        """The measures some run in the store has, in the report's order."""
        have = set(self.scores["measure"])
        return tuple(m for m in MEASURE_NAMES if m in have) + tuple(sorted(have - set(MEASURE_NAMES)))

    def measure(self, name: str) -> pd.DataFrame:
        """Per-run scores of one measure, with the run's dimensions, ordered by family, size, dataset."""
        s = self.scores[self.scores["measure"] == name]
        return s.sort_values(["family", "size_b", "model", "dataset"]).reset_index(drop=True)

    def latest(self) -> pd.DataFrame:
        """One run per model × dataset: where one was run more than once, the later run (as the
        comparisons take), ordered by family, size, model, dataset."""
        return self.runs.drop_duplicates("label", keep="last").sort_values(
            ["family", "size_b", "model", "dataset"], kind="mergesort").reset_index(drop=True)

    def answers(self, run_id: str) -> pd.DataFrame:
        return self.generations[self.generations["run_id"] == run_id].sort_values("position")

    def decided(self, run_id: str) -> tuple[pd.DataFrame, np.ndarray]:
        """A run's answers that its judge decided, and their verdicts as a bool array (True = right)."""
        d = self.answers(run_id)
        d = d[d["correct"].notna()]
        return d, d["correct"].astype(bool).to_numpy()


def load_study(url: str | None = None) -> Study:
    """Read the store at ``url`` (default: $UQFLOW_RESULTS_DB, else sqlite:///results.db), read-only."""
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from uqflow.errors import StoreError

    url = db_url(url)
    engine = connect(url, readonly=True)
    try:
        require_schema(engine, url)
        with engine.connect() as conn:
            runs = pd.read_sql("SELECT * FROM runs ORDER BY family, size_b, model, dataset, end_time", conn)
            scores = pd.read_sql("SELECT * FROM v_run_scores", conn)
            # what each measure cost beyond the greedy pass, per question (the view predates it)
            costs = pd.read_sql("SELECT run_id, measure, cost_passes, cost_tokens, cost_seconds FROM scores", conn)
            gens = pd.read_sql(f"SELECT {', '.join(GENERATION_COLUMNS)} FROM generations", conn)
            slices = {view.removeprefix("v_auroc_by_"): pd.read_sql(f"SELECT * FROM {view}", conn)
                      for view in SLICE_VIEWS}
    except SQLAlchemyError as e:  # a lock held too long, a damaged file
        raise StoreError(store_failure("read", url, e)) from None
    finally:
        engine.dispose()
    if runs.empty:
        raise StoreError(f"the results store {redact(url)} holds no runs; run `uqflow aggregate` first")
    # JSON columns come back as text from SQLite
    for col in ("tokens", "token_logprobs", "relevance", "reference_answers", "verdicts"):
        gens[col] = gens[col].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    # a numeric column that is NULL in every row comes back as objects (None): as floats, NaN is undefined
    scores = scores.merge(costs, on=["run_id", "measure"], how="left")
    for col in ("auroc", "ci_low", "ci_high", "aurc", "ece", "brier", "cost_passes", "cost_tokens", "cost_seconds"):
        scores[col] = pd.to_numeric(scores[col], errors="coerce").astype(float)
    for frame in (runs, scores):
        frame["instruct"] = frame["instruct"].astype(bool)
    gens["correct"] = gens["correct"].astype("boolean")
    runs["label"] = runs["model"] + " × " + runs["dataset"]
    runs = runs.merge(scores[["run_id", "size_class"]].drop_duplicates(), on="run_id", how="left")
    scores["label"] = scores["model"] + " × " + scores["dataset"]
    return Study(redact(url), runs, scores, gens, slices)
