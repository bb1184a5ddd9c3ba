"""Agreement of uqflow's sample-consistency measures with a peer implementation, LM-Polygraph 0.7.0.

Both sides compute each measure from the same stored inputs of a run (its ``generations.parquet``:
the N sampled answers, their token log-probs, token relevance, pairwise similarity and entailment
matrices, the greedy answer's log-probs and its similarity to each sample), and the script prints,
per measure, the largest absolute difference over the rows::

    .venv/bin/python bench/polygraph_agreement.py --run RUN_ID          # MLFLOW_TRACKING_URI (sqlite:///mlflow.db)
    .venv/bin/python bench/polygraph_agreement.py --parquet path/to/generations.parquet
    .venv/bin/python bench/polygraph_agreement.py --synthetic           # random valid inputs, no run needed
    ... --markdown                                                      # the same table in Markdown
    ... --tolerance 1e-6                                                # exit 1 if a difference is larger

uqflow's side is the value the run stored in the measure's column (``sar``, ``degmat``, ``kle``, ...)
where the column is there, else (or with ``--recompute``) the function of
``uqflow/scoring/pairwise.py`` called on the row's inputs; the table's note says which.

LM-Polygraph lives in a virtual environment of its own, ``.polygraph-venv/`` at the repository root
(git-ignored), so that its pins never touch uqflow's venv. The first run creates it with
``python3 -m venv`` and installs ``bench/polygraph_requirements.txt`` into it with
``pip install --no-deps`` (the estimators need numpy, scipy, rouge-score and nltk, not the ~40
packages lm-polygraph declares); a later run reuses it, and reinstalls when that file changed.
The LM-Polygraph side runs in that venv as a small worker (:data:`WORKER`, written to a temp file),
which gets the rows and returns the estimators' values through temp JSON files.

Rows where uqflow's value is NaN (no samples, say) are left out and counted. Exit status: 0 when
every measure agrees within the tolerance (or differs by design: :data:`BY_DESIGN`), 1 when one does
not, 2 when the comparison could not be made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".polygraph-venv"
REQUIREMENTS = Path(__file__).resolve().with_name("polygraph_requirements.txt")
#: in the venv: the requirements it was installed from (their SHA-256), to notice a changed file
INSTALLED_MARKER = VENV / ".bench-requirements.sha256"


@dataclass(frozen=True)
class Measure:
    """One measure compared: uqflow's column and function, and LM-Polygraph's counterpart.

    ``args`` are the row's input fields passed to ``uqflow.scoring.pairwise.<function>`` in order;
    ``estimator`` is ``(module under lm_polygraph/estimators, class, keyword arguments)``, or None
    where LM-Polygraph has no estimator and the worker computes ``formula`` itself from its stats.
    ``needs`` are the input fields the LM-Polygraph side reads (a row lacking one is left out).
    ``matrix``: the measure is a matrix per row; the difference is the largest over its entries."""

    name: str
    function: str
    args: tuple[str, ...]
    estimator: tuple[str, str, dict] | None
    needs: tuple[str, ...]
    formula: str = ""
    matrix: bool = False

    def label(self) -> str:
        """How the table names the LM-Polygraph side."""
        if self.estimator is None:
            return self.formula
        _, cls, kwargs = self.estimator
        return f"{cls}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


_NLI = {"similarity_score": "NLI_score", "affinity": "entail"}
_JACCARD = {"similarity_score": "Jaccard_score"}

MEASURES = (
    Measure("sar", "sar", ("sample_token_logprobs", "sample_relevance", "sample_similarity"),
            ("sar", "SAR", {}), ("sample_token_logprobs", "sample_relevance", "sample_similarity")),
    Measure("sentence_sar", "sentence_sar", ("sample_token_logprobs", "sample_similarity"),
            ("sentence_sar", "SentenceSAR", {}), ("sample_token_logprobs", "sample_similarity")),
    Measure("degmat", "degmat", ("sample_entailment",),
            ("deg_mat", "DegMat", _NLI), ("samples", "sample_entailment")),
    Measure("eigval_laplacian", "eigval_laplacian", ("sample_entailment",),
            ("eig_val_laplacian", "EigValLaplacian", _NLI), ("samples", "sample_entailment")),
    Measure("eccentricity", "eccentricity", ("sample_entailment",),
            ("eccentricity", "Eccentricity", _NLI), ("samples", "sample_entailment")),
    Measure("jaccard_matrix", "jaccard_matrix", ("samples",), None, ("samples",),
            formula="estimators.common._compute_Jaccard_score", matrix=True),
    Measure("degmat_jaccard", "degmat_jaccard", ("samples",),
            ("deg_mat", "DegMat", _JACCARD), ("samples",)),
    Measure("eigval_jaccard", "eigval_jaccard", ("samples",),
            ("eig_val_laplacian", "EigValLaplacian", _JACCARD), ("samples",)),
    Measure("eccentricity_jaccard", "eccentricity_jaccard", ("samples",),
            ("eccentricity", "Eccentricity", _JACCARD), ("samples",)),
    Measure("lexical_similarity", "lexical_similarity", ("samples",),
            ("lexical_similarity", "LexicalSimilarity", {"metric": "rougeL"}), ("samples",)),
    Measure("greedy_dissimilarity", "greedy_dissimilarity", ("greedy_similarity",), None,
            ("greedy_similarity",),
            formula="mean(1 - greedy_sentence_similarity) (no estimator; CocoaMSP's factor)"),
    Measure("cocoa_msp", "cocoa_msp", ("token_logprobs", "greedy_similarity"),
            ("cocoa", "CocoaMSP", {}), ("token_logprobs", "greedy_similarity")),
    Measure("cocoa_ppl", "cocoa_ppl", ("token_logprobs", "greedy_similarity"),
            ("cocoa", "CocoaPPL", {}), ("token_logprobs", "greedy_similarity")),
    Measure("kle", "kernel_language_entropy", ("sample_entailment",),
            ("kernel_language_entropy", "KernelLanguageEntropy", {}), ("sample_entailment",)),
)

#: measures whose values differ from LM-Polygraph's by design: name -> the reason. Their difference
#: is shown but does not fail the check. Filled only with differences observed and explained.
BY_DESIGN: dict[str, str] = {}

#: the row fields the measures read, as stored in generations.parquet
INPUT_FIELDS = ("samples", "token_logprobs", "sample_token_logprobs", "sample_relevance",
                "sample_similarity", "greedy_similarity", "sample_entailment")


# ---------------------------------------------------------------------------------------- worker
#: runs in .polygraph-venv: ``python -I worker.py IN.json OUT.json``. IN: {"rows": [...],
#: "measures": [{"name", "estimator", "needs"}]}; OUT: {"values": {name: [value per row]},
#: "errors": {name: {row: message}}, "versions": {...}}.
WORKER = r'''
import ast, importlib, importlib.machinery, importlib.util, json, os, sys, types, warnings
from importlib import metadata

import numpy as np


def load_lm_polygraph():
    """The installed lm_polygraph package's directory, with its estimator modules importable.

    `from lm_polygraph.estimators import SAR, ...` runs lm_polygraph/__init__.py, which imports the
    model wrappers (torch, transformers, openai, datasets, ...), and estimators/__init__.py, which
    imports every estimator (spacy, sentence-transformers, sklearn, ...). Neither is needed to compute
    the estimators compared here, so this registers the packages lm_polygraph, lm_polygraph.utils
    and lm_polygraph.estimators as empty packages over the installed directories and imports each
    estimator module from its installed file. lm_polygraph/utils/common.py, which estimator.py
    imports for its decorator polygraph_module_init, imports PIL and transformers for other helpers:
    its module is built from the installed file's own source, less those imports and helpers."""
    spec = importlib.util.find_spec("lm_polygraph")  # finds the package without running __init__
    root = spec.submodule_search_locations[0]
    for name, sub in (("lm_polygraph", ""), ("lm_polygraph.utils", "utils"),
                      ("lm_polygraph.estimators", "estimators")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, sub) if sub else root]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = module
    path = os.path.join(root, "utils", "common.py")
    tree = ast.parse(open(path).read(), path)
    keep = [node for node in tree.body
            if (isinstance(node, ast.Import) and all(a.name == "logging" for a in node.names))
            or (isinstance(node, ast.Assign) and ast.unparse(node.value).startswith("logging."))
            or (isinstance(node, ast.FunctionDef) and node.name == "polygraph_module_init")]
    common = types.ModuleType("lm_polygraph.utils.common")
    common.__file__ = path
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), common.__dict__)
    assert callable(getattr(common, "polygraph_module_init", None)), path
    sys.modules["lm_polygraph.utils.common"] = common
    return root


