"""Dataset registry: bundled mini datasets, the real hub datasets, and local files.

A dataset resolves to a :class:`LoadedDataset`: the evaluated examples and a disjoint pool that
few-shot examples are drawn from.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from uqflow.data.examples import SCHEMAS, Example, detect_schema
from uqflow.errors import DatasetError, UnknownDataset, clip, short
from uqflow.registry import Registry


@dataclass(frozen=True)
class LoadedDataset:
    """Examples to evaluate plus a disjoint few-shot pool, with a fingerprint of both."""

    name: str
    examples: list[Example]
    few_shot_pool: list[Example]
    has_context: bool
    #: where the evaluated split came from, for MLflow's dataset input: {"hub_id", "config", "split"}
    #: for a hub dataset, {"path"} for a file
    origin: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the ids, questions and references of every example, pool included (computed
        once: the examples of a loaded dataset do not change)."""
        h = hashlib.sha256()
        for ex in [*self.examples, *self.few_shot_pool]:
            h.update(json.dumps([ex.id, ex.question, ex.context, list(ex.references)]).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetSpec:
    """How to get one dataset: where from, which split is evaluated, what the pool is."""

    name: str
    source: str  # shown in `uqflow datasets`
    schema: str  # key of examples.SCHEMAS
    eval_split: str
    pool_split: str | None  # None: hold out part of the evaluated split as the pool
    loader: Callable[[str], Iterable[Mapping[str, Any]]]  # split -> records
    has_context: bool = False
    bundled: bool = False
    hub_id: str | None = None  # a hub dataset's repository and configuration
    hub_config: str | None = None

    def load(self) -> LoadedDataset:
        examples = self._adapted(self.eval_split)
        if self.pool_split is None:
            examples, pool = hold_out_pool(examples)
        else:
            pool = self._adapted(self.pool_split)
        if not examples:
            raise DatasetError(f"dataset {self.name!r} has no examples in split {self.eval_split!r}")
        return LoadedDataset(self.name, examples, pool, self.has_context, self._origin())

    def _origin(self) -> dict[str, Any]:
        if self.hub_id:
            return {"hub_id": self.hub_id, "config": self.hub_config, "split": self.eval_split}
        if self.bundled:
            return {"path": str(_bundled_file(self.name, self.eval_split))}
        path = os.environ.get("UQFLOW_BIOASQ_FILE") if self.name == "bioasq" else None
        return {"path": path} if path else {}

    def _adapted(self, split: str) -> list[Example]:
        """The split's records as examples; a record that does not fit the schema is a DatasetError
        naming the dataset, split, record and field."""
        adapt = SCHEMAS[self.schema][0]
        out = []
        for i, rec in enumerate(self.loader(split), 1):
            where = f"dataset {self.name!r} ({self.source}), split {split!r}, record {i}"
            try:
                out.append(adapt(rec))
            except KeyError as e:
                raise DatasetError(f"{where}: missing field {e.args[0]!r} ({self.schema} schema)") from None
            except (TypeError, ValueError, AttributeError) as e:
                raise DatasetError(f"{where}: malformed record ({self.schema} schema): {e}") from None
        return out


DATASETS: Registry[DatasetSpec] = Registry("dataset", UnknownDataset)

#: size of the few-shot pool held out of a dataset that has no separate pool split
HELD_OUT_POOL = 20


def hold_out_pool(examples: list[Example], k: int = HELD_OUT_POOL) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (evaluated, pool) deterministically: the pool is the ``k`` examples
    with the smallest hash of their id, so it does not depend on file order."""
    k = min(k, max(len(examples) // 5, 0))
    ranked = sorted(examples, key=lambda ex: hashlib.sha256(ex.id.encode()).hexdigest())
    pool_ids = {ex.id for ex in ranked[:k]}
    return [ex for ex in examples if ex.id not in pool_ids], [ex for ex in examples if ex.id in pool_ids]


# ---------------------------------------------------------------- local files

#: the local dataset file types, by suffix (JSON Lines, a JSON list, Parquet)
FILE_TYPES = (".jsonl", ".json", ".parquet")

#: levels of objects and lists a record may nest (the schemas need 4: BioASQ's lists of synonyms)
MAX_RECORD_DEPTH = 20

_TOO_DEEP = (f"nested too deeply (more than {MAX_RECORD_DEPTH} levels of objects and lists); a record is an object "
             "of text fields and lists of answers, so check that this is the file you meant")


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests objects and lists more than MAX_RECORD_DEPTH levels (iteratively, so
    any depth is measured without recursion)."""
    stack = [(value, 1)]
    while stack:
        cur, depth = stack.pop()
        if depth > MAX_RECORD_DEPTH:
            return True
        children = cur.values() if isinstance(cur, dict) else cur
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _deep_line(text: str, limit: int) -> int:
    """The line on which brackets outside JSON strings first nest more than ``limit`` deep (1 if
    they never do): where a JSON file too deep for the parser goes wrong."""
    depth, line = 0, 1
    for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"|[\[{]|[\]}]|\n', text):
        tok = m.group()
        if tok == "\n":
            line += 1
        elif tok in "[{":
            depth += 1
            if depth > limit:
                return line
        elif tok in "]}":
            depth -= 1
    return 1


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs from a JSON Lines, JSON (list or BioASQ ``questions``) or
    Parquet file; every problem is reported with the file and line (for a JSON list or a Parquet
    file, the record's number)."""
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.is_dir():
        raise DatasetError(f"dataset path {path} is a directory; give a .jsonl, .json or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DatasetError(f"dataset file {path}: unsupported file type {suffix or '(none)'!r}; "
                           "give a .jsonl, .json or .parquet file")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except RecursionError:
            raise DatasetError(f"{path}: {_TOO_DEEP}") from None
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DatasetError(f"{path}: not a readable Parquet file ({e})") from None
        return _checked_records(path, [(i + 1, r) for i, r in enumerate(rows)])
    raw = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # a BOM (Windows editors) is allowed
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: bom + e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 (byte {bom + e.start}); save the file as UTF-8") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        except RecursionError:  # the parser's own limit, far past any record's depth
            raise DatasetError(f"{path}:{_deep_line(text, MAX_RECORD_DEPTH + 2)}: {_TOO_DEEP}") from None
        if isinstance(data, dict) and isinstance(data.get("questions"), list):  # BioASQ layout
            data = data["questions"]
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON list of records (or BioASQ's {{'questions': [...]}})")
        return _checked_records(path, [(i + 1, r) for i, r in enumerate(data)])
    out = []
    # lines end at "\n" only: str.splitlines would also split at U+2028, U+2029 and U+0085, which
    # JSON allows unescaped inside a string
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DatasetError(f"{path}:{lineno}: {_TOO_DEEP}") from None
        _check_record(path, lineno, rec)
        out.append((lineno, rec))
    return out


def _check_record(path: Path, lineno: int, rec: Any) -> None:
    """A record must be an object nested at most MAX_RECORD_DEPTH levels."""
    if not isinstance(rec, dict):
        raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    if _too_deep(rec):
        raise DatasetError(f"{path}:{lineno}: {_TOO_DEEP}")


def _checked_records(path: Path, numbered: list[tuple[int, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``numbered``, each record checked by :func:`_check_record`."""
    for lineno, rec in numbered:
        _check_record(path, lineno, rec)
    return numbered


def adapt_records(path: Path, numbered: list[tuple[int, dict[str, Any]]], schema: str | None = None) -> list[Example]:
    """Adapt numbered records, detecting the schema from the first record when not given."""
    if not numbered:
        raise DatasetError(f"dataset file {path} holds no records")
    if schema is None:
        schema = detect_schema(numbered[0][1])
        if schema is None:
            fields = clip(", ".join(sorted(map(str, numbered[0][1]))) or "none", 200)
            raise DatasetError(
                f"{path}:{numbered[0][0]}: cannot tell the schema from the fields ({fields}); expected one of: "
                + "; ".join(f"{n} ({', '.join(k)})" for n, (_, k) in SCHEMAS.items())
            )
    adapt = SCHEMAS[schema][0]
    examples, seen = [], set()
    for lineno, rec in numbered:
        try:
            ex = adapt(rec)
        except KeyError as e:
            raise DatasetError(f"{path}:{lineno}: missing field {e.args[0]!r} ({schema} schema)") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise DatasetError(f"{path}:{lineno}: malformed record ({schema} schema): {e}") from None
        if not ex.question.strip():
            raise DatasetError(f"{path}:{lineno}: empty question")
        if ex.id in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate id {short(ex.id)}")
        seen.add(ex.id)
        examples.append(ex)
    return examples


def load_local(path: str | os.PathLike) -> LoadedDataset:
    """A local JSON Lines / JSON / Parquet file in any known schema; the pool is held out of it."""
    p = Path(path).expanduser()
    examples = adapt_records(p, read_records(p))
    evaluated, pool = hold_out_pool(examples)
    has_context = any(ex.context for ex in examples)
    return LoadedDataset(str(p), evaluated, pool, has_context, {"path": str(p.resolve())})


def looks_like_path(name: str) -> bool:
    return os.sep in name or name.endswith(FILE_TYPES) or Path(name).exists()


@functools.lru_cache(maxsize=8)
def _load_registered(name: str) -> LoadedDataset:
    # a grid checks every cell before it starts and then runs each dataset with several models:
    # one read per process (a hub dataset's read from the local cache takes seconds)
    return DATASETS.get(name).load()


def load_dataset(name: str) -> LoadedDataset:
    """Resolve a registry name or a local file path. Registered datasets are read once per process
    and shared; treat the result as read-only."""
    if name in DATASETS:
        return _load_registered(name)
    if name.strip() and looks_like_path(name):
        return load_local(name)
    DATASETS.get(name)  # raises UnknownDataset with suggestions
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- bundled

def _bundled_file(stem: str, split: str):
    """The packaged JSON Lines file of a bundled dataset's split."""
    return resources.files("uqflow.data") / "files" / f"{stem}.{split}.jsonl"


def _bundled_loader(stem: str) -> Callable[[str], list[dict[str, Any]]]:
    def load(split: str) -> list[dict[str, Any]]:
        with resources.as_file(_bundled_file(stem, split)) as path:
            return [r for _, r in read_records(Path(path))]

    return load


DATASETS.add("trivia_mini", DatasetSpec(
    "trivia_mini", "bundled (TriviaQA rc.nocontext schema)", "trivia_qa", "validation", "train",
    _bundled_loader("trivia_mini"), bundled=True))
DATASETS.add("squad_mini", DatasetSpec(
    "squad_mini", "bundled (SQuAD v2 schema)", "squad", "validation", "train",
    _bundled_loader("squad_mini"), has_context=True, bundled=True))


# ---------------------------------------------------------------- hub

def _hub_loader(name: str, hub_id: str, config: str | None = None) -> Callable[[str], Iterable[Mapping[str, Any]]]:
    def load(split: str):
        try:
            import datasets as hf_datasets
        except ImportError:  # pragma: no cover - datasets is a core dependency
            raise DatasetError("loading hub datasets needs the 'datasets' package: pip install datasets") from None
        try:
            return hf_datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # network, auth and cache misses all surface as different types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(
                f"dataset {name!r} ({hub_id}{', ' + config if config else ''}, split {split}) could not be "
                f"loaded from the Hugging Face hub or the local cache: {first}. "
                "On a machine with access, run it once to fill ~/.cache/huggingface (or set HF_HOME to a copied "
                f"cache), or export the split to JSON Lines and pass dataset=<path to the .jsonl file>."
            ) from None

    return load


def _bioasq_loader(split: str) -> list[dict[str, Any]]:
    path = os.environ.get("UQFLOW_BIOASQ_FILE")
    if not path:
        raise DatasetError(
            "dataset 'bioasq' reads a local BioASQ Task B training file (e.g. training11b.json) that must be "
            "obtained from bioasq.org: set UQFLOW_BIOASQ_FILE=/path/to/training11b.json, or pass dataset=<that path>."
        )
    return [r for _, r in read_records(Path(path))]


def _hub_dataset(name: str, hub_id: str, schema: str, eval_split: str, config: str | None = None,
                 **kwargs: Any) -> DatasetSpec:
    """A dataset read from the Hugging Face hub (or its local cache), its id written once."""
    source = f"hub {hub_id}" + (f" ({config})" if config else "")
    return DatasetSpec(name, source, schema, eval_split, "train", _hub_loader(name, hub_id, config), hub_id=hub_id,
                       hub_config=config, **kwargs)


DATASETS.add("trivia_qa", _hub_dataset("trivia_qa", "mandarjoshi/trivia_qa", "trivia_qa", "validation", "rc.nocontext"))
DATASETS.add("squad", _hub_dataset("squad", "rajpurkar/squad_v2", "squad", "validation", has_context=True))
DATASETS.add("nq", _hub_dataset("nq", "google-research-datasets/nq_open", "nq_open", "validation"))
DATASETS.add("svamp", _hub_dataset("svamp", "ChilleD/SVAMP", "svamp", "test", has_context=True))
DATASETS.add("bioasq", DatasetSpec(
    "bioasq", "local file $UQFLOW_BIOASQ_FILE (BioASQ Task B JSON)", "bioasq", "all", None, _bioasq_loader))
