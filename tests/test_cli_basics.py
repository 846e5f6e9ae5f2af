"""Conventions every subcommand follows: help with examples, flags without values, exit codes,
--quiet/--verbose, shell completion."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spamtune import __version__
from spamtune.cli import app

# Every command a user can run, as its words after `spamtune`.
COMMANDS = [
    [], ["download"], ["download", "data"], ["download", "model"], ["prepare"], ["finetune"], ["evaluate"],
    ["calibrate"], ["predict"], ["filter"], ["serve"], ["runs"], ["runs", "show"], ["runs", "rm"], ["sweep"],
    ["sweeps"], ["sweeps", "show"], ["sweeps", "rm"],
    ["export"], ["cache"], ["cache", "ls"], ["cache", "rm"], ["bases"], ["bases", "ls"], ["bases", "rm"],
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


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "spamtune")
def test_every_help_has_examples_and_no_bool_metavar(words):
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout
    examples = result.stdout.split("Examples:")[1]
    assert 2 <= examples.count("spamtune ") <= 3 * 2, examples  # two or three commands (some chain two)
    assert "<bool>" not in result.stdout


def test_every_command_line_in_the_listings_is_a_whole_sentence():
    """A listing (spamtune --help, a group's --help) shows each command's first sentence: one that
    runs on past a colon into a list would show cut off at the colon."""
    import typer.main

    def listed(group, words: list[str]) -> list[tuple[str, str]]:
        found = []
        for name, sub in group.commands.items():
            found.append((" ".join([*words, name]), sub.get_short_help_str(limit=200)))
            if hasattr(sub, "commands"):  # a group: its own listing
                found += listed(sub, [*words, name])
        return found

    lines = listed(typer.main.get_command(app), [])
    assert len(lines) == len(COMMANDS) - 1
    for name, line in lines:
        assert line.endswith("."), (name, line)


@pytest.mark.parametrize("words", [w for w in COMMANDS if w not in ([], ["download"], ["runs"], ["cache"], ["bases"])], ids=" ".join)
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
    from spamtune import device, model, model_names
    from spamtune.cli import common

    assert common.DEVICES == device.DEVICES
    assert common.PRECISIONS == device.PRECISIONS
    assert common.POOLINGS == model.POOLINGS
    assert set(common.MODEL_NAMES) == set(model.MODEL_SIZES)
    assert set(model_names.PRETRAINED_SIZES) <= set(model.MODEL_SIZES)
    assert set(model_names.MODEL_ALIASES.values()) <= set(model.MODEL_SIZES)


def shell_completion(words: str, home: Path) -> subprocess.CompletedProcess:
    """What bash's completion gets for the command line ``words``, with ``SPAMTUNE_HOME=home``."""
    env = {**os.environ, "_SPAMTUNE_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)), "SPAMTUNE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "spamtune"], env=env, capture_output=True, text=True, timeout=60)


def test_completion_offers_commands_choices_and_run_names(tmp_path):
    (tmp_path / "runs" / "20261125-101500-tiny-all").mkdir(parents=True)
    (tmp_path / "runs" / "20261125-101500-tiny-all" / "hparams.json").write_text("{}")

    def complete(words: str) -> list[str]:
        out = shell_completion(words, tmp_path)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("spamtune pr") == ["prepare", "predict"]
    assert complete("spamtune predict --precision ") == ["auto", "fp32", "bf16", "fp16"]
    assert complete("spamtune runs show 2026") == ["20261125-101500-tiny-all"]
    for name in ("sweep-3f9a1c2b7d4e", "sweep-3f00aa000000"):
        (tmp_path / "sweeps" / name).mkdir(parents=True)
        (tmp_path / "sweeps" / name / "sweep.json").write_text("{}")
    (tmp_path / "sweeps" / "not-a-sweep").mkdir()
    assert complete("spamtune sweeps show sweep-3f") == ["sweep-3f00aa000000", "sweep-3f9a1c2b7d4e"]
    assert complete("spamtune sweeps rm sweep-3f9") == ["sweep-3f9a1c2b7d4e"]


