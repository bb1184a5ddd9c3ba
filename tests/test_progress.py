"""uqflow's progress display and the reports that feed it: stages that move within a batch as its
tokens are decoded, on a terminal and in a log, and no library's bars beside it."""

import io
import re
import subprocess
import sys
import time

import pytest

from uqflow.generation.base import Reports
from uqflow.progress import StageProgress


class OneLongBatch:
    """An engine whose prompts all decode in one batch and all finish at its last step, as a long
    batch does; it reports through the engines' ``Reports`` like the HF engine."""

    def __init__(self, steps: int, seconds_per_step: float):
        self.steps, self.seconds_per_step = steps, seconds_per_step

    def generate(self, prompts, progress=None):
        reports = Reports(progress)
        for _ in range(self.steps):
            time.sleep(self.seconds_per_step)
            reports.decoded(len(prompts))  # one token per running row
        for _ in prompts:
            reports.finished(1)
        reports.flush()
        return ["answer"] * len(prompts)


def stage_steps(progress, total: int, stage: str):
    """An engine's ``progress(rows, tokens=0)`` turned into the stage's ``progress(done, total,
    stage, tokens)``, as the experiment does."""
    counts = {"done": 0, "tokens": 0}

    def step(k: int, tokens: int = 0) -> None:
        counts["done"] += k
        counts["tokens"] += tokens
        progress(counts["done"], total, stage, tokens=counts["tokens"])

    return step


def test_a_piped_heartbeat_tells_the_tokens_decoded(monkeypatch):
    """Off a terminal the heartbeat lines of a stage whose questions all finish at once still move:
    they count the tokens decoded and their rate; the stage's last line says how many in all."""
    monkeypatch.setenv("UQFLOW_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setattr("uqflow.generation.base.TOKEN_REPORT_SECONDS", 0.05)
    out = io.StringIO()
    progress = StageProgress("M x D", file=out)
    assert not progress.tty
    progress(0, 4, "greedy answers")
    OneLongBatch(steps=40, seconds_per_step=0.02).generate(["q"] * 4, stage_steps(progress, 4, "greedy answers"))
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "M x D: greedy answers (4 questions)..."
    beats = [line for line in lines if line.startswith("M x D: greedy answers: 0/4 questions, ")]
    counts = [int(re.search(r"questions, ([\d,]+) tokens, [\d,]+ tokens/s, \d+ s", b)[1].replace(",", "")) for b in beats]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] > counts[0] > 0, lines
    assert re.fullmatch(r"M x D: greedy answers done in \d+ s: 160 tokens, [\d,]+ tokens/s", lines[-1]), lines


def test_a_terminal_bar_moves_with_the_tokens_of_a_batch(monkeypatch):
    """On a terminal the stage's bar is redrawn as tokens are reported, long before any question of
    the batch is done: the same 0/4 questions with more and more tokens, then 4/4, kept."""
    monkeypatch.setattr("uqflow.generation.base.TOKEN_REPORT_SECONDS", 0.05)
    out = io.StringIO()
    progress = StageProgress("M x D", file=out, tty=True)
    progress(0, 4, "greedy answers")
    OneLongBatch(steps=30, seconds_per_step=0.02).generate(["q"] * 4, stage_steps(progress, 4, "greedy answers"))
    progress.close()
    frames = [f.strip() for f in re.split(r"[\r\n]", out.getvalue()) if f.strip()]
    waiting = [f for f in frames if "0/4" in f and " tok, " in f]
    tokens = [int(re.search(r"0/4 q \|\s*\| ([\d,]+) tok, [\d,]+ tok/s \[", f)[1].replace(",", "")) for f in waiting]
    assert len(set(tokens)) >= 3 and tokens == sorted(tokens), frames
    assert re.fullmatch(r"M x D: greedy answers: 4/4 q \|#+\| 120 tok, [\d,]+ tok/s \[00:00<00:00\]", frames[-1]), frames
    assert out.getvalue().endswith("\n")  # the bar is kept


