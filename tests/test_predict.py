"""`spamtune predict`: inputs, formats, order, robustness, exit codes, streaming and pipes.

The run is rigged (see ``helpers.write_rigged_run``): a message whose last token is "!" is
spam with p = 0.8808, every other message ham with p = 0.1192.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import P_HAM, P_SPAM, non_blocking_pipe, write_rigged_run
from typer.testing import CliRunner

from spamtune.cli import app, common
from spamtune.cli import predict as predict_cli

SPAM_P = f"{P_SPAM:.4f}"  # 0.8808
HAM_P = f"{P_HAM:.4f}"  # 0.1192


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_rigged_run(tmp_path_factory.mktemp("predict") / "run")


def invoke(run_dir, *args, input=None, **kwargs):
    return CliRunner().invoke(app, ["predict", "--run", str(run_dir), *args], input=input, **kwargs)


def tsv_rows(stdout: str) -> list[list[str]]:
    assert stdout.endswith("\n") or stdout == ""
    return [line.split("\t") for line in stdout.splitlines()]


# ---------------------------------------------------------------- inputs and order


def test_each_argument_is_one_message_tsv_by_default_off_a_terminal(run_dir):
    result = invoke(run_dir, "Do you have time", "WIN a prize now!")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"ham\t{HAM_P}\tDo you have time\nspam\t{SPAM_P}\tWIN a prize now!\n"
    assert result.stderr == ""


def test_stdin_lines_with_dash_or_without_arguments(run_dir):
    data = "WINNER!! Claim your free prize now!\n\nDo you have time\n"
    for args in (["-"], []):
        result = invoke(run_dir, *args, "--format", "jsonl", input=data)
        assert result.exit_code == 0 and result.stderr == ""
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["text"] for r in records] == ["WINNER!! Claim your free prize now!", "", "Do you have time"]
        assert [r["label"] for r in records] == ["spam", "ham", "ham"]
        assert [r["p_spam"] for r in records] == pytest.approx([P_SPAM, P_HAM, P_HAM], abs=1e-5)


def test_order_is_kept_across_chunks_and_length_sorted_batches(run_dir):
    texts = [("word " * (i % 37)) + f"message {i}" + ("!" if i % 3 == 0 else "") for i in range(1300)]
    result = invoke(run_dir, "--batch-size", "16", input="\n".join(texts) + "\n")
    rows = tsv_rows(result.stdout)
    assert [r[2] for r in rows] == texts
    assert [r[0] for r in rows] == ["spam" if i % 3 == 0 else "ham" for i in range(1300)]


def test_empty_lines_are_messages_and_a_last_line_needs_no_newline(run_dir):
    result = invoke(run_dir, input="\n\nlast one!")
    assert tsv_rows(result.stdout) == [["ham", HAM_P, ""], ["ham", HAM_P, ""], ["spam", SPAM_P, "last one!"]]
    assert invoke(run_dir, input="").stdout == ""  # no line, no message
    assert invoke(run_dir, "").stdout == f"ham\t{HAM_P}\t\n"  # an empty argument is a message


def test_invalid_utf8_is_replaced_not_fatal(run_dir):
    result = invoke(run_dir, "--format", "jsonl", input=b"bad \xff\xfe bytes!\n\xc3\xa9t\xc3\xa9 ok\n")
    assert result.exit_code == 0 and result.stderr == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == ["bad \ufffd\ufffd bytes!", "été ok"]
    assert [r["label"] for r in records] == ["spam", "ham"]


def test_crlf_lines_lose_their_carriage_return(run_dir, tmp_path):
    """A kept "\\r" would be the last token and turn "now!" into ham."""
    path = tmp_path / "windows.txt"
    path.write_bytes(b"free now!\r\nsee you\r\n\r\n")
    for args, data in ((["--file", str(path)], None), (["-"], path.read_bytes())):
        result = invoke(run_dir, *args, input=data)
        assert tsv_rows(result.stdout) == [["spam", SPAM_P, "free now!"], ["ham", HAM_P, "see you"], ["ham", HAM_P, ""]]


def test_a_byte_order_mark_opening_the_input_is_dropped_as_prepare_drops_it(run_dir, tmp_path):
    """Notepad's and PowerShell's UTF-8 files start with one; kept, it is a token of the first
    message that training never saw. Only the stream's first line loses it."""
    data = b"\xef\xbb\xbffree now!\n\xef\xbb\xbfsee you\n"
    path = tmp_path / "notepad.txt"
    path.write_bytes(data)
    for args, stdin in ((["--input", str(path)], None), (["-"], data)):
        result = invoke(run_dir, *args, "--format", "jsonl", input=stdin)
        assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["free now!", "\ufeffsee you"]
    for read_size in (1, 2, 3, 1 << 16):
        for raw, expected in (
            (data, ["free now!", "\ufeffsee you"]), (b"\xef\xbb\xbflast", ["last"]), (b"\xef\xbb", ["\ufffd"]),
            # a file of only the mark (PowerShell's empty UTF-8 file) is empty: no message, as b""
            (b"\xef\xbb\xbf", []), (b"\xef\xbb\xbf\n", [""]), (b"", []),
        ):
            chunks = predict_cli.read_message_chunks(io.BytesIO(raw), read_size=read_size)
            assert [m for c in chunks for m in c] == expected


