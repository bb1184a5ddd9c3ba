"""Hostile input files: YAML alias bombs and other oversized grid and registry files, and dataset
records that are not text (bytes, objects, lone surrogates) or nest without end.

Each is refused quickly with one message that names the file (and, for a dataset, the line and
field) and the way out: no traceback, no hang, no gigabytes, no MLflow run and no model loaded.
"""

from __future__ import annotations

import json
import time

import pytest

from commands import invoke
from test_bad_input import assert_clear_failure, assert_runs_settled, jsonl, squad, trivia
from uqflow.yamlfile import MAX_YAML_BYTES, MAX_YAML_NODES, read_yaml
from uqflow.errors import short
from uqflow.errors import ConfigError


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test writes only inside its own folder."""
    monkeypatch.chdir(tmp_path)


def timed_invoke(*args):
    """``invoke`` and the seconds it took."""
    t0 = time.perf_counter()
    res = invoke(*args)
    return res, time.perf_counter() - t0


# ================================================================= YAML bounds

def alias_bomb(last: str) -> str:
    """A "billion laughs": nine levels of nine aliases, 9**9 strings once expanded, kept under the
    ``description`` key (which a grid allows and a registry ignores); ``last`` uses *i."""
    lines = ['description:', '  a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {cur}: &{cur} [{','.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n" + last + "\n"


GRID = "models: [SmolLM2-135M-Instruct]\ndatasets: [trivia_mini]\n"
ENTRY = "{name: X, source: org/x, family: F, size_b: 1, instruct: true}"

YAML_BOMBS = [
    ("grid_name", "grid", alias_bomb(GRID + "name: *i")),
    ("grid_setting", "grid", alias_bomb(GRID + "settings: {seed: *i}")),
    ("registry_field", "models", alias_bomb("models:\n  - {name: X, source: org/x, family: *i, size_b: 1, instruct: true}")),
]


@pytest.mark.parametrize("command,content", [c[1:] for c in YAML_BOMBS], ids=[c[0] for c in YAML_BOMBS])
def test_yaml_alias_bomb_is_refused_at_once(tracking, tmp_path, command, content):
    """Before: 30-90 s and 1.5 GB, the expanded value formatted into the message. After: exit 1 at once."""
    f = tmp_path / "bomb.yaml"
    f.write_text(content, encoding="utf-8")
    assert len(content) < 1024
    kind = "grid files" if command == "grid" else "model registry files"
    res, seconds = timed_invoke(*(["grid", f] if command == "grid" else ["models", "--registry", f]))
    assert_clear_failure(res, f"bomb.yaml: too many YAML aliases or nodes (more than {MAX_YAML_NODES:,}); "
                              f"{kind} are plain data", 1)
    assert seconds < 5, seconds
    assert len(res.output) < 2000, len(res.output)
    assert_runs_settled(started=0)


YAML_LIMITS = [
    ("recursive_alias", "models: &m [SmolLM2-135M-Instruct, *m]\ndatasets: [trivia_mini]\n",
     "a YAML alias refers to the value that contains it"),
    ("nested_flow_100k", "name: " + "[" * 100_000 + "]" * 100_000 + "\n" + GRID, "nested too deeply (more than 50 levels)"),
    ("nested_block_200", GRID + "settings:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(200)),
     "nested too deeply (more than 50 levels)"),
    ("aliases_of_long_text", GRID + "description: &d " + "y" * 200_000 + "\nname: [" + ", ".join(["*d"] * 9) + "]\n",
     f"YAML aliases expand to more than {MAX_YAML_BYTES:,} characters of text"),
    ("larger_than_1_mib", GRID + "description: '" + "y" * MAX_YAML_BYTES + "'\n", "larger than 1 MiB"),
]


@pytest.mark.parametrize("content,phrase", [c[1:] for c in YAML_LIMITS], ids=[c[0] for c in YAML_LIMITS])
def test_yaml_bounds(tracking, tmp_path, content, phrase):
    f = tmp_path / "g.yaml"
    f.write_text(content, encoding="utf-8")
    res, seconds = timed_invoke("grid", f, "--dry-run")
    assert_clear_failure(res, f"g.yaml: {phrase}", 1)
    assert "Traceback" not in res.output and len(res.output) < 2000
    assert seconds < 5, seconds
    assert_runs_settled(started=0)


def test_grid_with_an_anchor_and_alias_loads(tmp_path):
    """Anchors are ordinary YAML for shared values: a small use of them still loads."""
    from uqflow.grid import load_grid

    f = tmp_path / "g.yaml"
    f.write_text("description: &both [trivia_mini, squad_mini]\nmodels: [SmolLM2-135M-Instruct]\ndatasets: *both\n"
                 "settings: {num_samples: 3}\n", encoding="utf-8")
    grid = load_grid(f)
    assert grid.datasets == ("trivia_mini", "squad_mini")
    assert [c.dataset for c in grid.cells()] == ["trivia_mini", "squad_mini"]


def test_registry_with_a_merge_key_loads(tmp_path):
    """A registry's shared fields through an anchor and YAML's merge key load as written out."""
    from uqflow.models.registry import load_registry_file

    f = tmp_path / "models.yaml"
    f.write_text("models:\n  - &base {name: A, source: org/a, family: F, size_b: 1, instruct: true}\n"
                 "  - {<<: *base, name: B, source: org/b}\n", encoding="utf-8")
    specs = load_registry_file(f)
    assert [(s.name, s.source, s.family) for s in specs] == [("A", "org/a", "F"), ("B", "org/b", "F")]


def test_yaml_just_under_the_node_bound_loads(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("l: [" + ",".join(["1"] * (MAX_YAML_NODES - 10)) + "]\n", encoding="utf-8")
    assert len(read_yaml(f, "grid file", ConfigError)["l"]) == MAX_YAML_NODES - 10


def test_short_cuts_long_values():
    assert short("abc") == "'abc'"
    assert short(["x"] * 5000, limit=10) == "['x', 'x',... (25,000 characters)"
    assert short(list(range(10))) == repr(list(range(10)))


def test_setting_of_the_wrong_type_is_shown_cut(tracking, tmp_path):
    """A setting's value is quoted in the message, cut to a line however long it is."""
    f = tmp_path / "g.yaml"
    f.write_text(GRID + "settings:\n  num_samples: [" + ", ".join(["123456789"] * 5000) + "]\n", encoding="utf-8")
    res = invoke("grid", f, "--dry-run")
    assert_clear_failure(res, "num_samples must be of type int, got [123456789, 123456789,", 1)
    assert "(55,000 characters)" in res.output and len(res.output) < 2000


