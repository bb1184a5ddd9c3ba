"""The results store read into pandas, once, for the report and the notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from uqflow.config import NON_RESULT_FIELDS
from uqflow.scoring.measures import NAMES as MEASURE_NAMES
from uqflow.store import SLICE_VIEWS
from uqflow.store.db import connect, db_url, redact, require_schema, store_failure

#: generations columns the report uses (the prompt and token ids stay in the store)
GENERATION_COLUMNS = ("run_id", "example_id", "position", "question", "answer", "reference_answers", "correct", "verdicts",
                      "answerable", "num_tokens", "tokens", "token_logprobs", "relevance", *MEASURE_NAMES)

#: what makes a cell of the study: a quantized variant is a model of its own (its registry name says
#: 8bit or 4bit, and its quantization column too), so one run per model x precision x dataset
CELL = ("model", "quantization", "dataset")
#: settings left out when runs' settings are compared: the cell's own (model, dataset), and what
#: changes none of a run's results (where the model registry was read from, where and how it ran)
UNCOMPARED_SETTINGS = frozenset({"model", "dataset", "model_registry", *NON_RESULT_FIELDS})
#: how the report picks the run it compares in each cell (said in report.html and summary.json)
SELECTION_RULE = (
    "One run per model × dataset is compared (a quantized variant, its name ending in 8bit or 4bit, is a model of its "
    "own). Among a cell's runs the report takes those whose settings the study shares (every setting but the model, "
    "the dataset and where and how a run ran, each at the value most of the study's cells were run with) and of "
    "those the latest; where no run of a cell shares them, its latest run, flagged. The other runs are set aside "
    "and listed, and no figure, table, answer or mean uses them.")


@dataclass
class Study:
    """The runs the study compares, one per cell (model x precision x dataset, :data:`SELECTION_RULE`),
    with their dimensions, scores and generations, and the runs set aside.

    ``runs``: one row per compared run (with ``label``, "model × dataset", unique among them, its
    ``size_class`` within its family, and ``settings_differ``: "" or how its settings differ from the
    study's); ``scores``: one row per compared run and measure, joined to the run's dimensions (the
    view ``v_run_scores``); ``generations``: one row per compared run and example; ``slices``: the
    store's ``v_auroc_by_*`` views computed over the compared runs; ``set_aside``: the store's other
    runs, each with ``reason`` and the ``compared_run_id`` of its cell; ``settings``: the study's
    settings (a run's params, the uncompared ones left out, at the value most cells were run with).
    """

    url: str
    runs: pd.DataFrame
    scores: pd.DataFrame
    generations: pd.DataFrame
    slices: dict[str, pd.DataFrame]  # the slice views over the compared runs, by what they slice: "family", ...
    set_aside: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict[str, str] = field(default_factory=dict)

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
        """The compared runs (one per cell, :data:`SELECTION_RULE`), ordered by family, size,
        model, dataset."""
        return self.runs.sort_values(["family", "size_b", "model", "dataset"], kind="mergesort").reset_index(drop=True)

    def answers(self, run_id: str) -> pd.DataFrame:
        return self.generations[self.generations["run_id"] == run_id].sort_values("position")

    def decided(self, run_id: str) -> tuple[pd.DataFrame, np.ndarray]:
        """A run's answers that its judge decided, and their verdicts as a bool array (True = right)."""
        d = self.answers(run_id)
        d = d[d["correct"].notna()]
        return d, d["correct"].astype(bool).to_numpy()


def stored_tags(value: Any) -> dict[str, str]:
    """A run's tags as the results store holds them (a dict, or JSON text from SQLite); {} where none."""
    import json

    return json.loads(value) if isinstance(value, str) else (value if isinstance(value, dict) else {})


def _params(value: Any) -> dict[str, str]:
    """A run's params as stored (a dict, or JSON text from SQLite), the uncompared ones left out."""
    import json

    if isinstance(value, str):
        value = json.loads(value or "{}")
    return {k: str(v) for k, v in (value or {}).items() if k not in UNCOMPARED_SETTINGS}


def _newest_first(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs, the latest started first (then the latest ended, then by id, so ties are settled alike
    every time)."""
    order = runs.assign(_start=pd.to_datetime(runs["start_time"], errors="coerce"),
                        _end=pd.to_datetime(runs["end_time"], errors="coerce"))
    return order.sort_values(["_start", "_end", "run_id"], ascending=False, na_position="last", kind="mergesort").drop(
        columns=["_start", "_end"])


def study_settings(runs: pd.DataFrame) -> dict[str, str]:
    """The settings the study shares: for each param (the uncompared ones left out), the value that
    more than half of the cells have a run with; where two values tie, the one of more runs, then the
    one of the latest run. A param with no such value (every cell its own seed, say) is not a study
    setting. A run that does not record a param (it predates it) neither votes on it nor differs in it."""
    newest = _newest_first(runs)
    cells = [tuple(c) for c in newest[list(CELL)].itertuples(index=False)]
    holders: dict[str, dict[str, tuple[set, int, int]]] = {}  # param -> value -> (cells, runs, recency)
    for rank, (cell, params) in enumerate(zip(cells, newest["params"].map(_params))):
        for k, v in params.items():
            held, n, recency = holders.setdefault(k, {}).get(v, (set(), 0, -rank))
            holders[k][v] = (held | {cell}, n + 1, recency)
    n_cells = len(set(cells))
    out = {}
    for k, values in holders.items():
        value, (held, _, _) = max(values.items(), key=lambda kv: (len(kv[1][0]), kv[1][1], kv[1][2]))
        if 2 * len(held) > n_cells:
            out[k] = value
    return dict(sorted(out.items()))


def _short(value: str, width: int = 40) -> str:
    """A setting's value as a reason writes it: one line, at most ``width`` characters, "" where empty."""
    text = value.replace("\n", "\\n") or '""'
    return text if len(text) <= width else text[: width - 1] + "…"


def settings_difference(params: Any, settings: dict[str, str]) -> str:
    """How a run's params differ from the study's settings, e.g. "num_samples=50 against 100"; "" where
    they do not."""
    p = _params(params)
    return ", ".join(f"{k}={_short(p[k])} against {_short(v)}" for k, v in settings.items() if k in p and p[k] != v)


def select_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(compared runs, runs set aside, the study's settings) by :data:`SELECTION_RULE`: per cell, the
    latest of the runs that share the study's settings, else the latest run (its ``settings_differ``
    says how it differs). Each run set aside carries its ``reason`` and its cell's ``compared_run_id``."""
    settings = study_settings(runs)
    differ = runs["params"].map(lambda p: settings_difference(p, settings))
    runs = runs.assign(settings_differ=differ)
    chosen, aside = [], []
    for _, cell in _newest_first(runs).groupby(list(CELL), sort=False, dropna=False):
        sharing = cell[cell["settings_differ"] == ""]
        pick = (sharing if len(sharing) else cell).iloc[0]
        chosen.append(pick.run_id)
        for r in cell[cell["run_id"] != pick.run_id].itertuples():
            why = (f"its settings differ from the study's: {r.settings_differ}" if r.settings_differ and len(sharing)
                   else "an earlier run of the cell" + (f" (its settings differ from the study's too: "
                                                        f"{r.settings_differ})" if r.settings_differ else ""))
            aside.append({"run_id": r.run_id, "reason": why, "compared_run_id": pick.run_id})
    selected = runs[runs["run_id"].isin(chosen)].reset_index(drop=True)
    reasons = pd.DataFrame(aside, columns=["run_id", "reason", "compared_run_id"])
    set_aside = runs[runs["run_id"].isin(reasons["run_id"])].merge(reasons, on="run_id")  # in the store's order
    return selected, set_aside.reset_index(drop=True), settings


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """ "model × dataset" per run, the quantization added where two runs would share a label (a
    model run at two precisions under one name), the run id's start after that: no two labels alike."""
    label = runs["model"] + " × " + runs["dataset"]
    twice = label.duplicated(keep=False)
    label[twice] = runs["model"] + " (" + runs["quantization"].astype(str) + ") × " + runs["dataset"]
    twice = label.duplicated(keep=False)
    label[twice] = label + " · " + runs["run_id"].str[:8]
    return label


def _slices(views: dict[str, pd.DataFrame], scores: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The store's ``v_auroc_by_*`` views (keyed as the store keys them) computed over ``scores``, the
    compared runs' rows of ``v_run_scores``: the same columns, each run counted once."""
    stats = ("measure", "n_runs", "n_questions", "mean_auroc", "min_auroc", "max_auroc", "mean_accuracy")
    out = {}
    for name, view in views.items():
        keys = [c for c in view.columns if c not in stats]
        g = scores.groupby([*keys, "measure"], dropna=False)
        out[name] = pd.DataFrame({
            "n_runs": g.size(), "n_questions": g["n"].sum(), "mean_auroc": g["auroc"].mean(),
            "min_auroc": g["auroc"].min(), "max_auroc": g["auroc"].max(), "mean_accuracy": g["accuracy"].mean(),
        }).reset_index()[list(view.columns)]
    return out


def load_study(url: str | None = None) -> Study:
    """Read the store at ``url`` (default: $UQFLOW_RESULTS_DB, else sqlite:///results.db), read-only,
    and pick the run each cell compares (:data:`SELECTION_RULE`; the others in ``set_aside``)."""
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
    for col in ("auroc", "ci_low", "ci_high", "prr", "prr50", "aurc", "ece", "brier", "cost_passes", "cost_tokens",
                "cost_seconds"):
        scores[col] = pd.to_numeric(scores[col], errors="coerce").astype(float)
    for frame in (runs, scores):
        frame["instruct"] = frame["instruct"].astype(bool)
    gens["correct"] = gens["correct"].astype("boolean")
    runs, set_aside, settings = select_runs(runs)
    runs["label"] = run_labels(runs)
    runs = runs.merge(scores[["run_id", "size_class"]].drop_duplicates(), on="run_id", how="left")
    compared = set(runs["run_id"])
    scores = scores[scores["run_id"].isin(compared)].reset_index(drop=True)
    scores["label"] = scores["run_id"].map(runs.set_index("run_id")["label"])
    gens = gens[gens["run_id"].isin(compared)].reset_index(drop=True)
    set_aside = set_aside.assign(label=set_aside["compared_run_id"].map(runs.set_index("run_id")["label"]))
    return Study(redact(url), runs, scores, gens, _slices(slices, scores), set_aside, settings)