def test_a_timed_stage_shows_its_time_alone(monkeypatch):
    """Loading a model is a stage with no count: its name and its time, on a terminal and off it."""
    for tty in (False, True):
        out = io.StringIO()
        progress = StageProgress("M x D", file=out, tty=tty)
        progress(0, None, "loading SmolLM2-135M-Instruct")
        progress(1, None, "loading SmolLM2-135M-Instruct")
        progress(0, 3, "greedy answers")
        progress.close()
        text = out.getvalue()
        if tty:
            assert re.search(r"M x D: loading SmolLM2-135M-Instruct \[00:00\]\n", text), repr(text)
        else:
            assert text.splitlines()[:3] == ["M x D: loading SmolLM2-135M-Instruct...",
                                              "M x D: loading SmolLM2-135M-Instruct done in 0 s",
                                              "M x D: greedy answers (3 questions)..."]


def test_a_stage_name_from_data_is_inert():
    out = io.StringIO()
    progress = StageProgress("M x D", file=out)
    progress(0, None, "loading evil\x1b]0;title\x07")
    progress.close()
    assert "\x1b" not in out.getvalue() and "loading evil\\x1b]0;title\\x07..." in out.getvalue()


def test_library_bars_are_off_in_every_command():
    """The command line turns the libraries' bars off as it loads (before they are imported): a
    model's "Loading weights", the hub's downloads, datasets', MLflow's artifacts."""
    code = ("import os, uqflow.cli\n"
            "from transformers.utils import logging\n"
            "from huggingface_hub.utils import are_progress_bars_disabled\n"
            "import datasets\n"
            "print(logging.is_progress_bar_enabled(), are_progress_bars_disabled(),\n"
            "      datasets.utils.are_progress_bars_disabled(), os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "false"]


@pytest.mark.slow
def test_a_model_loads_without_a_library_bar(capfd, monkeypatch):
    """Where transformers was imported already (a notebook, this test process), the bars are turned
    off in the library itself: loading a model writes nothing."""
    from uqflow.models import MODELS, load_model
    from uqflow.progress import LIBRARY_BARS_OFF, library_bars_off

    from transformers.utils import logging as hf_logging

    for var in LIBRARY_BARS_OFF:  # put back after the test
        monkeypatch.setenv(var, "")
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)  # bars on, as before any uqflow command
    library_bars_off()
    assert not hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    load_model(MODELS.get("SmolLM2-135M-Instruct"), "cpu")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out and "%|" not in captured.err


def _ids(lm, n):
    from uqflow.data import load_dataset
    from uqflow.prompts import PromptOptions, build_prompts, draw_few_shot

    ds = load_dataset("trivia_mini")
    prompts, _ = build_prompts(ds.examples[:n], draw_few_shot(ds.few_shot_pool, 5, 10), lm.tokenizer,
                               instruct=lm.spec.instruct, opts=PromptOptions(), max_prompt_tokens=4000)
    return [p.token_ids for p in prompts]


@pytest.mark.slow
def test_the_hf_engine_reports_tokens_before_its_first_answer(smollm, monkeypatch):
    """The real engine tells of tokens at its first decode step, before any answer is done, and then
    at every step where the report interval allows (0 here); its reports add up to the answers and
    tokens it counted, and reporting changes no answer."""
    from uqflow.generation.hf import HFEngine

    ids = _ids(smollm, 6)
    plain = HFEngine(smollm, batch_size=6, max_new_tokens=12).generate(ids)
    for interval in (0.5, 0.0):
        monkeypatch.setattr("uqflow.generation.base.TOKEN_REPORT_SECONDS", interval)
        engine = HFEngine(smollm, batch_size=6, max_new_tokens=12)
        calls = []
        gens = engine.generate(ids, progress=lambda rows, tokens=0: calls.append((rows, tokens)))
        assert [(g.token_ids, g.text) for g in gens] == [(g.token_ids, g.text) for g in plain]
        first_row = next(i for i, (rows, _) in enumerate(calls) if rows)
        assert first_row > 0 and calls[0] == (0, 6), calls  # the first step: a token from each of 6 rows
        assert sum(rows for rows, _ in calls) == 6 and sum(t for _, t in calls) == engine.tokens["greedy"]
        if interval == 0.0:  # every step before the first answer is done reports its 6 tokens
            assert calls[:first_row] == [(0, 6)] * first_row and first_row >= 2, calls


