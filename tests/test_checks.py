"""uqflow.checks: every check before anything loads, each problem once, for a run and for a grid
(which problems, of which kind, blocking which cells), and how a dry run shows them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from uqflow.checks import (MISTAKE, NEED, Blocked, Problem, cells_text, check, check_grid, config_from_strings,
                           grid_message, kind_of, numbered, problem_lines, problem_tags, resolve)
from uqflow.cli import cli
from uqflow.config import RunConfig
from uqflow.errors import ConfigError, DatasetError, ModelLoadError, UnknownDataset, UnknownModel
from uqflow.grid import checked_cells, load_grid

#: how a model that is neither cached nor reachable (the tests run offline) is said
UNCACHED = "is not in the local Hugging Face cache"


@pytest.fixture
def registry(tmp_path):
    """A registry file of three hub models, none of them cached here."""
    reg = tmp_path / "models.yaml"
    reg.write_text("models:\n" + "".join(f"  - {{name: m{i}, source: org/m{i}, family: F, size_b: 1, instruct: false}}\n"
                                         for i in range(3)), encoding="utf-8")
    return reg


def _grid(tmp_path, models, datasets, **settings):
    f = tmp_path / "g.yaml"
    lines = ["name: t", f"models: [{', '.join(models)}]", f"datasets: [{', '.join(map(str, datasets))}]"]
    if settings:
        lines += ["settings:", *(f"  {k}: {v}" for k, v in settings.items())]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def _configs(registry, models, datasets):
    return [RunConfig(model=m, dataset=d, model_registry=str(registry)) for m in models for d in datasets]


# ---------------------------------------------------------------- kinds

def test_the_kind_of_a_problem_says_whose_it_is():
    """A mistake of the input (fix the name, the setting, the file) or what this machine lacks
    (a model or a registered dataset it cannot read here): grid.checked_cells' split before."""
    hub = RunConfig(dataset="squad")
    local = RunConfig(dataset="/data/questions.jsonl")
    assert kind_of(ModelLoadError("model 'x' is not cached"), local) == NEED
    assert kind_of(DatasetError("dataset 'squad' could not be loaded"), hub) == NEED
    assert kind_of(DatasetError("questions.jsonl:2: invalid JSON"), local) == MISTAKE
    assert kind_of(UnknownDataset("unknown dataset 'squad-mini'"), local) == MISTAKE
    assert kind_of(ConfigError("max_new_tokens=9000 leaves no room"), hub) == MISTAKE


# ---------------------------------------------------------------- one run

def test_a_run_is_checked_whole_and_resolved_here():
    spec, ds, problems = check(RunConfig(model="SmolLM2-135M-Instruct", dataset="trivia_mini"))
    assert spec.name == "SmolLM2-135M-Instruct" and ds.examples and problems == []
    assert resolve(RunConfig(dataset="squad_mini"))[1].name == "squad_mini"
    with pytest.raises(UnknownModel, match="unknown model 'Smol'"):  # one problem: raised as it is
        resolve(RunConfig(model="Smol"))
    with pytest.raises(ConfigError) as err:  # more: one message naming each
        resolve(RunConfig(model="Smol", dataset="trivia_mni", correctness="bleu"))
    lines = str(err.value).splitlines()
    assert lines[0] == "Smol x trivia_mni cannot run:" and len(lines) == 4


def test_unreadable_settings_and_unknown_names_are_one_message():
    """config_from_strings (what `uqflow run` reads its settings with) names the setting it cannot
    read and what the naming settings name wrong, together."""
    with pytest.raises(ConfigError) as err:
        config_from_strings({"model": "gemma-3-270m", "dataset": "squad-mini", "temperature": "hot"})
    lines = str(err.value).splitlines()
    assert lines[:2] == ["3 problems, found before anything ran:", "  - temperature must be a number, got 'hot'"]
    assert lines[2].startswith("  - unknown model 'gemma-3-270m'. Did you mean 'Gemma-3-270M'")
    assert len(lines) == 4 and lines[3].startswith("  - unknown dataset 'squad-mini'. Did you mean 'squad_mini'")
    assert config_from_strings({"num_samples": "7"}).num_samples == 7


# ---------------------------------------------------------------- a grid

def test_a_problem_shared_by_cells_is_one_problem_listing_them(registry):
    """Two uncached models x a bundled dataset and a hub dataset (offline): one problem per model
    and one for the hub dataset, each listing every cell it blocks, each cell naming its own."""
    found = check_grid(_configs(registry, ["m0", "m1"], ["trivia_mini", "squad"]), "t")
    assert [(p.kind, p.cells) for p in found.problems] == [
        (NEED, (("m0", "trivia_mini"), ("m0", "squad"))),
        (NEED, (("m0", "squad"), ("m1", "squad"))),
        (NEED, (("m1", "trivia_mini"), ("m1", "squad"))),
    ]
    m0, squad, m1 = found.problems
    assert m0.message.startswith("model 'm0' (org/m0) ") and UNCACHED in m0.message
    assert squad.message.startswith("dataset 'squad' (rajpurkar/squad_v2, split validation) could not be loaded")
    assert [c.problems for c in found.cells] == [(m0,), (m0, squad), (m1,), (squad, m1)]
    assert found.mistakes == [] and found.needs == found.problems
    assert len({p.message for p in found.problems}) == len(found.problems)  # each message once