def test_completion_of_run_names_follows_a_typed_data_dir_and_never_prints_an_error(tmp_path):
    other = tmp_path / "other"
    (other / "runs" / "elsewhere-run").mkdir(parents=True)
    (other / "runs" / "elsewhere-run" / "hparams.json").write_text("{}")
    (tmp_path / "a-file").write_text("")
    for words in (f"spamtune predict --data-dir {other} --run ", f"spamtune runs --data-dir {other} show e",
                  f"spamtune runs rm --data-dir {other} e"):  # fmt: skip
        assert shell_completion(words, tmp_path / "empty").stdout.split() == ["elsewhere-run"], words
    broken = shell_completion("spamtune predict --run ", tmp_path / "a-file")  # a data root that is a file
    assert (broken.returncode, broken.stdout.strip(), broken.stderr) == (0, "", "")


def test_not_found_errors_name_the_absolute_path_and_how_to_look_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPAMTUNE_HOME", "relative-root")
    result = invoke("prepare")
    assert result.exit_code == 1
    expected = tmp_path / "relative-root" / "sms_spam_collection" / "SMSSpamCollection"
    assert result.stderr.startswith(f"Error: SMS Spam Collection not found at {expected}; ")
    assert result.stderr.rstrip().endswith("to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR")
    missing_runs = invoke("runs", "show")
    assert f"no fine-tuned model found in {tmp_path / 'relative-root' / 'runs'}" in missing_runs.stderr


def test_quiet_leaves_stdout_and_errors_only(tmp_path):
    labelled = tmp_path / "mails.tsv"
    labelled.write_text("".join(f"{'spam' if i % 2 else 'ham'}\tmessage number {i}\n" for i in range(40)))
    loud = invoke("prepare", "--input", str(labelled), "--data-dir", str(tmp_path / "a"))
    assert loud.exit_code == 0 and "prepared splits" in loud.stderr
    quiet = invoke("prepare", "--input", str(labelled), "--data-dir", str(tmp_path / "b"), "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == loud.stdout.replace("/a/", "/b/")
    failing = invoke("prepare", "--input", str(tmp_path / "nope.tsv"), "-q")
    assert failing.exit_code == 1 and failing.stderr.startswith("Error: input file not found")


def test_help_paragraphs_wrap_to_the_terminal():
    """Rich keeps a help text's line breaks: a paragraph broken in the source prints ragged at
    any width but the one it was typed for, so each paragraph is written as one line."""
    import typer

    def commands(command, words):
        yield words, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, [*words, name])

    for words, command in commands(typer.main.get_command(app), ["spamtune"]):
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        broken = [para for text in texts for para in text.strip().split("\n\n") if "\n" in para.strip()]
        assert not broken, (" ".join(words), broken)


@pytest.mark.parametrize("words", [["runs"], ["bases", "ls"], ["cache", "ls"], ["predict", "hi"], ["prepare"]], ids=" ".join)
def test_a_data_root_that_is_a_file_is_one_error_line(tmp_path, words):
    """Listed as a root, a file would read as an empty one: "0 runs" rather than the mistake."""
    afile = tmp_path / "train.csv"
    afile.write_text("text,label\n")
    result = invoke(*words, "--data-dir", str(afile))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"Error: the data root {afile} is not a folder (--data-dir); to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR\n"


@pytest.mark.parametrize("words", [["runs"], ["bases", "ls"], ["cache", "ls"], ["predict", "hi"], ["prepare"]], ids=" ".join)
def test_a_data_root_that_is_a_dangling_link_is_one_error_line(tmp_path, words):
    """A link to a drive not mounted: not an empty root, and not mkdir's "File exists"."""
    link = tmp_path / "spamtune"
    link.symlink_to(tmp_path / "unmounted" / "spamtune")
    result = invoke(*words, "--data-dir", str(link))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        f"Error: the data root {link} is a symbolic link to {tmp_path / 'unmounted' / 'spamtune'}, which does not exist "
        "(--data-dir); to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR\n"
    )
    assert not (tmp_path / "unmounted").exists()


