"""The ``spamtune`` command's entry point (the console script and ``python -m spamtune``).

Ctrl-C ends the command with one line and exit status 130 from its first line of code. The CLI takes
~0.1 s to import (Typer, Rich, every subcommand's options): a Ctrl-C then would print Python's
traceback, so it is caught around that import here, in a module that imports next to nothing.
torch's import, when a command first needs it, runs with Ctrl-C held (see
``interrupts.hold_sigint_while_torch_loads``).
"""

from __future__ import annotations

import os
import sys

from spamtune.interrupts import hold_sigint_while_torch_loads


def main() -> None:
    _closed_stderr_to_devnull()
    hold_sigint_while_torch_loads()
    try:
        from spamtune.cli import main as run_command

        run_command()
    except KeyboardInterrupt:  # before (or after) the CLI's own handling: its line, its status
        print("Error: interrupted", file=sys.stderr, flush=True)
        # Not sys.exit: an interrupt raised in code run by exec or eval (dataclasses and inspect
        # make functions that way while the CLI imports) marks it unhandled to the interpreter,
        # which then ends `python -m spamtune` by SIGINT in place of the status given.
        _exit_now(130)


def _exit_now(status: int) -> None:
    """Flush what was printed and end the process with ``status``, at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(status)


def _closed_stderr_to_devnull() -> None:
    """A process started with stderr closed (``2>&-``) has ``sys.stderr`` None, and ``print(...,
    file=sys.stderr)`` then writes to stdout: notes, warnings and ``Error:`` lines would land
    among the results a pipeline reads. They go to /dev/null instead, on file descriptor 2, so
    that no file opened later (``--out``'s temporary) takes that number and gets what native
    code writes to stderr."""
    if sys.stderr is not None:
        return
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.fstat(2)
    except OSError:  # free: /dev/null takes it
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
        fd = 2
    sys.stderr = open(fd, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - for the process's life
