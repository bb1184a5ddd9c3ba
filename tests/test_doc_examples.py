"""scripts/doc_examples.py: the documentation's example outputs against what a store prints, with
machine-dependent rows (bitsandbytes on a CPU) compared within a tolerance and the rest exactly."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "doc_examples.py"


@pytest.fixture(scope="module")
def de():
    spec = importlib.util.spec_from_file_location("doc_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_examples"] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("doc_examples", None)


DOCUMENTED = """\
┏━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━┳━━━━━━━━━━┓
┃ family  ┃ precision ┃ n_runs ┃ auroc ┃ accuracy ┃
┡━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━╇━━━━━━━━━━┩
│ Gemma   │ full      │ 2      │ 0.802 │ 0.61     │
│ SmolLM2 │ 8bit      │ 2      │ 0.905 │ 0.18     │
│ SmolLM2 │ full      │ 2      │ 0.879 │ 0.235    │
└─────────┴───────────┴────────┴───────┴──────────┘
"""
MARKERS = {"8bit", "SmolLM2-135M-Instruct-8bit", "SmolLM2-135M-8bit"}


def _with(text: str, row: str, new: str) -> str:
    assert row in text
    return text.replace(row, new)


def test_an_identical_output_matches_and_its_machine_dependent_rows_are_marked(de):
    result = de.compare(DOCUMENTED, DOCUMENTED, MARKERS)
    assert result.ok and result.dependent == ["SmolLM2 | 8bit | 2 | 0.905 | 0.18  (as documented)"]


def test_a_machine_dependent_row_within_the_tolerance_is_accepted(de):
    # another CPU's int8 kernels: the 8-bit mean AUROC 0.905 -> 0.881, its accuracy 0.18 -> 0.2
    now = _with(DOCUMENTED, "│ SmolLM2 │ 8bit      │ 2      │ 0.905 │ 0.18     │",
                "│ SmolLM2 │ 8bit      │ 2      │ 0.881 │ 0.2      │")
    result = de.compare(DOCUMENTED, now, MARKERS)
    assert result.ok, result.problems
    assert result.dependent == ["SmolLM2 | 8bit | 2 | 0.881 | 0.2  (0.905 -> 0.881, 0.18 -> 0.2)"]
    edge = _with(DOCUMENTED, "0.905", f"{0.905 - de.TOLERANCE:.3f}")
    assert de.compare(DOCUMENTED, edge, MARKERS).ok


def test_a_machine_dependent_row_beyond_the_tolerance_is_refused(de):
    now = _with(DOCUMENTED, "│ SmolLM2 │ 8bit      │ 2      │ 0.905 │ 0.18     │",
                "│ SmolLM2 │ 8bit      │ 2      │ 0.805 │ 0.18     │")
    result = de.compare(DOCUMENTED, now, MARKERS)
    assert not result.ok
    assert result.problems == [f"machine-dependent row SmolLM2 | 8bit | 2 | 0.805 | 0.18 where the documentation "
                               f"shows SmolLM2 | 8bit | 2 | 0.905 | 0.18: 0.905 -> 0.805 lies beyond ±{de.TOLERANCE}"]


def test_a_machine_dependent_row_keeps_its_counts_and_names_exactly(de):
    count = _with(DOCUMENTED, "│ SmolLM2 │ 8bit      │ 2      │", "│ SmolLM2 │ 8bit      │ 3      │")
    assert "2 -> 3 is not a decimal figure" in de.compare(DOCUMENTED, count, MARKERS).problems[0]
    family = _with(DOCUMENTED, "│ SmolLM2 │ 8bit      │", "│ Llama   │ 8bit      │")
    assert not de.compare(DOCUMENTED, family, MARKERS).ok


@pytest.mark.parametrize("row, new", [
    ("│ Gemma   │ full      │ 2      │ 0.802 │", "│ Gemma   │ full      │ 2      │ 0.803 │"),  # by 0.001
    ("│ SmolLM2 │ full      │ 2      │ 0.879 │ 0.235    │", "│ SmolLM2 │ full      │ 2      │ 0.879 │ 0.236    │"),
    ("┃ auroc ┃", "┃ AUROC ┃"),
], ids=["auroc by 0.001", "accuracy by 0.001", "a column's name"])
def test_any_change_in_an_exact_row_is_refused(de, row, new):
    result = de.compare(DOCUMENTED, _with(DOCUMENTED, row, new), MARKERS)
    assert not result.ok and len(result.problems) == 1


def test_without_machine_dependent_runs_every_row_is_exact(de):
    now = _with(DOCUMENTED, "0.905", "0.904")
    assert not de.compare(DOCUMENTED, now, set()).ok


def test_a_wider_machine_dependent_figure_may_widen_its_column(de):
    """A figure printed with more digits widens its column, and so the padding and rules of every
    row; the exact rows still compare cell by cell."""
    wide = DOCUMENTED.replace("━━━━━━━┳━━━━━━━━━━┓", "━━━━━━━━┳━━━━━━━━━━┓", 1)
    wide = wide.replace("┃ auroc ┃", "┃ auroc  ┃").replace("━━━━━━━╇━━━━━━━━━━┩", "━━━━━━━━╇━━━━━━━━━━┩")
    wide = wide.replace("│ 0.802 │", "│ 0.802  │").replace("│ 0.905 │", "│ 0.9051 │").replace("│ 0.879 │", "│ 0.879  │")
    wide = wide.replace("───────┴──────────┘", "────────┴──────────┘")
    assert de.compare(DOCUMENTED, wide, MARKERS).ok
    assert not de.compare(DOCUMENTED, wide.replace("0.879  │", "0.878  │"), MARKERS).ok


def test_a_row_names_a_dependent_run_by_a_whole_cell_or_word(de):
    assert de.names_a_dependent_run(["SmolLM2-135M-8bit · trivia_mini", "0.9"], MARKERS)
    assert de.names_a_dependent_run(["SmolLM2-135M-Instruct-8bit"], MARKERS)
    assert not de.names_a_dependent_run(["SmolLM2-135M-Instruct", "full", "0.879"], MARKERS)
    assert not de.names_a_dependent_run(["8bits"], MARKERS)


def test_lines_added_or_dropped_are_refused(de):
    assert not de.compare(DOCUMENTED, DOCUMENTED + "extra\n", MARKERS).ok


def test_the_store_names_its_machine_dependent_runs(de, monkeypatch):
    """Rows are marked by what names a run that uqflow.machine.machine_dependent picks from its
    tags: bitsandbytes on a CPU (or recorded before the machine tags), not on a GPU, not GGUF."""
    import json

    runs = [{"run_id": "a" * 32, "model": "SmolLM2-135M-Instruct-8bit", "quantization": "8bit",
             "tags": json.dumps({"quantization": "8bit", "machine_device": "cpu"})},
            {"run_id": "b" * 32, "model": "Llama-3-8B-8bit", "quantization": "8bit",
             "tags": json.dumps({"quantization": "8bit", "machine_device": "cuda"})},
            {"run_id": "c" * 32, "model": "SmolLM2-135M-Instruct", "quantization": "gguf-q4_1",
             "tags": json.dumps({"quantization": "gguf-q4_1", "machine_device": "cpu"})},
            {"run_id": "d" * 32, "model": "SmolLM2-135M-Instruct-4bit", "quantization": "4bit", "tags": "{}"}]
    monkeypatch.setattr(de, "run", lambda command, db: json.dumps(runs))
    assert de.dependent_markers("sqlite:///unused.db") == {
        "a" * 32, "SmolLM2-135M-Instruct-8bit", "SmolLM2-135M-8bit", "8bit",
        "d" * 32, "SmolLM2-135M-Instruct-4bit", "SmolLM2-135M-4bit", "4bit"}