def test_dash_among_arguments_reads_stdin_in_place(run_dir):
    result = invoke(run_dir, "first!", "-", "last", "--format", "label", input="a\nb!\n")
    assert result.stdout == "spam\nham\nspam\nham\n"


def test_input_option_and_its_old_spelling(run_dir, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("free now!\nsee you\n")
    expected = "spam\nham\n"
    for flag in ("--input", "-i", "--file", "-f"):
        assert invoke(run_dir, flag, str(path), "--format", "label").stdout == expected, flag
    both = invoke(run_dir, "--input", str(path), "--file", str(path))
    assert both.exit_code == 2 and "--input" in both.stderr
    assert "--file" not in invoke(run_dir, "--help").stdout  # hidden: one name per concept


def test_file_input_errors(run_dir, tmp_path):
    missing = invoke(run_dir, "--file", str(tmp_path / "nope.txt"))
    assert missing.exit_code == 1 and missing.stdout == ""
    assert missing.stderr.startswith("Error: cannot read ") and missing.stderr.count("\n") == 1
    both = invoke(run_dir, "--file", str(tmp_path / "nope.txt"), "hello")
    assert both.exit_code == 2 and "not both" in both.stderr and both.stdout == ""
    twice = invoke(run_dir, "-", "-", input="x\n")
    assert twice.exit_code == 2 and "only once" in twice.stderr


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc: a file whose reads fail")
def test_a_read_that_fails_midway_is_one_line(run_dir):
    """/proc/self/mem opens, then fails to read (EIO) as a bad disk or a dropped network share does."""
    failing = invoke(run_dir, "--input", "/proc/self/mem")
    assert failing.exit_code == 1 and failing.stderr.endswith("Error: cannot read /proc/self/mem: Input/output error\n")


def test_no_input_on_a_terminal_is_a_usage_error_not_a_hang(run_dir, monkeypatch):
    monkeypatch.setattr(predict_cli, "_stdin_is_terminal", lambda: True)
    result = invoke(run_dir)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no messages to classify")


def test_usage_error_comes_before_looking_for_a_run(tmp_path, monkeypatch):
    monkeypatch.setattr(predict_cli, "_stdin_is_terminal", lambda: True)
    result = CliRunner().invoke(app, ["predict", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no messages" in result.stderr


# ---------------------------------------------------------------- formats


def test_tsv_keeps_one_line_per_message_and_jsonl_keeps_the_text(run_dir):
    text = "a\tb\nc\r d!"
    tsv = invoke(run_dir, text, "--format", "tsv")
    assert tsv.stdout == f"spam\t{SPAM_P}\ta b c  d!\n"
    jsonl = invoke(run_dir, text, "--format", "jsonl")
    assert json.loads(jsonl.stdout) == {"text": text, "label": "spam", "p_spam": pytest.approx(P_SPAM, abs=1e-5)}
    assert jsonl.stdout.count("\n") == 1


def test_no_format_breaks_a_line_where_splitlines_or_grep_would(run_dir):
    """Python's splitlines also ends a line at \\v, \\f, \\x1c-\\x1e, U+0085, U+2028 and U+2029
    (JavaScript at the last two), and grep calls output with a NUL a binary file: each message
    is still one line for them, and jsonl still gives its text back exactly."""
    text = "a\vb\fc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\0j!"
    tsv = invoke(run_dir, text, "--format", "tsv", "--explain")
    assert tsv.stdout.splitlines() == [tsv.stdout[:-1]]
    assert tsv.stdout.split("\t")[:3] == ["spam", SPAM_P, "a b c d e f g h i j!"]
    assert "\0" not in tsv.stdout
    for args in ((), ("--explain",)):
        jsonl = invoke(run_dir, text, "--format", "jsonl", *args).stdout
        assert jsonl.splitlines() == [jsonl[:-1]]
        assert json.loads(jsonl)["text"] == text
    shown = invoke(run_dir, text, "--format", "text").stdout
    assert shown.splitlines() == [shown[:-1]] and shown.endswith("a b c d e f g h i j!\n")


def test_no_format_passes_an_escape_sequence_or_another_control_character_on(run_dir):
    """tsv wrote ESC, BEL, backspace, DEL and the C1 controls as they came (jsonl the C1s and DEL):
    a message could set the title of the terminal that showed the output, or hide itself. Each
    is written as an escape now; text shows a space, as for a line break."""
    text = "a\x1b]0;pwned\x07b\x08c\x7fd\x9b31me!"
    tsv = invoke(run_dir, text, "--format", "tsv").stdout
    assert tsv == f"spam\t{SPAM_P}\ta\\x1b]0;pwned\\x07b\\x08c\\x7fd\\x9b31me!\n"
    explained = invoke(run_dir, text, "--format", "tsv", "--explain").stdout
    assert explained.isascii() and explained.split("\t")[2] == tsv.split("\t")[2][:-1]
    for args in ((), ("--explain",)):
        jsonl = invoke(run_dir, text, "--format", "jsonl", *args).stdout
        assert jsonl.isascii() and json.loads(jsonl)["text"] == text
    assert invoke(run_dir, text, "--format", "text").stdout.endswith("  a ]0;pwned b c d 31me!\n")


def test_json_is_jsonl_and_refuses_another_format(run_dir):
    assert invoke(run_dir, "--json", "hi", "win!").stdout == invoke(run_dir, "--format", "jsonl", "hi", "win!").stdout
    both = invoke(run_dir, "--json", "--format", "tsv", "hi")
    assert both.exit_code == 2 and both.stdout == "" and both.stderr == "Error: --json and --format tsv ask for two formats; give one\n"
    assert invoke(run_dir, "--json", "--format", "jsonl", "hi").exit_code == 0  # the same format twice


def test_jsonl_writes_unicode_as_is(run_dir):
    result = invoke(run_dir, "Gratuit ! 🎉 €100", "--format", "jsonl")
    assert '"text": "Gratuit ! 🎉 €100"' in result.stdout


def test_tsv_header_names_the_fields_and_only_for_tsv(run_dir):
    result = invoke(run_dir, "--format", "tsv", "--header", "hi", "win!")
    assert result.stdout.splitlines() == ["label\tp_spam\ttext", f"ham\t{HAM_P}\thi", f"spam\t{SPAM_P}\twin!"]
    assert invoke(run_dir, "--header", "hi").stdout.startswith("label\tp_spam\ttext\n")  # tsv is the default in a pipe
    wrong = invoke(run_dir, "--format", "jsonl", "--header", "hi")
    assert wrong.exit_code == 2 and wrong.stdout == "" and "--header is for --format tsv" in wrong.stderr


def test_tsv_header_with_explain_names_its_fourth_and_fifth_columns(run_dir):
    """Three names over five columns would shift every field: pandas took the labels for an index."""
    lines = invoke(run_dir, "--format", "tsv", "--header", "--explain", "win now!", "hi").stdout.splitlines()
    header, *rows = [line.split("\t") for line in lines]
    assert header == ["label", "p_spam", "text", "explanation", "window"]
    assert all(len(row) == len(header) for row in rows) and rows[0][:3] == ["spam", SPAM_P, "win now!"]
    assert json.loads(rows[0][3])[0]["text"] == "now!"


def test_label_format(run_dir):
    assert invoke(run_dir, "x!", "y", "--format", "label").stdout == "spam\nham\n"


def test_text_format_is_readable_and_plain_off_a_terminal(run_dir):
    result = invoke(run_dir, "WIN now!", "Do you have time", "esc \x1b[31m", "--format", "text")
    assert result.stdout.splitlines() == [
        "spam  p(spam)=0.881  WIN now!",
        "ham   p(spam)=0.119  Do you have time",
        "ham   p(spam)=0.119  esc  [31m",  # control characters never reach the terminal
    ]


def test_text_is_the_default_on_a_terminal_with_colour_unless_no_color(run_dir, monkeypatch):
    monkeypatch.setattr(predict_cli, "_stdout_is_terminal", lambda: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    coloured = invoke(run_dir, "WIN now!", "hello").stdout.splitlines()
    assert coloured == ["\x1b[1;31mspam\x1b[0m  p(spam)=0.881  WIN now!", "\x1b[32mham \x1b[0m  p(spam)=0.119  hello"]
    monkeypatch.setenv("NO_COLOR", "")  # empty is unset (no-color.org)
    assert invoke(run_dir, "hello").stdout == coloured[1] + "\n"
    monkeypatch.setenv("NO_COLOR", "1")
    assert invoke(run_dir, "hello").stdout == "ham   p(spam)=0.119  hello\n"
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv("NO_COLOR")
    assert invoke(run_dir, "hello").stdout == "ham   p(spam)=0.119  hello\n"


# ---------------------------------------------------------------- decisions and exit codes


def test_threshold_moves_the_spam_decision(run_dir):
    texts = ["hi", "buy!"]
    assert invoke(run_dir, *texts, "--format", "label").stdout == "ham\nspam\n"
    assert invoke(run_dir, *texts, "--format", "label", "--threshold", "0.9").stdout == "ham\nham\n"
    assert invoke(run_dir, *texts, "--format", "label", "--threshold", "0.1").stdout == "spam\nspam\n"
    assert invoke(run_dir, *texts, "--format", "label", "--threshold", "0").stdout == "spam\nspam\n"
    bad = invoke(run_dir, "hi", "--threshold", "1.5")
    assert bad.exit_code == 2 and bad.stdout == "" and "threshold" in bad.stderr


def test_fail_on_spam_exit_status_comes_after_all_output(run_dir):
    spam = invoke(run_dir, "--fail-on-spam", "--format", "label", input="hello\nwin!\nbye\n")
    assert spam.exit_code == 1
    assert spam.stdout == "ham\nspam\nham\n" and spam.stderr == ""
    clean = invoke(run_dir, "--fail-on-spam", "hello", "bye")
    assert clean.exit_code == 0 and clean.stdout.count("\n") == 2


def test_fail_on_spam_errors_exit_2_so_scripts_can_tell_them_from_spam(run_dir, tmp_path):
    """grep's convention: 0 no spam, 1 spam found, 2 something went wrong."""
    missing_run = CliRunner().invoke(app, ["predict", "--data-dir", str(tmp_path), "--fail-on-spam", "hello"])
    assert missing_run.exit_code == 2 and missing_run.stderr.startswith("Error: no fine-tuned model found")
    missing_file = invoke(run_dir, "--fail-on-spam", "--input", str(tmp_path / "nope.txt"))
    assert missing_file.exit_code == 2 and missing_file.stderr.startswith("Error: cannot read")
    assert invoke(run_dir, "--input", str(tmp_path / "nope.txt")).exit_code == 1  # without the flag: 1
    assert invoke(run_dir, "--fail-on-spam", "win!").exit_code == 1
    assert invoke(run_dir, "--fail-on-spam", "hello").exit_code == 0


def test_flags_take_no_value(run_dir):
    """`--fail-on-spam true "hi"` meant a value for the flag, not a message "true"."""
    result = invoke(run_dir, "--fail-on-spam", "true", "hi")
    assert result.exit_code == 2 and result.stdout == ""
    assert "--fail-on-spam is a flag and takes no value" in result.stderr
    assert invoke(run_dir, "--fail-on-spam", "--", "true").stdout == f"ham\t{HAM_P}\ttrue\n"  # after --: a message
    assert invoke(run_dir, "true", "--format", "label").stdout == "ham\n"  # not after a flag: a message
    assert "<bool>" not in invoke(run_dir, "--help").stdout


@pytest.mark.parametrize(
    ("option", "value"), [("--device", "foo"), ("--precision", "fp8"), ("--format", "xml"), ("--threshold", "2")]
)
def test_invalid_values_are_usage_errors(run_dir, option, value):
    result = invoke(run_dir, option, value, "hello")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: Invalid value for '{option}'"), lines
    assert "Value error" not in lines[0]


def test_choices_are_listed_in_help(run_dir):
    help_text = invoke(run_dir, "--help").stdout
    for choices in ("auto|cpu|cuda|cuda:N|mps", "auto|fp32|bf16|fp16", "text|tsv|jsonl|label"):
        assert choices in help_text
    assert "Examples:" in help_text


def test_run_by_name_under_the_data_root_or_by_path(tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_rigged_run(root / "runs" / "mine")
    write_rigged_run(tmp_path / "elsewhere", labels={"spam": 0, "ham": 1})
    by_name = CliRunner().invoke(app, ["predict", "--data-dir", str(root), "--run", "mine", "x!", "--format", "label"])
    assert by_name.exit_code == 0 and by_name.stdout == "spam\n"
    monkeypatch.setenv("SPAMTUNE_HOME", str(root))
    assert CliRunner().invoke(app, ["predict", "--run", "mine", "x", "--format", "label"]).stdout == "ham\n"
    by_path = CliRunner().invoke(app, ["predict", "--run", str(tmp_path / "elsewhere"), "x!", "--format", "label"])
    assert by_path.exit_code == 0 and by_path.stdout == "spam\n"
    monkeypatch.chdir(tmp_path)
    relative = CliRunner().invoke(app, ["predict", "--run", "./elsewhere", "x!", "--format", "label"])
    assert relative.exit_code == 0 and relative.stdout == "spam\n"
    missing = CliRunner().invoke(app, ["predict", "--run", "nosuch", "x"])
    assert missing.exit_code == 1
    assert missing.stderr == (
        f"Error: run folder not found: no run named 'nosuch' in {root / 'runs'} (`spamtune runs` lists them), "
        f"nor a folder {tmp_path / 'nosuch'}; to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR\n"
    )


def test_verbose_names_the_run_and_quiet_says_nothing(run_dir):
    verbose = invoke(run_dir, "--verbose", "hi")
    assert verbose.exit_code == 0 and f"run {run_dir} on cpu" in verbose.stderr
    assert "1 messages, 0 spam" in verbose.stderr
    quiet = invoke(run_dir, "-q", "hi")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == f"ham\t{HAM_P}\thi\n"
    both = invoke(run_dir, "-q", "-v", "hi")
    assert both.exit_code == 2 and "exclude each other" in both.stderr


def test_verbose_names_a_run_with_control_characters_escaped_on_one_line(tmp_path):
    """--verbose's line naming the run printed its path as it was: an escape sequence in the
    folder's name drove the terminal, a line break cut the line in two."""
    odd = write_rigged_run(tmp_path / "run\x1b]0;x\x07\nx")
    verbose = invoke(odd, "--verbose", "hi")
    assert verbose.exit_code == 0, verbose.stderr
    assert f"\nrun {tmp_path}/run\\x1b]0;x\\x07\\nx on cpu (" in "\n" + verbose.stderr
    assert "\x1b" not in verbose.stderr


def test_progress_only_on_a_terminal_stderr_with_stdout_redirected(run_dir, tmp_path, monkeypatch):
    common.reset([])  # normal verbosity, as at the start of every command
    meter = predict_cli.ReadMeter()
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb!\n" * 500)
    chunks = list(predict_cli.message_source([], path, meter, first_chunk_lines=8))
    assert sum(map(len, chunks)) == 1000 and meter.total == meter.done == path.stat().st_size
    monkeypatch.setattr(predict_cli, "_stderr_is_terminal", lambda: True)
    monkeypatch.setattr(predict_cli, "_stdout_is_terminal", lambda: False)
    assert predict_cli.ProgressBar(meter).shown
    assert not predict_cli.ProgressBar(predict_cli.ReadMeter()).shown  # arguments only: nothing to wait for
    monkeypatch.setattr(predict_cli, "_stdout_is_terminal", lambda: True)
    assert not predict_cli.ProgressBar(meter).shown  # the results on the terminal show the progress
    monkeypatch.setattr(predict_cli, "_stdout_is_terminal", lambda: False)
    monkeypatch.setattr(predict_cli, "_stderr_is_terminal", lambda: False)
    assert not predict_cli.ProgressBar(meter).shown  # nothing on a non-terminal stderr


def test_missing_run_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["predict", "--data-dir", str(tmp_path), "hello"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: no fine-tuned model found in {tmp_path / 'runs'}; run `spamtune finetune` first, "
        "or to use another data root, pass --data-dir DIR or set SPAMTUNE_HOME=DIR\n"
    )
    gone = CliRunner().invoke(app, ["predict", "--run", str(tmp_path / "gone"), "hello"])
    assert gone.exit_code == 1 and gone.stderr == f"Error: run folder not found: {tmp_path / 'gone'}\n"


def test_unavailable_device_is_one_clear_line(run_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = invoke(run_dir, "hello", "--device", "cuda")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: --device cuda: CUDA is not available") and result.stderr.count("\n") == 1


def test_latest_run_in_the_data_root_is_the_default(run_dir, tmp_path, monkeypatch):
    write_rigged_run(tmp_path / "runs" / "only", labels={"spam": 0, "ham": 1})
    monkeypatch.setenv("SPAMTUNE_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["predict", "hey!", "--format", "label"])
    assert result.exit_code == 0 and result.stdout == "spam\n"


# ---------------------------------------------------------------- streaming


class CountingStream(io.BytesIO):
    """Records how many bytes the reader has taken so far."""

    def read1(self, size=-1):
        data = super().read1(size)
        self.taken = getattr(self, "taken", 0) + len(data)
        return data


def test_reader_hands_out_chunks_before_reading_everything():
    lines = [f"line {i}".encode() for i in range(50_000)]
    stream = CountingStream(b"\n".join(lines) + b"\n")
    chunks = predict_cli.read_message_chunks(stream, chunk_lines=100, read_size=4096)
    first = next(chunks)
    assert first == [f"line {i}" for i in range(100)]
    assert stream.taken <= 4096  # one read so far, of a 500 kB input
    rest = [line for chunk in chunks for line in chunk]
    assert len(first) + len(rest) == 50_000 and rest[-1] == "line 49999"
    assert all(len(chunk) <= 100 for chunk in predict_cli.read_message_chunks(io.BytesIO(b"x\n" * 1000), 100))


def test_first_chunks_are_small_then_double():
    """The first answers come after one batch, not after 2,048 messages."""
    stream = io.BytesIO(b"x\n" * 1000)
    sizes = [len(c) for c in predict_cli.read_message_chunks(stream, chunk_lines=128, first_chunk_lines=16)]
    assert sizes[:5] == [16, 32, 64, 128, 128] and sum(sizes) == 1000 and max(sizes) == 128


def test_reader_keeps_lines_split_across_reads():
    data = b"first line\r\nsecond \xff line\n\nno newline at end"
    for read_size in (1, 3, 7, 1 << 16):
        chunks = list(predict_cli.read_message_chunks(io.BytesIO(data), chunk_lines=2, read_size=read_size))
        assert [m for c in chunks for m in c] == ["first line", "second \ufffd line", "", "no newline at end"]


@pytest.mark.skipif(not hasattr(os, "set_blocking"), reason="non-blocking pipes")
def test_a_non_blocking_stdin_is_read_to_its_end_not_to_its_first_pause():
    """A non-blocking pipe (the flag is shared with whatever process set it) reads as empty
    whenever its writer pauses: every line after the first pause was dropped, with exit 0."""
    with non_blocking_pipe([b"first\n", b"second\nthi", b"rd\nlast"]) as stream:
        meter = predict_cli.ReadMeter()
        lines = [line for chunk in predict_cli.read_message_chunks(meter.wrap(stream)) for line in chunk]
    assert lines == ["first", "second", "third", "last"]
    assert meter.done == len(b"first\nsecond\nthird\nlast")


def test_a_line_past_the_cap_keeps_its_first_bytes_and_the_lines_after_it(monkeypatch):
    """The rest of an overlong line is dropped as it is read, cut between two characters, with
    its line number reported; every other line, before and after, is whole."""
    monkeypatch.setattr(predict_cli, "MAX_LINE_BYTES", 10)
    data = "a\n" + "é" * 30 + "\nb\n" + "z" * 25
    for read_size in (1, 3, 7, 64, 1 << 16):
        cut: list[int] = []
        chunks = predict_cli.read_message_chunks(io.BytesIO(data.encode()), read_size=read_size, on_cut=cut.append)
        assert [m for c in chunks for m in c] == ["a", "é" * 5, "b", "z" * 10], read_size
        assert cut == [2, 4], read_size


def test_a_crlf_line_end_does_not_count_towards_the_cap(monkeypatch):
    """A line of exactly the cap in a Windows file is whole: its \\r is part of the line end,
    which the warning "only its first MiB is classified" must not count (it named such a line,
    whose text was complete). One byte more is cut, as in an LF file."""
    monkeypatch.setattr(predict_cli, "MAX_LINE_BYTES", 10)
    data = b"x" * 10 + b"\r\n" + b"y" * 11 + b"\r\n" + b"z" * 10 + b"\r"
    for read_size in (1, 3, 7, 11, 64):
        cut: list[int] = []
        chunks = predict_cli.read_message_chunks(io.BytesIO(data), read_size=read_size, on_cut=cut.append)
        assert [m for c in chunks for m in c] == ["x" * 10, "y" * 10, "z" * 10], read_size
        assert cut == [2], read_size


def test_a_line_without_an_end_is_read_in_bounded_memory():
    """`predict < /dev/zero`: 24 MiB of one line held at most the first MiB and a read."""
    import tracemalloc

    class Endless(io.RawIOBase):
        left = 24 << 20

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = b"\0" * n
            self.left -= n
            return n

    tracemalloc.start()
    try:
        [[line]] = list(predict_cli.read_message_chunks(io.BufferedReader(Endless())))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert line == "\0" * (1 << 20)
    assert peak < 8 << 20, peak


def test_an_overlong_line_is_classified_on_its_first_mib_with_a_warning(run_dir, tmp_path):
    """Its "!" lies past the first MiB, so the line reads as ham; the lines around it are as usual."""
    path = tmp_path / "dump.txt"
    path.write_bytes(b"hi!\n" + b"word " * 300_000 + b"!\nbye!\n")
    result = invoke(run_dir, "--input", str(path), "--format", "label")
    assert (result.exit_code, result.stdout) == (0, "spam\nham\nspam\n")
    assert result.stderr.count("WARNING: line 2 of ") == 1 and "longer than 1 MiB" in result.stderr


def spamtune_command(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "spamtune", "predict", "--run", str(run_dir), *args]


# One compute thread: the tiny model gains nothing from more, and on a busy machine spinning
# OpenMP threads make a child process many times slower.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_a_closed_stdout_is_one_line_and_out_needs_none(run_dir, tmp_path):
    """Started with stdout closed (``>&-``), Python has no sys.stdout: one line before the model
    loads, not an "unexpected AttributeError"; with --out the results never needed stdout."""
    def close_stdout():
        os.close(1)

    def run(*args):
        return subprocess.run(spamtune_command(run_dir, *args), preexec_fn=close_stdout, stdin=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=CHILD_ENV, timeout=300)  # fmt: skip

    proc = run("hi")
    assert (proc.returncode, proc.stderr) == (1, "Error: stdout is closed: there is nowhere to write the output "
                                                 "(redirect it instead, e.g. > /dev/null)\n")  # fmt: skip
    out = tmp_path / "out.tsv"
    proc = run("--out", str(out), "hi")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().endswith("\thi\n")


def test_out_onto_a_fifo_or_device_writes_into_it_rather_than_replacing_it(run_dir, tmp_path):
    """A rename onto ``--out /dev/null`` (or ``/dev/stdout``, a named pipe) would replace the node
    itself with a regular file; a node that is not a regular file is written to directly."""
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that opening it to write does not wait
    try:
        result = invoke(run_dir, "--out", str(fifo), "hi", "WIN!")
        assert result.exit_code == 0, result.stderr
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert os.read(reader, 1 << 16).decode() == f"ham\t{HAM_P}\thi\nspam\t{SPAM_P}\tWIN!\n"
    finally:
        os.close(reader)
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no temporary left beside it


def write_lines(path: Path, n: int) -> Path:
    """n numbered messages of a dozen tokens, every third one spam."""
    with path.open("w") as f:
        for i in range(n):
            f.write(f"message {i:06d} with a few more words" + ("!" if i % 3 == 0 else "") + "\n")
    return path


def run_measuring_rss(cmd: list[str], stdin_path: Path, stdout_path: Path) -> tuple[int, int]:
    """(exit status, peak RSS in kB) of one child process."""
    with stdin_path.open("rb") as fin, stdout_path.open("wb") as fout:
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.DEVNULL, env=CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


@pytest.mark.slow
def test_100k_lines_stream_in_order_with_flat_memory(run_dir, tmp_path):
    peaks = {}
    for n in (10_000, 100_000):
        out = tmp_path / f"out{n}.tsv"
        status, peaks[n] = run_measuring_rss(spamtune_command(run_dir, "-"), write_lines(tmp_path / f"in{n}", n), out)
        assert status == 0
    with out.open() as f:
        count = 0
        for i, line in enumerate(f):
            label, _, text = line.rstrip("\n").split("\t")
            assert text.startswith(f"message {i:06d} ") and label == ("spam" if i % 3 == 0 else "ham")
            count += 1
    assert count == 100_000
    # Holding 100k messages, their tokens and results at once would take well over 50 MB more.
    assert peaks[100_000] - peaks[10_000] < 20_000, peaks


def test_head_closing_the_pipe_ends_quietly(run_dir, tmp_path):
    big = write_lines(tmp_path / "in", 30_000)
    with big.open("rb") as fin:
        proc = subprocess.Popen(
            spamtune_command(run_dir, "-"), stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV
        )
        head = [proc.stdout.readline() for _ in range(5)]
        proc.stdout.close()  # what `| head -n 5` does
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
    assert [line.split(b"\t")[0] for line in head] == [b"spam", b"ham", b"ham", b"spam", b"ham"]
    assert proc.returncode in (0, 141, -13)
    assert stderr == b""  # no BrokenPipeError traceback, no "Exception ignored"


def test_fail_on_spam_still_says_spam_found_when_the_reader_leaves_after_spam(run_dir, tmp_path):
    """`predict --fail-on-spam | head -n 1` that wrote spam exits 1: 0 would tell the script
    there was none. Without spam written, or without the flag, the reader leaving is still 0."""
    big = write_lines(tmp_path / "in", 30_000)
    for args, first, status in ((["--fail-on-spam"], b"spam", 1), ([], b"spam", 0), (["--fail-on-spam", "--threshold", "1"], b"ham", 0)):
        with big.open("rb") as fin:
            proc = subprocess.Popen(spamtune_command(run_dir, *args, "-"), stdin=fin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=CHILD_ENV)  # fmt: skip
            head = proc.stdout.readline()
            proc.stdout.close()  # what `| head -n 1` does
            stderr = proc.stderr.read()
            proc.wait(timeout=120)
        assert head.split(b"\t")[0] == first, args
        assert (proc.returncode, stderr) == (status, b""), args


# A `predict` whose every batch takes {sleep} seconds more and logs its start time on stderr (and
# when it is done, before the interpreter's own shutdown), to see how much work is done once the
# reader has gone.
SLOW_PREDICT = """
import atexit, sys, time
import spamtune.model as model
atexit.register(lambda: print("done", time.monotonic(), file=sys.stderr, flush=True))
classify = model.GPTModel.classify
def slow(self, *args, **kwargs):
    print("batch", time.monotonic(), file=sys.stderr, flush=True)
    time.sleep({sleep})
    return classify(self, *args, **kwargs)
model.GPTModel.classify = slow
from spamtune.cli import main
sys.argv = ["spamtune", *sys.argv[1:]]
main()
"""


def test_a_reader_leaving_stops_the_work_within_a_batch(run_dir, tmp_path):
    """`predict - | head -n N` with N deep into the stream: once the reader has gone, at most the
    batch under way finishes; before, the whole next chunk (2,048 messages) was computed first."""
    batch, sleep = 256, 0.25
    chunk_batches = predict_cli.CHUNK_LINES // batch  # 8 batches in a full-size chunk
    big = write_lines(tmp_path / "in", 4 * predict_cli.CHUNK_LINES)
    wanted = batch + 2 * batch + 4 * batch + 1  # into the first full-size chunk's output
    script = SLOW_PREDICT.format(sleep=sleep)
    with big.open("rb") as fin:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, "predict", "--run", str(run_dir), "--batch-size", str(batch), "-"],
            stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV,
        )
        timer = threading.Timer(120, proc.kill)
        timer.start()
        try:
            lines = [proc.stdout.readline() for _ in range(wanted)]
            proc.stdout.close()  # what `head` does once it has its lines
            closed = time.monotonic()
            stderr = proc.stderr.read().decode()
            proc.wait()
            exited = time.monotonic()
        finally:
            timer.cancel()
    assert len(lines) == wanted and all(line.endswith(b"\n") for line in lines)
    assert proc.returncode == 0
    log = [line.split() for line in stderr.splitlines()]
    assert [words[0] for words in log if words[0] not in ("batch", "done")] == []  # no error, no traceback
    after_close = [float(t) for word, t in log if word == "batch" and float(t) > closed]
    done = next(float(t) for word, t in log if word == "done")
    assert len(after_close) <= 1, f"{len(after_close)} batches started after the reader left"
    # The batch under way, then stop: the rest of the chunk would take {chunk_batches - 1} x sleep.
    assert done - closed < 3 * sleep < (chunk_batches - 1) * sleep
    assert exited - closed < 10  # interpreter shutdown included (about a second for torch here)


def test_results_come_as_lines_arrive(run_dir):
    """A slow producer gets each answer before sending the next line (no waiting for a full chunk)."""
    proc = subprocess.Popen(
        spamtune_command(run_dir, "-", "--format", "label"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV,
    )
    timer = threading.Timer(60, proc.kill)  # a regression would otherwise block forever
    timer.start()
    try:
        answers = []
        for line in (b"free prize!\n", b"see you\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            answers.append(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait() == 0
    finally:
        timer.cancel()
    assert answers == [b"spam\n", b"ham\n"]


def test_predict_path_imports_nothing_heavy(run_dir):
    """Cold start: pandas, matplotlib, rich and the Hugging Face libraries stay out of `predict`, and
    so does torch._dynamo (about a second), which initialising a model on the meta device pulls in."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *spamtune_command(run_dir, "x")[1:]],
        capture_output=True, text=True, timeout=120, env=CHILD_ENV,
    )
    assert out.returncode == 0 and out.stdout == f"ham\t{HAM_P}\tx\n"
    modules = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    imported = {name.split(".")[0] for name in modules}
    assert "torch" in imported and "tiktoken" in imported
    assert not imported & {"pandas", "matplotlib", "rich", "huggingface_hub", "transformers", "sklearn"}
    assert "torch._dynamo" not in modules


def test_a_run_of_three_classes_says_how_it_decides_and_refuses_a_threshold(tmp_path):
    """Such a run labels a message with its most probable class: stderr says that rather than a
    threshold, and a --threshold, which would be silently ignored, is a usage error."""
    from spamtune import calibration

    run = write_rigged_run(tmp_path / "three", labels={"ham": 0, "spam": 1, "promo": 2})
    calibration.write_calibration(run, calibration.Calibration(2.0, 0.5, "threshold", 0.5, {}))
    result = invoke(run, "hi!", "hi", "--format", "label")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "spam\nham\n"
    assert result.stderr == "the most probable of 3 classes (ham, spam, promo) is the label; temperature 2 fitted on validation\n"
    refused = invoke(run, "hi", "--threshold", "0.3")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert refused.stderr == (
        "Error: --threshold cannot apply: the run has 3 classes (ham, spam, promo) and decides by the most "
        "probable one; a spam threshold is for two-class (spam/ham) runs\n"
    )