def square(m, n):
    return np.asarray(m, dtype=np.float64).reshape(n, n)


#: LM-Polygraph's statistic name -> how to build its batch value from the bench's rows
STATS = {
    "sample_texts": lambda rows: [list(r["samples"]) for r in rows],
    "sample_log_likelihoods": lambda rows: [
        [np.asarray(lp, dtype=np.float64) for lp in r["sample_token_logprobs"]] for r in rows],
    "sample_log_probs": lambda rows: [
        [float(np.sum(np.asarray(lp, dtype=np.float64))) for lp in r["sample_token_logprobs"]]
        for r in rows],
    # the run stores relevance R_t = 1 - sim(sample, sample without token t); LM-Polygraph takes the sim
    "sample_token_similarity": lambda rows: [
        [1.0 - np.asarray(rel, dtype=np.float64) for rel in r["sample_relevance"]] for r in rows],
    "sample_sentence_similarity": lambda rows: [
        square(r["sample_similarity"], len(r["samples"])) for r in rows],
    "greedy_sentence_similarity": lambda rows: [
        np.asarray(r["greedy_similarity"], dtype=np.float64) for r in rows],
    "greedy_log_likelihoods": lambda rows: [
        np.asarray(r["token_logprobs"], dtype=np.float64) for r in rows],
    "semantic_matrix_entail": lambda rows: np.stack(
        [square(r["sample_entailment"], len(r["samples"])) for r in rows]),
    # KernelLanguageEntropy also declares semantic_matrix_contra, which a run does not store: uqflow's
    # kernel_language_entropy, given no contradiction matrix, takes p(i contradicts j) = 1 - p(i
    # entails j) (no neutral mass), so its graph is W = A + A^T. Passing LM-Polygraph that same
    # matrix makes its W = E + 0.5 (2 - E - C) equal to A + A^T too, so the comparison checks the
    # heat kernel and von Neumann entropy, with the same graph on both sides.
    "semantic_matrix_contra": lambda rows: np.stack(
        [1.0 - square(r["sample_entailment"], len(r["samples"])) for r in rows]),
}


