"""The command line as a user meets it."""

import pytest

from commands import invoke
from uqflow.cli import cli



def test_every_command_has_help_with_an_example():
    for name, cmd in cli.commands.items():
        res = invoke(name, "--help")
        assert res.exit_code == 0, name
        assert "Example: uqflow" in res.output, name


def test_models_lists_registry_with_columns():
    res = invoke("models")
    assert res.exit_code == 0
    for text in ("family", "quantization", "source", "SmolLM2-135M-Instruct", "Gemma-3-270M",
                 "Mistral-7B-Instruct-v0.3-8bit", "mistralai/Mistral-7B-Instruct-v0.3", "8bit"):
        assert text in res.output


def test_datasets_lists_registry():
    res = invoke("datasets")
    assert res.exit_code == 0
    for text in ("trivia_mini", "squad_mini", "trivia_qa", "squad", "nq", "svamp", "bioasq", "rajpurkar/squad_v2"):
        assert text in res.output


@pytest.mark.parametrize("args,message", [
    (["run", "--model", "Smollm2"], "Error: unknown model 'Smollm2'. Did you mean 'SmolLM2-135M-Instruct'"),
    (["run", "--dataset", "squad_min"], "Error: unknown dataset 'squad_min'. Did you mean 'squad_mini'"),
    (["run", "--num-questions", "0"], "Error: num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got 0"),
    (["run", "--num-questions", "ten"], "Error: num_samples must be a whole number, got 'ten'"),
    (["run", "--set", "colour=blue"], "Error: unknown setting 'colour'"),
    (["run", "--set", "seed"], "expected KEY=VALUE"),
    (["run", "--dataset", "/no/such/file.jsonl"], "Error: dataset file /no/such/file.jsonl does not exist"),
])
def test_bad_input_is_one_clear_line(tracking, args, message):
    res = invoke(*args)
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)


def test_vllm_backend_absent_is_explained(tracking):
    res = invoke("run", "--backend", "vllm", "--num-questions", "2")
    assert res.exit_code == 1
    assert "backend 'vllm' needs the vllm package" in res.output and "Traceback" not in res.output
    import mlflow

    assert mlflow.get_experiment_by_name("uqflow") is None  # refused before any run starts


def test_unknown_backend():
    res = invoke("run", "--backend", "tgi")
    assert res.exit_code == 1 and "Error: unknown backend 'tgi'. Known: auto, hf, vllm, openai" in res.output


def test_uqflows_own_warnings_read_as_one_line(capsys):
    """On the command line uqflow's warnings read "Warning: <what>", without Python's file, line and
    source; a library's warning keeps Python's form."""
    import warnings

    from uqflow.cli import _one_line_warnings
    from uqflow.scoring.evaluation import OneClassWarning

    python_form = []
    with warnings.catch_warnings():  # restores the showwarning before
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest, **kw: python_form.append((category, str(message)))
        _one_line_warnings()
        warnings.warn("AUROC undefined: 0 incorrect of 25 scored answers", OneClassWarning)
        warnings.warn("a library's", DeprecationWarning)
    assert capsys.readouterr().err.splitlines() == ["Warning: AUROC undefined: 0 incorrect of 25 scored answers"]
    assert python_form == [(DeprecationWarning, "a library's")]


