"""Ctrl-C: one line, exit status 130, never a traceback or a bug report."""

from __future__ import annotations

import signal

import pytest
from typer.testing import CliRunner

from spamtune.cli import app


@pytest.fixture(autouse=True)
def python_takes_ctrl_c():
    """Python's own SIGINT handler, as in a terminal: a shell's background job starts with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(tmp_path, monkeypatch):
    """Typer alone would end the command with status 130 and nothing said."""
    from spamtune import run_catalog

    def ctrl_c(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_catalog, "list_runs", ctrl_c)
    result = CliRunner().invoke(app, ["runs", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 130
    assert result.stdout == "" and result.stderr == "Error: interrupted\n"
