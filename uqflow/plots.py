"""One run's plots (ROC and accuracy-rejection curves of its scores), logged with the run and
overlaid by the report. Each takes data and returns a matplotlib ``Figure``; callers save or log it.

Figures are built with ``matplotlib.figure.Figure`` directly, so no GUI backend or global pyplot
state is involved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from uqflow.models.registry import precision_of, short_model_name
from uqflow.scoring.evaluation import incorrect_and_scores as ranked, rejection_curve
from uqflow.scoring.measures import LABELS, label



def _decided(frame):
    d = frame[frame["correct"].notna()]
    return d, d["correct"].astype(bool).to_numpy()


def roc_figure(frame, scores: Sequence[str], title: str = "") -> Figure:
    """ROC curves of each score for detecting wrong answers (positive class: incorrect)."""
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    d, correct = _decided(frame)
    for name in scores:
        wrong, s = ranked(correct, d[name].to_numpy(dtype=np.float64))  # NaN out, infinities ranked
        if len(set(wrong)) < 2:
            continue
        fpr, tpr, _ = roc_curve(wrong, s)
        auc = np.trapezoid(tpr, fpr)
        ax.plot(fpr, tpr, label=f"{label(name)} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="chance")
    ax.set(xlabel="false positive rate (right answers flagged)", ylabel="true positive rate (wrong answers flagged)",
           title=title or "ROC: flagging wrong answers", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    return fig


def rejection_figure(frame, scores: Sequence[str], title: str = "") -> Figure:
    """Accuracy of the answers kept as the most uncertain ones are rejected, per score, with the
    oracle and random baselines."""
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot()
    d, correct = _decided(frame)
    if correct.size:
        for name in scores:
            cov, acc = rejection_curve(correct, d[name].to_numpy(dtype=np.float64))
            ax.plot(1 - cov, acc, label=label(name))
        cov, acc = rejection_curve(correct, (~correct).astype(float))
        ax.plot(1 - cov, acc, ls="--", c="k", label="oracle")
        ax.axhline(correct.mean(), ls=":", c="grey", label="random")
    ax.set(xlabel="rejection rate", ylabel="accuracy of kept answers", title=title or "Accuracy-rejection",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="small")
    return fig


def comparison_frame(runs):
    """The study at a glance, one row per run: its model (short name, its precision in view) and
    dataset, n, accuracy and each measure's AUROC with its 95% interval ("0.781 [0.702, 0.853]",
    measures in LABELS' order), then its precision, family, size and full model name. MLflow's UI
    shows the table with columns of a fixed width (about 16 characters), so a run is named by two
    short columns rather than one long one, and two runs of one model and dataset (settings apart)
    are told apart by their run ids' first characters. ``runs`` holds dicts with model, family,
    size_b, quantization, dataset, n, accuracy, aurocs ({measure: (auroc, ci_low, ci_high)}) and,
    optionally, run_id. Logged as an MLflow table by the grid's run and the analysis run."""
    import math
    from collections import Counter

    import pandas as pd

    def num(v, fmt):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    runs = sorted(runs, key=lambda r: (str(r["family"]), float(r["size_b"] or 0), str(r["model"]), str(r["dataset"])))
    measured = {m for r in runs for m in r["aurocs"]}
    order = [m for m in LABELS if m in measured] + sorted(measured - set(LABELS))
    shared = Counter((short_model_name(str(r["model"])), str(r["dataset"])) for r in runs)
    rows = []
    for r in runs:
        model = short_model_name(str(r["model"]))
        if shared[(model, str(r["dataset"]))] > 1 and r.get("run_id"):
            model = f"{model} {str(r['run_id'])[:6]}"
        row = {"model": model, "dataset": r["dataset"], "n": num(r["n"], ".0f"), "accuracy": num(r["accuracy"], ".3f")}
        for m in order:
            auroc, lo, hi = r["aurocs"].get(m, (None, None, None))
            text, low = num(auroc, ".3f"), num(lo, ".3f")
            row[f"AUROC {label(m)}"] = f"{text} [{low}, {num(hi, '.3f')}]" if text and low else text
        row.update({"precision": precision_of(str(r["quantization"] or "")), "family": r["family"],
                    "size (B)": num(r["size_b"], "g"), "full model name": r["model"]})
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_row(tags: dict, metrics: dict, run_id: str = "") -> dict:
    """A run's entry for :func:`comparison_frame`, from its MLflow tags and metrics (uqflow's names,
    ``tracking.run_metrics``)."""
    from uqflow.scoring.pipeline import metric

    aurocs = {}
    for key, value in metrics.items():
        m = key.removeprefix("auroc_")
        if key == metric("auroc", m) and metric("ci_low", m) in metrics:  # a measure's, not another AUROC
            aurocs[m] = (value, metrics[metric("ci_low", m)], metrics.get(metric("ci_high", m)))
    size = tags.get("size_b")
    return {"model": tags.get("model", ""), "family": tags.get("family", ""),
            "size_b": float(size) if size not in (None, "") else None, "quantization": tags.get("quantization", ""),
            "dataset": tags.get("dataset", ""), "n": metrics.get("n"), "accuracy": metrics.get("accuracy"),
            "aurocs": aurocs, "run_id": run_id}


#: the MLflow run tag that sets a run's colour in the UI's tables and charts
RUN_COLOUR_TAG = "mlflow.runColor"


def run_colour(model: str, dataset: str) -> str:
    """A run's colour in the MLflow UI (hex): the model picks one of tab10's hues (by its place in
    the model registry, so the registry's first ten models never share one; by a stable hash of
    its name otherwise) and the dataset one of three shades of it (by a hash of its name), so a
    study's runs are told apart in the charts (MLflow's own colours come out near-identical for
    runs made in one go) and a model keeps its hue across datasets."""
    import hashlib

    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    from uqflow.models.registry import MODELS

    def pick(name: str, k: int) -> int:
        return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") % k

    names = MODELS.names()
    r, g, b, _ = colormaps["tab10"](names.index(model) % 10 if model in names else pick(model, 10))
    mix = (0.0, 0.3, 0.55)[pick(dataset, 3)]  # towards white
    return to_hex((r + (1 - r) * mix, g + (1 - g) * mix, b + (1 - b) * mix))
