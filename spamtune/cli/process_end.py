"""How the ``spamtune`` process ends: without tearing the interpreter down when nothing needs it.

Python's own exit frees every module and object one by one after the command is done: 0.3 s
for a training run or a prediction with torch loaded on the 2-core CI machine (0.7 s after a
gpt2-small first run), and the kernel frees the memory at exit anyway. So once the command has
returned, the exit runs what must still run, in Python's order (``atexit`` callbacks, which
include ``weakref.finalize`` and logging's flush), flushes stdout and stderr, and ends the
process with ``os._exit``.

Python's way stays where the shortcut would lose something: a thread that is not a daemon is
still running (Python would wait for it), a tracer or coverage is recording, the interpreter
lacks the private ``atexit._run_exitfuncs``, or the exit status is not a number.
"""

from __future__ import annotations

import atexit
import errno
import os
import signal
import sys
import threading
from typing import NoReturn

from spamtune.cli import common


def end_process(status: object) -> NoReturn:
    """End the process with ``status`` (what ``sys.exit`` was given)."""
    work_done()
    if status is None:
        status = 0
    if not isinstance(status, int) or not _nothing_needs_teardown():
        sys.exit(status)
    atexit._run_exitfuncs()
    os._exit(_flushed(status))


def work_done() -> None:
    """From here on Ctrl-C is ignored: what the command was asked to do is done (a run's files
    are complete), and only its report and the exit remain. An interrupt now would be nothing
    stopped, only a finished command told as interrupted, or, inside an exit callback,
    Python's "Exception ignored in atexit callback" and a traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _nothing_needs_teardown() -> bool:
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    recording = sys.gettrace() is not None or "coverage" in sys.modules
    return not others and not recording and hasattr(atexit, "_run_exitfuncs")


def _flushed(status: int) -> int:
    """Flush the standard streams; a failure to write what a command printed fails the exit
    (as Python's own exit does, with one line instead of its warning) with the command's error
    status (2 where 1 is an answer, ``predict --fail-on-spam``), unless the reader left."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                continue
            if stream is sys.stdout:
                try:
                    print(f"Error: cannot write the output: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr, flush=True)
                except (OSError, ValueError):
                    pass
                status = max(status, common.error_exit_code())
    return status
