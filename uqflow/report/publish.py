"""A report written whole before it replaces the last one: an interrupted ``uqflow report`` (Ctrl-C,
SIGTERM, a full disk, an error while drawing) leaves the previous report.html, summary.json and
figures/ as they were, and nothing half-written beside them.

Why not build a sibling folder and swap it for ``--out`` in two renames: ``--out`` may hold files
of the user's (the default ``reports/`` is a name people keep other things under, ``--out .`` is
the working directory), and replacing the folder would delete them. So only the report's own
entries (:data:`REPORT_FILES`) are replaced. The report is written into a hidden staging folder
inside ``--out`` (the same file system, so each move is one rename); then summary.json and
report.html each replace their old file atomically, and figures/, a folder, which cannot replace a
non-empty folder in one rename, first moves the old figures/ into the staging folder (deleted with
it) and then takes its place. Stop signals are held back during these few renames, so Ctrl-C or
SIGTERM lands before the swap (the old report is whole) or after it (the new one is); only a
SIGKILL in those microseconds can leave a mixture. A staging folder left by a killed process is
removed by the next report into the same folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from uqflow.errors import UqflowError

#: the report's own entries in ``--out``, in the order they are swapped in: report.html last, so
#: that the page a reader opens changes only once what it describes is in place
REPORT_FILES = ("figures", "summary.json", "report.html")
#: name of a report being written: the prefix, the writing process's id, a random part
STAGING_PREFIX = ".uqflow-report-partial."
#: what stops a run here (Ctrl-C; SIGTERM and SIGHUP, which the command line raises as Terminated)
_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new, empty staging folder inside ``out`` (created if missing) to write a report into, then
    hand to :func:`publish`; removed on leaving, however that happens, with whatever it still holds.
    A folder ``out`` that this call created and that is left empty is removed too."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}.", dir=out))
    except OSError as e:
        raise UqflowError(f"cannot write the report to {out}: {e.strerror or e}") from None
    try:
        yield tmp
    except OSError as e:  # a full disk, a folder made read-only meanwhile: the old report is untouched
        raise UqflowError(f"cannot write the report to {out}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: a first report that was interrupted


def publish(staged: Path, out: Path) -> None:
    """Move the report's own entries from ``staged`` into ``out``, each replacing the old one,
    report.html last; the old figures/ ends up in ``staged``, to be removed with it."""
    previous = staged / ".previous"
    previous.mkdir()
    with _stop_signals_held():
        for name in REPORT_FILES:
            new, dest = staged / name, out / name
            aside = os.path.lexists(dest) and (dest.is_dir() or new.is_dir())  # a rename cannot replace a folder
            if aside:
                os.replace(dest, previous / name)
            try:
                os.replace(new, dest)
            except OSError:
                if aside:
                    os.replace(previous / name, dest)
                raise


def remove_stale(out: Path) -> None:
    """Remove the staging folders in ``out`` whose process has ended (killed while writing)."""
    for p in out.glob(f"{STAGING_PREFIX}*"):
        pid = p.name[len(STAGING_PREFIX):].partition(".")[0]
        if p.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` may still be writing (when unsure: yes, and its folder is kept)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Stop signals that arrive meanwhile are delivered on leaving (where the platform can hold them)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