def test_an_output_under_a_folder_linked_to_nothing_is_one_line_naming_the_link(tmp_path):
    """mkdir's "File exists" (or "Not a directory") blamed the output for a folder on its way that
    is a symbolic link to something gone: each command that writes says which link it is."""
    from helpers import write_rigged_run, write_tiny_data

    root = write_tiny_data(tmp_path / "root")
    run = write_rigged_run(tmp_path / "run")
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "unmounted" / "results")
    cause = f"{link} is a symbolic link to {tmp_path / 'unmounted' / 'results'}, which does not exist"
    training = ["--model", str(root / "tiny.json"), "--weights", "random", "--epochs", "1", "--data-dir", str(root)]
    for words, failure in (
        (["finetune", *training, "--out", str(link / "run")], f"cannot create run folder {link / 'run'}"),
        (["sweep", *training, "--lr", "1e-3,2e-3", "--out", str(link / "sweep")], f"cannot create the sweep folder {link / 'sweep'}"),
        (["export", str(run), str(link / "model.safetensors")], f"cannot write {link / 'model.safetensors'}"),
        (["predict", "--run", str(run), "--out", str(link / "out.tsv"), "hi"], f"cannot write {link / 'out.tsv'}"),
    ):
        result = invoke(*words)
        assert (result.exit_code, result.stdout) == (1, ""), words
        assert result.stderr.splitlines()[-1] == f"Error: {failure}: {cause}", words
    assert not (tmp_path / "unmounted").exists()


def test_a_path_with_a_name_too_long_for_the_file_system_is_one_line_naming_it(tmp_path):
    from helpers import write_tiny_data

    root = write_tiny_data(tmp_path / "root")
    long = tmp_path / ("x" * 300)  # past the 255 bytes of a file name
    for words in (["cache", "ls", "--data-dir", str(long)], ["sweep", "--model", str(root / "tiny.json"), "--weights", "random",
                  "--lr", "1e-3,2e-3", "--data-dir", str(root), "--out", str(long)]):  # fmt: skip
        result = invoke(*words)
        assert result.exit_code == 1 and result.stdout == "", words
        assert result.stderr == f"Error: a name in this path is longer than the file system allows: {long}\n", words


def test_an_error_naming_what_the_user_gave_stays_one_line_and_sends_no_escape_to_the_terminal(tmp_path):
    """A path or value with a newline or an escape sequence in it is shown as Python writes it
    in a string, not acted on: one line, no colours or cursor moves from an error message."""
    odd = tmp_path / "a\nb\x1b[31mred\u2028c"
    for words in (["predict", "--input", str(odd)], ["predict", "--run", str(odd), "hi"], ["predict", "--long", "\x1b[2J", "hi"]):
        result = invoke(*words)
        assert result.exit_code in (1, 2) and result.stdout == "", words
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
        assert not any(c in result.stderr for c in "\x1b\u2028"), result.stderr
    assert "a\\nb\\x1b[31mred\\u2028c" in invoke("predict", "--input", str(odd)).stderr


def test_a_warning_naming_a_file_stays_one_line(capsys):
    from spamtune.cli import common

    common.warn("cannot read cur/a\nb\x1b[31m: Permission denied")
    assert capsys.readouterr().err == "WARNING: cannot read cur/a\\nb\\x1b[31m: Permission denied\n"


def test_with_stderr_closed_nothing_meant_for_it_lands_on_stdout(tmp_path):
    """Started with ``2>&-``, Python has no sys.stderr, and ``print(file=None)`` writes to stdout:
    an Error line (and predict's notes) came out among the results a pipeline reads."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "spamtune", "runs", "show", "nope", "--data-dir", str(tmp_path)], preexec_fn=lambda: os.close(2),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (1, "")


@pytest.mark.parametrize("words", [["cache", "ls"], ["runs"], ["export", "some-run", "-"]])
def test_a_listing_or_an_export_to_stdout_with_stdout_closed_is_one_line(tmp_path, words):
    """Started with stdout closed (``>&-``), Python has no sys.stdout: a command whose result is
    its stdout says so in one line, instead of an "unexpected AttributeError" or a listing
    silently lost with exit 0."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "spamtune", *words, "--data-dir", str(tmp_path)], preexec_fn=lambda: os.close(1),
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (1, "Error: stdout is closed: there is nowhere to write the output (redirect it instead, e.g. > /dev/null)\n")
