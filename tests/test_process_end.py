"""How the command ends: exit callbacks run and output is flushed, then the process ends
without the interpreter's teardown, unless something still needs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

# Runs the command's entry point after planting: an exit callback, a module-level object that
# says when the interpreter's teardown frees it, and optionally text waiting in stdout's
# buffer and a running thread that is not a daemon.
SCRIPT = """
import atexit, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored
class Freed:
    def __del__(self):
        sys.stderr.write("torn down\\n")
kept = Freed()
atexit.register(lambda: ({ctrl_c} and signal.raise_signal(signal.SIGINT), sys.stderr.write("exit callback\\n")))
sys.stdout.write("x" * {buffered})
if {thread}:
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
from spamtune.cli import main
sys.argv = ["spamtune", *{args!r}]
main()
"""


def run(args=("--version",), buffered=0, thread=False, stdout=subprocess.PIPE, ctrl_c=False):
    code = SCRIPT.format(args=list(args), buffered=buffered, thread=thread, ctrl_c=ctrl_c)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COVERAGE_PROCESS_START", None)
    env.pop("PYTHONUNBUFFERED", None)  # the output must wait in the buffer for the exit
    return subprocess.run([sys.executable, "-c", code], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=120)


def test_a_finished_command_skips_the_teardown_but_not_the_exit_callbacks():
    result = run()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("spamtune ")
    assert "exit callback" in result.stderr
    assert "torn down" not in result.stderr


def test_buffered_output_reaches_the_reader_whole():
    result = run(buffered=3_000_000)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("x" * 3_000_000)
    assert result.stdout[3_000_000:].startswith("spamtune ")


def test_the_exit_status_of_a_failed_command_is_kept(tmp_path):
    result = run(("predict", "--run", str(tmp_path / "missing"), "hello"))
    assert result.returncode == 1
    assert result.stderr.count("Error:") == 1
    assert "exit callback" in result.stderr


def test_a_running_thread_is_waited_for_as_python_would():
    result = run(thread=True)
    assert result.returncode == 0, result.stderr
    assert "thread done" in result.stdout
    assert "exit callback" in result.stderr


@pytest.mark.parametrize("thread", [False, True], ids=["shortcut", "python's exit"])
def test_ctrl_c_while_the_process_ends_is_ignored(thread):
    """The command is done: an exit callback (torch's, say) cut short by Ctrl-C would print
    Python's "Exception ignored in atexit callback" and a traceback, or a finished command would
    be told as interrupted."""
    result = run(thread=thread, ctrl_c=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("spamtune ")
    assert result.stderr.replace("torn down\n", "") == "exit callback\n"  # torn down: Python's own exit


def test_a_command_whose_output_fills_the_disk_says_so_in_one_line():
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "spamtune", "--version"], stdout=full, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: cannot write the output: No space left on device"


def test_output_that_cannot_be_written_fails_the_exit_with_one_line():
    with open("/dev/full", "w") as full:
        result = run(buffered=100, stdout=full)
    assert result.returncode == 1
    assert "Error: cannot write the output" in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr


def test_a_lost_output_is_an_error_status_not_an_answer(monkeypatch, capsys):
    """Under ``predict --fail-on-spam`` exit 1 means "spam found": output that could not be
    written is an error there, 2, whatever the answer was."""
    import errno

    from spamtune.cli import common, process_end

    class Full:
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    common.use_error_exit_code(2)
    try:
        assert [process_end._flushed(status) for status in (0, 1)] == [2, 2]
    finally:
        common.reset([])
    assert [process_end._flushed(status) for status in (0, 1, 130)] == [1, 1, 130]
    assert capsys.readouterr().err.count("Error: cannot write the output") == 5
