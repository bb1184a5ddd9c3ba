"""The bundled datasets record by record, the adapters, and local-file errors."""

import json
import pytest

from uqflow.data import DATASETS, load_dataset
from uqflow.data.datasets import read_records
from uqflow.data.examples import from_squad, from_trivia_qa
from uqflow.errors import DatasetError, UnknownDataset
from uqflow.scoring.correctness import normalize_triviaqa

from importlib import resources

FILES = resources.files("uqflow.data") / "files"


def records(name):
    return [json.loads(line) for line in (FILES / name).read_text(encoding="utf-8").splitlines()]


TRIVIA_KEYS = {"question", "question_id", "question_source", "entity_pages", "search_results", "answer"}
TRIVIA_ANSWER_KEYS = {"aliases", "normalized_aliases", "matched_wiki_entity_name",
                      "normalized_matched_wiki_entity_name", "normalized_value", "type", "value"}


@pytest.mark.parametrize("split,minimum", [("validation", 300), ("train", 20)])
def test_trivia_mini_records(split, minimum):
    recs = records(f"trivia_mini.{split}.jsonl")
    assert len(recs) >= minimum
    for r in recs:
        assert set(r) == TRIVIA_KEYS, r["question_id"]
        a = r["answer"]
        assert set(a) == TRIVIA_ANSWER_KEYS, r["question_id"]
        assert r["question"].strip() and a["value"] in a["aliases"]
        assert all(x.strip() for x in a["aliases"])
        assert a["normalized_aliases"] == list(dict.fromkeys(normalize_triviaqa(x) for x in a["aliases"]))
        assert a["normalized_value"] == normalize_triviaqa(a["value"])
        assert a["type"] in {"WikipediaEntity", "Numerical", "FreeForm"}
        assert all(v == [] for v in r["entity_pages"].values())


def test_ids_unique_and_splits_disjoint():
    for stem, key in (("trivia_mini", "question_id"), ("squad_mini", "id")):
        val, train = records(f"{stem}.validation.jsonl"), records(f"{stem}.train.jsonl")
        ids = [r[key] for r in val + train]
        assert len(ids) == len(set(ids)), stem
    tq = {r["question"].lower() for r in records("trivia_mini.validation.jsonl")}
    assert not tq & {r["question"].lower() for r in records("trivia_mini.train.jsonl")}
    sc = {r["context"] for r in records("squad_mini.validation.jsonl")}
    assert not sc & {r["context"] for r in records("squad_mini.train.jsonl")}


@pytest.mark.parametrize("split", ["validation", "train"])
def test_squad_mini_records(split):
    recs = records(f"squad_mini.{split}.jsonl")
    for r in recs:
        assert set(r) == {"id", "title", "context", "question", "answers"}
        ans = r["answers"]
        assert set(ans) == {"text", "answer_start"}
        assert len(ans["text"]) == len(ans["answer_start"])
        for text, start in zip(ans["text"], ans["answer_start"]):
            assert text and r["context"][start : start + len(text)] == text, r["id"]
    if split == "validation":
        assert len(recs) >= 200
        assert len({r["context"] for r in recs}) >= 40
        unanswerable = sum(not r["answers"]["text"] for r in recs)
        assert unanswerable / len(recs) >= 0.25


def test_bundled_load_through_registry():
    ds = load_dataset("trivia_mini")
    assert len(ds.examples) >= 300 and len(ds.few_shot_pool) >= 20
    assert ds.examples[0].references[0] == "Paris"
    sq = load_dataset("squad_mini")
    assert sq.has_context and any(not ex.answerable for ex in sq.examples)
    assert all(ex.context for ex in sq.examples)
    assert ds.fingerprint == load_dataset("trivia_mini").fingerprint


def test_adapters_on_real_schemas():
    ex = from_trivia_qa({"question": "Q?", "question_id": "tc_1",
                         "answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"]}})
    assert ex.references == ("Paris", "Paris, France") and ex.answerable
    un = from_squad({"id": "x", "title": "T", "context": "C", "question": "Q?",
                     "answers": {"text": [], "answer_start": []}})
    assert not un.answerable and un.references == ()


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownDataset, match=r"Did you mean 'trivia_mini'.*Known: trivia_mini, squad_mini"):
        load_dataset("trivia_mni")


def test_local_jsonl_in_squad_schema(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = records("squad_mini.validation.jsonl")[:60]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ds = load_dataset(str(path))
    assert len(ds.examples) + len(ds.few_shot_pool) == 60
    assert not {e.id for e in ds.examples} & {e.id for e in ds.few_shot_pool}


def test_local_parquet_in_trivia_schema(tmp_path):
    import pandas as pd

    path = tmp_path / "mine.parquet"
    pd.DataFrame(records("trivia_mini.validation.jsonl")[:30]).to_parquet(path)
    ds = load_dataset(str(path))
    assert len(ds.examples) == 24 and len(ds.few_shot_pool) == 6


@pytest.mark.parametrize("content,message", [
    ('{"question": "Q?", "question_id": "a", "answer": {"value": "x", "aliases": []}}\n{"question": ',
     r"bad\.jsonl:2: invalid JSON"),
    ('{"question": "Q?", "question_id": "a", "answer": {"value": "x", "aliases": []}}\n'
     '{"question": "Q2?", "question_id": "b", "answer": {"aliases": []}}\n',
     r"bad\.jsonl:2: missing field 'answer\.value' \(trivia_qa schema\)"),
    ('{"foo": 1}\n', r"bad\.jsonl:1: cannot tell the schema"),
    ("", r"holds no records"),
    ('[1, 2]\n', r"bad\.jsonl:1: expected a JSON object"),
])
def test_local_file_errors_name_file_line_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        load_dataset(str(path))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.jsonl:1: not valid UTF-8"):
        read_records(bad)


def test_hub_dataset_offline_says_how_to_supply(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(DatasetError, match=r"trivia_qa.*mandarjoshi/trivia_qa.*dataset=<path"):
        load_dataset("trivia_qa")


def test_bioasq_needs_a_file(monkeypatch):
    monkeypatch.delenv("UQFLOW_BIOASQ_FILE", raising=False)
    with pytest.raises(DatasetError, match="UQFLOW_BIOASQ_FILE"):
        load_dataset("bioasq")


def test_every_registered_dataset_has_a_known_schema():
    from uqflow.data.examples import SCHEMAS

    for name, spec in DATASETS.items():
        assert spec.schema in SCHEMAS, name
        assert spec.name == name