# ================================================================= dataset records

DEEP_LIST = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
LONE_SURROGATE = jsonl(trivia(1), trivia(2, question="Who \ud800 wrote it?"))
assert "\\ud800" in LONE_SURROGATE  # written as the JSON escape, as json.dumps does


def nested(levels: int):
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


DATASET_RECORDS = [
    ("lone_surrogate_question", "bad.jsonl", LONE_SURROGATE,
     "bad.jsonl:2: malformed record (trivia_qa schema): field 'question' is not valid text "
     "(a lone surrogate \\ud800 at character 5)"),
    ("lone_surrogate_context", "bad.jsonl", jsonl(squad(1, ["2"], context="The \udfff number.")),
     "bad.jsonl:1: malformed record (squad schema): field 'context' is not valid text (a lone surrogate \\udfff"),
    ("lone_surrogate_alias", "bad.jsonl", jsonl(trivia(1, answer={"value": "2", "aliases": ["2", "\ud83d"]})),
     "bad.jsonl:1: malformed record (trivia_qa schema): field 'answer.aliases[1]' is not valid text"),
    ("nested_list_100k", "bad.jsonl", jsonl(trivia(1)) + DEEP_LIST + "\n", "bad.jsonl:2: nested too deeply"),
    ("nested_object_100k", "bad.jsonl", jsonl(trivia(1)) + DEEP_OBJECT + "\n", "bad.jsonl:2: nested too deeply"),
    ("json_nested_100k", "bad.json", "[\n" + json.dumps(trivia(1)) + ",\n" + DEEP_LIST + "\n]\n",
     "bad.json:3: nested too deeply"),
    ("record_nested_30", "bad.jsonl", jsonl(trivia(1), trivia(2, extra=nested(30))),
     "bad.jsonl:2: nested too deeply (more than 20 levels"),
    ("question_an_object", "bad.jsonl", jsonl(trivia(1), trivia(2, question={"text": "hi"})),
     "bad.jsonl:2: malformed record (trivia_qa schema): field 'question' must be text, got dict"),
    ("question_a_list", "bad.jsonl", jsonl(trivia(1, question=["Who?"])), "field 'question' must be text, got list"),
    ("question_a_number", "bad.jsonl", jsonl(trivia(1, question=42)), "field 'question' must be text, got int"),
    ("question_true", "bad.jsonl", jsonl(trivia(1, question=True)), "field 'question' must be text, got bool"),
    ("context_an_object", "bad.jsonl", jsonl(squad(1, ["2"], context={"text": "c"})),
     "bad.jsonl:1: malformed record (squad schema): field 'context' must be text, got dict"),
    ("id_an_object", "bad.jsonl", jsonl(trivia(1, question_id={"id": 1})),
     "field 'question_id' must be text or a whole number, got dict"),
    ("id_a_float", "bad.jsonl", jsonl(squad(1, ["2"], id=1.5)), "field 'id' must be text or a whole number, got float"),
    ("answer_value_a_number", "bad.jsonl", jsonl(trivia(1, answer={"value": 2, "aliases": ["2"]})),
     "field 'answer.value' must be text, got int"),
    ("alias_a_number", "bad.jsonl", jsonl(trivia(1, answer={"value": "2", "aliases": ["2", 2]})),
     "field 'answer.aliases[1]' must be text, got int"),
    ("answer_text_an_object", "bad.jsonl", jsonl(squad(1, [{"text": "2"}])),
     "bad.jsonl:1: malformed record (squad schema): field 'answers.text[0]' must be text, got dict"),
    ("svamp_answer_an_object", "bad.jsonl",
     jsonl({"ID": "c1", "Body": "Tom has 3.", "Question": "How many?", "Answer": {"n": 3}}),
     "malformed record (svamp schema): field 'Answer' must be a number, got dict"),
    ("bioasq_answer_an_object", "bad.json",
     json.dumps([{"id": "b1", "body": "Which gene?", "exact_answer": [["BRCA1"], [{"a": 1}]]}]),
     "bad.json:1: malformed record (bioasq schema): field 'exact_answer[1]' must be text, got dict"),
    ("json_records_not_objects", "bad.json", "[1, 2]", "bad.json:1: expected a JSON object, got int"),
]


