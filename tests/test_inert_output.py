"""What data holds is shown, never obeyed: values from a results store, a query, a registry file, a
grid or a dataset's name reach the terminal with rich markup shown as written and control and
bidirectional characters as their escapes (``\\x1b``, ``\\u202e``), in every table uqflow prints, in
its one-line errors and in the run names it gives MLflow."""

from __future__ import annotations

import json

import pytest

from commands import invoke
from test_bad_input import jsonl, trivia
from uqflow.config import RunConfig
from uqflow.console import DataTable, inert
from uqflow.experiment import run_name

ESC, CSI, RLO, LRI, LRM, ALM = "\x1b", "\x9b", "\u202e", "\u2066", "\u200e", "\u061c"
#: every control a terminal would act on, each once
CONTROLS = "".join(map(chr, [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)]))
BIDI = "".join(map(chr, [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    assert invoke("db", "upgrade", "--db", url).exit_code == 0
    return url


def assert_inert(output: str) -> None:
    """No character of the output is one a terminal acts on (tab and newline aside)."""
    acted_on = [c for c in output if c in CONTROLS + BIDI and c not in "\t\n"]
    assert not acted_on, [hex(ord(c)) for c in acted_on]


def test_inert_escapes_every_control_and_bidirectional_character():
    assert inert(f"a{ESC}[31mb{CSI}c{RLO}d{LRI}e{LRM}f{ALM}\t\n") == \
        "a\\x1b[31mb\\x9bc\\u202ed\\u2066e\\u200ef\\u061c\t\n"
    assert inert("a\tb\nc\rd", one_line=True) == "a\\tb\\nc\\rd"
    assert_inert(inert(CONTROLS + BIDI))
    assert inert("[red]x[/red] ünïcødé 日本 ☃") == "[red]x[/red] ünïcødé 日本 ☃"  # the rest as it is


def test_query_table_shows_markup_as_written(db):
    res = invoke("query", "--db", db, "SELECT '[red]x[/red]' AS a, '[link=https://example.com]here[/link]' AS b, "
                                      "'[/bold]' AS c, ':warning: [b]' AS \"[i]head\"")
    assert res.exit_code == 0, res.output
    for shown in ("[red]x[/red]", "[link=https://example.com]here[/link]", "[/bold]", ":warning: [b]", "[i]head"):
        assert shown in res.output
    assert "\x1b]8;" not in res.output and "Traceback" not in res.output


def test_query_table_shows_terminal_controls_escaped(db):
    res = invoke("query", "--db", db, "SELECT char(27) || '[31mred' || char(27) || ']0;title' || char(7) AS a, "
                                      "char(155) || '2J' AS b, 'over' || char(13) || 'write' AS c, "
                                      "char(8238) || 'gnp.exe' AS d, char(8294) || 'x' || char(8297) AS e")
    assert res.exit_code == 0, res.output
    assert_inert(res.output)
    for shown in ("\\x1b[31mred\\x1b]0;title\\x07", "\\x9b2J", "over\\rwrite", "\\u202egnp.exe", "\\u2066x\\u2069"):
        assert shown in res.output


def test_query_json_escapes_what_json_allows_and_reads_back(db):
    res = invoke("query", "--db", db, "--format", "json",
                 "SELECT char(8238) || 'a' || char(155) || char(127) AS v, char(27) AS w")
    assert res.exit_code == 0, res.output
    assert_inert(res.output)
    assert "\\u202ea\\u009b\\u007f" in res.output
    assert json.loads(res.output) == [{"v": f"{RLO}a{CSI}\x7f", "w": ESC}]


def test_models_table_shows_a_registry_files_values_as_written(tmp_path):
    reg = tmp_path / "models.yaml"
    reg.write_text(json.dumps({"models": [{"name": "M[/bold]", "source": "org/m",
                                           "family": f"[link=http://x]F[/link]{ESC}[2J{RLO}", "size_b": 1, "instruct": True}]}),
                   encoding="utf-8")
    res = invoke("models", "--registry", reg)
    assert res.exit_code == 0, res.output
    assert_inert(res.output)
    for shown in ("M[/bold]", "[link=http://x]F[/link]\\x1b[2J\\u202e"):
        assert shown in res.output


def test_grid_table_shows_a_dataset_name_as_written(tracking, tmp_path):
    name = f"[b]x{RLO}lnosj.jsonl"
    (tmp_path / name).write_text(jsonl(*(trivia(i) for i in range(3))), encoding="utf-8")
    grid = tmp_path / "g.yaml"
    grid.write_text(json.dumps({"models": ["SmolLM2-135M-Instruct"], "datasets": [name]}), encoding="utf-8")
    res = invoke("grid", grid, "--dry-run")
    assert res.exit_code == 0, res.output
    assert_inert(res.output)
    assert "[b]x\\u202elnosj.jsonl" in res.output


def test_an_error_quoting_a_path_shows_its_controls_escaped():
    res = invoke("grid", f"missing{RLO}lmay.{ESC}[8m.yaml")
    assert res.exit_code == 1
    assert res.output.startswith("Error: grid file missing\\u202elmay.\\x1b[8m.yaml does not exist"), res.output
    assert_inert(res.output)


@pytest.mark.parametrize("dataset", [f"data/{RLO}lnosj.txt", f"evil{LRI}{ESC}[31m\n.jsonl"])
def test_run_names_carry_no_controls(dataset):
    name = run_name(RunConfig(dataset=dataset))
    assert_inert(name)
    assert "\n" not in name and name.startswith("SmolLM2-135M · ")
    assert name == "SmolLM2-135M · " + inert(dataset.rpartition("/")[2], one_line=True)


def test_data_table_never_reads_markup():
    from rich.console import Console

    table = DataTable("[b]h", title="[red]t", caption=f"c{ESC}")
    table.add_column("[/i]")
    table.add_row("[/bold]", f"{RLO}x")
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(table)
    text = console.export_text()
    for shown in ("[b]h", "[red]t", "c\\x1b", "[/i]", "[/bold]", "\\u202ex"):
        assert shown in text