def formula(name, rows, common):
    """The values of a measure LM-Polygraph has no estimator for, from its own statistics."""
    if name == "greedy_dissimilarity":
        return [float(np.mean(1 - g)) for g in STATS["greedy_sentence_similarity"](rows)]
    if name == "jaccard_matrix":
        return [common._compute_Jaccard_score(texts).tolist() for texts in STATS["sample_texts"](rows)]
    raise KeyError(name)


def run(rows, measures):
    common = importlib.import_module("lm_polygraph.estimators.common")
    values, errors = {}, {}
    # rows with the same number of samples form one batch (semantic_matrix_* stack to [rows, N, N])
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault(len(r["samples"]), []).append(i)
    for m in measures:
        out = [float("nan")] * len(rows)
        usable = {i for i, r in enumerate(rows) if all(r.get(f) is not None for f in m["needs"])}
        if m["estimator"] is None:
            compute = lambda batch, m=m: formula(m["name"], batch, common)
        else:
            module, cls, kwargs = m["estimator"]
            estimator = getattr(importlib.import_module("lm_polygraph.estimators." + module), cls)(**kwargs)
            compute = lambda batch, e=estimator: list(e({k: STATS[k](batch) for k in e.stats_dependencies}))
        for members in groups.values():
            members = [i for i in members if i in usable]
            if not members:
                continue
            try:
                results = compute([rows[i] for i in members])
                for i, v in zip(members, results):
                    out[i] = v
            except Exception:  # one row's failure must not hide the others: again, row by row
                for i in members:
                    try:
                        out[i] = compute([rows[i]])[0]
                    except Exception as exc:
                        errors.setdefault(m["name"], {})[i] = f"{type(exc).__name__}: {exc}"
        values[m["name"]] = [v if isinstance(v, list) else float(v) for v in out]
    return values, errors


