"""uqflow's own progress display, the only one a command shows (the libraries' bars are off).

A run reports its progress by stage (loading the model, greedy answers, sampling, p(True),
scoring, ...) through one callable, ``progress(done, total, stage, tokens=0)``: ``done`` of
``total`` questions of ``stage`` are done and ``tokens`` tokens have been decoded in it so far
(0 where the stage decodes nothing, or its engine does not count them). A new ``stage`` ends the
one before. ``total`` None is a stage that is timed, not counted (loading a model): ``done`` is 0
as it starts and 1 as it ends. The engines feed the decoding stages through a finer callable of
their own (``uqflow.generation.base.Reports``), so that a stage moves within a batch as its tokens
are decoded, not only as its questions finish.

:class:`StageProgress` is the callable the command line passes."""

from __future__ import annotations

import os
import sys
import threading
import time

import click

#: seconds between two progress lines of a stage in a log or a pipe (UQFLOW_HEARTBEAT_SECONDS)
HEARTBEAT_SECONDS = 30.0
#: seconds between two redraws of a terminal's bar when nothing is reported, so that its clock
#: moves on through a long prefill or a single forward pass
REDRAW_SECONDS = 1.0

#: a terminal's bar (tqdm's bar_format, ``tokens`` filled in at each redraw): the stage, questions
#: done, the bar, tokens decoded and their rate, time spent and left; a narrow terminal cuts the right end
BAR = "{{desc}}: {{n_fmt}}/{{total_fmt}} q |{{bar}}|{tokens} [{{elapsed}}<{{remaining}}]"
#: a terminal's line for a stage that is timed, not counted (loading a model)
TIMED = "{desc} [{elapsed}]"
#: the rows tqdm may draw bars on where the terminal reports none: more than a command ever shows
#: at once (a grid's cells and its stage)
BAR_ROWS = 8


def bar_size(file) -> dict:
    """tqdm's size arguments for a bar on ``file``: following the terminal's size as it changes
    where the terminal reports one; else (a pseudo-terminal opened without a size: `script`,
    `docker exec -t`, whose 0 rows make tqdm hide every bar) the width of ``COLUMNS`` or 80 and
    :data:`BAR_ROWS` rows, fixed."""
    import shutil

    try:
        rows = os.get_terminal_size((file or sys.stderr).fileno()).lines
    except (AttributeError, OSError, ValueError):
        rows = 0
    if rows > 0:
        return {"dynamic_ncols": True}
    return {"ncols": shutil.get_terminal_size((80, BAR_ROWS)).columns - 1, "nrows": BAR_ROWS}

#: environment variables by which the libraries that load models, data and artifacts turn their
#: progress bars off (read when each is imported; transformers follows huggingface_hub's)
LIBRARY_BARS_OFF = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def library_bars_off() -> None:
    """Turn off the progress bars of transformers (a model's "Loading weights"), huggingface_hub
    (downloads), datasets and MLflow (artifact downloads): through the environment for libraries not
    imported yet (and the processes this one starts), directly for those already imported."""
    os.environ.update(LIBRARY_BARS_OFF)
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].disable_progress_bar()  # huggingface_hub's too
    elif "huggingface_hub.utils" in sys.modules:
        sys.modules["huggingface_hub.utils"].disable_progress_bars()
    if "datasets.utils.tqdm" in sys.modules:
        sys.modules["datasets.utils.tqdm"].disable_progress_bars()


