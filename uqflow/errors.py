"""Domain errors. The library raises these; only ``cli.py`` turns them into exit codes."""


def short(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (with its full length) for an error message, so
    a value from a user's file is never printed whole."""
    return clip(repr(value), limit)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, with its full length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP): handled as Ctrl-C is, so that
    every run in progress ends KILLED with the signal as its reason."""

    #: the last stop signal raised in this process: some libraries catch a KeyboardInterrupt raised
    #: inside their blocking calls and raise a plain one instead (Ray's ``ray.wait`` does), so the
    #: signal is remembered here as well as carried by the exception
    received: int | None = None

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.signame = signal.Signals(signum).name
        Terminated.received = signum
        super().__init__(self.signame)


#: a stop signal received and not yet acted on (see :func:`raise_if_stopped`)
_pending_stop: int | None = None


def note_stop(signum: int) -> None:
    """Remember that a stop signal arrived (the CLI's signal handlers call this before raising)."""
    global _pending_stop
    _pending_stop = signum


def clear_stop() -> None:
    """The stop was acted on (the interruption reached the command's boundary)."""
    global _pending_stop
    _pending_stop = None


def raise_if_stopped() -> None:
    """Raise again a stop that a library swallowed. Python runs a signal's handler wherever the main
    thread is, and an exception raised inside a weakref callback or ``__del__`` (SQLAlchemy's
    class registry has one, run by the garbage collector) is printed as "Exception ignored" and
    lost, so Ctrl-C or SIGTERM would be ignored; loops that run long (the decoding loop, a grid's
    cells) call this to act on it."""
    import signal

    signum = _pending_stop
    if signum is None:
        return
    clear_stop()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def stop_signal(interruption: BaseException) -> tuple[str, int]:
    """The name and number of the signal behind an interruption: the one a :class:`Terminated`
    carries, else one raised as Terminated that a library turned into a plain KeyboardInterrupt,
    else Ctrl-C's SIGINT."""
    import signal

    signum = interruption.signum if isinstance(interruption, Terminated) else Terminated.received or signal.SIGINT
    name = signal.Signals(signum).name
    return ("KeyboardInterrupt" if signum == signal.SIGINT else name), int(signum)


class UqflowError(Exception):
    """Base class of every error uqflow reports to a user (no traceback shown)."""


class UnknownName(UqflowError):
    """A registry lookup for a name that is not registered."""


class UnknownModel(UnknownName):
    """A model name that is neither registered nor a local model directory."""


class UnknownDataset(UnknownName):
    """A dataset name that is neither registered nor a local file."""


class ConfigError(UqflowError):
    """A run configuration value that is out of range or of the wrong type."""


class UnknownChoice(UnknownName, ConfigError):
    """A setting naming what nothing registers: a generation engine, a judge, an entailment judge."""


class DatasetError(UqflowError):
    """A dataset that cannot be loaded: missing file, malformed record, hub unreachable."""


class ModelLoadError(UqflowError):
    """A model that cannot be loaded: missing package, no hub access, missing extra."""


class ModelRegistryError(UqflowError):
    """A user's model registry file that is missing, malformed or inconsistent."""


class TrackingError(UqflowError):
    """The MLflow tracking store cannot be reached or refuses a request."""


class StoreError(UqflowError):
    """The results store cannot be reached, migrated, written or queried."""


class QueryError(UqflowError):
    """A query that the read-only query command refuses or the database rejects."""


class ClusterError(UqflowError):
    """A Ray cluster that is not installed, cannot be reached, or has no node that can hold a cell."""


class GridBusy(UqflowError):
    """Another driver holds the claim on cells of this grid in the tracking store."""


class CellTaken(UqflowError):
    """Another live process runs (or has finished) the cell a grid was about to run; the run started
    for it ends KILLED with this reason."""
