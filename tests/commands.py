"""The command line as the tests run it, defined once: in this process through click's CliRunner
(:func:`invoke`: messages and the exit codes of user mistakes, fast), or as a user runs it, in a
process of its own (:data:`UQFLOW`: signals, the interpreter's exit codes, the environment)."""

import sys

from click.testing import CliRunner

from uqflow.cli import cli

#: the command that starts uqflow in a process of its own, with this interpreter
UQFLOW = (sys.executable, "-m", "uqflow")


def invoke(*args):
    """``uqflow <args>`` in this process; returns click's Result (exit_code, output, exception)."""
    return CliRunner().invoke(cli, [str(a) for a in args])