class StageProgress:
    """A run's progress by stage (``progress(done, total, stage, tokens=0)``, see the module): on a
    terminal a bar per stage with questions done, tokens decoded, tokens/s and time left (tqdm),
    redrawn at least every REDRAW_SECONDS and kept with its time when the stage ends; elsewhere (a
    log, a pipe, a Ray worker's output) one line as each stage starts and ends and a heartbeat line
    at least every HEARTBEAT_SECONDS between (questions done, tokens decoded, elapsed, time left),
    so a long stage never goes silent.

    ``label`` begins each line (a run's model and dataset); a grid's progress has none, each cell
    naming itself in its stages. ``file``: where it writes (default: stderr at the time of writing);
    ``tty``: draw bars (default: whether ``file`` is a terminal)."""

    def __init__(self, label: str, file=None, tty: bool | None = None):
        self.label, self.file = label, file
        self.tty = (file or sys.stderr).isatty() if tty is None else tty
        self.every = float(os.environ.get("UQFLOW_HEARTBEAT_SECONDS") or HEARTBEAT_SECONDS)
        self.stage, self.name, self.bar, self.started = None, "", None, 0.0  # started 0: no stage running
        self.done, self.total, self.tokens = 0, 0, 0
        self._lock, self._quiet = threading.Lock(), threading.Event()

    def __call__(self, done: int, total: int | None, stage: str = "answers", tokens: int = 0) -> None:
        with self._lock:
            if stage != self.stage or (not self.started and done == 0):  # a new stage, or one begun again
                self._end()
                self._start(stage, total)
            if not self.started:  # the stage has ended; a late report changes nothing
                return
            self.done, self.total, self.tokens = done, total, tokens
            if self.bar is not None:
                self._draw()
            if done >= (1 if total is None else total):
                self._finish()

    def close(self) -> None:
        with self._lock:
            self._end()
            self.stage = None

    def _start(self, stage: str, total: int | None) -> None:
        from tqdm import tqdm

        from uqflow.console import inert  # a stage may name a model of the user's registry file

        self.stage, self.started = stage, time.perf_counter()
        self.done, self.total, self.tokens = 0, total, 0
        self.name = name = f"{self.label}: {inert(stage, one_line=True)}" if self.label else inert(stage, one_line=True)
        if self.tty:
            self.bar = tqdm(desc=name, total=total, unit="q", leave=True, file=self.file, **bar_size(self.file),
                            bar_format=TIMED if total is None else BAR.format(tokens=""))
        else:
            self._echo(f"{name}..." if total is None else f"{name} ({total} questions)...")
        self._quiet = quiet = threading.Event()  # the previous stage's heartbeat stopped at its end
        threading.Thread(target=self._heartbeat, args=(quiet,), daemon=True, name="uqflow-heartbeat").start()

    def _draw(self) -> None:
        """The bar at the last report: questions done, and tokens decoded with their rate."""
        if self.total is not None:
            self.bar.total, self.bar.n = self.total, self.done
            self.bar.bar_format = BAR.format(tokens=f" {self._tokens(short=True)}" if self.tokens else "")
        self.bar.refresh()

    def _tokens(self, short: bool = False) -> str:
        """Tokens decoded in the stage and tokens/s since it started ("" when none were reported)."""
        if not self.tokens:
            return ""
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        return f"{self.tokens:,} tok, {rate:,.0f} tok/s" if short else f"{self.tokens:,} tokens, {rate:,.0f} tokens/s"

    def _finish(self) -> None:
        """The stage is done: its bar kept with its time, or its last line."""
        if self.bar is None:
            tokens = self._tokens()
            self._echo(f"{self.name} done in {time.perf_counter() - self.started:.0f} s"
                       + (f": {tokens}" if tokens else ""))
        self._end()

    def _end(self) -> None:
        self._quiet.set()
        self.started = 0.0
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _heartbeat(self, quiet: threading.Event) -> None:
        """A redraw of the bar every REDRAW_SECONDS, or a line every ``every`` seconds, until ``quiet``."""
        while not quiet.wait(min(self.every, REDRAW_SECONDS) if self.tty else self.every):
            with self._lock:
                if quiet.is_set():
                    return
                if self.bar is not None:
                    self._draw()
                else:
                    self._echo(self._beat_line())

    def _beat_line(self) -> str:
        elapsed = time.perf_counter() - self.started
        parts = [f"{self.name}: "]
        if self.total is not None:
            parts.append(f"{self.done}/{self.total} questions, ")
        if self.tokens:
            parts.append(f"{self._tokens()}, ")  # 0/30 questions, 1,234 tokens, 85 tokens/s, 40 s
        parts.append(f"{elapsed:.0f} s")
        if self.total is not None and self.done:
            parts.append(f", about {elapsed / self.done * (self.total - self.done):.0f} s left")
        return "".join(parts)

    def _echo(self, line: str) -> None:
        click.echo(line, file=self.file, err=True)


__all__ = ["HEARTBEAT_SECONDS", "StageProgress", "bar_size", "library_bars_off"]
