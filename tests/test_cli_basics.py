import subprocess
import sys

from typer.testing import CliRunner

from spamtune import __version__
from spamtune.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"spamtune {__version__}"


def test_no_arguments_shows_help():
    result = CliRunner().invoke(app, [])
    assert "Usage" in result.output and "spamtune" in result.output


def test_unknown_option_is_one_line_usage_error():
    result = CliRunner().invoke(app, ["--frobnicate"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: No such option: --frobnicate")


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "spamtune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout
