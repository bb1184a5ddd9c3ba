"""The example outputs in README.md and docs/*.md, re-run against a results store.

Every fenced ``text`` block in those files whose lines start with ``$ uqflow query "..."`` shows a
query and what it printed on the demo's store (``make demo``). This script runs each query again
against ``--db`` and either rewrites the printed output (``--write``) or reports every example
whose output differs (``--check``, exit 1), so the documentation's figures are a fresh demo's.

    python scripts/doc_examples.py --db sqlite:///results.db --check
    python scripts/doc_examples.py --db sqlite:///results.db --write
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```text\n(.*?)```", re.S)


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
    differ = checked = 0
    for path in files():
        text = path.read_text(encoding="utf-8")
        out, last = [], 0
        for start, end, items in examples(text):
            body = ""
            for command, printed in items:
                now = run(command, args.db)
                checked += 1
                if now != printed:
                    differ += 1
                    if args.check:
                        print(f"{path.relative_to(ROOT)}: `{command}` printed otherwise:\n{now}", file=sys.stderr)
                body += f"$ {command}\n{now}"
            out.append(text[last:start] + body)
            last = end
        if args.write:
            path.write_text("".join(out) + text[last:], encoding="utf-8")
    print(f"{checked} examples, {differ} {'differ' if args.check else 'rewritten'}")
    if args.check and differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