def main():
    src, dst = sys.argv[1:3]
    job = json.load(open(src))
    root = load_lm_polygraph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty means, 0/0 and the like give NaN, compared as such
        with np.errstate(all="ignore"):
            values, errors = run(job["rows"], job["measures"])
    versions = {p: metadata.version(p) for p in ("lm-polygraph", "numpy", "scipy", "rouge-score", "nltk")}
    json.dump({"values": values, "errors": errors, "versions": versions, "lm_polygraph": root},
              open(dst, "w"))


main()
'''


# ---------------------------------------------------------------------------------------- venv
def ensure_venv() -> Path:
    """``.polygraph-venv/bin/python``, creating the venv and installing the pinned requirements
    (``pip install --no-deps -r bench/polygraph_requirements.txt``) when it is missing or was
    installed from another version of that file. pip's output goes to stderr."""
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and INSTALLED_MARKER.exists() and INSTALLED_MARKER.read_text().strip() == wanted:
        return python
    start = time.monotonic()
    if not python.exists():
        print(f"creating {VENV.relative_to(REPO)}/ ...", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    print(f"installing {REQUIREMENTS.relative_to(REPO)} into it ...", file=sys.stderr)
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                    "-r", str(REQUIREMENTS)], check=True, stdout=sys.stderr)
    INSTALLED_MARKER.write_text(wanted + "\n")
    print(f"{VENV.relative_to(REPO)}/ ready in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return python


def run_worker(python: Path, rows: list[dict]) -> dict:
    """LM-Polygraph's value of every measure on every row, computed in its venv."""
    job = {"rows": [{k: _plain(v) for k, v in r.items()} for r in rows],
           "measures": [{"name": m.name, "estimator": m.estimator, "needs": m.needs} for m in MEASURES]}
    with tempfile.TemporaryDirectory(prefix="polygraph-agreement-") as tmp:
        src, dst, script = (Path(tmp) / n for n in ("in.json", "out.json", "worker.py"))
        src.write_text(json.dumps(job))
        script.write_text(WORKER)
        # -I: isolated (no PYTHONPATH, user site or cwd), so only the venv's packages are seen
        proc = subprocess.run([str(python), "-I", str(script), str(src), str(dst)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the LM-Polygraph worker failed (exit {proc.returncode}):\n{proc.stderr}")
        return json.loads(dst.read_text())


def _plain(value):
    """A row field as JSON-ready lists (numpy arrays and arrays of arrays from parquet)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------- inputs
def _vector(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).reshape(-1)


def _matrix(value, n: int) -> np.ndarray:
    """An N x N matrix stored as a list of N rows (parquet: an array of arrays)."""
    if n == 0:
        return np.zeros((0, 0))
    return np.stack([_vector(r) for r in value]).reshape(n, n)


def row_inputs(record: dict) -> dict:
    """One parquet row's measure inputs as numpy values; a field the row lacks (null) is None."""
    samples = record.get("samples")
    samples = None if samples is None else [str(s) for s in samples]
    n = len(samples) if samples is not None else 0
    out = {"samples": samples}
    for field, convert in (("token_logprobs", _vector),
                           ("sample_token_logprobs", lambda v: [_vector(x) for x in v]),
                           ("sample_relevance", lambda v: [_vector(x) for x in v]),
                           ("sample_similarity", lambda v: _matrix(v, n)),
                           ("greedy_similarity", _vector),
                           ("sample_entailment", lambda v: _matrix(v, n))):
        value = record.get(field)
        out[field] = None if value is None else convert(value)
    if samples is None:  # no samples column: nothing of the samples to compare
        out["samples"] = []
    return out


def read_parquet(path: str):
    """The generations table as a pandas DataFrame."""
    import pandas as pd

    return pd.read_parquet(path)


def read_run(run_id: str):
    """A uqflow run's generations.parquet (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="generations.parquet")
    return read_parquet(path)


WORDS = ("paris", "france", "capital", "the", "is", "city", "of", "london", "river", "seine",
         "big", "old", "a", "it")


def synthetic_frame(rows: int, n: int, seed: int):
    """Random but valid rows: ``n`` samples of 1-6 words from :data:`WORDS` (one token a word;
    some samples repeat another), log-probs < 0, relevance in (0, 1], symmetric similarity in
    [0, 1] with unit diagonal, entailment in [0, 1] with unit diagonal. Row 1 has an empty sample
    (no tokens) and the last row no samples at all (uqflow's measures are NaN there)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    records = []
    for r in range(rows):
        samples = []
        for k in range(n):
            if k and rng.random() < 0.25:
                samples.append(samples[rng.integers(k)])
            else:
                samples.append(" ".join(rng.choice(WORDS, size=rng.integers(1, 7))))
        if r == 1:
            samples[-1] = ""
        lengths = [len(s.split()) for s in samples]
        sim = rng.uniform(0, 1, (n, n))
        sim = (sim + sim.T) / 2
        np.fill_diagonal(sim, 1.0)
        entail = rng.uniform(0, 1, (n, n))
        np.fill_diagonal(entail, 1.0)
        records.append({
            "samples": samples,
            "token_logprobs": list(-rng.exponential(0.7, rng.integers(1, 8))),
            "sample_token_logprobs": [list(-rng.exponential(0.7, L)) for L in lengths],
            "sample_relevance": [list(rng.uniform(0.01, 1.0, L)) for L in lengths],
            "sample_similarity": [list(x) for x in sim],
            "greedy_similarity": list(rng.uniform(0, 1, n)),
            "sample_entailment": [list(x) for x in entail],
        })
    records.append({"samples": [], "token_logprobs": list(-rng.exponential(0.7, 3)),
                    "sample_token_logprobs": [], "sample_relevance": [], "sample_similarity": [],
                    "greedy_similarity": [], "sample_entailment": []})
    return pd.DataFrame(records)


# ---------------------------------------------------------------------------------------- compare
@dataclass
class Result:
    """One line of the table."""

    measure: str
    estimator: str
    compared: int
    largest: float | None  # None: nothing compared
    note: str
    fails: bool  # over the tolerance, or uqflow raised
    broken: bool = False  # not compared at all: uqflow's side could not be computed


def uqflow_values(frame, inputs: list[dict], m: Measure, recompute: bool):
    """uqflow's values of ``m`` per row and where they came from: the stored column, else the
    function of uqflow.scoring.pairwise. Rows whose inputs are missing or whose call raised are
    NaN; the second item counts the latter with the first error."""
    if not m.matrix and m.name in frame.columns and not recompute:
        values = [float("nan") if v is None else float(v) for v in frame[m.name]]
        return values, f"stored column {m.name!r}", (0, "")
    from uqflow.scoring import pairwise

    fn = getattr(pairwise, m.function)
    values, failed, first = [], 0, ""
    for i, row in enumerate(inputs):
        if any(row[a] is None for a in m.args):
            values.append(float("nan"))
            continue
        try:
            v = fn(*(row[a] for a in m.args))
            values.append(np.asarray(v, dtype=np.float64) if m.matrix else float(v))
        except Exception as exc:  # noqa: BLE001 - reported in the table
            failed += 1
            first = first or f"row {i}: {type(exc).__name__}: {exc}"
            values.append(float("nan"))
    return values, f"recomputed with pairwise.{m.function}", (failed, first)


def _difference(a, b, matrix: bool) -> float:
    if matrix:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.size == b.size == 0:
            return 0.0
        if a.shape != b.shape:
            return math.inf
        return float(np.max(np.abs(a - b), initial=0.0))
    return abs(a - b)


def compare(frame, inputs: list[dict], polygraph: dict, tolerance: float, recompute: bool) -> list[Result]:
    """The table: per measure, rows compared and the largest |uqflow - LM-Polygraph|."""
    results = []
    for m in MEASURES:
        missing = [f for f in set(m.needs) | set(m.args) if f not in frame.columns]
        if missing:
            note = f"not compared: no column {', '.join(sorted(missing))}"
            results.append(Result(m.name, m.label(), 0, None, note, False))
            continue
        try:
            ours, source, (failed, first) = uqflow_values(frame, inputs, m, recompute)
        except Exception as exc:  # noqa: BLE001 - pairwise not importable, function missing
            results.append(Result(m.name, m.label(), 0, None, f"not compared: {type(exc).__name__}: {exc}", True, True))
            continue
        theirs = polygraph["values"][m.name]
        errors = polygraph["errors"].get(m.name, {})
        compared, nan_ours, only_ours, largest, first_only = 0, 0, 0, 0.0, ""
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if not m.matrix and not math.isfinite(a):
                nan_ours += 1  # uqflow gives no value (NaN): left out
                continue
            if b is None or (not m.matrix and not math.isfinite(b)):
                only_ours += 1  # uqflow gives a value where LM-Polygraph gives none
                first_only = first_only or (f"row {i}: uqflow {a:.6g}, LM-Polygraph "
                                            + (f"raised {errors[str(i)]}" if str(i) in errors else f"{b}"))
                continue
            compared += 1
            largest = max(largest, _difference(a, b, m.matrix))
        notes = [source]
        if nan_ours:
            notes.append(f"{nan_ours} row(s) NaN in uqflow left out")
        if only_ours:  # uqflow's documented definitions where LM-Polygraph's is undefined (docs/definitions.md)
            notes.append(f"{only_ours} row(s) where LM-Polygraph's value is undefined and uqflow defines one, "
                         f"first {first_only}")
        if failed:
            notes.append(f"uqflow raised on {failed} row(s), {first}")
        # a row LM-Polygraph leaves undefined (0/0 relevance, an underflow to inf, log 1 = 0) where
        # uqflow's definition gives a value is shown, not failed: those definitions are uqflow's on purpose
        fails = largest > tolerance or failed > 0
        if m.name in BY_DESIGN:
            notes.append(f"differs by design: {BY_DESIGN[m.name]}")
            fails = False
        results.append(Result(m.name, m.label(), compared, largest if compared else None, "; ".join(notes), fails))
    return results


def render(results: list[Result], markdown: bool) -> str:
    """The table as aligned text columns, or as a Markdown table."""
    header = ["measure", "LM-Polygraph estimator", "rows compared", "largest |difference|", "note"]
    lines = [[r.measure, r.estimator, str(r.compared), "-" if r.largest is None else f"{r.largest:.3g}",
              r.note + ("  << FAIL" if r.fails and not markdown else "")] for r in results]
    if markdown:
        def cells(row):
            return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
        return "\n".join([cells(header), "|---|---|--:|--:|---|"] + [cells(x) for x in lines])
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(4)]
    def cells(row):
        return " | ".join([c.ljust(w) for c, w in zip(row[:4], widths)] + [row[4]]).rstrip()
    return "\n".join([cells(header), "-+-".join("-" * w for w in widths) + "-+-" + "-" * 4] + [cells(x) for x in lines])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="a uqflow MLflow run (MLFLOW_TRACKING_URI)")
    source.add_argument("--parquet", metavar="PATH", help="a generations.parquet file")
    source.add_argument("--synthetic", action="store_true", help="random valid inputs, no run needed")
    parser.add_argument("--rows", type=int, default=40, help="--synthetic: rows with samples (default 40)")
    parser.add_argument("--samples", type=int, default=5, help="--synthetic: samples per row (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic: random seed (default 0)")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="largest |difference| allowed (default 1e-6)")
    parser.add_argument("--recompute", action="store_true",
                        help="call uqflow.scoring.pairwise even where the run stored the measure")
    parser.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    args = parser.parse_args(argv)

    if args.synthetic:
        frame = synthetic_frame(args.rows, args.samples, args.seed)
        what = f"synthetic inputs ({args.rows} rows of {args.samples} samples + 1 row without, seed {args.seed})"
    elif args.parquet:
        frame, what = read_parquet(args.parquet), args.parquet
    else:
        frame, what = read_run(args.run), f"run {args.run}"
    inputs = [row_inputs({f: rec.get(f) for f in INPUT_FIELDS}) for rec in frame.to_dict("records")]

    try:
        python = ensure_venv()
        start = time.monotonic()
        polygraph = run_worker(python, inputs)
        seconds = time.monotonic() - start
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = compare(frame, inputs, polygraph, args.tolerance, args.recompute)

    v = polygraph["versions"]
    print(f"uqflow vs LM-Polygraph {v['lm-polygraph']} (numpy {v['numpy']}, scipy {v['scipy']}, "
          f"rouge-score {v['rouge-score']}, nltk {v['nltk']}; worker {seconds:.1f} s) on {what}, "
          f"{len(frame)} rows; tolerance {args.tolerance:g}\n")
    print(render(results, args.markdown))
    failed = [r.measure for r in results if r.fails]
    if failed:
        print(f"\nover the tolerance or not compared: {', '.join(failed)}", file=sys.stderr)
        return 2 if any(r.broken for r in results) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
