"""The example outputs in README.md and docs/*.md, re-run against a results store.

Every fenced ``text`` block in those files whose lines start with ``$ uqflow query "..."`` shows a
query and what it printed on the demo's store (``make demo``). This script runs each query again
against ``--db`` and either rewrites the printed output (``--write``) or reports every example
whose output differs (``--check``, exit 1), so the documentation's figures are a fresh demo's.

Some figures hold for the machine that made them only: those of runs that
``uqflow.machine.machine_dependent`` names (bitsandbytes' 8-bit and 4-bit models on a CPU, whose
int8 kernels answer differently with the CPU's instruction set). ``--check`` marks a table row as
machine-dependent when one of its cells names such a run (its quantization, model or run id),
compares its decimal figures within ``TOLERANCE`` and its other cells exactly, and prints each such
row with ``~``; every other line must be what the documentation shows, cell by cell.

    python scripts/doc_examples.py --db sqlite:///results.db --check
    python scripts/doc_examples.py --db sqlite:///results.db --write
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```text\n(.*?)```", re.S)

#: How far a machine-dependent decimal figure (an AUROC or an accuracy, both in [0, 1]) may lie from
#: the documented one. The argument, from the demo's 8-bit SmolLM2 (100 questions a run):
#: - across machines, trivia_mini's G-NLL AUROC was 0.918, 0.897 and 0.878 and squad_mini's 0.892,
#:   0.888 and 0.884 on three machines, the accuracy 0.17 and 0.20 (trivia_mini), 0.19 and 0.24
#:   (squad_mini) on two, while every full-precision row agreed to three decimals: up to 0.040
#:   apart for an AUROC, 0.05 for an accuracy;
#: - on one machine, over three batch compositions (grids/quantization_spread.yaml, the run's
#:   ``batch_spread/*`` metrics), trivia_mini's AUROC ranged 0.889-0.903 (sd 0.007) and its accuracy
#:   0.17-0.20, with 55% of the answers changed. Another CPU perturbs the int8 arithmetic as another
#:   batch does, and moves the figures by the same order: a few hundredths, the odd answer or five.
#: 0.08 is 1.6 times the widest difference seen between machines, and about the half-width of such
#: a run's own 95% interval (AUROC 0.82-0.96 around 0.897; accuracy ±0.08 at 0.2 of 100): what it
#: lets through, the run's sampling could not tell apart anyway, while a broken 8-bit path (answers
#: all wrong, AUROC near 0.5) lies far outside it.
TOLERANCE = 0.08
TOLERANCE_NOTE = ("the demo's 8-bit AUROC was 0.878-0.918 on three machines and 0.889-0.903 over three batch "
                  "compositions on one, its accuracy up to 0.05 apart")
#: the box-drawing characters of uqflow query's tables: the cell separators and the rules
SEPARATORS = re.compile(r"[│┃]")
RULE = re.compile(r"^[━─┏┓┗┛┡┩└┘┳┻╇┴┬┼╋]+$")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
DECIMAL = re.compile(r"^-?\d*\.\d+(e-?\d+)?$")


def files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def run(command: str, db: str) -> str:
    """What ``command`` (a ``uqflow query ...`` line) prints against ``db``, at a fixed width."""
    args = shlex.split(command)
    env = {**os.environ, "UQFLOW_RESULTS_DB": db, "COLUMNS": "120", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-m", "uqflow", *args[1:]], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode:
        raise SystemExit(f"{command}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


@dataclass
class Comparison:
    """An example's output against the documented one: why they differ (nothing: they match within
    the rules) and the machine-dependent rows, as printed now."""

    problems: list[str] = field(default_factory=list)
    dependent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def cells(line: str) -> list[str] | None:
    """A table row's cells, stripped (their padding follows the widest cell of the column), or None
    for a line that is not a row."""
    if not SEPARATORS.search(line):
        return None
    return [c.strip() for c in SEPARATORS.split(line)[1:-1]]


def names_a_dependent_run(row: list[str], markers: Collection[str]) -> bool:
    """Whether a cell of ``row`` is, or holds as a word, one of ``markers`` (what names a
    machine-dependent run: its quantization, model, short model name, run id)."""
    return any(c in markers or any(w in markers for w in c.split()) for c in row)


def compare(printed: str, now: str, markers: Collection[str], tolerance: float = TOLERANCE) -> Comparison:
    """``now`` (what a query prints) against ``printed`` (what the documentation shows). A table row
    that names a machine-dependent run (``markers``) may differ in its decimal figures by up to
    ``tolerance``; its other cells, every other row (cell by cell) and every other line must be the
    same. A rule line may differ in length only (a wider figure widens its column)."""
    out = Comparison()
    was, got = printed.splitlines(), now.splitlines()
    if len(was) != len(got):
        out.problems.append(f"{len(got)} lines where the documentation shows {len(was)}")
        return out
    for a, b in zip(was, got):
        ra, rb = cells(a), cells(b)
        if ra is None or rb is None:
            same = _rule(a) == _rule(b) if RULE.match(a) else a == b
            if not same:
                out.problems.append(f"line {b!r} where the documentation shows {a!r}")
            continue
        if not (names_a_dependent_run(ra, markers) or names_a_dependent_run(rb, markers)):
            if ra != rb:
                out.problems.append(f"row {' | '.join(rb)} where the documentation shows {' | '.join(ra)}")
            continue
        problem, moved = _dependent_row(ra, rb, tolerance)
        if problem:
            out.problems.append(f"machine-dependent row {' | '.join(rb)} where the documentation shows "
                                f"{' | '.join(ra)}: {problem}")
        else:
            out.dependent.append(" | ".join(rb) + (f"  ({', '.join(moved)})" if moved else "  (as documented)"))
    return out


def _rule(line: str) -> str:
    """A table's rule line with each run of one stroke as one: its shape, whatever the widths."""
    return re.sub(r"([━─])\1+", r"\1", line)


