"""`uqflow grid FILE --dry-run` on a large grid: the time per cell at 100 cells and at 10,000.

    python bench/grid_dry_run.py --models 100 --datasets 100

writes, in a temporary folder, a model registry of ``--models`` hub entries and ``--datasets``
copies of the bundled trivia_mini file (each a local dataset of its own), then times the dry run
of a grid of ``--models`` x ``--datasets`` cells and of a 10 x 10 grid of the same entries, each
in a fresh process against an empty SQLite tracking store, and prints the wall time per cell of
each and their ratio: a dry run whose cost per cell stays flat as the grid grows checks each
model, dataset and registry file once, not once per cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def write_grid(folder: Path, n_models: int, n_datasets: int, name: str) -> Path:
    source = ROOT / "uqflow" / "data" / "files" / "trivia_mini.validation.jsonl"
    registry = folder / "models.yaml"
    if not registry.exists():
        registry.write_text("models:\n" + "".join(
            f"  - {{name: bench-{i}, source: bench-org/model-{i}, family: Bench, size_b: {1 + i % 7}, "
            f"instruct: false}}\n" for i in range(max(n_models, 100))), encoding="utf-8")
    datasets = []
    for j in range(n_datasets):
        path = folder / f"questions-{j}.jsonl"
        if not path.exists():
            shutil.copy(source, path)
        datasets.append(str(path))
    grid = folder / f"{name}.yaml"
    grid.write_text("models: [" + ", ".join(f"bench-{i}" for i in range(n_models)) + "]\n"
                    "datasets: [" + ", ".join(datasets) + "]\n"
                    f"settings: {{num_samples: 20, model_registry: {registry}}}\n", encoding="utf-8")
    return grid


def dry_run(grid: Path, folder: Path) -> float:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    out = subprocess.run([str(BIN / "uqflow"), "grid", str(grid), "--dry-run"], env=env, cwd=folder,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"dry run failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--datasets", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="uqflow-bench-grid-") as tmp:
        folder = Path(tmp)
        small = write_grid(folder, 10, 10, "small")
        large = write_grid(folder, args.models, args.datasets, "large")
        dry_run(small, folder)  # the tracking store is created once, outside the timings
        t_small, t_large = dry_run(small, folder), dry_run(large, folder)
    n_large = args.models * args.datasets
    per_small, per_large = t_small / 100 * 1000, t_large / n_large * 1000
    print(f"dry run of 100 cells:    {t_small:7.1f} s  ({per_small:6.2f} ms a cell)")
    print(f"dry run of {n_large:,} cells: {t_large:7.1f} s  ({per_large:6.2f} ms a cell)")
    print(f"per-cell cost, large over small grid: {per_large / per_small:.2f}x "
          "(1.0: each cell costs the same however large the grid; the fixed start-up is spread over more cells)")


if __name__ == "__main__":
    main()
