"""The one SQLite cache of model replies: an LLM judge's verdicts and an LLM's entailment labels,
each kind in a table of its own in one file (``judgments.sqlite`` under the uqflow cache), keyed by
a hash of everything the reply answers (the asking model, the prompt's version, the texts), so a
run whose replies are all cached loads no model."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

TABLES = ("judgments", "entailments")  # the kinds of reply kept


class ReplyCache:
    """Replies of one kind (``table``) in the SQLite file at ``path``: (key, asking model, reply)."""

    def __init__(self, path: Path, table: str):
        if table not in TABLES or not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(f"unknown reply table {table!r}; known: {', '.join(TABLES)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.table = table
        self.db = sqlite3.connect(str(path), timeout=30)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, judge TEXT, reply TEXT)")

    @staticmethod
    def key(*parts) -> str:
        """The key of a reply: a hash of its parts (model, prompt version, texts), in order."""
        return hashlib.sha256(json.dumps([list(p) if isinstance(p, tuple) else p for p in parts]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self.db.execute(f"SELECT reply FROM {self.table} WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put_many(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Store (key, asking model, reply) rows in one transaction."""
        with self.db:
            self.db.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES (?, ?, ?)", rows)