def _dependent_row(was: list[str], now: list[str], tolerance: float) -> tuple[str | None, list[str]]:
    """Why a machine-dependent row ``now`` does not match ``was`` (None: it does), and its figures
    that moved within ``tolerance`` ("0.905 -> 0.881")."""
    if len(was) != len(now):
        return f"{len(now)} cells where the documentation shows {len(was)}", []
    moved = []
    for x, y in zip(was, now):
        if x == y:
            continue
        if not (DECIMAL.match(x) and DECIMAL.match(y)):
            return f"{x} -> {y} is not a decimal figure, so it must be the same", []
        if abs(float(x) - float(y)) > tolerance + 1e-9:
            return f"{x} -> {y} lies beyond ±{tolerance}", []
        moved.append(f"{x} -> {y}")
    return None, moved


def dependent_markers(db: str) -> set[str]:
    """What names a machine-dependent run of the store ``db`` in a query's output: each such run's
    quantization, model, short model name and run id (uqflow.machine.machine_dependent on its
    tags)."""
    from uqflow.machine import machine_dependent
    from uqflow.models.registry import short_model_name

    rows = json.loads(run('uqflow query --format json "SELECT run_id, model, quantization, tags FROM runs"', db)
                      or "[]")
    markers: set[str] = set()
    for r in rows:
        tags = json.loads(r["tags"]) if isinstance(r["tags"], str) else (r["tags"] or {})
        if machine_dependent({"quantization": r["quantization"], **tags}):
            markers |= {r["run_id"], r["model"], short_model_name(r["model"]), r["quantization"]}
    return markers


def examples(text: str):
    """(block start, block end, [(command, printed)]) for each block of query examples."""
    for m in BLOCK.finditer(text):
        body = m.group(1)
        if not body.startswith("$ uqflow query "):
            continue
        parts = re.split(r"(?m)^\$ ", body)[1:]
        yield m.start(1), m.end(1), [(p.split("\n", 1)[0], p.split("\n", 1)[1] if "\n" in p else "") for p in parts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="results store URL (a demo's: sqlite:///results.db)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = ap.parse_args()
    differ = checked = dependent = 0
    markers = dependent_markers(args.db) if args.check else set()
    for path in files():
        text = path.read_text(encoding="utf-8")
        out, last = [], 0
        for start, end, items in examples(text):
            body = ""
            for command, printed in items:
                now = run(command, args.db)
                checked += 1
                if args.write:
                    differ += now != printed
                else:
                    result = compare(printed, now, markers)
                    where = f"{path.relative_to(ROOT)}: `{command}`"
                    if not result.ok:
                        differ += 1
                        print(f"{where} printed otherwise:\n" + "".join(f"  {p}\n" for p in result.problems) + now,
                              file=sys.stderr)
                    elif result.dependent:
                        dependent += 1
                        print(f"{where}: machine-dependent rows, within ±{TOLERANCE}:\n"
                              + "".join(f"  ~ {r}\n" for r in result.dependent), end="")
                body += f"$ {command}\n{now}"
            out.append(text[last:start] + body)
            last = end
        if args.write:
            path.write_text("".join(out) + text[last:], encoding="utf-8")
    if args.write:
        print(f"{checked} examples, {differ} rewritten")
        return
    named = ", ".join(sorted(m for m in markers if not RUN_ID.match(m))) or "none in this store"
    print(f"{checked} examples, {differ} differ; {dependent} hold machine-dependent rows (bitsandbytes on a CPU: "
          f"{named}), compared within ±{TOLERANCE} ({TOLERANCE_NOTE}), every other row exactly")
    if differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