def test_mistakes_are_numbered_before_needs(registry, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": \n', encoding="utf-8")
    found = check_grid(_configs(registry, ["m0", "SmolLM2-135M-Instruct"], ["trivia_mini", str(bad)]), "t")
    assert [p.kind for p in found.problems] == [MISTAKE, NEED]
    mistake, need = found.problems
    assert "bad.jsonl:1: invalid JSON" in mistake.message
    assert mistake.cells == (("m0", str(bad)), ("SmolLM2-135M-Instruct", str(bad)))
    assert need.cells == (("m0", "trivia_mini"), ("m0", str(bad)))
    assert found.cells[1].problems == (mistake, need)  # m0 x bad.jsonl: both, in the order listed
    assert problem_tags(found.cells[1].problems, numbered(found.problems)) == "mistake [1] needs [2]"


def test_numbers_put_mistakes_first_and_keep_the_order_met():
    a, b, c = Problem("a", NEED), Problem("b", MISTAKE), Problem("c", NEED)
    assert numbered([a, b, c, a]) == {b: 1, a: 2, c: 3}
    assert problem_tags([c, a], numbered([a, b, c])) == "needs [2] [3]"


def test_the_cells_of_a_problem_are_said_short():
    grid = [(m, d) for m in ("A", "B", "C") for d in ("x", "y")]
    assert cells_text(grid, grid) == "every cell (6)"
    assert cells_text([("A", "x"), ("B", "x"), ("C", "x")], grid) == "every model x x"
    assert cells_text([("B", "x"), ("B", "y")], grid) == "B x every dataset"
    assert cells_text([("A", "x"), ("B", "x"), ("C", "x"), ("C", "y")], grid) == "every model x x, C x y"
    assert cells_text([("A", "x"), ("A", "y"), ("B", "y"), ("C", "y")], grid) == "every model x y, A x x"
    assert cells_text([("A", "y")], grid) == "A x y"
    assert cells_text([("A", "x")], [("A", "x")]) == "A x x"  # a one-cell grid: its cell, not "every cell"
    many = [(f"M{i}", "x") for i in range(12)]
    assert cells_text(many, many + [("Z", "x")]) == ", ".join(f"M{i} x x" for i in range(8)) + ", and 4 more"


def test_the_grid_message_says_each_problem_once_with_its_cells():
    grid = [(m, d) for m in ("A", "B") for d in ("x", "y")]
    hub = Problem("dataset 'y' could not be loaded; fill the cache", NEED, (("A", "y"), ("B", "y")))
    model = Problem("model 'A' is not cached; download it", NEED, (("A", "x"), ("A", "y")))
    assert grid_message("g", grid, [hub, model]).splitlines() == [
        "3 of 4 cells of grid 'g' cannot run on this machine; 2 problems, each once with the cells it blocks:",
        "What this machine lacks:",
        "  [1] dataset 'y' could not be loaded; fill the cache",
        "      blocks every model x y",
        "  [2] model 'A' is not cached; download it",
        "      blocks A x every dataset",
        "(`uqflow grid FILE --dry-run` lists every cell with its state)",
    ]
    typo = Problem("unknown model 'Bee'. Did you mean 'B'?", MISTAKE, (("Bee", "x"),))
    assert grid_message("g", grid, [hub, typo]).splitlines()[:4] == [
        "3 of 4 cells of grid 'g' cannot run; 2 problems, each once with the cells it blocks:",
        "Mistakes in the input:",
        "  [1] unknown model 'Bee'. Did you mean 'B'?",
        "      blocks Bee x x",
    ]


def test_problem_lines_fit_the_width_and_show_controls_escaped():
    long = Problem("model 'm' " + "word " * 40 + "/a/path/" + "x" * 150, NEED, (("m\x1b[2J", "d"),))
    lines = problem_lines([long], [("m\x1b[2J", "d")], width=60)
    assert max(map(len, lines)) <= 60 and lines[1].startswith("  [1] model 'm' word")
    assert all(line.startswith("      ") for line in lines[2:])  # hanging indent under the number
    assert "\x1b" not in "".join(lines) and "m\\x1b[2J x d" in "".join(lines)


def test_a_grid_that_cannot_run_raises_every_problem_once(registry, tmp_path):
    f = _grid(tmp_path, ["m0", "m1", "SmolLM2-135M-Instruct"], ["trivia_mini", "squad_mini"], model_registry=registry)
    with pytest.raises(Blocked) as err:
        checked_cells(load_grid(f))
    message = str(err.value)
    assert message.startswith("4 of 6 cells of grid 't' cannot run on this machine; 2 problems")
    assert message.count(UNCACHED) == 2 and "blocks m0 x every dataset" in message and "blocks m1 x every dataset" in message
    assert [p.cells for p in err.value.problems] == [(("m0", "trivia_mini"), ("m0", "squad_mini")),
                                                     (("m1", "trivia_mini"), ("m1", "squad_mini"))]
    cells = checked_cells(load_grid(f), dry_run=True)  # a dry run lists them instead
    assert [len(c.needs) for c in cells] == [1, 1, 1, 1, 0, 0]
    assert cells[0].needs[0] is cells[1].needs[0] and cells[0].resolved is None and cells[4].resolved is not None


def test_a_grid_with_a_mistake_cannot_start_even_dry(registry, tmp_path):
    f = _grid(tmp_path, ["m0", "Smol"], ["trivia_mini"], model_registry=registry)
    for dry_run in (False, True):
        with pytest.raises(Blocked) as err:
            checked_cells(load_grid(f), dry_run=dry_run)
        lines = str(err.value).splitlines()
        assert lines[0] == "2 of 2 cells of grid 't' cannot run; 2 problems, each once with the cells it blocks:"
        assert lines[1] == "Mistakes in the input:"
        assert lines[2].startswith("  [1] unknown model 'Smol'. Did you mean 'SmolLM2-135M-Instruct'")
        assert lines[3:5] == ["      blocks Smol x trivia_mini", "What this machine lacks:"]
        assert lines[5].startswith("  [2] model 'm0' (org/m0) ") and lines[-1] == "      blocks m0 x trivia_mini"


# ---------------------------------------------------------------- the dry run on a terminal of 100 columns

def _dry_run(path, columns=100):
    return CliRunner().invoke(cli, ["grid", str(path), "--dry-run"], env={"COLUMNS": str(columns)})


def _table_and_problems(stdout: str) -> list[str]:
    """A dry run's lines up to where the tracking store is said (a path of the test's own)."""
    lines = stdout.splitlines()
    return lines[:next(i for i, line in enumerate(lines) if line.startswith("Tracking store:"))]


def test_the_dry_run_fits_100_columns_and_says_each_problem_once(tracking, registry, tmp_path):
    """Every cell names its problems by number; below the table each is said once, with the cells
    it blocks; no line passes 100 columns (before: the whole message in every row, 200 wide)."""
    f = _grid(tmp_path, ["m0", "m1", "m2", "SmolLM2-135M-Instruct"], ["trivia_mini", "squad", "squad_mini"],
              model_registry=registry)
    res = _dry_run(f)
    assert res.exit_code == 0, res.output
    lines = _table_and_problems(res.stdout)
    assert max(map(len, lines)) <= 100, res.stdout
    assert res.stdout.count("pending") == 12
    rows = [line for line in lines if line.startswith("│")]
    assert [c.strip() for c in rows[0].split("│")[1:-1]] == ["m0", "trivia_mini", "pending", "needs [1]"]
    assert [r.split("│")[4].strip() for r in rows] == [
        "needs [1]", "needs [1] [2]", "needs [1]", "needs [3]", "needs [2] [3]", "needs [3]",
        "needs [4]", "needs [2] [4]", "needs [4]", "", "needs [2]", ""]
    text = " ".join(line.strip() for line in lines)  # the problems as one text, whatever their wrapping
    for i in range(3):
        assert text.count(f"model 'm{i}' (org/m{i})") == 1
    assert text.count("dataset 'squad' (rajpurkar/squad_v2") == 1
    assert "[1] model 'm0' (org/m0)" in text and "blocks m0 x every dataset" in text
    assert "[2] dataset 'squad'" in text and "blocks every model x squad" in text
    assert lines.count("What this machine lacks:") == 1


def test_the_dry_run_of_a_done_cell_fits_100_columns(tracking, tmp_path):
    """A cell that is done shows its run id; the table still fits 100 columns (the scores are the
    grid's table once it ran, and its MLflow run's)."""
    from uqflow import tracking as tr
    from uqflow.experiment import run_tags
    from uqflow.models import MODELS
    from uqflow.scoring.pipeline import metric

    f = _grid(tmp_path, ["SmolLM2-135M-Instruct-8bit", "Gemma-3-270M"], ["trivia_mini", "squad_mini"])
    cell = checked_cells(load_grid(f))[0]
    with tr.tracked_run("cell", run_tags(cell.config, MODELS.get(cell.config.model))) as run:
        tr.log_metrics({"accuracy": 0.5, metric("auroc", "g_nll"): 0.75, metric("auroc", "rw_g_nll"): 0.8})
    res = _dry_run(f)
    assert res.exit_code == 0, res.output
    assert max(map(len, _table_and_problems(res.stdout))) <= 100, res.stdout
    assert res.stdout.count("pending") == 3 and "done" in res.stdout
    assert run.info.run_id in res.stdout and "What this machine lacks" not in res.stdout  # whole: on one line