def test_the_final_table_fits_100_columns_with_every_measure(capsys):
    """A run that sampled lists every declared measure; at 100 columns no row wraps, and the title
    names the judge that decided the accuracy."""
    import pandas as pd

    from uqflow.cli import _print_results
    from uqflow.config import RunConfig
    from uqflow.experiment import RunResult
    from uqflow.scoring.measures import NAMES, label
    from uqflow.scoring.pipeline import metric

    frame = pd.DataFrame({"correct": [True, False] * 60, "sample_token_logprobs": [[[-0.1]]] * 120})
    metrics = {"n": 120.0, "accuracy": 0.5}
    for name in NAMES:
        metrics.update({metric("auroc", name): 0.8123, metric("ci_low", name): 0.7012,
                        metric("ci_high", name): 0.9034, metric("cost_seconds", name): 12.3456})
    cfg = RunConfig(model="SmolLM2-135M-Instruct", dataset="trivia_mini", correctness="contains")
    _print_results([RunResult("0123456789abcdef0123456789abcdef", cfg, metrics, frame)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) >= len(NAMES) and all(label(n) in out for n in NAMES)
    assert max(len(line) for line in out.splitlines()) <= 100, out
    assert "trivia_mini: n = 120, accuracy 0.500 judged by contains" in out and "run 0123456789abcdef" in out


def test_a_piped_run_says_where_it_is_at_least_every_heartbeat(capsys, monkeypatch):
    """In a log or a pipe a stage whose batch takes minutes still prints a line every heartbeat:
    the questions done, the time elapsed and, once some are done, the time left; the lines stop
    when the stage ends."""
    import time

    from uqflow.progress import StageProgress

    monkeypatch.setenv("UQFLOW_HEARTBEAT_SECONDS", "0.3")
    progress = StageProgress("M x D")
    assert not progress.tty  # pytest captures stderr: not a terminal
    progress(0, 10, "greedy answers")
    time.sleep(1.0)
    progress(4, 10, "greedy answers")
    time.sleep(0.7)
    progress(10, 10, "greedy answers")
    time.sleep(0.7)  # ended: no more heartbeats
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    beats = [line for line in lines if line.startswith("M x D: greedy answers: ")]
    assert lines[0] == "M x D: greedy answers (10 questions)..."
    assert len(beats) >= 4, lines
    assert any(" 0/10 questions, " in b and "left" not in b for b in beats)
    assert any(" 4/10 questions, " in b and "s left" in b for b in beats)
    assert lines[-1].startswith("M x D: greedy answers done in "), lines


def test_num_samples_is_the_old_name_of_num_questions(tracking):
    """`uqflow run --num-questions N` counts questions; the old `--num-samples` still works and says
    on stderr, in one line, that it is the old name (the sampled answers are num_generations)."""
    old = invoke("run", "--num-samples", "0")
    new = invoke("run", "--num-questions", "0")
    refused = "Error: num_samples must lie in [1, 10000000] (questions evaluated; no dataset has more), got 0"
    assert old.exit_code == new.exit_code == 1 and refused in old.stderr and refused in new.stderr
    assert old.stderr.splitlines()[0] == ("Warning: --num-samples is the old name of --num-questions, the number of "
                                          "questions to evaluate (the sampled answers per question are "
                                          "num_generations); use --num-questions")
    assert "old name" not in new.stderr and len(old.stderr.splitlines()) == len(new.stderr.splitlines()) + 1
    both = invoke("run", "--num-questions", "3", "--num-samples", "3")
    assert both.exit_code == 2 and "--num-samples is the old name of --num-questions: give one of them" in both.output
    helped = invoke("run", "--help")
    assert "--num-questions" in helped.output and "--num-samples" in helped.output  # the old name, in its help
    assert "Questions to evaluate" in helped.output


def test_a_finished_grids_table_fits_100_columns_without_wrapped_rows():
    """At 100 columns a finished grid's table takes its narrow form (short model names, run ids'
    first 8 characters, short score headers): one line per cell, none wider than the terminal."""
    import io

    from rich.console import Console
    from rich.measure import Measurement

    from uqflow.cli import _grid_table
    from uqflow.config import RunConfig
    from uqflow.grid import Cell, CellState

    states = [CellState(Cell(RunConfig(model=m, dataset=d), "h"), "finished", run_id=f"{i:032x}",
                        metrics={"accuracy": 0.25, "auroc_g_nll": 0.875, "auroc_rw_g_nll": 0.5})
              for i, (m, d) in enumerate([("SmolLM2-135M-Instruct-8bit", "trivia_mini"), ("Gemma-3-270M", "squad_mini")])]
    console = Console(file=io.StringIO(), width=100)
    wide = _grid_table("demo", states)
    assert Measurement.get(console, console.options.update_width(10_000), wide).maximum > 100  # why the narrow form
    console.print(_grid_table("demo", states, narrow=True))
    lines = console.file.getvalue().splitlines()
    rows = [ln for ln in lines if ln.startswith("│")]
    assert all(len(ln) <= 100 for ln in lines) and len(rows) == 2, lines
    assert "SmolLM2-135M-8bit" in rows[0] and "00000000" in rows[0] and "0.875" in rows[0]
    assert "AUROC of G-NLL and RW-G-NLL" in lines[0]
