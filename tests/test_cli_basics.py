"""Conventions every subcommand follows: help with examples, flags without values, exit codes,
--quiet/--verbose, shell completion."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from spamtune import __version__
from spamtune.cli import app

# Every command a user can run, as its words after `spamtune`.
COMMANDS = [
    [], ["download"], ["download", "data"], ["download", "model"], ["prepare"], ["finetune"], ["evaluate"],
    ["predict"], ["runs"], ["runs", "show"], ["runs", "rm"],
]


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, list(args), **kwargs)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"spamtune {__version__}"


def test_no_arguments_prints_help_only():
    result = invoke()
    assert "Usage" in result.output and "spamtune" in result.output
    assert "Error" not in result.output  # no empty "Error:" line under the help
    assert result.exit_code == 2  # a usage error, as for any missing command


def test_unknown_option_is_one_line_usage_error():
    result = invoke("--frobnicate")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: No such option: --frobnicate")


# Their modules are being rewritten on another branch; their examples come with that rewrite.
PENDING_EXAMPLES = (["prepare"], ["finetune"], ["evaluate"])


@pytest.mark.parametrize(
    "words",
    [pytest.param(w, marks=pytest.mark.xfail(strict=True)) if w in PENDING_EXAMPLES else w for w in COMMANDS],
    ids=lambda w: " ".join(w) or "spamtune",
)
def test_every_help_has_examples_and_no_bool_metavar(words):
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout
    examples = result.stdout.split("Examples:")[1]
    assert 2 <= examples.count("spamtune ") <= 3 * 2, examples  # two or three commands (some chain two)
    assert "<bool>" not in result.stdout


@pytest.mark.parametrize("words", [w for w in COMMANDS if w not in ([], ["download"], ["runs"])], ids=" ".join)
def test_every_subcommand_takes_quiet_and_verbose(words):
    help_text = invoke(*words, "--help").stdout
    assert "--quiet" in help_text and "--verbose" in help_text


def test_shell_completion_is_offered():
    help_text = invoke("--help").stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text


def test_python_dash_m_and_console_script():
    out = subprocess.run([sys.executable, "-m", "spamtune", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Usage" in out.stdout


def test_cli_choices_match_the_core():
    from spamtune import device, model
    from spamtune.cli import common

    assert common.DEVICES == device.DEVICES
    assert common.PRECISIONS == device.PRECISIONS
    assert common.POOLINGS == model.POOLINGS
    assert set(common.MODEL_NAMES) == set(model.MODEL_SIZES)