@pytest.mark.slow
def test_sampling_and_p_true_report_as_they_go(smollm):
    """Sampled answers count answers and their tokens; p(True)'s one forward pass per prompt tells
    of the prompts as each prefill chunk of 16 ends, not once at the end of its batch."""
    from uqflow.generation.hf import HFEngine

    ids = _ids(smollm, 20)
    engine = HFEngine(smollm, max_new_tokens=6)
    calls = []
    engine.sample(ids[:4], 3, seed=1, progress=lambda rows, tokens=0: calls.append((rows, tokens)))
    assert sum(r for r, _ in calls) == 12 and sum(t for _, t in calls) == engine.tokens["sampled"]
    assert calls[0][0] == 0 and calls[0][1] > 0
    rows = []
    engine.continuation_logprobs(ids, [[engine.lm.tokenizer.encode(" A")[-1]]] * 20, progress=rows.append)
    assert engine.prefill_chunk == 16 and rows == [16, 4]


@pytest.mark.slow
def test_a_run_reports_its_stages_with_tokens(tracking, smollm, tmp_path, monkeypatch):
    """A whole run's stages as the display hears them: the model's loading (timed), then greedy
    answers, sampling and p(True), the decoding ones with their tokens, each ending done."""
    from uqflow.config import RunConfig
    from uqflow.experiment import run_experiment

    monkeypatch.setattr("uqflow.experiment.cache_root", lambda: tmp_path / "cache")
    calls = []
    cfg = RunConfig(num_samples=3, max_new_tokens=8, n_bootstrap=50, num_generations=2,
                    entailment="llm:SmolLM2-135M-Instruct")
    run_experiment(cfg, lm=lambda: smollm,
                   progress=lambda done, total, stage, tokens=0: calls.append((stage, done, total, tokens)))
    stages = list(dict.fromkeys(stage for stage, *_ in calls))
    assert stages == ["loading SmolLM2-135M-Instruct", "greedy answers", "sampling 2 answers each", "p(True)",
                      "judging and scoring"]
    assert [c[1:] for c in calls if c[0] == stages[0]] == [(0, None, 0), (1, None, 0)]
    for stage in ("greedy answers", "sampling 2 answers each"):
        mine = [c for c in calls if c[0] == stage]
        assert mine[-1][1:3] == (3, 3) and mine[-1][3] > 0
        assert any(done == 0 and tokens > 0 for _, done, _, tokens in mine)  # moved before a question was done
    assert [c for c in calls if c[0] == "p(True)"][-1][1:3] == (3, 3)


def test_a_grids_lines_name_their_cell():
    """A grid's progress has no label of its own: each cell names itself in its stages, so a log of
    many cells tells which one each line is about."""
    from uqflow.grid import _cell_progress

    out = io.StringIO()
    progress = StageProgress("", file=out)
    for cell in ("A x trivia_mini", "B x squad_mini"):
        report = _cell_progress(progress, cell)
        report(0, 2, "greedy answers")
        report(2, 2, "greedy answers", tokens=5)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "A x trivia_mini: greedy answers (2 questions)..."
    assert any(line.startswith("B x squad_mini: greedy answers done in ") for line in lines), lines
    assert not any(line.startswith(":") for line in lines)


def test_a_terminal_that_reports_no_size_still_shows_the_bar():
    """A pseudo-terminal opened without a size (`script`, `docker exec -t`) reports 0 rows, which
    made tqdm hide every bar: the stage's bar is drawn there too, at a fixed width."""
    import os
    import pty

    leader, follower = pty.openpty()  # no size set: 0 rows, 0 columns
    assert os.get_terminal_size(follower).lines == 0
    out = os.fdopen(follower, "w", buffering=1)
    try:
        progress = StageProgress("M x D", file=out)
        assert progress.tty
        progress(0, 4, "greedy answers")
        progress(4, 4, "greedy answers", tokens=40)
        progress.close()
        out.flush()
        shown = os.read(leader, 65536).decode(errors="replace")
    finally:
        out.close()
        os.close(leader)
    assert re.search(r"M x D: greedy answers: 4/4 q \|█+\| 40 tok", shown), shown