@pytest.mark.parametrize("name,content,phrase", [c[1:] for c in DATASET_RECORDS], ids=[c[0] for c in DATASET_RECORDS])
def test_dataset_records_refused_before_any_run(tracking, tmp_path, name, content, phrase):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    res, seconds = timed_invoke("run", "--dataset", path, "--num-questions", "2")
    assert_clear_failure(res, phrase, 1)
    assert len(res.output) < 2000 and seconds < 5, (len(res.output), seconds)
    assert_runs_settled(started=0)  # the dataset is read before any run starts (or any model loads)


def test_parquet_binary_question_refused(tracking, tmp_path):
    """A Parquet binary column arrives as bytes, which would reach the prompt as b'...'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"question_id": ["q1", "q2"], "question": pa.array([b"Under which?", b"Who?"], pa.binary()),
                             "answer": [{"value": "a", "aliases": ["a"]}] * 2}), path)
    assert_clear_failure(invoke("run", "--dataset", path, "--num-questions", "2"),
                         "bin.parquet:1: malformed record (trivia_qa schema): field 'question' must be text, got bytes", 1)
    assert_runs_settled(started=0)


def test_duplicate_long_id_is_shown_cut(tracking, tmp_path):
    path = tmp_path / "dup.jsonl"
    long_id = "q" * 100_000
    path.write_text(jsonl(trivia(1, question_id=long_id), trivia(2, question_id=long_id)), encoding="utf-8")
    res = invoke("run", "--dataset", path, "--num-questions", "2")
    assert_clear_failure(res, "dup.jsonl:2: duplicate id 'qqqq", 1)
    assert "(100,002 characters)" in res.output and len(res.output) < 2000


# ---------------------------------------------------------------- what still loads

def test_well_typed_records_of_every_schema_load(tmp_path):
    """Int ids (as real datasets have), SVAMP's numeric Answer, BioASQ's nested synonym lists, and
    text with line separators (JSON allows U+2028 unescaped in a string) all load."""
    from uqflow.data.datasets import adapt_records, read_records

    cases = {
        "int_ids.jsonl": (jsonl(*[trivia(i, question_id=i) for i in range(5)]), lambda ex: ex.id == "0"),
        "svamp.jsonl": (jsonl({"ID": 7, "Body": "Tom has 3 and gets 5.", "Question": "How many?", "Answer": 8.0}),
                        lambda ex: ex.references == ("8",) and ex.id == "7"),
        "bioasq.json": (json.dumps({"questions": [{"id": "b1", "body": "Which genes?",
                                                   "exact_answer": [["BRCA1", "breast cancer 1"], ["TP53"]]}]}),
                        lambda ex: ex.references == ("BRCA1", "breast cancer 1", "TP53")),
        "nq.jsonl": (jsonl({"question": "who wrote it\u2028 first?", "answer": ["Ann"]}),
                     lambda ex: ex.question == "who wrote it\u2028 first?" and ex.id.startswith("nq_")),
        "emoji.jsonl": (jsonl(trivia(1, question="Which \U0001f600 is it?")), lambda ex: "\U0001f600" in ex.question),
    }
    for name, (content, check) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        examples = adapt_records(path, read_records(path))
        assert check(examples[0]), (name, examples[0])


def test_hub_rows_adapt(tmp_path):
    """Rows as the hub's ``datasets`` give them (every field of its own type) adapt as before."""
    from uqflow.data.examples import from_nq_open, from_squad, from_svamp, from_trivia_qa

    tq = from_trivia_qa({"question": "Who?", "question_id": "tc_1", "question_source": "http://x", "entity_pages": {},
                         "search_results": {}, "answer": {"aliases": ["Ann", "ann"], "normalized_aliases": ["ann"],
                                                          "value": "Ann", "type": "WikipediaEntity"}})
    assert (tq.id, tq.references) == ("tc_1", ("Ann", "ann"))
    sq = from_squad({"id": "5733", "title": "T", "context": "C.", "question": "Q?",
                     "answers": {"text": [], "answer_start": []}})
    assert not sq.answerable
    assert from_nq_open({"question": "q", "answer": ["a", "b"]}).references == ("a", "b")
    sv = from_svamp({"ID": "chal-1", "Body": "B.", "Question": "Q?", "Equation": "( 3 + 5 )", "Answer": 8.0,
                     "Type": "Addition"})
    assert sv.references == ("8",)


def test_bundled_datasets_still_load():
    from uqflow.data import load_dataset

    for name in ("trivia_mini", "squad_mini"):
        ds = load_dataset(name)
        assert ds.examples and ds.few_shot_pool
